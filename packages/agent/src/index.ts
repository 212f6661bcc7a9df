/**
 * @canopy/agent: the daemon on each branch machine. Persistent BITS-style download
 * jobs that fetch content in blocks verified against the origin's manifest.
 */
import { CanopyAgent } from './agent.ts'
import type { AgentOptions } from './options.ts'

export { CanopyAgent, AGENT_VERSION } from './agent.ts'
export { backoff } from './backoff.ts'
export { MAX_PENDING_NOTIFICATIONS } from './notify/notifier.ts'
export type { AgentEvents } from './agent.ts'
export { AGENT_DEFAULTS, blocksAtRisk } from './options.ts'
export type { AgentOptions, P2pOptions } from './options.ts'
export { JobErrorCode, TransferError } from './errors.ts'
export { JOB_LIMITS } from './jobs/validate.ts'
export { parsePolicy, PolicyError } from './bandwidth/policy.ts'
export type { BandwidthPolicy } from './bandwidth/policy.ts'
export { createAgentMetrics, parseMetricsListen } from './metrics/index.ts'
export type { AgentMetrics } from './metrics/index.ts'

/** Starts an agent: opens its state, recovers jobs, listens on its control socket. */
export async function startAgent (options: AgentOptions): Promise<CanopyAgent> {
  return await CanopyAgent.start(options)
}
export { RangeClient } from './transfer/range-client.ts'
export { BlockHasher } from './transfer/block-hasher.ts'
export type { FileDigest } from './transfer/file-digest.ts'
