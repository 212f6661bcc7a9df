// Faulty origins: corrupted responses, servers that ignore Range, origins that go away.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import type { Server } from 'node:http'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join, normalize } from 'node:path'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { startAgent } from '@canopy/agent'
import type { AgentOptions } from '@canopy/agent'
import { CanopyClient } from '@canopy/client'
import { startOrigin, publishSidecar } from '@canopy/origin'
import { FINISHED, fileSha256, randomFile, tempDir } from './helpers.ts'

const MiB = 1024 * 1024

async function listen (server: Server, port = 0): Promise<string> {
  await new Promise<void>(resolve => server.listen(port, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

async function close (server: Server): Promise<void> {
  server.closeAllConnections()
  await new Promise(resolve => server.close(resolve))
}

/**
 * A proxy in front of a real origin that flips one byte of block `block` in content
 * responses, `times` times (Infinity: always).
 */
async function corruptingProxy (target: string, block: number, times: number): Promise<{ url: string, server: Server, corrupted: () => number }> {
  let corrupted = 0
  const server = createServer((req, res) => {
    void (async () => {
      const headers: Record<string, string> = {}
      for (const name of ['range', 'accept', 'if-range']) {
        const v = req.headers[name]
        if (typeof v === 'string') headers[name] = v
      }
      const upstream = await request(target + req.url, { headers })
      const body = Buffer.from(await upstream.body.arrayBuffer())
      const out: Record<string, string> = {}
      for (const [k, v] of Object.entries(upstream.headers)) if (typeof v === 'string' && k !== 'content-length' && k !== 'transfer-encoding' && k !== 'connection' && k !== 'keep-alive') out[k] = v
      const type = out['content-type'] ?? ''
      const start = /^bytes (\d+)-/.exec(out['content-range'] ?? '')?.[1]
      const offset = upstream.statusCode === 206 ? Number(start) : 0
      const at = block * MiB + 100 - offset
      if (!type.includes('canopy') && at >= 0 && at < body.length && corrupted < times) {
        body[at] ^= 0xff
        corrupted++
      }
      res.writeHead(upstream.statusCode, out)
      res.end(body)
    })().catch(() => res.destroy())
  })
  return { url: await listen(server), server, corrupted: () => corrupted }
}

/** A plain static server that ignores Range and Accept: always 200 and the whole file. */
async function naiveStaticServer (root: string): Promise<{ url: string, server: Server }> {
  const server = createServer((req, res) => {
    const path = normalize(join(root, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)))
    readFile(path).then(body => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
      res.end(body)
    }, () => {
      res.writeHead(404)
      res.end()
    })
  })
  return { url: await listen(server), server }
}

async function setup (t: TestContext, size: number, options: Partial<AgentOptions> = {}) {
  const dir = await tempDir()
  await mkdir(join(dir, 'root'))
  const file = await randomFile(join(dir, 'root', 'f.bin'), size)
  const agent = await startAgent({ stateDir: join(dir, 'agent'), retryMinMs: 100, retryMaxMs: 400, ...options })
  const client = new CanopyClient({ stateDir: join(dir, 'agent') })
  t.after(async () => {
    await client.close()
    await agent.stop()
  })
  return { dir, file, client }
}

test('a block corrupted once by the network is detected, refetched, and the file is right', async (t) => {
  const { dir, file, client } = await setup(t, 6 * MiB)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  t.after(async () => await origin.close())
  const proxy = await corruptingProxy(origin.url, 3, 1)
  t.after(async () => await close(proxy.server))
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${proxy.url}/f.bin`, path: dest }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(proxy.corrupted(), 1)
  assert.equal(await fileSha256(dest), file.sha256)
})

test('an origin that keeps sending a corrupted block stops the job in error; nothing appears at the destination', async (t) => {
  const { dir, client } = await setup(t, 6 * MiB)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  t.after(async () => await origin.close())
  const proxy = await corruptingProxy(origin.url, 4, Infinity)
  t.after(async () => await close(proxy.server))
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${proxy.url}/f.bin`, path: dest }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'error')
  assert.equal(done.error?.code, 'ERR_DIGEST_MISMATCH')
  assert.equal(done.error?.transient, false)
  assert.match(done.error?.message ?? '', /Block 4/)
  assert.equal(existsSync(dest), false)
})

test('a static server that ignores Range and Accept still works: sidecar manifest, one streamed GET, verified', async (t) => {
  const { dir, file, client } = await setup(t, 5 * MiB + 17)
  const published = await publishSidecar(join(dir, 'root', 'f.bin'), { secret: Buffer.alloc(32, 7) })
  const server = await naiveStaticServer(join(dir, 'root'))
  t.after(async () => await close(server.server))
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${server.url}/f.bin`, path: dest }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.files[0].manifestId, published.id)
  assert.equal(await fileSha256(dest), file.sha256)
})

test('without any manifest: a plain download, checked against the digest the caller gave', async (t) => {
  const { dir, file, client } = await setup(t, 3 * MiB + 5)
  const server = await naiveStaticServer(join(dir, 'root'))
  t.after(async () => await close(server.server))

  const good = join(dir, 'good.bin')
  const ok = await client.createJob({ files: [{ url: `${server.url}/f.bin`, path: good, sha256: file.sha256 }], autoComplete: true })
  const okDone = await client.waitForJob(ok.id, { intervalMs: 50, until: FINISHED })
  assert.equal(okDone.state, 'acknowledged', JSON.stringify(okDone.error))
  assert.equal(okDone.files[0].manifestId, undefined)
  assert.equal(await fileSha256(good), file.sha256)

  const bad = join(dir, 'bad.bin')
  const wrong = await client.createJob({ files: [{ url: `${server.url}/f.bin`, path: bad, sha256: '0'.repeat(64) }], autoComplete: true })
  const wrongDone = await client.waitForJob(wrong.id, { intervalMs: 50, until: FINISHED })
  assert.equal(wrongDone.state, 'error')
  assert.equal(wrongDone.error?.code, 'ERR_DIGEST_MISMATCH')
  assert.equal(existsSync(bad), false)
})

test('an origin that is down is a transient error; the job finishes once it is back', async (t) => {
  const { dir, file, client } = await setup(t, 2 * MiB)
  // Reserve a port, then free it so that the first attempts are refused.
  const probe = createServer()
  const url = await listen(probe)
  const port = Number(new URL(url).port)
  await close(probe)
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${url}/f.bin`, path: dest }], autoComplete: true })
  const failing = await client.waitForJob(job.id, { intervalMs: 20, until: ['transient_error', 'error'] })
  assert.equal(failing.error?.code, 'ERR_NETWORK')
  assert.match(failing.reason ?? '', /ECONNREFUSED.*next retry in/)

  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o'), port })
  t.after(async () => await origin.close())
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal((await stat(dest)).size, 2 * MiB)
  assert.equal(await fileSha256(dest), file.sha256)
})

test('a server that ignores Range and keeps corrupting a block: the job stops in error, the agent stays up', async (t) => {
  const { dir, client } = await setup(t, 4 * MiB)
  await publishSidecar(join(dir, 'root', 'f.bin'), { secret: Buffer.alloc(32, 7) })
  const server = await naiveStaticServer(join(dir, 'root'))
  t.after(async () => await close(server.server))
  const proxy = await corruptingProxy(server.url, 2, Infinity)
  t.after(async () => await close(proxy.server))
  const job = await client.createJob({ files: [{ url: `${proxy.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'error')
  assert.equal(done.error?.code, 'ERR_DIGEST_MISMATCH')
  assert.equal((await client.status()).pid, process.pid, 'the agent still answers')
})

test('a destination that cannot be written at completion stops the job in error; complete works once it is fixed', async (t) => {
  const { dir, file, client } = await setup(t, 2 * MiB)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o'), rateLimit: 2 * MiB })
  t.after(async () => await origin.close())
  const dest = join(dir, 'taken')
  // A folder at the destination is refused when the job is created...
  await mkdir(dest)
  await assert.rejects(client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }] }), /is a folder/)
  await rm(dest, { recursive: true })
  // ...and one that appears while the job transfers stops it at completion.
  const job = await client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], autoComplete: true })
  await client.waitForJob(job.id, { intervalMs: 20, until: ['transferring', ...FINISHED] })
  await mkdir(dest)
  const failed = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(failed.state, 'error')
  assert.equal(failed.error?.code, 'ERR_DESTINATION')
  assert.equal(failed.error?.transient, false)
  await rm(dest, { recursive: true })
  const completed = await client.complete(job.id)
  assert.equal(completed.state, 'acknowledged')
  assert.equal(await fileSha256(dest), file.sha256)
})

test('a file replaced by a shorter one during the transfer is started over against the new manifest', async (t) => {
  // One 1 MiB request at a time, so that requests after the replacement reach the
  // new file (a request already under way keeps reading the old one: a consistent
  // snapshot that verifies against the old manifest).
  const { dir, client } = await setup(t, 12 * MiB, { requestsInFlight: 1, requestSize: MiB })
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o'), rateLimit: 4 * MiB })
  t.after(async () => await origin.close())
  await origin.ready
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], autoComplete: true })
  // Past the new file's end, so that the next range request gets a 416.
  let seen = await client.getJob(job.id)
  while (seen.bytes.transferred < 5 * MiB && !FINISHED.includes(seen.state)) {
    await new Promise(resolve => setTimeout(resolve, 20))
    seen = await client.getJob(job.id)
  }
  // Replace, not rewrite in place: a new inode, as publishers deploy files.
  const replacement = await randomFile(join(dir, 'new.bin'), 3 * MiB)
  await rename(join(dir, 'new.bin'), join(dir, 'root', 'f.bin'))
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(dest), replacement.sha256)
})

test('redirects are followed, for the manifest and for the blocks', async (t) => {
  const { dir, file, client } = await setup(t, 5 * MiB)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'o') })
  t.after(async () => await origin.close())
  const redirector = createServer((req, res) => {
    res.writeHead(302, { location: `${origin.url}${req.url ?? '/'}`, 'content-length': 0 })
    res.end()
  })
  const url = await listen(redirector)
  t.after(async () => await close(redirector))
  const job = await client.createJob({ files: [{ url: `${url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.match(done.files[0].manifestId ?? '', /^bagaaiera/)
  assert.equal(await fileSha256(join(dir, 'f.bin')), file.sha256)
})

/** A server with Range and ETag but no manifests, sending at most `rate` bytes per 100 ms. */
async function plainRangeServer (root: string, rate = Infinity): Promise<{ url: string, server: Server }> {
  const server = createServer((req, res) => {
    const path = normalize(join(root, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)))
    readFile(path).then(async body => {
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
      const start = m !== null && req.headers['if-range'] === '"v1"' ? Number(m[1]) : 0
      res.writeHead(start > 0 ? 206 : 200, {
        etag: '"v1"',
        'content-length': body.length - start,
        ...(start > 0 ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {})
      })
      for (let at = start; at < body.length && !res.destroyed; at += Math.min(rate, body.length)) {
        res.write(body.subarray(at, Math.min(body.length, at + rate)))
        if (rate !== Infinity) await new Promise(resolve => setTimeout(resolve, 100))
      }
      res.end()
    }, () => {
      res.writeHead(404, { 'content-length': 0 })
      res.end()
    })
  })
  return { url: await listen(server), server }
}

test('a plain download whose partial file vanished while suspended starts over instead of leaving a hole', async (t) => {
  const { dir, file, client } = await setup(t, 4 * MiB)
  const server = await plainRangeServer(join(dir, 'root'), 256 * 1024)
  t.after(async () => await close(server.server))
  const dest = join(dir, 'f.bin')
  const job = await client.createJob({ files: [{ url: `${server.url}/f.bin`, path: dest }], autoComplete: true })
  let seen = await client.getJob(job.id)
  while (seen.bytes.transferred < MiB) {
    await new Promise(resolve => setTimeout(resolve, 50))
    seen = await client.getJob(job.id)
  }
  await client.suspend(job.id)
  const part = (await readdir(dir)).find(n => n.includes('canopy-part'))
  assert.ok(part !== undefined)
  await rm(join(dir, part)) // a temp cleaner, or the user
  await client.resume(job.id)
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(await fileSha256(dest), file.sha256)
})

test('a server that answers every path with an HTML page has no sidecar: plain download', async (t) => {
  const { dir, file, client } = await setup(t, 2 * MiB)
  const server = createServer((req, res) => {
    if (req.url === '/f.bin' && !(req.headers.accept ?? '').includes('canopy')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': file.bytes.length })
      res.end(file.bytes)
    } else {
      const page = Buffer.from('<!doctype html><title>app</title>')
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length })
      res.end(page)
    }
  })
  const url = await listen(server)
  t.after(async () => await close(server))
  const job = await client.createJob({ files: [{ url: `${url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.files[0].manifestId, undefined)
  assert.equal(await fileSha256(join(dir, 'f.bin')), file.sha256)
})

test('a redirect loop stops the job in error instead of retrying for ever', async (t) => {
  const { dir, client } = await setup(t, MiB)
  const loop = createServer((req, res) => {
    res.writeHead(302, { location: req.url ?? '/', 'content-length': 0 })
    res.end()
  })
  const url = await listen(loop)
  t.after(async () => await close(loop))
  const job = await client.createJob({ files: [{ url: `${url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  const done = await client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'error')
  assert.equal(done.error?.transient, false)
  assert.match(done.error?.message ?? '', /redirects/)
})
