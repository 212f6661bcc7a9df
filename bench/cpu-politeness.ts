// CPU politeness: a CPU-bound program (SHA-256 over 1 MiB, in a loop, in its own
// process at normal priority) runs BENCH_SECONDS (default 10) at a time, in
// BENCH_ROUNDS (default 4) pairs that alternate: alone, then while a `low` job
// downloads from a local origin at full loopback rate. On a
// machine shared with other work the load drifts; adjacent pairs see about the same
// drift, so the figure is the median over pairs of loaded / solo. Then one round with
// the download at `foreground`, for comparison. Background work runs at a low CPU
// priority: hashing and writing on threads at nice 10, and the agent's own thread at
// nice 10 while only background jobs run (see docs/ARCHITECTURE.md, section 17).
// The origin runs in its own process at nice 19: on a branch machine it is a remote
// server in a datacenter, and its CPU is not the user's. The JSON also gives, per
// loaded round, the CPU seconds the agent's threads took by thread name (from
// /proc/self/task), and the origin's.
//   npm run bench:cpu
// The JSON gives the load average too: on a machine busy with other work at nice 0,
// a nice-19 origin gets almost no CPU, the delay controller takes its slow answers
// for a queue on the path and yields, the download crawls, and the figure says
// nothing (each round gives the job's rate and reason); BENCH_ORIGIN_NICE=0 then shows the agent's costs at a real rate (the
// origin then competes with the program, so the ratio is a lower bound).
// Env: BENCH_SECONDS (10), BENCH_ROUNDS (4), BENCH_FILE_SIZE (4GiB; must outlast one
// round), BENCH_ORIGIN_NICE (19).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseSize } from '@canopy/core'
import type { JobPriority } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import { fileURLToPath } from 'node:url'

const CLI = fileURLToPath(new URL('../packages/cli/bin/canopy.js', import.meta.url))

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4)
const ORIGIN_NICE = Number(process.env.BENCH_ORIGIN_NICE ?? 19)
const FILE_SIZE = parseSize(process.env.BENCH_FILE_SIZE ?? '4GiB')
/** A low job starts at 256 KiB/s and grows to the loopback's rate in a few seconds. */
const WARM_UP_MS = 8000
/** A new job on a path in use goes on at the rate the path's controller learnt. */
const RESUME_MS = 3000
const TICK = 100 // USER_HZ

// The program runs at nice 0 whatever thread spawned it (a child inherits the nice
// value of the thread that forks it, and the agent in this process lowers its own).
const BUSY = `const os = require('node:os'); try { os.setPriority(0, 0) } catch {} const { createHash } = require('node:crypto'); const b = Buffer.alloc(1 << 20, 1); let n = 0; const end = Date.now() + ${SECONDS * 1000}; while (Date.now() < end) { createHash('sha256').update(b).digest(); n++ } process.stdout.write(JSON.stringify({ ops: n / ${SECONDS}, nice: os.getPriority(0) }))`

async function busy (): Promise<number> {
  const child = spawn(process.execPath, ['-e', BUSY], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  await once(child, 'exit')
  const { ops, nice } = JSON.parse(out) as { ops: number, nice: number }
  if (nice !== 0) throw new Error(`the program ran at nice ${nice}, not 0: run the bench as root (or with CAP_SYS_NICE)`)
  return ops
}

/** CPU seconds of each thread of process `pid` (by thread name, summed), with their nice values. */
async function threadCpu (pid: number | 'self'): Promise<Map<string, { cpu: number, nice: number }>> {
  const byName = new Map<string, { cpu: number, nice: number }>()
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [])) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')
    if (stat === '') continue
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')).replace(/[0-9]+$/, '').trim()
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const cpu = (Number(f[11]) + Number(f[12])) / TICK
    const nice = Number(f[16])
    const key = `${name} (nice ${nice})`
    byName.set(key, { cpu: (byName.get(key)?.cpu ?? 0) + cpu, nice })
  }
  return byName
}

function cpuDelta (before: Map<string, { cpu: number }>, after: Map<string, { cpu: number }>, seconds: number): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [name, { cpu }] of after) {
    const used = (cpu - (before.get(name)?.cpu ?? 0)) / seconds
    if (used >= 0.01) out[name] = Math.round(used * 100) / 100
  }
  return out
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

const dir = await mkdtemp(join(tmpdir(), 'canopy-bench-cpu-'))
try {
  await mkdir(join(dir, 'root'))
  // A big file without a big random source: one random 64 MiB pattern, repeated.
  const pattern = randomBytes(64 * 1024 * 1024)
  const handle = await open(join(dir, 'root', 'f.bin'), 'w')
  for (let at = 0; at < FILE_SIZE; at += pattern.length) await handle.write(pattern, 0, Math.min(pattern.length, FILE_SIZE - at))
  await handle.close()
  const originProcess = spawn('nice', ['-n', String(ORIGIN_NICE), process.execPath, CLI, 'origin', join(dir, 'root'), '--host', '127.0.0.1', '--port', '0', '--state-dir', join(dir, 'origin')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let originLog = ''
  const originUrl = await new Promise<string>((resolve, reject) => {
    originProcess.stderr.on('data', (d: Buffer) => {
      originLog += d.toString()
      const url = /at (http:\/\/\S+)/.exec(originLog)?.[1]
      if (url !== undefined && originLog.includes('manifests ready')) resolve(url)
    })
    originProcess.once('exit', code => reject(new Error(`the origin exited (${code}): ${originLog}`)))
  })
  const origin = { url: originUrl.replace(/\/$/, ''), close: async () => { originProcess.kill('SIGTERM'); await once(originProcess, 'exit') } }
  const pid = originProcess.pid!
  /** One loaded round: the program's speed, the job's rate, and who took the CPU (cores, i.e. CPU s per s). */
  const loaded = async (agent: Awaited<ReturnType<typeof startAgent>>, id: string): Promise<Record<string, unknown>> => {
    const before = { t: performance.now(), bytes: agent.getJob(id).bytes.transferred, agent: await threadCpu('self'), origin: await threadCpu(pid) }
    const speed = await busy()
    const seconds = (performance.now() - before.t) / 1000
    const view = agent.getJob(id)
    return {
      programOpsPerSecond: speed,
      jobMiBPerSecond: Math.round((view.bytes.transferred - before.bytes) / 1048576 / seconds),
      jobState: view.state,
      // Why a background job runs slower than the link (the delay controller's view).
      jobReason: view.reason,
      agentCores: cpuDelta(before.agent, await threadCpu('self'), seconds),
      originCores: Math.round(Object.values(cpuDelta(before.origin, await threadCpu(pid), seconds)).reduce((a, b) => a + b, 0) * 100) / 100
    }
  }
  const pairs: Array<Record<string, unknown>> = []
  const agent = await startAgent({ stateDir: join(dir, 'agent-low') })
  try {
    // A first job teaches the origin's WAN path its rate; each round's job goes on from it.
    const first = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'out-warm.bin') }], priority: 'low' })
    await new Promise(resolve => setTimeout(resolve, WARM_UP_MS))
    await agent.cancel(first.id)
    for (let round = 0; round < ROUNDS; round++) {
      const solo = await busy()
      const load = loadavg()[0]
      // A new job each round (cancelled after, its partial file removed): the file need only outlast one round.
      const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, `out-low-${round}.bin`) }], priority: 'low' })
      await new Promise(resolve => setTimeout(resolve, RESUME_MS))
      const run = await loaded(agent, job.id)
      await agent.cancel(job.id)
      pairs.push({ soloOpsPerSecond: solo, loadAverage1m: Math.round(load * 10) / 10, ...run, programKeeps: Math.round((run.programOpsPerSecond as number) / solo * 1000) / 1000 })
    }
  } finally {
    await agent.stop()
  }
  const runs: Array<Record<string, unknown>> = []
  for (const priority of ['foreground'] as JobPriority[]) {
    const fg = await startAgent({ stateDir: join(dir, `agent-${priority}`) })
    try {
      const job = await fg.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, `out-${priority}.bin`) }], priority })
      // No controller to warm up: a second, so that the file outlasts the round.
      await new Promise(resolve => setTimeout(resolve, 1000))
      const solo = median(pairs.map(p => p.soloOpsPerSecond as number))
      const run = await loaded(fg, job.id)
      runs.push({ priority, ...run, programKeeps: Math.round((run.programOpsPerSecond as number) / solo * 1000) / 1000 })
      await fg.cancel(job.id)
    } finally {
      await fg.stop()
    }
  }
  await origin.close()
  process.stdout.write(JSON.stringify({ bench: 'cpu-politeness', seconds: SECONDS, rounds: ROUNDS, fileSize: FILE_SIZE, originNice: ORIGIN_NICE, node: process.version, lowKeepsMedian: median(pairs.map(p => p.programKeeps as number)), target: 0.9, low: pairs, comparison: runs }, null, 2) + '\n')
} finally {
  await rm(dir, { recursive: true, force: true })
}
