import type { Agent as Dispatcher } from 'undici'
import { blockDigest, blockSpan, digestsEqual, sha256OffThread } from '@canopy/core'
import type { Logger, PublishedManifest } from '@canopy/core'
import { JobErrorCode, TransferError, classifyError } from '../errors.ts'
import type { FileProgress } from '../jobs/job.ts'
import type { JobStore } from '../store/job-store.ts'
import { discard, fetchRange } from './http.ts'
import type { FullResponse } from './http.ts'
import { openPartial, writeFully } from './partial-file.ts'
import { WholeFileHasher } from './whole-file-hasher.ts'

/** Code of the transient error that tells the runner the remote file changed: restart the file. */
export const REMOTE_CHANGED = 'ERR_REMOTE_CHANGED'

export interface BlockTransferOptions {
  jobId: string
  fileIndex: number
  url: string
  partPath: string
  manifest: PublishedManifest
  progress: FileProgress
  store: JobStore
  dispatcher: Dispatcher
  headers: Record<string, string>
  /** Block requests in flight for this file. */
  blocksInFlight: number
  /** Fetches of one block that fail verification before the job stops in error. */
  maxBlockAttempts: number
  /** Fetches the manifest again (to tell a changed file from a corrupted response). */
  refreshManifest: (signal: AbortSignal) => Promise<PublishedManifest | undefined>
  onBlock: () => void
  logger: Logger
  signal: AbortSignal
}

/**
 * Downloads the missing blocks of one file from the origin, verifying each block
 * against the manifest before it is written, marking it in the store after it is
 * written, and finally checking the whole-file digest. Resolves with that digest.
 */
export async function transferBlocks (o: BlockTransferOptions): Promise<string> {
  const { manifest, progress } = o
  const expected = manifest.blocks.map(blockDigest)
  const handle = await openPartial(o.partPath, manifest.size)
  try {
    // Second pass only after a whole-file mismatch: every block verified in memory,
    // yet the file on disk differs, so some bytes did not reach the disk (a crash
    // before writeback) or changed since. Read the blocks back, refetch the bad ones.
    for (let pass = 0; pass < 2; pass++) {
      const hasher = new WholeFileHasher(o.partPath)
      try {
        hasher.advance(progress.prefixBytes)
        await fetchMissing(o, expected, handle, hasher)
        await handle.datasync()
        const digest = await hasher.finish(manifest.size)
        if (digest === manifest.sha256) return digest
      } finally {
        await hasher.close()
      }
      const bad = await findBadBlocks(handle, o, expected)
      o.logger.warn('whole-file digest mismatch; refetching the blocks that fail verification on disk', { jobId: o.jobId, bad: bad.length })
      if (bad.length === 0) break
      for (const index of bad) {
        await o.store.unmarkBlock(o.jobId, o.fileIndex, index)
        progress.unmark(index)
      }
    }
    throw new TransferError(JobErrorCode.DigestMismatch,
      'The file does not match the whole-file digest of its manifest although its blocks do: the manifest is inconsistent; ask the publisher to republish it',
      { transient: false, url: o.url })
  } finally {
    await handle.close().catch(() => {})
  }
}

async function fetchMissing (o: BlockTransferOptions, expected: Uint8Array[], handle: Awaited<ReturnType<typeof openPartial>>,
  hasher: WholeFileHasher): Promise<void> {
  const { manifest, progress } = o
  const queue: number[] = []
  for (let i = 0; i < expected.length; i++) if (!progress.has(i)) queue.push(i)
  if (queue.length === 0) return

  const attempts = new Map<number, number>()
  // One failure stops the other workers at once; the job's signal stops them all.
  const local = new AbortController()
  const signal = AbortSignal.any([o.signal, local.signal])
  let fullResponse: FullResponse | undefined

  const accept = async (index: number, bytes: Buffer): Promise<boolean> => {
    const digest = await sha256OffThread(bytes)
    if (!digestsEqual(digest, expected[index])) {
      const count = (attempts.get(index) ?? 0) + 1
      attempts.set(index, count)
      o.logger.warn('block from origin failed verification', { jobId: o.jobId, block: index, attempt: count })
      const current = await o.refreshManifest(signal)
      if (current !== undefined && current.id !== manifest.id) {
        throw new TransferError(REMOTE_CHANGED, 'the file changed on the server; starting it over', { transient: true, url: o.url })
      }
      if (count >= o.maxBlockAttempts) {
        throw new TransferError(JobErrorCode.DigestMismatch,
          `Block ${index} from the origin failed verification ${count} times: the server sends bytes that do not match its manifest`,
          { transient: false, url: o.url })
      }
      return false
    }
    const { offset } = blockSpan(index, manifest.size, manifest.blockSize)
    await writeFully(handle, bytes, offset)
    await o.store.markBlock(o.jobId, o.fileIndex, index, 'origin')
    progress.mark(index, 'origin')
    hasher.advance(progress.prefixBytes)
    o.onBlock()
    return true
  }

  const worker = async (): Promise<void> => {
    while (queue.length > 0 && fullResponse === undefined) {
      signal.throwIfAborted()
      const index = queue.shift()!
      const { offset, length } = blockSpan(index, manifest.size, manifest.blockSize)
      const res = await fetchRange(o.dispatcher, o.url, offset, length, o.headers, signal)
      if (res.kind === 'full') {
        // The server ignores Range: switch this file to one streamed GET.
        queue.unshift(index)
        if (fullResponse === undefined) fullResponse = res
        else discard(res.body)
        return
      }
      if (!await accept(index, res.bytes)) queue.push(index)
    }
  }

  const workers = Array.from({ length: Math.min(o.blocksInFlight, queue.length) }, async () => {
    try {
      await worker()
    } catch (err) {
      local.abort(err)
      throw err
    }
  })
  const results = await Promise.allSettled(workers)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed !== undefined) {
    if (fullResponse !== undefined) discard(fullResponse.body)
    // Report the first cause, not the aborts it caused in the other workers.
    throw local.signal.aborted && !o.signal.aborted ? local.signal.reason : failed.reason
  }
  if (fullResponse !== undefined) await streamAll(o, fullResponse, accept)
  if (!progress.complete) await fetchMissing(o, expected, handle, hasher)
}

/**
 * For servers that ignore Range: read the whole body once, cut it into blocks,
 * and verify and keep the ones still missing.
 */
async function streamAll (o: BlockTransferOptions, res: FullResponse, accept: (index: number, bytes: Buffer) => Promise<boolean>): Promise<void> {
  const { manifest, progress } = o
  o.logger.info('server ignores Range requests; streaming the whole file', { jobId: o.jobId, url: o.url })
  if (res.contentLength >= 0 && res.contentLength !== manifest.size) {
    discard(res.body)
    throw new TransferError(REMOTE_CHANGED, 'the file on the server has a different size than its manifest; starting it over', { transient: true, url: o.url })
  }
  let index = 0
  let block = Buffer.allocUnsafe(blockSpan(0, manifest.size, manifest.blockSize).length)
  let filled = 0
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      let at = 0
      while (at < chunk.length) {
        if (index >= manifest.blocks.length) throw new TransferError(JobErrorCode.ProtocolViolation, 'the server sent more bytes than the manifest lists', { transient: true, url: o.url })
        const take = Math.min(block.length - filled, chunk.length - at)
        chunk.copy(block, filled, at, at + take)
        filled += take
        at += take
        if (filled === block.length) {
          if (!progress.has(index)) await accept(index, block)
          index++
          filled = 0
          if (index < manifest.blocks.length) block = Buffer.allocUnsafe(blockSpan(index, manifest.size, manifest.blockSize).length)
        }
      }
    }
  } catch (err) {
    discard(res.body)
    if (o.signal.aborted) throw err
    throw classifyError(err, o.url)
  }
  if (index < manifest.blocks.length) {
    throw new TransferError(JobErrorCode.Network, `the connection closed after block ${index} of ${manifest.blocks.length}`, { transient: true, url: o.url })
  }
}

async function findBadBlocks (handle: Awaited<ReturnType<typeof openPartial>>, o: BlockTransferOptions, expected: Uint8Array[]): Promise<number[]> {
  const bad: number[] = []
  const buffer = Buffer.allocUnsafe(o.manifest.blockSize)
  for (let i = 0; i < expected.length; i++) {
    o.signal.throwIfAborted()
    const { offset, length } = blockSpan(i, o.manifest.size, o.manifest.blockSize)
    const { bytesRead } = await handle.read(buffer, 0, length, offset)
    if (bytesRead !== length || !digestsEqual(await sha256OffThread(buffer.subarray(0, length)), expected[i])) bad.push(i)
  }
  return bad
}
