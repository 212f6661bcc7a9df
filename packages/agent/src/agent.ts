import { EventEmitter } from 'node:events'
import { chmod, mkdir, open, rename, rm, stat, statfs } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { request } from 'undici'
import type { Dispatcher } from 'undici'
import { API_SOCKET_NAME, CanopyError, DEFAULT_BLOCK_SIZE, FINAL_STATES, formatBytes, formatDuration, silentLogger } from '@canopy/core'
import type { AgentStatus, CacheView, CreateJobFile, CreateJobRequest, PeersView, JobLimits, JobPriority, JobState, JobView, Logger, PublishedManifest } from '@canopy/core'
import { JobErrorCode, REMOTE_CHANGED, TransferError, classifyError } from './errors.ts'
import { ACTIVE_STATES, FileProgress, toView } from './jobs/job.ts'
import type { FileRecord, JobRecord } from './jobs/job.ts'
import { LimitCode, validateAddFiles, validateCreateJob, validatePriority } from './jobs/validate.ts'
import { readTls, requestHeaders } from './jobs/http-options.ts'
import { backoff } from './backoff.ts'
import { Notifier } from './notify/notifier.ts'
import type { NotificationRecord } from './store/job-store.ts'
import { AGENT_DEFAULTS, blocksBuffered } from './options.ts'
import type { AgentOptions, ResolvedAgentOptions } from './options.ts'
import { JobStore } from './store/job-store.ts'
import { transferBlocks } from './transfer/block-transfer.ts'
import { createDispatcher, discard, discoverManifest, usesProxy } from './transfer/http.ts'
import { BlockHasher } from './transfer/block-hasher.ts'
import { BufferPool } from './transfer/buffer-pool.ts'
import { RangeClient } from './transfer/range-client.ts'
import { transferPlain } from './transfer/plain-transfer.ts'
import type { PlainProgress } from './transfer/plain-transfer.ts'
import { startApiServer } from './api/server.ts'
import type { PeerNode } from './peers/node.ts'
import type { PeerSharing } from './peers/sharing.ts'
import type { PeerSessions } from './transfer/peer-fetch.ts'
import type { ApiServer } from './api/server.ts'
import { createAgentMetrics, startMetricsServer } from './metrics/index.ts'
import type { AgentMetrics, MetricsServer } from './metrics/index.ts'

export const AGENT_VERSION = '0.1.0'

const PRIORITY_RANK: Record<JobPriority, number> = { foreground: 0, high: 1, normal: 2, low: 3 }
/** How often progress counters are written while a job transfers (block marks are written per block). */
const PROGRESS_PERSIST_MS = 1000

/** How long `stop` lets notifications under way finish before it cuts them off (they are made again at the next start). */
const NOTIFY_STOP_GRACE_MS = 5_000

/**
 * Longest sleep of the scheduler's timer: deadlines can be days away (beyond what
 * setTimeout holds, 2^31 - 1 ms), and a clock that jumps is noticed within this.
 */
const MAX_TIMER_MS = 3_600_000

/** Wait before acting again on a deadline whose action failed (a store error). */
const EXPIRY_RETRY_MS = 60_000

/**
 * Why the scheduler stopped a running job that did nothing wrong: a higher priority
 * needs its slot, or its time slice ended while an equal waits. The runner puts the
 * job back in the queue (its block marks stay: it resumes from them).
 */
class SchedulerYield extends CanopyError {
  readonly why: 'preempted' | 'slice'

  constructor (why: 'preempted' | 'slice') {
    super('ERR_YIELD', why === 'preempted' ? 'preempted by a higher-priority job' : 'time slice over')
    this.why = why
  }
}

/** What the scheduler does to a job by itself when a deadline passes. */
type Expiry = 'no-progress' | 'max-time' | 'inactive' | 'retention'

interface Run {
  controller: AbortController
  done: Promise<void>
  /** When this run started: its time slice is counted from here. */
  startedAt: number
  /** The scheduler asked it to yield; its slot is about to be free. */
  stopping: boolean
}

/**
 * Events of an agent: a job changed state (creation included), made progress (at
 * most every 500 ms per job), had a setting changed (priority), or left the list.
 * The control API streams them (`GET /v1/events`).
 */
export interface AgentEvents {
  'job:state': [JobView]
  'job:progress': [JobView]
  'job:updated': [JobView]
  'job:removed': [string]
}

type Progress = FileProgress | PlainProgress

/**
 * The agent daemon: a persisted job store, a single scheduling loop that decides
 * which jobs transfer, one runner per transferring job, and the control API.
 *
 * All job state is mutated on this one thread; a job record is written to the store
 * after every state change (writes of one job are chained so they land in order).
 */
export class CanopyAgent extends EventEmitter<AgentEvents> {
  readonly socketPath: string
  readonly options: ResolvedAgentOptions
  private readonly logger: Logger
  private readonly store: JobStore
  private readonly dispatcher: Dispatcher
  private readonly blockHasher: BlockHasher
  private readonly rangeClient: RangeClient
  /** Block buffers, reused across transfers (see BufferPool). */
  private readonly blockBuffers: BufferPool
  private readonly notifier: Notifier
  private readonly jobs = new Map<string, JobRecord>()
  private readonly progress = new Map<string, Array<Progress | undefined>>()
  private readonly running = new Map<string, Run>()
  private readonly writes = new Map<string, Promise<void>>()
  /** Per job: the tail of the chain of user commands (see withJob). */
  private readonly locks = new Map<string, Promise<void>>()
  private readonly completing = new Map<string, Promise<boolean>>()
  private readonly lastProgressEvent = new Map<string, number>()
  private readonly lastPersist = new Map<string, number>()
  /** Per job: the last rate sample (see sampleRate). */
  private readonly rates = new Map<string, { at: number, bytes: number, rate?: number }>()
  /** Jobs whose deadline could not be acted on (the store failed): not tried again before this time, so a broken disk is not a busy loop. */
  private readonly expiryHeld = new Map<string, number>()
  private api?: ApiServer
  /** Prometheus metrics (created once the jobs are loaded: their earlier bytes are not counted). */
  metrics!: AgentMetrics
  private metricsServer?: MetricsServer
  private peer?: PeerNode
  private sharing?: PeerSharing
  private wakeTimer?: NodeJS.Timeout
  /** Creations under way (validated, not yet in `jobs`): counted against maxJobs. */
  private creating = 0
  private tickQueued = false
  private stopped = false
  private readonly startedAt: string
  private readonly now: () => number

  private constructor (options: ResolvedAgentOptions) {
    super()
    this.options = options
    this.now = options.now
    this.startedAt = new Date(this.now()).toISOString()
    this.logger = options.logger
    this.socketPath = join(options.stateDir, API_SOCKET_NAME)
    this.store = new JobStore(join(options.stateDir, 'db'))
    const pool = poolOptions(options)
    this.dispatcher = createDispatcher(pool)
    this.blockHasher = new BlockHasher(options.hashThreads)
    this.rangeClient = new RangeClient({ maxPerOrigin: pool.connections, timeoutMs: pool.timeoutMs })
    // As much as one transfer holds at most with the default block size.
    this.blockBuffers = new BufferPool(blocksBuffered(options, DEFAULT_BLOCK_SIZE) * DEFAULT_BLOCK_SIZE)
    this.notifier = new Notifier({
      store: this.store,
      logger: this.logger,
      stateDir: options.stateDir,
      timeoutMs: options.notifyTimeoutMs,
      commandTimeoutMs: options.notifyCommandTimeoutMs,
      retryMinMs: options.notifyRetryMinMs,
      retryMaxMs: options.notifyRetryMaxMs,
      attempts: options.notifyAttempts,
      version: AGENT_VERSION
    })
  }

  /** Opens the state directory, recovers jobs, and starts the control API and the scheduler. */
  static async start (options: AgentOptions): Promise<CanopyAgent> {
    if (typeof options.stateDir !== 'string' || options.stateDir === '') {
      throw new CanopyError('ERR_INVALID_ARGUMENT', 'The agent needs a state directory (--state-dir or CANOPY_STATE_DIR)')
    }
    const resolved: ResolvedAgentOptions = { ...AGENT_DEFAULTS, logger: silentLogger, ...withoutUndefined(options), stateDir: options.stateDir, p2p: options.p2p }
    for (const key of ['maxBackgroundJobs', 'requestsInFlight', 'requestSize', 'maxBlockAttempts', 'requestTimeoutMs', 'retryMinMs', 'retryMaxMs',
      'notifyTimeoutMs', 'notifyCommandTimeoutMs', 'notifyRetryMinMs', 'notifyRetryMaxMs', 'notifyAttempts', 'timeSliceMs', 'noProgressTimeoutMs',
      'inactiveJobTimeoutMs', 'retentionMs', 'maxJobs', 'maxFilesPerJob', 'maxUrlLength', 'maxNameLength'] as const) {
      if (!Number.isSafeInteger(resolved[key]) || resolved[key] < 1) throw new CanopyError('ERR_INVALID_ARGUMENT', `${key} must be a positive integer, not ${resolved[key]}`)
    }
    for (const key of ['hashThreads', 'maxDownloadTimeMs'] as const) {
      if (!Number.isSafeInteger(resolved[key]) || resolved[key] < 0) throw new CanopyError('ERR_INVALID_ARGUMENT', `${key} must be 0 or more`)
    }
    if (typeof resolved.now !== 'function') throw new CanopyError('ERR_INVALID_ARGUMENT', 'now must be a function returning ms since the epoch')
    await mkdir(resolved.stateDir, { recursive: true, mode: 0o700 })
    // The control socket lives here: keep the directory owner-only even if it existed.
    await chmod(resolved.stateDir, 0o700)
    const agent = new CanopyAgent(resolved)
    await agent.store.open()
    try {
      // The outbox first: recovery may record state changes of its own.
      await agent.notifier.load()
      await agent.recover()
      agent.metrics = createAgentMetrics({ events: agent, jobs: () => agent.listJobs(), peers: () => agent.sharing?.peersView(), cache: () => agent.sharing?.cacheView() }, { version: AGENT_VERSION, startedAt: agent.now() })
      if (resolved.p2p !== undefined) {
        // Loaded only when wanted: libp2p costs ~30 MiB resident.
        const { startPeerNode, loadOrCreatePeerKey, PeerSharing } = await import('./peers/index.ts')
        agent.peer = await startPeerNode({
          privateKey: await loadOrCreatePeerKey(resolved.stateDir),
          ...resolved.p2p,
          logger: agent.logger
        })
        agent.sharing = new PeerSharing(agent.peer.libp2p, agent.store, resolved.stateDir, agent.blockHasher, agent.logger, resolved.p2p.cacheSize)
        agent.sharing.metrics = agent.metrics
        await agent.sharing.start()
      }
      // Manifests of jobs removed and of cache files evicted since the last start.
      await agent.dropUnusedManifests(await agent.store.manifestIds())
      if (resolved.apiListen !== undefined && (resolved.apiToken ?? '') === '') {
        throw new CanopyError('ERR_INVALID_ARGUMENT', 'The TCP listener of the control API needs a bearer token (--api-token-file): it is never open without one')
      }
      agent.api = await startApiServer(agent, agent.socketPath, agent.logger,
        resolved.apiListen !== undefined ? { listen: resolved.apiListen, token: resolved.apiToken! } : undefined)
      if (resolved.metricsListen !== undefined) agent.metricsServer = await startMetricsServer({ metrics: agent.metrics, logger: agent.logger }, { listen: resolved.metricsListen })
    } catch (err) {
      await agent.api?.close()
      await agent.peer?.stop()
      await agent.notifier.stop(0)
      await agent.store.close()
      throw err
    }
    agent.logger.info('agent started', { stateDir: resolved.stateDir, jobs: agent.jobs.size })
    // Jobs that were transferred but not yet completed when the agent went down.
    for (const job of agent.jobs.values()) {
      if (job.state === 'transferred' && job.autoComplete) {
        await agent.withJob(job.id, async () => {
          if (job.state === 'transferred') await agent.completeJob(job)
        }).catch((err: unknown) => agent.logger.error('could not complete a job at start', { jobId: job.id, err: String(err) }))
      }
    }
    agent.schedule()
    return agent
  }

  /** Stops transfers (they resume on next start), the API, and closes the store. */
  async stop (): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearTimeout(this.wakeTimer)
    await this.api?.close()
    await this.metricsServer?.close()
    this.metrics.close()
    const runs = [...this.running.values()]
    for (const r of runs) r.controller.abort(new CanopyError('ERR_AGENT_STOPPING', 'the agent is stopping'))
    await Promise.all(runs.map(async r => await r.done))
    await Promise.all([...this.writes.values()])
    await this.notifier.stop(NOTIFY_STOP_GRACE_MS)
    await this.peer?.stop()
    this.rangeClient.close()
    await this.dispatcher.close()
    await this.blockHasher.close()
    await this.store.close()
    this.logger.info('agent stopped')
  }

  // ---- queries -------------------------------------------------------------

  status (): AgentStatus {
    const counts = Object.fromEntries(['queued', 'connecting', 'transferring', 'suspended', 'error', 'transient_error',
      'transferred', 'acknowledged', 'cancelled'].map(s => [s, 0])) as Record<JobState, number>
    for (const job of this.jobs.values()) counts[job.state]++
    const status: AgentStatus = {
      version: AGENT_VERSION,
      pid: process.pid,
      stateDir: this.options.stateDir,
      startedAt: this.startedAt,
      jobs: counts,
      notifications: { pending: this.notifier.pending },
      bytes: { ...this.metrics.totals(), since: this.startedAt },
      ...(this.metricsServer !== undefined ? { metricsListen: this.metricsServer.address } : {}),
      ...(this.api?.tcpAddress !== undefined ? { apiTcp: this.api.tcpAddress } : {})
    }
    if (this.peer !== undefined) {
      const { libp2p } = this.peer
      status.peer = {
        peerId: libp2p.peerId.toString(),
        addresses: libp2p.getMultiaddrs().map(ma => ma.toString()),
        connected: libp2p.getPeers().length,
        swarmKey: this.options.p2p?.swarmKey !== undefined,
        mdns: this.options.p2p?.mdns !== false
      }
    }
    return status
  }

  peers (): PeersView {
    return this.requireSharing().peersView()
  }

  cache (): CacheView {
    return this.requireSharing().cacheView()
  }

  async clearCache (): Promise<CacheView> {
    return await this.requireSharing().clearCache()
  }

  private requireSharing (): PeerSharing {
    if (this.sharing === undefined) throw new CanopyError('ERR_NO_PEER_NODE', 'This agent runs no peer node (it was started with --no-p2p): it has no peers and no cache')
    return this.sharing
  }

  listJobs (): JobView[] {
    // One snapshot of who competes for the slots serves every waiting job's reason (O(n log n), not O(n²)).
    const competition = this.competition()
    return [...this.jobs.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map(j => this.view(j, competition))
  }

  /**
   * A job's full id from its id or a unique prefix of it (at least 4 characters, as
   * `canopy watch` and the examples show 8): people type the short form.
   */
  resolveJobId (idOrPrefix: string): string {
    if (this.jobs.has(idOrPrefix)) return idOrPrefix
    if (idOrPrefix.length >= 4 && /^[0-9a-f-]+$/i.test(idOrPrefix)) {
      const prefix = idOrPrefix.toLowerCase()
      const matches = [...this.jobs.keys()].filter(id => id.startsWith(prefix))
      if (matches.length === 1) return matches[0]
      if (matches.length > 1) throw new CanopyError('ERR_AMBIGUOUS_JOB_ID', `${matches.length} jobs have ids starting with ${idOrPrefix}: give more of the id`)
    }
    throw new CanopyError('ERR_JOB_NOT_FOUND', `No job with id ${idOrPrefix}${idOrPrefix.length < 4 ? ' (a prefix of an id needs at least 4 characters)' : ''}: list jobs with canopy jobs`)
  }

  getJob (id: string): JobView {
    return this.view(this.requireJob(id))
  }

  // ---- commands ------------------------------------------------------------

  async createJob (request: CreateJobRequest | unknown): Promise<JobView> {
    const req = validateCreateJob(request, this.options)
    const live = [...this.jobs.values()].filter(j => !FINAL_STATES.includes(j.state)).length + this.creating
    if (live >= this.options.maxJobs) {
      throw new CanopyError(LimitCode.TooManyJobs,
        `The agent already holds ${live} unfinished jobs, its limit (--max-jobs ${this.options.maxJobs}): complete or cancel some first`)
    }
    const id = randomUUID()
    const at = this.now()
    const now = new Date(at).toISOString()
    const job: JobRecord = {
      id,
      name: req.name ?? basename(req.files[0].path),
      type: 'download',
      priority: req.priority ?? 'normal',
      state: req.start === false ? 'suspended' : 'queued',
      files: req.files.map(f => fileRecord(id, f)),
      autoComplete: req.autoComplete ?? false,
      retryCount: 0,
      createdAt: now,
      modifiedAt: now,
      queuedAt: at,
      ...(req.notify !== undefined ? { notify: req.notify } : {}),
      ...(req.limits !== undefined ? { limits: req.limits } : {}),
      ...(req.http !== undefined ? { http: req.http } : {}),
      ...(req.ifNewer === true ? { ifNewer: true } : {}),
      // Creation is the job's first state change, and notified like the others.
      transitions: 1
    }
    this.creating++
    try {
      await this.persistTransition(job)
    } finally {
      this.creating--
    }
    // Visible to the scheduler only once it is durable.
    this.jobs.set(id, job)
    this.progress.set(id, job.files.map(() => undefined))
    this.logger.info('job created', { jobId: id, files: job.files.length, priority: job.priority })
    this.emit('job:state', this.view(job))
    this.schedule()
    return this.view(job)
  }

  async suspend (id: string): Promise<JobView> {
    return await this.withJob(id, async (job) => {
      this.requireNotFinal(job, 'suspend')
      if (job.state === 'transferred') throw new CanopyError('ERR_INVALID_STATE', 'The job is transferred: complete or cancel it')
      await this.halt(job)
      // The runner may have finished while it was being stopped.
      this.requireNotFinal(job, 'suspend')
      if ((job.state as JobState) === 'transferred') {
        // Too late to suspend: the runner skipped auto-completing because this stop
        // was under way, so an auto-complete job completes here instead of staying
        // transferred until the next start.
        if (job.autoComplete) await this.completeJob(job)
        throw new CanopyError('ERR_INVALID_STATE', 'The job finished transferring before it could be suspended')
      }
      await this.setState(job, 'suspended')
      return this.view(job)
    })
  }

  async resume (id: string): Promise<JobView> {
    return await this.withJob(id, async (job) => {
      this.requireNotFinal(job, 'resume')
      if (job.state === 'suspended' || job.state === 'error' || job.state === 'transient_error') {
        job.error = undefined
        job.retryAt = undefined
        job.retryCount = 0
        // A resumed job starts its time limits over, and queues behind the jobs waiting now.
        job.activeMs = 0
        job.activeSince = undefined
        job.queuedAt = this.now()
        await this.setState(job, 'queued')
      }
      return this.view(job)
    })
  }

  async cancel (id: string): Promise<JobView> {
    return await this.withJob(id, async (job) => {
      this.requireNotFinal(job, 'cancel')
      await this.halt(job)
      this.requireNotFinal(job, 'cancel')
      await this.cancelHalted(job)
      return this.view(job)
    })
  }

  /** Cancels a job whose runner is stopped (a user's cancel, or inactivity). */
  private async cancelHalted (job: JobRecord, reason?: string): Promise<void> {
    job.error = undefined
    job.retryAt = undefined
    if (reason !== undefined) job.cancelReason = reason
    // Cancelled first, files second: a crash in between leaves a cancelled job
    // whose leftovers recover() removes, never a live job without its data.
    await this.setState(job, 'cancelled')
    await this.removePartials(job)
  }

  /**
   * Appends files to a suspended job (BITS's AddFile). They are transferred after
   * the job's other files, and become visible with them when the job completes.
   */
  async addFiles (id: string, body: { files: CreateJobFile[] } | unknown): Promise<JobView> {
    return await this.withJob(id, async (job) => {
      if (job.state !== 'suspended') {
        throw new CanopyError('ERR_INVALID_STATE', `Files can be added only to a suspended job, and this one is ${job.state}${FINAL_STATES.includes(job.state) ? '' : ': suspend it first'}`)
      }
      // A completion that failed half-way put some files in place: the rest of the job must follow them, not grow.
      if (job.files.some(f => f.visible === true)) throw new CanopyError('ERR_INVALID_STATE', 'Some files of this job are already in place: complete it, or create another job')
      const files = validateAddFiles(body, this.options, job.files.map(f => f.path))
      job.files.push(...files.map(f => fileRecord(job.id, f)))
      this.progress.get(job.id)!.push(...files.map(() => undefined))
      job.modifiedAt = new Date(this.now()).toISOString()
      await this.persist(job)
      this.logger.info('files added to a job', { jobId: id, added: files.length, files: job.files.length })
      this.emit('job:updated', this.view(job))
      return this.view(job)
    })
  }

  /**
   * Changes a job's priority. The scheduler runs again at once (withJob): a job
   * raised to foreground starts now; a waiting job raised above a running one
   * preempts it when the background slots are full; a running job lowered below a
   * waiting one is preempted; the order of waiting jobs follows the new priorities.
   */
  async setPriority (id: string, body: { priority: JobPriority } | unknown): Promise<JobView> {
    const priority = validatePriority(body)
    return await this.withJob(id, async (job) => {
      this.requireNotFinal(job, 'change priority')
      if (job.priority !== priority) {
        job.priority = priority
        job.modifiedAt = new Date(this.now()).toISOString()
        await this.persist(job)
        this.logger.info('job priority changed', { jobId: id, priority })
        this.emit('job:updated', this.view(job))
      }
      return this.view(job)
    })
  }

  /** Makes the files of a transferred job visible at their destinations (atomic renames). */
  async complete (id: string): Promise<JobView> {
    return await this.withJob(id, async (job) => {
      if (job.state !== 'transferred' && !(job.state === 'error' && job.files.every(f => f.done))) {
        throw new CanopyError('ERR_INVALID_STATE', `The job is ${job.state}: only a transferred job can be completed`)
      }
      if (!await this.completeJob(job)) throw new CanopyError(job.error!.code, job.error!.message)
      return this.view(job)
    })
  }

  /**
   * Runs a user command on a job, one at a time per job. While a command runs the
   * scheduler leaves the job alone, so a cancel cannot be overtaken by a launch.
   */
  private async withJob<T> (id: string, command: (job: JobRecord) => Promise<T>): Promise<T> {
    const job = this.requireJob(id)
    const previous = this.locks.get(id) ?? Promise.resolve()
    let release!: () => void
    const mine = previous.then(async () => await new Promise<void>(resolve => { release = resolve }))
    this.locks.set(id, mine)
    try {
      await previous
      return await command(job)
    } finally {
      release()
      if (this.locks.get(id) === mine) this.locks.delete(id)
      this.schedule()
    }
  }

  private async removePartials (job: JobRecord): Promise<void> {
    for (const file of job.files) {
      if (file.visible === true) continue
      this.sharing?.stopSharingPartial(file.partPath)
      await rm(file.partPath, { force: true })
    }
    await this.store.clearBlocks(job.id)
  }

  // ---- scheduling ----------------------------------------------------------

  /** Asks the scheduling loop to run once more (coalesced). */
  private schedule (): void {
    if (this.tickQueued || this.stopped) return
    this.tickQueued = true
    setImmediate(() => {
      this.tickQueued = false
      this.tick()
    })
  }

  /**
   * The one place that decides what transfers (single-threaded, run after every
   * creation, command, runner end and timer):
   * 1. deadlines: jobs past their no-progress timeout, maximum download time,
   *    inactivity limit or retention are dealt with (as commands, so one at a time);
   * 2. launches: foreground jobs at once; background jobs by priority, then queue
   *    order, while fewer than maxBackgroundJobs run;
   * 3. making room for background jobs that still wait: a strictly higher priority
   *    preempts the weakest running job; an equal (or higher) one takes the slot of
   *    a job whose time slice is over;
   * 4. a timer for the next thing that will be due.
   */
  private tick (): void {
    if (this.stopped) return
    const now = this.now()
    let wake = Infinity
    const wakeAt = (at: number): void => { if (at > now && at < wake) wake = at }

    // Expire first: a job being expired is locked, so it is not launched below.
    for (const job of this.jobs.values()) {
      if (this.locks.has(job.id) || (this.expiryHeld.get(job.id) ?? 0) > now) continue
      const deadline = this.deadlineOf(job)
      if (deadline !== undefined && deadline.at <= now) this.expire(job, deadline.kind)
    }

    const ready = [...this.jobs.values()]
      .filter(j => !this.running.has(j.id) && !this.locks.has(j.id) && this.isReady(j, now))
      .sort(byQueue)
    const background = [...this.running].filter(([id]) => this.jobs.get(id)?.priority !== 'foreground')
    let busy = background.length
    const waiting: JobRecord[] = []
    for (const job of ready) {
      if (job.priority === 'foreground') this.launch(job, now)
      else if (busy < this.options.maxBackgroundJobs) {
        this.launch(job, now)
        busy++
      } else {
        waiting.push(job)
      }
    }
    if (waiting.length > 0) this.makeRoom(waiting, background, now, wakeAt)

    // Launching started the clocks of the jobs launched: their deadlines count too.
    for (const job of this.jobs.values()) {
      if (job.state === 'transient_error' && !this.running.has(job.id)) wakeAt(Date.parse(job.retryAt ?? ''))
      const deadline = this.locks.has(job.id) ? undefined : this.deadlineOf(job)
      if (deadline !== undefined) wakeAt(Math.max(deadline.at, this.expiryHeld.get(job.id) ?? 0))
    }
    clearTimeout(this.wakeTimer)
    if (Number.isFinite(wake)) {
      this.wakeTimer = setTimeout(() => this.schedule(), Math.min(MAX_TIMER_MS, wake - now + 5))
    }
  }

  /** Queued, or in transient_error with its retry due. */
  private isReady (job: JobRecord, now: number): boolean {
    return job.state === 'queued' || (job.state === 'transient_error' && Date.parse(job.retryAt ?? '') <= now)
  }

  /**
   * Frees background slots for `waiting` (ready jobs, best first) by stopping
   * running jobs, which go back to the queue and resume from their block marks.
   * Rules that keep it from thrashing:
   * - slots already being freed count for the first waiting jobs, so one arrival
   *   stops one job, however many ticks run before that job has stopped;
   * - preemption needs a strictly higher priority, so jobs of one priority never
   *   preempt each other and a preempted job cannot preempt back;
   * - a retry that is due does not preempt (its origin just failed; stopping a job
   *   that moves for it is a bad trade): it takes a slot when one frees, or when a
   *   time slice ends;
   * - a time slice ends a run only while a job of the same or a higher priority
   *   waits, and the job that yielded queues behind its equals.
   */
  private makeRoom (waiting: JobRecord[], background: Array<[string, Run]>, now: number, wakeAt: (at: number) => void): void {
    const freeing = background.filter(([, run]) => run.stopping).length
    const victims = background
      .filter(([id, run]) => !run.stopping && ['connecting', 'transferring'].includes(this.jobs.get(id)!.state))
      .map(([id, run]) => ({ job: this.jobs.get(id)!, run }))
      // Weakest first: the lowest priority, and among equals the one that started last (it has the least to lose), then the last in the queue.
      .sort((a, b) => rank(b.job) - rank(a.job) || b.run.startedAt - a.run.startedAt || byQueue(b.job, a.job))
    for (const job of waiting.slice(freeing)) {
      const weakest = victims[0]
      if (weakest === undefined) return
      if (job.state === 'queued' && rank(job) < rank(weakest.job)) {
        this.yieldSlot(weakest.job, weakest.run, 'preempted', job)
        victims.shift()
        continue
      }
      const turn = victims.filter(v => rank(v.job) >= rank(job))
      const over = turn.filter(v => now - v.run.startedAt >= this.options.timeSliceMs).sort((a, b) => a.run.startedAt - b.run.startedAt)[0]
      if (over !== undefined) {
        this.yieldSlot(over.job, over.run, 'slice', job)
        victims.splice(victims.indexOf(over), 1)
      } else {
        for (const v of turn) wakeAt(v.run.startedAt + this.options.timeSliceMs)
      }
    }
  }

  private yieldSlot (job: JobRecord, run: Run, why: 'preempted' | 'slice', to: JobRecord): void {
    this.logger.info(why === 'preempted' ? 'job preempted by a higher-priority job' : 'time slice over; job yields its slot',
      { jobId: job.id, priority: job.priority, for: to.id, forPriority: to.priority })
    run.stopping = true
    run.controller.abort(new SchedulerYield(why))
  }

  private launch (job: JobRecord, now: number): void {
    const controller = new AbortController()
    const done = this.run(job, controller.signal).catch((err: unknown) => {
      // Only a failure to record the failure lands here (e.g. the state disk is full).
      this.logger.error('job runner failed', { jobId: job.id, err: String((err as Error)?.stack ?? err) })
    }).finally(() => {
      this.running.delete(job.id)
      this.schedule()
    })
    this.running.set(job.id, { controller, done, startedAt: now, stopping: false })
  }

  /** Stops a job's runner, if any, and waits until it has let go of its files. */
  private async halt (job: JobRecord, why = 'stopped by the user'): Promise<void> {
    const run = this.running.get(job.id)
    if (run === undefined) return
    run.controller.abort(new CanopyError('ERR_ABORTED', why))
    await run.done
  }

  /** The retry and time limits in force for a job: its own, else the agent's. */
  private limitsOf (job: JobRecord): JobLimits {
    const o = this.options
    return {
      retryMinMs: job.limits?.retryMinMs ?? o.retryMinMs,
      retryMaxMs: job.limits?.retryMaxMs ?? o.retryMaxMs,
      noProgressTimeoutMs: job.limits?.noProgressTimeoutMs ?? o.noProgressTimeoutMs,
      maxDownloadTimeMs: job.limits?.maxDownloadTimeMs ?? o.maxDownloadTimeMs
    }
  }

  /** The next thing the scheduler must do to a job by itself, and when. */
  private deadlineOf (job: JobRecord): { kind: Expiry, at: number } | undefined {
    if (FINAL_STATES.includes(job.state)) {
      return { kind: 'retention', at: Date.parse(job.completedAt ?? job.modifiedAt) + this.options.retentionMs }
    }
    if (ACTIVE_STATES.includes(job.state) && job.activeSince !== undefined) {
      const limits = this.limitsOf(job)
      const stall = { kind: 'no-progress' as const, at: (job.progressAt ?? job.activeSince) + limits.noProgressTimeoutMs }
      if (limits.maxDownloadTimeMs === 0) return stall
      const max = { kind: 'max-time' as const, at: job.activeSince + limits.maxDownloadTimeMs - (job.activeMs ?? 0) }
      return max.at < stall.at ? max : stall
    }
    // Running jobs modify their record as they progress; a stuck one meets its no-progress timeout.
    if (this.running.has(job.id)) return undefined
    return { kind: 'inactive', at: Date.parse(job.modifiedAt) + this.options.inactiveJobTimeoutMs }
  }

  /** Acts on a passed deadline, as a command on the job (one at a time with the user's). */
  private expire (job: JobRecord, kind: Expiry): void {
    this.withJob(job.id, async (job) => {
      // A command or progress may have moved the deadline since the tick saw it.
      const deadline = this.deadlineOf(job)
      if (deadline === undefined || deadline.kind !== kind || deadline.at > this.now()) return
      if (kind === 'retention') {
        await this.removeJob(job)
        return
      }
      await this.halt(job, `stopped by the scheduler: ${kind}`)
      if (FINAL_STATES.includes(job.state)) return
      if (kind === 'inactive') {
        this.logger.info('job cancelled after inactivity', { jobId: job.id, state: job.state })
        await this.cancelHalted(job, `cancelled: not modified for ${formatDuration(this.options.inactiveJobTimeoutMs)} (the agent's inactivity limit)`)
        return
      }
      // The runner may have finished while it was being stopped.
      if (!ACTIVE_STATES.includes(job.state)) return
      const limits = this.limitsOf(job)
      const last = job.error?.transient === true ? ` (last error: ${job.error.message})` : ''
      job.error = kind === 'no-progress'
        ? {
            code: JobErrorCode.NoProgress,
            message: `No progress for ${formatDuration(limits.noProgressTimeoutMs)}${last}: check the origin and the network, then resume the job`,
            transient: false,
            at: new Date(this.now()).toISOString()
          }
        : {
            code: JobErrorCode.MaxTime,
            message: `The job did not finish within its maximum download time of ${formatDuration(limits.maxDownloadTimeMs)}${last}: resume it to try again (the time starts over)`,
            transient: false,
            at: new Date(this.now()).toISOString()
          }
      this.logger.warn('job failed', { jobId: job.id, code: job.error.code, reason: job.error.message })
      await this.setState(job, 'error')
    }).catch((err: unknown) => {
      if (err instanceof CanopyError && err.code === 'ERR_JOB_NOT_FOUND') return
      this.logger.error('could not act on a job\'s deadline; trying again in a minute', { jobId: job.id, kind, err: String(err) })
      this.expiryHeld.set(job.id, this.now() + EXPIRY_RETRY_MS)
    })
  }

  /**
   * Deletes those of `candidates` that no job's file and no cache record needs any
   * more (a manifest is kept while its file is cached: peers are served from it).
   */
  private async dropUnusedManifests (candidates: string[]): Promise<void> {
    if (candidates.length === 0) return
    const cached = new Set<string>((await this.store.cacheRecords()).map(r => r.manifestId))
    const usedByJobs = (): Set<string> => new Set([...this.jobs.values()].flatMap(job => job.files.flatMap(f => f.manifestId ?? [])))
    // The set is made again right before each delete is issued, with no await in
    // between: a job that started using the manifest meanwhile (transferFileWith sets
    // the file's manifestId before it stores the manifest) keeps it. One pass over the
    // jobs per delete, not per candidate: the start-up sweep sees every manifest.
    let used = usedByJobs()
    for (const id of new Set(candidates)) {
      if (cached.has(id) || used.has(id)) continue
      used = usedByJobs()
      if (!used.has(id)) await this.store.deleteManifest(id)
    }
  }

  /** Removes a finished job from the store and the list (retention). Notifications it still owes stay in the outbox. */
  private async removeJob (job: JobRecord): Promise<void> {
    await this.writes.get(job.id)
    await this.store.deleteJob(job.id)
    this.jobs.delete(job.id)
    this.progress.delete(job.id)
    this.lastProgressEvent.delete(job.id)
    this.lastPersist.delete(job.id)
    this.rates.delete(job.id)
    this.expiryHeld.delete(job.id)
    await this.dropUnusedManifests(job.files.flatMap(f => f.manifestId === undefined ? [] : [f.manifestId]))
    this.logger.info('finished job removed after its retention', { jobId: job.id, state: job.state })
    this.emit('job:removed', job.id)
  }

  // ---- transfer ------------------------------------------------------------

  private async run (job: JobRecord, signal: AbortSignal): Promise<void> {
    // A cancel, suspend or stop; the scheduler's yields are not: a job whose files are all done goes on to completion.
    const stoppedByUser = (): boolean => signal.aborted && !(signal.reason instanceof SchedulerYield)
    try {
      await this.setState(job, 'connecting')
      for (let i = 0; i < job.files.length; i++) {
        if (!job.files[i].done) await this.transferFile(job, i, signal, 0)
      }
      if (stoppedByUser()) throw signal.reason
      job.transferredAt = new Date(this.now()).toISOString()
      job.retryCount = 0
      job.error = undefined
      await this.setState(job, 'transferred')
      // A cancel or suspend that arrived meanwhile wins over completing.
      if (job.autoComplete && !stoppedByUser()) await this.completeJob(job)
    } catch (err) {
      if (signal.aborted) {
        // Preempted, or its time slice is over: back to the queue; it resumes from its block marks.
        const reason: unknown = signal.reason
        if (reason instanceof SchedulerYield && (job.state === 'connecting' || job.state === 'transferring')) {
          job.waitReason = reason.why
          // After a time slice it queues behind its equals; a preempted job keeps its place.
          if (reason.why === 'slice') job.queuedAt = this.now()
          await this.setState(job, 'queued')
        }
        // suspend, cancel, stop and deadlines set the job's state themselves
        return
      }
      const failure = classifyError(err)
      if (failure.code === JobErrorCode.Internal) this.logger.error('unexpected transfer failure', { jobId: job.id, err: String((err as Error)?.stack ?? err) })
      job.error = {
        code: failure.code,
        message: failure.message,
        transient: failure.transient,
        at: new Date(this.now()).toISOString(),
        ...(failure.url !== undefined ? { url: failure.url } : {})
      }
      if (failure.transient) {
        job.retryCount++
        const limits = this.limitsOf(job)
        const delay = backoff(job.retryCount, limits.retryMinMs, limits.retryMaxMs)
        const retryAt = this.now() + delay
        job.retryAt = new Date(retryAt).toISOString()
        // When the retry is due it queues behind the jobs that were waiting before then.
        job.queuedAt = retryAt
        this.logger.warn('transient failure; will retry', { jobId: job.id, code: failure.code, reason: failure.message, retryInMs: delay })
        await this.setState(job, 'transient_error')
      } else {
        this.logger.warn('job failed', { jobId: job.id, code: failure.code, reason: failure.message })
        await this.setState(job, 'error')
      }
    }
  }

  /**
   * How one transfer of the job reaches its origin: the agent's shared pool and its
   * direct range client, or, for a job with its own proxy or TLS settings, a pool of
   * its own (closed after the transfer). Through a proxy, the direct range client
   * (plain TCP to the origin) is not used.
   */
  private async networkFor (job: JobRecord): Promise<{ dispatcher: Dispatcher, rangeClient?: RangeClient, close: () => Promise<void> }> {
    const own = job.http?.proxy !== undefined || job.http?.tls !== undefined
    const options = { proxy: job.http?.proxy, tls: await readTls(job.http?.tls) }
    const rangeClient = usesProxy(options) ? undefined : this.rangeClient
    if (!own) return { dispatcher: this.dispatcher, ...(rangeClient !== undefined ? { rangeClient } : {}), close: async () => {} }
    const dispatcher = createDispatcher({ ...poolOptions(this.options), ...options })
    return { dispatcher, ...(rangeClient !== undefined ? { rangeClient } : {}), close: async () => await dispatcher.close() }
  }

  private async transferFile (job: JobRecord, index: number, signal: AbortSignal, restarts: number): Promise<void> {
    const net = await this.networkFor(job).catch((err: unknown) => {
      throw new TransferError(JobErrorCode.Internal, `cannot read the job's TLS files: ${(err as Error).message}`, { transient: false })
    })
    try {
      await this.transferFileWith(job, index, signal, restarts, net)
    } finally {
      await net.close()
    }
  }

  private async transferFileWith (job: JobRecord, index: number, signal: AbortSignal, restarts: number,
    net: { dispatcher: Dispatcher, rangeClient?: RangeClient }): Promise<void> {
    const file = job.files[index]
    const headers = requestHeaders(job.http)
    if (file.mode === undefined) {
      const manifest = await discoverManifest(net.dispatcher, file.url, headers, signal)
      if (manifest !== undefined) {
        if (file.expectedSha256 !== undefined && file.expectedSha256 !== manifest.sha256) {
          throw new TransferError(JobErrorCode.DigestMismatch,
            `The origin publishes SHA-256 ${manifest.sha256} for this file, not the ${file.expectedSha256} you gave: check the digest or the URL`,
            { transient: false, url: file.url })
        }
        // The id first: dropUnusedManifests must see the manifest as used before it exists.
        file.manifestId = manifest.id
        await this.store.putManifest(manifest)
        file.size = manifest.size
        file.mode = 'blocks'
      } else {
        file.mode = 'plain'
      }
      await this.persist(job)
    }
    if (job.ifNewer === true && await this.upToDate(file, net.dispatcher, headers, signal)) {
      this.logger.info('skipped: the destination is up to date', { jobId: job.id, path: file.path })
      this.sharing?.stopSharingPartial(file.partPath)
      await rm(file.partPath, { force: true })
      await this.store.clearBlocks(job.id, index)
      // In place already: completing the job leaves it alone, cancelling does not remove it.
      Object.assign(file, { done: true, skipped: true, visible: true, bytesByPeer: undefined })
      await this.persist(job)
      return
    }
    await this.checkDestination(file)
    if (job.state !== 'transferring') await this.setState(job, 'transferring')

    if (file.mode === 'plain') {
      const progress = this.plainProgress(job, index)
      file.sha256 = await transferPlain({
        file,
        progress,
        dispatcher: net.dispatcher,
        headers,
        fileDigest: (path) => this.blockHasher.fileDigest(path),
        persist: async () => await this.persist(job),
        onProgress: () => this.onProgress(job),
        logger: this.logger,
        signal
      })
    } else {
      const manifest = await this.store.getManifest(file.manifestId!)
      if (manifest === undefined) throw new TransferError(JobErrorCode.Internal, 'the manifest of this file is missing from the store', { transient: true })
      const progress = await this.blockProgress(job, index, manifest)
      const inFlight = new Set<number>()
      this.sharing?.sharePartial(manifest, file.partPath, progress, inFlight)
      try {
        file.sha256 = await transferBlocks({
          jobId: job.id,
          fileIndex: index,
          url: file.url,
          partPath: file.partPath,
          manifest,
          progress,
          store: this.store,
          dispatcher: net.dispatcher,
          headers,
          blockHasher: this.blockHasher,
          inFlight,
          ...(this.sharing !== undefined ? { peers: this.peerSessions(this.sharing, file) } : {}),
          buffers: this.blockBuffers,
          maxBufferedBlocks: blocksBuffered(this.options, manifest.blockSize),
          ...(net.rangeClient !== undefined ? { rangeClient: net.rangeClient } : {}),
          requestsInFlight: this.options.requestsInFlight,
          blocksPerRequest: Math.max(1, Math.floor(this.options.requestSize / manifest.blockSize)),
          maxBlockAttempts: this.options.maxBlockAttempts,
          refreshManifest: async (s) => await discoverManifest(net.dispatcher, file.url, headers, s),
          onBlock: () => this.onProgress(job),
          onBadBlock: (source) => this.metrics.verificationFailed(source),
          logger: this.logger,
          signal
        })
      } catch (err) {
        if (!(err instanceof TransferError) || err.code !== REMOTE_CHANGED || restarts >= 2) throw err
        this.logger.info('remote file changed; restarting it', { jobId: job.id, url: file.url })
        await this.resetFile(job, index)
        return await this.transferFileWith(job, index, signal, restarts + 1, net)
      }
    }
    file.done = true
    await this.persist(job)
  }

  /** The agent's peer sessions for one file's transfer, also counting each peer's bytes in the file's record. */
  private peerSessions (sharing: PeerSharing, file: FileRecord): PeerSessions {
    return {
      open: async (id, key, signal) => await sharing.open(id, key, signal),
      penalize: (peer, reason) => sharing.penalize(peer, reason),
      self: () => sharing.self(),
      received: (peer, bytes) => {
        sharing.received(peer, bytes)
        const byPeer = file.bytesByPeer ??= {}
        byPeer[peer.toString()] = (byPeer[peer.toString()] ?? 0) + bytes
      }
    }
  }

  /**
   * Whether the file's destination is already what the origin has (ifNewer): with
   * a manifest, the local file has its size and SHA-256; without, the server answers
   * 304 to If-Modified-Since the local file's modification time.
   */
  private async upToDate (file: FileRecord, dispatcher: Dispatcher, headers: Record<string, string>, signal: AbortSignal): Promise<boolean> {
    const local = await stat(file.path).catch(() => undefined)
    if (local === undefined || !local.isFile()) return false
    if (file.mode === 'blocks') {
      const manifest = await this.store.getManifest(file.manifestId!)
      if (manifest === undefined || manifest.size !== local.size) return false
      const current = await fileDigest(this.blockHasher, file.path, local.size, signal) === manifest.sha256
      if (current) file.sha256 = manifest.sha256
      return current
    }
    const res = await request(file.url, {
      dispatcher,
      method: 'GET',
      headers: { ...headers, range: 'bytes=0-0', 'if-modified-since': local.mtime.toUTCString() },
      signal
    })
    discard(res.body)
    return res.statusCode === 304
  }

  /** Forgets a file's progress and manifest (its remote copy changed). */
  private async resetFile (job: JobRecord, index: number): Promise<void> {
    const file = job.files[index]
    await this.store.clearBlocks(job.id, index)
    this.sharing?.stopSharingPartial(file.partPath)
    await rm(file.partPath, { force: true })
    file.mode = undefined
    file.manifestId = undefined
    file.size = -1
    file.plainBytes = undefined
    file.bytesByPeer = undefined
    this.progress.get(job.id)![index] = undefined
    await this.persist(job)
  }

  /** Fails early, in plain words, when the destination folder is gone or the disk cannot hold the rest. */
  private async checkDestination (file: FileRecord): Promise<void> {
    const dir = dirname(file.path)
    try {
      await stat(dir)
    } catch {
      throw new TransferError(JobErrorCode.Destination, `The destination folder ${dir} does not exist: create it, then resume the job`, { transient: false, url: file.url })
    }
    if (file.size < 0) return
    const { bavail, bsize } = await statfs(dir)
    const free = bavail * bsize
    const partSize = await stat(file.partPath).then(s => s.blocks * 512, () => 0)
    const needed = file.size - partSize
    if (needed > free) {
      throw new TransferError(JobErrorCode.DiskFull,
        `Not enough disk space for ${file.path}: ${formatBytes(needed)} more needed, ${formatBytes(free)} free. Free some space, then resume the job`,
        { transient: false, url: file.url })
    }
  }

  private async blockProgress (job: JobRecord, index: number, manifest: PublishedManifest): Promise<FileProgress> {
    const list = this.progress.get(job.id)!
    const existing = list[index]
    if (existing instanceof FileProgress && existing.size === manifest.size) return existing
    const progress = new FileProgress(manifest.size, manifest.blockSize)
    for await (const { block, source } of this.store.markedBlocks(job.id, index)) {
      if (block < progress.blocks.length) progress.mark(block, source)
    }
    list[index] = progress
    return progress
  }

  private plainProgress (job: JobRecord, index: number): PlainProgress {
    const list = this.progress.get(job.id)!
    const existing = list[index]
    if (existing !== undefined && !(existing instanceof FileProgress)) return existing
    const bytes = job.files[index].plainBytes ?? 0
    const progress: PlainProgress = { bytesDone: bytes, fromOrigin: bytes, fromPeers: 0, fromCache: 0 }
    list[index] = progress
    return progress
  }

  private onProgress (job: JobRecord): void {
    const now = this.now()
    if (job.retryCount > 0) job.retryCount = 0
    // Restarts the no-progress clock (persisted with the record, at most every second).
    job.progressAt = now
    if (now - (this.lastProgressEvent.get(job.id) ?? 0) >= 500) {
      this.lastProgressEvent.set(job.id, now)
      this.sampleRate(job, now)
      this.emit('job:progress', this.view(job))
    }
    if (now - (this.lastPersist.get(job.id) ?? 0) >= PROGRESS_PERSIST_MS) {
      this.lastPersist.set(job.id, now)
      job.modifiedAt = new Date(now).toISOString()
      this.persist(job).catch((err: unknown) => this.logger.error('could not persist job progress', { jobId: job.id, err: String(err) }))
    }
  }

  /**
   * Renames every file into place, each once (a retry after a failure in the middle
   * skips the files already visible), then forgets the block marks. On failure the
   * job goes to `error` with the reason and false is returned.
   */
  private async completeJob (job: JobRecord): Promise<boolean> {
    // Auto-complete and a user's complete may meet: both get the one outcome.
    const current = this.completing.get(job.id)
    if (current !== undefined) return await current
    const attempt = this.renameIntoPlace(job).finally(() => this.completing.delete(job.id))
    this.completing.set(job.id, attempt)
    return await attempt
  }

  /** Puts a verified, complete file in the peer cache; failures only cost sharing. */
  private async keepForPeers (file: FileRecord, path: string): Promise<void> {
    if (this.sharing === undefined || file.manifestId === undefined) return
    const manifest = await this.store.getManifest(file.manifestId)
    if (manifest === undefined) return
    await this.sharing.admit(manifest, path, basename(file.path)).catch((err: unknown) => this.logger.warn('could not keep a completed file for peers', { path, err: String(err) }))
  }

  private async renameIntoPlace (job: JobRecord): Promise<boolean> {
    if (FINAL_STATES.includes(job.state)) return job.state === 'acknowledged'
    if (!job.files.every(f => f.done)) return false
    for (const file of job.files) {
      if (file.visible === true) continue
      try {
        // A crash between the rename and recording it leaves our file in place
        // and no partial file: recognise it by its digest rather than fail.
        if (!await alreadyInPlace(this.blockHasher, file)) {
          // Keep it for peers first (a hard link to the same inode), so that peers
          // reading it never see it missing between the rename and the caching.
          await this.keepForPeers(file, file.partPath)
          await rename(file.partPath, file.path)
        }
        await syncDirectory(dirname(file.path))
      } catch (err) {
        const missing = (err as { code?: string }).code === 'ENOENT'
        const failure = classifyError(err, file.url)
        job.error = {
          code: missing ? JobErrorCode.Destination : failure.code,
          message: missing
            ? `The downloaded data for ${file.path} is gone (was ${file.partPath} deleted?): cancel the job and download again`
            : `Could not put ${file.path} in place: ${failure.message}`,
          transient: false,
          at: new Date(this.now()).toISOString(),
          url: file.url
        }
        await this.setState(job, 'error')
        return false
      }
      file.visible = true
      await this.persist(job)
    }
    // Keep the per-source totals in the record: the block marks go now.
    job.files.forEach((file, i) => {
      const p = this.progress.get(job.id)?.[i]
      file.bytesBySource ??= { origin: p?.fromOrigin ?? 0, peers: p?.fromPeers ?? 0, cache: p?.fromCache ?? 0 }
    })
    await this.store.clearBlocks(job.id)
    job.error = undefined
    job.completedAt = new Date(this.now()).toISOString()
    await this.setState(job, 'acknowledged')
    return true
  }

  // ---- state ---------------------------------------------------------------

  private async recover (): Promise<void> {
    for (const job of await this.store.allJobs()) {
      this.jobs.set(job.id, job)
      this.progress.set(job.id, job.files.map(() => undefined))
      // A job that was moving when the agent went down moves again (a state change
      // like any other: notified).
      // Its active time ends when it was last recorded, not now: the agent was down in between.
      if (job.state === 'connecting' || job.state === 'transferring') await this.setState(job, 'queued', Date.parse(job.modifiedAt))
      // A cancel that was cut short after it was recorded: finish removing its files.
      if (job.state === 'cancelled') await this.removePartials(job)
      // A record from before the time limits: its clocks start now.
      if (ACTIVE_STATES.includes(job.state) && job.activeSince === undefined) job.activeSince = job.progressAt = this.now()
      if (!FINAL_STATES.includes(job.state)) {
        for (let i = 0; i < job.files.length; i++) {
          const file = job.files[i]
          if (file.mode === 'blocks' && !file.done && file.manifestId !== undefined) {
            const manifest = await this.store.getManifest(file.manifestId)
            if (manifest !== undefined) await this.blockProgress(job, i, manifest)
          } else if (file.mode === 'plain' && !file.done) {
            this.plainProgress(job, i)
          }
        }
      }
    }
  }

  /**
   * Records a state change. It also keeps the clocks of the time limits: entering
   * connecting, transferring or transient_error from another state starts the
   * active time and the no-progress clock; leaving them adds the active time up
   * to `activeUntil` (default now) and stops the no-progress clock.
   */
  private async setState (job: JobRecord, state: JobState, activeUntil?: number): Promise<void> {
    const now = this.now()
    const wasActive = ACTIVE_STATES.includes(job.state)
    const isActive = ACTIVE_STATES.includes(state)
    if (!wasActive && isActive) {
      job.activeSince = now
      job.progressAt = now
    } else if (wasActive && !isActive) {
      const until = activeUntil ?? now
      job.activeMs = (job.activeMs ?? 0) + Math.max(0, until - (job.activeSince ?? until))
      job.activeSince = undefined
      job.progressAt = undefined
    }
    if (state !== 'queued') job.waitReason = undefined
    job.state = state
    job.modifiedAt = new Date(now).toISOString()
    if (state !== 'transient_error') job.retryAt = undefined
    job.transitions = (job.transitions ?? 0) + 1
    await this.persistTransition(job)
    this.emit('job:state', this.view(job))
  }

  /** Writes a job that just changed state together with the notifications the change owes, then starts delivering them. */
  private async persistTransition (job: JobRecord): Promise<void> {
    const owed = this.notifier.owe(job, this.view(job))
    try {
      await this.persist(job, owed)
    } catch (err) {
      this.notifier.forget(owed)
      throw err
    }
    this.notifier.enqueue(owed)
  }

  /**
   * Writes a job record; writes of one job are chained so that they land in order
   * and the last one wins. A failed write rejects (the caller's operation fails);
   * the chain itself carries on.
   */
  private async persist (job: JobRecord, notifications: readonly NotificationRecord[] = []): Promise<void> {
    const previous = this.writes.get(job.id) ?? Promise.resolve()
    const next = previous.then(async () => await this.store.putJob(job, notifications))
    const settled = next.catch(() => {})
    this.writes.set(job.id, settled)
    try {
      await next
    } finally {
      if (this.writes.get(job.id) === settled) this.writes.delete(job.id)
    }
  }

  /** Updates the job's recent rate (bytes/s, smoothed over about two samples of 0.5 s or more). */
  private sampleRate (job: JobRecord, now: number): void {
    const bytes = (this.progress.get(job.id) ?? []).reduce((sum, p) => sum + (p?.bytesDone ?? 0), 0)
    const last = this.rates.get(job.id)
    if (last === undefined || now <= last.at || bytes < last.bytes) {
      this.rates.set(job.id, { at: now, bytes, ...(last?.rate !== undefined ? { rate: last.rate } : {}) })
      return
    }
    const instant = (bytes - last.bytes) * 1000 / (now - last.at)
    this.rates.set(job.id, { at: now, bytes, rate: last.rate === undefined ? instant : (last.rate + instant) / 2 })
  }

  /** The job's recent rate while it transfers and has moved bytes in the last 3 s. */
  private rateOf (job: JobRecord): number | undefined {
    const sample = this.rates.get(job.id)
    if (job.state !== 'transferring' || sample?.rate === undefined || this.now() - sample.at > 3000) return undefined
    return Math.round(sample.rate)
  }

  private view (job: JobRecord, competition?: Competition): JobView {
    const progress = (this.progress.get(job.id) ?? []).map((p, i) => {
      const f = job.files[i]
      if (f.bytesBySource !== undefined) {
        return { bytesDone: Math.max(f.size, 0), fromOrigin: f.bytesBySource.origin, fromPeers: f.bytesBySource.peers, fromCache: f.bytesBySource.cache }
      }
      return p
    })
    const rate = this.rateOf(job)
    return toView(job, { progress, reason: this.reasonFor(job, competition), limits: this.limitsOf(job), ...(rate !== undefined ? { rate } : {}) })
  }

  /** The plain-language reason of a job's state: why it waits, or what went wrong. */
  private reasonFor (job: JobRecord, competition?: Competition): string | undefined {
    switch (job.state) {
      case 'queued': {
        // Launched, about to connect; a runner that is yielding its slot has a reason.
        if (this.running.get(job.id)?.stopping === false) return undefined
        if (job.waitReason === 'preempted') return 'waiting: preempted by a higher-priority job'
        const ahead = this.aheadOf(job, competition ?? this.competition())
        if (job.waitReason === 'slice') return `waiting: time slice over${ahead === '' ? '' : `; ${ahead}`}`
        return ahead === '' ? 'waiting to start' : `waiting: ${ahead}`
      }
      case 'transient_error': {
        const message = job.error?.message ?? 'transient error'
        const wait = Date.parse(job.retryAt ?? '') - this.now()
        if (wait > 0) return `${message}, next retry in ${formatDuration(Math.ceil(wait / 1000) * 1000)}`
        return this.running.has(job.id) ? undefined : `${message}, retry due: waiting for a free slot`
      }
      case 'error': return job.error?.message
      case 'suspended': return 'suspended: resume it to continue'
      case 'transferred': return job.autoComplete ? undefined : 'transferred: complete it to make the files visible'
      case 'cancelled': return job.cancelReason
      case 'acknowledged': {
        const skipped = job.files.filter(f => f.skipped === true).length
        if (skipped === 0) return undefined
        return skipped === job.files.length ? 'skipped: up to date' : `${skipped} of ${job.files.length} files skipped: up to date`
      }
      default: return undefined
    }
  }

  /**
   * What a waiting background job waits for: the background jobs of a higher
   * priority that run or are ready, and those of its priority that run or come
   * before it in the queue ("2 higher-priority jobs and 1 same-priority job ahead").
   * Empty when nothing is ahead (it starts at the next tick) and for foreground jobs.
   */
  /**
   * The background jobs that hold a slot or are ready for one, by priority: how
   * many run, and the ready ones in queue order. Who is ahead of a job is then a
   * sum and a binary search.
   */
  private competition (): Competition {
    const now = this.now()
    const byRank = new Map<number, { running: number, waiting: JobRecord[] }>()
    for (const job of this.jobs.values()) {
      if (job.priority === 'foreground') continue
      const running = this.running.has(job.id)
      if (!running && !this.isReady(job, now)) continue
      let group = byRank.get(rank(job))
      if (group === undefined) byRank.set(rank(job), group = { running: 0, waiting: [] })
      if (running) group.running++
      else group.waiting.push(job)
    }
    for (const group of byRank.values()) group.waiting.sort(byQueue)
    return { byRank, running: new Set(this.running.keys()) }
  }

  private aheadOf (job: JobRecord, competition: Competition): string {
    if (job.priority === 'foreground') return ''
    let higher = 0
    for (const [r, group] of competition.byRank) if (r < rank(job)) higher += group.running + group.waiting.length
    const group = competition.byRank.get(rank(job))
    let same = 0
    if (group !== undefined) {
      // The running ones of its priority, and the waiting ones before it in the queue.
      same = group.running - (competition.running.has(job.id) ? 1 : 0)
      let lo = 0
      let hi = group.waiting.length
      while (lo < hi) {
        const mid = (lo + hi) >> 1
        if (byQueue(group.waiting[mid], job) < 0) lo = mid + 1
        else hi = mid
      }
      same += lo
    }
    const parts = []
    if (higher > 0) parts.push(`${higher} higher-priority job${higher === 1 ? '' : 's'}`)
    if (same > 0) parts.push(`${same} same-priority job${same === 1 ? '' : 's'} ahead`)
    return parts.join(' and ')
  }

  private requireJob (id: string): JobRecord {
    const job = this.jobs.get(id)
    if (job === undefined) throw new CanopyError('ERR_JOB_NOT_FOUND', `No job with id ${id}: list jobs with canopy jobs`)
    return job
  }

  private requireNotFinal (job: JobRecord, verb: string): void {
    if (FINAL_STATES.includes(job.state)) {
      throw new CanopyError('ERR_INVALID_STATE', `The job is ${job.state}: it cannot ${verb} any more`)
    }
  }
}

/** True when the partial file is gone and the destination has the file's verified digest. */
async function alreadyInPlace (hasher: BlockHasher, file: FileRecord): Promise<boolean> {
  if (file.sha256 === undefined || await stat(file.partPath).then(() => true, () => false)) return false
  try {
    return await fileDigest(hasher, file.path, (await stat(file.path)).size) === file.sha256
  } catch {
    return false
  }
}

/** The hex SHA-256 of the first `size` bytes of a file, computed on a worker (files may be gigabytes). */
async function fileDigest (blockHasher: BlockHasher, path: string, size: number, signal?: AbortSignal): Promise<string> {
  const hasher = blockHasher.fileDigest(path)
  let onAbort = (): void => {}
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal?.reason)
    if (signal?.aborted === true) onAbort()
    else signal?.addEventListener('abort', onAbort, { once: true })
  })
  aborted.catch(() => {})
  try {
    hasher.advance(size)
    return await Promise.race([hasher.finish(size), aborted])
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await hasher.close()
  }
}

/** Makes a rename durable: fsync of the directory that holds the new name. */
async function syncDirectory (dir: string): Promise<void> {
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

function withoutUndefined<T extends object> (value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}

function rank (job: JobRecord): number {
  return PRIORITY_RANK[job.priority]
}

/** Background jobs competing for slots, by priority rank (see CanopyAgent.competition). */
interface Competition {
  byRank: Map<number, { running: number, waiting: JobRecord[] }>
  running: Set<string>
}

/** Connections and timeouts of an HTTP pool: two jobs may fetch from one origin at once. */
function poolOptions (options: ResolvedAgentOptions): { connections: number, timeoutMs: number } {
  return { connections: options.requestsInFlight * 2, timeoutMs: options.requestTimeoutMs }
}

/** Queue order: priority, then place in the queue (queuedAt; older records: creation), then creation. */
function byQueue (a: JobRecord, b: JobRecord): number {
  return rank(a) - rank(b) || (a.queuedAt ?? Date.parse(a.createdAt)) - (b.queuedAt ?? Date.parse(b.createdAt)) || a.createdAt.localeCompare(b.createdAt)
}

/** The record of a new file of job `id`; its partial file lies next to the destination, so that completing is a rename within one filesystem. */
function fileRecord (id: string, f: CreateJobFile): FileRecord {
  return {
    url: f.url,
    path: f.path,
    partPath: join(dirname(f.path), `.${basename(f.path)}.${id.slice(0, 8)}.canopy-part`),
    ...(f.sha256 !== undefined ? { expectedSha256: f.sha256 } : {}),
    size: -1,
    done: false
  }
}
