// The report of a scenario run: its own module so that the chart (which draws it)
// and the runner (which makes it) do not import each other.
import type { Figure, Sample, TimelineEvent } from './harness.ts'
import type { ScenarioName } from './scenarios.ts'
import type { EngineName } from './engine.ts'
import type { BackgroundReport } from './background-report.ts'

export interface HostReport {
  host: string
  address: string
  peerId: string
  member: boolean
  /** The job's final state (or the last seen, for an agent that left). */
  state: string
  /** Seconds from the job's start to its end. */
  seconds?: number
  fromOrigin: number
  fromPeers: number
  /** From a hosted cache (JobBytes.fromCache). */
  fromCache: number
  /** Absent for a hosted cache (it has no destination file) and an agent that left. */
  fileCorrect?: boolean
  left?: boolean
  /** Started with `--hosted-cache`: its job, if any, is a preload. */
  hostedCache?: boolean
  samples: Sample[]
}

export interface LabReport {
  scenario: ScenarioName
  /** The engine the lab ran on. */
  backend: EngineName
  summary: string
  expectation: string
  agents: number
  size: number
  wan: {
    bitsPerSecond: number
    /** Bytes the WAN link carried toward the branch during the run (LabEngine.wanCounters). */
    bytesTowardBranch: number
    /** Those bytes over what the link could carry from the first job's start to the last job's end. */
    utilisation: number
    /** Seconds one copy of the content takes over the WAN. */
    oneCopySeconds: number
    /** Seconds every agent's copy takes over the WAN, without peers (the agents' count × one copy). */
    wanOnlySeconds: number
    /** Seconds from the first job's start to the last job's end. */
    allDoneSeconds: number
  }
  origin: {
    /** Body bytes the origin counted (its /metrics), during the run. */
    bytesSent: number
    /** bytesSent / size. */
    ratio: number
    /** Whether the origin's count and the WAN interface's agree (see countersAgree). */
    countersAgree: boolean
  }
  hosts: HostReport[]
  timeline: TimelineEvent[]
  pass: boolean
  /** Why `pass` is false. */
  reasons: string[]
  /** The scenario's own measurements (the hosted-cache scenarios: phases, times, bytes from the hosted cache). */
  figures?: Record<string, Figure>
  /** Files written (report, chart), when an output directory was given. */
  files?: { json: string, svg: string }
  /** The `background` scenario's phases, targets and flows. */
  background?: BackgroundReport
}
