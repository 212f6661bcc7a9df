// Clients that connect and never read cannot exhaust the origin's descriptors or
// memory, and legitimate clients are still served (issue 13, item 8).
import { after, test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { request as httpRequest } from 'node:http'
import { connect, type Socket } from 'node:net'
import { mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { defaultMaxConnections, defaultMaxConnectionsPerAddress } from '../src/connections.ts'
import { startOrigin, type OriginOptions } from '../src/index.ts'

const tempDirs: string[] = []
after(async () => {
  for (const dir of tempDirs.splice(0)) await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
})

const SERVER = new URL('../src/index.ts', import.meta.url).href

/** The origin in a process of its own, so its descriptors and RSS are its alone. */
async function originProcess (t: TestContext, options: OriginOptions): Promise<{ child: ChildProcess, port: number }> {
  const code = `
    const { startOrigin } = await import(${JSON.stringify(SERVER)})
    const origin = await startOrigin(JSON.parse(process.argv[1]))
    process.stdout.write(origin.port + '\\n')
    process.on('SIGTERM', () => { origin.close().then(() => process.exit(0)) })`
  const child = spawn(process.execPath, ['--input-type=module', '-e', code, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const [line] = await once(createInterface({ input: child.stdout! }), 'line') as [string]
  return { child, port: Number(line) }
}

/**
 * `count` connections from `source` that each send a GET of `path` and never read:
 * paused sockets, so the kernel's receive buffer fills (it does not grow for an
 * application that reads nothing) and the origin's writes stall. Destroyed after the test.
 */
async function slowReaders (t: TestContext, port: number, path: string, count: number, source: string): Promise<Socket[]> {
  const sockets: Socket[] = []
  t.after(() => { for (const s of sockets) s.destroy() })
  for (let i = 0; i < count; i++) {
    const socket = connect({ host: '127.0.0.1', port, localAddress: source })
    socket.on('error', () => {})
    sockets.push(socket)
    await once(socket, 'connect')
    socket.write(`GET ${path} HTTP/1.1\r\nHost: origin\r\n\r\n`)
    socket.pause()
  }
  return sockets
}

const openFds = async (pid: number): Promise<number> => (await readdir(`/proc/${pid}/fd`)).length
async function rssMiB (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) / 1024
}

function get (port: number, path: string, localAddress: string): Promise<{ status: number, body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, localAddress, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

test('200 clients that never read: descriptors and RSS stay bounded, stalled responses are dropped, others are served', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-slow-'))
  tempDirs.push(dir)
  const root = join(dir, 'root')
  await mkdir(root)
  // Sparse: 64 MiB of zeros cost no disk.
  await writeFile(join(root, 'big.bin'), '')
  await truncate(join(root, 'big.bin'), 64 * 1024 * 1024)
  const small = randomBytes(1024 * 1024)
  await writeFile(join(root, 'small.bin'), small)
  const perAddress = 40
  const { child, port } = await originProcess(t, {
    root, stateDir: join(dir, 'state'), scan: false, sendTimeoutMs: 3000, maxConnectionsPerAddress: perAddress
  })
  const pid = child.pid!
  assert.equal((await get(port, '/small.bin', '127.0.0.2')).status, 200)
  const baseFds = await openFds(pid)
  const baseRss = await rssMiB(pid)

  const readers = await slowReaders(t, port, '/big.bin', 200, '127.0.0.1')
  // While they hold on: sample the origin, and a client from another address is served.
  let maxFds = 0
  let maxRss = 0
  const sample = async (): Promise<void> => {
    maxFds = Math.max(maxFds, await openFds(pid))
    maxRss = Math.max(maxRss, await rssMiB(pid))
  }
  for (let i = 0; i < 10; i++) {
    await sample()
    await sleep(100)
  }
  const legit = await get(port, '/small.bin', '127.0.0.2')
  assert.equal(legit.status, 200)
  assert.ok(legit.body.equals(small))
  // The same address is refused with a reason, not left hanging.
  const refused = await get(port, '/small.bin', '127.0.0.1')
  assert.equal(refused.status, 503)
  assert.match(refused.body.toString(), /Too many connections from your address/)

  // After the send timeout the stalled responses are dropped: their sockets and files
  // are closed although the clients still hold their ends open.
  let released = false
  for (let i = 0; i < 200 && !released; i++) {
    await sample()
    released = await openFds(pid) <= baseFds + 4
    if (!released) await sleep(100)
  }
  t.diagnostic(JSON.stringify({ baseFds, maxFds, baseRssMiB: Math.round(baseRss), maxRssMiB: Math.round(maxRss) }))
  assert.ok(readers.every(s => !s.destroyed), 'the slow readers still hold their sockets')
  // Each admitted connection holds a socket and a file; the refused ones nothing.
  assert.ok(maxFds <= baseFds + 2 * perAddress + 8, `open descriptors peaked at ${maxFds} (${baseFds} before)`)
  // Measured here: 47-79 MiB for the 40 stalled responses (read chunks and writes in
  // flight, and garbage not yet collected).
  assert.ok(maxRss - baseRss < 128, `origin RSS grew from ${baseRss.toFixed(0)} to ${maxRss.toFixed(0)} MiB`)
  assert.ok(released, `descriptors not released after the send timeout: ${await openFds(pid)} open (${baseFds} before)`)
  const again = await get(port, '/small.bin', '127.0.0.1')
  assert.equal(again.status, 200, 'the address is admitted again once its stalled connections are gone')
  for (const s of readers) s.destroy()
})

test('connections beyond the total cap get a 503 and are closed at once', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-slow-'))
  tempDirs.push(dir)
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'a.txt'), 'a')
  const options: OriginOptions = { root: join(dir, 'root'), stateDir: join(dir, 'state'), scan: false, maxConnections: 3 }
  const origin = await startOrigin(options)
  t.after(() => origin.close())
  const idle: Socket[] = []
  t.after(() => { for (const s of idle) s.destroy() })
  for (let i = 0; i < 3; i++) {
    const socket = connect({ host: '127.0.0.1', port: origin.port, localAddress: `127.0.0.${10 + i}` })
    await once(socket, 'connect')
    idle.push(socket)
  }
  // The server counts a connection when it accepts it: wait until the last one is counted.
  await sleep(100)
  const refused = await get(origin.port, '/a.txt', '127.0.0.20')
  assert.equal(refused.status, 503)
  assert.match(refused.body.toString(), /as many connections as it can/)
  idle.pop()!.destroy()
  let status = 0
  for (let i = 0; i < 50 && status !== 200; i++) {
    await sleep(50)
    status = (await get(origin.port, '/a.txt', '127.0.0.20')).status
  }
  assert.equal(status, 200, 'a freed slot is given to the next client')
})

test('a branch behind NAT (one address) gets a quarter of the total cap by default, not 64', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-slow-'))
  tempDirs.push(dir)
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'a.txt'), 'a')
  // 12 agents at 8 connections each (2 × requestsInFlight), all from one NAT address.
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'state'), scan: false, maxConnections: 400 })
  t.after(() => origin.close())
  assert.equal(defaultMaxConnectionsPerAddress(400), 100)
  assert.equal(defaultMaxConnectionsPerAddress(100), 64)
  const held: Socket[] = []
  t.after(() => { for (const s of held) s.destroy() })
  for (let i = 0; i < 96; i++) {
    const socket = connect({ host: '127.0.0.1', port: origin.port, localAddress: '127.0.0.9' })
    await once(socket, 'connect')
    held.push(socket)
  }
  await sleep(100)
  assert.equal((await get(origin.port, '/a.txt', '127.0.0.9')).status, 200, 'the 97th connection from the address is served')
  for (let i = 0; i < 4; i++) {
    const socket = connect({ host: '127.0.0.1', port: origin.port, localAddress: '127.0.0.9' })
    await once(socket, 'connect')
    held.push(socket)
  }
  await sleep(100)
  assert.equal((await get(origin.port, '/a.txt', '127.0.0.9')).status, 503, 'the 101st is refused')
  assert.equal((await get(origin.port, '/a.txt', '127.0.0.10')).status, 200, 'another address is served meanwhile')
})

test('startOrigin refuses nonsensical connection limits', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-slow-'))
  tempDirs.push(dir)
  await mkdir(join(dir, 'root'))
  for (const bad of [{ maxConnections: 0 }, { maxConnectionsPerAddress: -1 }, { sendTimeoutMs: Number.NaN }]) {
    const started = startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'state'), ...bad })
    // One that starts anyway is closed, so a failure here does not keep the test process alive.
    started.then(async origin => await origin.close(), () => {})
    await assert.rejects(started, /must be a positive/)
  }
})

test('the default total cap follows the open-file limit', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-slow-'))
  tempDirs.push(dir)
  const limits = join(dir, 'limits')
  await writeFile(limits, 'Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n')
  // ulimit -n 1024 (the case of issue 13): (1024 - 64) / 2.
  assert.equal(defaultMaxConnections(limits), 480)
  assert.equal(defaultMaxConnections(join(dir, 'missing')), 1000)
  await writeFile(limits, 'Max open files            1048576              1048576              files     \n')
  assert.equal(defaultMaxConnections(limits), 1024)
})
