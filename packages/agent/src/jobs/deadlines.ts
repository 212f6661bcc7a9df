/**
 * What the scheduler does to a job by itself when a deadline passes (policy.ts says
 * which and when): fail it (no progress, maximum time), cancel it (inactivity), or
 * remove it from the list (retention), as a command on the job. Also the sweep of
 * manifests no job and no cached file needs.
 */
import { CanopyError, FINAL_STATES, formatDuration } from '@canopy/core'
import type { ControlEvents, Logger } from '@canopy/core'
import { JobErrorCode } from '../errors.ts'
import type { ResolvedAgentOptions } from '../options.ts'
import { deadlineOf, limitsOf } from '../scheduler/policy.ts'
import type { Expiry } from '../scheduler/policy.ts'
import type { Scheduler } from '../scheduler/scheduler.ts'
import type { JobStore } from '../store/job-store.ts'
import type { Completion } from './completion.ts'
import { ACTIVE_STATES } from './job.ts'
import type { JobEntry, JobTable } from './job-table.ts'

/** Wait before acting again on a deadline whose action failed (a store error). */
const EXPIRY_RETRY_MS = 60_000

export interface DeadlineActionsComponents {
  table: JobTable
  store: JobStore
  completion: Completion
  /** The scheduler (made after this: it calls expire). */
  scheduler: () => Scheduler
  logger: Logger
  now: () => number
  options: ResolvedAgentOptions
  emit: <K extends keyof ControlEvents>(event: K, ...args: ControlEvents[K]) => void
}

export class DeadlineActions {
  private readonly c: DeadlineActionsComponents

  constructor (components: DeadlineActionsComponents) {
    this.c = components
  }

  /** Acts on a passed deadline, as a command on the job (one at a time with the user's); the lock is taken before this returns. */
  expire (entry: JobEntry, kind: Expiry): void {
    this.c.table.withJob(entry.id, undefined, async (entry) => {
      const job = entry.record
      // A command or progress may have moved the deadline since the tick saw it.
      const deadline = deadlineOf(job, entry.run !== undefined, this.c.options)
      if (deadline === undefined || deadline.kind !== kind || deadline.at > this.c.now()) return
      if (kind === 'retention') {
        await this.removeJob(entry)
        return
      }
      await this.c.scheduler().halt(entry, `stopped by the scheduler: ${kind}`)
      if (FINAL_STATES.includes(job.state)) return
      if (kind === 'inactive') {
        this.c.logger.info('job cancelled after inactivity', { jobId: job.id, state: job.state })
        await this.c.completion.cancelHalted(entry, `cancelled: not modified for ${formatDuration(this.c.options.inactiveJobTimeoutMs)} (the agent's inactivity limit)`)
        return
      }
      // The runner may have finished while it was being stopped.
      if (!ACTIVE_STATES.includes(job.state)) return
      const limits = limitsOf(job, this.c.options)
      const last = job.error?.transient === true ? ` (last error: ${job.error.message})` : ''
      job.error = kind === 'no-progress'
        ? {
            code: JobErrorCode.NoProgress,
            message: `No progress for ${formatDuration(limits.noProgressTimeoutMs)}${last}: check the origin and the network, then resume the job`,
            transient: false,
            at: new Date(this.c.now()).toISOString()
          }
        : {
            code: JobErrorCode.MaxTime,
            message: `The job did not finish within its maximum download time of ${formatDuration(limits.maxDownloadTimeMs)}${last}: resume it to try again (the time starts over)`,
            transient: false,
            at: new Date(this.c.now()).toISOString()
          }
      this.c.logger.warn('job failed', { jobId: job.id, code: job.error.code, reason: job.error.message })
      await this.c.table.setState(entry, 'error')
    }).catch((err: unknown) => {
      if (err instanceof CanopyError && err.code === 'ERR_JOB_NOT_FOUND') return
      this.c.logger.error('could not act on a job\'s deadline; trying again in a minute', { jobId: entry.id, kind, err: String(err) })
      entry.expiryHeldUntil = this.c.now() + EXPIRY_RETRY_MS
    })
  }

  /**
   * Deletes those of `candidates` that no job's file and no cache record needs any
   * more (a manifest is kept while its file is cached: peers are served from it).
   */
  async dropUnusedManifests (candidates: string[]): Promise<void> {
    if (candidates.length === 0) return
    const cached = new Set<string>((await this.c.store.cacheRecords()).map(r => r.manifestId))
    const usedByJobs = (): Set<string> => new Set([...this.c.table.records()].flatMap(job => job.files.flatMap(f => f.manifestId ?? [])))
    // The set is made again right before each delete is issued, with no await in
    // between: a job that started using the manifest meanwhile (the runner sets the
    // file's manifestId before it stores the manifest) keeps it. One pass over the
    // jobs per delete, not per candidate: the start-up sweep sees every manifest.
    let used = usedByJobs()
    for (const id of new Set(candidates)) {
      if (cached.has(id) || used.has(id)) continue
      used = usedByJobs()
      if (!used.has(id)) await this.c.store.deleteManifest(id)
    }
  }

  /** Removes a finished job from the store and the list (retention). Notifications it still owes stay in the outbox. */
  private async removeJob (entry: JobEntry): Promise<void> {
    const job = entry.record
    await entry.writes
    await this.c.store.deleteJob(job.id)
    this.c.table.delete(job.id)
    await this.dropUnusedManifests(job.files.flatMap(f => f.manifestId === undefined ? [] : [f.manifestId]))
    this.c.logger.info('finished job removed after its retention', { jobId: job.id, state: job.state })
    this.c.emit('job:removed', job.id)
  }
}
