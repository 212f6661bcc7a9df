// Jobs are addressed by their id or a unique prefix of it (canopy watch prints 8
// characters, and people type them).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

test('a unique prefix of a job id (4 characters or more) names the job in the API and the CLI', async (t) => {
  const dir = await tempDir()
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: 'http://127.0.0.1:9/f.bin', path: join(dir, 'f.bin') }], start: false })
  const short = job.id.slice(0, 8)
  assert.equal((await agent.client.getJob(short)).id, job.id)
  const shown = await runCli(['job', short, '--json', '--state-dir', agent.stateDir])
  assert.equal(shown.code, 0, shown.stderr)
  assert.equal((JSON.parse(shown.stdout) as { id: string }).id, job.id)
  const set = await runCli(['set', short, '--priority', 'high', '--state-dir', agent.stateDir])
  assert.equal(set.code, 0, set.stderr)
  assert.equal((await agent.client.getJob(job.id)).priority, 'high')
  await assert.rejects(agent.client.getJob(job.id.slice(0, 3)), { code: 'ERR_JOB_NOT_FOUND' }, 'too short to be a prefix')
  await assert.rejects(agent.client.getJob('ffffffff-0000'), { code: 'ERR_JOB_NOT_FOUND' })
  await assert.rejects(agent.client.cancel(`${short}zz`), { code: 'ERR_JOB_NOT_FOUND' })
})

test('a prefix that several job ids share is refused with ERR_AMBIGUOUS_JOB_ID (CLI exit 4), and more of the id works', async (t) => {
  const dir = await tempDir()
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  // Random ids share their first 4 hex digits (1 in 65,536 per pair) within a few hundred
  // jobs (the birthday bound); 3,000 unstarted jobs make a miss vanishingly unlikely.
  const byPrefix = new Map<string, string>()
  let pair: [string, string] | undefined
  for (let i = 0; i < 3000 && pair === undefined; i++) {
    const { id } = await agent.client.createJob({ files: [{ url: 'http://127.0.0.1:9/f.bin', path: join(dir, `f${i}.bin`) }], start: false })
    const other = byPrefix.get(id.slice(0, 4))
    if (other !== undefined) pair = [other, id]
    byPrefix.set(id.slice(0, 4), id)
  }
  assert.ok(pair !== undefined, 'no two of 3,000 job ids shared 4 leading digits')
  const prefix = pair[0].slice(0, 4)
  await assert.rejects(agent.client.getJob(prefix), { code: 'ERR_AMBIGUOUS_JOB_ID' })
  const shown = await runCli(['job', prefix, '--state-dir', agent.stateDir])
  assert.equal(shown.code, 4, shown.stderr)
  assert.match(shown.stderr, /jobs have ids starting with/)
  // Where the two ids differ, one more character is enough.
  let common = 4
  while (pair[0][common] === pair[1][common]) common++
  assert.equal((await agent.client.getJob(pair[1].slice(0, common + 1))).id, pair[1])
})
