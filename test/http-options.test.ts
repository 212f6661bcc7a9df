// A job's HTTP options against real servers: custom headers and credentials on
// every request to the origin (and never shown or logged), refused headers, the
// credentials dropped on a redirect to another host, a server that refuses HEAD,
// and --if-newer skipping a current destination and fetching a changed one.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, request as httpRequest } from 'node:http'
import type { IncomingHttpHeaders, IncomingMessage, Server, ServerResponse } from 'node:http'
import { once } from 'node:events'
import { readFile, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { startOrigin } from '@canopy/origin'
import { FINISHED, fileSha256, originContentBytes, originWithFile, randomFile, runCli, startAgentProcess, tempDir } from './helpers.ts'

interface Seen { method: string, url: string, headers: IncomingHttpHeaders }

async function listen (t: { after: (fn: () => Promise<void>) => void }, server: Server): Promise<string> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** Sends `req` on to `target` and its answer back. */
function forward (req: IncomingMessage, res: ServerResponse, target: string): void {
  const url = new URL(target)
  const upstream = httpRequest(url, { method: req.method, headers: { ...req.headers, host: url.host } }, up => {
    res.writeHead(up.statusCode!, up.headers)
    up.pipe(res)
  })
  upstream.on('error', () => res.destroy())
  req.pipe(upstream)
}

/** Forwards to `target`, recording each request; refuses HEAD with 403, as a signed S3 URL (valid for GET only) does. */
async function recordingProxy (t: { after: (fn: () => Promise<void>) => void }, target: string): Promise<{ url: string, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers })
    if (req.method === 'HEAD') {
      res.writeHead(403).end()
      return
    }
    forward(req, res, `${target}${req.url!}`)
  })
  return { url: await listen(t, server), seen }
}

test('custom headers and a bearer token reach the origin on every request, and are never shown or logged', async (t) => {
  const dir = await tempDir()
  const token = 'tok-3f9a8c1e5b7d2f4a6c8e0b1d3f5a7c9e'
  const { sha256 } = await randomFile(join(dir, 'f.bin'), 9 * 1024 * 1024 + 17)
  const origin = await startOrigin({ root: dir, stateDir: join(dir, '.origin'), tokens: [token] })
  t.after(async () => await origin.close())
  await origin.ready
  const proxy = await recordingProxy(t, origin.url)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  await writeFile(join(dir, 'token'), `${token}\n`, { mode: 0o600 })

  const got = await runCli(['get', `${proxy.url}/f.bin`, '-o', join(dir, 'out.bin'), '--json', '--state-dir', agent.stateDir,
    '-H', 'X-Tenant: acme', '--header', 'X-Request-Source: canopy-test', '--bearer-token-file', join(dir, 'token')])
  assert.equal(got.code, 0, got.stderr)
  assert.equal(await fileSha256(join(dir, 'out.bin')), sha256)
  assert.ok(proxy.seen.length >= 2, 'a manifest request and range requests')
  for (const request of proxy.seen) {
    assert.notEqual(request.method, 'HEAD', 'the agent never needs HEAD')
    assert.equal(request.headers.authorization, `Bearer ${token}`, request.url)
    assert.equal(request.headers['x-tenant'], 'acme', request.url)
    assert.equal(request.headers['x-request-source'], 'canopy-test', request.url)
  }
  const job = JSON.parse(got.stdout) as { id: string, http?: unknown }
  assert.deepEqual(job.http, { headers: ['X-Tenant', 'X-Request-Source'], credentials: 'bearer' })
  const shown = [got.stdout, got.stderr, (await runCli(['jobs', '--json', '--state-dir', agent.stateDir])).stdout,
    (await runCli(['job', job.id, '--state-dir', agent.stateDir])).stdout, agent.stderr()]
  for (const text of shown) {
    assert.ok(!text.includes(token), 'the token is never printed')
    assert.ok(!text.includes('acme'), 'header values are write-only')
  }

  // Without the token the origin refuses: a plain error, nothing at the destination.
  const refused = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'no-token.bin'), '--state-dir', agent.stateDir])
  assert.notEqual(refused.code, 0)
  assert.match(refused.stderr, /401|403|denied|refused|token|credential/i)
  await assert.rejects(stat(join(dir, 'no-token.bin')), { code: 'ENOENT' })
})

test('credentials are not sent to another host after a redirect; custom headers are', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 3 * 1024 * 1024)
  const target = await recordingProxy(t, origin.url)
  const redirected: Seen[] = []
  const redirector = await listen(t, createServer((req, res) => {
    redirected.push({ method: req.method!, url: req.url!, headers: req.headers })
    res.writeHead(302, { location: `${target.url}${req.url!}` }).end()
  }))
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({
    files: [{ url: `${redirector}/f.bin`, path: join(dir, 'out.bin') }],
    autoComplete: true,
    http: { headers: { 'X-Tenant': 'acme' }, credentials: { scheme: 'basic', username: 'ada', password: 'lovelace' } }
  })
  const done = await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(join(dir, 'out.bin')), sha256)
  assert.ok(redirected.length > 0 && redirected.every(r => r.headers.authorization === `Basic ${Buffer.from('ada:lovelace').toString('base64')}`))
  assert.ok(target.seen.length > 0)
  for (const request of target.seen) {
    assert.equal(request.headers.authorization, undefined, `credentials leaked to ${request.url}`)
    assert.equal(request.headers['x-tenant'], 'acme')
  }
})

test('headers the agent sets itself, malformed headers and too many headers are refused at creation', async (t) => {
  const dir = await tempDir()
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const create = async (http: unknown): Promise<unknown> => await agent.client.createJob({ files: [{ url: 'http://127.0.0.1:9/f', path: join(dir, 'f') }], http } as never)
  for (const headers of [{ Range: 'bytes=0-' }, { Authorization: 'Bearer x' }, { Host: 'evil' }, { 'X-Ok': 'a\r\nInjected: yes' }, { 'Bad Name': 'x' }]) {
    await assert.rejects(create({ headers }), { code: 'ERR_INVALID_REQUEST' }, JSON.stringify(headers))
  }
  await assert.rejects(create({ headers: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`X-H${i}`, 'v'])) }), { code: 'ERR_TOO_MANY_HEADERS' })
  await assert.rejects(create({ headers: { 'X-Big': 'v'.repeat(9000) } }), { code: 'ERR_HEADERS_TOO_LARGE' })
  await assert.rejects(create({ credentials: { scheme: 'digest', token: 'x' } }), { code: 'ERR_INVALID_REQUEST' })
  const bad = await runCli(['get', 'http://127.0.0.1:9/f', '-o', join(dir, 'f'), '-H', 'no colon', '--state-dir', agent.stateDir])
  assert.equal(bad.code, 2, bad.stderr)
  assert.equal((await agent.client.listJobs()).length, 0)
})

test('--if-newer skips a destination that is current and fetches one that changed (manifest and plain servers)', async (t) => {
  const { dir, origin } = await originWithFile(t, 2 * 1024 * 1024 + 5)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const get = async (url: string, out: string): Promise<{ state: string, reason?: string, files: Array<{ skipped?: boolean }> }> => {
    const run = await runCli(['get', url, '-o', out, '--if-newer', '--json', '--state-dir', agent.stateDir])
    assert.equal(run.code, 0, run.stderr)
    return JSON.parse(run.stdout)
  }
  const out = join(dir, 'out.bin')
  assert.equal((await get(`${origin.url}/f.bin`, out)).files[0].skipped, undefined, 'no destination yet: downloaded')
  const sent = await originContentBytes(origin.url)
  const again = await get(`${origin.url}/f.bin`, out)
  assert.equal(again.state, 'acknowledged')
  assert.equal(again.reason, 'skipped: up to date')
  assert.equal(again.files[0].skipped, true)
  assert.equal(await originContentBytes(origin.url), sent, 'nothing fetched')

  // The origin's copy changes: the next --if-newer run fetches it.
  const { sha256: changed } = await randomFile(join(dir, 'root', 'f.bin'), 2 * 1024 * 1024 + 5)
  for (let tries = 0; (await get(`${origin.url}/f.bin`, out)).files[0].skipped === true && tries < 50; tries++) {
    await new Promise(resolve => setTimeout(resolve, 100)) // until the origin has seen the change
  }
  assert.equal(await fileSha256(out), changed)

  // A plain server (no manifest) answering If-Modified-Since.
  const modified = new Date('2026-01-01T00:00:00Z')
  let bodies = 0
  const plain = await listen(t, createServer((req, res) => {
    if (req.url !== '/p.txt') {
      res.writeHead(404).end() // no sidecar manifest: a plain download
      return
    }
    const since = Date.parse(String(req.headers['if-modified-since']))
    if (!Number.isNaN(since) && since >= modified.getTime()) {
      res.writeHead(304).end()
      return
    }
    // Bodies of the file itself (the agent's manifest negotiation also gets one, and drops it).
    if (!String(req.headers.accept).includes('canopy')) bodies++
    res.writeHead(200, { 'last-modified': modified.toUTCString(), 'content-length': 5 }).end('hello')
  }))
  const plainOut = join(dir, 'plain.txt')
  await get(`${plain}/p.txt`, plainOut)
  assert.equal(await readFile(plainOut, 'utf8'), 'hello')
  await utimes(plainOut, new Date(), new Date()) // newer than the server's copy
  const bodiesBefore = bodies
  assert.equal((await get(`${plain}/p.txt`, plainOut)).reason, 'skipped: up to date')
  assert.equal(bodies, bodiesBefore)
  await utimes(plainOut, new Date('2025-06-01'), new Date('2025-06-01')) // older: fetched again
  assert.equal((await get(`${plain}/p.txt`, plainOut)).files[0].skipped, undefined)
  assert.ok(bodies > bodiesBefore)
})

/** A forward HTTP proxy (absolute-form requests), recording what it forwards. */
async function forwardProxy (t: { after: (fn: () => Promise<void>) => void }): Promise<{ url: string, seen: string[] }> {
  const seen: string[] = []
  const server = createServer((req, res) => {
    seen.push(req.url!)
    forward(req, res, req.url!)
  })
  return { url: await listen(t, server), seen }
}

test('proxies: from the environment (HTTP_PROXY), per job, and "direct"', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 5 * 1024 * 1024 + 3)
  const fromEnv = await forwardProxy(t)
  const perJob = await forwardProxy(t)
  const agent = await startAgentProcess(join(dir, 'agent'), [], { HTTP_PROXY: fromEnv.url, NO_PROXY: '' })
  t.after(async () => await agent.kill())
  const get = async (out: string, ...flags: string[]): Promise<void> => {
    const run = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, out), '--state-dir', agent.stateDir, ...flags])
    assert.equal(run.code, 0, run.stderr)
    assert.equal(await fileSha256(join(dir, out)), sha256)
  }
  await get('env.bin')
  assert.ok(fromEnv.seen.some(u => u === `${origin.url}/f.bin`), 'the manifest and the content went through the environment\'s proxy')
  const envCount = fromEnv.seen.length
  await get('job.bin', '--proxy', perJob.url)
  assert.ok(perJob.seen.length > 0 && fromEnv.seen.length === envCount, 'the job\'s own proxy replaces the environment\'s')
  await get('direct.bin', '--proxy', 'direct')
  assert.equal(fromEnv.seen.length, envCount)
  const shown = JSON.parse((await runCli(['jobs', '--json', '--state-dir', agent.stateDir])).stdout) as Array<{ http?: { proxy?: string } }>
  assert.deepEqual(shown.map(j => j.http?.proxy), [undefined, `${perJob.url}/`, 'direct'])
})

test('TLS options: an extra CA and a client certificate, against an https server that requires one', async (t) => {
  const dir = await tempDir()
  const ssl = async (...args: string[]): Promise<void> => {
    const { execFile } = await import('node:child_process')
    await new Promise<void>((resolve, reject) => execFile('openssl', args, { cwd: dir }, err => err === null ? resolve() : reject(err)))
  }
  // A private CA; a server certificate for 127.0.0.1 and a client certificate, both signed by it.
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Canopy test CA')
  for (const [name, ext] of [['server', 'subjectAltName=IP:127.0.0.1'], ['client', 'extendedKeyUsage=clientAuth']]) {
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`)
    await writeFile(join(dir, `${name}.ext`), `${ext}\n`)
    await ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`)
  }
  const { sha256 } = await randomFile(join(dir, 'f.bin'), 3 * 1024 * 1024 + 1)
  const origin = await startOrigin({ root: dir, stateDir: join(dir, '.origin') })
  t.after(async () => await origin.close())
  await origin.ready
  const { createServer: createHttpsServer } = await import('node:https')
  const clients: string[] = []
  const https = createHttpsServer({
    key: await readFile(join(dir, 'server.key')),
    cert: await readFile(join(dir, 'server.pem')),
    ca: await readFile(join(dir, 'ca.pem')),
    requestCert: true,
    rejectUnauthorized: true
  }, (req, res) => {
    clients.push(String((req.socket as import('node:tls').TLSSocket).getPeerCertificate().subject.CN))
    forward(req, res, `${origin.url}${req.url!}`)
  })
  https.listen(0, '127.0.0.1')
  await once(https, 'listening')
  t.after(async () => { https.closeAllConnections(); await new Promise(resolve => https.close(resolve)) })
  const url = `https://127.0.0.1:${(https.address() as AddressInfo).port}/f.bin`
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())

  const ok = await runCli(['get', url, '-o', join(dir, 'out.bin'), '--json', '--state-dir', agent.stateDir,
    '--ca-file', join(dir, 'ca.pem'), '--cert-file', join(dir, 'client.pem'), '--key-file', join(dir, 'client.key')])
  assert.equal(ok.code, 0, ok.stderr)
  assert.equal(await fileSha256(join(dir, 'out.bin')), sha256)
  assert.ok(clients.length > 0 && clients.every(cn => cn === 'client'))

  // Without the CA, the server's certificate is refused: an error that says so, not retries.
  const job = await agent.client.createJob({ files: [{ url, path: join(dir, 'no-ca.bin') }], autoComplete: true })
  const failed = await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(failed.state, 'error')
  assert.equal(failed.error?.code, 'ERR_TLS', JSON.stringify(failed.error))
  await assert.rejects(agent.client.createJob({ files: [{ url, path: join(dir, 'x.bin') }], http: { tls: { certFile: join(dir, 'client.pem') } } }), { code: 'ERR_INVALID_REQUEST' })
})
