// Benchmark of peer caching on loopback, printing one JSON document:
// - peer throughput: agent B fetches a file that agent A already has, versus A's own
//   fetch of it from the origin (HTTP), both as agent jobs;
// - patch day: N agents connected as peers start the same download at once; the
//   origin's own counter says how many bytes crossed "the WAN".
// Env: BENCH_SIZE (default 256MiB), BENCH_AGENTS (default "2,4,8"), BENCH_AGENT_ARGS (extra
// `canopy agent` flags, e.g. "--log-level debug" with CANOPY_PROCESS_LOGS=DIR to keep the logs).
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseSize } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { withClient, writeRandomFile } from '../scripts/lib/processes.ts'
import type { Processes } from '../scripts/lib/processes.ts'
import { processCpu, runBench, threadCpu } from '../scripts/lib/bench.ts'

const SIZE = parseSize(process.env.BENCH_SIZE ?? '256MiB')
const FLEETS = (process.env.BENCH_AGENTS ?? '2,4,8').split(',').map(Number)
const MiB = 1024 * 1024
const AGENT_ARGS = (process.env.BENCH_AGENT_ARGS ?? '').split(' ').filter(Boolean)

async function download (stateDir: string, url: string, path: string): Promise<{ job: JobView, seconds: number }> {
  return await withClient(stateDir, async client => {
    const started = performance.now()
    const job = await client.createJob({ files: [{ url, path }], autoComplete: true, priority: 'foreground' })
    const done = await client.waitForJob(job.id, { intervalMs: 10, until: ['acknowledged', 'error', 'cancelled'] })
    if (done.state !== 'acknowledged') throw new Error(`job ended ${done.state}: ${JSON.stringify(done.error)}`)
    return { job: done, seconds: (performance.now() - started) / 1000 }
  })
}

async function originBytes (url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  return Number(/canopy_origin_bytes_sent_total\{kind="content"\} (\d+)/.exec(text)?.[1] ?? 0)
}

/** Starts `count` agents, each given the addresses of those before it; resolves with their state directories and pids. */
async function fleet (processes: Processes, dir: string, name: string, count: number, keyFile: string): Promise<{ stateDirs: string[], pids: number[] }> {
  const stateDirs: string[] = []
  const pids: number[] = []
  const addresses: string[] = []
  for (let i = 0; i < count; i++) {
    const stateDir = join(dir, `${name}-${i}`)
    pids.push((await processes.agent(stateDir, ['--log-level', 'warn', '--swarm-key', keyFile, ...addresses.flatMap(a => ['--peer', a]), ...AGENT_ARGS])).pid!)
    const status = await withClient(stateDir, async c => await c.status())
    addresses.push(status.peer!.addresses.find(a => a.startsWith('/ip4/127.0.0.1/'))!)
    stateDirs.push(stateDir)
  }
  for (let tries = 0; tries < 100; tries++) {
    const connected = await Promise.all(stateDirs.map(async s => await withClient(s, async c => (await c.status()).peer?.connected ?? 0)))
    if (connected.every(n => n >= count - 1)) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return { stateDirs, pids }
}

runBench('peers', 'agent processes on loopback with a swarm key and static peers (no mDNS)', async (dir, processes) => {
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'org.key'), (await processes.run(['keygen'])).stdout)
  const keyFile = join(dir, 'org.key')
  const files = [join(dir, 'root', 'pair.bin'), ...FLEETS.map(n => join(dir, 'root', `fleet-${n}.bin`))]
  for (const f of files) await writeRandomFile(f, SIZE)
  const { url: originUrl } = await processes.origin(join(dir, 'root'), join(dir, 'origin-state'))

  const { stateDirs: [a, b], pids } = await fleet(processes, dir, 'pair', 2, keyFile)
  const fromOrigin = await download(a, `${originUrl}/pair.bin`, join(dir, 'a.bin'))
  const cpuBefore = await Promise.all(pids.map(processCpu))
  const threadsBefore = await Promise.all(pids.map(threadCpu))
  const fromPeer = await download(b, `${originUrl}/pair.bin`, join(dir, 'b.bin'))
  const cpuAfter = await Promise.all(pids.map(processCpu))
  const threadsAfter = await Promise.all(pids.map(threadCpu))
  const gib = SIZE / 1024 ** 3
  const perGiB = (k: number): number => Number(((cpuAfter[k] - cpuBefore[k]) / gib).toFixed(2))
  // By thread name (MainThread, WorkerThread = hashing, V8Worker = GC helpers, libuv-worker = fs).
  const threads = (k: number): Record<string, number> => Object.fromEntries([...threadsAfter[k]]
    .map(([name, s]) => [name, Number(((s - (threadsBefore[k].get(name) ?? 0)) / gib).toFixed(2))] as const)
    .filter(([, v]) => v > 0))
  const pair = {
    originMiBps: Math.round(SIZE / MiB / fromOrigin.seconds),
    peerMiBps: Math.round(SIZE / MiB / fromPeer.seconds),
    ratio: Number((fromOrigin.seconds / fromPeer.seconds).toFixed(2)),
    peerBytesShare: Number((fromPeer.job.bytes.fromPeers / SIZE).toFixed(3)),
    // CPU time per GiB of the peer transfer (whole processes): A serving, B receiving.
    cpuSecondsPerGiB: { serving: perGiB(0), receiving: perGiB(1), servingThreads: threads(0), receivingThreads: threads(1) }
  }
  await rm(join(dir, 'a.bin'))
  await rm(join(dir, 'b.bin'))

  const patchDay = []
  for (const n of FLEETS) {
    const { stateDirs: agents } = await fleet(processes, dir, `fleet${n}`, n, keyFile)
    const before = await originBytes(originUrl)
    const started = performance.now()
    const results = await Promise.all(agents.map(async (s, i) => await download(s, `${originUrl}/fleet-${n}.bin`, join(dir, `f${n}-${i}.bin`))))
    const seconds = (performance.now() - started) / 1000
    const sent = await originBytes(originUrl) - before
    patchDay.push({
      agents: n,
      originBytesRatio: Number((sent / SIZE).toFixed(2)),
      seconds: Number(seconds.toFixed(2)),
      fromPeersShare: Number((results.reduce((s, r) => s + r.job.bytes.fromPeers, 0) / (SIZE * n)).toFixed(3))
    })
    for (let i = 0; i < n; i++) await rm(join(dir, `f${n}-${i}.bin`))
  }
  return { sizeBytes: SIZE, pair, patchDay }
})
