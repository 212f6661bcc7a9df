/**
 * The scheduling policy, pure: which jobs transfer, which yield their slot, which
 * deadlines have passed, and when to look again, from the jobs, their runs and the
 * time. No I/O and no clock of its own: scheduler.ts acts on its plans, and the unit
 * tests (test/scheduler-policy.test.ts) call it with made-up jobs and times.
 */
import { FINAL_STATES } from '@canopy/core'
import type { JobLimits, JobPriority } from '@canopy/core'
import { ACTIVE_STATES } from '../jobs/job.ts'
import type { JobRecord } from '../jobs/job.ts'
import type { ResolvedAgentOptions } from '../options.ts'
import { describeCap } from '../bandwidth/policy.ts'
import type { BackgroundPriority, CapInForce } from '../bandwidth/policy.ts'

const PRIORITY_RANK: Record<JobPriority, number> = { foreground: 0, high: 1, normal: 2, low: 3 }

/** What the scheduler does to a job by itself when a deadline passes. */
export type Expiry = 'no-progress' | 'max-time' | 'inactive' | 'retention'

/** Why the scheduler stops a running job that did nothing wrong. */
export type YieldReason = 'preempted' | 'slice' | 'blocked'

/** The bandwidth policy's caps in force, as the scheduler needs them (bandwidth/policy.ts; WanPaths.capsFor). */
export interface CapsInput {
  /** The cap of 0 that blocks background jobs of `priority` now, if any. */
  blocking: (priority: BackgroundPriority) => CapInForce | undefined
  /** When the caps in force next change by themselves (a work-hours edge, on the `now` clock); undefined: never. */
  changesAt?: number
}

/**
 * Why `job` may not transfer now, in plain words; undefined when it may. A cap of 0
 * (the policy's for its priority or for all background jobs, or the job's own rate
 * limit) blocks it: it waits in the queue, holding no slot, until the cap is lifted.
 */
export function blockedReason (job: Pick<JobRecord, 'priority' | 'rateLimit'>, caps: CapsInput | undefined): string | undefined {
  if (job.rateLimit === 0) return 'blocked: this job\'s rate limit is 0'
  if (job.priority === 'foreground' || caps === undefined) return undefined
  const cap = caps.blocking(job.priority)
  return cap === undefined ? undefined : describeCap(cap)
}

/** The agent options the policy reads. */
export type SchedulerLimits = Pick<ResolvedAgentOptions, 'maxBackgroundJobs' | 'timeSliceMs' | 'retentionMs' | 'inactiveJobTimeoutMs' |
'retryMinMs' | 'retryMaxMs' | 'noProgressTimeoutMs' | 'maxDownloadTimeMs'>

/** What the policy needs to know of a run. */
export interface RunView {
  /** When this run started: its time slice is counted from here. */
  startedAt: number
  /** The scheduler asked it to yield; its slot is about to be free. */
  stopping: boolean
}

export interface PlanInput {
  jobs: Iterable<JobRecord>
  /** Runs by job id. */
  running: ReadonlyMap<string, RunView>
  /** Jobs under a command: the scheduler leaves them alone. */
  locked: ReadonlySet<string>
  /** Jobs whose deadline action failed: not tried again before the time given. */
  held: ReadonlyMap<string, number>
  now: number
  limits: SchedulerLimits
  /** The policy's caps in force now; none: nothing blocks. */
  caps?: CapsInput
}

export interface Plan {
  /** Deadlines passed, to act on (as commands, so one at a time with the user's). */
  expire: Array<{ job: JobRecord, kind: Expiry }>
  /** Jobs to start, in queue order. */
  launch: JobRecord[]
  /** Running jobs to stop for a waiting one (or because a cap of 0 blocks them: no `for`); they go back to the queue. */
  yield: Array<{ job: JobRecord, why: YieldReason, for?: JobRecord }>
  /** When something will next be due (a deadline, a retry, a time slice's end); undefined: nothing. */
  wakeAt?: number
}

export function rank (job: Pick<JobRecord, 'priority'>): number {
  return PRIORITY_RANK[job.priority]
}

/** Queue order: priority, then place in the queue (queuedAt; older records: creation), then creation. */
export function byQueue (a: JobRecord, b: JobRecord): number {
  return rank(a) - rank(b) || (a.queuedAt ?? Date.parse(a.createdAt)) - (b.queuedAt ?? Date.parse(b.createdAt)) || a.createdAt.localeCompare(b.createdAt)
}

/** Queued, or in transient_error with its retry due. */
export function isReady (job: JobRecord, now: number): boolean {
  return job.state === 'queued' || (job.state === 'transient_error' && Date.parse(job.retryAt ?? '') <= now)
}

/** The retry and time limits in force for a job: its own, else the agent's. */
export function limitsOf (job: JobRecord, o: SchedulerLimits): JobLimits {
  return {
    retryMinMs: job.limits?.retryMinMs ?? o.retryMinMs,
    retryMaxMs: job.limits?.retryMaxMs ?? o.retryMaxMs,
    noProgressTimeoutMs: job.limits?.noProgressTimeoutMs ?? o.noProgressTimeoutMs,
    maxDownloadTimeMs: job.limits?.maxDownloadTimeMs ?? o.maxDownloadTimeMs
  }
}

/** The next thing the scheduler must do to a job by itself, and when. */
export function deadlineOf (job: JobRecord, running: boolean, o: SchedulerLimits): { kind: Expiry, at: number } | undefined {
  if (FINAL_STATES.includes(job.state)) {
    return { kind: 'retention', at: Date.parse(job.completedAt ?? job.modifiedAt) + o.retentionMs }
  }
  if (ACTIVE_STATES.includes(job.state) && job.activeSince !== undefined) {
    const limits = limitsOf(job, o)
    const stall = { kind: 'no-progress' as const, at: (job.progressAt ?? job.activeSince) + limits.noProgressTimeoutMs }
    if (limits.maxDownloadTimeMs === 0) return stall
    const max = { kind: 'max-time' as const, at: job.activeSince + limits.maxDownloadTimeMs - (job.activeMs ?? 0) }
    return max.at < stall.at ? max : stall
  }
  // Running jobs modify their record as they progress; a stuck one meets its no-progress timeout.
  if (running) return undefined
  return { kind: 'inactive', at: Date.parse(job.modifiedAt) + o.inactiveJobTimeoutMs }
}

/**
 * One decision of the scheduler (run after every creation, command, runner end and timer):
 * 1. deadlines: jobs past their no-progress timeout, maximum download time,
 *    inactivity limit or retention are to be dealt with;
 * 2. launches: foreground jobs at once; background jobs by priority, then queue
 *    order, while fewer than maxBackgroundJobs run;
 * 3. making room for background jobs that still wait: a strictly higher priority
 *    preempts the weakest running job; an equal (or higher) one takes the slot of
 *    a job whose time slice is over (see makeRoom);
 * 4. when the next thing will be due, the clocks of the jobs launched now included.
 * Jobs a cap of 0 blocks (blockedReason) are neither launched nor counted as
 * waiting for a slot; running ones yield theirs. The next work-hours edge is a
 * time to look again.
 */
export function plan (input: PlanInput): Plan {
  const { running, held, now, limits } = input
  const jobs = [...input.jobs]
  const byId = new Map(jobs.map(j => [j.id, j]))
  let wake = Infinity
  const wakeAt = (at: number): void => { if (at > now && at < wake) wake = at }

  // Expire first: a job being expired is locked (its action runs as a command), so it is not launched below.
  const locked = new Set(input.locked)
  const expire: Plan['expire'] = []
  for (const job of jobs) {
    if (locked.has(job.id) || (held.get(job.id) ?? 0) > now) continue
    const deadline = deadlineOf(job, running.has(job.id), limits)
    if (deadline !== undefined && deadline.at <= now) {
      expire.push({ job, kind: deadline.kind })
      locked.add(job.id)
    }
  }

  const blocked = (job: JobRecord): boolean => blockedReason(job, input.caps) !== undefined
  const ready = jobs.filter(j => !running.has(j.id) && !locked.has(j.id) && isReady(j, now) && !blocked(j)).sort(byQueue)
  // Runs a cap of 0 now blocks go back to the queue (their slots count as being freed).
  const unblock: Plan['yield'] = []
  for (const [id, run] of running) {
    const job = byId.get(id)
    if (job !== undefined && !run.stopping && !locked.has(id) && ['connecting', 'transferring'].includes(job.state) && blocked(job)) unblock.push({ job, why: 'blocked' })
  }
  const stopped = new Set(unblock.map(y => y.job.id))
  const background = [...running].filter(([id]) => byId.get(id)?.priority !== 'foreground')
    .map(([id, run]): [string, RunView] => [id, stopped.has(id) ? { ...run, stopping: true } : run])
  let busy = background.length
  const launch: JobRecord[] = []
  const waiting: JobRecord[] = []
  for (const job of ready) {
    if (job.priority === 'foreground') launch.push(job)
    else if (busy < limits.maxBackgroundJobs) {
      launch.push(job)
      busy++
    } else {
      waiting.push(job)
    }
  }
  const yields = [...unblock, ...waiting.length > 0 ? makeRoom(waiting, background, byId, now, limits.timeSliceMs, wakeAt) : []]
  if (input.caps?.changesAt !== undefined) wakeAt(input.caps.changesAt)

  // A launched job's clocks start now (it enters connecting): its deadlines count too.
  const launched = new Set(launch.map(j => j.id))
  for (const job of jobs) {
    const isRunning = running.has(job.id) || launched.has(job.id)
    if (job.state === 'transient_error' && !isRunning) wakeAt(Date.parse(job.retryAt ?? ''))
    if (locked.has(job.id)) continue
    const clocked = launched.has(job.id) && !ACTIVE_STATES.includes(job.state) ? { ...job, state: 'connecting' as const, activeSince: now, progressAt: now } : job
    const deadline = deadlineOf(clocked, isRunning, limits)
    if (deadline !== undefined) wakeAt(Math.max(deadline.at, held.get(job.id) ?? 0))
  }
  return { expire, launch, yield: yields, ...(Number.isFinite(wake) ? { wakeAt: wake } : {}) }
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
function makeRoom (waiting: JobRecord[], background: Array<[string, RunView]>, byId: ReadonlyMap<string, JobRecord>, now: number,
  timeSliceMs: number, wakeAt: (at: number) => void): Plan['yield'] {
  const yields: Plan['yield'] = []
  const freeing = background.filter(([, run]) => run.stopping).length
  const victims = background
    .filter(([id, run]) => !run.stopping && ['connecting', 'transferring'].includes(byId.get(id)!.state))
    .map(([id, run]) => ({ job: byId.get(id)!, run }))
    // Weakest first: the lowest priority, and among equals the one that started last (it has the least to lose), then the last in the queue.
    .sort((a, b) => rank(b.job) - rank(a.job) || b.run.startedAt - a.run.startedAt || byQueue(b.job, a.job))
  for (const job of waiting.slice(freeing)) {
    const weakest = victims[0]
    if (weakest === undefined) break
    if (job.state === 'queued' && rank(job) < rank(weakest.job)) {
      yields.push({ job: weakest.job, why: 'preempted', for: job })
      victims.shift()
      continue
    }
    const turn = victims.filter(v => rank(v.job) >= rank(job))
    const over = turn.filter(v => now - v.run.startedAt >= timeSliceMs).sort((a, b) => a.run.startedAt - b.run.startedAt)[0]
    if (over !== undefined) {
      yields.push({ job: over.job, why: 'slice', for: job })
      victims.splice(victims.indexOf(over), 1)
    } else {
      for (const v of turn) wakeAt(v.run.startedAt + timeSliceMs)
    }
  }
  return yields
}
