import { AsyncLocalStorage } from 'node:async_hooks'
import { createHash, type Hash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { link, open, readdir, readFile, rename, rm, stat, truncate, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PassThrough, Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { FileStore } from '@tus/file-store'
import { ERRORS, Upload } from '@tus/server'
import { silentLogger, type Logger } from '@canopy/core'

/** A refusal the tus server sends as it is: `status_code` and a plain-text `body`. */
export interface TusRefusal { status_code: number, body: string }

export function refusal (status: number, message: string): TusRefusal {
  return { status_code: status, body: message.endsWith('\n') ? message : message + '\n' }
}

/** tus checksum extension: the algorithms a client may name in `Upload-Checksum`. */
export const CHECKSUM_ALGORITHMS = ['sha1', 'sha256'] as const

/** What the request being handled asked for, carried to `write` (the tus server does not pass the request to the store). */
export interface RequestScope {
  checksum?: { algorithm: string, expected: Buffer }
  /** A PATCH's request, whose body the store reads itself (see uploads.ts, readPatchBodiesDirectly). */
  body?: Readable
}

export const requestScope = new AsyncLocalStorage<RequestScope>()

/** The record of a completed upload, kept until it expires so a client that lost the final answer can still learn the outcome. */
export interface CompletedUpload {
  id: string
  /** Final file name inside the upload directory. */
  name: string
  size: number
  /** Hex SHA-256 of the stored file. */
  sha256: string
  metadata: Record<string, string | null>
  completedAt: string
  /** The `--on-upload` handler's outcome; absent when the origin has no handler. */
  reply?: { state: 'running' } | { state: 'ok', bytes: number } | { state: 'failed', reason: string }
}

export interface UploadStoreInit {
  /** The staging directory (inside the upload directory, so the final rename stays on one file system). */
  directory: string
  /** Idle time after which an unfinished upload, or the record of a finished one, is deleted; 0 never. */
  expiryMs: number
  /** Called with the bytes of each chunk stored. */
  onBytes?: (bytes: number) => void
  logger?: Logger
}

/** 1 MiB writes: fewer syscalls per byte than the 16 KiB default. */
const WRITE_CHUNK = 1024 * 1024

function errno (err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; depth < 4 && e !== null && typeof e === 'object'; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') return code
    e = (e as { cause?: unknown }).cause
  }
  return undefined
}

export function isDiskFull (err: unknown): boolean {
  const code = errno(err)
  return code === 'ENOSPC' || code === 'EDQUOT'
}

export const DISK_FULL_MESSAGE = 'The origin\'s upload disk is full: the bytes received so far are kept; resume the upload (HEAD for the offset) once space is freed'

/**
 * The tus file store, extended for Canopy:
 * - every write is hashed on the way to the disk, so the SHA-256 of a completed
 *   upload is known without reading it again (unless the origin restarted meanwhile);
 * - the tus checksum extension: a PATCH whose `Upload-Checksum` does not match is cut
 *   off the file again and refused with 460;
 * - a full disk is a 507 that names the cause, and the bytes that made it stay;
 * - expiry counts from the last byte received, not from creation, so a slow upload
 *   that still makes progress never expires (BITS: 14 days without progress);
 * - completed uploads leave a record (`<id>.done`) with their digest and final name.
 */
export class UploadStore extends FileStore {
  readonly #directory: string
  readonly #expiryMs: number
  readonly #onBytes: (bytes: number) => void
  readonly #logger: Logger
  /** Running digests of unfinished uploads: valid for the first `covered` bytes. */
  readonly #digests = new Map<string, { hash: Hash, covered: number }>()

  constructor (init: UploadStoreInit) {
    super({ directory: init.directory, expirationPeriodInMilliseconds: init.expiryMs })
    // Deferred length would let a client start sending before the size limits and the
    // free-space check could see how much it means to send.
    this.extensions = ['creation', 'creation-with-upload', 'termination', 'expiration', 'checksum']
    this.#directory = init.directory
    this.#expiryMs = init.expiryMs
    this.#onBytes = init.onBytes ?? (() => {})
    this.#logger = init.logger ?? silentLogger
  }

  dataPath (id: string): string {
    return join(this.#directory, id)
  }

  #donePath (id: string): string {
    return join(this.#directory, `${id}.done`)
  }

  replyPath (id: string): string {
    return join(this.#directory, `${id}.reply`)
  }

  async completed (id: string): Promise<CompletedUpload | undefined> {
    try {
      return JSON.parse(await readFile(this.#donePath(id), 'utf8')) as CompletedUpload
    } catch (err) {
      if (errno(err) === 'ENOENT' || err instanceof SyntaxError) return undefined
      throw err
    }
  }

  async saveCompleted (record: CompletedUpload): Promise<void> {
    await writeAtomically(this.#donePath(record.id), JSON.stringify(record))
  }

  async forgetCompleted (id: string): Promise<void> {
    await rm(this.#donePath(id), { force: true })
  }

  override async create (file: Upload): Promise<Upload> {
    try {
      return await super.create(file)
    } catch (err) {
      if (isDiskFull(err)) {
        await this.remove(file.id).catch(() => {})
        throw refusal(507, DISK_FULL_MESSAGE)
      }
      throw err
    }
  }

  override async getUpload (id: string): Promise<Upload> {
    const done = await this.completed(id)
    if (done !== undefined) {
      return new Upload({ id, size: done.size, offset: done.size, metadata: done.metadata, creation_date: done.completedAt })
    }
    const upload = await super.getUpload(id)
    // Expiry from the last write: the data file's mtime (it is created with the upload).
    upload.creation_date = new Date((await stat(this.dataPath(id))).mtimeMs).toISOString()
    return upload
  }

  override async remove (id: string): Promise<void> {
    this.#digests.delete(id)
    await super.remove(id)
  }

  /**
   * Stores a PATCH body read straight from the Node request (no web streams between):
   * at most `limit` bytes (more is ERR_SIZE_EXCEEDED). A client that goes away keeps
   * the bytes that arrived, as @tus/server's own path does.
   */
  async writeFromRequest (request: Readable, id: string, offset: number, limit: number): Promise<number> {
    // The proxy ends when the request does, or when the client goes away mid-body
    // (the request only closes then); so the write completes with what arrived.
    const proxy = new PassThrough({ highWaterMark: WRITE_CHUNK })
    const end = (): void => {
      request.unpipe(proxy)
      if (!proxy.destroyed && !proxy.writableEnded) proxy.end()
    }
    request.once('close', end)
    request.once('error', end)
    request.pipe(proxy)
    try {
      return await this.write(proxy, id, offset, limit)
    } finally {
      request.off('close', end)
      request.off('error', end)
      request.unpipe(proxy)
    }
  }

  override async write (readable: NodeJS.ReadableStream, id: string, offset: number, limit = Number.MAX_SAFE_INTEGER): Promise<number> {
    if (await this.completed(id) !== undefined) {
      // A replayed final PATCH (its answer was lost): nothing more to store.
      for await (const chunk of readable) if ((chunk as Buffer).length > 0) throw ERRORS.ERR_SIZE_EXCEEDED
      return offset
    }
    const checksum = requestScope.getStore()?.checksum
    const fragmentHash = checksum === undefined ? undefined : createHash(checksum.algorithm)
    const running = this.#digests.get(id)
    const wholeHash = running !== undefined && running.covered === offset ? running.hash.copy() : offset === 0 ? createHash('sha256') : undefined
    let received = 0
    const onBytes = this.#onBytes
    const tap = new Transform({
      transform (chunk: Buffer, _encoding, callback) {
        received += chunk.length
        if (received > limit) {
          // Carries the tus refusal (413), which the catch below passes on as it is.
          callback(Object.assign(new Error(ERRORS.ERR_SIZE_EXCEEDED.body), ERRORS.ERR_SIZE_EXCEEDED))
          return
        }
        fragmentHash?.update(chunk)
        wholeHash?.update(chunk)
        onBytes(chunk.length)
        callback(null, chunk)
      }
    })
    const file = createWriteStream(this.dataPath(id), { flags: 'r+', start: offset, highWaterMark: WRITE_CHUNK })
    try {
      await pipeline(readable, tap, file)
    } catch (err) {
      // Some of the bytes may be on disk (the offset is the file's size); the running
      // digest no longer matches what is, so it is recomputed at the end.
      this.#digests.delete(id)
      if (isDiskFull(err)) {
        this.#logger.warn('upload disk full', { id, offset: offset + file.bytesWritten })
        throw refusal(507, DISK_FULL_MESSAGE)
      }
      if ((err as { status_code?: unknown }).status_code !== undefined) throw err
      const code = errno(err)
      if (code === 'ENOENT') throw ERRORS.FILE_NO_LONGER_EXISTS
      if (code !== undefined && code !== 'ECONNRESET' && code !== 'ERR_STREAM_PREMATURE_CLOSE') {
        this.#logger.error('writing an upload failed', { id, error: String(err) })
      }
      throw ERRORS.FILE_WRITE_ERROR
    }
    if (checksum !== undefined && fragmentHash !== undefined && !fragmentHash.digest().equals(checksum.expected)) {
      // The checksum extension: the PATCH's bytes are not kept.
      await truncate(this.dataPath(id), offset)
      throw refusal(460, `Checksum mismatch: the ${checksum.algorithm} of the ${received} bytes received differs from Upload-Checksum; the bytes were discarded, send them again from offset ${offset}`)
    }
    if (wholeHash !== undefined) this.#digests.set(id, { hash: wholeHash, covered: offset + received })
    else this.#digests.delete(id)
    return offset + received
  }

  /**
   * The hex SHA-256 of the first `size` bytes of an unfinished upload: from the
   * running digest when it covers them, else read back from the disk (after an
   * origin restart or an interrupted write).
   */
  async digest (id: string, size: number, signal?: AbortSignal): Promise<string> {
    const running = this.#digests.get(id)
    if (running !== undefined && running.covered === size) return running.hash.copy().digest('hex')
    const hash = createHash('sha256')
    if (size > 0) {
      for await (const chunk of createReadStream(this.dataPath(id), { start: 0, end: size - 1, highWaterMark: WRITE_CHUNK, signal })) {
        hash.update(chunk as Buffer)
      }
    }
    return hash.digest('hex')
  }

  /**
   * Moves a complete upload to `finalPath`: no other process sees a partial file
   * there. Without `overwrite`, an existing file is never replaced (link fails
   * with EEXIST) unless it is this very upload placed before a crash.
   */
  async place (id: string, finalPath: string, overwrite: boolean): Promise<'placed' | 'exists'> {
    const data = this.dataPath(id)
    const handle = await open(data, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
    if (overwrite) {
      await rename(data, finalPath)
    } else {
      try {
        await link(data, finalPath)
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw err
        const [a, b] = await Promise.all([stat(data), stat(finalPath)])
        if (a.ino !== b.ino || a.dev !== b.dev) return 'exists'
      }
      await unlink(data)
    }
    await syncDirectory(join(finalPath, '..'))
    return 'placed'
  }

  /** Forgets the unfinished-upload state of a completed upload (its `.done` record stays). */
  async forgetPartial (id: string): Promise<void> {
    this.#digests.delete(id)
    await rm(join(this.#directory, `${id}.json`), { force: true })
    await rm(this.dataPath(id), { force: true })
  }

  /** Ids of unfinished uploads (a `.json` record without a `.done` one). */
  async unfinished (): Promise<string[]> {
    const names = new Set(await readdir(this.#directory).catch(() => [] as string[]))
    return [...names].filter(n => n.endsWith('.json') && !names.has(n.slice(0, -5) + '.done')).map(n => n.slice(0, -5))
  }

  /**
   * Deletes unfinished uploads idle for longer than the expiry, records of completed
   * uploads older than it, and leftovers (temporary files, data without a record).
   * Returns the ids of the unfinished uploads deleted.
   */
  async sweep (now = Date.now()): Promise<string[]> {
    if (this.#expiryMs <= 0) return []
    const names = new Set(await readdir(this.#directory).catch(() => [] as string[]))
    const expired: string[] = []
    for (const name of names) {
      const path = join(this.#directory, name)
      const info = await stat(path).catch(() => undefined)
      if (info === undefined || info.mtimeMs + this.#expiryMs > now) continue
      if (name.endsWith('.json')) {
        const id = name.slice(0, -5)
        // The record is written once at creation; the data file's mtime is the last activity.
        const data = await stat(this.dataPath(id)).catch(() => undefined)
        if (data !== undefined && data.mtimeMs + this.#expiryMs > now) continue
        await this.remove(id).catch(() => rm(path, { force: true }))
        expired.push(id)
      } else if (name.endsWith('.done')) {
        const id = name.slice(0, -5)
        await rm(this.replyPath(id), { force: true })
        await rm(path, { force: true })
      } else if (!names.has(`${name}.json`)) {
        // A data file without its record, a reply without a `.done`, a temporary file.
        await rm(path, { force: true })
      }
    }
    return expired
  }
}

async function writeAtomically (path: string, text: string): Promise<void> {
  const temp = `${path}.tmp-${process.pid}`
  await writeFile(temp, text)
  await rename(temp, path)
}

async function syncDirectory (dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  } catch {
    // Some file systems cannot fsync a directory; the rename is atomic all the same.
  }
}
