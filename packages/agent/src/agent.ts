import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import { API_SOCKET_NAME, CanopyError, FINAL_STATES, throwIfAborted } from '@canopy/core'
import type { AbortOptions, AgentControl, AgentStatus, CacheView, ControlEvents, CreateJobFile, CreateJobRequest, PeersView, PolicyView, JobPriority, JobState, JobView, Logger } from '@canopy/core'
import { fileRecord } from './jobs/job.ts'
import type { JobRecord } from './jobs/job.ts'
import { JobEntry, JobTable } from './jobs/job-table.ts'
import { JobViews } from './jobs/views.ts'
import { Completion } from './jobs/completion.ts'
import { DeadlineActions } from './jobs/deadlines.ts'
import { JobRunner } from './jobs/runner.ts'
import { TransferServices } from './jobs/transfer-services.ts'
import { checkFilesFit } from './jobs/validate.ts'
import { sweepStaging } from './jobs/preload.ts'
import { Scheduler } from './scheduler/scheduler.ts'
import { Notifier } from './notify/notifier.ts'
import { resolveAgentOptions } from './options.ts'
import { agentStatus } from './status.ts'
import type { AgentOptions, ResolvedAgentOptions } from './options.ts'
import { JobStore } from './store/job-store.ts'
import { prepareStateDir } from './store/state-dir.ts'
import { loadJobs } from './store/recovery.ts'
import { startApiServer } from './api/server.ts'
import { MAX_EVENT_CLIENTS } from './api/events.ts'
import type { ApiServer } from './api/server.ts'
import type { PeerNode } from './peers/node.ts'
import type { PeerSharing } from './peers/sharing.ts'
import { bandwidthStatus, policyView } from './bandwidth/wan-paths.ts'
import { parsePolicy, writePolicy } from './bandwidth/policy.ts'
import { createAgentMetrics, startMetricsServer } from './metrics/index.ts'
import type { AgentMetrics, MetricsServer } from './metrics/index.ts'

export const AGENT_VERSION = '0.1.0'

/** How long `stop` lets notifications under way finish before it cuts them off (they are made again at the next start). */
const NOTIFY_STOP_GRACE_MS = 5_000

/** Events of an agent (the control contract's events; see ControlEvents in core). */
export type AgentEvents = ControlEvents

/**
 * The agent daemon: lifecycle, queries and commands (the control contract). It wires
 * the parts that do the work (see docs/ARCHITECTURE.md, "The agent's modules"): the
 * job table (jobs/job-table.ts), the scheduler (scheduler/), the job runner
 * (jobs/runner.ts), completion (jobs/completion.ts), views (jobs/views.ts), and the
 * control API (api/).
 */
export class CanopyAgent extends EventEmitter<ControlEvents> implements AgentControl {
  readonly socketPath: string
  readonly options: ResolvedAgentOptions
  private readonly logger: Logger
  private readonly store: JobStore
  /** Connections, hashing threads, buffers and WAN paths every transfer shares. */
  private readonly transfers: TransferServices
  /** Prometheus metrics (created once the jobs are loaded: their earlier bytes are not counted). */
  metrics!: AgentMetrics
  private metricsServer?: MetricsServer
  private readonly notifier: Notifier
  private readonly table: JobTable
  private readonly views: JobViews
  private readonly completion: Completion
  private readonly runner: JobRunner
  private readonly scheduler: Scheduler
  private readonly deadlines: DeadlineActions
  private api?: ApiServer
  private peer?: PeerNode
  private sharing?: PeerSharing
  private stopped = false
  private readonly startedAt: string
  private readonly now: () => number

  private constructor (options: ResolvedAgentOptions) {
    super()
    // Each event stream of the control API listens to the agent (four listeners).
    this.setMaxListeners(4 * MAX_EVENT_CLIENTS + 10)
    this.options = options
    const now = this.now = options.now
    this.startedAt = new Date(now()).toISOString()
    const logger = this.logger = options.logger
    this.socketPath = join(options.stateDir, API_SOCKET_NAME)
    const store = this.store = new JobStore(join(options.stateDir, 'db'))
    const transfers = this.transfers = new TransferServices({ logger, now }, options)
    const { blockHasher, wanPaths } = transfers
    this.notifier = new Notifier({
      store,
      logger,
      stateDir: options.stateDir,
      timeoutMs: options.notifyTimeoutMs,
      commandTimeoutMs: options.notifyCommandTimeoutMs,
      retryMinMs: options.notifyRetryMinMs,
      retryMaxMs: options.notifyRetryMaxMs,
      attempts: options.notifyAttempts,
      version: AGENT_VERSION
    })
    const emit = <K extends keyof ControlEvents>(event: K, ...args: ControlEvents[K]): void => { this.emit(event, ...args as never) }
    const sharing = (): PeerSharing | undefined => this.sharing
    this.table = new JobTable({ store, notifier: this.notifier, now, view: (e) => this.views.view(e), emit, afterCommand: () => this.scheduler.schedule(), preloadDir: join(options.stateDir, 'preload') })
    const table = this.table
    this.views = new JobViews({ table, now, limits: options })
    this.completion = new Completion({ table, store, blockHasher, logger, now, sharing })
    this.runner = new JobRunner({
      table,
      views: this.views,
      completion: this.completion,
      store,
      logger,
      now,
      blockHasher,
      backgroundHasher: () => transfers.backgroundHasher(),
      wanPaths,
      metrics: () => this.metrics,
      blockBuffers: transfers.blockBuffers,
      dispatcher: transfers.dispatcher,
      rangeClient: transfers.rangeClient,
      sharing,
      emit
    }, options)
    this.deadlines = new DeadlineActions({ table, store, completion: this.completion, scheduler: () => this.scheduler, logger, now, options, emit })
    this.scheduler = new Scheduler({
      table,
      logger,
      now,
      limits: options,
      run: async (entry, signal) => await this.runner.run(entry, signal),
      expire: (entry, kind) => this.deadlines.expire(entry, kind)
    })
  }

  /** Opens the state directory, recovers jobs, and starts the control API and the scheduler. */
  static async start (options: AgentOptions): Promise<CanopyAgent> {
    const resolved = resolveAgentOptions(options)
    // Before anything starts: a policy that does not parse stops the start with its reason.
    parsePolicy(resolved.bandwidthPolicy ?? {})
    await prepareStateDir(resolved.stateDir)
    const agent = new CanopyAgent(resolved)
    try {
      await agent.store.open()
      // The outbox first: recovery may record state changes of its own.
      await agent.notifier.load()
      for (const job of await loadJobs(agent.store, agent.logger)) {
        const entry = new JobEntry(job)
        agent.table.add(entry)
        await agent.runner.recover(entry)
      }
      agent.metrics = createAgentMetrics({ events: agent, jobs: () => agent.listJobs(), peers: () => agent.sharing?.peersView(), cache: () => agent.sharing?.cacheView(), wanPaths: () => bandwidthStatus(agent.transfers.wanPaths, agent.options.targetDelayMs, agent.now()).paths }, { version: AGENT_VERSION, startedAt: agent.now() })
      if (resolved.p2p !== undefined) {
        // Loaded only when wanted: libp2p costs ~30 MiB resident.
        const { startSharing } = await import('./peers/index.ts')
        ;({ peer: agent.peer, sharing: agent.sharing } = await startSharing({ store: agent.store, blockHasher: agent.transfers.blockHasher, backgroundHasher: () => agent.transfers.backgroundHasher(), metrics: agent.metrics, logger: agent.logger }, { stateDir: resolved.stateDir, p2p: resolved.p2p }))
      }
      // Manifests of jobs removed and of cache files evicted since the last start.
      await agent.deadlines.dropUnusedManifests(await agent.store.manifestIds())
      const stray = await sweepStaging(join(resolved.stateDir, 'preload'), new Set([...agent.table.values()].map(e => e.id)))
      if (stray.length > 0) agent.logger.info('removed the staging files of preload jobs the agent no longer has', { jobs: stray.join(' ') })
      if (resolved.apiListen !== undefined && (resolved.apiToken ?? '') === '') {
        throw new CanopyError('ERR_INVALID_ARGUMENT', 'The TCP listener of the control API needs a bearer token (--api-token-file): it is never open without one')
      }
      agent.api = await startApiServer({ control: agent, metrics: agent.metrics, logger: agent.logger, limits: resolved }, {
        socketPath: agent.socketPath,
        ...(resolved.apiListen !== undefined ? { tcp: { listen: resolved.apiListen, token: resolved.apiToken! } } : {})
      })
      if (resolved.metricsListen !== undefined) agent.metricsServer = await startMetricsServer({ metrics: agent.metrics, logger: agent.logger }, { listen: resolved.metricsListen })
    } catch (err) {
      await agent.api?.close()
      // The metrics listen to the agent's events: made before the failure, they stop too.
      ;(agent.metrics as AgentMetrics | undefined)?.close()
      // Everything the constructor started goes too (the hashing workers' ports would keep the process alive).
      await agent.peer?.stop()
      await agent.notifier.stop(0)
      await agent.store.close()
      await agent.transfers.close()
      throw err
    }
    agent.logger.info('agent started', { stateDir: resolved.stateDir, jobs: agent.table.size })
    // Jobs that were transferred but not yet completed when the agent went down.
    for (const entry of agent.table.values()) {
      const job = entry.record
      if (job.state === 'transferred' && job.autoComplete) {
        await agent.table.withJob(job.id, undefined, async () => {
          if (job.state === 'transferred') await agent.completion.completeJob(entry)
        }).catch((err: unknown) => agent.logger.error('could not complete a job at start', { jobId: job.id, err: String(err) }))
      }
    }
    agent.scheduler.schedule()
    return agent
  }

  /** Stops transfers (they resume on next start), the API, and closes the store. */
  async stop (): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.scheduler.pause()
    await this.api?.close()
    await this.metricsServer?.close()
    this.metrics.close()
    await this.scheduler.stopRuns()
    await this.table.flush()
    await this.notifier.stop(NOTIFY_STOP_GRACE_MS)
    await this.peer?.stop()
    await this.transfers.close()
    await this.store.close()
    this.logger.info('agent stopped')
  }

  // ---- queries -------------------------------------------------------------

  status (_options?: AbortOptions): AgentStatus {
    return agentStatus({
      version: AGENT_VERSION,
      pid: process.pid,
      stateDir: this.options.stateDir,
      startedAt: this.startedAt,
      notifications: { pending: this.notifier.pending },
      bandwidth: bandwidthStatus(this.transfers.wanPaths, this.options.targetDelayMs, this.now()),
      bytes: { ...this.metrics.totals(), since: this.startedAt },
      ...(this.metricsServer !== undefined ? { metricsListen: this.metricsServer.address } : {}),
      ...(this.api?.tcpAddress !== undefined ? { apiTcp: this.api.tcpAddress } : {}),
      ...(this.store.recovery !== undefined ? { storeRecovery: this.store.recovery } : {})
    }, this.table.records(), this.peer, this.options.p2p)
  }

  policy (_options?: AbortOptions): PolicyView {
    return policyView(this.transfers.wanPaths, this.now())
  }

  /** Replaces the bandwidth policy; one that does not parse is refused (ERR_INVALID_POLICY, naming the key) and the old one stays. Transfers follow it from their next read. */
  setPolicy (body: unknown, _options?: AbortOptions): PolicyView {
    const policy = parsePolicy(body)
    this.transfers.wanPaths.setPolicy(policy)
    this.logger.info('bandwidth policy changed', { policy: JSON.stringify(writePolicy(policy)) })
    return this.policy()
  }

  peers (_options?: AbortOptions): PeersView {
    return this.requireSharing().peersView()
  }

  cache (_options?: AbortOptions): CacheView {
    return this.requireSharing().cacheView()
  }

  async clearCache (options?: AbortOptions): Promise<CacheView> {
    throwIfAborted(options?.signal)
    return await this.requireSharing().clearCache()
  }

  private requireSharing (): PeerSharing {
    if (this.sharing === undefined) throw new CanopyError('ERR_NO_PEER_NODE', 'This agent runs no peer node (it was started with --no-p2p): it has no peers and no cache')
    return this.sharing
  }

  listJobs (_options?: AbortOptions): JobView[] {
    return this.views.list()
  }

  /** A job's full id from its id or a unique prefix of it (at least 4 characters). */
  resolveJobId (idOrPrefix: string): string {
    return this.table.resolveId(idOrPrefix)
  }

  getJob (id: string, _options?: AbortOptions): JobView {
    return this.views.view(this.table.require(id))
  }

  // ---- commands ------------------------------------------------------------

  /** Creates a job from a checked request (the API server validates request bodies: jobs/validate.ts). */
  async createJob (req: CreateJobRequest, options?: AbortOptions): Promise<JobView> {
    throwIfAborted(options?.signal)
    // A preload job fills the peer cache: without a peer node there is none.
    if (req.type === 'preload') this.requireSharing()
    const entry = await this.table.create(req, this.options.maxJobs)
    this.logger.info('job created', { jobId: entry.id, files: entry.record.files.length, priority: entry.record.priority })
    this.scheduler.schedule()
    return this.views.view(entry)
  }


  async suspend (id: string, options?: AbortOptions): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      const job = entry.record
      requireNotFinal(job, 'suspend')
      if (job.state === 'transferred') throw new CanopyError('ERR_INVALID_STATE', 'The job is transferred: complete or cancel it')
      await this.scheduler.halt(entry)
      // The runner may have finished while it was being stopped.
      requireNotFinal(job, 'suspend')
      if ((job.state as JobState) === 'transferred') {
        // Too late to suspend: the runner skipped auto-completing because this stop
        // was under way, so an auto-complete job completes here instead of staying
        // transferred until the next start.
        if (job.autoComplete) await this.completion.completeJob(entry)
        throw new CanopyError('ERR_INVALID_STATE', 'The job finished transferring before it could be suspended')
      }
      await this.table.setState(entry, 'suspended')
      return this.views.view(entry)
    })
  }

  async resume (id: string, options?: AbortOptions): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      const job = entry.record
      requireNotFinal(job, 'resume')
      if (job.state === 'suspended' || job.state === 'error' || job.state === 'transient_error') {
        job.error = undefined
        job.retryAt = undefined
        job.retryCount = 0
        // A resumed job starts its time limits over, and queues behind the jobs waiting now.
        job.activeMs = 0
        job.activeSince = undefined
        job.queuedAt = this.now()
        await this.table.setState(entry, 'queued')
      }
      return this.views.view(entry)
    })
  }

  async cancel (id: string, options?: AbortOptions): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      requireNotFinal(entry.record, 'cancel')
      await this.scheduler.halt(entry)
      requireNotFinal(entry.record, 'cancel')
      await this.completion.cancelHalted(entry)
      return this.views.view(entry)
    })
  }

  /**
   * Appends files to a suspended job (BITS's AddFile). They are transferred after
   * the job's other files, and become visible with them when the job completes.
   */
  async addFiles (id: string, files: CreateJobFile[], options?: AbortOptions): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      const job = entry.record
      if (job.state !== 'suspended') {
        throw new CanopyError('ERR_INVALID_STATE', `Files can be added only to a suspended job, and this one is ${job.state}${FINAL_STATES.includes(job.state) ? '' : ': suspend it first'}`)
      }
      // A completion that failed half-way put some files in place: the rest of the job must follow them, not grow.
      if (job.files.some(f => f.visible === true)) throw new CanopyError('ERR_INVALID_STATE', 'Some files of this job are already in place: complete it, or create another job')
      checkFilesFit(files, this.options, job.files.map(f => f.path), job.type)
      job.files.push(...files.map(f => fileRecord(job.id, { ...f, path: f.path! })))
      entry.progress.push(...files.map(() => undefined))
      job.modifiedAt = new Date(this.now()).toISOString()
      await this.table.persist(entry)
      this.logger.info('files added to a job', { jobId: id, added: files.length, files: job.files.length })
      this.emit('job:updated', this.views.view(entry))
      return this.views.view(entry)
    })
  }

  /**
   * Changes a job's priority. The scheduler runs again at once (withJob): a job
   * raised to foreground starts now; a waiting job raised above a running one
   * preempts it when the background slots are full; a running job lowered below a
   * waiting one is preempted; the order of waiting jobs follows the new priorities.
   */
  async setPriority (id: string, priority: JobPriority, options?: AbortOptions): Promise<JobView> {
    return await this.updateSetting(id, options, 'change priority', (job) => {
      if (job.priority === priority) return undefined
      job.priority = priority
      return { priority }
    })
  }

  /** Sets (bytes/s; 0 blocks) or removes (null) a job's own cap; a running transfer follows it from its next read. */
  async setRateLimit (id: string, rateLimit: number | null, options?: AbortOptions): Promise<JobView> {
    return await this.updateSetting(id, options, 'change its rate limit', (job) => {
      job.rateLimit = rateLimit ?? undefined
      return { rateLimit: rateLimit ?? 'none' }
    })
  }

  /** Changes a setting of a job that is not finished (`change` says what it changed, for the log, or undefined: nothing), then records and announces it. */
  private async updateSetting (id: string, options: AbortOptions | undefined, verb: string, change: (job: JobRecord) => Record<string, unknown> | undefined): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      requireNotFinal(entry.record, verb)
      const changed = change(entry.record)
      if (changed !== undefined) {
        entry.record.modifiedAt = new Date(this.now()).toISOString()
        await this.table.persist(entry)
        this.logger.info('job setting changed', { jobId: id, ...changed })
        this.emit('job:updated', this.views.view(entry))
      }
      return this.views.view(entry)
    })
  }

  /** Makes the files of a transferred job visible at their destinations (atomic renames). */
  async complete (id: string, options?: AbortOptions): Promise<JobView> {
    return await this.table.withJob(id, options, async (entry) => {
      const job = entry.record
      if (job.state !== 'transferred' && !(job.state === 'error' && job.files.every(f => f.done))) {
        throw new CanopyError('ERR_INVALID_STATE', `The job is ${job.state}: only a transferred job can be completed`)
      }
      if (!await this.completion.completeJob(entry)) throw new CanopyError(job.error!.code, job.error!.message)
      return this.views.view(entry)
    })
  }
}

function requireNotFinal (job: JobRecord, verb: string): void {
  if (FINAL_STATES.includes(job.state)) {
    throw new CanopyError('ERR_INVALID_STATE', `The job is ${job.state}: it cannot ${verb} any more`)
  }
}
