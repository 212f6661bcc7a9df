// User commands against a real agent (in process) and a real origin: they must not
// race the scheduler or each other.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startAgent } from '@canopy/agent'
import { startOrigin } from '@canopy/origin'

async function setup (t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-commands-'))
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'f.bin'), randomBytes(4 * 1024 * 1024))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  const agent = await startAgent({ stateDir: join(dir, 'agent') })
  t.after(async () => {
    await agent.stop()
    await origin.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { dir, origin, agent }
}

test('a job cancelled right after it was created never starts again', async (t) => {
  const { dir, origin, agent } = await setup(t)
  const states: string[] = []
  const dest = join(dir, 'out.bin')
  const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], autoComplete: true })
  agent.on('job:state', v => { if (v.id === job.id) states.push(v.state) })
  const cancelled = await agent.cancel(job.id)
  assert.equal(cancelled.state, 'cancelled')
  await new Promise(resolve => setTimeout(resolve, 500))
  assert.equal(agent.getJob(job.id).state, 'cancelled')
  assert.deepEqual(states.slice(states.indexOf('cancelled')), ['cancelled'], `states after cancel: ${states.join(' -> ')}`)
  assert.equal(existsSync(dest), false)
  assert.deepEqual((await readdir(dir)).filter(n => n.includes('canopy-part')), [])
})

test('two completes at once: one completes, the other is told the state; no error is left behind', async (t) => {
  const { dir, origin, agent } = await setup(t)
  const dest = join(dir, 'out.bin')
  const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }] })
  await new Promise<void>(resolve => agent.on('job:state', v => { if (v.id === job.id && v.state === 'transferred') resolve() }))
  const results = await Promise.allSettled([agent.complete(job.id), agent.complete(job.id)])
  const fulfilled = results.filter(r => r.status === 'fulfilled')
  const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
  assert.equal(fulfilled.length, 1)
  assert.equal(rejected.length, 1)
  assert.equal((rejected[0].reason as { code?: string }).code, 'ERR_INVALID_STATE')
  const final = agent.getJob(job.id)
  assert.equal(final.state, 'acknowledged')
  assert.equal(final.error, undefined)
  assert.ok(existsSync(dest))
})

test('complete after a crash that came between the rename and its record finds the file in place', async (t) => {
  const { dir, origin, agent } = await setup(t)
  const dest = join(dir, 'out.bin')
  const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }] })
  await new Promise<void>(resolve => agent.on('job:state', v => { if (v.id === job.id && v.state === 'transferred') resolve() }))
  const part = (await readdir(dir)).find(n => n.includes('canopy-part'))
  assert.ok(part !== undefined)
  const { rename } = await import('node:fs/promises')
  await rename(join(dir, part), dest) // what the crashed completion had done
  const completed = await agent.complete(job.id)
  assert.equal(completed.state, 'acknowledged')
  assert.equal(completed.error, undefined)
})
