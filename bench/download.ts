// Benchmark: origin download through the agent (block-verified, written to disk)
// versus `curl -o` of the same file from the same origin, on loopback, interleaved.
// Also `curl -o` followed by `openssl dgst -sha256` of the file: a download checked
// by hand against a published digest, which does one of the agent's two SHA-256
// passes (openssl, unlike coreutils' sha256sum, uses the CPU's SHA instructions, as
// Node does). Prints one JSON document. Run by hand: `npm run bench:download` (see README).
//
// Env: BENCH_SIZES (default "256MiB,1GiB"), BENCH_ROUNDS (default 3), BENCH_AGENT_ARGS
// (extra `canopy agent` flags, e.g. "--requests-in-flight 8"), BENCH_PIN=1 (origin on CPU 0,
// the agent and curl on CPU 1, with taskset: on a small machine this stands in for an origin
// on another host; unpinned, the origin and the downloader compete for the same cores).
import { execFile } from 'node:child_process'
import { mkdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CanopyClient } from '@canopy/client'
import { parseSize } from '@canopy/core'
import { writeRandomFile } from '../scripts/lib/processes.ts'
import { processCpu, runBench, sum, threadCpu } from '../scripts/lib/bench.ts'

const SIZES = (process.env.BENCH_SIZES ?? '256MiB,1GiB').split(',').map(parseSize)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const MiB = 1024 * 1024
const PIN = process.env.BENCH_PIN === '1'
const ORIGIN_CPUS = PIN ? '0' : undefined
const CLIENT_CPUS = PIN ? '1' : undefined

async function rssKiB (pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
}

const perGiB = (seconds: number, size: number): number => Number((seconds / ROUNDS / (size / 1024 ** 3)).toFixed(2))

/** Children's CPU seconds from the second line of bash's `times` ("0m1.234s 0m0.567s"). */
function childCpu (timesOutput: string): number {
  const line = timesOutput.trim().split('\n').at(-1) ?? ''
  return [...line.matchAll(/(\d+)m([\d.]+)s/g)].reduce((s, m) => s + Number(m[1]) * 60 + Number(m[2]), 0)
}

/** Runs a bash command line where curl runs: pinned to CLIENT_CPUS with BENCH_PIN=1. */
async function clientShell (command: string): Promise<{ stdout: string }> {
  const run = promisify(execFile)
  return CLIENT_CPUS !== undefined ? await run('taskset', ['-c', CLIENT_CPUS, 'bash', '-c', command]) : await run('bash', ['-c', command])
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

runBench('download', 'origin → agent (block-verified, written to disk) vs curl -o, loopback, interleaved rounds', async (dir, processes) => {
  const root = join(dir, 'root')
  await mkdir(root)
  for (const size of SIZES) await writeRandomFile(join(root, `f-${size}.bin`), size)
  const origin = await processes.origin(root, join(dir, 'origin-state'), ORIGIN_CPUS)
  const originUrl = origin.url
  const agentState = join(dir, 'agent')
  const agentArgs = (process.env.BENCH_AGENT_ARGS ?? '').split(' ').filter(Boolean)
  const agent = await processes.agent(agentState, ['--log-level', 'warn', ...agentArgs], CLIENT_CPUS)
  const client = new CanopyClient({ stateDir: agentState })
  // Settled, before any job: what the agent costs doing nothing.
  await new Promise(resolve => setTimeout(resolve, 1000))
  const agentIdleRssMiB = Math.round(await rssKiB(agent.pid!, 'VmRSS') / 1024)
  const results = []
  for (const size of SIZES) {
    const url = `${originUrl}/f-${size}.bin`
    const curlRates: number[] = []
    const checkedCurlRates: number[] = []
    const agentRates: number[] = []
    let rssPeakKiB = 0
    const agentCpu = new Map<string, number>()
    let agentProcessCpu = 0
    let originCpu = 0
    let originCpuCurl = 0
    let curlCpu = 0
    for (let round = 0; round < ROUNDS; round++) {
      const curlDest = join(dir, 'curl.bin')
      const originBeforeCurl = await processCpu(origin.pid)
      const t0 = performance.now()
      // `-w` reports nothing on CPU; bash's `times` prints the children's user and system time.
      const { stdout } = await clientShell(`curl -sS --fail -o '${curlDest}' '${url}' && times`)
      curlRates.push(size / MiB / ((performance.now() - t0) / 1000))
      originCpuCurl += await processCpu(origin.pid) - originBeforeCurl
      curlCpu += childCpu(stdout)
      await rm(curlDest)

      const t2 = performance.now()
      await clientShell(`curl -sS --fail -o '${curlDest}' '${url}' && openssl dgst -sha256 -r '${curlDest}'`)
      checkedCurlRates.push(size / MiB / ((performance.now() - t2) / 1000))
      await rm(curlDest)

      const dest = join(dir, 'agent.bin')
      let sampling = true
      const sampler = (async () => {
        while (sampling) {
          rssPeakKiB = Math.max(rssPeakKiB, await rssKiB(agent.pid!, 'VmRSS'))
          await new Promise(resolve => setTimeout(resolve, 50))
        }
      })()
      const agentBefore = await threadCpu(agent.pid!)
      const agentProcessBefore = await processCpu(agent.pid!)
      const originBefore = sum(await threadCpu(origin.pid))
      const t1 = performance.now()
      const job = await client.createJob({ files: [{ url, path: dest }], autoComplete: true, priority: 'foreground' })
      const done = await client.waitForJob(job.id, { intervalMs: 10, until: ['acknowledged', 'error', 'cancelled'] })
      const seconds = (performance.now() - t1) / 1000
      sampling = false
      await sampler
      for (const [thread, seconds] of await threadCpu(agent.pid!)) agentCpu.set(thread, (agentCpu.get(thread) ?? 0) + seconds - (agentBefore.get(thread) ?? 0))
      agentProcessCpu += await processCpu(agent.pid!) - agentProcessBefore
      originCpu += sum(await threadCpu(origin.pid)) - originBefore
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
      curlThenSha256MiBps: checkedCurlRates.map(r => Math.round(r)),
      ratioToCurlThenSha256: Number((median(agentRates) / median(checkedCurlRates)).toFixed(2)),
      agentRssPeakMiB: Math.round(rssPeakKiB / 1024),
      // CPU time per GiB moved during the agent's rounds, by thread name (threads of
      // one name summed: libuv-worker, V8Worker, WorkerThread, ...). Threads that
      // ended during a round are only in agentTotal, which is the whole process's
      // time, as `endedThreads`.
      cpuSecondsPerGiB: {
        agent: {
          ...Object.fromEntries([...agentCpu].map(([thread, s]) => [thread, perGiB(s, size)])),
          endedThreads: perGiB(Math.max(0, agentProcessCpu - sum(agentCpu)), size)
        },
        agentTotal: perGiB(agentProcessCpu, size),
        origin: perGiB(originCpu, size),
        curl: perGiB(curlCpu, size),
        originDuringCurl: perGiB(originCpuCurl, size)
      }
    })
  }
  await client.close()
  return { agentIdleRssMiB, agentArgs, pinned: PIN ? { origin: ORIGIN_CPUS, agentAndCurl: CLIENT_CPUS } : false, results }
})
