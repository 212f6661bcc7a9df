import type { Logger } from '@canopy/core'

/** Options of an agent. Every default is documented here and in docs/CONFIGURATION.md. */
export interface AgentOptions {
  /** Directory of the agent's database and control socket (created 0700). Required. */
  stateDir: string
  /** Default: silent. */
  logger?: Logger
  /** Background (non-foreground) jobs transferring at once. Default 2. Foreground jobs always run. */
  maxBackgroundJobs?: number
  /** Block requests in flight per file, and connections per origin. Default 8. */
  blocksInFlight?: number
  /** Milliseconds without response headers or body bytes before a request is abandoned. Default 30 000. */
  requestTimeoutMs?: number
  /** Fetches of one block that fail verification before the job stops in error. Default 3. */
  maxBlockAttempts?: number
  /** First retry delay after a transient error, in ms; doubles each time (with ±20% jitter). Default 2 000. */
  retryMinMs?: number
  /** Longest retry delay, in ms. Default 600 000 (10 minutes). */
  retryMaxMs?: number
}

export const AGENT_DEFAULTS = {
  maxBackgroundJobs: 2,
  blocksInFlight: 8,
  requestTimeoutMs: 30_000,
  maxBlockAttempts: 3,
  retryMinMs: 2_000,
  retryMaxMs: 600_000
} as const

export type ResolvedAgentOptions = Required<AgentOptions>
