import type { EventEmitter } from 'node:events'
import type { AgentStatus, CacheView, CreateJobFile, CreateJobRequest, JobPriority, JobView, PeersView, PolicyView } from './api.ts'

/** The per-call options every command and query takes (as js-libp2p's `AbortOptions`). */
export interface AbortOptions {
  signal?: AbortSignal
}

/**
 * A value now, or later. The agent answers queries synchronously (in process, a
 * caller may read a view without a turn of the event loop); the client over the
 * socket answers with promises. Callers that serve both `await` the result.
 */
export type Awaitable<T> = T | Promise<T>

/**
 * The control contract of an agent: every command and query. `CanopyAgent`
 * implements it in process, `CanopyClient` over the control API (HTTP+JSON), and
 * the API server serves it: neither side depends on the other's class.
 *
 * Arguments are typed and already checked: the API server validates request bodies
 * before calling (see `jobs/validate.ts` in the agent); in-process callers are
 * trusted code. Jobs are addressed by their full id (the server resolves prefixes).
 */
export interface CanopyControl {
  status: (options?: AbortOptions) => Awaitable<AgentStatus>
  listJobs: (options?: AbortOptions) => Awaitable<JobView[]>
  getJob: (id: string, options?: AbortOptions) => Awaitable<JobView>
  peers: (options?: AbortOptions) => Awaitable<PeersView>
  cache: (options?: AbortOptions) => Awaitable<CacheView>
  clearCache: (options?: AbortOptions) => Promise<CacheView>
  createJob: (request: CreateJobRequest, options?: AbortOptions) => Promise<JobView>
  suspend: (id: string, options?: AbortOptions) => Promise<JobView>
  resume: (id: string, options?: AbortOptions) => Promise<JobView>
  cancel: (id: string, options?: AbortOptions) => Promise<JobView>
  complete: (id: string, options?: AbortOptions) => Promise<JobView>
  addFiles: (id: string, files: CreateJobFile[], options?: AbortOptions) => Promise<JobView>
  setPriority: (id: string, priority: JobPriority, options?: AbortOptions) => Promise<JobView>
  /** A job's own cap in bytes/s (0 blocks it; null removes it). */
  setRateLimit: (id: string, rateLimit: number | null, options?: AbortOptions) => Promise<JobView>
  /** The bandwidth policy in force. */
  policy: (options?: AbortOptions) => Awaitable<PolicyView>
  /** Replaces the bandwidth policy with `policy`, in its written form (ERR_INVALID_POLICY naming the key; the old one stays). */
  setPolicy: (policy: unknown, options?: AbortOptions) => Awaitable<PolicyView>
}

/**
 * Events of an agent: a job changed state (creation included), made progress (at
 * most every 500 ms per job), had a setting changed (priority), or left the list.
 * The control API streams them (`GET /v1/events`, as `AgentEvent`s).
 */
export interface ControlEvents {
  'job:state': [JobView]
  'job:progress': [JobView]
  'job:updated': [JobView]
  'job:removed': [string]
}

/** Typed listeners of `ControlEvents` (those of an EventEmitter<ControlEvents>). */
export type ControlEventSource = Pick<EventEmitter<ControlEvents>, 'on' | 'off'>

/**
 * The contract as an agent serves it in process, to its own API server: commands
 * and queries, live events, and job ids from the short prefixes people type.
 */
export interface AgentControl extends CanopyControl, ControlEventSource {
  /** A job's full id from its id or a unique prefix of it (ERR_JOB_NOT_FOUND, ERR_AMBIGUOUS_JOB_ID). */
  resolveJobId: (idOrPrefix: string) => string
}
