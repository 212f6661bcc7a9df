// The `background` scenario's report: types and targets only, so that the harness and the
// report can name them without importing the scenario (which imports the harness).
import type { JobPriority } from '@canopy/core'

/** The WAN's queue toward the branch, in ms of buffer at the link rate (a branch router's). */
export const QUEUE_MS = 300
/** Targets (issue 11). */
export const TARGETS = {
  /** curl keeps at least this share of its solo rate while the low job runs (goal 0.95). */
  curlKeeps: 0.9,
  /** The low job alone uses at least this share of the link. */
  jobAloneShare: 0.8,
  /** Ping RTT rise at p95 with the low job alone, ms (over the idle median). */
  pingRiseP95Ms: 100,
  /** After curl stops, the job is back above this share of the link within recoverySeconds. */
  recovered: 0.8,
  recoverySeconds: 10
} as const

export interface FlowSample {
  /** Seconds since the run started. */
  t: number
  /** Bytes the WAN interface sent toward the branch since the scenario started. */
  wan: number
  /** Bytes curl has written (its current run). */
  curl: number
  /** Bytes the current job has transferred. */
  job: number
  /** The agent's controller for the origin's path, when a background job uses it (its status). */
  controller?: { rate: number, state: string, queueDelayMs?: number }
}

export interface PingStats { count: number, p50: number, p95: number, max: number }

export interface PhaseReport {
  /** Seconds since the run started. */
  from: number
  to: number
  /** curl's payload rate, bytes/s (its own count over its own time). */
  curlRate?: number
  /** The job's payload rate over the phase, bytes/s (its verified bytes). */
  jobRate?: number
  /** Everything the WAN carried toward the branch, bytes/s (headers included). */
  wanRate: number
  ping: PingStats
}

export interface PriorityReport {
  priority: JobPriority
  curlAlone: PhaseReport
  jobAlone: PhaseReport
  together: PhaseReport
  /** curl's rate with the job ÷ alone. */
  curlKeeps: number
  /** The job alone ÷ the link's payload capacity (bits / 8). */
  jobAloneShare: number
  /** The job's share of the link while curl runs. */
  jobTogetherShare: number
  /** p95 ping RTT with the job alone minus the idle median, ms. */
  pingRiseP95Ms: number
  /** Seconds from curl's end until the WAN carries ≥ 80% of the link again (1 s windows); undefined: not within the watch. */
  recoverySeconds?: number
}

export interface BackgroundReport {
  link: { bitsPerSecond: number, queueMs: number }
  phaseSeconds: number
  idlePing: PingStats
  targets: typeof TARGETS
  runs: PriorityReport[]
  samples: FlowSample[]
}
