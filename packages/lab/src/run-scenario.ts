/**
 * Builds a namespace lab, runs one scenario on it, tears it all down (on success,
 * failure and abort), and produces the scenario's report: JSON, and an SVG chart of
 * bytes by source over time per agent.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CanopyError, ErrorCode } from '@canopy/core'
import { LabRun } from './harness.ts'
import { NetnsLab } from './netns.ts'
import { ComposeLab } from './compose-lab.ts'
import type { EngineName } from './engine.ts'
import { scenarioSpec } from './scenarios.ts'
import { LAB_DEFAULTS, MAX_AGENTS } from './topology.ts'
import { renderChart } from './chart.ts'
import type { HostReport, LabReport } from './report.ts'

export type { HostReport, LabReport } from './report.ts'
import { renderBackgroundChart } from './background.ts'

export interface ScenarioOptions {
  /** Network namespaces (the default) or Docker containers through docker-compose. */
  engine?: EngineName
  /** Agent hosts (default 4). */
  agents?: number
  /** Content size in bytes (default 64 MiB). */
  size?: number
  /** WAN rate in bits per second (default 20 Mbit/s). */
  wanBitsPerSecond?: number
  /** Where the JSON report and the SVG chart go (default: none written). */
  outDir?: string
  /** Keep the work directory (content, agents' state, every process's log). */
  keepWorkDir?: boolean
  signal?: AbortSignal
  /** Progress lines (default: none). */
  log?: (line: string) => void
}

/**
 * Whether the origin's count and the WAN interface's agree. The interface adds TCP/IP
 * and HTTP headers (a few percent); the origin counts bytes handed to its sockets,
 * and those queued for an agent that leaves mid-transfer never cross the link (at
 * most a socket buffer or two per connection: a few MiB).
 */
export function countersAgree (originBytes: number, wanBytes: number): boolean {
  return wanBytes >= originBytes - 4 * 1024 * 1024 && wanBytes <= originBytes * 1.08 + 1024 * 1024
}

export async function runScenario (name: string, options: ScenarioOptions = {}): Promise<LabReport> {
  const spec = scenarioSpec(name)
  const agents = options.agents ?? spec.defaults?.agents ?? LAB_DEFAULTS.agents
  const size = options.size ?? spec.defaults?.size ?? LAB_DEFAULTS.size
  const wanBitsPerSecond = options.wanBitsPerSecond ?? LAB_DEFAULTS.wanBitsPerSecond
  if (!Number.isSafeInteger(agents) || agents < spec.minAgents || agents > MAX_AGENTS) {
    throw new CanopyError(ErrorCode.InvalidArgument, `${name} needs between ${spec.minAgents} and ${MAX_AGENTS} agents, not ${agents}`)
  }
  if (!Number.isSafeInteger(size) || size < 1) throw new CanopyError(ErrorCode.InvalidArgument, `the content size must be at least one byte, not ${size}`)
  const log = options.log ?? (() => {})
  const oneCopySeconds = size * 8 / wanBitsPerSecond
  // Bounded: a scenario that has not ended after generous WAN time plus set-up stops itself.
  const limitMs = Math.round((120 + 4 * (agents + 1) * oneCopySeconds) * 1000)

  const workDir = await mkdtemp(join(tmpdir(), `canopy-lab-${name}-`))
  const engine = options.engine ?? 'netns'
  // Not the run's time limit: building the compose lab's image the first time takes minutes.
  const labOptions = { agents, extras: spec.extras, wanBitsPerSecond, workDir, log, ...(options.signal !== undefined ? { signal: options.signal } : {}) }
  let lab
  try {
    lab = engine === 'compose' ? await ComposeLab.create(labOptions) : await NetnsLab.create(labOptions)
  } catch (err) {
    if (options.keepWorkDir !== true) await rm(workDir, { recursive: true, force: true })
    throw err
  }
  const signal = AbortSignal.any([options.signal ?? new AbortController().signal, AbortSignal.timeout(limitMs)])
  const run = new LabRun(lab, { workDir, size, signal, log })
  try {
    log(`${name}: ${spec.summary} (${engine} lab, ${agents} agents, ${size} bytes, WAN ${wanBitsPerSecond / 1e6} Mbit/s; work dir ${workDir})`)
    await run.setUp()
    const before = await run.counters()
    let judge
    try {
      judge = await spec.run(run, agents)
    } catch (err) {
      if (signal.aborted && options.signal?.aborted !== true) {
        throw new CanopyError('ERR_LAB_TIMEOUT', `${name} did not end within ${limitMs / 1000} s (the limit for this size and WAN rate); logs in ${workDir}/logs`, { cause: err })
      }
      throw err
    }
    const after = await run.counters()
    const originBytes = after.originBytes - before.originBytes
    const wanBytes = after.wanBytes - before.wanBytes
    const reasons = await judge(originBytes)
    const agree = countersAgree(originBytes, wanBytes)
    if (!agree && spec.countersMustAgree !== false) reasons.push(`the origin counted ${originBytes} bytes but the WAN interface carried ${wanBytes}`)

    const started = [...run.agents.values()].filter(a => a.startedAt !== undefined)
    const first = Math.min(...started.map(a => a.startedAt!))
    const last = Math.max(...started.map(a => a.finishedAt ?? run.now()))
    const allDoneSeconds = Math.round((last - first) * 1000) / 1000
    const report: LabReport = {
      scenario: spec.name,
      backend: engine,
      summary: spec.summary,
      expectation: spec.expectation,
      agents,
      size,
      wan: {
        bitsPerSecond: wanBitsPerSecond,
        bytesTowardBranch: wanBytes,
        utilisation: round(wanBytes * 8 / (wanBitsPerSecond * Math.max(allDoneSeconds, 0.001))),
        oneCopySeconds: round(oneCopySeconds),
        wanOnlySeconds: round(started.length * oneCopySeconds),
        allDoneSeconds
      },
      origin: { bytesSent: originBytes, ratio: round(originBytes / size), countersAgree: agree },
      hosts: await Promise.all([...run.agents.values()].map(async (a): Promise<HostReport> => ({
        host: a.host.name,
        address: a.host.address,
        peerId: a.peerId,
        member: a.member,
        state: a.last?.state ?? 'unstarted',
        ...(a.startedAt !== undefined && a.finishedAt !== undefined ? { seconds: round(a.finishedAt - a.startedAt) } : {}),
        fromOrigin: a.last?.bytes.fromOrigin ?? 0,
        fromPeers: a.last?.bytes.fromPeers ?? 0,
        fromCache: a.last?.bytes.fromCache ?? 0,
        ...(a.hostedCache === true ? { hostedCache: true } : {}),
        ...(a.left === true ? { left: true } : a.hostedCache === true ? {} : { fileCorrect: await run.fileCorrect(a) }),
        samples: a.samples
      }))),
      timeline: run.timeline,
      pass: reasons.length === 0,
      reasons,
      ...(Object.keys(run.figures).length > 0 ? { figures: run.figures } : {}),
      ...(run.background !== undefined ? { background: run.background } : {})
    }
    if (options.outDir !== undefined) report.files = await writeReport(report, options.outDir)
    return report
  } finally {
    await run.close()
    await lab.destroy()
    if (options.keepWorkDir !== true) await rm(workDir, { recursive: true, force: true })
  }
}

function round (x: number): number {
  return Math.round(x * 1000) / 1000
}

async function writeReport (report: LabReport, outDir: string): Promise<{ json: string, svg: string }> {
  await mkdir(outDir, { recursive: true })
  const stem = join(outDir, `${report.scenario}-${new Date().toISOString().replace(/[:.]/g, '-')}`)
  const files = { json: `${stem}.json`, svg: `${stem}.svg` }
  await writeFile(files.json, JSON.stringify({ ...report, files }, null, 2) + '\n')
  await writeFile(files.svg, report.background !== undefined
    ? renderBackgroundChart(report.background, `${report.scenario}: WAN ${report.wan.bitsPerSecond / 1e6} Mbit/s, ${report.background.link.queueMs} ms queue`, report.pass ? 'pass' : `FAIL: ${report.reasons.join('; ')}`)
    : renderChart(report))
  return files
}
