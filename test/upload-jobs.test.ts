// Upload and upload-reply jobs with real processes: an agent process (the CLI's
// `canopy put`, or its client) sending to a real origin with a tus upload endpoint.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { appendFile, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { STAGING_DIR, startOrigin } from '@canopy/origin'
import type { JobView } from '@canopy/core'
import { FINISHED, fileSha256, randomFile, runCli, startAgentProcess } from './helpers.ts'
import { bytesReceived, FRAGMENT, MiB, until, uploadOrigin } from './upload-helpers.ts'

test('canopy put sends 256 MiB: the file appears whole under its name on the origin, the server\'s SHA-256 matches', async (t) => {
  const { dir, uploadDir, endpoint } = await uploadOrigin(t)
  const size = 256 * MiB
  const { sha256 } = await randomFile(join(dir, 'big.log'), size)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const run = await runCli(['put', join(dir, 'big.log'), endpoint, '--name', 'branch-1.log', '--json', '--state-dir', agent.stateDir], { timeoutMs: 300_000 })
  assert.equal(run.code, 0, run.stderr)
  const job = JSON.parse(run.stdout) as JobView
  assert.equal(job.type, 'upload')
  assert.equal(job.state, 'acknowledged')
  assert.equal(job.bytes.transferred, size)
  assert.equal(job.bytes.fromOrigin, 0, 'sent, not received: the received-bytes counters do not count it')
  assert.equal((await agent.client.status()).bytes.fromOrigin, 0)
  assert.equal(job.upload?.serverSha256, sha256)
  assert.equal(await fileSha256(join(uploadDir, 'branch-1.log')), sha256)
  // The job shows as an upload in the CLI.
  const listed = await runCli(['jobs', '--wide', '--state-dir', agent.stateDir])
  assert.match(listed.stdout, /branch-1\.log \(upload\)/)
  const shown = await runCli(['job', job.id, '--state-dir', agent.stateDir])
  assert.match(shown.stdout, /type: +upload/)
  assert.match(shown.stdout, new RegExp(`server sha256: +${sha256}`))
})

test('after kill -9 of the agent at ~40% the restarted agent resumes from the server\'s offset: at most one fragment + 1 MiB sent again', async (t) => {
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t)
  const size = 96 * MiB
  const { sha256 } = await randomFile(join(dir, 'f.bin'), size)
  const stateDir = join(dir, 'agent')
  const first = await startAgentProcess(stateDir)
  // Its own cap keeps it running long enough to be killed in the middle.
  const job = await first.client.createUpload(join(dir, 'f.bin'), endpoint, { priority: 'foreground', rateLimit: 24 * MiB, autoComplete: true })
  assert.equal(job.rateLimit, 24 * MiB)
  const seen = await until(first.client, job.id, j => j.bytes.transferred >= size * 0.4 || FINISHED.includes(j.state))
  await first.kill('SIGKILL')
  assert.ok(seen.upload?.uploadUrl !== undefined, 'the upload URL was persisted before bytes were sent')
  const beforeKill = await bytesReceived(origin)
  assert.ok(beforeKill < size, `the kill must land before the upload ends (the origin holds ${beforeKill})`)

  const second = await startAgentProcess(stateDir)
  t.after(async () => await second.kill())
  // The upload's URL was persisted; its progress is at most a second old until the agent asks the server's offset.
  assert.equal((await second.client.getJob(job.id)).upload?.uploadUrl, seen.upload.uploadUrl)
  await second.client.setRateLimit(job.id, null)
  const done = await second.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.upload?.uploadUrl, seen.upload?.uploadUrl, 'the same upload went on, none was created anew')
  assert.equal(await fileSha256(join(uploadDir, 'f.bin')), sha256)
  const received = await bytesReceived(origin)
  t.diagnostic(`killed at ${seen.bytes.transferred} bytes; the origin stored ${received} for ${size}`)
  assert.ok(received <= size + FRAGMENT + MiB, `the origin stored ${received} bytes for a ${size}-byte file`)
  assert.match(second.stderr(), /upload resuming/)
})

test('suspend and resume mid-upload go on with the same upload, re-sending at most one fragment', async (t) => {
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t)
  const size = 48 * MiB
  const { sha256 } = await randomFile(join(dir, 'f.bin'), size)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, { priority: 'high', rateLimit: 16 * MiB, autoComplete: true })
  await until(agent.client, job.id, j => j.bytes.transferred >= 12 * MiB || FINISHED.includes(j.state))
  const suspended = await agent.client.suspend(job.id)
  assert.equal(suspended.state, 'suspended')
  const uploadUrl = suspended.upload?.uploadUrl
  assert.ok(uploadUrl !== undefined)
  assert.ok(await bytesReceived(origin) < size, 'suspended before the end')
  await agent.client.setRateLimit(job.id, null)
  await agent.client.resume(job.id)
  const done = await agent.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.upload?.uploadUrl, uploadUrl)
  assert.equal(await fileSha256(join(uploadDir, 'f.bin')), sha256)
  assert.ok(await bytesReceived(origin) <= size + FRAGMENT, `the origin stored ${await bytesReceived(origin)} bytes for ${size}`)
})

test('an origin restart mid-upload: the job retries (transient, with the reason) and resumes the same upload', async (t) => {
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t)
  const size = 48 * MiB
  const { sha256 } = await randomFile(join(dir, 'f.bin'), size)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, { rateLimit: 16 * MiB, autoComplete: true, limits: { retryMinMs: 200, retryMaxMs: 400 } })
  const before = await until(agent.client, job.id, j => j.bytes.transferred >= 12 * MiB || FINISHED.includes(j.state))
  await origin.close()
  const failed = await until(agent.client, job.id, j => j.state === 'transient_error' || FINISHED.includes(j.state))
  assert.equal(failed.state, 'transient_error', JSON.stringify(failed.error))
  assert.equal(failed.error?.transient, true)
  assert.equal(failed.error?.code, 'ERR_NETWORK', JSON.stringify(failed.error))
  assert.match(failed.error?.message ?? '', /unreachable/)
  // The same port and upload directory: the unfinished upload is still staged there.
  const again = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin'), scan: false, port: origin.port, uploads: { minFreeBytes: 0, dir: uploadDir } })
  t.after(async () => await again.close())
  await again.ready
  await agent.client.setRateLimit(job.id, null)
  const done = await agent.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.upload?.uploadUrl, before.upload?.uploadUrl, 'the same upload went on')
  assert.equal(await fileSha256(join(uploadDir, 'f.bin')), sha256)
  assert.ok(await bytesReceived(again) <= size - 12 * MiB + FRAGMENT, `the restarted origin stored ${await bytesReceived(again)} bytes`)
})

test('a local file changed mid-upload stops the job in error with the reason; nothing appears on the origin', async (t) => {
  const { dir, uploadDir, endpoint } = await uploadOrigin(t)
  const path = join(dir, 'app.log')
  await randomFile(path, 32 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createUpload(path, endpoint, { rateLimit: 4 * MiB, autoComplete: true })
  await until(agent.client, job.id, j => j.bytes.transferred > 0)
  await appendFile(path, 'one more line\n')
  const failed = await agent.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(failed.state, 'error')
  assert.equal(failed.error?.code, 'ERR_LOCAL_FILE_CHANGED')
  assert.equal(failed.error?.transient, false)
  assert.match(failed.error?.message ?? '', /changed while it was being uploaded/)
  assert.deepEqual((await readdir(uploadDir)).filter(n => n !== STAGING_DIR), [])
})

test('cancel terminates the upload on the server: its staged bytes are removed', async (t) => {
  const { dir, uploadDir, endpoint } = await uploadOrigin(t)
  await randomFile(join(dir, 'f.bin'), 32 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, { rateLimit: 4 * MiB, autoComplete: true })
  await until(agent.client, job.id, j => j.bytes.transferred > 0)
  assert.ok((await readdir(join(uploadDir, STAGING_DIR))).length > 0, 'the upload is staged on the origin')
  const cancelled = await agent.client.cancel(job.id)
  assert.equal(cancelled.state, 'cancelled')
  assert.deepEqual(await readdir(join(uploadDir, STAGING_DIR)), [])
  assert.deepEqual((await readdir(uploadDir)).filter(n => n !== STAGING_DIR), [])
})

test('upload-reply: the origin\'s --on-upload handler\'s stdout arrives at --reply PATH', async (t) => {
  const { dir, uploadDir, endpoint } = await uploadOrigin(t, {
    handler: { command: ['/bin/sh', '-c', 'printf "ticket for %s: %s bytes, %s\\n" "$CANOPY_UPLOAD_NAME" "$CANOPY_UPLOAD_SIZE" "$CANOPY_UPLOAD_SHA256"'] }
  })
  const { sha256 } = await randomFile(join(dir, 'inventory.json'), 3 * MiB + 17)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const replyPath = join(dir, 'ticket.txt')
  const run = await runCli(['put', join(dir, 'inventory.json'), endpoint, '--reply', replyPath, '--json', '--state-dir', agent.stateDir])
  assert.equal(run.code, 0, run.stderr)
  const job = JSON.parse(run.stdout) as JobView
  assert.equal(job.type, 'upload-reply')
  assert.equal(job.state, 'acknowledged')
  const expected = `ticket for inventory.json: ${3 * MiB + 17} bytes, ${sha256}\n`
  assert.equal(await readFile(replyPath, 'utf8'), expected)
  assert.equal(job.upload?.replyBytes, Buffer.byteLength(expected))
  assert.equal(await fileSha256(join(uploadDir, 'inventory.json')), sha256)

  // Without a handler on the server, an upload-reply job fails with the reason, not silently.
  const plain = await uploadOrigin(t)
  const failed = await agent.client.createUpload(join(dir, 'inventory.json'), plain.endpoint, { replyPath: join(dir, 'none.txt'), autoComplete: true })
  const ended = await agent.client.waitForJob(failed.id, { intervalMs: 100, until: FINISHED })
  assert.equal(ended.state, 'error')
  assert.equal(ended.error?.code, 'ERR_UPLOAD_REPLY')
  assert.match(ended.error?.message ?? '', /runs no upload handler/)
})

test('a background upload takes a lease of the WAN path to the server and obeys the bandwidth policy; a foreground one is not capped by it', async (t) => {
  const { dir, uploadDir, endpoint, origin } = await uploadOrigin(t)
  await randomFile(join(dir, 'low.bin'), 4 * MiB)
  await randomFile(join(dir, 'fg.bin'), 4 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  await agent.client.setPolicy({ low: 1024 })
  const low = await agent.client.createUpload(join(dir, 'low.bin'), endpoint, { priority: 'low', autoComplete: true })
  const capped = await until(agent.client, low.id, j => j.state === 'transferring' && j.reason !== undefined)
  assert.match(capped.reason ?? '', /^capped by policy at .+\/s \(policy\)$/)
  const path = (await agent.client.status()).bandwidth?.paths.find(p => p.host === new URL(origin.url).host)
  assert.ok(path !== undefined, 'the upload holds the WAN path to the origin')
  assert.equal(path.transfers, 1)
  // A cap of 0, live: the upload goes back to the queue and says why.
  await agent.client.setPolicy({ low: 0 })
  const blocked = await until(agent.client, low.id, j => j.state === 'queued')
  assert.equal(blocked.reason, 'blocked by policy: low-priority jobs are capped at 0 (policy)')
  const fg = await agent.client.createUpload(join(dir, 'fg.bin'), endpoint, { priority: 'foreground', autoComplete: true })
  assert.equal((await agent.client.waitForJob(fg.id, { intervalMs: 100, until: FINISHED })).state, 'acknowledged')
  await agent.client.setPolicy({})
  const done = await agent.client.waitForJob(low.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.deepEqual((await readdir(uploadDir)).filter(n => n !== STAGING_DIR).sort(), ['fg.bin', 'low.bin'])
})

test('upload requests are checked at the API: one regular file, no download-only fields, a reply path only for upload-reply', async (t) => {
  const { dir, endpoint } = await uploadOrigin(t)
  await randomFile(join(dir, 'a.bin'), 1024)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const c = agent.client
  await assert.rejects(c.createJob({ type: 'upload', files: [{ url: endpoint, path: dir }] }), /is a folder|is not a file/)
  await assert.rejects(c.createJob({ type: 'upload', files: [{ url: endpoint, path: join(dir, 'missing.bin') }] }), /is not a file/)
  await assert.rejects(c.createJob({ type: 'upload', files: [{ url: endpoint, path: join(dir, 'a.bin') }, { url: endpoint, path: join(dir, 'b.bin') }] }), /sends one file/)
  await assert.rejects(c.createJob({ type: 'upload', ifNewer: true, files: [{ url: endpoint, path: join(dir, 'a.bin') }] }), /for downloads/)
  await assert.rejects(c.createJob({ type: 'upload', replyPath: join(dir, 'r.txt'), files: [{ url: endpoint, path: join(dir, 'a.bin') }] }), /replyPath is for upload-reply jobs/)
  await assert.rejects(c.createJob({ type: 'upload-reply', files: [{ url: endpoint, path: join(dir, 'a.bin') }] }), /replyPath must be the absolute path/)
  await assert.rejects(c.createJob({ type: 'upload-reply', replyPath: join(dir, 'no', 'r.txt'), files: [{ url: endpoint, path: join(dir, 'a.bin') }] }), /does not exist/)
  await assert.rejects(c.createJob({ replyPath: join(dir, 'r.txt'), files: [{ url: endpoint, path: join(dir, 'x.bin') }] }), /replyPath is for upload-reply jobs/)
  await assert.rejects(c.createJob({ type: 'sideways' as never, files: [{ url: endpoint, path: join(dir, 'a.bin') }] }), /not supported/)
  // A suspended upload takes no more files.
  const job = await c.createUpload(join(dir, 'a.bin'), endpoint, { start: false })
  await assert.rejects(c.addFiles(job.id, [{ url: endpoint, path: join(dir, 'c.bin') }]), /sends one file/)
  assert.equal((await c.cancel(job.id)).state, 'cancelled')
})
