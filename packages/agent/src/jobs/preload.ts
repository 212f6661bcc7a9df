/**
 * Preload jobs: files fetched into the peer cache with no destination (an overnight
 * warm-up of a branch). Each file is staged in `<state-dir>/preload/<job id>/` like
 * a download's partial file, transferred the usual way (peers first, the origin for
 * the rest, every block verified), then hard-linked into the cache as soon as it is
 * complete (the next file of the job, or a peer, finds it there at once), and the
 * staging directory removed when the job completes or is cancelled. Content the
 * cache already holds is not fetched again.
 */
import { mkdir, readdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { PublishedManifest } from '@canopy/core'
import { JobErrorCode, TransferError } from '../errors.ts'
import type { PeerSharing } from '../peers/sharing.ts'
import { tooLarge } from '../peers/sharing.ts'
import type { FileRecord, JobRecord } from './job.ts'
import { urlFileName } from './job.ts'

/** Why a file without a manifest is not cached (the job completes; the file view says so). */
export const NO_MANIFEST = 'the origin published no manifest for it, so peers could not verify it: it was downloaded and dropped (publish one with canopy publish)'

/**
 * Before a preload file transfers: its staging directory exists, content larger than
 * the whole cache stops the job at once (ERR_CACHE_FULL, before a byte is fetched),
 * and content the cache already holds is done without a transfer (`skipped`; its
 * manifest's content key is added to the cached copy). Returns true when the file
 * needs no transfer.
 */
export async function preparePreload (file: FileRecord, manifest: PublishedManifest | undefined, sharing: PeerSharing | undefined): Promise<boolean> {
  if (sharing === undefined) throw noCache(file)
  await mkdir(dirname(file.path), { recursive: true, mode: 0o700 })
  if (manifest === undefined) return false
  const { quotaBytes } = sharing.cacheView()
  if (manifest.size > quotaBytes) {
    throw new TransferError(JobErrorCode.CacheFull, `Cannot preload ${urlFileName(file.url)}: ${tooLarge(manifest.size, quotaBytes)}`, { transient: false, url: file.url })
  }
  if (!await sharing.holdsIntact(manifest.id)) return false
  const admitted = await sharing.admit(manifest, file.partPath, urlFileName(file.url), file.url)
  if (!admitted.cached) return false
  Object.assign(file, { done: true, skipped: true, visible: true, cached: true, bytesByPeer: undefined })
  return true
}

/**
 * A preload file just transferred: a verified file with a manifest goes into the
 * cache (a hard link; the error says why when the cache cannot take it), one without
 * a manifest cannot be shared and is noted so. Its staging file stays until the
 * record says so (the caller removes it then): a crash in between admits it again.
 */
export async function admitPreloaded (file: FileRecord, manifest: PublishedManifest | undefined, sharing: PeerSharing | undefined): Promise<void> {
  if (manifest === undefined) {
    Object.assign(file, { cached: false, notCachedReason: NO_MANIFEST })
  } else {
    if (sharing === undefined) throw noCache(file)
    const admitted = await sharing.admit(manifest, file.partPath, urlFileName(file.url), file.url)
    if (!admitted.cached) {
      if (manifest.key !== undefined) throw new TransferError(JobErrorCode.CacheFull, `Cannot keep ${urlFileName(file.url)} for peers: ${admitted.reason}`, { transient: false, url: file.url })
      Object.assign(file, { cached: false, notCachedReason: admitted.reason })
    } else {
      file.cached = true
    }
  }
  file.visible = true
}

/** The agent was restarted without its peer node (--no-p2p): it has no cache. */
function noCache (file: FileRecord): TransferError {
  return new TransferError(JobErrorCode.CacheFull, 'This agent runs no peer node now (--no-p2p): it has no cache to preload into. Restart it with its peer node, then resume', { transient: false, url: file.url })
}

/**
 * Removes the staging directories of jobs the agent no longer has (dropped with a
 * damaged state store, or removed by hand): nothing else would. Returns their names.
 */
export async function sweepStaging (preloadDir: string, jobIds: ReadonlySet<string>): Promise<string[]> {
  const names = await readdir(preloadDir).catch(() => [])
  const stray = names.filter(name => !jobIds.has(name))
  for (const name of stray) await rm(join(preloadDir, name), { recursive: true, force: true })
  return stray
}

/** Removes a preload job's staging directory (once it completed or was cancelled). */
export async function removeStaging (job: JobRecord): Promise<void> {
  if (job.type !== 'preload' || job.files.length === 0) return
  await rm(dirname(job.files[0].path), { recursive: true, force: true })
}
