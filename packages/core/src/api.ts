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
 *   POST /v1/jobs/:id/priority  SetPriorityRequest -> JobView
 *   POST /v1/jobs/:id/files     AddFilesRequest -> JobView (a suspended job)
 *   GET  /v1/events[?job=<id>]      -> text/event-stream of AgentEvent
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

/**
 * download: files from origins to local paths. upload: one local file (`files[0].path`)
 * to a tus 1.0 creation endpoint (`files[0].url`), stored there under the job's name.
 * upload-reply: an upload whose server reply (the origin's `--on-upload` handler's
 * output) is downloaded to `replyPath` before the job is transferred.
 * preload: files from origins into the agent's peer cache, with no destination file
 * (an overnight warm-up of a branch); its files have no `path` in the request.
 */
export type JobType = 'download' | 'upload' | 'upload-reply' | 'preload'
export const JOB_TYPES: readonly JobType[] = ['download', 'upload', 'upload-reply', 'preload']

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
  /** Verified bytes from each peer (peer id -> bytes), when some came from peers. */
  bytesByPeer?: Record<string, number>
  /** True when the destination was already current and the file was not transferred (ifNewer); preload: the cache already held it. */
  skipped?: boolean
  /**
   * Preload jobs, once the file is finished: whether it is in the peer cache. False
   * when it could not be kept for peers (`notCachedReason` says why, e.g. the origin
   * published no manifest for it): it was downloaded, verified as far as it could be,
   * and removed.
   */
  cached?: boolean
  notCachedReason?: string
  /** How the branch's hosted cache took part, when the agent knows one (configured or announced); its bytes are the job's fromCache. */
  hostedCache?: HostedCacheUse
}

/**
 * A file's use of the branch's hosted caches (`--hosted-cache-addr`, or one that
 * announced itself on the LAN). `served`: blocks came from one; `not-held`: one was
 * connected and asked first, but it did not hold the content (not offered yet,
 * evicted, larger than its quota): the file came from peers and the origin;
 * `unreachable`: a configured hosted cache was not connected when the transfer
 * began (it is down, or not reachable): the file fell back to peers and the origin.
 */
export interface HostedCacheUse {
  state: 'served' | 'not-held' | 'unreachable'
  /** With `unreachable`: the configured addresses that were not connected. */
  unreachable?: string[]
}

export interface JobBytes {
  /** Sum of the files' sizes, or -1 while a size is unknown. */
  total: number
  transferred: number
  fromOrigin: number
  fromPeers: number
  /** Verified bytes from the branch's hosted caches (not counted in fromPeers). */
  fromCache: number
  /**
   * fromPeers and fromCache in detail: verified bytes from each peer, hosted caches
   * included (peer id -> bytes), when some came from peers. Saved about once a second: after an agent crash the detail may
   * be short of fromPeers by the last second's blocks.
   */
  byPeer?: Record<string, number>
}

export interface JobView {
  id: string
  name: string
  type: JobType
  priority: JobPriority
  state: JobState
  /** Plain-language reason for the current state ("waiting: 2 higher-priority jobs", "origin unreachable (ECONNREFUSED), next retry in 8 s"). */
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
  /** The job's notifications, when it has any. */
  notify?: JobNotify
  /** The retry and time limits in force for this job: its own, else the agent's defaults. */
  limits: JobLimits
  /** Its HTTP options, when it has any (names and scheme only). */
  http?: JobHttpView
  /** Recent transfer rate in bytes per second, while the job transfers (smoothed over about a second). */
  rate?: number
  /** Whether files already current at their destinations are skipped (CreateJobRequest.ifNewer). */
  ifNewer?: boolean
  /** The job's own cap, bytes/s (0: blocked), when it has one. */
  rateLimit?: number
  /** Upload and upload-reply jobs: where the upload stands on the server. */
  upload?: JobUploadView
}

/** What a view shows of an upload: `bytes.transferred` counts the bytes the server holds. */
export interface JobUploadView {
  /** The upload's URL on the server, once created (a resumed upload continues there). */
  uploadUrl?: string
  /** The server's SHA-256 of the completed upload (checked against the local file's), when the server reports one (canopy origin does; `files[0].sha256` is the file's). */
  serverSha256?: string
  /** upload-reply: where the reply is written, and its size once downloaded. */
  replyPath?: string
  replyBytes?: number
}

/** POST /v1/jobs/:id/rate-limit: a cap in bytes/s (0 blocks), or null to remove it. */
export interface SetRateLimitRequest {
  rateLimit: number | null
}

/**
 * Retry and time limits of a job. In a request each is optional (the agent's
 * default applies); in a view each is the value in force.
 */
export interface JobLimits {
  /** First retry delay after a transient error, ms; doubles with each consecutive failure (±20% jitter). */
  retryMinMs: number
  /** Cap of that doubling, ms. */
  retryMaxMs: number
  /**
   * Longest time, ms, a job may spend in connecting, transferring or transient_error
   * without a byte of progress before it stops in `error` with ERR_NO_PROGRESS.
   */
  noProgressTimeoutMs: number
  /**
   * Longest total time, ms, the job may spend in connecting, transferring and
   * transient_error before it stops in `error` with ERR_MAX_TIME; 0: no limit.
   */
  maxDownloadTimeMs: number
}

/**
 * Notifications of a job, set when it is created. Commands are argument vectors
 * (program, then arguments) run without a shell: job data reaches them only
 * through environment variables (CANOPY_JOB_ID, CANOPY_JOB_STATE, ...).
 */
export interface JobNotify {
  /** Run when the job reaches `acknowledged` (its files are in place). */
  onComplete?: string[]
  /** Run when the job reaches `error`. */
  onError?: string[]
  /** http(s) URL that receives a POST of the JobView on every state change. */
  url?: string
}

export interface CreateJobFile {
  /** download: the file's URL; upload: the tus creation endpoint (e.g. http://origin:8080/uploads/). */
  url: string
  /**
   * download: absolute destination path; upload: absolute path of the local file to
   * send; preload: none (the agent stages the file in its state directory and keeps
   * it in its peer cache). Required except for preload jobs.
   */
  path?: string
  /** Expected whole-file SHA-256 (hex), checked before the file is made visible. */
  sha256?: string
}

export interface CreateJobRequest {
  name?: string
  type?: JobType
  priority?: JobPriority
  files: CreateJobFile[]
  /** The job's own cap, bytes/s (0: blocked); also for foreground jobs. Default: none. */
  rateLimit?: number
  /** Complete automatically once transferred (default false, as in BITS; `canopy get` sets it). */
  autoComplete?: boolean
  /** Start at once (default true); false creates the job suspended. */
  start?: boolean
  /** Commands to run and a URL to call when the job changes state. */
  notify?: JobNotify
  /** This job's retry and time limits; each one left out takes the agent's default. */
  limits?: Partial<JobLimits>
  /** Request headers and credentials sent to the origin (never to peers). */
  http?: JobHttpOptions
  /**
   * Skip a file whose destination is already current: with a manifest, when the
   * local file has the published SHA-256; without, when the server says it has not
   * changed since the local file's modification time (If-Modified-Since). A skipped
   * file is left as it is and reported with `skipped: true`.
   */
  ifNewer?: boolean
  /**
   * upload-reply jobs: the absolute path the server's reply is written to (atomically,
   * at most 16 MiB) when the upload completes; required for them, refused otherwise.
   */
  replyPath?: string
}

/**
 * HTTP options of a job. Header values and credentials are write-only: the agent
 * stores them owner-only in its state directory, sends them to the origin (and the
 * custom headers, not the credentials, across redirects to other hosts), and never
 * shows or logs them; views list the header names and the credential scheme only.
 */
export interface JobHttpOptions {
  /** Extra request headers, e.g. { "X-Api-Key": "..." }. Host, Range, Authorization and hop-by-hop headers are refused. */
  headers?: Record<string, string>
  credentials?: { scheme: 'basic', username: string, password: string } | { scheme: 'bearer', token: string }
  /** 'direct', or a proxy URL (http://host:port); default: the agent's environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY). */
  proxy?: string
  /** Absolute paths of PEM files, read when the job transfers: extra CAs to trust, a client certificate and its key. */
  tls?: { caFile?: string, certFile?: string, keyFile?: string }
}

/** What a view shows of a job's HTTP options. */
export interface JobHttpView {
  /** Names of the custom headers (their values are write-only). */
  headers: string[]
  credentials?: 'basic' | 'bearer'
  /** The job's proxy setting, without any user:password it holds. */
  proxy?: string
  tls?: { caFile?: string, certFile?: string, keyFile?: string }
}

/** POST /v1/jobs/:id/files: files to append to a suspended job. */
export interface AddFilesRequest {
  files: CreateJobFile[]
}

/** POST /v1/jobs/:id/priority */
export interface SetPriorityRequest {
  priority: JobPriority
}

/**
 * One event of `GET /v1/events` (server-sent events: the SSE `event` field is the
 * `type`, the `data` field this object as JSON).
 * - `snapshot`: the job as it is when the stream opens (the watched job, or every
 *   job not in a final state), so that nothing is missed between a look and a watch;
 * - `state`: the job entered a state (creation included);
 * - `progress`: bytes moved, at most 2 per second per job; dropped for a client
 *   that does not keep up;
 * - `updated`: a setting of the job changed (its priority);
 * - `removed`: the job left the agent's list.
 */
export type AgentEvent =
  | { type: 'snapshot', job: JobView }
  | { type: 'state', job: JobView }
  | { type: 'progress', job: JobView }
  | { type: 'updated', job: JobView }
  | { type: 'removed', jobId: string }

export type AgentEventType = AgentEvent['type']
export const AGENT_EVENT_TYPES: readonly AgentEventType[] = ['snapshot', 'state', 'progress', 'updated', 'removed']

export interface AgentStatus {
  version: string
  pid: number
  stateDir: string
  startedAt: string
  jobs: Record<JobState, number>
  /** Notifications recorded and not yet delivered (or given up on). */
  notifications: { pending: number }
  /** host:port of the control API's TCP listener (token required), when it has one. */
  apiTcp?: string
  /** host:port of the metrics listener (--metrics-listen), when it has one. */
  metricsListen?: string
  /** Verified bytes the agent's jobs received since it started, by source, and bytes served to peers. */
  bytes: AgentByteTotals
  /** The agent's peer node, when it runs one. */
  peer?: PeerStatus
  /** Bandwidth control in force: how background jobs yield (see BandwidthStatus). */
  bandwidth?: BandwidthStatus
  /** What the agent recovered at start from a damaged state store, when it was damaged. */
  storeRecovery?: StoreRecovery
}

/** A damaged state store, repaired at start: what was kept aside and what was lost. */
export interface StoreRecovery {
  /** Where the damaged database was copied before LevelDB's repair, when it had to be repaired. */
  damagedCopy?: string
  /** Jobs whose records were unreadable (their block marks were left): dropped, with their partial files. */
  droppedJobs: string[]
  /** Partial files of dropped jobs that were removed. */
  removedPartials: string[]
}

export interface BandwidthStatus {
  /** Queueing delay background jobs keep their traffic under, ms; 0: they do not yield. */
  targetDelayMs: number
  /** The bandwidth policy in force (as GET /v1/policy gives it). */
  policy: PolicyView
  /** The WAN paths (origin hosts) background jobs use now, each with its controller. */
  paths: WanPathStatus[]
}

/** GET /v1/policy: the policy in its written form, and whether its work hours apply now. */
export interface PolicyView {
  /** Caps (bytes/s; 0 blocks), workHours, peerServing, lanPeersExempt: see docs/CONFIGURATION.md. */
  policy: Record<string, unknown>
  /** Whether the work-hours window (and its caps) applies now. */
  workHoursNow: boolean
}

export interface WanPathStatus {
  /** The origin's host:port. */
  host: string
  /** Background transfers on this path now. */
  transfers: number
  /** Bytes/s they may read together now. */
  rate: number
  /** starting, growing, yielding, slowdown (re-measuring the idle delay), blind (no delay samples). */
  state: 'starting' | 'growing' | 'yielding' | 'slowdown' | 'blind'
  /** Round trip now minus the idle round trip, ms. */
  queueDelayMs?: number
  /** The idle round trip (minimum over the last 10 minutes), ms. */
  baseDelayMs?: number
}

export interface AgentByteTotals {
  fromOrigin: number
  fromPeers: number
  /** From the branch's hosted caches. */
  fromCache: number
  servedToPeers: number
  /** ISO 8601 time the counting began (the agent's start). */
  since: string
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
  /** True when this agent runs as the branch's hosted cache (--hosted-cache). */
  hostedCache?: true
}

/** GET /v1/peers */
export interface PeersView {
  /** `hostedCache`: the peer is a hosted cache of the branch (configured, or announced by identify). */
  peers: Array<{ peerId: string, addresses: string[], bytesFromPeer: number, bytesToPeer: number, hostedCache?: true }>
  bans: Array<{ peerId: string, until: string }>
}

/** GET /v1/cache */
export interface CacheView {
  /** Bytes of the files kept for peers. */
  usedBytes: number
  /** The quota; least recently used files go first when a new one does not fit. */
  quotaBytes: number
  /** Peers' requests for content this agent held (a cached or partial file) since it started. */
  hits: number
  /** Peers' requests for content it did not hold, since it started. */
  misses: number
  /** Verified block bytes sent to peers since it started (cached and partial files). */
  bytesServed: number
  entries: CacheEntryView[]
}

/** One file kept for peers. */
export interface CacheEntryView {
  manifestId: string
  /** The file's name when it was cached (absent for files cached by older agents). */
  name?: string
  size: number
  /**
   * Where it came from: the URL it was downloaded or preloaded from, or
   * "offered by <peer id>" for content a hosted cache pulled from an agent that offered
   * it (absent for files cached by older agents).
   */
  source?: string
  addedAt: string
  /** When a peer last read it (else when it was added): the least recently used go first. */
  usedAt: string
}

export interface ApiErrorBody {
  error: { code: string, message: string }
}
