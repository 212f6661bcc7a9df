// Load check of the job model: BENCH_JOBS (default 1000) small download jobs queued at
// once on one agent against a local origin. While they run, the control API is asked
// for the job list (`canopy jobs --json` calls GET /v1/jobs) back to back, and the
// agent's RSS is sampled. Prints one JSON document: latencies (p50/p99/max) of job
// creation and of the list, the real CLI's `jobs --json` wall time, RSS, total time.
// Env: BENCH_JOBS (1000), BENCH_FILE_SIZE (64KiB), BENCH_FILES (100 distinct files),
// BENCH_LIST_INTERVAL_MS (0: the list is read back to back; more: a pause between reads).
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseSize } from '@canopy/core'
import { withClient, writeRandomFile } from '../scripts/lib/processes.ts'
import { runBench } from '../scripts/lib/bench.ts'

const JOBS = Number(process.env.BENCH_JOBS ?? 1000)
const FILE_SIZE = parseSize(process.env.BENCH_FILE_SIZE ?? '64KiB')
const FILES = Number(process.env.BENCH_FILES ?? 100)
const LIST_INTERVAL_MS = Number(process.env.BENCH_LIST_INTERVAL_MS ?? 0)
/** The bench stops itself if the jobs have not all finished by then. */
const LIMIT_MS = 15 * 60_000
const MiB = 1024 * 1024

function percentiles (values: number[]): { count: number, p50: number, p99: number, max: number } {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0
  const round = (x: number): number => Math.round(x * 10) / 10
  return { count: sorted.length, p50: round(at(0.5)), p99: round(at(0.99)), max: round(sorted.at(-1) ?? 0) }
}

async function rssMiB (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024)
}

runBench('jobs', `${JOBS} queued download jobs of ${FILE_SIZE} bytes on one agent, against a local origin`, async (dir, processes) => {
  if (!(JOBS >= 1 && FILES >= 1)) throw new Error('BENCH_JOBS and BENCH_FILES must be at least 1')
  await mkdir(join(dir, 'root'))
  await mkdir(join(dir, 'out'))
  for (let i = 0; i < FILES; i++) await writeRandomFile(join(dir, 'root', `f${i}.bin`), FILE_SIZE)
  const { url } = await processes.origin(join(dir, 'root'), join(dir, 'origin-state'))
  const stateDir = join(dir, 'agent')
  const agent = await processes.agent(stateDir, ['--log-level', 'warn'])
  const pid = agent.pid!
  const idleRss = await rssMiB(pid)

  return await withClient(stateDir, async client => {
    let peakRss = idleRss
    const sampler = setInterval(() => { rssMiB(pid).then(rss => { peakRss = Math.max(peakRss, rss) }, () => {}) }, 100)
    try {
      const started = performance.now()
      const createMs: number[] = []
      for (let i = 0; i < JOBS; i++) {
        const t0 = performance.now()
        await client.createJob({ name: `load ${i}`, files: [{ url: `${url}/f${i % FILES}.bin`, path: join(dir, 'out', `${i}.bin`) }], autoComplete: true })
        createMs.push(performance.now() - t0)
      }
      const createdSeconds = (performance.now() - started) / 1000

      // The job list, back to back, until every job is finished; a few real CLI runs too.
      const listMs: number[] = []
      const cliMs: number[] = []
      let finished = 0
      let failed = 0
      let lastCli = 0
      while (finished < JOBS) {
        if (performance.now() - started > LIMIT_MS) throw new Error(`only ${finished} of ${JOBS} jobs finished within ${LIMIT_MS / 60_000} minutes`)
        const t0 = performance.now()
        const jobs = await client.listJobs()
        listMs.push(performance.now() - t0)
        if (LIST_INTERVAL_MS > 0) await new Promise(resolve => setTimeout(resolve, LIST_INTERVAL_MS))
        finished = jobs.filter(j => j.state === 'acknowledged' || j.state === 'error' || j.state === 'cancelled').length
        failed = jobs.filter(j => j.state === 'error' || j.state === 'cancelled').length
        if (performance.now() - lastCli > 2000) {
          const c0 = performance.now()
          const cli = await processes.run(['jobs', '--json', '--state-dir', stateDir])
          if (cli.code !== 0) throw new Error(`canopy jobs --json exited ${cli.code}: ${cli.stderr}`)
          cliMs.push(performance.now() - c0)
          lastCli = performance.now()
        }
      }
      const seconds = (performance.now() - started) / 1000
      return {
        jobs: JOBS,
        fileBytes: FILE_SIZE,
        distinctFiles: FILES,
        listIntervalMs: LIST_INTERVAL_MS,
        failedJobs: failed,
        secondsToCreateAll: Math.round(createdSeconds * 100) / 100,
        secondsUntilAllFinished: Math.round(seconds * 100) / 100,
        jobsPerSecond: Math.round(JOBS / seconds),
        createJobMs: percentiles(createMs),
        listJobsMs: percentiles(listMs),
        cliJobsJsonMs: percentiles(cliMs),
        agentRssMiB: { idle: idleRss, peak: peakRss, end: await rssMiB(pid) },
        totalMiB: Math.round(JOBS * FILE_SIZE / MiB)
      }
    } finally {
      clearInterval(sampler)
    }
  })
})
