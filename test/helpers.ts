// Shared fixtures of the integration tests: real origins, real agent processes, the
// real CLI. Everything listens on 127.0.0.1 or a Unix socket in a temp dir.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import type { AddressInfo, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after } from 'node:test'
import { fileURLToPath } from 'node:url'
import { CanopyClient } from '@canopy/client'
import { startOrigin } from '@canopy/origin'
import type { Origin } from '@canopy/origin'
import type { AgentEvent, JobState } from '@canopy/core'
import type { EventStream } from '@canopy/client'

/** States after which a job with autoComplete does nothing more by itself. */
export const FINISHED: JobState[] = ['acknowledged', 'error', 'cancelled']

export const CLI = fileURLToPath(new URL('../packages/cli/bin/canopy.js', import.meta.url))

/** Temp dirs made by this test file, removed when all of its tests and their hooks are done. */
const tempDirs: string[] = []
after(async () => {
  for (const dir of tempDirs.splice(0)) {
    await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }).catch((err: unknown) => {
      process.stderr.write(`could not remove ${dir}: ${String(err)}\n`)
    })
  }
})

/**
 * A new temp dir, removed after the test file's last test. Not at the end of the test
 * `t`: node:test runs a test's after-hooks in the order they were added, so a removal
 * added here, before the test starts its origin and agents, would run while they still
 * do. It did: an origin writing a manifest into its state dir made the removal fail
 * (ENOTEMPTY), and since a hook that throws skips the ones after it, the origin was
 * never closed nor the agent stopped, and the test file never exited (CI hung). The
 * removal also retries and never throws.
 */
export async function tempDir (prefix = 'canopy-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  tempDirs.push(dir)
  return dir
}

/** Writes `size` random bytes to `path`; returns their SHA-256 (hex). */
export async function randomFile (path: string, size: number): Promise<{ sha256: string, bytes: Buffer }> {
  const bytes = randomBytes(size)
  await writeFile(path, bytes)
  return { sha256: createHash('sha256').update(bytes).digest('hex'), bytes }
}

export async function fileSha256 (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Reads a counter from an origin's Prometheus text. */
export async function originContentBytes (originUrl: string): Promise<number> {
  const text = await (await fetch(`${originUrl}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith('canopy_origin_bytes_sent_total{kind="content"}'))
  return line === undefined ? 0 : Number(line.split(' ').at(-1))
}

export interface RunResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

/** Runs the `canopy` CLI as a real process. */
export async function runCli (args: string[], options: { env?: Record<string, string>, cwd?: string, timeoutMs?: number } = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => child.on('close', (c, s) => resolve([c, s])))
  clearTimeout(timer)
  return { code, signal, stdout, stderr }
}

/**
 * Peer-node flags for agents in tests: loopback only, a free port, and no mDNS
 * (multicast must not leave the root namespace of the build machines).
 */
export const LOOPBACK_P2P = ['--no-mdns', '--p2p-host', '127.0.0.1', '--p2p-port', '0']

export interface AgentProcess {
  child: ChildProcess
  client: CanopyClient
  stateDir: string
  /** What the agent wrote to stderr so far (its log). */
  stderr: () => string
  /** Sends a signal and waits for the process to exit. */
  kill: (signal?: NodeJS.Signals) => Promise<void>
}

/** How long an agent may take to exit after a signal before the helper kills it and fails. */
const KILL_GRACE_MS = 20_000

/** Starts `canopy agent` as a child process and waits until its API answers. */
export async function startAgentProcess (stateDir: string, extraArgs: string[] = [], env: Record<string, string> = {}): Promise<AgentProcess> {
  const child = spawn(process.execPath, [CLI, 'agent', '--state-dir', stateDir, ...LOOPBACK_P2P, ...extraArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env }
  })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  const client = new CanopyClient({ stateDir })
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      await client.status()
      break
    } catch (err) {
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill('SIGKILL')
        throw new Error(`agent did not start: ${String(err)}\n${stderr}`, { cause: err })
      }
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
  return {
    child,
    client,
    stateDir,
    stderr: () => stderr,
    kill: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      // An agent that does not stop is a failure to report, not a test run that hangs
      // until CI gives up: SIGKILL it, then say so.
      let timer: NodeJS.Timeout | undefined
      const stuck = await Promise.race([
        exited.then(() => false),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), KILL_GRACE_MS) })
      ])
      clearTimeout(timer)
      if (stuck) {
        child.kill('SIGKILL')
        await exited
      }
      await client.close().catch(() => {}) // a second kill (an after-hook) finds it closed
      if (stuck) throw new Error(`the agent did not exit within ${KILL_GRACE_MS / 1000} s of ${signal}\n${stderr.slice(-2000)}`)
    }
  }
}

/** A temp dir with a real origin serving one random file: `${origin.url}/${name}`. */
export async function originWithFile (t: { after: (fn: () => Promise<void>) => void }, size: number, name = 'f.bin', options: { rateLimit?: number, blockSize?: number } = {}): Promise<{ dir: string, origin: Origin, sha256: string }> {
  const dir = await tempDir()
  await mkdir(join(dir, 'root'))
  const { sha256 } = await randomFile(join(dir, 'root', name), size)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin-state'), ...options })
  t.after(async () => await origin.close())
  await origin.ready
  return { dir, origin, sha256 }
}

/** A server without manifests (a plain transfer): `bytes` (3 MiB of random bytes by default) at /f.bin, 404 elsewhere; returns its base URL. */
export async function plainServer (t: { after: (fn: () => void) => void }, bytes: Buffer = randomBytes(3 * 1024 * 1024)): Promise<string> {
  const server = createHttpServer((req, res) => {
    if (req.url !== '/f.bin') {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length }).end(bytes)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** Writes a new swarm key (made by `canopy keygen`) into `dir`; returns its path. */
export async function swarmKeyFile (dir: string, name = 'org.key'): Promise<string> {
  const path = join(dir, name)
  await writeFile(path, (await runCli(['keygen'])).stdout, { mode: 0o600 })
  return path
}

/** The agent's peer-node address on 127.0.0.1. */
export async function loopbackAddress (agent: AgentProcess): Promise<string> {
  return (await agent.client.status()).peer!.addresses.find(ma => ma.startsWith('/ip4/127.0.0.1/'))!
}

/** Waits (up to 10 s) until the agent has at least `peers` connected peers; returns how many it has. */
export async function waitConnected (agent: AgentProcess, peers: number): Promise<number> {
  let connected = 0
  for (let i = 0; i < 100; i++) {
    connected = (await agent.client.status()).peer?.connected ?? 0
    if (connected >= peers) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return connected
}

/**
 * An "origin" that accepts connections and never answers: a job on it stays in
 * connecting (with a long --request-timeout), holding its slot. Returns its base URL.
 */
export async function stalledOrigin (t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const sockets = new Set<Socket>()
  const server = createServer(socket => { sockets.add(socket) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A loopback URL base on which nothing listens (connections are refused). */
export async function refusingOrigin (): Promise<string> {
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise(resolve => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

/** Reads events until `stop` says so; returns them all. */
export async function readUntil (events: EventStream, stop: (e: AgentEvent) => boolean): Promise<AgentEvent[]> {
  const seen: AgentEvent[] = []
  for await (const event of events) {
    seen.push(event)
    if (stop(event)) break
  }
  return seen
}
