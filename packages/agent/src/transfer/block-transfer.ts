import type { Dispatcher } from 'undici'
import { blockDigest, blockSpan, digestsEqual } from '@canopy/core'
import type { Logger, PublishedManifest } from '@canopy/core'
import { JobErrorCode, REMOTE_CHANGED, TransferError, classifyError } from '../errors.ts'
import type { BlockProvenance, FileProgress } from '../jobs/job.ts'
import { blocksBuffered } from '../options.ts'
import type { ResolvedAgentOptions } from '../options.ts'
import { BlockSink } from './block-sink.ts'
import { exchangeWithPeers } from './peer-fetch.ts'
import { BlockPicker } from './picker.ts'
import type { PeerSessions } from './peer-sessions.ts'
import type { JobStore } from '../store/job-store.ts'
import { discard, requestRange } from './http.ts'
import type { FullResponse, RangeResponse } from './http.ts'
import { BackgroundFlusher, openPartial } from './partial-file.ts'
import type { BlockHasher } from './block-hasher.ts'
import type { BufferPool } from './buffer-pool.ts'
import type { RangeClient } from './range-client.ts'
import { pacedChunks } from '../bandwidth/pacer.ts'
import type { ReadPacer } from '../bandwidth/pacer.ts'


/** Agent-wide services of block transfers. */
export interface BlockTransferComponents {
  store: JobStore
  /** Hashes blocks, and the whole file as it completes, off the event loop. */
  blockHasher: BlockHasher
  /** Reusable block-sized buffers (agent-wide). */
  buffers: BufferPool
  logger: Logger
}

/** Tuning, the same for every file (agent options). */
export type BlockTransferInit = Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestSize' | 'maxBlockAttempts'>

/** The file to transfer. */
export interface BlockFile {
  jobId: string
  fileIndex: number
  url: string
  partPath: string
  manifest: PublishedManifest
  progress: FileProgress
  /** Blocks being fetched now (from the origin or a peer); peers see them as claims. */
  inFlight: Set<number>
  /** Request headers of the job (its HTTP options). */
  headers: Record<string, string>
}

/** This call: the job's network, its peers, its callbacks and its signal. */
export interface BlockTransferOptions {
  dispatcher: Dispatcher
  /** The direct range client (plain-HTTP range requests read straight into block buffers); absent when requests must go through the dispatcher (a proxy). */
  rangeClient?: RangeClient
  /** Connected peers to ask first; absent when the agent runs no peer node. Used only when the manifest has a key. */
  peers?: PeerSessions
  /** Fetches the manifest again (to tell a changed file from a corrupted response). */
  refreshManifest: (signal: AbortSignal) => Promise<PublishedManifest | undefined>
  /** Called after each block is stored. */
  onBlock: () => void
  /** Called for each block that fails verification, with where it came from (metrics). */
  onBadBlock?: (source: BlockProvenance) => void
  /** Paces origin reads (a background job's share of its WAN path); none: full speed. */
  pacer?: ReadPacer
  signal: AbortSignal
}

/** Everything one transfer works with, in one object for the functions below. */
interface Transfer extends BlockTransferComponents, BlockFile, BlockTransferOptions {
  /** Blocks one file may hold in memory (being received, verified or written). */
  maxBufferedBlocks: number
  /** Range requests in flight for this file. */
  requestsInFlight: number
  /** Consecutive blocks asked for in one range request. */
  blocksPerRequest: number
  /** Fetches of one block that fail verification before the job stops in error. */
  maxBlockAttempts: number
}

/**
 * Downloads the missing blocks of one file from the origin, verifying each block
 * against the manifest before it is written, marking it in the store after it is
 * written, and finally checking the whole-file digest. Resolves with that digest.
 */
export async function transferBlocks (components: BlockTransferComponents, init: BlockTransferInit, file: BlockFile, options: BlockTransferOptions): Promise<string> {
  const o: Transfer = {
    ...components,
    ...file,
    ...options,
    maxBufferedBlocks: blocksBuffered(init, file.manifest.blockSize),
    requestsInFlight: init.requestsInFlight,
    blocksPerRequest: Math.max(1, Math.floor(init.requestSize / file.manifest.blockSize)),
    maxBlockAttempts: init.maxBlockAttempts
  }
  const { manifest, progress } = o
  const expected = manifest.blocks.map(blockDigest)
  const handle = await openPartial(o.partPath, manifest.size)
  const flusher = new BackgroundFlusher(handle, FLUSH_EVERY)
  try {
    // Second pass only after a whole-file mismatch: every block verified in memory,
    // yet the file on disk differs, so some bytes did not reach the disk (a crash
    // before writeback) or changed since. Read the blocks back, refetch the bad ones.
    const attempts = new Map<number, number>()
    for (let pass = 0; pass < 2; pass++) {
      const hasher = o.blockHasher.fileDigest(o.partPath)
      try {
        hasher.advance(progress.prefixBytes)
        const started = performance.now()
        const sink = new BlockSink(o, expected, handle, hasher, flusher)
        await fetchAll(o, expected, sink, attempts)
        const fetched = performance.now()
        await flusher.settle()
        await handle.datasync()
        const synced = performance.now()
        const digest = await hasher.finish(manifest.size)
        o.logger.debug('blocks fetched', {
          jobId: o.jobId,
          fetchMs: Math.round(fetched - started),
          syncMs: Math.round(synced - fetched),
          wholeFileHashWaitMs: Math.round(performance.now() - synced)
        })
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
      'The file does not match the whole-file digest of its manifest, even after every block was checked on disk and refetched where needed: the manifest is inconsistent; ask the publisher to republish it',
      { transient: false, url: o.url })
  } finally {
    await flusher.settle()
    await handle.close().catch(() => {})
  }
}

/**
 * Peers and the origin at once: peers give what they have; the origin is asked
 * for the rest, skipping what peers have or are fetching now (see BlockPicker).
 * Either side failing stops the other.
 */
async function fetchAll (o: Transfer, expected: Uint8Array[], sink: BlockSink, attempts: Map<number, number>): Promise<void> {
  const inFlight = o.inFlight
  const withPeers = o.peers !== undefined && o.manifest.key !== undefined
  const picker = new BlockPicker(o.progress, inFlight, o.blocksPerRequest)
  if (!withPeers) {
    // Failed verifications count across passes, so a bad origin ends the job.
    await fetchMissing(o, expected, sink, attempts, picker, inFlight, o.signal)
    return
  }
  const local = new AbortController()
  const signal = AbortSignal.any([o.signal, local.signal])
  const peers = await exchangeWithPeers(o, expected, sink, picker, inFlight, signal)
  const sides = [
    peers?.run() ?? Promise.resolve(),
    fetchMissing(o, expected, sink, attempts, picker, inFlight, signal)
  ].map(async side => {
    try {
      await side
    } catch (err) {
      local.abort(err)
      throw err
    }
  })
  const results = await Promise.allSettled(sides)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed !== undefined) throw o.signal.aborted ? o.signal.reason : (local.signal.reason ?? failed.reason)
}

/** Bytes written between background flushes of a partial file. */
const FLUSH_EVERY = 64 * 1024 * 1024

type Body = RangeResponse['body']

async function fetchMissing (o: Transfer, expected: Uint8Array[], sink: BlockSink, attempts: Map<number, number>,
  picker: BlockPicker, inFlight: Set<number>, signal: AbortSignal): Promise<void> {
  const { manifest, progress } = o
  if (progress.complete) return

  // One failure stops the other request loops at once; the job's signal stops them all.
  const local = new AbortController()
  const stop = AbortSignal.any([signal, local.signal])
  let fullResponse: FullResponse | undefined
  // Reading does not wait for verifying and writing: a block is handed on as soon as
  // its last byte arrived, and the response keeps flowing. Memory for a request's
  // blocks is reserved before it is sent and freed once they are written, which
  // bounds what a transfer holds (blocksBuffered).
  const buffered = new Semaphore(o.maxBufferedBlocks)
  const processing = new Set<Promise<void>>()
  let failure: unknown
  const fail = (err: unknown): void => {
    failure ??= err
    local.abort(err)
  }

  const accept = async (index: number, received: Buffer): Promise<boolean> => {
    const { ok, bytes } = await sink.verifyAndStore(index, received, 'origin')
    o.buffers.give(bytes)
    if (!ok) {
      const count = (attempts.get(index) ?? 0) + 1
      attempts.set(index, count)
      o.logger.warn('block from origin failed verification', { jobId: o.jobId, block: index, attempt: count })
      const current = await o.refreshManifest(stop)
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
    return true
  }

  const deliver = (index: number, bytes: Buffer): void => {
    // A block that failed verification is released and picked again.
    const done: Promise<void> = accept(index, bytes).then(() => {}, fail).finally(() => {
      inFlight.delete(index)
      buffered.release()
      processing.delete(done)
    })
    processing.add(done)
  }

  let fastPath = true
  const requestLoop = async (): Promise<void> => {
    while (fullResponse === undefined && !stop.aborted) {
      const next = picker.next()
      if (next === 'done') return
      if (next === 'wait') {
        // Everything missing is in flight here or in a peer's hands: look again soon.
        await delay(WAIT_MS, stop)
        continue
      }
      const span = next
      o.logger.debug('origin range', { jobId: o.jobId, first: span[0], blocks: span.length })
      for (const i of span) inFlight.add(i)
      // Memory for the whole span first: its bytes are read straight into it.
      let held = 0
      try {
        for (; held < span.length; held++) await buffered.acquire(stop)
      } catch (err) {
        for (let k = 0; k < held; k++) buffered.release()
        for (const i of span) inFlight.delete(i)
        throw err
      }
      const buffers = span.map(i => o.buffers.take(blockSpan(i, manifest.size, manifest.blockSize).length))
      const offset = blockSpan(span[0], manifest.size, manifest.blockSize).offset
      const length = buffers.reduce((sum, b) => sum + b.length, 0)
      let filled = 0
      const onFilled = (k: number): void => {
        filled++
        deliver(span[k], buffers[k])
      }
      let body: RangeResponse['body'] | undefined
      try {
        const fast = fastPath && o.rangeClient !== undefined ? await o.rangeClient.get(new URL(o.url), offset, buffers, o.headers, stop, onFilled, manifest.size, o.pacer) : 'fallback'
        if (fast === 'fallback') {
          // A redirect, an https origin, an unusual answer: it will be the same for
          // the next request of this transfer, so go straight to undici.
          fastPath = false
          const res = await requestRange(o.dispatcher, o.url, offset, length, o.headers, stop, manifest.size)
          body = res.body
          if (res.kind === 'full') {
            // The server ignores Range: switch this file to one streamed GET.
            for (let k = 0; k < span.length; k++) buffered.release()
            for (const i of span) inFlight.delete(i)
            if (fullResponse === undefined) fullResponse = res
            else discard(res.body)
            return
          }
          await readBlocks(pacedChunks(res.body as AsyncIterable<Buffer>, o.pacer, stop), span, manifest, k => buffers[k], onFilled)
        }
        if (filled < span.length) {
          throw new TransferError(JobErrorCode.Network, `the connection closed after ${filled} of ${span.length} blocks`, { transient: true, url: o.url })
        }
      } catch (err) {
        for (let k = filled; k < span.length; k++) buffered.release()
        for (const i of span.slice(filled)) inFlight.delete(i)
        if (body !== undefined) discard(body)
        throw stop.aborted || err instanceof TransferError ? err : classifyError(err, o.url, 'network')
      }
    }
  }

  await Promise.all(Array.from({ length: o.requestsInFlight }, async () => await requestLoop().catch(fail)))
  while (processing.size > 0) await Promise.all([...processing])
  if (failure !== undefined || signal.aborted) {
    if (fullResponse !== undefined) discard(fullResponse.body)
    throw signal.aborted ? signal.reason : failure
  }
  if (fullResponse !== undefined) await streamAll(o, fullResponse, accept)
  if (!progress.complete) await fetchMissing(o, expected, sink, attempts, picker, inFlight, signal)
}

/** How long an origin request loop waits before looking again when every missing block is in someone's hands. */
const WAIT_MS = 25

async function delay (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * Reads a body holding the blocks `span` back to back and hands each block on as
 * soon as it is complete. `bufferFor(k)` gives the memory for `span[k]`, or
 * undefined to skip its bytes. Resolves with the number of blocks handed on or skipped.
 */
async function readBlocks (body: Body | AsyncIterable<Buffer>, span: number[], manifest: PublishedManifest,
  bufferFor: (k: number) => Buffer | undefined | Promise<Buffer | undefined>, onFilled: (k: number) => void): Promise<number> {
  let done = 0
  let buffer: Buffer | undefined
  let need = -1
  let filled = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    let at = 0
    while (at < chunk.length) {
      if (done === span.length) throw new TransferError(JobErrorCode.ProtocolViolation, 'the server sent more bytes than asked for', { transient: true })
      if (need < 0) {
        need = blockSpan(span[done], manifest.size, manifest.blockSize).length
        filled = 0
        buffer = await bufferFor(done)
      }
      const take = Math.min(need - filled, chunk.length - at)
      buffer?.set(chunk.subarray(at, at + take), filled)
      filled += take
      at += take
      if (filled === need) {
        if (buffer !== undefined) onFilled(done)
        buffer = undefined
        need = -1
        done++
      }
    }
  }
  return done
}

/**
 * For servers that ignore Range: read the whole body once, cut it into blocks,
 * and verify and keep the ones still missing.
 */
async function streamAll (o: Transfer, res: FullResponse, accept: (index: number, bytes: Buffer) => Promise<boolean>): Promise<void> {
  const { manifest, progress } = o
  o.logger.info('server ignores Range requests; streaming the whole file', { jobId: o.jobId, url: o.url })
  if (res.contentLength >= 0 && res.contentLength !== manifest.size) {
    discard(res.body)
    throw new TransferError(REMOTE_CHANGED, 'the file on the server has a different size than its manifest; starting it over', { transient: true, url: o.url })
  }
  const all = manifest.blocks.map((_, i) => i)
  let done: number
  // One block at a time: this path is a fallback, kept simple.
  let pending: Promise<boolean> = Promise.resolve(true)
  try {
    let current: Buffer | undefined
    done = await readBlocks(res.body, all, manifest, async (index) => {
      await pending
      current = progress.has(index) ? undefined : o.buffers.take(blockSpan(index, manifest.size, manifest.blockSize).length)
      return current
    }, (index) => {
      pending = accept(index, current!)
      // Awaited at the next block or at the end; until then it must not count as unhandled.
      pending.catch(() => {})
    })
    await pending
  } catch (err) {
    discard(res.body)
    // Nothing may write or mark after this transfer returns.
    await pending.catch(() => {})
    if (o.signal.aborted || err instanceof TransferError) throw err
    throw classifyError(err, o.url)
  }
  if (done < all.length) {
    throw new TransferError(JobErrorCode.Network, `the connection closed after block ${done} of ${all.length}`, { transient: true, url: o.url })
  }
}

/** A counting semaphore whose waiters give up when a signal aborts. */
class Semaphore {
  private available: number
  private readonly waiters: Array<{ resolve: () => void, reject: (err: unknown) => void }> = []

  constructor (count: number) {
    this.available = count
  }

  async acquire (signal: AbortSignal): Promise<void> {
    signal.throwIfAborted()
    if (this.available > 0) {
      this.available--
      return
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        },
        reject
      }
      const onAbort = (): void => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1)
        reject(signal.reason)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(waiter)
    })
  }

  release (): void {
    const next = this.waiters.shift()
    if (next !== undefined) next.resolve()
    else this.available++
  }
}

/** Blocks whose bytes in the partial file do not match the manifest (hashed on the workers). */
async function findBadBlocks (handle: Awaited<ReturnType<typeof openPartial>>, o: Transfer, expected: Uint8Array[]): Promise<number[]> {
  const bad: number[] = []
  let buffer: Buffer = Buffer.allocUnsafeSlow(o.manifest.blockSize)
  for (let i = 0; i < expected.length; i++) {
    o.signal.throwIfAborted()
    const { offset, length } = blockSpan(i, o.manifest.size, o.manifest.blockSize)
    const { bytesRead } = await handle.read(buffer, 0, length, offset)
    // A whole block moves to a worker and back (`buffer` is detached meanwhile);
    // the short last one is hashed here.
    const whole = length === buffer.length
    const hashed = await o.blockHasher.hash(whole ? buffer : buffer.subarray(0, length))
    if (whole) buffer = hashed.bytes
    if (bytesRead !== length || !digestsEqual(hashed.digest, expected[i])) bad.push(i)
  }
  return bad
}
