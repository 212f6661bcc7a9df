import type { FileHandle } from 'node:fs/promises'
import { blockSpan } from '@canopy/core'
import type { PublishedManifest } from '@canopy/core'
import type { BlockProvenance, FileProgress } from '../jobs/job.ts'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from './block-hasher.ts'
import type { FileDigest } from './file-digest.ts'
import type { BackgroundFlusher } from './partial-file.ts'

/** The file a sink stores into, and what it tells when a block is stored. */
export interface BlockSinkContext {
  jobId: string
  fileIndex: number
  manifest: PublishedManifest
  progress: FileProgress
  store: JobStore
  blockHasher: BlockHasher
  onBlock: () => void
  /** Called for each block that fails verification, with where it came from (metrics). */
  onBadBlock?: (source: BlockProvenance) => void
}

/**
 * Where received blocks go: verified against the manifest and, only if they match,
 * written at their offset (both on a hashing worker), flushed in the background, then
 * marked (the mark follows the write: after a process crash a marked block is in the
 * file; after a power loss it may not be, and the whole-file check and the second
 * pass catch that), then counted and fed to the whole-file hash.
 */
export class BlockSink {
  private readonly o: BlockSinkContext
  private readonly expected: Uint8Array[]
  private readonly handle: FileHandle
  private readonly hasher: FileDigest
  private readonly flusher: BackgroundFlusher

  constructor (o: BlockSinkContext, expected: Uint8Array[], handle: FileHandle, hasher: FileDigest, flusher: BackgroundFlusher) {
    this.o = o
    this.expected = expected
    this.handle = handle
    this.hasher = hasher
    this.flusher = flusher
  }

  /**
   * Verifies block `index` and stores it if it matches. Resolves with whether it
   * matched and with its bytes (the same memory, back from the worker), which the
   * caller owns again.
   */
  async verifyAndStore (index: number, received: Buffer, source: BlockProvenance): Promise<{ ok: boolean, bytes: Buffer }> {
    const { o } = this
    const { offset } = blockSpan(index, o.manifest.size, o.manifest.blockSize)
    const verdict = await o.blockHasher.verifyAndWrite(received, this.expected[index], this.handle, offset)
    if (!verdict.ok) {
      o.onBadBlock?.(source)
      return verdict
    }
    this.flusher.wrote(verdict.bytes.length)
    await o.store.markBlock(o.jobId, o.fileIndex, index, source)
    o.progress.mark(index, source)
    this.hasher.advance(o.progress.prefixBytes)
    o.onBlock()
    return verdict
  }
}
