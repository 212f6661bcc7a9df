/**
 * Waiting reasons, pure: the plain-language reason of a job's state (why it waits,
 * or what went wrong), from the same facts the policy decides on.
 */
import { formatDuration } from '@canopy/core'
import type { JobRecord } from '../jobs/job.ts'
import { byQueue, isReady, rank } from './policy.ts'
import type { RunView } from './policy.ts'

/**
 * The background jobs that hold a slot or are ready for one, by priority rank: how
 * many run, and the ready ones in queue order. Who is ahead of a job is then a sum
 * and a binary search: one snapshot serves every waiting job of a list (O(n log n),
 * not O(n²)).
 */
export interface Competition {
  byRank: Map<number, { running: number, waiting: JobRecord[] }>
  running: ReadonlySet<string>
}

export function competition (jobs: Iterable<JobRecord>, running: ReadonlyMap<string, RunView>, now: number): Competition {
  const byRank = new Map<number, { running: number, waiting: JobRecord[] }>()
  for (const job of jobs) {
    if (job.priority === 'foreground') continue
    const isRunning = running.has(job.id)
    if (!isRunning && !isReady(job, now)) continue
    let group = byRank.get(rank(job))
    if (group === undefined) byRank.set(rank(job), group = { running: 0, waiting: [] })
    if (isRunning) group.running++
    else group.waiting.push(job)
  }
  for (const group of byRank.values()) group.waiting.sort(byQueue)
  return { byRank, running: new Set(running.keys()) }
}

/**
 * What a waiting background job waits for: the background jobs of a higher
 * priority that run or are ready, and those of its priority that run or come
 * before it in the queue ("2 higher-priority jobs and 1 same-priority job ahead").
 * Empty when nothing is ahead (it starts at the next tick) and for foreground jobs.
 */
export function aheadOf (job: JobRecord, competition: Competition): string {
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

/**
 * The plain-language reason of a job's state: why it waits, or what went wrong.
 * `competition` is made when needed; `blocked` is what keeps it queued, if anything
 * (policy.ts blockedReason: a cap of 0).
 */
export function reasonFor (job: JobRecord, run: RunView | undefined, now: number, competition: () => Competition, blocked?: string): string | undefined {
  switch (job.state) {
    case 'queued': {
      // Launched, about to connect; a runner that is yielding its slot has a reason.
      if (run?.stopping === false) return undefined
      if (blocked !== undefined) return blocked
      if (job.waitReason === 'preempted') return 'waiting: preempted by a higher-priority job'
      const ahead = aheadOf(job, competition())
      if (job.waitReason === 'slice') return `waiting: time slice over${ahead === '' ? '' : `; ${ahead}`}`
      return ahead === '' ? 'waiting to start' : `waiting: ${ahead}`
    }
    case 'transient_error': {
      const message = job.error?.message ?? 'transient error'
      const wait = Date.parse(job.retryAt ?? '') - now
      if (wait > 0) return `${message}, next retry in ${formatDuration(Math.ceil(wait / 1000) * 1000)}`
      if (run !== undefined) return undefined
      return blocked !== undefined ? `${message}, retry due; ${blocked}` : `${message}, retry due: waiting for a free slot`
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
