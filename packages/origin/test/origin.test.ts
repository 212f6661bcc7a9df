import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { mkdir, readFile, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { contentKey, createManifest, decodeManifest, MANIFEST_MEDIA_TYPE, SIDECAR_SUFFIX, type Logger } from '@canopy/core'
import { loadOrCreateSecret, publishSidecar, startOrigin, type Origin, type OriginOptions } from '../src/index.ts'
import { tempDir } from '../../../test/helpers.ts'

async function * oneChunk (bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes
}

interface Reply { status: number, headers: IncomingHttpHeaders, body: Buffer }

/** Raw request through node:http: the path goes on the wire exactly as given (fetch would normalise `..`). */
function send (origin: Origin, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: origin.port, path, method, headers, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

interface Fixture { origin: Origin, root: string, stateDir: string, data: Buffer }

/** An origin serving root/data.bin (3 MiB + 123 bytes of random data). */
async function setup (t: TestContext, options: Partial<OriginOptions> = {}): Promise<Fixture> {
  const root = await tempDir('canopy-origin-root-')
  const stateDir = join(await tempDir('canopy-origin-state-'), 'state')
  const data = randomBytes(3 * 1024 * 1024 + 123)
  await writeFile(join(root, 'data.bin'), data)
  const origin = await startOrigin({ root, stateDir, ...options })
  t.after(() => origin.close())
  return { origin, root, stateDir, data }
}

/** A logger that records what it is told, to see what the origin did. */
function recordingLogger (): Logger & { records: Array<{ level: string, message: string, fields?: Record<string, unknown> }> } {
  const records: Array<{ level: string, message: string, fields?: Record<string, unknown> }> = []
  const at = (level: string) => (message: string, fields?: Record<string, unknown>): void => { records.push({ level, message, fields }) }
  return { records, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

const computed = (logger: ReturnType<typeof recordingLogger>): unknown[] =>
  logger.records.filter(r => r.message === 'manifest computed').map(r => r.fields?.path)

async function metricValue (origin: Origin, name: string, labels: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await send(origin, '/metrics', headers)
  assert.equal(res.status, 200)
  const line = res.body.toString().split('\n').find(l => l.startsWith(`${name}${labels} `))
  return line === undefined ? 0 : Number(line.split(' ')[1])
}

test('GET serves the whole file with validators', async t => {
  const { origin, data } = await setup(t)
  const res = await send(origin, '/data.bin')
  assert.equal(res.status, 200)
  assert.ok(res.body.equals(data))
  assert.equal(res.headers['content-length'], String(data.length))
  assert.equal(res.headers['content-type'], 'application/octet-stream')
  assert.equal(res.headers['accept-ranges'], 'bytes')
  assert.match(res.headers.etag ?? '', /^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$/)
  assert.ok(res.headers['last-modified'])
  assert.match(res.headers.vary ?? '', /Accept/)
  assert.ok(origin.url.startsWith('http://127.0.0.1:'))
})

test('HEAD answers the headers of GET without a body', async t => {
  const { origin, data } = await setup(t)
  const res = await send(origin, '/data.bin', {}, 'HEAD')
  assert.equal(res.status, 200)
  assert.equal(res.body.length, 0)
  assert.equal(res.headers['content-length'], String(data.length))
  assert.ok(res.headers.etag)
})

test('single byte ranges answer 206 with the exact bytes', async t => {
  const { origin, data } = await setup(t)
  const size = data.length
  const cases: Array<[string, number, number]> = [
    ['bytes=0-0', 0, 0],
    ['bytes=1000-1999', 1000, 1999],
    ['bytes=1048576-', 1048576, size - 1],
    ['bytes=-500', size - 500, size - 1],
    ['bytes=-99999999', 0, size - 1],
    ['bytes=100-99999999', 100, size - 1]
  ]
  for (const [range, start, end] of cases) {
    const res = await send(origin, '/data.bin', { Range: range })
    assert.equal(res.status, 206, range)
    assert.equal(res.headers['content-range'], `bytes ${start}-${end}/${size}`, range)
    assert.equal(res.headers['content-length'], String(end - start + 1), range)
    assert.ok(res.body.equals(data.subarray(start, end + 1)), range)
  }
})

test('an unsatisfiable range answers 416 with the size', async t => {
  const { origin, data } = await setup(t)
  for (const range of [`bytes=${data.length}-`, `bytes=${data.length + 10}-${data.length + 20}`, 'bytes=-0']) {
    const res = await send(origin, '/data.bin', { Range: range })
    assert.equal(res.status, 416, range)
    assert.equal(res.headers['content-range'], `bytes */${data.length}`)
  }
})

test('several ranges or a malformed Range header get the whole file', async t => {
  const { origin, data } = await setup(t)
  for (const range of ['bytes=0-9,20-29', 'bytes=abc', 'items=0-9', 'bytes=9-0', 'bytes=-']) {
    const res = await send(origin, '/data.bin', { Range: range })
    assert.equal(res.status, 200, range)
    assert.equal(res.headers['content-range'], undefined)
    assert.ok(res.body.equals(data), range)
  }
})

test('conditional requests: If-None-Match, If-Modified-Since, If-Match', async t => {
  const { origin } = await setup(t)
  const first = await send(origin, '/data.bin', {}, 'HEAD')
  const etag = first.headers.etag ?? ''
  const lastModified = first.headers['last-modified'] ?? ''

  for (const inm of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
    const res = await send(origin, '/data.bin', { 'If-None-Match': inm })
    assert.equal(res.status, 304, inm)
    assert.equal(res.body.length, 0)
    assert.equal(res.headers.etag, etag)
  }
  assert.equal((await send(origin, '/data.bin', { 'If-None-Match': '"other"' }, 'HEAD')).status, 200)

  assert.equal((await send(origin, '/data.bin', { 'If-Modified-Since': lastModified })).status, 304)
  assert.equal((await send(origin, '/data.bin', { 'If-Modified-Since': 'Thu, 01 Jan 1970 00:00:00 GMT' }, 'HEAD')).status, 200)
  // If-None-Match wins over If-Modified-Since.
  assert.equal((await send(origin, '/data.bin', { 'If-None-Match': '"other"', 'If-Modified-Since': lastModified }, 'HEAD')).status, 200)

  assert.equal((await send(origin, '/data.bin', { 'If-Match': '"other"' })).status, 412)
  assert.equal((await send(origin, '/data.bin', { 'If-Match': etag }, 'HEAD')).status, 200)
})

test('If-Range: a current validator keeps the range, a stale one gets the whole file', async t => {
  const { origin, data } = await setup(t)
  const head = await send(origin, '/data.bin', {}, 'HEAD')
  const etag = head.headers.etag ?? ''
  const range = { Range: 'bytes=10-19' }

  const match = await send(origin, '/data.bin', { ...range, 'If-Range': etag })
  assert.equal(match.status, 206)
  assert.ok(match.body.equals(data.subarray(10, 20)))
  assert.equal((await send(origin, '/data.bin', { ...range, 'If-Range': head.headers['last-modified'] ?? '' }, 'HEAD')).status, 206)

  const mismatch = await send(origin, '/data.bin', { ...range, 'If-Range': '"stale"' })
  assert.equal(mismatch.status, 200)
  assert.ok(mismatch.body.equals(data))
  assert.equal((await send(origin, '/data.bin', { ...range, 'If-Range': `W/${etag}` }, 'HEAD')).status, 200)
  assert.equal((await send(origin, '/data.bin', { ...range, 'If-Range': 'Thu, 01 Jan 1970 00:00:00 GMT' }, 'HEAD')).status, 200)
})

test('paths that escape root are refused', async t => {
  const { origin, root } = await setup(t, { scan: false })
  const outside = await tempDir('canopy-origin-outside-')
  await writeFile(join(outside, 'secret.txt'), 'top secret')
  await symlink(join(outside, 'secret.txt'), join(root, 'link-out'))
  await symlink(outside, join(root, 'dir-out'))
  await mkdir(join(root, 'a'))
  await writeFile(join(root, 'a', 'inner.txt'), 'inner')
  await symlink(join(root, 'a', 'inner.txt'), join(root, 'link-in'))

  for (const path of [
    '/../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/a/..%2f..%2fx', '/a/%2E%2E/data.bin', '/..%5c..%5cetc/passwd',
    '/link-out', '/dir-out/secret.txt', '/missing', '/a/', '/a', '/', '/data.bin/'
  ]) {
    const res = await send(origin, path)
    assert.equal(res.status, 404, path)
    assert.ok(!res.body.toString().includes('top secret'), path)
  }
  for (const path of ['/%zz', '/a%00b', '/data.bin%']) {
    assert.equal((await send(origin, path)).status, 400, path)
  }
  // Symlinks that stay inside root, percent-encoded names and query strings work.
  assert.equal((await send(origin, '/link-in')).body.toString(), 'inner')
  assert.equal((await send(origin, '/a/%69nner.txt?x=1')).body.toString(), 'inner')
  assert.equal((await send(origin, '/./a//inner.txt')).body.toString(), 'inner')
  // Absolute-form targets, as sent through proxies, get the same checks.
  assert.equal((await send(origin, `${origin.url}/a/inner.txt`)).body.toString(), 'inner')
  assert.equal((await send(origin, `${origin.url}/../etc/passwd`)).status, 404)
  assert.equal((await send(origin, `${origin.url}/%2e%2e/etc/passwd`)).status, 404)
})

test('origin state inside root is never served', async t => {
  const root = await tempDir('canopy-origin-root-')
  await writeFile(join(root, 'file.txt'), 'public')
  const stateDir = join(root, '.canopy-state')
  const origin = await startOrigin({ root, stateDir, listDirectories: true })
  t.after(() => origin.close())
  await origin.ready
  assert.equal((await send(origin, '/.canopy-state/origin.secret')).status, 404)
  assert.equal((await send(origin, '/.canopy-state/')).status, 404)
  const listing = await send(origin, '/', { Accept: 'application/json' })
  const names = (JSON.parse(listing.body.toString()) as { entries: Array<{ name: string }> }).entries.map(e => e.name)
  assert.deepEqual(names, ['file.txt'])
  // The scan did not hash the state directory's files.
  const manifests = await metricValue(origin, 'canopy_origin_manifests', '')
  assert.equal(manifests, 1)
})

test('directory listings when enabled', async t => {
  const { origin, root } = await setup(t, { listDirectories: true, scan: false })
  await mkdir(join(root, 'sub dir'))
  await writeFile(join(root, 'sub dir', '<b>.txt'), 'x')
  const html = await send(origin, '/')
  assert.equal(html.status, 200)
  assert.match(html.headers['content-type'] ?? '', /text\/html/)
  assert.match(html.body.toString(), /href="\/sub%20dir\/"/)
  const json = await send(origin, '/sub%20dir/', { Accept: 'application/json' })
  assert.deepEqual(JSON.parse(json.body.toString()), { path: '/sub dir/', entries: [{ name: '<b>.txt', type: 'file' }] })
  const escaped = await send(origin, '/sub%20dir/')
  assert.ok(escaped.body.toString().includes('&lt;b&gt;.txt'))
})

test('methods other than GET and HEAD get 405 with Allow', async t => {
  const { origin } = await setup(t, { scan: false })
  for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
    const res = await send(origin, '/data.bin', {}, method)
    assert.equal(res.status, 405, method)
    assert.equal(res.headers.allow, 'GET, HEAD')
  }
})

test('the manifest is served by content negotiation on the same URL', async t => {
  const { origin, stateDir, data } = await setup(t)
  const res = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })
  assert.equal(res.status, 200)
  assert.equal(res.headers['content-type'], MANIFEST_MEDIA_TYPE)
  assert.match(res.headers.vary ?? '', /Accept/)
  const manifest = decodeManifest(res.body)
  const expected = await createManifest(oneChunk(data))
  assert.equal(manifest.id, expected.id)
  assert.deepEqual(manifest.blocks, expected.blocks)
  assert.equal(manifest.size, data.length)
  const secret = await readFile(join(stateDir, 'origin.secret'))
  assert.equal(secret.length, 32)
  assert.equal(manifest.key, contentKey(secret, manifest.id).toString('base64'))
  assert.equal(res.headers.etag, `"m-${manifest.id}"`)

  // Revalidation, HEAD, a Range that does not apply, and the API give the same manifest.
  assert.equal((await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE, 'If-None-Match': res.headers.etag ?? '' })).status, 304)
  const head = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE }, 'HEAD')
  assert.equal(head.status, 200)
  assert.equal(head.headers['content-length'], String(res.body.length))
  const ranged = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE, Range: 'bytes=0-9' })
  assert.equal(ranged.status, 200)
  assert.ok(ranged.body.equals(res.body))
  assert.deepEqual(await origin.manifestFor('data.bin'), manifest)
  await assert.rejects(origin.manifestFor('../x'), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(origin.manifestFor('missing.bin'), { code: 'ERR_NOT_FOUND' })

  // Clients that prefer something else get the bytes.
  const bytes = await send(origin, '/data.bin', { Accept: `${MANIFEST_MEDIA_TYPE};q=0.5, application/octet-stream` })
  assert.ok(bytes.body.equals(data))
  assert.ok((await send(origin, '/data.bin', { Accept: `${MANIFEST_MEDIA_TYPE};q=0` })).body.equals(data))
})

test('the manifest of an empty file', async t => {
  const { origin, root } = await setup(t, { scan: false })
  await writeFile(join(root, 'empty'), '')
  const manifest = decodeManifest((await send(origin, '/empty', { Accept: MANIFEST_MEDIA_TYPE })).body)
  assert.equal(manifest.size, 0)
  assert.deepEqual(manifest.blocks, [])
  const body = await send(origin, '/empty')
  assert.equal(body.status, 200)
  assert.equal(body.headers['content-length'], '0')
  assert.equal((await send(origin, '/empty', { Range: 'bytes=0-' })).status, 416)
})

test('the secret is private and survives a restart; cached manifests are reused', async t => {
  const { origin, root, stateDir } = await setup(t)
  await origin.ready
  const first = await origin.manifestFor('data.bin')
  const mode = (await stat(join(stateDir, 'origin.secret'))).mode & 0o777
  assert.equal(mode, 0o600)
  assert.equal((await stat(stateDir)).mode & 0o777, 0o700)
  await origin.close()

  const logger = recordingLogger()
  const again = await startOrigin({ root, stateDir, scan: false, logger })
  t.after(() => again.close())
  const second = decodeManifest((await send(again, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })).body)
  assert.equal(second.id, first.id)
  assert.equal(second.key, first.key)
  assert.deepEqual(computed(logger), [], 'the manifest came from the on-disk cache')
  assert.deepEqual(await loadOrCreateSecret(stateDir), await readFile(join(stateDir, 'origin.secret')))
})

test('a corrupt secret file is an error, not a silent new key', async () => {
  const stateDir = await tempDir('canopy-origin-state-')
  await writeFile(join(stateDir, 'origin.secret'), 'short')
  await assert.rejects(loadOrCreateSecret(stateDir), { code: 'ERR_INVALID_ARGUMENT' })
})

test('the manifest is recomputed when the file changes', async t => {
  const { origin, root } = await setup(t)
  await origin.ready
  const before = await origin.manifestFor('data.bin')
  const changed = randomBytes(70 * 1024)
  await writeFile(join(root, 'data.bin'), changed)
  // A fixed mtime in the past: the change must be seen even without a newer timestamp.
  await utimes(join(root, 'data.bin'), new Date(1_000_000), new Date(1_000_000))
  const res = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })
  const after = decodeManifest(res.body)
  assert.notEqual(after.id, before.id)
  assert.equal(after.id, (await createManifest(oneChunk(changed))).id)
  assert.ok((await send(origin, '/data.bin')).body.equals(changed))
})

test('concurrent manifest requests share one computation and all get the manifest', async t => {
  const logger = recordingLogger()
  const { origin, data } = await setup(t, { scan: false, logger })
  const replies = await Promise.all(Array.from({ length: 8 }, () => send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })))
  const expected = (await createManifest(oneChunk(data))).id
  for (const r of replies) assert.equal(decodeManifest(r.body).id, expected)
  assert.deepEqual(computed(logger), ['data.bin'])
  assert.equal(await metricValue(origin, 'canopy_origin_manifests', ''), 1)
})

test('the startup scan computes manifests ahead of requests', async t => {
  const root = await tempDir('canopy-origin-root-')
  const stateDir = await tempDir('canopy-origin-state-')
  await mkdir(join(root, 'a', 'b'), { recursive: true })
  await writeFile(join(root, 'one'), randomBytes(1000))
  await writeFile(join(root, 'a', 'two'), randomBytes(2000))
  await writeFile(join(root, 'a', 'b', 'three'), randomBytes(3000))
  await writeFile(join(root, 'a', 'three' + SIDECAR_SUFFIX), '{}')
  const origin = await startOrigin({ root, stateDir, blockSize: 64 * 1024 })
  t.after(() => origin.close())
  await origin.ready
  assert.equal(await metricValue(origin, 'canopy_origin_manifests', ''), 3)
  assert.equal((await origin.manifestFor('a/b/three')).blockSize, 64 * 1024)
})

test('files that appear or change after startup get manifests without a request', async t => {
  const logger = recordingLogger()
  const { origin, root } = await setup(t, { logger })
  await origin.ready
  assert.deepEqual(computed(logger), ['data.bin'])
  await mkdir(join(root, 'later'))
  await writeFile(join(root, 'later', 'new.bin'), randomBytes(5000))
  // Polls (with a generous deadline) for the watcher's work; nothing here depends on speed.
  const deadline = Date.now() + 20_000
  while (!computed(logger).includes('later/new.bin') && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
  assert.ok(computed(logger).includes('later/new.bin'), 'the watcher computed the new file\'s manifest')
  assert.equal(await metricValue(origin, 'canopy_origin_manifests', ''), 2)
})

test('bearer tokens guard content, manifests and metrics', async t => {
  const { origin, data } = await setup(t, { tokens: ['tok-1', 'tok-2'], scan: false })
  for (const path of ['/data.bin', '/metrics', '/missing']) {
    const none = await send(origin, path)
    assert.equal(none.status, 401, path)
    assert.match(none.headers['www-authenticate'] ?? '', /^Bearer/)
    assert.equal((await send(origin, path, { Authorization: 'Bearer wrong' })).status, 401, path)
    assert.equal((await send(origin, path, { Authorization: 'Basic dG9rLTE6' })).status, 401, path)
  }
  assert.equal((await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })).status, 401)
  assert.equal((await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE, Authorization: 'Bearer nope' })).status, 401)

  const ok = await send(origin, '/data.bin', { Authorization: 'Bearer tok-2' })
  assert.equal(ok.status, 200)
  assert.ok(ok.body.equals(data))
  const manifest = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE, Authorization: 'bearer tok-1' })
  assert.equal(manifest.status, 200)
  decodeManifest(manifest.body)
  assert.equal((await send(origin, '/metrics', { Authorization: 'Bearer tok-1' })).status, 200)
})

test('/metrics counts the body bytes sent and the requests', async t => {
  const { origin } = await setup(t, { scan: false })
  const before = await metricValue(origin, 'canopy_origin_bytes_sent_total', '{kind="content"}')
  const res = await send(origin, '/data.bin', { Range: 'bytes=5000-5999' })
  assert.equal(res.body.length, 1000)
  assert.equal(await metricValue(origin, 'canopy_origin_bytes_sent_total', '{kind="content"}'), before + 1000)

  const manifest = await send(origin, '/data.bin', { Accept: MANIFEST_MEDIA_TYPE })
  assert.equal(await metricValue(origin, 'canopy_origin_bytes_sent_total', '{kind="manifest"}'), manifest.body.length)
  await send(origin, '/data.bin', {}, 'HEAD')
  assert.equal(await metricValue(origin, 'canopy_origin_bytes_sent_total', '{kind="content"}'), before + 1000)
  await send(origin, '/nope')
  assert.equal(await metricValue(origin, 'canopy_origin_requests_total', '{method="GET",status="404"}'), 1)
  assert.equal(await metricValue(origin, 'canopy_origin_requests_total', '{method="GET",status="206"}'), 1)
  assert.equal(await metricValue(origin, 'canopy_origin_manifests', ''), 1)
  const text = (await send(origin, '/metrics')).headers['content-type'] ?? ''
  assert.match(text, /^text\/plain/)
})

test('two origins in one process keep separate metrics', async t => {
  const a = await setup(t, { scan: false })
  const b = await setup(t, { scan: false })
  await send(a.origin, '/data.bin', { Range: 'bytes=0-99' })
  assert.equal(await metricValue(a.origin, 'canopy_origin_bytes_sent_total', '{kind="content"}'), 100)
  assert.equal(await metricValue(b.origin, 'canopy_origin_bytes_sent_total', '{kind="content"}'), 0)
})

test('publishSidecar writes a valid sidecar next to the file', async t => {
  const dir = await tempDir('canopy-origin-publish-')
  const data = randomBytes(200 * 1024)
  const file = join(dir, 'pkg.bin')
  await writeFile(file, data)
  const secret = randomBytes(32)
  const published = await publishSidecar(file, { secret, blockSize: 64 * 1024 })
  const sidecar = decodeManifest(await readFile(file + SIDECAR_SUFFIX, 'utf8'))
  assert.deepEqual(sidecar, published)
  assert.equal(sidecar.id, (await createManifest(oneChunk(data), { blockSize: 64 * 1024 })).id)
  assert.equal(sidecar.blocks.length, 4)
  assert.equal(sidecar.key, contentKey(secret, sidecar.id).toString('base64'))
  await assert.rejects(publishSidecar(file, { secret, blockSize: 1000 }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(publishSidecar(join(dir, 'missing'), { secret }), { code: 'ENOENT' })

  // An origin serves the sidecar as a plain file.
  const origin = await startOrigin({ root: dir, stateDir: join(dir, '.state'), scan: false })
  t.after(() => origin.close())
  const res = await send(origin, '/pkg.bin.canopy')
  assert.equal(res.status, 200)
  assert.deepEqual(decodeManifest(res.body), published)
})

test('a rate-limited origin delivers intact data', async t => {
  const { origin, data } = await setup(t, { rateLimit: 8 * 1024 * 1024, scan: false })
  const [full, part] = await Promise.all([
    send(origin, '/data.bin'),
    send(origin, '/data.bin', { Range: 'bytes=100000-300000' })
  ])
  assert.ok(full.body.equals(data))
  assert.ok(part.body.equals(data.subarray(100000, 300001)))
})

test('a client that goes away mid-transfer does not disturb the origin', async t => {
  const { origin, data } = await setup(t, { rateLimit: 256 * 1024, scan: false })
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: origin.port, path: '/data.bin', agent: false }, res => {
      res.once('data', () => {
        req.destroy()
        resolve()
      })
    })
    req.on('error', err => { if (!req.destroyed) reject(err) })
    req.end()
  })
  const sent = await metricValue(origin, 'canopy_origin_bytes_sent_total', '{kind="content"}')
  assert.ok(sent < data.length, `only part of the file was sent (${sent})`)
  const res = await send(origin, '/data.bin', { Range: 'bytes=0-1023' })
  assert.ok(res.body.equals(data.subarray(0, 1024)))
})

test('startOrigin refuses a missing root and bad options', async () => {
  const stateDir = await tempDir('canopy-origin-state-')
  await assert.rejects(startOrigin({ root: join(stateDir, 'nope'), stateDir }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(startOrigin({ root: stateDir, stateDir, blockSize: 1000 }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(startOrigin({ root: stateDir, stateDir, rateLimit: 0 }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(startOrigin({ root: stateDir, stateDir, tokens: [''] }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(startOrigin({ root: stateDir, stateDir, tokens: ['has space'] }), { code: 'ERR_INVALID_ARGUMENT' })
})
