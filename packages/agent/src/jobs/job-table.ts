/**
 * The job table: one entry per job (its record and everything the agent keeps about
 * it while it lives), the lock that runs commands one at a time per job, and the
 * persistence of records (ordered writes, state changes with the notifications they
 * owe). All job state is mutated on the agent's one thread.
 */
import { randomUUID } from 'node:crypto'
import { CanopyError, FINAL_STATES, throwIfAborted } from '@canopy/core'
import type { AbortOptions, ControlEvents, CreateJobRequest, JobState, JobView } from '@canopy/core'
import type { Notifier } from '../notify/notifier.ts'
import type { JobStore, NotificationRecord } from '../store/job-store.ts'
import type { PlainProgress } from '../transfer/plain-transfer.ts'
import { ACTIVE_STATES, newJobRecord } from './job.ts'
import { LimitCode } from './validate.ts'
import type { FileProgress, JobRecord } from './job.ts'

export type Progress = FileProgress | PlainProgress

/** A transfer under way: one per running job (see scheduler.ts). */
export interface Run {
  controller: AbortController
  done: Promise<void>
  /** When this run started: its time slice is counted from here. */
  startedAt: number
  /** The scheduler asked it to yield; its slot is about to be free. */
  stopping: boolean
}

/** The last rate sample of a job (see views.ts, sampleRate). */
export interface RateSample {
  at: number
  bytes: number
  rate?: number
}

/** One job: its persisted record, and what the agent keeps about it in memory. */
import type { PathLease } from '../bandwidth/wan-paths.ts'

export class JobEntry {
  readonly record: JobRecord
  /** Per file: its progress, once loaded or started (undefined until then). */
  readonly progress: Array<Progress | undefined>
  /** Its runner, while it transfers. */
  run?: Run
  /** Its share of the WAN path to its origin while a file transfers (why it runs slower than it could). */
  lease?: PathLease
  /** The tail of the chain of writes of its record (see JobTable.persist). */
  writes?: Promise<void>
  /** The tail of the chain of commands on it (see JobTable.withJob). */
  lock?: Promise<void>
  /** A completion under way: auto-complete and a user's complete get its one outcome. */
  completing?: Promise<boolean>
  /** When the last progress event went out, and the record was last written for progress. */
  lastProgressEvent = 0
  lastPersist = 0
  rate?: RateSample
  /** Its deadline could not be acted on (the store failed): not tried again before this time, so a broken disk is not a busy loop. */
  expiryHeldUntil = 0

  constructor (record: JobRecord) {
    this.record = record
    this.progress = record.files.map(() => undefined)
  }

  get id (): string {
    return this.record.id
  }
}

export interface JobTableComponents {
  store: JobStore
  notifier: Notifier
  now: () => number
  /** The job's view, as events and notifications carry it. */
  view: (entry: JobEntry) => JobView
  emit: <K extends keyof ControlEvents>(event: K, ...args: ControlEvents[K]) => void
  /** Called after every command on a job (the scheduler looks again). */
  afterCommand: () => void
  /** Where preload jobs stage their files (`<state-dir>/preload`). */
  preloadDir: string
}

export class JobTable {
  private readonly entries = new Map<string, JobEntry>()
  private readonly components: JobTableComponents
  /** Creations under way (checked, not yet in the table): counted against the limit of jobs. */
  private creating = 0

  constructor (components: JobTableComponents) {
    this.components = components
  }

  get size (): number {
    return this.entries.size
  }

  values (): IterableIterator<JobEntry> {
    return this.entries.values()
  }

  * records (): IterableIterator<JobRecord> {
    for (const entry of this.entries.values()) yield entry.record
  }

  get (id: string): JobEntry | undefined {
    return this.entries.get(id)
  }

  /**
   * Makes a job from a checked request: durable first, then in the table (the
   * scheduler sees it only then), and announced. `maxJobs` bounds the unfinished
   * jobs, creations under way included (ERR_TOO_MANY_JOBS).
   */
  async create (req: CreateJobRequest, maxJobs: number): Promise<JobEntry> {
    const live = [...this.records()].filter(j => !FINAL_STATES.includes(j.state)).length + this.creating
    if (live >= maxJobs) {
      throw new CanopyError(LimitCode.TooManyJobs, `The agent already holds ${live} unfinished jobs, its limit (--max-jobs ${maxJobs}): complete or cancel some first`)
    }
    const entry = new JobEntry(newJobRecord(randomUUID(), req, this.components.now(), this.components.preloadDir))
    this.creating++
    try {
      await this.persistTransition(entry)
    } finally {
      this.creating--
    }
    this.add(entry)
    this.components.emit('job:state', this.components.view(entry))
    return entry
  }

  add (entry: JobEntry): void {
    this.entries.set(entry.id, entry)
  }

  delete (id: string): void {
    this.entries.delete(id)
  }

  require (id: string): JobEntry {
    const entry = this.entries.get(id)
    if (entry === undefined) throw new CanopyError('ERR_JOB_NOT_FOUND', `No job with id ${id}: list jobs with canopy jobs`)
    return entry
  }

  /**
   * A job's full id from its id or a unique prefix of it (at least 4 characters, as
   * `canopy watch` and the examples show 8): people type the short form.
   */
  resolveId (idOrPrefix: string): string {
    if (this.entries.has(idOrPrefix)) return idOrPrefix
    if (idOrPrefix.length >= 4 && /^[0-9a-f-]+$/i.test(idOrPrefix)) {
      const prefix = idOrPrefix.toLowerCase()
      const matches = [...this.entries.keys()].filter(id => id.startsWith(prefix))
      if (matches.length === 1) return matches[0]
      if (matches.length > 1) throw new CanopyError('ERR_AMBIGUOUS_JOB_ID', `${matches.length} jobs have ids starting with ${idOrPrefix}: give more of the id`)
    }
    throw new CanopyError('ERR_JOB_NOT_FOUND', `No job with id ${idOrPrefix}${idOrPrefix.length < 4 ? ' (a prefix of an id needs at least 4 characters)' : ''}: list jobs with canopy jobs`)
  }

  /**
   * Runs a command on a job, one at a time per job. While a command runs the
   * scheduler leaves the job alone, so a cancel cannot be overtaken by a launch.
   * The lock is taken before this returns its promise (the scheduler counts on it).
   */
  async withJob<T> (id: string, options: AbortOptions | undefined, command: (entry: JobEntry) => Promise<T>): Promise<T> {
    throwIfAborted(options?.signal)
    const entry = this.require(id)
    const previous = entry.lock ?? Promise.resolve()
    let release!: () => void
    const mine = previous.then(async () => await new Promise<void>(resolve => { release = resolve }))
    entry.lock = mine
    try {
      await previous
      return await command(entry)
    } finally {
      release()
      if (entry.lock === mine) entry.lock = undefined
      this.components.afterCommand()
    }
  }

  /**
   * Records a state change. It also keeps the clocks of the time limits: entering
   * connecting, transferring or transient_error from another state starts the
   * active time and the no-progress clock; leaving them adds the active time up
   * to `activeUntil` (default now) and stops the no-progress clock.
   */
  async setState (entry: JobEntry, state: JobState, activeUntil?: number): Promise<void> {
    const job = entry.record
    const now = this.components.now()
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
    await this.persistTransition(entry)
    this.components.emit('job:state', this.components.view(entry))
  }

  /** Writes a job that just changed state together with the notifications the change owes, then starts delivering them. */
  async persistTransition (entry: JobEntry): Promise<void> {
    const { notifier } = this.components
    const owed = notifier.owe(entry.record, this.components.view(entry))
    try {
      await this.persist(entry, owed)
    } catch (err) {
      notifier.forget(owed)
      throw err
    }
    notifier.enqueue(owed)
  }

  /**
   * Writes a job record; writes of one job are chained so that they land in order
   * and the last one wins. A failed write rejects (the caller's operation fails);
   * the chain itself carries on.
   */
  async persist (entry: JobEntry, notifications: readonly NotificationRecord[] = []): Promise<void> {
    const previous = entry.writes ?? Promise.resolve()
    const next = previous.then(async () => await this.components.store.putJob(entry.record, notifications))
    const settled = next.catch(() => {})
    entry.writes = settled
    try {
      await next
    } finally {
      if (entry.writes === settled) entry.writes = undefined
    }
  }

  /** Resolves when every write issued so far has landed (or failed). */
  async flush (): Promise<void> {
    await Promise.all([...this.entries.values()].map(async e => await e.writes))
  }
}
