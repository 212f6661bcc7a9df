/**
 * Where a job's files end: renamed into place (with a directory sync) and kept for
 * peers when it completes, or removed when it is cancelled.
 */
import { open, rm, stat } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { FINAL_STATES } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { JobErrorCode, classifyError } from '../errors.ts'
import type { PeerSharing } from '../peers/sharing.ts'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import { renamePartialIntoPlace } from '../transfer/partial-file.ts'
import type { FileRecord } from './job.ts'
import type { JobEntry, JobTable } from './job-table.ts'
import { terminateUpload } from './upload.ts'
import { admitPreloaded, removeStaging } from './preload.ts'

export interface CompletionComponents {
  table: JobTable
  store: JobStore
  blockHasher: BlockHasher
  logger: Logger
  now: () => number
  /** The peer sharing, when the agent runs a peer node. */
  sharing: () => PeerSharing | undefined
}

export class Completion {
  private readonly components: CompletionComponents

  constructor (components: CompletionComponents) {
    this.components = components
  }

  /**
   * Renames every file into place, each once (a retry after a failure in the middle
   * skips the files already visible), then forgets the block marks. On failure the
   * job goes to `error` with the reason and false is returned.
   */
  async completeJob (entry: JobEntry): Promise<boolean> {
    // Auto-complete and a user's complete may meet: both get the one outcome.
    const current = entry.completing
    if (current !== undefined) return await current
    const attempt = this.renameIntoPlace(entry).finally(() => { entry.completing = undefined })
    entry.completing = attempt
    return await attempt
  }

  /** Cancels a job whose runner is stopped (a user's cancel, or inactivity). */
  async cancelHalted (entry: JobEntry, reason?: string): Promise<void> {
    const job = entry.record
    job.error = undefined
    job.retryAt = undefined
    if (reason !== undefined) job.cancelReason = reason
    // Cancelled first, files second: a crash in between leaves a cancelled job
    // whose leftovers recovery removes, never a live job without its data.
    await this.components.table.setState(entry, 'cancelled')
    await this.removePartials(entry)
  }

  /** Removes the partial files of a job that will not complete, and its block marks. */
  async removePartials (entry: JobEntry): Promise<void> {
    // An upload has no partial file here: its bytes are on the server.
    if (entry.record.upload !== undefined) return await terminateUpload(entry, this.components.logger)
    for (const file of entry.record.files) {
      if (file.visible === true) continue
      this.components.sharing()?.stopSharingPartial(file.partPath)
      await rm(file.partPath, { force: true })
    }
    await removeStaging(entry.record)
    await this.components.store.clearBlocks(entry.id)
  }

  /** Puts a verified, complete file in the peer cache; failures only cost sharing. */
  private async keepForPeers (jobId: string, file: FileRecord, path: string): Promise<void> {
    const sharing = this.components.sharing()
    if (sharing === undefined || file.manifestId === undefined) return
    const manifest = await this.components.store.getManifest(file.manifestId)
    if (manifest === undefined) return
    const admitted = await sharing.admit(manifest, path, basename(file.path), file.url).catch((err: unknown) => {
      this.components.logger.warn('could not keep a completed file for peers', { jobId, path, err: String(err) })
      return undefined
    })
    // In the background (never awaited): the branch's hosted caches pull it from here,
    // so only what this agent keeps for peers is offered.
    if (admitted?.cached === true) sharing.hostedCaches?.offer(manifest, basename(file.path), file.url)
  }

  private async renameIntoPlace (entry: JobEntry): Promise<boolean> {
    const { table, store, blockHasher, now } = this.components
    const job = entry.record
    if (FINAL_STATES.includes(job.state)) return job.state === 'acknowledged'
    if (!job.files.every(f => f.done)) return false
    for (const file of job.files) {
      // An upload's file stays where it is: completing acknowledges what the server holds.
      if (file.visible === true || job.upload !== undefined) continue
      try {
        if (job.type === 'preload') {
          // No destination: into the peer cache (jobs/preload.ts; the runner did it, unless it stopped in between).
          const manifest = file.manifestId === undefined ? undefined : await store.getManifest(file.manifestId)
          await admitPreloaded(file, manifest, this.components.sharing())
          await table.persist(entry)
          continue
        }
        // A crash between the rename and recording it leaves our file in place
        // and no partial file: recognise it by its digest rather than fail.
        if (!await alreadyInPlace(blockHasher, file)) {
          // Keep it for peers first (a hard link to the same inode), so that peers
          // reading it never see it missing between the rename and the caching.
          await this.keepForPeers(job.id, file, file.partPath)
          // Only a regular file of ours is renamed: not a link planted at the partial's name.
          await renamePartialIntoPlace(file.partPath, file.path)
        }
        await syncDirectory(dirname(file.path))
      } catch (err) {
        const missing = (err as { code?: string }).code === 'ENOENT'
        const failure = classifyError(err, file.url)
        job.error = {
          code: missing ? JobErrorCode.Destination : failure.code,
          message: missing
            ? `The downloaded data for ${file.path} is gone (was ${file.partPath} deleted?): cancel the job and download again`
            : job.type === 'preload' ? failure.message : `Could not put ${file.path} in place: ${failure.message}`,
          transient: false,
          at: new Date(now()).toISOString(),
          url: file.url
        }
        await table.setState(entry, 'error')
        return false
      }
      file.visible = true
      await table.persist(entry)
    }
    // Keep the per-source totals in the record: the block marks go now.
    job.files.forEach((file, i) => {
      const p = entry.progress[i]
      file.bytesBySource ??= { origin: p?.fromOrigin ?? 0, peers: p?.fromPeers ?? 0, cache: p?.fromCache ?? 0 }
    })
    await store.clearBlocks(job.id)
    await removeStaging(job)
    job.error = undefined
    job.completedAt = new Date(now()).toISOString()
    await table.setState(entry, 'acknowledged')
    return true
  }
}

/** True when the partial file is gone and the destination has the file's verified digest. */
async function alreadyInPlace (hasher: BlockHasher, file: FileRecord): Promise<boolean> {
  if (file.sha256 === undefined || await stat(file.partPath).then(() => true, () => false)) return false
  try {
    return await fileDigest(hasher, file.path, (await stat(file.path)).size) === file.sha256
  } catch {
    return false
  }
}

/** The hex SHA-256 of the first `size` bytes of a file, computed on a worker (files may be gigabytes). */
export async function fileDigest (blockHasher: BlockHasher, path: string, size: number, signal?: AbortSignal): Promise<string> {
  const hasher = blockHasher.fileDigest(path)
  let onAbort = (): void => {}
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal?.reason)
    if (signal?.aborted === true) onAbort()
    else signal?.addEventListener('abort', onAbort, { once: true })
  })
  aborted.catch(() => {})
  try {
    hasher.advance(size)
    return await Promise.race([hasher.finish(size), aborted])
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await hasher.close()
  }
}

/** Makes a rename durable: fsync of the directory that holds the new name. */
async function syncDirectory (dir: string): Promise<void> {
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
