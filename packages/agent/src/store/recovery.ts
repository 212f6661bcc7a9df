/**
 * What a start does about a damaged state store (issue 13, item 11). LevelDB skips
 * log records whose checksum fails: flipped bytes can drop a job's record while its
 * block marks (other records) remain. Such a job cannot be resumed (its URL and
 * destination were in the lost record), so it is reported and its leftovers go:
 * its block marks, and its partial files, found only where Canopy would have put
 * them (`.<name>.<job id prefix>.canopy-part` next to a destination this store
 * still knows of, or one the notification outbox names). Nothing else is deleted:
 * not another job's partial, not a file whose name merely looks like one, not a link.
 *
 * A store that lost its last writes (it is behind its generation file, see
 * write-generation.ts) brings jobs back in older states; each job a lost change
 * touched (every unfinished job, when the loss is longer than the file's memory) is
 * suspended with ERR_STATE_STALE, which says what happened and what to do, and
 * reported; a job whose creation was lost is reported as dropped.
 */
import { lstat, readdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { CanopyError, FINAL_STATES } from '@canopy/core'
import type { Logger, StaleJob, StoreRecovery } from '@canopy/core'
import type { JobRecord } from '../jobs/job.ts'
import type { JobEntry, JobTable } from '../jobs/job-table.ts'
import type { JobStore } from './job-store.ts'
import type { LostWrites } from './write-generation.ts'

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
  const lost = store.lostWrites
  if (dropped.length === 0 && store.repaired === undefined && lost === undefined) return undefined
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
  const staleJobs = lost === undefined ? [] : staleAfter(lost, jobs)
  if (lost !== undefined) {
    // A job whose creation was lost: nothing of it is left to resume (its marks, if any, went above).
    const lastStates = lastStateOf(lost)
    for (const [id, state] of lastStates) {
      if (!known.has(id) && state !== 'deleted' && !dropped.includes(id)) dropped.push(id)
    }
    logger.warn('the state store lost its last writes: jobs may have come back in older states, and were suspended', {
      expected: lost.expected,
      found: lost.found,
      staleJobs: staleJobs.map(j => `${j.id} (stored ${j.storedState}${j.lastState !== undefined ? `, last ${j.lastState}` : ''})`).join(', ') || 'none',
      droppedJobs: dropped.join(', ') || 'none'
    })
  }
  return {
    ...(store.repaired !== undefined ? { damagedCopy: store.repaired } : {}),
    droppedJobs: dropped,
    removedPartials,
    ...(lost !== undefined ? { lostWrites: { expected: lost.expected, found: lost.found } } : {}),
    staleJobs
  }
}

/** The state each job's last lost change entered, by job id (empty when the lost changes are not known). */
function lastStateOf (lost: LostWrites): Map<string, StaleJob['lastState'] & string> {
  const last = new Map<string, StaleJob['lastState'] & string>()
  for (const t of lost.transitions ?? []) last.set(t.id, t.state)
  return last
}

/** The jobs whose state may be stale: those a lost change touched, or every unfinished one when the changes are not known. */
function staleAfter (lost: LostWrites, jobs: readonly JobRecord[]): StaleJob[] {
  const last = lastStateOf(lost)
  return jobs
    .filter(j => lost.transitions === undefined ? !FINAL_STATES.includes(j.state) : last.has(j.id))
    .map(j => ({
      id: j.id,
      storedState: j.state,
      ...(last.has(j.id) ? { lastState: last.get(j.id) } : {}),
      state: FINAL_STATES.includes(j.state) ? j.state : 'suspended'
    }))
}

/**
 * Suspends a job the store may have brought back in an older state (store.recovery's
 * staleJobs), with the reason; a finished job is left as it is (nothing runs it). Call
 * before the job is recovered and scheduled.
 */
export async function suspendIfStale (entry: JobEntry, table: JobTable, store: JobStore): Promise<void> {
  const stale = store.recovery?.staleJobs.find(j => j.id === entry.record.id)
  const job = entry.record
  if (stale === undefined || FINAL_STATES.includes(job.state)) return
  const lost = store.recovery!.lostWrites!
  job.error = {
    code: 'ERR_STATE_STALE',
    message: `The state store lost its last writes (its job changes ${lost.found + 1} to ${lost.expected}: the disk did not keep them, or the store was restored or copied), so this job came back ${stale.storedState}${stale.lastState !== undefined ? `, though its last change made it ${stale.lastState}` : ''}. It was suspended: check its files, then resume it (canopy resume) or cancel it`,
    transient: false,
    at: new Date().toISOString()
  }
  // A job that was moving when it was recorded stops its clocks at that record, as at any recovery.
  if (job.state !== 'suspended') await table.setState(entry, 'suspended', Date.parse(job.modifiedAt))
  else await table.persist(entry, [], true)
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
