import type { Logger } from '@canopy/core'

/** Options of an agent. Every default is documented here and in docs/CONFIGURATION.md. */
export interface AgentOptions {
  /** Directory of the agent's database and control socket (created 0700). Required. */
  stateDir: string
  /** Default: silent. */
  logger?: Logger
  /** Background (non-foreground) jobs transferring at once. Default 2. Foreground jobs always run. */
  maxBackgroundJobs?: number
  /** Range requests in flight per file being fetched from an origin. Default 4. */
  requestsInFlight?: number
  /** Bytes asked for in one range request (whole blocks, at least one). Default 4 MiB. */
  requestSize?: number
  /** Worker threads that verify block digests off the event loop; 0 hashes inline. Default 1. */
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

export const AGENT_DEFAULTS = {
  maxBackgroundJobs: 2,
  requestsInFlight: 4,
  requestSize: 4 * 1024 * 1024,
  hashThreads: 1,
  requestTimeoutMs: 30_000,
  maxBlockAttempts: 3,
  retryMinMs: 2_000,
  retryMaxMs: 600_000,
  notifyTimeoutMs: 30_000,
  notifyCommandTimeoutMs: 120_000,
  notifyRetryMinMs: 1_000,
  notifyRetryMaxMs: 300_000,
  notifyAttempts: 10
} as const

export type ResolvedAgentOptions = Required<Omit<AgentOptions, 'p2p'>> & Pick<AgentOptions, 'p2p'>

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
