import { request } from 'undici'
import type { Dispatcher } from 'undici'
import { stat } from 'node:fs/promises'
import { parseContentRange } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { JobErrorCode, TransferError, classifyError, httpStatusError } from '../errors.ts'
import type { FileRecord } from '../jobs/job.ts'
import { discard } from './http.ts'
import { openPartial, writeFully } from './partial-file.ts'
import type { FileDigest } from './file-digest.ts'
import { pacedChunks } from '../bandwidth/pacer.ts'
import type { ReadPacer } from '../bandwidth/pacer.ts'

/** Progress of a download without a manifest: a contiguous prefix. */
export interface PlainProgress {
  bytesDone: number
  fromOrigin: number
  fromPeers: 0
  fromCache: 0
}

export interface PlainTransferOptions {
  file: FileRecord
  progress: PlainProgress
  dispatcher: Dispatcher
  headers: Record<string, string>
  /** Starts the digest of a file as it grows, off the event loop (BlockHasher.fileDigest). */
  fileDigest: (path: string) => FileDigest
  /** Persists `file` (size, validators, plainBytes) after the bytes it counts are written. */
  persist: () => Promise<void>
  onProgress: () => void
  /** Paces the body's reads (a background job's share of its WAN path); none: full speed. */
  pacer?: ReadPacer
  logger: Logger
  signal: AbortSignal
}

const WRITE_CHUNK = 1024 * 1024
/** Progress is recorded every this many bytes, after an fdatasync, so a power loss cannot leave a recorded hole. */
const PERSIST_EVERY = 32 * 1024 * 1024

/**
 * A resumable download without a manifest: one streamed GET, resumed with
 * `Range` + `If-Range` (so a changed remote file restarts from byte 0). Such a file
 * is verified only against the digest the caller supplied, and never shared.
 * Resolves with the file's SHA-256.
 */
export async function transferPlain (o: PlainTransferOptions): Promise<string> {
  const { file } = o
  // A weak ETag never matches in If-Range (RFC 9110 §13.1.5): use the date then.
  const validator = file.etag !== undefined && !file.etag.startsWith('W/') ? file.etag : file.lastModified
  let have = validator !== undefined ? file.plainBytes ?? 0 : 0
  // The partial file must still hold what the record says (a cleaner or a user may
  // have removed or cut it): otherwise resuming would leave a hole of zeros.
  if (have > 0) {
    const onDisk = await stat(file.partPath).then(s => s.size, () => 0)
    if (onDisk < have) {
      o.logger.warn('the partial file is shorter than recorded; starting over', { url: file.url, recorded: have, onDisk })
      have = 0
    }
  }
  const headers: Record<string, string> = { ...o.headers }
  if (have > 0 && validator !== undefined) {
    headers.range = `bytes=${have}-`
    headers['if-range'] = validator
  }
  let res
  try {
    res = await request(file.url, { dispatcher: o.dispatcher, method: 'GET', headers, signal: o.signal })
  } catch (err) {
    if (o.signal.aborted) throw err
    throw classifyError(err, file.url, 'network')
  }
  const header = (name: string): string | undefined => {
    const v = res.headers[name]
    return Array.isArray(v) ? v[0] : v
  }
  let size: number
  if (res.statusCode === 206 && have > 0) {
    // A total is required here: the file's size comes from it.
    const range = parseContentRange(header('content-range'))
    if (range?.total !== undefined && file.size >= 0 && range.total !== file.size) {
      // Another total: another file behind the same validator. Start over.
      discard(res.body)
      file.plainBytes = 0
      file.etag = undefined
      file.lastModified = undefined
      await o.persist()
      throw new TransferError(JobErrorCode.ProtocolViolation, `the file on the server is now ${range.total} bytes, not ${file.size}: starting over`, { transient: true, url: file.url })
    }
    if (range?.total === undefined || range.first !== have) {
      discard(res.body)
      throw new TransferError(JobErrorCode.ProtocolViolation, `the server resumed at the wrong offset (${header('content-range') ?? 'no Content-Range'})`, { transient: true, url: file.url })
    }
    size = range.total
  } else if (res.statusCode === 200) {
    if (have > 0) o.logger.info('the remote file changed or cannot be resumed; starting over', { url: file.url })
    have = 0
    const length = header('content-length')
    size = length !== undefined ? Number(length) : -1
  } else if (res.statusCode === 416 && have > 0 && have === file.size) {
    discard(res.body)
    size = have
  } else {
    discard(res.body)
    throw httpStatusError(res.statusCode, file.url)
  }
  file.size = size
  file.etag = header('etag')
  file.lastModified = header('last-modified')
  file.plainBytes = have
  o.progress.bytesDone = have
  o.progress.fromOrigin = have
  await o.persist()

  let handle
  try {
    handle = await openPartial(file.partPath, have)
  } catch (err) {
    discard(res.body)
    throw err
  }
  const hasher = o.fileDigest(file.partPath)
  let persistedAt = have
  try {
    hasher.advance(have)
    const buffer = Buffer.allocUnsafe(WRITE_CHUNK)
    let filled = 0
    const flush = async (): Promise<void> => {
      if (filled === 0) return
      await writeFully(handle, buffer.subarray(0, filled), have)
      have += filled
      filled = 0
      o.progress.bytesDone = have
      o.progress.fromOrigin = have
      hasher.advance(have)
      o.onProgress()
      if (have - persistedAt >= PERSIST_EVERY) {
        await handle!.datasync()
        file.plainBytes = have
        persistedAt = have
        await o.persist()
      }
    }
    try {
      for await (const chunk of pacedChunks(res.body as AsyncIterable<Buffer>, o.pacer, o.signal)) {
        let at = 0
        while (at < chunk.length) {
          const take = Math.min(WRITE_CHUNK - filled, chunk.length - at)
          chunk.copy(buffer, filled, at, at + take)
          filled += take
          at += take
          if (filled === WRITE_CHUNK) await flush()
        }
      }
      await flush()
    } catch (err) {
      discard(res.body)
      await flush().catch(() => {})
      await handle.datasync().catch(() => {})
      file.plainBytes = have
      await o.persist()
      if (o.signal.aborted) throw err
      throw classifyError(err, file.url)
    }
    if (size >= 0 && have !== size) {
      await handle.datasync()
      file.plainBytes = have
      await o.persist()
      throw new TransferError(JobErrorCode.Network, `the connection closed after ${have} of ${size} bytes`, { transient: true, url: file.url })
    }
    file.size = have
    file.plainBytes = have
    await handle.datasync()
    await o.persist()
    const digest = await hasher.finish(have)
    if (file.expectedSha256 !== undefined && digest !== file.expectedSha256) {
      // Start over next time: these bytes are not the file the caller asked for.
      file.plainBytes = 0
      file.etag = undefined
      file.lastModified = undefined
      await o.persist()
      throw new TransferError(JobErrorCode.DigestMismatch,
        `The downloaded file's SHA-256 is ${digest}, not the ${file.expectedSha256} you gave: check the digest or the URL, then resume the job`,
        { transient: false, url: file.url })
    }
    return digest
  } finally {
    await hasher.close()
    await handle.close().catch(() => {})
  }
}
