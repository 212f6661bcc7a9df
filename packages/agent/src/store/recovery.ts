/**
 * What a start does about a damaged state store (issue 13, item 11). LevelDB skips
 * log records whose checksum fails: flipped bytes can drop a job's record while its
 * block marks (other records) remain. Such a job cannot be resumed (its URL and
 * destination were in the lost record), so it is reported and its leftovers go:
 * its block marks, and its partial files, found only where Canopy would have put
 * them (`.<name>.<job id prefix>.canopy-part` next to a destination this store
 * still knows of, or one the notification outbox names). Nothing else is deleted:
 * not another job's partial, not a file whose name merely looks like one, not a link.
 */
import { lstat, readdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { CanopyError } from '@canopy/core'
import type { Logger, StoreRecovery } from '@canopy/core'
import type { JobRecord } from '../jobs/job.ts'
import type { JobStore } from './job-store.ts'

/** The part of the job id in a partial file's name (see job.ts). */
const ID_IN_PARTIAL = 8

/** The jobs of the store, after the leftovers of jobs it lost are reported and removed (store.recovery). */
export async function loadJobs (store: JobStore, logger: Logger): Promise<JobRecord[]> {
  try {
    const jobs = await store.allJobs()
    store.recovery = await recoverDroppedJobs(store, jobs, logger)
    return jobs
  } catch (err) {
    if (err instanceof CanopyError) throw err
    throw store.unreadable(err)
  }
}

async function recoverDroppedJobs (store: JobStore, jobs: readonly JobRecord[], logger: Logger): Promise<StoreRecovery | undefined> {
  const known = new Set(jobs.map(j => j.id))
  const dropped = (await store.jobIdsWithMarks()).filter(id => !known.has(id))
  if (dropped.length === 0 && store.repaired === undefined) return undefined
  if (store.repaired !== undefined) logger.warn('the state store was damaged and repaired: what it could not read is lost', { damagedCopy: store.repaired })
  const knownPrefixes = new Set(jobs.map(j => j.id.slice(0, ID_IN_PARTIAL)))
  const dirs = new Set(jobs.flatMap(j => j.files.map(f => dirname(f.path))))
  const outbox = await store.notifications()
  const removedPartials: string[] = []
  for (const id of dropped) {
    const prefix = id.slice(0, ID_IN_PARTIAL)
    const places = new Set(dirs)
    for (const n of outbox) if (n.jobId === id) for (const f of n.job.files) places.add(dirname(f.path))
    // Another job with the same prefix owns the names: leave them.
    const removed = knownPrefixes.has(prefix) ? [] : await removePartialsOf(prefix, places)
    removedPartials.push(...removed)
    await store.clearBlocks(id)
    logger.warn('a job was dropped: its record in the state store was unreadable', { jobId: id, removedPartials: removed.join(', ') || 'none' })
  }
  return { ...(store.repaired !== undefined ? { damagedCopy: store.repaired } : {}), droppedJobs: dropped, removedPartials }
}

/** Removes the regular files named like the job's partials in `dirs`; resolves with their paths. */
async function removePartialsOf (prefix: string, dirs: Iterable<string>): Promise<string[]> {
  const suffix = `.${prefix}.canopy-part`
  const removed: string[] = []
  for (const dir of dirs) {
    const names = await readdir(dir).catch(() => [] as string[])
    for (const name of names) {
      if (!name.startsWith('.') || !name.endsWith(suffix) || name.length <= suffix.length + 1) continue
      const path = join(dir, name)
      const info = await lstat(path).catch(() => undefined)
      if (info?.isFile() !== true) continue
      await rm(path, { force: true })
      removed.push(path)
    }
  }
  return removed
}
