// Upload jobs the origin refuses or cannot take, as jobs: a real agent process sending
// to a real origin. Each ends with the reason in the job's error, nothing stored where it
// should not be, and (disk full) the same upload resumed once the cause is gone.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { open, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { STAGING_DIR } from '@canopy/origin'
import type { JobView } from '@canopy/core'
import type { CanopyClient } from '@canopy/client'
import { FINISHED, fileSha256, randomFile, runCli, startAgentProcess, tempDir } from './helpers.ts'
import { bytesReceived, counter, FRAGMENT, MiB, until, uploadOrigin } from './upload-helpers.ts'

const run = promisify(execFile)

/** What the upload directory shows, staging directory aside, and what is staged in it. */
async function uploadDirContents (uploadDir: string): Promise<{ visible: string[], staged: string[] }> {
  return {
    visible: (await readdir(uploadDir)).filter(n => n !== STAGING_DIR).sort(),
    staged: await readdir(join(uploadDir, STAGING_DIR))
  }
}

async function finished (client: CanopyClient, id: string): Promise<JobView> {
  return await client.waitForJob(id, { intervalMs: 50, until: FINISHED })
}

test('upload names with ../, an absolute path or a NUL byte are refused at creation: the job stops in error with the reason, no byte is sent, nothing is written anywhere', async (t) => {
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t)
  await randomFile(join(dir, 'f.bin'), 2 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await agent.kill())
  const outside = join(dir, 'outside.txt')
  const names: Array<[string, RegExp]> = [
    ['../outside.txt', /path separator/],
    ['../../outside.txt', /path separator/],
    ['..', /is not a file name/],
    [outside, /path separator/],
    ['evil\0.txt', /NUL byte/]
  ]
  for (const [name, reason] of names) {
    let job: JobView
    try {
      job = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, { name, autoComplete: true, priority: 'foreground' })
    } catch (err) {
      // Refused by the agent's API already: as good, provided it says why.
      assert.match(String(err), /name/i, `${JSON.stringify(name)}: ${String(err)}`)
      continue
    }
    const ended = await finished(agent.client, job.id)
    assert.equal(ended.state, 'error', `${JSON.stringify(name)}: ${JSON.stringify(ended)}`)
    assert.equal(ended.error?.code, 'ERR_UPLOAD_REFUSED', JSON.stringify(ended.error))
    assert.equal(ended.error?.transient, false)
    assert.match(ended.error?.message ?? '', /HTTP 400: Bad upload name/)
    assert.match(ended.error?.message ?? '', reason)
    assert.equal(ended.upload?.sentBytes, 0, 'refused from the creation request: no byte of the file was sent')
    assert.equal(ended.upload?.uploadUrl, undefined)
  }
  // The CLI gives the reason too (it refuses a NUL itself: control characters cannot be typed safely).
  const cli = await runCli(['put', join(dir, 'f.bin'), endpoint, '--name', '../outside.txt', '--state-dir', agent.stateDir])
  assert.notEqual(cli.code, 0)
  assert.match(cli.stderr, /ERR_UPLOAD_REFUSED.*Bad upload name.*path separator/)

  assert.deepEqual(await uploadDirContents(uploadDir), { visible: [], staged: [] })
  await assert.rejects(stat(outside), { code: 'ENOENT' })
  await assert.rejects(stat(join(dir, '..', 'outside.txt')), { code: 'ENOENT' })
  assert.equal(await bytesReceived(origin), 0)
  const metricsListen = (await agent.client.status()).metricsListen!
  assert.equal(await counter(`http://${metricsListen}/metrics`, 'canopy_agent_upload_sent_bytes_total'), 0)
})

test('an upload over the origin\'s size limit is refused from Upload-Length before its bytes are sent: the job stops in error (413), ~0 bytes sent', async (t) => {
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t, { maxSize: 1 * MiB })
  const size = 64 * MiB
  await randomFile(join(dir, 'big.bin'), size)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await agent.kill())
  const job = await agent.client.createUpload(join(dir, 'big.bin'), endpoint, { autoComplete: true, priority: 'foreground' })
  const ended = await finished(agent.client, job.id)
  assert.equal(ended.state, 'error', JSON.stringify(ended))
  assert.equal(ended.error?.code, 'ERR_UPLOAD_TOO_LARGE')
  assert.equal(ended.error?.transient, false)
  assert.match(ended.error?.message ?? '', /HTTP 413/)
  assert.match(ended.error?.message ?? '', /raise the limit/)
  // Bytes sent: the agent's own count (bytes handed to the socket) and the origin's (bytes stored) are both 0.
  assert.equal(ended.upload?.sentBytes, 0)
  assert.equal(ended.bytes.transferred, 0)
  const metricsListen = (await agent.client.status()).metricsListen!
  assert.equal(await counter(`http://${metricsListen}/metrics`, 'canopy_agent_upload_sent_bytes_total'), 0)
  assert.equal(await bytesReceived(origin), 0)
  assert.deepEqual(await uploadDirContents(uploadDir), { visible: [], staged: [] })
})

test('a missing or wrong token is refused with 401, a download-only token with 403: the job says so, and nothing is stored; an upload token works', async (t) => {
  const uploader = 'uploader-token-7d1e'
  const reader = 'reader-token-2b9c'
  const { dir, origin, uploadDir, endpoint } = await uploadOrigin(t, {}, {
    tokens: [{ token: uploader, rights: ['upload'] }, { token: reader, rights: ['download'] }]
  })
  const { sha256 } = await randomFile(join(dir, 'f.bin'), 4 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['none', undefined, /HTTP 401: A valid bearer token with upload rights is required/],
    ['wrong', 'not-a-known-token', /HTTP 401: A valid bearer token with upload rights is required/],
    ['download-only', reader, /HTTP 403: This token has no upload rights/]
  ]
  for (const [label, token, reason] of cases) {
    const job = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, {
      name: `${label}.bin`,
      autoComplete: true,
      priority: 'foreground',
      ...(token !== undefined ? { http: { credentials: { scheme: 'bearer' as const, token } } } : {})
    })
    const ended = await finished(agent.client, job.id)
    assert.equal(ended.state, 'error', `${label}: ${JSON.stringify(ended)}`)
    assert.equal(ended.error?.code, 'ERR_HTTP_FORBIDDEN', JSON.stringify(ended.error))
    assert.equal(ended.error?.transient, false)
    assert.match(ended.error?.message ?? '', reason)
    assert.match(ended.error?.message ?? '', /check the token and its upload rights/)
    assert.equal(ended.upload?.sentBytes, 0)
  }
  assert.deepEqual(await uploadDirContents(uploadDir), { visible: [], staged: [] })
  assert.equal(await bytesReceived(origin, reader), 0)

  // The same agent and file with the upload token: stored whole.
  const good = await agent.client.createUpload(join(dir, 'f.bin'), endpoint, { autoComplete: true, priority: 'foreground', http: { credentials: { scheme: 'bearer', token: uploader } } })
  const done = await finished(agent.client, good.id)
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(join(uploadDir, 'f.bin')), sha256)
})

test('a full disk on the origin mid-upload: the job reports it (transient), no partial file is visible, and the same upload resumes once space is freed', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a small tmpfs as the origin\'s upload disk')
    return
  }
  const dir = await tempDir('canopy-upload-full-')
  const volume = join(dir, 'volume')
  await run('mkdir', ['-p', volume])
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=40m', 'tmpfs', volume])
  } catch (err) {
    t.skip(`cannot mount a tmpfs here (${String(err).split('\n')[0]}): the disk-full case needs one`)
    return
  }
  t.after(async () => { await run('umount', ['-l', volume]).catch(() => {}) })
  const uploadDir = join(volume, 'incoming')
  const { origin, endpoint } = await uploadOrigin(t, { dir: uploadDir }, { dir })
  const size = 24 * MiB
  const { sha256 } = await randomFile(join(dir, 'backup.tar'), size)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await agent.kill())
  // Slow enough that the disk fills under it; retried quickly once it failed.
  const job = await agent.client.createUpload(join(dir, 'backup.tar'), endpoint, {
    autoComplete: true, priority: 'foreground', rateLimit: 4 * MiB, limits: { retryMinMs: 200, retryMaxMs: 400 }
  })
  const started = await until(agent.client, job.id, j => j.bytes.transferred >= 2 * MiB || FINISHED.includes(j.state))
  assert.ok(started.bytes.transferred < size, 'the disk fills before the upload ends')
  // Another tenant of the disk takes every free byte (a file beside the upload directory, not in it).
  const filler = join(volume, 'filler')
  const handle = await open(filler, 'w')
  try {
    const chunk = Buffer.alloc(MiB, 1)
    for (;;) await handle.write(chunk)
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC')
  } finally {
    await handle.close()
  }
  const failed = await until(agent.client, job.id, j => j.error !== undefined || FINISHED.includes(j.state))
  assert.equal(failed.error?.code, 'ERR_ORIGIN_DISK_FULL', JSON.stringify(failed))
  assert.equal(failed.error?.transient, true)
  assert.match(failed.error?.message ?? '', /disk is full \(HTTP 507: The origin's upload disk is full/)
  assert.match(failed.error?.message ?? '', /resumes once space is freed/)
  assert.ok(['transient_error', 'transferring', 'connecting'].includes(failed.state), failed.state)
  // Nothing partial under a visible name: the bytes received wait in the staging directory.
  assert.deepEqual((await readdir(uploadDir)).filter(n => n !== STAGING_DIR), [])
  const uploadUrl = failed.upload?.uploadUrl
  assert.ok(uploadUrl !== undefined)

  await rm(filler)
  await agent.client.setRateLimit(job.id, null)
  const done = await finished(agent.client, job.id)
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.upload?.uploadUrl, uploadUrl, 'the same upload resumed, none was created anew')
  assert.equal(await fileSha256(join(uploadDir, 'backup.tar')), sha256)
  const stored = await bytesReceived(origin)
  t.diagnostic(`the origin stored ${stored} bytes for ${size}; the agent sent ${done.upload?.sentBytes}`)
  assert.ok(stored <= size + FRAGMENT, `the origin stored ${stored} bytes for a ${size}-byte file`)
  // The agent counts what it sent, bytes sent again after the failure included.
  assert.ok(done.upload!.sentBytes >= size, `sent ${done.upload?.sentBytes}`)
  const metricsListen = (await agent.client.status()).metricsListen!
  assert.equal(await counter(`http://${metricsListen}/metrics`, 'canopy_agent_upload_sent_bytes_total'), done.upload!.sentBytes)
})

test('a per-job rate limit applies to what an upload sends: --rate-limit 0 keeps it queued with the reason, raising it lets it finish', async (t) => {
  const { dir, uploadDir, endpoint } = await uploadOrigin(t)
  const { sha256 } = await randomFile(join(dir, 'f.bin'), 6 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const put = await runCli(['put', join(dir, 'f.bin'), endpoint, '--rate-limit', '0', '--detach', '--state-dir', agent.stateDir])
  assert.equal(put.code, 0, put.stderr)
  const id = put.stdout.trim()
  // Held in the queue (holding no slot), not transferring at 0 B/s.
  const held = await until(agent.client, id, j => (j.state === 'queued' && j.reason !== undefined) || FINISHED.includes(j.state))
  assert.equal(held.state, 'queued')
  assert.equal(held.rateLimit, 0)
  assert.equal(held.reason, 'blocked: this job\'s rate limit is 0')
  assert.equal(held.upload?.sentBytes, 0)
  assert.equal(held.bytes.transferred, 0)
  const set = await runCli(['set', id, '--rate-limit', '2MiB/s', '--state-dir', agent.stateDir])
  assert.equal(set.code, 0, set.stderr)
  const capped = await until(agent.client, id, j => j.reason !== held.reason || FINISHED.includes(j.state))
  if (!FINISHED.includes(capped.state)) assert.match(capped.reason ?? '', /capped at 2(\.0)? MiB\/s \(this job's rate limit\)/)
  const done = await finished(agent.client, id)
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(join(uploadDir, 'f.bin')), sha256)
})
