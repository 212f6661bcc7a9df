// Crash safety: kill -9 of the agent in the middle of a transfer loses at most the
// blocks that were in flight.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, open, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { AGENT_DEFAULTS, blocksAtRisk } from '@canopy/agent'
import { startOrigin } from '@canopy/origin'
import { FINISHED, fileSha256, originContentBytes, randomFile, startAgentProcess, tempDir } from './helpers.ts'

const MiB = 1024 * 1024

/**
 * A download from a rate-limited origin (24 MiB/s: long enough to kill it in the
 * middle) whose agent is killed with SIGKILL once `killAt` bytes are recorded.
 */
async function killedMidTransfer (t: TestContext, size: number, killAt: number) {
  const dir = await tempDir()
  await mkdir(join(dir, 'root'))
  await mkdir(join(dir, 'out'))
  const { sha256 } = await randomFile(join(dir, 'root', 'f.bin'), size)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o'), rateLimit: 24 * MiB })
  t.after(async () => await origin.close())
  await origin.ready
  const stateDir = join(dir, 'agent')
  const dest = join(dir, 'out', 'f.bin')
  const first = await startAgentProcess(stateDir)
  const job = await first.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], autoComplete: true, priority: 'foreground' })
  let seen = job
  while (seen.bytes.transferred < killAt) {
    await new Promise(resolve => setTimeout(resolve, 50))
    seen = await first.client.getJob(job.id)
  }
  await first.kill('SIGKILL')
  return { dir, origin, stateDir, dest, sha256, job, seen }
}

test('after SIGKILL mid-transfer the restarted agent resumes, refetching at most the blocks in flight', async (t) => {
  const size = 96 * MiB
  const { origin, stateDir, dest, sha256, job, seen } = await killedMidTransfer(t, size, size * 0.3)
  const sentBeforeKill = await originContentBytes(origin.url)
  assert.ok(sentBeforeKill < size, 'the kill must land before the transfer ends')

  const second = await startAgentProcess(stateDir)
  t.after(async () => await second.kill())
  const after = await second.client.getJob(job.id)
  // What the store says was done survived the kill.
  assert.ok(after.bytes.transferred >= seen.bytes.transferred, `resumed at ${after.bytes.transferred}, had ${seen.bytes.transferred}`)
  const done = await second.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(dest), sha256)

  const total = await originContentBytes(origin.url)
  t.diagnostic(`killed at ${seen.bytes.transferred} bytes; resumed at ${after.bytes.transferred}; origin sent ${total} for ${size}`)
  // Every byte once, plus at most the blocks in flight at the kill: asked for and not
  // yet received, or received and not yet written and marked.
  const atRisk = blocksAtRisk(AGENT_DEFAULTS, MiB)
  assert.ok(atRisk * MiB < size / 2, 'the file must be large enough for the bound to mean something')
  assert.ok(total <= size + atRisk * MiB, `origin sent ${total} bytes for a ${size}-byte file`)
})

test('a marked block whose bytes are garbage on disk after an unclean stop is found and fetched again; the file is right', async (t) => {
  const size = 48 * MiB
  const { dir, stateDir, dest, sha256, job } = await killedMidTransfer(t, size, 8 * MiB)
  // What a power loss can leave: blocks marked in the store whose bytes never reached
  // the disk. Every block is overwritten, so every marked one (at least 8) is garbage.
  const [part] = (await readdir(join(dir, 'out'))).filter(name => name.endsWith('.canopy-part'))
  const file = await open(join(dir, 'out', part), 'r+')
  for (let offset = 0; offset < size; offset += MiB) await file.write(Buffer.alloc(MiB, 0x5a), 0, MiB, offset)
  await file.close()

  const second = await startAgentProcess(stateDir)
  t.after(async () => await second.kill())
  assert.ok((await second.client.getJob(job.id)).bytes.transferred >= 8 * MiB, 'blocks were marked before the stop')
  const done = await second.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(dest), sha256)
  assert.match(second.stderr(), /whole-file digest mismatch/, 'the second pass found the bad blocks')
})
