import { availableParallelism } from 'node:os'
import type { Logger } from '@canopy/core'

/** Options of an agent. Every default is documented here and in docs/CONFIGURATION.md. */
export interface AgentOptions {
  /** Directory of the agent's database and control socket (created 0700). Required. */
  stateDir: string
  /** Default: silent. */
  logger?: Logger
  /**
   * Also serve the control API on TCP (host:port) for remote administration; every
   * request must then carry `Authorization: Bearer <apiToken>`. Default: none (the
   * Unix socket only).
   */
  apiListen?: string
  /** The bearer token of the TCP listener (required with apiListen). */
  apiToken?: string
  /**
   * HOST:PORT (or PORT, for 127.0.0.1) of a listener that serves Prometheus metrics at
   * GET /metrics without a token. Default: none (the control API serves /metrics too).
   */
  metricsListen?: string
  /** Background (non-foreground) jobs transferring at once. Default 2. Foreground jobs always run. */
  maxBackgroundJobs?: number
  /** Range requests in flight per file being fetched from an origin. Default 4. */
  requestsInFlight?: number
  /** Bytes asked for in one range request (whole blocks, at least one). Default 4 MiB. */
  requestSize?: number
  /**
   * Worker threads that verify block digests and write blocks, and hash whole files,
   * off the event loop; 0 verifies blocks inline (files are then hashed on a thread of
   * their own). Default 2 (the second one hashes the whole files, in parallel with
   * block verification), 1 on a machine with one CPU.
   */
  hashThreads?: number
  /** Milliseconds without response headers or body bytes before a request is abandoned. Default 30 000. */
  requestTimeoutMs?: number
  /** Fetches of one block that fail verification before the job stops in error. Default 3. */
  maxBlockAttempts?: number
  /** First retry delay after a transient error, in ms; doubles each time (with ±20% jitter). Default 2 000. */
  retryMinMs?: number
  /** Longest retry delay, in ms. Default 600 000 (10 minutes). */
  retryMaxMs?: number
  /** Longest wait, in ms, for a job's notify URL to answer a POST. Default 30 000. */
  notifyTimeoutMs?: number
  /** Longest run, in ms, of an on-complete / on-error command before its process group is killed. Default 120 000. */
  notifyCommandTimeoutMs?: number
  /** First delay before a failed notify-URL POST is tried again, in ms; doubles (±20% jitter). Default 1 000. */
  notifyRetryMinMs?: number
  /** Longest delay between notify-URL attempts, in ms. Default 300 000 (5 minutes). */
  notifyRetryMaxMs?: number
  /** Attempts of one notify-URL POST before it is given up (and logged). Default 10. */
  notifyAttempts?: number
  /**
   * How long a background job runs before it gives its slot to a waiting job of the
   * same (or higher) priority, in ms; it goes back to the queue and resumes from its
   * block marks later. Default 300 000 (5 minutes).
   */
  timeSliceMs?: number
  /**
   * Default of a job's no-progress timeout, in ms: a job that spends this long in
   * connecting, transferring or transient_error without a byte of progress stops in
   * error (ERR_NO_PROGRESS). Default 1 209 600 000 (14 days, as BITS).
   */
  noProgressTimeoutMs?: number
  /**
   * Default of a job's maximum download time, in ms: its total time in connecting,
   * transferring and transient_error, then error (ERR_MAX_TIME). Default 0: no limit.
   */
  maxDownloadTimeMs?: number
  /** A job not modified for this long, in ms, in any state but a final one, is cancelled. Default 7 776 000 000 (90 days, as BITS). */
  inactiveJobTimeoutMs?: number
  /** How long an acknowledged or cancelled job stays listable, in ms, before it is removed. Default 604 800 000 (7 days). */
  retentionMs?: number
  /** Jobs not in a final state the agent holds at most; a new one beyond is refused (ERR_TOO_MANY_JOBS). Default 10 000. */
  maxJobs?: number
  /** Files in one job at most (ERR_TOO_MANY_FILES). Default 1000. */
  maxFilesPerJob?: number
  /** Characters of a file's URL at most (ERR_URL_TOO_LONG). Default 8192. */
  maxUrlLength?: number
  /** Characters of a job's name at most (ERR_NAME_TOO_LONG). Default 256. */
  maxNameLength?: number
  /**
   * The clock, in ms since the epoch, that every scheduling decision and deadline
   * reads (time slices, retries, timeouts, retention). Default `Date.now`; tests and
   * simulations pass their own. Timers still run in real time: after moving the
   * clock, any call that schedules (a job created, a command) makes the agent look
   * at the deadlines again.
   */
  now?: () => number
  /**
   * The peer node. Default: none (a library user opts in; `canopy agent` runs one
   * unless given --no-p2p).
   */
  p2p?: P2pOptions
}

export interface P2pOptions {
  /** Listen multiaddrs. Default `/ip4/0.0.0.0/tcp/7373`. */
  listen?: string[]
  /** mDNS discovery on the LAN. Default true. */
  mdns?: boolean
  /** Static peers (multiaddrs on LAN addresses). */
  peers?: string[]
  /** The organisation's swarm key (32 bytes); without it a loud warning. */
  swarmKey?: Uint8Array
  /** Bytes of completed files kept for peers. Default min(10 GiB, 10% of the state directory's disk). */
  cacheSize?: number
}

const DAY_MS = 86_400_000

export const AGENT_DEFAULTS = {
  maxBackgroundJobs: 2,
  requestsInFlight: 4,
  requestSize: 4 * 1024 * 1024,
  // Two even on two CPUs shared with other work: block verification and whole-file
  // digests then take turns on the cores instead of queueing on one thread
  // (bench:download, 1 GiB: median 382 MiB/s over 20 rounds against 328 over 30; peak
  // RSS 216-225 MiB with the agent-wide buffer pool). See docs/ARCHITECTURE.md, section 11.
  hashThreads: availableParallelism() >= 2 ? 2 : 1,
  requestTimeoutMs: 30_000,
  maxBlockAttempts: 3,
  retryMinMs: 2_000,
  retryMaxMs: 600_000,
  notifyTimeoutMs: 30_000,
  notifyCommandTimeoutMs: 120_000,
  notifyRetryMinMs: 1_000,
  notifyRetryMaxMs: 300_000,
  notifyAttempts: 10,
  timeSliceMs: 5 * 60_000,
  noProgressTimeoutMs: 14 * DAY_MS,
  maxDownloadTimeMs: 0,
  inactiveJobTimeoutMs: 90 * DAY_MS,
  retentionMs: 7 * DAY_MS,
  maxJobs: 10_000,
  maxFilesPerJob: 1000,
  maxUrlLength: 8192,
  maxNameLength: 256,
  now: Date.now
} as const

export type ResolvedAgentOptions = Required<Omit<AgentOptions, 'p2p' | 'apiListen' | 'apiToken' | 'metricsListen'>> & Pick<AgentOptions, 'p2p' | 'apiListen' | 'apiToken' | 'metricsListen'>

/** The limits a job request is checked against (a subset of the agent's options). */
export type RequestLimits = Pick<ResolvedAgentOptions, 'maxFilesPerJob' | 'maxUrlLength' | 'maxNameLength'>

/**
 * Blocks one file transfer holds in memory at most: each request's blocks are
 * reserved before it is sent and released once written and marked, and every
 * request in flight may have its previous blocks still being verified and written.
 */
export function blocksBuffered (options: Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestSize'>, blockSize: number): number {
  return 2 * options.requestsInFlight * Math.max(1, Math.floor(options.requestSize / blockSize))
}

/**
 * Most blocks of one file that a crash can cost: those asked for or received but
 * not yet written and marked, which are exactly the blocks held in memory.
 */
export function blocksAtRisk (options: Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestSize'>, blockSize: number): number {
  return blocksBuffered(options, blockSize)
}
