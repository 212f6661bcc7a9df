// End to end: a real origin, a real agent process, the real CLI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { startOrigin } from '@canopy/origin'
import { FINISHED, fileSha256, originContentBytes, originWithFile, randomFile, runCli, startAgentProcess, tempDir } from './helpers.ts'

test('canopy get downloads a multi-block file, block-verified, and puts it in place', async (t) => {
  const dir = await tempDir()
  const root = join(dir, 'root')
  const { mkdir } = await import('node:fs/promises')
  await mkdir(root)
  const size = 9 * 1024 * 1024 + 4321 // 10 blocks, the last one short
  const { sha256 } = await randomFile(join(root, 'big.bin'), size)
  const origin = await startOrigin({ root, stateDir: join(dir, 'origin-state') })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())

  const out = join(dir, 'out', 'big.bin')
  await mkdir(join(dir, 'out'))
  const res = await runCli(['get', `${origin.url}/big.bin`, '-o', out, '--json', '--state-dir', agent.stateDir])
  assert.equal(res.code, 0, res.stderr)
  const job = JSON.parse(res.stdout)
  assert.equal(job.state, 'acknowledged')
  assert.equal(job.bytes.total, size)
  assert.equal(job.bytes.transferred, size)
  assert.equal(job.bytes.fromOrigin, size)
  assert.equal(job.bytes.fromPeers, 0)
  assert.match(job.files[0].manifestId, /^bagaaiera/)
  assert.equal(job.files[0].sha256, sha256)
  assert.equal(await fileSha256(out), sha256)
  // Nothing but the file itself is left next to it (the partial file was renamed).
  assert.deepEqual(await readdir(join(dir, 'out')), ['big.bin'])
  // Each byte crossed the wire once.
  assert.equal(await originContentBytes(origin.url), size)
})

test('with a peer node but no peer answering, the origin is asked in file order (the whole-file digest keeps up)', async (t) => {
  // Regression: the order was random whenever the agent ran a peer node, so the file's
  // start completed last and its whole-file digest was hashed after the last block.
  const { dir, origin, sha256 } = await originWithFile(t, 12 * 1024 * 1024)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--log-level', 'debug', '--requests-in-flight', '1', '--request-size', '1MiB'])
  t.after(async () => await agent.kill())
  assert.ok((await agent.client.status()).peer !== undefined, 'the agent runs a peer node')
  const out = join(dir, 'out.bin')
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: out }], priority: 'foreground', autoComplete: true })
  const done = await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(out), sha256)
  const firsts = [...agent.stderr().matchAll(/origin range .*first=(\d+)/g)].map(m => Number(m[1]))
  assert.deepEqual(firsts, Array.from({ length: 12 }, (_, i) => i))
})

test('a job created with start: false stays suspended, and complete is explicit when autoComplete is off', async (t) => {
  const dir = await tempDir()
  const { mkdir } = await import('node:fs/promises')
  await mkdir(join(dir, 'root'))
  const { sha256 } = await randomFile(join(dir, 'root', 'f.bin'), 3 * 1024 * 1024)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  t.after(async () => await origin.close())
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const dest = join(dir, 'f.bin')

  const created = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], start: false })
  assert.equal(created.state, 'suspended')
  await agent.client.resume(created.id)
  const transferred = await agent.client.waitForJob(created.id, { intervalMs: 50 })
  assert.equal(transferred.state, 'transferred')
  assert.equal(existsSync(dest), false, 'the file must not be visible before complete')
  const completed = await agent.client.complete(created.id)
  assert.equal(completed.state, 'acknowledged')
  assert.equal(await fileSha256(dest), sha256)
})

test('a 404 stops the job in error with a plain reason, and the CLI exits 1', async (t) => {
  const dir = await tempDir()
  const { mkdir } = await import('node:fs/promises')
  await mkdir(join(dir, 'root'))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  t.after(async () => await origin.close())
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const res = await runCli(['get', `${origin.url}/missing.bin`, '-o', join(dir, 'x.bin'), '--state-dir', agent.stateDir])
  assert.equal(res.code, 1)
  assert.match(res.stderr, /ERR_HTTP_NOT_FOUND/)
  assert.match(res.stderr, /no file at/)
  assert.equal(existsSync(join(dir, 'x.bin')), false)
})

test('cancel removes the partial file', async (t) => {
  const dir = await tempDir()
  const { mkdir } = await import('node:fs/promises')
  await mkdir(join(dir, 'root'))
  await randomFile(join(dir, 'root', 'slow.bin'), 8 * 1024 * 1024)
  // Slow enough that the job is still running when we cancel it.
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o'), rateLimit: 1024 * 1024 })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const dest = join(dir, 'slow.bin')
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/slow.bin`, path: dest }], priority: 'foreground' })
  await agent.client.waitForJob(job.id, { intervalMs: 50, until: ['transferring'] })
  const cancelled = await agent.client.cancel(job.id)
  assert.equal(cancelled.state, 'cancelled')
  assert.deepEqual((await readdir(dir)).filter(n => n.includes('canopy-part')), [])
  assert.equal(existsSync(dest), false)
})

test('a transferring job shows its recent rate (JobView.rate, the RATE column of canopy jobs)', async (t) => {
  const dir = await tempDir()
  await randomFile(join(dir, 'slow.bin'), 6 * 1024 * 1024)
  const origin = await startOrigin({ root: dir, stateDir: join(dir, '.origin'), rateLimit: 1024 * 1024 })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/slow.bin`, path: join(dir, 'out.bin') }] })
  let seen = await agent.client.getJob(job.id)
  // Until a rate shows, or the job leaves the states that move bytes (never for ever).
  while (seen.rate === undefined && ['queued', 'connecting', 'transferring'].includes(seen.state)) {
    await new Promise(resolve => setTimeout(resolve, 100))
    seen = await agent.client.getJob(job.id)
  }
  assert.equal(seen.state, 'transferring', 'the rate is shown while the job transfers')
  assert.ok(seen.rate! > 0, `rate ${seen.rate}`)
  const table = await runCli(['jobs', '--state-dir', agent.stateDir])
  assert.match(table.stdout, /(KiB|MiB)\/s/)
  await agent.client.cancel(job.id)
  assert.equal((await agent.client.getJob(job.id)).rate, undefined, 'no rate once it stopped')
})
