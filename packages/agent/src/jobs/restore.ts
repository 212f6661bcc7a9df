import type { Logger } from '@canopy/core'
import type { JobStore } from '../store/job-store.ts'
import { loadJobs, suspendIfStale } from '../store/recovery.ts'
import type { Completion } from './completion.ts'
import { JobEntry } from './job-table.ts'
import type { JobTable } from './job-table.ts'
import { sweepStaging } from './preload.ts'
import type { JobRunner } from './runner.ts'

export interface RestoreComponents {
  store: JobStore
  table: JobTable
  runner: JobRunner
  logger: Logger
}

/**
 * At start, before anything is scheduled: every job the store holds back in the
 * table (jobs a lost write may have left stale come back suspended, see
 * store/recovery.ts), each one's files recovered by the runner, and the staging
 * files of preload jobs the agent no longer has removed.
 */
export async function restoreJobs (components: RestoreComponents, init: { preloadDir: string }): Promise<void> {
  const { store, table, runner, logger } = components
  for (const job of await loadJobs(store, logger)) {
    const entry = new JobEntry(job)
    table.add(entry)
    await suspendIfStale(entry, table, store)
    await runner.recover(entry)
  }
  await store.settleGenerations()
  const stray = await sweepStaging(init.preloadDir, new Set([...table.values()].map(e => e.id)))
  if (stray.length > 0) logger.info('removed the staging files of preload jobs the agent no longer has', { jobs: stray.join(' ') })
}

/** Jobs that were transferred but not yet completed when the agent went down, and complete themselves: completed now. */
export async function completeLeftovers (table: JobTable, completion: Completion, logger: Logger): Promise<void> {
  for (const entry of table.values()) {
    const job = entry.record
    if (job.state === 'transferred' && job.autoComplete) {
      await table.withJob(job.id, undefined, async () => {
        if (job.state === 'transferred') await completion.completeJob(entry)
      }).catch((err: unknown) => logger.error('could not complete a job at start', { jobId: job.id, err: String(err) }))
    }
  }
}
