import { homedir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Client } from 'undici'
import type { Dispatcher } from 'undici'
import { API_SOCKET_NAME, API_VERSION, CanopyError, codeInCauses, ErrorCode } from '@canopy/core'
import type { AbortOptions, AgentEvent, AgentStatus, ApiErrorBody, CanopyControl, CacheView, PolicyView, CreateJobFile, CreateJobRequest, JobPriority, JobState, JobView, PeersView } from '@canopy/core'
import { readEvents, toAgentEvent } from './events.ts'

/** Largest response body the client reads from the agent (16 MiB); a larger one is an error. */
export const MAX_RESPONSE_BYTES = 16 * 1024 * 1024
/** Jobs asked for per page of GET /v1/jobs (the agent also cuts a page at about 4 MiB). */
const JOB_PAGE_SIZE = 500
/** States `waitForJob` stops at by default. */
export const DEFAULT_WAIT_UNTIL: readonly JobState[] = ['transferred', 'acknowledged', 'cancelled', 'error']
/** How long the client waits for the agent to answer (headers, then between body chunks). */
const ANSWER_TIMEOUT_MS = 30_000

export interface ClientOptions {
  /** The agent's state directory. Default: `defaultStateDir()`. */
  stateDir?: string
  /** The control socket. Default: `join(stateDir, API_SOCKET_NAME)` (`agent.sock`). */
  socketPath?: string
  /**
   * An agent's TCP listener instead of its socket (remote administration), e.g.
   * http://10.0.0.5:7380; requests then carry `token`.
   */
  url?: string
  /** Bearer token of the TCP listener (the agent's --api-token-file). */
  token?: string
  /** Aborts every call of this client (combined with each call's own signal). */
  signal?: AbortSignal
}

/** Options of every call: the control contract's (CanopyControl). */
export type CallOptions = AbortOptions

export interface WaitForJobOptions extends CallOptions {
  /** Poll interval in milliseconds. Default 250. */
  intervalMs?: number
  /** States to stop at. Default `DEFAULT_WAIT_UNTIL`: transferred, acknowledged, cancelled, error. */
  until?: readonly JobState[]
  /** Called with every polled view of the job, the last one included. */
  onProgress?: (job: JobView) => void
}

export interface WatchOptions extends CallOptions {
  /** Only this job's events. Default: every job's. An unknown id fails with ERR_JOB_NOT_FOUND. */
  jobId?: string
}

/**
 * The agent's live events (`GET /v1/events`), as an async iterable. It ends only
 * by `close()`, a `break` out of `for await`, or an error: ERR_ABORTED when the
 * signal aborts, ERR_EVENTS_ENDED when the agent closes the stream (it stopped, or
 * this reader fell more than 8 MiB behind), ERR_AGENT_TIMEOUT when the agent sends
 * nothing, not even its heartbeat (every 15 s), for 30 s.
 */
export class EventStream implements AsyncIterable<AgentEvent> {
  readonly #events: AsyncGenerator<AgentEvent, void, undefined>
  readonly #release: () => Promise<void>

  constructor (events: AsyncGenerator<AgentEvent, void, undefined>, release: () => Promise<void>) {
    this.#events = events
    this.#release = release
  }

  [Symbol.asyncIterator] (): AsyncGenerator<AgentEvent, void, undefined> {
    return this.#events
  }

  /** Closes the connection; a loop waiting for the next event ends. */
  async close (): Promise<void> {
    await this.#release()
    await this.#events.return(undefined)
  }
}

/** The agent answered with an HTTP error; `code` and `message` come from its `ApiErrorBody`. */
export class AgentApiError extends CanopyError {
  readonly status: number

  constructor (status: number, code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options)
    this.name = 'AgentApiError'
    this.status = status
  }
}

/**
 * Where the agent keeps its state (and its control socket), by precedence:
 * `CANOPY_STATE_DIR`; `$XDG_STATE_HOME/canopy`; then the platform's default:
 * `~/.local/state/canopy` (Linux and others), `~/Library/Application Support/Canopy`
 * (macOS), `%LOCALAPPDATA%\Canopy` (Windows).
 */
export function defaultStateDir (env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): string {
  const explicit = env.CANOPY_STATE_DIR
  if (explicit !== undefined && explicit !== '') return explicit
  const xdg = env.XDG_STATE_HOME
  // The XDG spec says relative values are invalid and must be ignored.
  if (xdg !== undefined && xdg.startsWith('/')) return join(xdg, 'canopy')
  if (platform === 'darwin') return join(homedir(), 'Library', 'Application Support', 'Canopy')
  if (platform === 'win32') {
    const local = env.LOCALAPPDATA
    return join(local !== undefined && local !== '' ? local : join(homedir(), 'AppData', 'Local'), 'Canopy')
  }
  return join(homedir(), '.local', 'state', 'canopy')
}

/** The first errno-like code on the error or its causes. */
function errnoCode (err: unknown): string | undefined {
  return codeInCauses(err, () => true)
}

/**
 * Typed client of the agent's control API. One connection, kept alive; call
 * `close()` when done. It implements the same control contract as the agent
 * (CanopyControl in core), so the two cannot drift apart.
 */
export class CanopyClient implements CanopyControl {
  readonly stateDir: string
  readonly socketPath: string
  /** Where the agent is reached: its socket, or its TCP listener's URL (for messages). */
  readonly endpoint: string
  readonly #signal: AbortSignal | undefined
  readonly #http: Client
  readonly #url: string | undefined
  readonly #token: string | undefined

  constructor (options: ClientOptions = {}) {
    this.stateDir = options.stateDir ?? defaultStateDir()
    this.socketPath = options.socketPath ?? join(this.stateDir, API_SOCKET_NAME)
    this.#url = options.url
    this.#token = options.token
    this.endpoint = options.url ?? this.socketPath
    this.#signal = options.signal
    this.#http = this.#connection()
  }

  /** A keep-alive connection to the agent: its socket, or its TCP listener. */
  #connection (): Client {
    const timeouts = { headersTimeout: ANSWER_TIMEOUT_MS, bodyTimeout: ANSWER_TIMEOUT_MS }
    return this.#url !== undefined ? new Client(new URL(this.#url).origin, timeouts) : new Client('http://localhost', { socketPath: this.socketPath, ...timeouts })
  }

  status (opts?: CallOptions): Promise<AgentStatus> {
    return this.#call<AgentStatus>('GET', '/status', undefined, opts)
  }

  createJob (req: CreateJobRequest, opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('POST', '/jobs', req, opts)
  }

  /**
   * Creates an upload job: the local file `path` (absolute) sent to the tus creation
   * endpoint `url`, stored there under `options.name` (default: the file's name). With
   * `options.replyPath` it is an upload-reply job: the server's reply is written there.
   */
  createUpload (path: string, url: string, options: Omit<CreateJobRequest, 'files' | 'type' | 'ifNewer'> = {}, opts?: CallOptions): Promise<JobView> {
    return this.createJob({ ...options, type: options.replyPath === undefined ? 'upload' : 'upload-reply', files: [{ url, path }] }, opts)
  }

  /** The bandwidth policy in force (`GET /v1/policy`). */
  policy (opts?: CallOptions): Promise<PolicyView> {
    return this.#call<PolicyView>('GET', '/policy', undefined, opts)
  }

  /** Replaces the bandwidth policy (`POST /v1/policy`); ERR_INVALID_POLICY (naming the key) leaves the old one. */
  setPolicy (policy: unknown, opts?: CallOptions): Promise<PolicyView> {
    return this.#call<PolicyView>('POST', '/policy', policy, opts)
  }

  peers (opts?: CallOptions): Promise<PeersView> {
    return this.#call<PeersView>('GET', '/peers', undefined, opts)
  }

  cache (opts?: CallOptions): Promise<CacheView> {
    return this.#call<CacheView>('GET', '/cache', undefined, opts)
  }

  clearCache (opts?: CallOptions): Promise<CacheView> {
    return this.#call<CacheView>('POST', '/cache/clear', undefined, opts)
  }

  /**
   * Every job, read in pages (each answer stays under MAX_RESPONSE_BYTES however many
   * jobs the agent holds); an agent without pages answers the whole list at once.
   */
  async listJobs (opts?: CallOptions): Promise<JobView[]> {
    const jobs: JobView[] = []
    let after: string | undefined
    for (;;) {
      const query = `?limit=${JOB_PAGE_SIZE}${after !== undefined ? `&after=${encodeURIComponent(after)}` : ''}`
      const body = await this.#call<{ jobs?: unknown, next?: unknown }>('GET', `/jobs${query}`, undefined, opts)
      if (!Array.isArray(body.jobs)) throw this.#badResponse('GET /jobs did not return { jobs: [...] }')
      jobs.push(...body.jobs as JobView[])
      if (typeof body.next !== 'string' || body.next === after) return jobs
      after = body.next
    }
  }

  getJob (id: string, opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('GET', `/jobs/${encodeURIComponent(id)}`, undefined, opts)
  }

  suspend (id: string, opts?: CallOptions): Promise<JobView> {
    return this.#jobAction(id, 'suspend', opts)
  }

  resume (id: string, opts?: CallOptions): Promise<JobView> {
    return this.#jobAction(id, 'resume', opts)
  }

  cancel (id: string, opts?: CallOptions): Promise<JobView> {
    return this.#jobAction(id, 'cancel', opts)
  }

  complete (id: string, opts?: CallOptions): Promise<JobView> {
    return this.#jobAction(id, 'complete', opts)
  }

  /**
   * Appends files to a suspended job (`POST /v1/jobs/:id/files`); they are fetched
   * after its other files and appear with them when the job completes.
   */
  addFiles (id: string, files: CreateJobFile[], opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('POST', `/jobs/${encodeURIComponent(id)}/files`, { files }, opts)
  }

  /** Changes a job's priority at once (`POST /v1/jobs/:id/priority`); the agent's scheduler runs again. */
  setPriority (id: string, priority: JobPriority, opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('POST', `/jobs/${encodeURIComponent(id)}/priority`, { priority }, opts)
  }

  /** Sets a job's own cap in bytes/s (0 blocks), or removes it with null (`POST /v1/jobs/:id/rate-limit`). */
  setRateLimit (id: string, rateLimit: number | null, opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('POST', `/jobs/${encodeURIComponent(id)}/rate-limit`, { rateLimit }, opts)
  }

  /**
   * Opens the agent's event stream, on a connection of its own (so that the
   * client's other calls go on meanwhile). Resolves once the agent has accepted it:
   * from then on no event is missed. The first events are `snapshot`s of the job
   * (`jobId`), or of every job not in a final state. Close it with `close()`,
   * `break`, or the signal.
   */
  async watch (opts: WatchOptions = {}): Promise<EventStream> {
    const signal = this.#combine(opts.signal)
    const path = `/${API_VERSION}/events${opts.jobId === undefined ? '' : `?job=${encodeURIComponent(opts.jobId)}`}`
    // The heartbeat comes every 15 s: 30 s of silence means the agent is stuck.
    const http = this.#connection()
    const release = async (): Promise<void> => { await http.destroy().catch(() => {}) }
    try {
      const res = await this.#send(http, 'GET', path, undefined, signal, 'text/event-stream')
      if (res.statusCode !== 200) await this.#parse(res.statusCode, await this.#readText(res, 'GET', path), 'GET', path)
      if (!(res.headers['content-type'] ?? '').toString().startsWith('text/event-stream')) {
        throw this.#badResponse(`GET ${path}: not an event stream`)
      }
      return new EventStream(this.#events(res.body, signal, release), release)
    } catch (err) {
      await release()
      throw err
    }
  }

  async * #events (body: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined, release: () => Promise<void>): AsyncGenerator<AgentEvent, void, undefined> {
    try {
      const tooLarge = (): Error => new CanopyError('ERR_AGENT_RESPONSE_TOO_LARGE', `An event from the agent is larger than ${MAX_RESPONSE_BYTES} bytes; the client refuses it`)
      for await (const raw of readEvents(body, MAX_RESPONSE_BYTES, tooLarge)) {
        const event = toAgentEvent(raw, (why, cause) => this.#badResponse(why, cause))
        if (event !== undefined) yield event
      }
    } catch (err) {
      if (err instanceof CanopyError) throw err
      if (signal?.aborted === true) throw this.#aborted(signal, err)
      throw this.#connectionError(err)
    } finally {
      await release()
    }
    if (signal?.aborted === true) throw this.#aborted(signal, undefined)
    throw new CanopyError('ERR_EVENTS_ENDED', `The agent at ${this.endpoint} closed the event stream (it stopped, or this reader fell behind); watch again`)
  }

  /**
   * Polls `getJob` every `intervalMs` (default 250), calling `onProgress(job)` each
   * time, until the job is in one of the `until` states; resolves with that view.
   */
  async waitForJob (id: string, opts: WaitForJobOptions = {}): Promise<JobView> {
    const until = opts.until ?? DEFAULT_WAIT_UNTIL
    const interval = opts.intervalMs ?? 250
    const signal = this.#combine(opts.signal)
    for (;;) {
      const job = await this.getJob(id, { signal })
      opts.onProgress?.(job)
      if (until.includes(job.state)) return job
      try {
        await sleep(interval, undefined, { signal })
      } catch (err) {
        throw this.#aborted(signal, err)
      }
    }
  }

  async close (): Promise<void> {
    await this.#http.close()
  }

  #jobAction (id: string, action: string, opts?: CallOptions): Promise<JobView> {
    return this.#call<JobView>('POST', `/jobs/${encodeURIComponent(id)}/${action}`, undefined, opts)
  }

  #combine (signal: AbortSignal | undefined): AbortSignal | undefined {
    if (signal === undefined) return this.#signal
    if (this.#signal === undefined) return signal
    return AbortSignal.any([signal, this.#signal])
  }

  #aborted (signal: AbortSignal | undefined, cause: unknown): CanopyError {
    return new CanopyError(ErrorCode.Aborted, 'The operation was aborted', { cause: signal?.reason ?? cause })
  }

  #badResponse (why: string, cause?: unknown): CanopyError {
    return new CanopyError('ERR_AGENT_BAD_RESPONSE', `The agent at ${this.endpoint} sent an answer the client cannot read (${why}); are the agent and the client the same version?`, { cause })
  }

  #connectionError (err: unknown): CanopyError {
    const code = errnoCode(err)
    const dir = this.stateDir
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENOTSOCK') {
      return new CanopyError('ERR_AGENT_NOT_RUNNING',
        `No Canopy agent is running with state directory ${dir}: start one with \`canopy agent --state-dir ${dir}\` (or set CANOPY_STATE_DIR)`,
        { cause: err })
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new CanopyError('ERR_AGENT_ACCESS_DENIED',
        `Permission denied on the agent's socket ${this.socketPath}: it is owner-only; run as the user that runs the agent`,
        { cause: err })
    }
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new CanopyError('ERR_AGENT_TIMEOUT',
        `The agent at ${this.endpoint} did not answer within ${ANSWER_TIMEOUT_MS / 1000} s: it may be overloaded or stuck; check its log`,
        { cause: err })
    }
    const detail = err instanceof Error ? err.message : String(err)
    return new CanopyError('ERR_AGENT_CONNECTION',
      `Lost the connection to the agent at ${this.endpoint} (${code ?? 'error'}: ${detail}); check that it is still running`,
      { cause: err })
  }

  /** Sends a request on `http`; connection failures become the client's errors. */
  async #send (http: Client, method: 'GET' | 'POST', path: string, body: unknown, signal: AbortSignal | undefined, accept = 'application/json'): Promise<Dispatcher.ResponseData> {
    const aborted = (): boolean => signal?.aborted === true
    if (aborted()) throw this.#aborted(signal, undefined)
    try {
      return await http.request({
        method,
        path,
        headers: {
          accept,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(this.#token !== undefined ? { authorization: `Bearer ${this.#token}` } : {})
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal
      })
    } catch (err) {
      if (aborted()) throw this.#aborted(signal, err)
      throw this.#connectionError(err)
    }
  }

  /** Reads a whole answer, at most MAX_RESPONSE_BYTES. */
  async #readText (res: Dispatcher.ResponseData, method: string, path: string, signal?: AbortSignal): Promise<string> {
    const chunks: Buffer[] = []
    let size = 0
    try {
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length
        if (size > MAX_RESPONSE_BYTES) {
          res.body.destroy()
          throw new CanopyError('ERR_AGENT_RESPONSE_TOO_LARGE',
            `The agent's answer to ${method} ${path} is larger than ${MAX_RESPONSE_BYTES} bytes; the client refuses it`)
        }
        chunks.push(chunk as Buffer)
      }
    } catch (err) {
      if (err instanceof CanopyError) throw err
      if (signal?.aborted === true) throw this.#aborted(signal, err)
      throw this.#connectionError(err)
    }
    return Buffer.concat(chunks).toString('utf8')
  }

  async #call<T> (method: 'GET' | 'POST', route: string, body: unknown, opts?: CallOptions): Promise<T> {
    const signal = this.#combine(opts?.signal)
    const path = `/${API_VERSION}${route}`
    const res = await this.#send(this.#http, method, path, body, signal)
    return this.#parse<T>(res.statusCode, await this.#readText(res, method, path, signal), method, path)
  }

  /** The JSON object of a 2xx answer; an AgentApiError for any other. */
  #parse<T> (status: number, text: string, method: string, path: string): T {
    let value: unknown
    let parsed = false
    try {
      value = text === '' ? undefined : JSON.parse(text)
      parsed = text !== ''
    } catch (err) {
      if (status >= 200 && status < 300) throw this.#badResponse(`${method} ${path}: not JSON`, err)
    }

    if (status < 200 || status >= 300) {
      const e = parsed ? (value as Partial<ApiErrorBody> | null)?.error : undefined
      if (e !== null && typeof e === 'object' && typeof e.code === 'string' && typeof e.message === 'string') {
        throw new AgentApiError(status, e.code, e.message)
      }
      const snippet = text.length > 200 ? `${text.slice(0, 200)}…` : text
      throw new AgentApiError(status, `ERR_AGENT_HTTP_${status}`,
        `The agent answered ${method} ${path} with HTTP ${status}${snippet === '' ? '' : `: ${snippet}`}`)
    }
    if (!parsed || typeof value !== 'object' || value === null) {
      throw this.#badResponse(`${method} ${path}: not a JSON object`)
    }
    return value as T
  }
}
