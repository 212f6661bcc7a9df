// The fast range client against real HTTP servers on loopback.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomBytes } from 'node:crypto'
import { RangeClient } from '@canopy/agent'

const content = randomBytes(3 * 65536 + 123)

async function serve (t: { after: (fn: () => Promise<void>) => void }, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string, connections: () => number, server: Server }> {
  let connections = 0
  const server = createServer(handler)
  server.on('connection', () => { connections++ })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/f`, connections: () => connections, server }
}

function ranges (req: IncomingMessage, res: ServerResponse): void {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
  if (m === null) {
    res.writeHead(200, { 'content-length': content.length })
    res.end(content)
    return
  }
  const [start, end] = [Number(m[1]), Number(m[2])]
  res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${content.length}`, 'content-length': end - start + 1 })
  res.end(content.subarray(start, end + 1))
}

function buffersFor (...lengths: number[]): Buffer[] {
  return lengths.map(n => Buffer.alloc(n))
}

test('reads ranges straight into the buffers, in order, and reuses the connection', async (t) => {
  const { url, connections } = await serve(t, ranges)
  const client = new RangeClient({ maxPerOrigin: 2, timeoutMs: 5000 })
  t.after(() => client.close())
  for (const offset of [0, 65536, 2 * 65536]) {
    const buffers = buffersFor(40000, 25536, offset === 2 * 65536 ? 123 : 65536)
    const filled: number[] = []
    const outcome = await client.get(new URL(url), offset, buffers, {}, AbortSignal.timeout(5000), k => filled.push(k))
    assert.equal(outcome, 'done')
    assert.deepEqual(filled, [0, 1, 2])
    assert.deepEqual(Buffer.concat(buffers), content.subarray(offset, offset + buffers.reduce((s, b) => s + b.length, 0)))
  }
  assert.equal(connections(), 1, 'keep-alive: one connection for sequential requests')
})

test('sends the extra headers, and refuses header values with line breaks', async (t) => {
  let seen: string | undefined
  const { url } = await serve(t, (req, res) => {
    seen = req.headers.authorization
    ranges(req, res)
  })
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
  t.after(() => client.close())
  await client.get(new URL(url), 0, buffersFor(10), { authorization: 'Bearer abc' }, AbortSignal.timeout(5000), () => {})
  assert.equal(seen, 'Bearer abc')
  await assert.rejects(client.get(new URL(url), 0, buffersFor(10), { 'x-evil': 'a\r\nb' }, AbortSignal.timeout(5000), () => {}), /line break/)
})

test('anything but a plain 206 is handed back as fallback, with nothing filled', async (t) => {
  const cases: Array<(req: IncomingMessage, res: ServerResponse) => void> = [
    (_req, res) => { res.writeHead(200, { 'content-length': content.length }); res.end(content) }, // ignores Range
    (_req, res) => { res.writeHead(404, { 'content-length': 0 }); res.end() },
    (_req, res) => { res.writeHead(302, { location: '/elsewhere', 'content-length': 0 }); res.end() },
    (_req, res) => { res.writeHead(206, { 'content-range': 'bytes 0-9/100' }); res.write(content.subarray(0, 5)); res.end(content.subarray(5, 10)) }, // chunked
    (_req, res) => { res.writeHead(206, { 'content-range': 'bytes 1-10/100', 'content-length': 10 }); res.end(content.subarray(1, 11)) } // wrong range
  ]
  for (const handler of cases) {
    const { url } = await serve(t, handler)
    const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
    let filled = 0
    const outcome = await client.get(new URL(url), 0, buffersFor(10), {}, AbortSignal.timeout(5000), () => { filled++ })
    client.close()
    assert.equal(outcome, 'fallback')
    assert.equal(filled, 0)
  }
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
  assert.equal(await client.get(new URL('https://127.0.0.1:1/f'), 0, buffersFor(10), {}, AbortSignal.timeout(5000), () => {}), 'fallback')
  client.close()
})

test('a connection cut mid-body rejects as a transient network error after handing on the full buffers', async (t) => {
  const { url } = await serve(t, (req, res) => {
    res.writeHead(206, { 'content-range': `bytes 0-99999/${content.length}`, 'content-length': 100000 })
    res.write(content.subarray(0, 70000), () => res.destroy())
  })
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
  t.after(() => client.close())
  const filled: number[] = []
  await assert.rejects(client.get(new URL(url), 0, buffersFor(50000, 50000), {}, AbortSignal.timeout(5000), k => filled.push(k)),
    (err: Error & { code?: string, transient?: boolean }) => err.code === 'ERR_NETWORK' && err.transient === true)
  assert.deepEqual(filled, [0])
})

test('an abort stops a request that hangs', async (t) => {
  const { url } = await serve(t, (_req, res) => {
    res.writeHead(206, { 'content-range': `bytes 0-9/${content.length}`, 'content-length': 10 })
    res.write(content.subarray(0, 3)) // and never the rest
  })
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 60_000 })
  t.after(() => client.close())
  const controller = new AbortController()
  const pending = client.get(new URL(url), 0, buffersFor(10), {}, controller.signal, () => {})
  setTimeout(() => controller.abort(new Error('stop')), 100)
  await assert.rejects(pending, /stop/)
})

test('a server that goes silent times out', async (t) => {
  const { url } = await serve(t, () => { /* never answers */ })
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 300 })
  t.after(() => client.close())
  await assert.rejects(client.get(new URL(url), 0, buffersFor(10), {}, AbortSignal.timeout(5000), () => {}), /no data from the origin/)
})

test('a kept-alive connection the server drops as it is reused is replaced without an error', async (t) => {
  // The server drops the connection on its second request, unanswered: what a
  // keep-alive timeout firing just as the client reuses the connection looks like.
  const served = new WeakMap<object, number>()
  const { url, connections } = await serve(t, (req, res) => {
    const count = (served.get(req.socket) ?? 0) + 1
    served.set(req.socket, count)
    if (count === 2) req.socket.destroy()
    else ranges(req, res)
  })
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
  t.after(() => client.close())
  assert.equal(await client.get(new URL(url), 0, buffersFor(10), {}, AbortSignal.timeout(5000), () => {}), 'done')
  const second = buffersFor(10)
  assert.equal(await client.get(new URL(url), 10, second, {}, AbortSignal.timeout(5000), () => {}), 'done')
  assert.deepEqual(second[0], content.subarray(10, 20))
  assert.equal(connections(), 2)
})

test('a connection that is never accepted fails after the timeout instead of hanging', async (t) => {
  // A listener whose backlog is full: the kernel drops further SYNs, so a connect
  // neither succeeds nor fails. The child listens, then stops serving its event loop.
  const { spawn } = await import('node:child_process')
  const { connect } = await import('node:net')
  const child = spawn(process.execPath, ['-e', `
    const s = require('node:net').createServer()
    s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
      console.log(s.address().port)
      const end = Date.now() + 20000
      while (Date.now() < end) {} // never accepts
    })`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { child.kill('SIGKILL') })
  const port = await new Promise<number>(resolve => child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))))
  const fillers = Array.from({ length: 4 }, () => connect(port, '127.0.0.1').on('error', () => {}))
  t.after(() => { for (const f of fillers) f.destroy() })
  await new Promise(resolve => setTimeout(resolve, 200))
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 500 })
  t.after(() => client.close())
  await assert.rejects(client.get(new URL(`http://127.0.0.1:${port}/f`), 0, buffersFor(10), {}, AbortSignal.timeout(10_000), () => {}),
    /origin unreachable|no data from the origin/)
})

test('a pacer bounds every body read and may stop reading for a while; the bytes arrive intact', async (t) => {
  const { url } = await serve(t, ranges)
  const client = new RangeClient({ maxPerOrigin: 1, timeoutMs: 5000 })
  t.after(() => client.close())
  const reads: number[] = []
  let pauses = 0
  const pacer = {
    readSize: () => 4096,
    consumed: (bytes: number) => {
      reads.push(bytes)
      // Every eighth read asks for a pause: the socket stops, then reads on.
      if (reads.length % 8 === 0) {
        pauses++
        return 2
      }
      return 0
    }
  }
  const buffers = buffersFor(65536, 65536, 65536)
  const outcome = await client.get(new URL(url), 0, buffers, {}, AbortSignal.timeout(5000), () => {}, content.length, pacer)
  assert.equal(outcome, 'done')
  assert.deepEqual(Buffer.concat(buffers), content.subarray(0, 3 * 65536))
  assert.equal(reads.reduce((a, b) => a + b, 0), 3 * 65536, 'every body byte is reported to the pacer')
  // The bytes that came in with the response head are one report; the rest are reads of at most readSize().
  assert.ok(reads.slice(1).every(n => n <= 4096), `reads: ${reads.slice(0, 10).join(', ')}`)
  assert.ok(pauses > 0)
})

test('a request window splits a span into requests it fits, fills the same buffers, and never exceeds the window', async (t) => {
  const seen: string[] = []
  const { url } = await serve(t, (req, res) => {
    seen.push(req.headers.range ?? '')
    ranges(req, res)
  })
  const client = new RangeClient({ maxPerOrigin: 2, timeoutMs: 5000 })
  t.after(() => client.close())
  let inFlight = 0
  let most = 0
  const window = {
    requestSize: () => 20_000,
    acquire: async (bytes: number) => {
      inFlight += bytes
      most = Math.max(most, inFlight)
      return () => { inFlight -= bytes }
    }
  }
  const pacer = { readSize: () => Infinity, consumed: () => 0, window }
  const buffers = buffersFor(65536, 65536, 65536)
  const filled: number[] = []
  const outcome = await client.get(new URL(url), 0, buffers, {}, AbortSignal.timeout(5000), k => filled.push(k), content.length, pacer)
  assert.equal(outcome, 'done')
  assert.deepEqual(filled, [0, 1, 2], 'each block handed on once, when its last piece arrived')
  assert.deepEqual(Buffer.concat(buffers), content.subarray(0, 3 * 65536))
  assert.equal(seen.length, Math.ceil(3 * 65536 / 20_000))
  assert.equal(seen[0], 'bytes=0-19999')
  assert.ok(most <= 20_000, 'one request in flight at a time for one span')
  assert.equal(inFlight, 0, 'every byte of the window given back')
})
