/**
 * Wire types of the agent's control API (HTTP+JSON, `/v1/...`, on a Unix socket in
 * the agent's state directory). Shared by the agent (server) and the client.
 *
 * Routes:
 *   GET  /v1/status                 -> AgentStatus
 *   GET  /v1/jobs                   -> { jobs: JobView[] }
 *   POST /v1/jobs   CreateJobRequest -> 201 JobView
 *   GET  /v1/jobs/:id               -> JobView
 *   POST /v1/jobs/:id/suspend       -> JobView
 *   POST /v1/jobs/:id/resume        -> JobView
 *   POST /v1/jobs/:id/cancel        -> JobView
 *   POST /v1/jobs/:id/complete      -> JobView
 *   GET  /v1/peers                  -> PeersView (404 ERR_NO_PEER_NODE without a peer node)
 *   GET  /v1/cache                  -> CacheView (likewise)
 *   POST /v1/cache/clear            -> CacheView
 * Errors: HTTP 4xx/5xx with body ApiErrorBody.
 */

export const API_VERSION = 'v1'
/** File name of the control socket inside the state directory. */
export const API_SOCKET_NAME = 'agent.sock'

export type JobState =
  | 'queued' | 'connecting' | 'transferring' | 'suspended' | 'error' | 'transient_error'
  | 'transferred' | 'acknowledged' | 'cancelled'

/** States a job never leaves. */
export const FINAL_STATES: readonly JobState[] = ['acknowledged', 'cancelled']

export type JobPriority = 'foreground' | 'high' | 'normal' | 'low'
export const PRIORITIES: readonly JobPriority[] = ['foreground', 'high', 'normal', 'low']

export type JobType = 'download'

export interface JobError {
  /** Stable code, e.g. ERR_HTTP_NOT_FOUND, ERR_DIGEST_MISMATCH, ERR_DISK_FULL, ERR_NETWORK. */
  code: string
  /** Plain-language reason with what to do about it. */
  message: string
  /** True when the agent retries by itself. */
  transient: boolean
  /** ISO time the error happened. */
  at: string
  /** The file the error concerns, when one does. */
  url?: string
}

export interface JobFileView {
  url: string
  /** Absolute destination path; the file appears there only when the job completes. */
  path: string
  /** Total bytes, or -1 while unknown. */
  bytesTotal: number
  bytesTransferred: number
  /** Manifest id when the origin published one (block-verified, shareable), else absent. */
  manifestId?: string
  /** Whole-file SHA-256 (hex) once known. */
  sha256?: string
}

export interface JobBytes {
  /** Sum of the files' sizes, or -1 while a size is unknown. */
  total: number
  transferred: number
  fromOrigin: number
  fromPeers: number
  fromCache: number
}

export interface JobView {
  id: string
  name: string
  type: JobType
  priority: JobPriority
  state: JobState
  /** Plain-language reason for the current state ("waiting: 2 jobs ahead", "retrying in 8 s: ..."). */
  reason?: string
  files: JobFileView[]
  bytes: JobBytes
  /** Files done / total. */
  filesTransferred: number
  filesTotal: number
  error?: JobError
  /** Whether the agent completes the job by itself when transferred (`canopy get` does). */
  autoComplete: boolean
  /** ISO time of the next retry, in transient_error. */
  retryAt?: string
  createdAt: string
  modifiedAt: string
  transferredAt?: string
  completedAt?: string
}

export interface CreateJobFile {
  url: string
  /** Absolute destination path. */
  path: string
  /** Expected whole-file SHA-256 (hex), checked before the file is made visible. */
  sha256?: string
}

export interface CreateJobRequest {
  name?: string
  type?: JobType
  priority?: JobPriority
  files: CreateJobFile[]
  /** Complete automatically once transferred (default false, as in BITS; `canopy get` sets it). */
  autoComplete?: boolean
  /** Start at once (default true); false creates the job suspended. */
  start?: boolean
}

export interface AgentStatus {
  version: string
  pid: number
  stateDir: string
  startedAt: string
  jobs: Record<JobState, number>
  /** The agent's peer node, when it runs one. */
  peer?: PeerStatus
}

export interface PeerStatus {
  /** libp2p peer id (derived from the agent's persistent Ed25519 key). */
  peerId: string
  /** Addresses the node listens on, with /p2p/<peer id>. */
  addresses: string[]
  /** Peers with an open connection. */
  connected: number
  /** Whether peers must hold the same swarm key (false: keyless, open to any keyless agent). */
  swarmKey: boolean
  mdns: boolean
}

/** GET /v1/peers */
export interface PeersView {
  peers: Array<{ peerId: string, addresses: string[], bytesFromPeer: number, bytesToPeer: number }>
  bans: Array<{ peerId: string, until: string }>
}

/** GET /v1/cache */
export interface CacheView {
  /** Bytes of the files kept for peers. */
  usedBytes: number
  /** The quota; least recently used files go first when a new one does not fit. */
  quotaBytes: number
  entries: Array<{ manifestId: string, size: number, addedAt: string, usedAt: string }>
}

export interface ApiErrorBody {
  error: { code: string, message: string }
}
