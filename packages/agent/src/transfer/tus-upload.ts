/**
 * A tus 1.0 client for upload jobs: creation, HEAD for the offset, PATCH fragments
 * with `Upload-Offset`, the checksum extension when the server offers sha256, and the
 * check of the server's SHA-256 of the completed upload (RFC 9530 `Repr-Digest`, as
 * `canopy origin` answers) against the local file's.
 *
 * One call sends the file or throws a TransferError with a stable `code`; `transient`
 * ones are worth retrying: call again with the `uploadUrl` reported by `onCreated`,
 * and the upload resumes from the server's offset (at most the fragment in flight is
 * sent again, less what the server already stored of it).
 */
import { createHash, type Hash } from 'node:crypto'
import { open, stat, type FileHandle } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import { basename } from 'node:path'
import { Readable } from 'node:stream'
import { request, type Dispatcher } from 'undici'
import { silentLogger, type Logger } from '@canopy/core'
import { JobErrorCode, TransferError, classifyError } from '../errors.ts'
import { createDispatcher, discard } from './http.ts'
import { encodeMetadata, header, type TusHeaders, parseReprDigest, refusalError, TUS_VERSION, TusErrorCode } from './tus-protocol.ts'

export interface TusUploadComponents {
  /** Default: a connection pool of its own, closed when the upload ends. */
  dispatcher?: Dispatcher
  logger?: Logger
}

export interface TusProgress {
  /** Bytes the server holds, plus those of the fragment in flight handed to the socket. */
  uploaded: number
  size: number
  /** Bytes sent by this call, including any sent again. */
  sent: number
}

/** What identifies the local file: a change of any of these mid-upload is fatal. */
export interface LocalFileIdentity { size: number, mtimeMs: number, ino: number, dev: number }

export interface TusUploadInit {
  /** The tus creation endpoint, e.g. `http://origin:8080/uploads/`. */
  endpoint: string
  /** The local file to send. */
  path: string
  /** The name the server stores it under (tus metadata `filename`); default the file's base name. */
  name?: string
  /** More tus metadata (keys without spaces or commas). */
  metadata?: Record<string, string>
  /** Sent with every request, e.g. `{ authorization: 'Bearer …' }`. */
  headers?: Record<string, string>
  /** The upload URL of an earlier attempt: resume it (its offset comes from a HEAD). */
  uploadUrl?: string
  /** The local file as it was when the job began: a different file now is a change. Default: as it is at the start of this call. */
  expectedFile?: LocalFileIdentity
  /** Bytes per PATCH; default 8 MiB. At most this much is sent again after an interruption. */
  fragmentSize?: number
  /**
   * Send `Upload-Checksum: sha256` with each fragment when the server offers it, so a
   * corrupted fragment is sent again rather than the whole file after the final
   * check; default false: it costs a SHA-256 pass on each side (bench/upload.ts), and
   * the whole upload's SHA-256 is checked at the end anyway.
   */
  checksum?: boolean
  /** 'if-offered' (default): check the server's SHA-256 when it gives one; 'required': fail when it does not. */
  verify?: 'if-offered' | 'required'
  /** Milliseconds to wait for an answer or for the socket to take bytes; default 120 000 (the server may run its handler before answering the last PATCH). */
  timeoutMs?: number
  signal?: AbortSignal
  /** Called with the upload URL as soon as it exists, before any byte is sent: persist it to resume later. */
  onCreated?: (uploadUrl: string) => void | Promise<void>
  onProgress?: (progress: TusProgress) => void
  /**
   * Called before each piece of a fragment is written to the socket; the upload waits
   * for it. The seam for a bandwidth controller (pacing, yielding to other traffic).
   */
  beforeSend?: (bytes: number, signal: AbortSignal) => Promise<void>
}

export interface TusUploadResult {
  uploadUrl: string
  size: number
  /** Hex SHA-256 of the local file as sent. */
  sha256: string
  /** Hex SHA-256 the server reported for what it stored; undefined when it reports none (third-party servers). */
  serverSha256?: string
  /** Absolute URL of the server's reply (`Canopy-Reply-Location`), when it runs an upload handler. */
  replyUrl?: string
  /** Bytes sent by this call (bytes sent again included). */
  sent: number
  /** Uploads created by this call: 0 when it resumed one, 2 when the one it resumed had expired. */
  created: number
}

export const DEFAULT_FRAGMENT_SIZE = 8 * 1024 * 1024
export const DEFAULT_TIMEOUT_MS = 120_000
/** Pieces written to the socket: the granularity of pacing and progress. */
const PIECE_SIZE = 256 * 1024
/** Reads of the part of the file a resumed upload hashes before sending. */
const HASH_READ_SIZE = 4 * 1024 * 1024
/** Fragments refused in a row for their checksum before giving up. */
const MAX_CHECKSUM_FAILURES = 3
/** Offset conflicts (409) in a row before giving up: another client is writing the same upload. */
const MAX_CONFLICTS = 3
function identityOf (st: Stats): LocalFileIdentity {
  return { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, dev: st.dev }
}

function sameFile (a: LocalFileIdentity, b: LocalFileIdentity): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.dev === b.dev
}

function changedError (path: string, what: string): TransferError {
  return new TransferError(TusErrorCode.LocalFileChanged,
    `The file ${path} changed while it was being uploaded (${what}): the upload stopped; start a new upload to send the new content`, { transient: false })
}

/** Sends `path` to a tus server; see the module comment. */
export async function tusUpload (components: TusUploadComponents, init: TusUploadInit): Promise<TusUploadResult> {
  const fragmentSize = init.fragmentSize ?? DEFAULT_FRAGMENT_SIZE
  if (!Number.isSafeInteger(fragmentSize) || fragmentSize < 1) throw new RangeError(`fragmentSize must be a positive integer, not ${fragmentSize}`)
  const timeoutMs = init.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const ownDispatcher = components.dispatcher === undefined ? createDispatcher({ connections: 1, timeoutMs }) : undefined
  const dispatcher = components.dispatcher ?? ownDispatcher!
  const signal = init.signal ?? new AbortController().signal
  let file: FileHandle
  try {
    file = await open(init.path, 'r')
  } catch (err) {
    throw classifyError(err)
  }
  try {
    const session = new UploadSession(dispatcher, components.logger ?? silentLogger, init, file, fragmentSize, signal)
    return await session.run()
  } finally {
    await file.close()
    await ownDispatcher?.close()
  }
}

class UploadSession {
  private readonly dispatcher: Dispatcher
  private readonly logger: Logger
  private readonly init: TusUploadInit
  private readonly file: FileHandle
  private readonly fragmentSize: number
  private readonly signal: AbortSignal
  private readonly headers: Record<string, string>
  private identity!: LocalFileIdentity
  /** The running SHA-256 of the local file's first `hashed` bytes. */
  private hash: Hash = createHash('sha256')
  private hashed = 0
  private sent = 0
  private created = 0
  /** Fragment buffers: two taking turns (one sent, the next read ahead); `turn` holds the fragment in flight. */
  private readonly buffers: Buffer[] = []
  private turn = 0
  private ahead: { offset: number, length: number, index: number, read: Promise<boolean> } | undefined

  constructor (dispatcher: Dispatcher, logger: Logger, init: TusUploadInit, file: FileHandle, fragmentSize: number, signal: AbortSignal) {
    this.dispatcher = dispatcher
    this.logger = logger
    this.init = init
    this.file = file
    this.fragmentSize = fragmentSize
    this.signal = signal
    this.headers = { ...init.headers, 'tus-resumable': TUS_VERSION }
  }

  async run (): Promise<TusUploadResult> {
    this.identity = identityOf(await this.file.stat())
    if (this.init.expectedFile !== undefined && !sameFile(this.init.expectedFile, this.identity)) {
      throw changedError(this.init.path, 'it is not the file the upload began with')
    }
    await this.checkLocal()
    const size = this.identity.size
    const useChecksum = this.init.checksum === true && await this.offersSha256()

    let uploadUrl = this.init.uploadUrl
    let offset: number | undefined
    let done: { serverSha256?: string, replyUrl?: string } | undefined
    if (uploadUrl !== undefined) {
      const head = await this.head(uploadUrl)
      if (head === 'gone') {
        this.logger.info('the upload to resume is gone on the server: starting it over', { uploadUrl })
        uploadUrl = undefined
      } else {
        if (head.length !== undefined && head.length !== size) {
          throw new TransferError(JobErrorCode.ProtocolViolation, `The upload at ${uploadUrl} is ${head.length} bytes long, the file ${this.init.path} ${size}: it belongs to another file`, { transient: false, url: uploadUrl })
        }
        offset = head.offset
        if (head.offset === size && head.serverSha256 !== undefined) done = head
      }
    }
    if (uploadUrl === undefined) {
      uploadUrl = await this.create(size)
      offset = 0
    }
    // Where the upload stands before a byte is sent: a resumed job shows the server's offset at once.
    this.init.onProgress?.({ uploaded: offset!, size, sent: this.sent })
    let conflicts = 0
    let checksumFailures = 0
    while (done === undefined) {
      if (offset! > size) throw new TransferError(JobErrorCode.ProtocolViolation, `The server says it holds ${offset} bytes of a ${size}-byte upload`, { transient: false, url: uploadUrl })
      const outcome = await this.patch(uploadUrl, offset!, size, useChecksum)
      if (outcome.kind === 'gone') {
        this.logger.info('the upload is gone on the server: starting it over', { uploadUrl })
        uploadUrl = await this.create(size)
        offset = 0
        continue
      }
      if (outcome.kind === 'conflict' || outcome.kind === 'checksum') {
        if (outcome.kind === 'conflict' && ++conflicts > MAX_CONFLICTS) {
          throw new TransferError(JobErrorCode.ProtocolViolation, `The server's offset keeps moving under this upload (HTTP 409): is another client sending ${uploadUrl}?`, { transient: true, url: uploadUrl })
        }
        if (outcome.kind === 'checksum' && ++checksumFailures > MAX_CHECKSUM_FAILURES) {
          throw new TransferError(TusErrorCode.Checksum, `The server kept finding the bytes it received corrupted (HTTP 460, ${checksumFailures} times in a row): check the network path`, { transient: true, url: uploadUrl })
        }
        const head = await this.head(uploadUrl)
        if (head === 'gone') continue
        offset = head.offset
        if (head.offset === size && head.serverSha256 !== undefined) done = head
        continue
      }
      conflicts = 0
      checksumFailures = 0
      offset = outcome.offset
      if (offset === size) done = outcome
    }
    await this.checkLocal()
    await this.hashUpTo(size)
    const sha256 = this.hash.digest('hex')
    if (done.serverSha256 === undefined && this.init.verify === 'required') {
      throw new TransferError(JobErrorCode.ProtocolViolation, `The server at ${uploadUrl} gives no SHA-256 of what it stored (no Repr-Digest): the upload cannot be verified`, { transient: false, url: uploadUrl })
    }
    if (done.serverSha256 !== undefined && done.serverSha256 !== sha256) {
      throw new TransferError(JobErrorCode.DigestMismatch, `The server stored different bytes than the file holds (SHA-256 ${done.serverSha256}, the file ${sha256}): upload it again`, { transient: false, url: uploadUrl })
    }
    return { uploadUrl, size, sha256, serverSha256: done.serverSha256, replyUrl: done.replyUrl, sent: this.sent, created: this.created }
  }

  /** The local file is still the one the upload began with (same inode at the path, same size and mtime). */
  private async checkLocal (): Promise<void> {
    let atPath: Stats
    try {
      atPath = await stat(this.init.path)
    } catch {
      throw changedError(this.init.path, 'it was removed or renamed')
    }
    const now = identityOf(await this.file.stat())
    if (atPath.ino !== now.ino || atPath.dev !== now.dev) throw changedError(this.init.path, 'another file replaced it')
    if (now.size !== this.identity.size) throw changedError(this.init.path, `its size went from ${this.identity.size} to ${now.size} bytes`)
    if (now.mtimeMs !== this.identity.mtimeMs) throw changedError(this.init.path, 'it was modified')
  }

  private async call (url: string, options: Omit<Dispatcher.RequestOptions, 'origin' | 'path'>): Promise<Dispatcher.ResponseData> {
    try {
      return await request(url, { ...options, dispatcher: this.dispatcher, signal: this.signal })
    } catch (err) {
      if (this.signal.aborted) throw err
      throw classifyError(err, url, 'network')
    }
  }

  /** OPTIONS on the endpoint: whether the server takes `Upload-Checksum: sha256`. Servers without OPTIONS just get no checksums. */
  private async offersSha256 (): Promise<boolean> {
    let res: Dispatcher.ResponseData
    try {
      res = await this.call(this.init.endpoint, { method: 'OPTIONS', headers: this.headers })
    } catch (err) {
      if (this.signal.aborted) throw err
      return false
    }
    discard(res.body)
    const extensions = (header(res.headers, 'tus-extension') ?? '').split(',').map(s => s.trim())
    const algorithms = (header(res.headers, 'tus-checksum-algorithm') ?? '').split(',').map(s => s.trim())
    return res.statusCode < 300 && extensions.includes('checksum') && algorithms.includes('sha256')
  }

  private async create (size: number): Promise<string> {
    const metadata = encodeMetadata({ ...this.init.metadata, filename: this.init.name ?? basename(this.init.path) })
    const res = await this.call(this.init.endpoint, {
      method: 'POST',
      headers: { ...this.headers, 'upload-length': String(size), 'upload-metadata': metadata, 'content-length': '0' }
    })
    if (res.statusCode !== 201) throw await refusalError(res, this.init.endpoint, 'creation')
    discard(res.body)
    const location = header(res.headers, 'location')
    if (location === undefined) throw new TransferError(JobErrorCode.ProtocolViolation, `The server at ${this.init.endpoint} created an upload without saying where (no Location)`, { transient: false, url: this.init.endpoint })
    const uploadUrl = new URL(location, this.init.endpoint).toString()
    this.created++
    await this.init.onCreated?.(uploadUrl)
    return uploadUrl
  }

  private async head (uploadUrl: string): Promise<'gone' | { offset: number, length?: number, serverSha256?: string, replyUrl?: string }> {
    const res = await this.call(uploadUrl, { method: 'HEAD', headers: this.headers })
    discard(res.body)
    if (res.statusCode === 404 || res.statusCode === 410) return 'gone'
    if (res.statusCode !== 200 && res.statusCode !== 204) throw await refusalError(res, uploadUrl, 'resumption')
    const offset = Number(header(res.headers, 'upload-offset'))
    const lengthText = header(res.headers, 'upload-length')
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new TransferError(JobErrorCode.ProtocolViolation, `The server gave no valid Upload-Offset for ${uploadUrl}`, { transient: false, url: uploadUrl })
    }
    return { offset, length: lengthText === undefined ? undefined : Number(lengthText), ...this.completion(res.headers, uploadUrl) }
  }

  private completion (headers: TusHeaders, uploadUrl: string): { serverSha256?: string, replyUrl?: string } {
    const serverSha256 = parseReprDigest(header(headers, 'repr-digest'))
    const reply = header(headers, 'canopy-reply-location')
    return { serverSha256, replyUrl: reply === undefined ? undefined : new URL(reply, uploadUrl).toString() }
  }

  /** Brings the running hash of the local file to `upTo` bytes, reading what it has not seen (after a resume). */
  private async hashUpTo (upTo: number): Promise<void> {
    if (upTo < this.hashed) {
      this.hash = createHash('sha256')
      this.hashed = 0
    }
    const buffer = Buffer.allocUnsafe(Math.min(HASH_READ_SIZE, Math.max(1, upTo - this.hashed)))
    while (this.hashed < upTo) {
      const length = Math.min(buffer.length, upTo - this.hashed)
      await this.readExactly(buffer, length, this.hashed)
      this.hash.update(buffer.subarray(0, length))
      this.hashed += length
    }
  }

  /**
   * The fragment at `offset`: read ahead while the previous one was sent, or read now.
   * Two buffers take turns; a buffer is reused only once the PATCH that sent it has
   * been answered (the server had every byte of it) or has failed.
   */
  private async fragmentAt (offset: number, length: number): Promise<Buffer> {
    const ahead = this.ahead
    this.ahead = undefined
    if (ahead !== undefined && await ahead.read && ahead.offset === offset && ahead.length === length) {
      this.turn = ahead.index
      return this.bufferAt(ahead.index).subarray(0, length)
    }
    const fragment = this.bufferAt(this.turn).subarray(0, length)
    await this.readExactly(fragment, length, offset)
    return fragment
  }

  /** Reads the next fragment into the other buffer while this one is sent; a failed read is met again when the fragment is read for real. */
  private readAhead (offset: number, length: number): void {
    const index = 1 - this.turn
    const read = this.readExactly(this.bufferAt(index).subarray(0, length), length, offset).then(() => true, () => false)
    this.ahead = { offset, length, index, read }
  }

  private bufferAt (index: number): Buffer {
    this.buffers[index] ??= Buffer.allocUnsafe(this.fragmentSize)
    return this.buffers[index]
  }

  private async readExactly (buffer: Buffer, length: number, position: number): Promise<void> {
    this.signal.throwIfAborted()
    let done = 0
    while (done < length) {
      const { bytesRead } = await this.file.read(buffer, done, length - done, position + done)
      if (bytesRead === 0) throw changedError(this.init.path, 'it became shorter')
      done += bytesRead
    }
  }

  /** One PATCH of the fragment at `offset`. */
  private async patch (uploadUrl: string, offset: number, size: number, useChecksum: boolean): Promise<
    { kind: 'ok', offset: number, serverSha256?: string, replyUrl?: string } | { kind: 'gone' } | { kind: 'conflict' } | { kind: 'checksum' }
  > {
    await this.checkLocal()
    await this.hashUpTo(offset)
    const length = Math.min(this.fragmentSize, size - offset)
    const fragment = await this.fragmentAt(offset, length)
    // The next fragment is read from the disk while this one is sent.
    if (offset + length < size) this.readAhead(offset + length, Math.min(this.fragmentSize, size - offset - length))
    const headers: Record<string, string> = {
      ...this.headers,
      'upload-offset': String(offset),
      'content-type': 'application/offset+octet-stream',
      'content-length': String(length)
    }
    if (useChecksum) headers['upload-checksum'] = `sha256 ${createHash('sha256').update(fragment).digest('base64')}`
    // The file's running hash takes each piece while the socket drains the previous one;
    // it becomes the running hash only if the server takes the fragment whole.
    const hashAhead = this.hashed === offset ? this.hash.copy() : undefined
    let handed = 0
    const pieces = async function * (this: UploadSession): AsyncGenerator<Buffer> {
      for (let at = 0; at < length; at += PIECE_SIZE) {
        const piece = fragment.subarray(at, Math.min(length, at + PIECE_SIZE))
        if (this.init.beforeSend !== undefined) await this.init.beforeSend(piece.length, this.signal)
        yield piece
        hashAhead?.update(piece)
        handed += piece.length
        this.sent += piece.length
        this.init.onProgress?.({ uploaded: offset + handed, size, sent: this.sent })
      }
    }.call(this)
    const res = await this.call(uploadUrl, { method: 'PATCH', headers, body: length === 0 ? '' : Readable.from(pieces, { objectMode: false }) })
    if (res.statusCode === 404 || res.statusCode === 410) {
      discard(res.body)
      return { kind: 'gone' }
    }
    if (res.statusCode === 409) {
      discard(res.body)
      return { kind: 'conflict' }
    }
    if (res.statusCode === 460) {
      discard(res.body)
      this.logger.warn('the server found a fragment corrupted: sending it again', { uploadUrl, offset })
      return { kind: 'checksum' }
    }
    if (res.statusCode !== 204 && res.statusCode !== 200) throw await refusalError(res, uploadUrl, `offset ${offset}`)
    discard(res.body)
    const next = Number(header(res.headers, 'upload-offset'))
    if (!Number.isSafeInteger(next) || next < offset || next > offset + length) {
      throw new TransferError(JobErrorCode.ProtocolViolation, `The server answered a PATCH of ${length} bytes at ${offset} with Upload-Offset ${header(res.headers, 'upload-offset') ?? '(none)'}`, { transient: true, url: uploadUrl })
    }
    if (next === offset + length && hashAhead !== undefined && this.hashed === offset) {
      this.hash = hashAhead
      this.hashed = next
    }
    this.init.onProgress?.({ uploaded: next, size, sent: this.sent })
    return { kind: 'ok', offset: next, ...this.completion(res.headers, uploadUrl) }
  }
}
