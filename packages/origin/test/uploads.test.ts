import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect } from 'node:net'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { lstat, mkdir, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as tus from 'tus-js-client'
import { startOrigin, STAGING_DIR, type Origin, type OriginOptions, type UploadOptions } from '../src/index.ts'
import { tempDir } from '../../../test/helpers.ts'

interface Reply { status: number, headers: IncomingHttpHeaders, body: Buffer }

/** A raw request through node:http, so the test controls every header and byte. */
function send (origin: Origin, path: string, method: string, headers: Record<string, string> = {}, body?: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: origin.port, path, method, headers, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    // The origin may answer (401, 413) and close before taking a body.
    req.on('error', err => (err as NodeJS.ErrnoException).code === 'EPIPE' || (err as NodeJS.ErrnoException).code === 'ECONNRESET' ? undefined : reject(err))
    req.end(body)
  })
}

interface Fixture { origin: Origin, root: string, uploadDir: string, stateDir: string }

async function setup (t: TestContext, uploads: Partial<UploadOptions> = {}, options: Partial<OriginOptions> = {}): Promise<Fixture> {
  const root = await tempDir('canopy-uploads-root-')
  const stateDir = join(await tempDir('canopy-uploads-state-'), 'state')
  const uploadDir = uploads.dir ?? join(root, 'incoming')
  await mkdir(uploadDir, { recursive: true })
  const origin = await startOrigin({ root, stateDir, scan: false, ...options, uploads: { minFreeBytes: 0, ...uploads, dir: uploadDir } })
  t.after(() => origin.close())
  return { origin, root, uploadDir, stateDir }
}

const TUS = { 'tus-resumable': '1.0.0' }
const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64')
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

async function create (origin: Origin, name: string | undefined, length: number, headers: Record<string, string> = {}): Promise<Reply> {
  return await send(origin, '/uploads/', 'POST', {
    ...TUS, 'upload-length': String(length), ...(name === undefined ? {} : { 'upload-metadata': `filename ${b64(name)}` }), ...headers
  })
}

async function patch (origin: Origin, location: string, offset: number, bytes: Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return await send(origin, location, 'PATCH', {
    ...TUS, 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream', 'content-length': String(bytes.length), ...headers
  }, bytes)
}

/** What the staging directory holds (records and partial data). */
async function staged (uploadDir: string): Promise<string[]> {
  return (await readdir(join(uploadDir, STAGING_DIR))).sort()
}

function reprDigestHex (headers: IncomingHttpHeaders): string | undefined {
  const m = /sha-256=:([^:]+):/.exec(String(headers['repr-digest'] ?? ''))
  return m === null ? undefined : Buffer.from(m[1], 'base64').toString('hex')
}

test('tus-js-client uploads through the origin: the file appears whole under its name, with the SHA-256 in Repr-Digest', async t => {
  const { origin, uploadDir } = await setup(t)
  const data = randomBytes(5 * 1024 * 1024 + 7)
  const digest = await new Promise<string | null>((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint: origin.uploadUrl,
      chunkSize: 1024 * 1024,
      metadata: { filename: 'hello.bin' },
      retryDelays: null,
      onError: reject,
      onSuccess: payload => resolve(payload.lastResponse.getHeader('repr-digest') ?? null)
    })
    upload.start()
  })
  assert.deepEqual(await readFile(join(uploadDir, 'hello.bin')), data)
  assert.equal(digest, `sha-256=:${createHash('sha256').update(data).digest('base64')}:`)
  assert.deepEqual(await readdir(uploadDir), [STAGING_DIR, 'hello.bin'].sort())
  const metrics = (await send(origin, '/metrics', 'GET')).body.toString()
  assert.match(metrics, new RegExp(`canopy_origin_upload_bytes_received_total ${data.length}\\b`))
  assert.match(metrics, /canopy_origin_uploads_completed_total 1\b/)
})

test('an unfinished upload is invisible: no file under its name, its partial bytes never served; the final PATCH can be replayed', async t => {
  const { origin, uploadDir } = await setup(t)
  const data = randomBytes(300_000)
  const created = await create(origin, 'report.csv', data.length)
  assert.equal(created.status, 201, created.body.toString())
  const location = String(created.headers.location)
  assert.match(location, /^\/uploads\/[0-9a-f]{32}$/)
  const first = await patch(origin, location, 0, data.subarray(0, 100_000))
  assert.equal(first.status, 204)
  // Expiry counts from the last byte received: 14 days from now.
  const expires = Date.parse(String(first.headers['upload-expires']))
  assert.ok(Math.abs(expires - (Date.now() + 14 * 24 * 3600_000)) < 120_000, String(first.headers['upload-expires']))
  await assert.rejects(stat(join(uploadDir, 'report.csv')), { code: 'ENOENT' })
  // The upload directory is under the served root here; its staging directory is not served.
  const id = location.split('/').pop()!
  assert.equal((await send(origin, `/incoming/${STAGING_DIR}/${id}`, 'GET')).status, 404)
  assert.equal((await send(origin, `/incoming/${STAGING_DIR}/`, 'GET')).status, 404)
  const head = await send(origin, location, 'HEAD', TUS)
  assert.equal(head.headers['upload-offset'], '100000')

  const last = await patch(origin, location, 100_000, data.subarray(100_000))
  assert.equal(last.status, 204)
  assert.equal(reprDigestHex(last.headers), sha256(data))
  assert.deepEqual(await readFile(join(uploadDir, 'report.csv')), data)
  // The answer to the final PATCH was lost: asking again gives the same outcome, and HEAD says it too.
  const again = await patch(origin, location, data.length, Buffer.alloc(0))
  assert.equal(again.status, 204)
  assert.equal(reprDigestHex(again.headers), sha256(data))
  const doneHead = await send(origin, location, 'HEAD', TUS)
  assert.equal(doneHead.headers['upload-offset'], String(data.length))
  assert.equal(reprDigestHex(doneHead.headers), sha256(data))
  // The downloadable tree now serves the completed file.
  assert.deepEqual((await send(origin, '/incoming/report.csv', 'GET')).body, data)
  // A completed upload cannot be terminated.
  assert.equal((await send(origin, location, 'DELETE', TUS)).status, 400)
})

test('names that would leave the upload directory are refused with 400, and nothing is stored', async t => {
  const { origin, uploadDir, root } = await setup(t)
  for (const name of ['../escape.txt', '../../etc/passwd', '/etc/passwd', 'a/b.txt', 'a\\b.txt', '..', '.', 'nul\0byte', 'new\nline', STAGING_DIR, 'x'.repeat(256)]) {
    const r = await create(origin, name, 10)
    assert.equal(r.status, 400, `${JSON.stringify(name)}: ${r.body.toString()}`)
    assert.match(r.body.toString(), /^Bad upload name: /)
  }
  const missing = await create(origin, undefined, 10)
  assert.equal(missing.status, 400)
  assert.match(missing.body.toString(), /filename/)
  assert.deepEqual(await staged(uploadDir), [])
  assert.deepEqual((await readdir(root)).sort(), ['incoming'])
})

test('limits: too large is refused from Upload-Length (413), too many sessions 503, no room 507; deferred length is not offered', async t => {
  const { origin, uploadDir } = await setup(t, { maxSize: 1_000_000, maxSessions: 2 })
  const big = await create(origin, 'big.bin', 1_000_001)
  assert.equal(big.status, 413)
  assert.deepEqual(await staged(uploadDir), [])
  const options = await send(origin, '/uploads/', 'OPTIONS')
  assert.equal(options.headers['tus-max-size'], '1000000')
  assert.equal(options.headers['tus-extension'], 'creation,creation-with-upload,termination,expiration,checksum')
  assert.equal(options.headers['tus-checksum-algorithm'], 'sha1,sha256')
  const deferred = await send(origin, '/uploads/', 'POST', { ...TUS, 'upload-defer-length': '1', 'upload-metadata': `filename ${b64('d.bin')}` })
  assert.equal(deferred.status, 501)

  assert.equal((await create(origin, 'one.bin', 10)).status, 201)
  const second = await create(origin, 'two.bin', 10)
  assert.equal(second.status, 201)
  const third = await create(origin, 'three.bin', 10)
  assert.equal(third.status, 503)
  assert.match(third.body.toString(), /2 unfinished uploads/)
  // Terminating one frees its place.
  assert.equal((await send(origin, String(second.headers.location), 'DELETE', TUS)).status, 204)
  assert.equal((await create(origin, 'three.bin', 10)).status, 201)

  const { origin: cramped } = await setup(t, { minFreeBytes: Number.MAX_SAFE_INTEGER - 1 })
  const noRoom = await create(cramped, 'x.bin', 10)
  assert.equal(noRoom.status, 507)
  assert.match(noRoom.body.toString(), /Not enough free space/)
})

test('upload rights: no token 401, a wrong one 401, a download-only token 403, and nothing is stored; an upload-only token cannot download', async t => {
  const { origin, uploadDir } = await setup(t, {}, {
    tokens: ['reader', { token: 'writer', rights: ['upload'] }, { token: 'both', rights: ['download', 'upload'] }]
  })
  for (const [authorization, status] of [[undefined, 401], ['Bearer nope', 401], ['Bearer reader', 403]] as const) {
    const headers: Record<string, string> = authorization === undefined ? {} : { authorization }
    const r = await create(origin, 'secret.bin', 10, headers)
    assert.equal(r.status, status, `${authorization ?? 'no token'}: ${r.body.toString()}`)
    if (status === 401) assert.match(String(r.headers['www-authenticate']), /^Bearer realm="canopy"/)
  }
  assert.deepEqual(await staged(uploadDir), [])
  const created = await create(origin, 'secret.bin', 10, { authorization: 'Bearer writer' })
  assert.equal(created.status, 201)
  const location = String(created.headers.location)
  // Bytes sent with a bad token are not stored.
  const sneaky = await patch(origin, location, 0, Buffer.from('0123456789'), { authorization: 'Bearer reader' })
  assert.equal(sneaky.status, 403)
  const head = await send(origin, location, 'HEAD', { ...TUS, authorization: 'Bearer both' })
  assert.equal(head.headers['upload-offset'], '0')
  assert.equal((await send(origin, location, 'HEAD', TUS)).status, 401)
  assert.equal((await send(origin, '/metrics', 'GET', { authorization: 'Bearer writer' })).status, 403)
  assert.equal((await send(origin, '/metrics', 'GET', { authorization: 'Bearer reader' })).status, 200)
})

test('checksum extension: a fragment whose sha256 does not match is refused with 460 and not kept', async t => {
  const { origin, uploadDir } = await setup(t)
  const data = randomBytes(70_000)
  const location = String((await create(origin, 'sum.bin', data.length)).headers.location)
  const good = `sha256 ${createHash('sha256').update(data.subarray(0, 40_000)).digest('base64')}`
  const bad = await patch(origin, location, 0, data.subarray(0, 40_000), { 'upload-checksum': `sha256 ${createHash('sha256').update('other').digest('base64')}` })
  assert.equal(bad.status, 460)
  assert.equal((await send(origin, location, 'HEAD', TUS)).headers['upload-offset'], '0')
  const unknown = await patch(origin, location, 0, data.subarray(0, 40_000), { 'upload-checksum': 'crc32 AAAAAA==' })
  assert.equal(unknown.status, 400)
  assert.equal((await patch(origin, location, 0, data.subarray(0, 40_000), { 'upload-checksum': good })).status, 204)
  const sha1 = `sha1 ${createHash('sha1').update(data.subarray(40_000)).digest('base64')}`
  const last = await patch(origin, location, 40_000, data.subarray(40_000), { 'upload-checksum': sha1 })
  assert.equal(last.status, 204)
  assert.equal(reprDigestHex(last.headers), sha256(data))
  assert.deepEqual(await readFile(join(uploadDir, 'sum.bin')), data)
})

test('an existing file (or a symlink) is not replaced unless overwrite is on, and a symlink is never followed', async t => {
  const { origin, uploadDir } = await setup(t)
  await writeFile(join(uploadDir, 'taken.txt'), 'keep me')
  const r = await create(origin, 'taken.txt', 5)
  assert.equal(r.status, 409)
  assert.equal(await readFile(join(uploadDir, 'taken.txt'), 'utf8'), 'keep me')

  // The name is free at creation and taken before completion: the final PATCH is a 409, the bytes wait.
  const location = String((await create(origin, 'late.txt', 5)).headers.location)
  await writeFile(join(uploadDir, 'late.txt'), 'first')
  const clash = await patch(origin, location, 0, Buffer.from('later'))
  assert.equal(clash.status, 409)
  assert.equal(await readFile(join(uploadDir, 'late.txt'), 'utf8'), 'first')
  await rm(join(uploadDir, 'late.txt'))
  const retry = await patch(origin, location, 5, Buffer.alloc(0))
  assert.equal(retry.status, 204)
  assert.equal(await readFile(join(uploadDir, 'late.txt'), 'utf8'), 'later')

  // A symlink under the upload directory pointing outside it is a taken name, never followed.
  const outside = join(await tempDir('canopy-uploads-outside-'), 'target.txt')
  await writeFile(outside, 'outside')
  await symlink(outside, join(uploadDir, 'link.txt'))
  assert.equal((await create(origin, 'link.txt', 3)).status, 409)

  const { origin: replacing, uploadDir: dir2 } = await setup(t, { overwrite: true })
  await writeFile(join(dir2, 'taken.txt'), 'old')
  const loc2 = String((await create(replacing, 'taken.txt', 3)).headers.location)
  assert.equal((await patch(replacing, loc2, 0, Buffer.from('new'))).status, 204)
  assert.equal(await readFile(join(dir2, 'taken.txt'), 'utf8'), 'new')
  // Overwriting replaces the symlink itself, not the file it points to.
  await symlink(outside, join(dir2, 'link.txt'))
  const loc3 = String((await create(replacing, 'link.txt', 3)).headers.location)
  assert.equal((await patch(replacing, loc3, 0, Buffer.from('new'))).status, 204)
  assert.equal(await readFile(outside, 'utf8'), 'outside')
  assert.ok((await lstat(join(dir2, 'link.txt'))).isFile())
})

test('an upload idle past the expiry is gone (410), and deleted at the next start', async t => {
  const root = await tempDir('canopy-uploads-expiry-')
  const uploadDir = join(root, 'up')
  await mkdir(uploadDir)
  const options = { root, stateDir: join(root, 'state'), scan: false, uploads: { dir: uploadDir, minFreeBytes: 0, expiryMs: 60_000 } }
  let origin = await startOrigin(options)
  t.after(() => origin.close())
  const location = String((await create(origin, 'idle.bin', 10)).headers.location)
  assert.equal((await patch(origin, location, 0, Buffer.from('01234'))).status, 204)
  const id = location.split('/').pop()!
  const old = new Date(Date.now() - 120_000)
  for (const name of [id, `${id}.json`]) await utimes(join(uploadDir, STAGING_DIR, name), old, old)
  assert.equal((await send(origin, location, 'HEAD', TUS)).status, 410)
  await origin.close()
  origin = await startOrigin(options)
  assert.deepEqual(await staged(uploadDir), [])
  assert.equal((await send(origin, location, 'HEAD', TUS)).status, 404)
})

test('a crash between the completion record and the move into place: the next start finishes the move', async t => {
  const root = await tempDir('canopy-uploads-crash-')
  const uploadDir = join(root, 'up')
  await mkdir(uploadDir)
  const options = { root, stateDir: join(root, 'state'), scan: false, uploads: { dir: uploadDir, minFreeBytes: 0 } }
  let origin = await startOrigin(options)
  t.after(() => origin.close())
  const data = randomBytes(50_000)
  const location = String((await create(origin, 'crash.bin', data.length)).headers.location)
  assert.equal((await patch(origin, location, 0, data)).status, 204)
  await origin.close()
  // The state the origin leaves when it dies after writing `<id>.done` and before the move.
  const id = location.split('/').pop()!
  await rename(join(uploadDir, 'crash.bin'), join(uploadDir, STAGING_DIR, id))
  await writeFile(join(uploadDir, STAGING_DIR, `${id}.json`), JSON.stringify({ id, size: data.length, offset: 0, metadata: { filename: 'crash.bin' } }))
  origin = await startOrigin(options)
  assert.deepEqual(await readFile(join(uploadDir, 'crash.bin')), data)
  assert.deepEqual(await staged(uploadDir), [`${id}.done`])
  const head = await send(origin, location, 'HEAD', TUS)
  assert.equal(head.headers['upload-offset'], String(data.length))
  assert.equal(reprDigestHex(head.headers), sha256(data))
})

test('upload-reply: the handler sees the upload in its environment; its stdout is the reply; failures and oversize replies are 502', async t => {
  const script = [
    'if [ "$CANOPY_UPLOAD_NAME" = fail.txt ]; then echo broken >&2; exit 3; fi',
    'if [ "$CANOPY_UPLOAD_NAME" = chatty.txt ]; then head -c 5000 /dev/zero; exit 0; fi',
    'printf "%s|%s|%s|%s|" "$CANOPY_UPLOAD_NAME" "$CANOPY_UPLOAD_SIZE" "$CANOPY_UPLOAD_SHA256" "$CANOPY_UPLOAD_METADATA"',
    'cat "$CANOPY_UPLOAD_PATH"'
  ].join('\n')
  const { origin } = await setup(t, { handler: { command: ['/bin/sh', '-c', script], maxReplyBytes: 4096 } })
  const upload = async (name: string, data: Buffer): Promise<{ location: string, last: Reply }> => {
    const created = await send(origin, '/uploads/', 'POST', { ...TUS, 'upload-length': String(data.length), 'upload-metadata': `filename ${b64(name)},ticket ${b64('T-42')}` })
    const location = String(created.headers.location)
    return { location, last: await patch(origin, location, 0, data) }
  }
  const { location, last } = await upload('hello.txt', Buffer.from('hello world'))
  assert.equal(last.status, 204)
  assert.equal(last.headers['canopy-reply-location'], `${location}/reply`)
  const reply = await send(origin, `${location}/reply`, 'GET')
  assert.equal(reply.status, 200)
  assert.equal(reply.body.toString(), `hello.txt|11|${sha256(Buffer.from('hello world'))}|{"filename":"hello.txt","ticket":"T-42"}|hello world`)
  assert.equal((await send(origin, `${location}/reply`, 'PUT')).status, 405)

  const failed = await upload('fail.txt', Buffer.from('x'))
  const failedReply = await send(origin, `${failed.location}/reply`, 'GET')
  assert.equal(failedReply.status, 502)
  assert.match(failedReply.body.toString(), /exited with code 3; stderr: broken/)
  const chatty = await upload('chatty.txt', Buffer.from('y'))
  const chattyReply = await send(origin, `${chatty.location}/reply`, 'GET')
  assert.equal(chattyReply.status, 502)
  assert.match(chattyReply.body.toString(), /longer than 4096 bytes/)
  assert.equal((await send(origin, `/uploads/${'0'.repeat(32)}/reply`, 'GET')).status, 404)
})

test('request targets outside the protocol: bad ids 404, GET of an upload 405, unknown methods 405', async t => {
  const { origin } = await setup(t)
  assert.equal((await send(origin, '/uploads/../../etc/passwd', 'HEAD', TUS)).status, 404)
  assert.equal((await send(origin, '/uploads/not-an-id', 'PATCH', TUS)).status, 404)
  assert.equal((await send(origin, '/uploads/', 'GET')).status, 405)
  assert.equal((await send(origin, `/uploads/${'a'.repeat(32)}`, 'POST', TUS)).status, 405)
  assert.equal((await send(origin, '/uploads/', 'PUT', TUS)).status, 405)
  assert.equal((await send(origin, `/uploads/${'a'.repeat(32)}`, 'HEAD', TUS)).status, 404)
})

test('canopy origin: token rights are parsed strictly; upload flags are checked before the origin starts', async () => {
  const dir = await tempDir('canopy-uploads-cli-')
  const cli = fileURLToPath(new URL('../../cli/bin/canopy.js', import.meta.url))
  const root = join(dir, 'root')
  await mkdir(root)
  const run = async (args: string[]): Promise<{ code: number | null, stderr: string }> => {
    const child = spawn(process.execPath, [cli, 'origin', root, '--port', '0', '--state-dir', join(dir, 'state'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const [code] = await once(child, 'close') as [number | null]
    return { code, stderr }
  }
  const tokens = join(dir, 'tokens')
  await writeFile(tokens, 'reader\nwriter admin\n', { mode: 0o600 })
  const badRights = await run(['--token-file', tokens])
  assert.equal(badRights.code, 2)
  assert.match(badRights.stderr, /line 2: write "TOKEN" or "TOKEN RIGHTS"/)

  await writeFile(tokens, 'reader\n', { mode: 0o600 })
  const open = await run(['--host', '0.0.0.0', '--token-file', tokens, '--upload-dir', root])
  assert.equal(open.code, 2)
  assert.match(open.stderr, /needs a --token-file with a token that has upload rights/)
  const stray = await run(['--on-upload', 'true'])
  assert.equal(stray.code, 2)
  assert.match(stray.stderr, /--on-upload needs --upload-dir/)
  const noHandler = await run(['--upload-dir', root, '--on-upload-timeout', '5s'])
  assert.equal(noHandler.code, 2)
  const badSize = await run(['--upload-dir', root, '--upload-max-size', 'huge'])
  assert.equal(badSize.code, 2)
  assert.match(badSize.stderr, /--upload-max-size huge/)
})

test('an empty upload completes at creation; creation-with-upload stores the POST body', async t => {
  const { origin, uploadDir } = await setup(t)
  const empty = await create(origin, 'empty.txt', 0)
  assert.equal(empty.status, 201)
  assert.equal(reprDigestHex(empty.headers), sha256(Buffer.alloc(0)))
  assert.equal((await stat(join(uploadDir, 'empty.txt'))).size, 0)
  const withBody = await send(origin, '/uploads/', 'POST', {
    ...TUS, 'upload-length': '5', 'upload-metadata': `filename ${b64('body.txt')}`, 'content-type': 'application/offset+octet-stream', 'content-length': '5'
  }, Buffer.from('hello'))
  assert.equal(withBody.status, 201)
  assert.equal(withBody.headers['upload-offset'], '5')
  assert.equal(reprDigestHex(withBody.headers), sha256(Buffer.from('hello')))
  assert.equal(await readFile(join(uploadDir, 'body.txt'), 'utf8'), 'hello')
  assert.deepEqual((await staged(uploadDir)).filter(n => !n.endsWith('.done')), [])
})

test('PATCH bodies are read from the request itself: a chunked body longer than the upload is refused (413) and not kept past it; a client gone mid-body keeps what arrived, and the upload completes with the right digest', async t => {
  const { origin, uploadDir } = await setup(t)
  const data = randomBytes(200_000)
  const offsetOf = async (location: string): Promise<number> => Number((await send(origin, location, 'HEAD', TUS)).headers['upload-offset'])
  const finish = async (location: string, name: string): Promise<void> => {
    const offset = await offsetOf(location)
    const last = await patch(origin, location, offset, data.subarray(offset))
    assert.equal(last.status, 204, last.body.toString())
    assert.equal(reprDigestHex(last.headers), sha256(data))
    assert.deepEqual(await readFile(join(uploadDir, name)), data)
  }

  // No Content-Length: nothing but the store's limit stops a body longer than the upload.
  const long = String((await create(origin, 'long.bin', data.length)).headers.location)
  const tooLong = await send(origin, long, 'PATCH', {
    ...TUS, 'upload-offset': '0', 'content-type': 'application/offset+octet-stream', 'transfer-encoding': 'chunked'
  }, Buffer.concat([data, Buffer.from('x')]))
  assert.equal(tooLong.status, 413, tooLong.body.toString())
  // What came before the chunk that crossed the limit may stay (as with @tus/server's own limiter), never more.
  assert.ok(await offsetOf(long) <= data.length)
  await finish(long, 'long.bin')

  // A client that announces 100 000 bytes and goes away after half of them.
  const cut = String((await create(origin, 'cut.bin', data.length)).headers.location)
  assert.equal((await patch(origin, cut, 0, data.subarray(0, 100_000))).status, 204)
  const socket = connect(origin.port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(`PATCH ${cut} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 100000\r\n` +
    'Content-Type: application/offset+octet-stream\r\nContent-Length: 100000\r\n\r\n')
  socket.write(data.subarray(100_000, 150_000))
  await new Promise(resolve => setTimeout(resolve, 100))
  socket.destroy()
  // The origin stores what arrived, then answers HEAD with it.
  let offset = await offsetOf(cut)
  for (let i = 0; i < 100 && offset !== 150_000; i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
    offset = await offsetOf(cut)
  }
  assert.equal(offset, 150_000)
  await finish(cut, 'cut.bin')
})
