// A job's HTTP options against real servers: custom headers and credentials on
// every request to the origin (and never shown or logged), refused headers, the
// credentials dropped on a redirect to another host, a server that refuses HEAD,
// and --if-newer skipping a current destination and fetching a changed one.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, request as httpRequest } from 'node:http'
import type { IncomingHttpHeaders, Server } from 'node:http'
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

/** Forwards to `target`, recording each request; refuses HEAD with 403, as a signed S3 URL (valid for GET only) does. */
async function recordingProxy (t: { after: (fn: () => Promise<void>) => void }, target: string): Promise<{ url: string, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers })
    if (req.method === 'HEAD') {
      res.writeHead(403).end()
      return
    }
    const upstream = httpRequest(`${target}${req.url!}`, { method: req.method, headers: { ...req.headers, host: new URL(target).host } }, up => {
      res.writeHead(up.statusCode!, up.headers)
      up.pipe(res)
    })
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  return { url: await listen(t, server), seen }
}

test('custom headers and a bearer token reach the origin on every request, and are never shown or logged', async (t) => {
  const dir = await tempDir(t)
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
  const dir = await tempDir(t)
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
