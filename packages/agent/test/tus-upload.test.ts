import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createReadStream, truncateSync } from 'node:fs'
import { appendFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FileStore } from '@tus/file-store'
import { Server as TusServer } from '@tus/server'
import { TransferError } from '../src/errors.ts'
import { TusErrorCode } from '../src/transfer/tus-protocol.ts'
import { DEFAULT_FRAGMENT_SIZE, tusUpload, type TusProgress, type TusUploadInit, type TusUploadResult } from '../src/transfer/tus-upload.ts'
import { fetchUploadReply } from '../src/transfer/tus-reply.ts'
import { tempDir } from '../../../test/helpers.ts'

const CLI = fileURLToPath(new URL('../../cli/bin/canopy.js', import.meta.url))
const MiB = 1024 * 1024
/** The bound of the issue: an interrupted upload sends again at most one fragment and 1 MiB. */
const RESEND_BOUND = DEFAULT_FRAGMENT_SIZE + MiB

async function randomFile (path: string, size: number): Promise<string> {
  const hash = createHash('sha256')
  for (let at = 0; at < size; at += 16 * MiB) {
    const chunk = randomBytes(Math.min(16 * MiB, size - at))
    hash.update(chunk)
    await appendFile(path, chunk)
  }
  return hash.digest('hex')
}

async function fileSha256 (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

interface OriginProcess { url: string, uploadUrl: string, port: number, child: ChildProcess, kill: () => Promise<void> }

/** `canopy origin` as a real process, with uploads into `uploadDir`. */
async function startOriginProcess (t: TestContext, dirs: { root: string, state: string, uploadDir: string }, extra: string[] = [], port = 0): Promise<OriginProcess> {
  const child = spawn(process.execPath, [CLI, 'origin', dirs.root, '--port', String(port), '--state-dir', dirs.state, '--upload-dir', dirs.uploadDir, '--upload-min-free', '0', ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, CANOPY_LOG_LEVEL: 'warn' }
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8')
  const ready = new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (d: string) => {
      stderr += d
      const m = /accepting uploads into .* at (http:\/\/\S+)/.exec(stderr)
      if (m !== null) resolve(m[1])
    })
    child.once('exit', code => reject(new Error(`canopy origin exited with ${code}: ${stderr}`)))
  })
  const kill = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
  t.after(kill)
  const uploadUrl = await ready
  const url = new URL(uploadUrl)
  return { url: url.origin, uploadUrl, port: Number(url.port), child, kill }
}

async function fixture (t: TestContext, name: string): Promise<{ dir: string, root: string, state: string, uploadDir: string }> {
  const dir = await tempDir(`canopy-tus-${name}-`)
  const dirs = { dir, root: join(dir, 'root'), state: join(dir, 'state'), uploadDir: join(dir, 'incoming') }
  await mkdir(dirs.root)
  await mkdir(dirs.uploadDir)
  return dirs
}

async function stagedRecords (uploadDir: string): Promise<string[]> {
  return await readdir(join(uploadDir, '.canopy-uploads'))
}

test('a 256 MiB upload completes; the server\'s SHA-256 matches the file\'s; pacing sees every byte', async t => {
  const dirs = await fixture(t, 'big')
  const origin = await startOriginProcess(t, dirs)
  const path = join(dirs.dir, 'big.bin')
  const size = 256 * MiB
  const digest = await randomFile(path, size)
  let gated = 0
  let largestPiece = 0
  let created: string | undefined
  const result = await tusUpload({}, {
    endpoint: origin.uploadUrl,
    path,
    onCreated: url => { created = url },
    beforeSend: async bytes => {
      gated += bytes
      largestPiece = Math.max(largestPiece, bytes)
    }
  })
  assert.equal(result.sha256, digest)
  assert.equal(result.serverSha256, digest)
  assert.equal(result.size, size)
  assert.equal(result.sent, size)
  assert.equal(result.created, 1)
  assert.equal(result.uploadUrl, created)
  assert.equal(gated, size)
  assert.ok(largestPiece <= MiB, `pieces of ${largestPiece} bytes are too coarse to pace`)
  assert.equal(await fileSha256(join(dirs.uploadDir, 'big.bin')), digest)
})

/** Uploads with `init`, stopping the first attempt through `interrupt` once 40% is sent; returns the bytes of both attempts. */
async function interruptedUpload (init: TusUploadInit, interrupt: (controller: AbortController) => void | Promise<void>): Promise<{ first: unknown, result: TusUploadResult, sentTotal: number }> {
  const controller = new AbortController()
  let uploadUrl: string | undefined
  let sentFirst = 0
  let interrupted = false
  const { size } = await stat(init.path)
  const first = await tusUpload({}, {
    ...init,
    signal: controller.signal,
    onCreated: url => { uploadUrl = url },
    onProgress: p => {
      sentFirst = p.sent
      if (!interrupted && p.uploaded >= size * 0.4) {
        interrupted = true
        void interrupt(controller)
      }
    }
  }).then(() => assert.fail('the first attempt should have been interrupted'), (err: unknown) => err)
  assert.ok(uploadUrl !== undefined)
  const resumedAt: TusProgress[] = []
  const result = await tusUpload({}, { ...init, uploadUrl, onProgress: p => { if (resumedAt.length === 0) resumedAt.push(p) } })
  // Before a byte is sent again, the progress is the server's offset (a resumed job's view shows it at once).
  assert.equal(resumedAt[0].sent, 0)
  assert.ok(resumedAt[0].uploaded >= size * 0.4 - 8 * MiB, `resumed at ${resumedAt[0].uploaded}`)
  return { first, result, sentTotal: sentFirst + result.sent }
}

test('an interrupted upload (checksums on) resumes from the server\'s offset and sends again at most one fragment + 1 MiB', async t => {
  const dirs = await fixture(t, 'resume')
  const origin = await startOriginProcess(t, dirs)
  const path = join(dirs.dir, 'resume.bin')
  const size = 64 * MiB
  const digest = await randomFile(path, size)
  // With per-fragment checksums, which the origin offers (OPTIONS) and checks.
  const { first, result, sentTotal } = await interruptedUpload({ endpoint: origin.uploadUrl, path, checksum: true }, c => c.abort())
  assert.equal((first as Error).name, 'AbortError')
  assert.equal(result.created, 0)
  assert.equal(result.serverSha256, digest)
  assert.ok(sentTotal - size <= RESEND_BOUND, `sent again ${sentTotal - size} bytes`)
  assert.equal(await fileSha256(join(dirs.uploadDir, 'resume.bin')), digest)
})

test('the origin killed (-9) mid-upload and restarted: the upload resumes and sends again at most one fragment + 1 MiB', async t => {
  const dirs = await fixture(t, 'restart')
  let origin = await startOriginProcess(t, dirs)
  const path = join(dirs.dir, 'restart.bin')
  const size = 96 * MiB
  const digest = await randomFile(path, size)
  const port = origin.port
  const controller = new AbortController()
  let uploadUrl: string | undefined
  let sentFirst = 0
  let killed: Promise<void> | undefined
  const first = await tusUpload({}, {
    endpoint: origin.uploadUrl,
    path,
    signal: controller.signal,
    onCreated: url => { uploadUrl = url },
    onProgress: p => {
      sentFirst = p.sent
      if (killed === undefined && p.uploaded >= size * 0.4) killed = origin.kill()
    }
  }).then(() => assert.fail('the upload should have failed with the origin gone'), (err: unknown) => err)
  await killed
  assert.ok(first instanceof TransferError, String(first))
  assert.equal(first.transient, true, first.message)
  origin = await startOriginProcess(t, dirs, [], port)
  const result = await tusUpload({}, { endpoint: origin.uploadUrl, path, uploadUrl })
  assert.equal(result.created, 0)
  assert.equal(result.serverSha256, digest)
  const sentAgain = sentFirst + result.sent - size
  assert.ok(sentAgain <= RESEND_BOUND, `sent again ${sentAgain} bytes`)
  assert.equal(await fileSha256(join(dirs.uploadDir, 'restart.bin')), digest)
})

test('the local file changed mid-upload: a non-transient error with a plain reason; a different file at resumption too', async t => {
  const dirs = await fixture(t, 'changed')
  const origin = await startOriginProcess(t, dirs)
  const path = join(dirs.dir, 'log.txt')
  await randomFile(path, 40 * MiB)
  let touched = false
  const err = await tusUpload({}, {
    endpoint: origin.uploadUrl,
    path,
    fragmentSize: 4 * MiB,
    onProgress: p => {
      if (!touched && p.uploaded > 10 * MiB) {
        touched = true
        void appendFile(path, 'one more line\n')
      }
    }
  }).then(() => assert.fail('a changed file must not upload'), (e: unknown) => e)
  assert.ok(err instanceof TransferError)
  assert.equal(err.code, TusErrorCode.LocalFileChanged)
  assert.equal(err.transient, false)
  assert.match(err.message, /changed while it was being uploaded \(its size went from \d+ to \d+ bytes\)/)
  await assert.rejects(stat(join(dirs.uploadDir, 'log.txt')), { code: 'ENOENT' })

  // Cut short while a fragment is sent and the next one is read ahead: the same error
  // (not a network error, no unhandled rejection from the read ahead).
  const cut = join(dirs.dir, 'cut.log')
  await randomFile(cut, 24 * MiB)
  let truncated = false
  const cutErr = await tusUpload({}, {
    endpoint: origin.uploadUrl,
    path: cut,
    fragmentSize: 16 * MiB,
    onProgress: p => {
      if (!truncated && p.uploaded > 2 * MiB) {
        truncated = true
        truncateSync(cut, 3 * MiB)
      }
    }
  }).then(() => assert.fail('a truncated file must not upload'), (e: unknown) => e)
  assert.ok(cutErr instanceof TransferError, String(cutErr))
  assert.equal(cutErr.code, TusErrorCode.LocalFileChanged)
  assert.match(cutErr.message, /changed while it was being uploaded \((its size went from|it became shorter)/)

  // The job remembered the file as it was; at resumption it is another file.
  const before = await stat(path)
  await rm(path)
  await writeFile(path, 'replaced')
  await assert.rejects(tusUpload({}, { endpoint: origin.uploadUrl, path, expectedFile: { size: before.size, mtimeMs: before.mtimeMs, ino: before.ino, dev: before.dev } }),
    { code: TusErrorCode.LocalFileChanged })
})

test('refusals before any byte is sent: too large (from Upload-Length), a bad name, a missing or wrong token; nothing is stored', async t => {
  const dirs = await fixture(t, 'refused')
  const tokens = join(dirs.dir, 'tokens')
  await writeFile(tokens, '# readers and writers\nreader\nwriter upload\n', { mode: 0o600 })
  const origin = await startOriginProcess(t, dirs, ['--upload-max-size', '1MiB', '--token-file', tokens])
  const path = join(dirs.dir, 'two.bin')
  await randomFile(path, 2 * MiB)
  const small = join(dirs.dir, 'small.bin')
  await randomFile(small, 1000)
  let sent = 0
  const init = { endpoint: origin.uploadUrl, beforeSend: async (n: number) => { sent += n } }
  await assert.rejects(tusUpload({}, { ...init, path, headers: { authorization: 'Bearer writer' } }), (err: TransferError) => {
    assert.equal(err.code, TusErrorCode.TooLarge)
    assert.equal(err.transient, false)
    return true
  })
  await assert.rejects(tusUpload({}, { ...init, path: small, name: '../escape.bin', headers: { authorization: 'Bearer writer' } }), (err: TransferError) => {
    assert.equal(err.code, TusErrorCode.Refused)
    assert.match(err.message, /HTTP 400: Bad upload name: .*path separator/)
    return true
  })
  for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: 'Bearer reader' }] as Array<Record<string, string>>) {
    await assert.rejects(tusUpload({}, { ...init, path: small, headers }), { code: 'ERR_HTTP_FORBIDDEN' })
  }
  assert.equal(sent, 0)
  assert.deepEqual(await stagedRecords(dirs.uploadDir), [])
  assert.deepEqual(await readdir(dirs.uploadDir), ['.canopy-uploads'])
  const ok = await tusUpload({}, { ...init, path: small, headers: { authorization: 'Bearer writer' } })
  assert.equal(ok.serverSha256, ok.sha256)
})

test('the origin\'s disk fills mid-upload: a clear transient error, no partial file visible, and it resumes once space is freed', async t => {
  const dirs = await fixture(t, 'full')
  const mount = promisify(execFile)
  try {
    await mount('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', dirs.uploadDir])
  } catch (err) {
    t.skip(`a small tmpfs is needed to fill a disk, and mounting one failed (not root?): ${(err as Error).message}`)
    return
  }
  t.after(async () => { await mount('umount', ['-l', dirs.uploadDir]).catch(() => {}) })
  const origin = await startOriginProcess(t, dirs)
  const path = join(dirs.dir, 'backup.tar')
  const digest = await randomFile(path, 16 * MiB)
  const ballast = join(dirs.uploadDir, 'ballast')
  let uploadUrl: string | undefined
  const err = await tusUpload({}, {
    endpoint: origin.uploadUrl,
    path,
    fragmentSize: 4 * MiB,
    // After the free-space check at creation, something else takes most of the disk.
    onCreated: async url => {
      uploadUrl = url
      await writeFile(ballast, Buffer.alloc(14 * MiB))
    }
  }).then(() => assert.fail('the upload cannot fit'), (e: unknown) => e)
  assert.ok(err instanceof TransferError, String(err))
  assert.equal(err.code, TusErrorCode.ServerDiskFull, err.message)
  assert.equal(err.transient, true)
  assert.match(err.message, /disk is full.*resume/)
  assert.deepEqual((await readdir(dirs.uploadDir)).sort(), ['.canopy-uploads', 'ballast'])
  await rm(ballast)
  const result = await tusUpload({}, { endpoint: origin.uploadUrl, path, uploadUrl, fragmentSize: 4 * MiB })
  assert.equal(result.created, 0)
  assert.equal(result.serverSha256, digest)
  assert.equal(await fileSha256(join(dirs.uploadDir, 'backup.tar')), digest)
})

test('upload-reply round trip: the handler\'s stdout arrives at the reply path', async t => {
  const dirs = await fixture(t, 'reply')
  const origin = await startOriginProcess(t, dirs, ['--on-upload', 'printf "stored %s as %s (%s bytes)" "$CANOPY_UPLOAD_SHA256" "$CANOPY_UPLOAD_NAME" "$CANOPY_UPLOAD_SIZE"'])
  const path = join(dirs.dir, 'inventory.json')
  const digest = await randomFile(path, 3 * MiB + 5)
  const result = await tusUpload({}, { endpoint: origin.uploadUrl, path, name: 'pc-042.json' })
  assert.equal(result.replyUrl, `${result.uploadUrl}/reply`)
  const replyPath = join(dirs.dir, 'reply.txt')
  const bytes = await fetchUploadReply({}, { replyUrl: result.replyUrl!, path: replyPath })
  const expected = `stored ${digest} as pc-042.json (${3 * MiB + 5} bytes)`
  assert.equal(await readFile(replyPath, 'utf8'), expected)
  assert.equal(bytes, expected.length)
  await assert.rejects(fetchUploadReply({}, { replyUrl: result.replyUrl!, path: replyPath, maxBytes: 10 }), { code: TusErrorCode.Reply })
})

test('interop: the client against a third-party tus server (bare @tus/server): uploads, and reports that it has no server digest', async t => {
  const dir = await tempDir('canopy-tus-interop-')
  const tus = new TusServer({ path: '/files', datastore: new FileStore({ directory: join(dir, 'store') }) })
  const server = createServer((req, res) => { void tus.handle(req, res) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) }))
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/files`
  const path = join(dir, 'plain.bin')
  const digest = await randomFile(path, 5 * MiB + 3)
  const result = await tusUpload({}, { endpoint, path, fragmentSize: 2 * MiB })
  assert.equal(result.sha256, digest)
  assert.equal(result.serverSha256, undefined)
  const id = new URL(result.uploadUrl).pathname.split('/').pop()!
  assert.equal(await fileSha256(join(dir, 'store', id)), digest)
  await assert.rejects(tusUpload({}, { endpoint, path, verify: 'required' }), { code: 'ERR_PROTOCOL' })
})
