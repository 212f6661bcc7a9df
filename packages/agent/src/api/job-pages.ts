/**
 * GET /v1/jobs in pages (issue 13, item 12): a client reads at most
 * MAX_RESPONSE_BYTES (16 MiB) per answer, and 10,000 jobs of long URLs list to more
 * than that. A page holds at most `limit` jobs and about JOB_PAGE_BYTES of JSON (never
 * less than one job: one job with the most files and the longest URLs the request
 * limits allow is about 12 MiB, under the client's bound); `next` is the cursor of the
 * page after, absent on the last. Without `limit` and `after` the answer is the whole
 * list, as before (old clients).
 */
import type { JobView } from '@canopy/core'
import { CanopyError } from '@canopy/core'

/** About how much JSON one page holds: a quarter of what a client accepts. */
export const JOB_PAGE_BYTES = 4 * 1024 * 1024
/** The most jobs one page holds. */
export const MAX_JOB_PAGE = 1000

/** A job's place in the listing: creation time, then id (a cursor outlives its job's removal). */
function cursorOf (job: JobView): string {
  return `${job.createdAt}~${job.id}`
}

export interface JobPage { jobs: JobView[], next?: string }

export function pageOfJobs (all: readonly JobView[], query: URLSearchParams): JobPage {
  const limitText = query.get('limit')
  const after = query.get('after')
  if (limitText === null && after === null) return { jobs: [...all] }
  const limit = limitText === null ? MAX_JOB_PAGE : Number(limitText)
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_JOB_PAGE) {
    throw new CanopyError('ERR_INVALID_REQUEST', `limit must be a whole number from 1 to ${MAX_JOB_PAGE}`)
  }
  const ordered = all.map(job => ({ job, key: cursorOf(job) })).sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
  const jobs: JobView[] = []
  let bytes = 0
  let i = after === null ? 0 : ordered.findIndex(e => e.key > after)
  if (i === -1) i = ordered.length
  for (; i < ordered.length && jobs.length < limit; i++) {
    const size = Buffer.byteLength(JSON.stringify(ordered[i].job))
    if (jobs.length > 0 && bytes + size > JOB_PAGE_BYTES) break
    jobs.push(ordered[i].job)
    bytes += size
  }
  return i < ordered.length ? { jobs, next: cursorOf(jobs[jobs.length - 1]) } : { jobs }
}
