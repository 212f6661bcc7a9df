// Benchmark: origin download through the agent (block-verified, written to disk)
// versus `curl -o` of the same file from the same origin, on loopback, interleaved.
// Prints one JSON document. Run by hand: `npm run bench:download` (see README).
//
// Env: BENCH_SIZES (default "256MiB,1GiB"), BENCH_ROUNDS (default 3), BENCH_AGENT_ARGS
// (extra `canopy agent` flags, e.g. "--requests-in-flight 8").
import { spawn, execFile } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { CanopyClient } from '@canopy/client'
import { parseSize } from '@canopy/core'

const CLI = fileURLToPath(new URL('../packages/cli/bin/canopy.js', import.meta.url))
const SIZES = (process.env.BENCH_SIZES ?? '256MiB,1GiB').split(',').map(parseSize)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const MiB = 1024 * 1024
const children: ChildProcess[] = []

function start (args: string[]): ChildProcess {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  children.push(child)
  return child
}

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
    for (const size of SIZES) {
      const out = createWriteStream(join(root, `f-${size}.bin`))
      for (let left = size; left > 0; left -= MiB) if (!out.write(randomBytes(Math.min(left, MiB)))) await once(out, 'drain')
      out.end()
      await once(out, 'finish')
    }
    const origin = start(['origin', root, '--port', '0', '--state-dir', join(dir, 'origin-state')])
    const originUrl = await new Promise<string>((resolve, reject) => {
      let text = ''
      origin.stderr!.on('data', (d: Buffer) => {
        text += d.toString()
        const m = / at (http:\/\/\S+)/.exec(text)
        if (m !== null && text.includes('manifests ready')) resolve(m[1])
      })
      origin.once('exit', code => reject(new Error(`origin exited ${code}: ${text}`)))
    })
    const agentState = join(dir, 'agent')
    const agentArgs = (process.env.BENCH_AGENT_ARGS ?? '').split(' ').filter(Boolean)
    const agent = start(['agent', '--state-dir', agentState, '--log-level', 'warn', ...agentArgs])
    const client = new CanopyClient({ stateDir: agentState })
    for (let i = 0; ; i++) {
      try {
        await client.status()
        break
      } catch (err) {
        if (i > 300) throw err
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
    const results = []
    for (const size of SIZES) {
      const url = `${originUrl}/f-${size}.bin`
      const curlRates: number[] = []
      const agentRates: number[] = []
      let rssPeakKiB = 0
      for (let round = 0; round < ROUNDS; round++) {
        const curlDest = join(dir, 'curl.bin')
        const t0 = performance.now()
        await promisify(execFile)('curl', ['-sS', '--fail', '-o', curlDest, url])
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
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      results
    }, null, 2))
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM')
    await Promise.all(children.map(async c => c.exitCode === null && c.signalCode === null ? await once(c, 'exit') : undefined))
    await rm(dir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
