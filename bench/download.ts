// Benchmark: origin download through the agent (block-verified, written to disk)
// versus `curl -o` of the same file from the same origin, on loopback, interleaved.
// Prints one JSON document. Run by hand: `npm run bench:download` (see README).
//
// Env: BENCH_SIZES (default "256MiB,1GiB"), BENCH_ROUNDS (default 3), BENCH_AGENT_ARGS
// (extra `canopy agent` flags, e.g. "--requests-in-flight 8"), BENCH_PIN=1 (origin on CPU 0,
// the agent and curl on CPU 1, with taskset: on a small machine this stands in for an origin
// on another host; unpinned, the origin and the downloader compete for the same cores).
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CanopyClient } from '@canopy/client'
import { parseSize } from '@canopy/core'
import { Processes, writeRandomFile } from '../scripts/lib/processes.ts'

const SIZES = (process.env.BENCH_SIZES ?? '256MiB,1GiB').split(',').map(parseSize)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const MiB = 1024 * 1024
const processes = new Processes()
const PIN = process.env.BENCH_PIN === '1'
const ORIGIN_CPUS = PIN ? '0' : undefined
const CLIENT_CPUS = PIN ? '1' : undefined

async function rssKiB (pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-bench-'))
  try {
    const root = join(dir, 'root')
    await mkdir(root)
    for (const size of SIZES) await writeRandomFile(join(root, `f-${size}.bin`), size)
    const originUrl = await processes.origin(root, join(dir, 'origin-state'), ORIGIN_CPUS)
    const agentState = join(dir, 'agent')
    const agentArgs = (process.env.BENCH_AGENT_ARGS ?? '').split(' ').filter(Boolean)
    const agent = await processes.agent(agentState, ['--log-level', 'warn', ...agentArgs], CLIENT_CPUS)
    const client = new CanopyClient({ stateDir: agentState })
    const results = []
    for (const size of SIZES) {
      const url = `${originUrl}/f-${size}.bin`
      const curlRates: number[] = []
      const agentRates: number[] = []
      let rssPeakKiB = 0
      for (let round = 0; round < ROUNDS; round++) {
        const curlDest = join(dir, 'curl.bin')
        const t0 = performance.now()
        const curl = ['curl', '-sS', '--fail', '-o', curlDest, url]
        if (CLIENT_CPUS !== undefined) await promisify(execFile)('taskset', ['-c', CLIENT_CPUS, ...curl])
        else await promisify(execFile)(curl[0], curl.slice(1))
        curlRates.push(size / MiB / ((performance.now() - t0) / 1000))
        await rm(curlDest)

        const dest = join(dir, 'agent.bin')
        let sampling = true
        const sampler = (async () => {
          while (sampling) {
            rssPeakKiB = Math.max(rssPeakKiB, await rssKiB(agent.pid!, 'VmRSS'))
            await new Promise(resolve => setTimeout(resolve, 50))
          }
        })()
        const t1 = performance.now()
        const job = await client.createJob({ files: [{ url, path: dest }], autoComplete: true, priority: 'foreground' })
        const done = await client.waitForJob(job.id, { intervalMs: 10, until: ['acknowledged', 'error', 'cancelled'] })
        const seconds = (performance.now() - t1) / 1000
        sampling = false
        await sampler
        if (done.state !== 'acknowledged') throw new Error(`agent job ended ${done.state}: ${JSON.stringify(done.error)}`)
        agentRates.push(size / MiB / seconds)
        await rm(dest)
      }
      results.push({
        sizeBytes: size,
        rounds: ROUNDS,
        curlMiBps: curlRates.map(r => Math.round(r)),
        agentMiBps: agentRates.map(r => Math.round(r)),
        curlMedianMiBps: Math.round(median(curlRates)),
        agentMedianMiBps: Math.round(median(agentRates)),
        ratio: Number((median(agentRates) / median(curlRates)).toFixed(2)),
        agentRssPeakMiB: Math.round(rssPeakKiB / 1024)
      })
    }
    await client.close()
    console.log(JSON.stringify({
      bench: 'download',
      what: 'origin → agent (block-verified, written to disk) vs curl -o, loopback, interleaved rounds',
      node: process.version,
      agentArgs,
      pinned: PIN ? { origin: ORIGIN_CPUS, agentAndCurl: CLIENT_CPUS } : false,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      results
    }, null, 2))
  } finally {
    await processes.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
