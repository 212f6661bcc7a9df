/**
 * The `background` scenario: does a background job use only idle WAN bandwidth?
 *
 * One agent host on a WAN shaped like a branch router (20 Mbit/s toward the
 * branch with a deep tbf queue, 300 ms of buffer; the round trip is the veth's,
 * well under 1 ms: this kernel has no netem to add one), and on the
 * same host a plain TCP download by a program that is not Canopy (curl) and a ping
 * across the WAN. For each priority, `low` (judged) and `foreground` (reported side by
 * side: it must not yield), three phases of PHASE_S each: curl alone, the job alone,
 * curl while the job runs; then, when curl stops, how long the job takes to be back
 * above 80% of the link. Flows are sampled every SAMPLE_MS: the WAN interface's
 * counter (everything toward the branch), curl's file size, the job's bytes.
 */
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { throwIfAborted } from '@canopy/core'
import type { LabAgent, LabRun } from './harness.ts'
import { ADDRESSES } from './topology.ts'
import { QUEUE_MS, TARGETS } from './background-report.ts'
import type { BackgroundReport, FlowSample, PhaseReport, PingStats, PriorityReport } from './background-report.ts'

export { QUEUE_MS, TARGETS } from './background-report.ts'
export type { BackgroundReport, FlowSample, PhaseReport, PingStats, PriorityReport } from './background-report.ts'

/** Seconds of each phase. */
const PHASE_S = 20
/** Seconds a job runs before its "alone" phase is measured (the manifest, the controller's first samples). */
const WARM_UP_S = 4
/** Longest wait for the job to be back above RECOVERED of the link once curl stops. */
const RECOVERY_WATCH_S = 15
const SAMPLE_MS = 250
function quantile (sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

function pingStats (rtts: number[]): PingStats {
  const s = [...rtts].sort((a, b) => a - b)
  const r = (x: number): number => Math.round(x * 10) / 10
  return { count: s.length, p50: r(quantile(s, 0.5)), p95: r(quantile(s, 0.95)), max: r(s.at(-1) ?? NaN) }
}

/** The WAN toward the branch with a branch router's deep queue (the engine puts it where a router would). */
async function shapeDeepWan (run: LabRun): Promise<void> {
  run.mark('wan', `toward the branch: ${await run.lab.deepenQueueTowardBranch(QUEUE_MS)}`)
}

class Flows {
  readonly samples: FlowSample[] = []
  curlPath?: string
  jobId?: string
  private stopped = false
  private loop?: Promise<void>
  private wan0 = 0
  private readonly run: LabRun
  private readonly agent: LabAgent

  constructor (run: LabRun, agent: LabAgent) {
    this.run = run
    this.agent = agent
  }

  async start (): Promise<void> {
    this.wan0 = (await this.run.lab.wanCounters()).towardBranch
    this.loop = (async () => {
      while (!this.stopped) {
        await this.sample().catch(() => {})
        await sleep(SAMPLE_MS)
      }
    })()
  }

  async sample (): Promise<FlowSample> {
    const [wan, curl, job, status] = await Promise.all([
      this.run.lab.wanCounters().then(c => c.towardBranch - this.wan0),
      this.curlPath === undefined ? 0 : stat(this.curlPath).then(s => s.size, () => 0),
      this.jobId === undefined ? 0 : this.agent.client.getJob(this.jobId).then(j => j.bytes.transferred, () => 0),
      this.agent.client.status().catch(() => undefined)
    ])
    const path = status?.bandwidth?.paths[0]
    const s: FlowSample = {
      t: this.run.now(),
      wan,
      curl,
      job,
      ...(path !== undefined ? { controller: { rate: path.rate, state: path.state, ...(path.queueDelayMs !== undefined ? { queueDelayMs: path.queueDelayMs } : {}) } } : {})
    }
    this.samples.push(s)
    return s
  }

  async stop (): Promise<void> {
    this.stopped = true
    await this.loop
  }
}

/** Runs `ping` across the WAN for `seconds`; resolves with its round-trip times. */
async function ping (run: LabRun, seconds: number): Promise<number[]> {
  const out = await run.lab.exec('agent-1', ['ping', '-n', '-i', '0.1', '-w', String(seconds), ADDRESSES.origin]).catch((err: Error) => err.message)
  return [...out.matchAll(/time=([\d.]+) ms/g)].map(m => Number(m[1]))
}

/** curl downloading the content for `seconds`; resolves with its payload bytes and seconds. */
async function curl (run: LabRun, path: string, seconds: number): Promise<{ bytes: number, seconds: number }> {
  const child: ChildProcess = run.lab.spawn('agent-1', ['curl', '-s', '-o', path, '--max-time', String(seconds), '-w', '%{size_download} %{time_total}', run.contentUrl])
  let out = ''
  child.stdout!.on('data', (d: Buffer) => { out += d.toString() })
  await once(child, 'exit')
  const [bytes, total] = out.trim().split(' ').map(Number)
  return { bytes, seconds: total }
}

async function phase (run: LabRun, flows: Flows, seconds: number, withCurl: boolean, curlPath: string): Promise<PhaseReport> {
  throwIfAborted(run.signal)
  const before = await flows.sample()
  if (withCurl) {
    await rm(curlPath, { force: true })
    flows.curlPath = curlPath
  }
  const [rtts, curled] = await Promise.all([
    ping(run, seconds),
    withCurl ? curl(run, curlPath, seconds) : sleep(seconds * 1000).then(() => undefined)
  ])
  const after = await flows.sample()
  const span = after.t - before.t
  return {
    from: before.t,
    to: after.t,
    ...(curled !== undefined ? { curlRate: Math.round(curled.bytes / curled.seconds) } : {}),
    ...(flows.jobId !== undefined ? { jobRate: Math.round((after.job - before.job) / span) } : {}),
    wanRate: Math.round((after.wan - before.wan) / span),
    ping: pingStats(rtts)
  }
}

/** Seconds from now until the WAN carries ≥ share × the link over a 1 s window; undefined when not within `watch` s. */
async function recovery (run: LabRun, flows: Flows, share: number, watch: number): Promise<number | undefined> {
  const start = run.now()
  const linkBytes = run.lab.wanBitsPerSecond / 8
  while (run.now() - start < watch) {
    throwIfAborted(run.signal)
    await sleep(SAMPLE_MS)
    const s = flows.samples
    const last = s.at(-1)!
    const earlier = [...s].reverse().find(x => last.t - x.t >= 1)
    if (earlier !== undefined && earlier.t >= start && (last.wan - earlier.wan) / (last.t - earlier.t) >= share * linkBytes) {
      return Math.round((last.t - start) * 10) / 10
    }
  }
  return undefined
}

export async function runBackground (run: LabRun): Promise<{ report: BackgroundReport, reasons: string[] }> {
  await shapeDeepWan(run)
  const agent = await run.startAgent('agent-1', { extraArgs: ['--no-p2p'] })
  const flows = new Flows(run, agent)
  await flows.start()
  const curlPath = join(run.workDir, 'out', 'curl.bin')
  const linkPayload = run.lab.wanBitsPerSecond / 8
  const idle = pingStats(await ping(run, 5))
  run.mark('agent-1', `idle ping p50 ${idle.p50} ms, p95 ${idle.p95} ms`)
  const runs: PriorityReport[] = []
  for (const priority of ['low', 'foreground'] as const) {
    flows.jobId = undefined
    const curlAlone = await phase(run, flows, PHASE_S, true, curlPath)
    run.mark('agent-1', `curl alone: ${(curlAlone.curlRate! / 1e6).toFixed(2)} MB/s`)
    const job = await agent.client.createJob({ name: `background scenario (${priority})`, priority, files: [{ url: run.contentUrl, path: join(run.workDir, 'out', `${priority}.bin`) }] })
    flows.jobId = job.id
    run.mark('agent-1', `${priority} job started`)
    await sleep(WARM_UP_S * 1000)
    const jobAlone = await phase(run, flows, PHASE_S, false, curlPath)
    run.mark('agent-1', `${priority} job alone: ${(jobAlone.jobRate! / 1e6).toFixed(2)} MB/s, ping p95 ${jobAlone.ping.p95} ms`)
    const together = await phase(run, flows, PHASE_S, true, curlPath)
    run.mark('agent-1', `curl with the ${priority} job: ${(together.curlRate! / 1e6).toFixed(2)} MB/s, job ${(together.jobRate! / 1e6).toFixed(2)} MB/s`)
    const recoverySeconds = await recovery(run, flows, TARGETS.recovered, RECOVERY_WATCH_S)
    run.mark('agent-1', `curl stopped; the ${priority} job ${recoverySeconds === undefined ? `was not back above ${TARGETS.recovered * 100}% within ${RECOVERY_WATCH_S} s` : `was back above ${TARGETS.recovered * 100}% of the link in ${recoverySeconds} s`}`)
    const final = await agent.client.getJob(job.id)
    if (final.state === 'acknowledged' || final.state === 'transferred') run.mark('agent-1', 'the job finished during the phases: use a larger --size')
    await agent.client.cancel(job.id).catch(() => {})
    flows.jobId = undefined
    // Let the queue drain before the next measurement.
    await sleep(3000)
    runs.push({
      priority,
      curlAlone,
      jobAlone,
      together,
      curlKeeps: round(together.curlRate! / curlAlone.curlRate!),
      jobAloneShare: round(jobAlone.jobRate! / linkPayload),
      jobTogetherShare: round(together.jobRate! / linkPayload),
      pingRiseP95Ms: Math.round((jobAlone.ping.p95 - idle.p50) * 10) / 10,
      ...(recoverySeconds !== undefined ? { recoverySeconds } : {})
    })
  }
  await flows.stop()
  const low = runs[0]
  const reasons: string[] = []
  if (low.curlKeeps < TARGETS.curlKeeps) reasons.push(`curl kept ${pct(low.curlKeeps)} of its solo rate while the low job ran (target ≥ ${pct(TARGETS.curlKeeps)})`)
  if (low.jobAloneShare < TARGETS.jobAloneShare) reasons.push(`the low job alone used ${pct(low.jobAloneShare)} of the link (target ≥ ${pct(TARGETS.jobAloneShare)})`)
  if (!(low.pingRiseP95Ms <= TARGETS.pingRiseP95Ms)) reasons.push(`ping RTT rose by ${low.pingRiseP95Ms} ms at p95 with the low job alone (target ≤ ${TARGETS.pingRiseP95Ms} ms)`)
  if (low.recoverySeconds === undefined || low.recoverySeconds > TARGETS.recoverySeconds) {
    reasons.push(`after curl stopped the low job was not back above ${pct(TARGETS.recovered)} of the link within ${TARGETS.recoverySeconds} s${low.recoverySeconds === undefined ? '' : ` (${low.recoverySeconds} s)`}`)
  }
  return {
    report: { link: { bitsPerSecond: run.lab.wanBitsPerSecond, queueMs: QUEUE_MS }, phaseSeconds: PHASE_S, idlePing: idle, targets: TARGETS, runs, samples: flows.samples },
    reasons
  }
}

function round (x: number): number {
  return Math.round(x * 1000) / 1000
}

function pct (x: number): string {
  return `${Math.round(x * 1000) / 10}%`
}

const W = 760
const LEFT = 60
const PANEL_H = 180
const COLORS = { curl: '#1c7ed6', job: '#d9822b', wan: '#555', phase: '#aaa' }

function esc (text: string): string {
  return text.replace(/[&<>"]/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!)
}

/**
 * The picture of a `background` run: one panel per priority, the rates of the three
 * flows over time (curl, the job, everything on the WAN toward the branch; 1 s
 * windows), with the phases marked. Plain SVG.
 */
export function renderBackgroundChart (report: BackgroundReport, title: string, verdict: string): string {
  const parts: string[] = []
  const height = 70 + report.runs.length * (PANEL_H + 40)
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" font-family="sans-serif" font-size="11">`)
  parts.push('<rect width="100%" height="100%" fill="white"/>')
  parts.push(`<text x="10" y="18" font-size="14" font-weight="bold">${esc(title)}</text>`)
  parts.push(`<text x="10" y="34">${esc(verdict)}</text>`)
  const legend: Array<[string, string]> = [['curl (not Canopy)', COLORS.curl], ['the Canopy job', COLORS.job], ['the WAN toward the branch (all)', COLORS.wan]]
  legend.forEach(([label, color], i) => parts.push(`<rect x="${LEFT + i * 200}" y="42" width="10" height="10" fill="${color}"/><text x="${LEFT + 14 + i * 200}" y="51">${esc(label)}</text>`))
  const linkBytes = report.link.bitsPerSecond / 8
  const maxRate = linkBytes * 1.1
  report.runs.forEach((r, i) => {
    const top = 70 + i * (PANEL_H + 40) + 14
    const t0 = r.curlAlone.from
    const t1 = Math.max(r.together.to + TARGETS.recoverySeconds + 5, t0 + 1)
    const x = (t: number): number => LEFT + (t - t0) / (t1 - t0) * (W - LEFT - 20)
    const y = (rate: number): number => top + PANEL_H - Math.min(rate, maxRate) / maxRate * PANEL_H
    parts.push(`<text x="${LEFT}" y="${top - 4}" font-weight="bold">${esc(`${r.priority} job: curl keeps ${Math.round(r.curlKeeps * 100)}%, job alone ${Math.round(r.jobAloneShare * 100)}% of the link, ping p95 +${r.pingRiseP95Ms} ms, back above 80% in ${r.recoverySeconds ?? '—'} s`)}</text>`)
    parts.push(`<rect x="${LEFT}" y="${top}" width="${W - LEFT - 20}" height="${PANEL_H}" fill="none" stroke="#555" stroke-width="0.5"/>`)
    for (const frac of [0.5, 1]) parts.push(`<text x="${LEFT - 4}" y="${y(frac * linkBytes) + 4}" text-anchor="end" fill="#555">${Math.round(frac * report.link.bitsPerSecond / 1e6)} Mb/s</text><line x1="${LEFT}" x2="${W - 20}" y1="${y(frac * linkBytes)}" y2="${y(frac * linkBytes)}" stroke="#ddd"/>`)
    for (const [label, p] of [['curl alone', r.curlAlone], ['job alone', r.jobAlone], ['curl + job', r.together]] as const) {
      parts.push(`<line x1="${x(p.from)}" x2="${x(p.from)}" y1="${top}" y2="${top + PANEL_H}" stroke="${COLORS.phase}" stroke-dasharray="3,2"/><text x="${x(p.from) + 2}" y="${top + 12}" fill="#777">${label}</text>`)
    }
    const s = report.samples.filter(p => p.t >= t0 && p.t <= t1)
    for (const [key, color] of [['wan', COLORS.wan], ['curl', COLORS.curl], ['job', COLORS.job]] as const) {
      const points: string[] = []
      for (let k = 0; k < s.length; k++) {
        const earlier = s.slice(0, k).reverse().find(p => s[k].t - p.t >= 1)
        if (earlier === undefined) continue
        const delta = s[k][key] - earlier[key]
        // A counter that went back (a new curl, a new job) starts a new window.
        if (delta < 0) continue
        points.push(`${x(s[k].t).toFixed(1)},${y(delta / (s[k].t - earlier.t)).toFixed(1)}`)
      }
      parts.push(`<polyline points="${points.join(' ')}" fill="none" stroke="${color}" stroke-width="${key === 'wan' ? 1 : 1.6}"/>`)
    }
    parts.push(`<text x="${LEFT}" y="${top + PANEL_H + 14}" fill="#555">0 s</text><text x="${W - 20}" y="${top + PANEL_H + 14}" text-anchor="end" fill="#555">${Math.round(t1 - t0)} s</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}
