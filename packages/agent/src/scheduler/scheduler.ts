/**
 * The scheduler's side effects: it runs the policy (policy.ts) once per tick and
 * acts on the plan: deadline actions, launches (one runner per transferring job),
 * yields, and a timer for the next thing due. Ticks are coalesced and run on the
 * agent's one thread.
 */
import { CanopyError } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { SchedulerYield } from '../errors.ts'
import type { JobRecord } from '../jobs/job.ts'
import type { JobEntry, JobTable } from '../jobs/job-table.ts'
import { runs } from '../jobs/views.ts'
import { plan } from './policy.ts'
import type { CapsInput, Expiry, SchedulerLimits, YieldReason } from './policy.ts'

/**
 * Longest sleep of the scheduler's timer: deadlines can be days away (beyond what
 * setTimeout holds, 2^31 - 1 ms), and a clock that jumps is noticed within this.
 */
const MAX_TIMER_MS = 3_600_000

export interface SchedulerComponents {
  table: JobTable
  logger: Logger
  now: () => number
  limits: SchedulerLimits
  /** Transfers a job until it ends or the signal aborts (the job runner). */
  run: (entry: JobEntry, signal: AbortSignal) => Promise<void>
  /** Acts on a passed deadline; must take the job's lock before it returns (JobTable.withJob). */
  expire: (entry: JobEntry, kind: Expiry) => void
  /** The bandwidth policy's caps in force now (a cap of 0 keeps jobs queued); none: nothing blocks. */
  caps?: () => CapsInput
  /** After each decision, with the jobs running now (e.g. the agent's CPU priority follows them). */
  afterTick?: (running: JobRecord[]) => void
}

export class Scheduler {
  private readonly components: SchedulerComponents
  private wakeTimer?: NodeJS.Timeout
  private tickQueued = false
  private stopped = false

  constructor (components: SchedulerComponents) {
    this.components = components
  }

  /** Asks the scheduling loop to run once more (coalesced). */
  schedule (): void {
    if (this.tickQueued || this.stopped) return
    this.tickQueued = true
    setImmediate(() => {
      this.tickQueued = false
      this.tick()
    })
  }

  /** Stops scheduling: no tick runs from now on. */
  pause (): void {
    this.stopped = true
    clearTimeout(this.wakeTimer)
  }

  /** Stops every runner; resolves once they have let go of their files (they resume at the next start). */
  async stopRuns (): Promise<void> {
    const running = [...this.components.table.values()].flatMap(e => e.run ?? [])
    for (const r of running) r.controller.abort(new CanopyError('ERR_AGENT_STOPPING', 'the agent is stopping'))
    await Promise.all(running.map(async r => await r.done))
  }

  /** Stops a job's runner, if any, and waits until it has let go of its files. */
  async halt (entry: JobEntry, why = 'stopped by the user'): Promise<void> {
    const run = entry.run
    if (run === undefined) return
    run.controller.abort(new CanopyError('ERR_ABORTED', why))
    await run.done
  }

  private tick (): void {
    if (this.stopped) return
    const { table, limits } = this.components
    const now = this.components.now()
    const held = new Map<string, number>()
    const locked = new Set<string>()
    for (const entry of table.values()) {
      if (entry.lock !== undefined) locked.add(entry.id)
      if (entry.expiryHeldUntil > 0) held.set(entry.id, entry.expiryHeldUntil)
    }
    const decided = plan({ jobs: table.records(), running: runs(table), locked, held, now, limits, ...(this.components.caps !== undefined ? { caps: this.components.caps() } : {}) })
    for (const { job, kind } of decided.expire) this.components.expire(table.require(job.id), kind)
    for (const job of decided.launch) this.launch(table.require(job.id), now)
    for (const y of decided.yield) this.yieldSlot(table.require(y.job.id), y.why, y.for)
    this.components.afterTick?.([...table.values()].filter(e => e.run !== undefined).map(e => e.record))
    clearTimeout(this.wakeTimer)
    if (decided.wakeAt !== undefined) {
      this.wakeTimer = setTimeout(() => this.schedule(), Math.min(MAX_TIMER_MS, decided.wakeAt - now + 5))
    }
  }

  private yieldSlot (entry: JobEntry, why: YieldReason, to: JobRecord | undefined): void {
    const job = entry.record
    const message = { preempted: 'job preempted by a higher-priority job', slice: 'time slice over; job yields its slot', blocked: 'job blocked by a cap of 0; back to the queue' }[why]
    this.components.logger.info(message, { jobId: job.id, priority: job.priority, ...(to !== undefined ? { for: to.id, forPriority: to.priority } : {}) })
    const run = entry.run!
    run.stopping = true
    run.controller.abort(new SchedulerYield(why))
  }

  private launch (entry: JobEntry, now: number): void {
    const controller = new AbortController()
    const done = this.components.run(entry, controller.signal).catch((err: unknown) => {
      // Only a failure to record the failure lands here (e.g. the state disk is full).
      this.components.logger.error('job runner failed', { jobId: entry.id, err: String((err as Error)?.stack ?? err) })
    }).finally(() => {
      entry.run = undefined
      this.schedule()
    })
    entry.run = { controller, done, startedAt: now, stopping: false }
  }
}
