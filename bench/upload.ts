// Benchmark: uploads to `canopy origin --upload-dir` versus `curl -T` sending the same file to
// the same origin as one tus PATCH (the origin has no plain PUT: a single PATCH is the same
// server path without the client's fragments, checksums and SHA-256), on loopback, interleaved
// rounds: curl, then an upload job of a running `canopy agent` (what `canopy put` does: its CPU
// time and its RSS sampled during the upload), then the agent's tus client alone in a process of
// its own (this file with the argument `client`), with and without per-fragment checksums.
// Prints one JSON document. Run by hand: `npm run bench:upload` (see README).
//
// Env: BENCH_SIZES (default "256MiB,1GiB"), BENCH_ROUNDS (default 3), BENCH_FRAGMENT (default the
// client's, 8MiB), BENCH_PIN=1 (origin on CPU 0, the clients on CPU 1, with taskset).
import { execFile, spawn } from 'node:child_process'
import { mkdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { CanopyClient } from '@canopy/client'
import { parseSize } from '@canopy/core'
import { tusUpload } from '../packages/agent/src/transfer/tus-upload.ts'
import { writeRandomFile } from '../scripts/lib/processes.ts'
import { processCpu, runBench } from '../scripts/lib/bench.ts'

const MiB = 1024 * 1024

/** `node bench/upload.ts client FILE ENDPOINT NAME CHECKSUM`: one upload, its figures as JSON on stdout. */
async function clientMode (): Promise<void> {
  const [path, endpoint, name, checksum] = process.argv.slice(3)
  const fragmentSize = process.env.BENCH_FRAGMENT === undefined ? undefined : parseSize(process.env.BENCH_FRAGMENT)
  // CPU of the upload alone: loading and compiling the modules costs ~0.5 s, which would
  // dominate the figures of a 256 MiB file.
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const result = await tusUpload({}, { endpoint, path, name, checksum: checksum === 'on', fragmentSize, verify: 'required' })
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  process.stdout.write(JSON.stringify({
    seconds,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    rssPeakKiB: process.resourceUsage().maxRSS,
    verified: result.serverSha256 === result.sha256,
    sent: result.sent
  }))
}

if (process.argv[2] === 'client') {
  clientMode().catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
} else {
  const SIZES = (process.env.BENCH_SIZES ?? '256MiB,1GiB').split(',').map(parseSize)
  const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
  const PIN = process.env.BENCH_PIN === '1'
  const ORIGIN_CPUS = PIN ? '0' : undefined
  const CLIENT_CPUS = PIN ? '1' : undefined
  const SELF = fileURLToPath(import.meta.url)
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  const perGiB = (seconds: number, size: number): number => Number((seconds / ROUNDS / (size / 1024 ** 3)).toFixed(2))
  /** Children's CPU seconds from the second line of bash's `times` ("0m1.234s 0m0.567s"). */
  const childCpu = (timesOutput: string): number => {
    const line = timesOutput.trim().split('\n').at(-1) ?? ''
    return [...line.matchAll(/(\d+)m([\d.]+)s/g)].reduce((s, m) => s + Number(m[1]) * 60 + Number(m[2]), 0)
  }
  const pinned = (command: string[]): string[] => CLIENT_CPUS === undefined ? command : ['taskset', '-c', CLIENT_CPUS, ...command]

  const runClient = async (path: string, endpoint: string, name: string, checksum: boolean): Promise<{ seconds: number, cpuSeconds: number, rssPeakKiB: number, verified: boolean }> => {
    const command = pinned([process.execPath, SELF, 'client', path, endpoint, name, checksum ? 'on' : 'off'])
    const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    const code = await new Promise<number | null>(resolve => child.once('close', resolve))
    if (code !== 0) throw new Error(`the tus client exited with ${code}`)
    return JSON.parse(out) as { seconds: number, cpuSeconds: number, rssPeakKiB: number, verified: boolean }
  }

  runBench('upload', 'agent tus client → canopy origin --upload-dir vs curl -T (one tus PATCH), loopback, interleaved rounds', async (dir, processes) => {
    const root = join(dir, 'root')
    const uploads = join(dir, 'incoming')
    await mkdir(root)
    await mkdir(uploads)
    const child = processes.start(['origin', root, '--port', '0', '--state-dir', join(dir, 'origin-state'), '--upload-dir', uploads, '--upload-min-free', '0', '--upload-max-size', '1TiB'], ORIGIN_CPUS)
    const endpoint = await new Promise<string>((resolve, reject) => {
      let text = ''
      child.stderr!.on('data', (d: Buffer) => {
        text += d.toString()
        const match = /accepting uploads into .* at (http:\/\/\S+)/.exec(text)
        if (match !== null) resolve(match[1])
      })
      child.once('exit', code => reject(new Error(`the origin exited (${code}): ${text}`)))
    })
    const originPid = child.pid!
    const agentState = join(dir, 'agent')
    const agentPid = (await processes.agent(agentState, [], CLIENT_CPUS)).pid!
    const agent = new CanopyClient({ stateDir: agentState })
    const rssMiB = async (): Promise<number> => {
      const match = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${agentPid}/status`, 'utf8'))
      return Math.round(Number(match?.[1] ?? 0) / 1024)
    }
    const agentIdleRssMiB = await rssMiB()
    /** One upload job through the agent: its rate, the agent's CPU seconds, and its RSS every 250 ms meanwhile. */
    const runAgent = async (path: string, name: string, size: number): Promise<{ MiBps: number, cpuSeconds: number, rss: number[] }> => {
      const rss: number[] = []
      const cpu0 = await processCpu(agentPid)
      const t0 = performance.now()
      const job = await agent.createUpload(path, endpoint, { name, priority: 'foreground', autoComplete: true })
      const sampler = setInterval(() => { rssMiB().then(r => rss.push(r), () => {}) }, 250)
      try {
        const done = await agent.waitForJob(job.id, { intervalMs: 50, until: ['acknowledged', 'error', 'cancelled'] })
        if (done.state !== 'acknowledged') throw new Error(`the upload job ended ${done.state}: ${JSON.stringify(done.error)}`)
      } finally {
        clearInterval(sampler)
      }
      const seconds = (performance.now() - t0) / 1000
      return { MiBps: size / MiB / seconds, cpuSeconds: await processCpu(agentPid) - cpu0, rss }
    }
    const run = promisify(execFile)
    const results = []
    for (const size of SIZES) {
      const file = join(dir, `f-${size}.bin`)
      await writeRandomFile(file, size)
      const rates = { curl: [] as number[], agent: [] as number[], tus: [] as number[], tusNoChecksum: [] as number[] }
      const cpu = { curl: 0, agent: 0, tus: 0, tusNoChecksum: 0, originCurl: 0, originAgent: 0, originTus: 0, originTusNoChecksum: 0 }
      const agentRss: number[] = []
      let rssPeakKiB = 0
      for (let round = 0; round < ROUNDS; round++) {
        // curl: create the upload (no bytes), then send the whole file in one PATCH.
        const name = `curl-${size}-${round}.bin`
        const create = await fetch(endpoint, { method: 'POST', headers: { 'tus-resumable': '1.0.0', 'upload-length': String(size), 'upload-metadata': `filename ${Buffer.from(name).toString('base64')}` } })
        if (create.status !== 201) throw new Error(`creating the curl upload: HTTP ${create.status} ${await create.text()}`)
        const location = new URL(create.headers.get('location')!, endpoint).toString()
        const originBefore = await processCpu(originPid)
        const t0 = performance.now()
        // `-w` reports nothing on CPU; bash's `times` prints the children's user and system time.
        const curl = `curl -sS --fail -o /dev/null -X PATCH -T '${file}' -H 'Expect:' -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' '${location}' && times`
        const [command, ...args] = pinned(['bash', '-c', curl])
        const { stdout } = await run(command, args)
        rates.curl.push(size / MiB / ((performance.now() - t0) / 1000))
        cpu.originCurl += await processCpu(originPid) - originBefore
        cpu.curl += childCpu(stdout)
        await rm(join(uploads, name))

        const agentName = `agent-${size}-${round}.bin`
        const originBeforeAgent = await processCpu(originPid)
        const viaAgent = await runAgent(file, agentName, size)
        cpu.originAgent += await processCpu(originPid) - originBeforeAgent
        rates.agent.push(viaAgent.MiBps)
        cpu.agent += viaAgent.cpuSeconds
        agentRss.push(...viaAgent.rss)
        await rm(join(uploads, agentName))

        for (const checksum of [true, false]) {
          const key = checksum ? 'tus' : 'tusNoChecksum'
          const tusName = `${key}-${size}-${round}.bin`
          const before = await processCpu(originPid)
          const figures = await runClient(file, endpoint, tusName, checksum)
          if (!figures.verified) throw new Error('the server\'s SHA-256 differs from the file\'s')
          cpu[checksum ? 'originTus' : 'originTusNoChecksum'] += await processCpu(originPid) - before
          rates[key].push(size / MiB / figures.seconds)
          cpu[key] += figures.cpuSeconds
          rssPeakKiB = Math.max(rssPeakKiB, figures.rssPeakKiB)
          await rm(join(uploads, tusName))
        }
      }
      await rm(file)
      results.push({
        sizeBytes: size,
        rounds: ROUNDS,
        curlMiBps: rates.curl.map(Math.round),
        agentMiBps: rates.agent.map(Math.round),
        tusMiBps: rates.tus.map(Math.round),
        tusNoChecksumMiBps: rates.tusNoChecksum.map(Math.round),
        ratioAgent: Number((median(rates.agent) / median(rates.curl)).toFixed(2)),
        ratio: Number((median(rates.tus) / median(rates.curl)).toFixed(2)),
        ratioNoChecksum: Number((median(rates.tusNoChecksum) / median(rates.curl)).toFixed(2)),
        tusClientRssPeakMiB: Math.round(rssPeakKiB / 1024),
        // The agent daemon's RSS before any upload, and sampled every 250 ms during its uploads of this size.
        agentRssMiB: { idle: agentIdleRssMiB, min: Math.min(...agentRss), median: median(agentRss), max: Math.max(...agentRss), samples: agentRss.length },
        cpuSecondsPerGiB: {
          // The whole agent process during its upload job (API calls, job bookkeeping and the tus client).
          agent: perGiB(cpu.agent, size),
          // The tus client process during the upload (start-up excluded): reading, SHA-256 of the
          // file and of each fragment (checksum on), HTTP.
          tusClient: perGiB(cpu.tus, size),
          tusClientNoChecksum: perGiB(cpu.tusNoChecksum, size),
          curl: perGiB(cpu.curl, size),
          originDuringAgent: perGiB(cpu.originAgent, size),
          originDuringTus: perGiB(cpu.originTus, size),
          originDuringTusNoChecksum: perGiB(cpu.originTusNoChecksum, size),
          originDuringCurl: perGiB(cpu.originCurl, size)
        }
      })
    }
    await agent.close()
    return { pinned: PIN ? { origin: ORIGIN_CPUS, clients: CLIENT_CPUS } : false, results }
  })
}
