import { createHash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { Worker } from 'node:worker_threads'
import { digestsEqual } from '@canopy/core'
import { WRITE_PIECE, writeFully } from './partial-file.ts'
import { WholeFileHasher } from './whole-file-hasher.ts'

interface Answer {
  digest: Uint8Array
  bytes: Buffer
  /** The block matched and was written (asked with a write order only). */
  written: boolean
}

interface Pending {
  resolve: (value: Answer) => void
  reject: (err: Error) => void
  length: number
}

interface BlockReply {
  id: number
  buffer: ArrayBuffer
  digest: ArrayBuffer
  written: boolean
  error?: { code?: string, message: string }
}

type SessionReply = { type: 'digest', session: number, hex: string } | { type: 'fileError', session: number, message: string }

/**
 * The SHA-256 of a file being written, kept by a BlockHasher's worker (see
 * `BlockHasher.fileDigest`): blocks written at the point the file is hashed up to are
 * hashed from memory; what `advance` reports complete beyond it is read back from
 * the file. The interface of WholeFileHasher, which is what it replaces.
 */
export interface FileDigest {
  /** The first `upTo` bytes of the file are final. */
  advance: (upTo: number) => void
  /** Resolves with the hex SHA-256 of the first `size` bytes once they are all hashed. */
  finish: (size: number) => Promise<string>
  /** Ends the session (after finish, or to abandon it). */
  close: () => Promise<void>
}

class WorkerFileDigest implements FileDigest {
  /** Identifies the session in block write orders (see BlockHasher.verifyAndWrite). */
  readonly id: number
  readonly worker: Worker
  private readonly ended: (id: number) => void
  private result?: { resolve: (hex: string) => void, reject: (err: Error) => void }
  private failure?: Error
  private closed = false

  constructor (id: number, worker: Worker, path: string, ended: (id: number) => void) {
    this.id = id
    this.worker = worker
    this.ended = ended
    worker.postMessage({ type: 'open', session: id, path })
  }

  advance (upTo: number): void {
    if (!this.closed) this.worker.postMessage({ type: 'advance', session: this.id, upTo })
  }

  async finish (size: number): Promise<string> {
    if (this.failure !== undefined) throw this.failure
    if (this.closed) throw new Error('the file digest was closed')
    return await new Promise<string>((resolve, reject) => {
      this.result = { resolve, reject }
      this.worker.postMessage({ type: 'finish', session: this.id, size })
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.ended(this.id)
    this.worker.postMessage({ type: 'close', session: this.id })
  }

  /** From the worker: the digest, or why there is none. */
  settle (reply: SessionReply): void {
    if (reply.type === 'digest') this.result?.resolve(reply.hex)
    else this.fail(new Error(`hashing the partial file failed: ${reply.message}`))
  }

  fail (err: Error): void {
    this.failure ??= err
    this.result?.reject(err)
  }
}

/**
 * SHA-256 of blocks on worker threads. Node 24 runs WebCrypto digests on the
 * calling thread, so an async-looking `subtle.digest` does not take hashing off the
 * event loop; these workers do. A block's memory is transferred to the worker and
 * back (no copy): `hash` resolves with the digest and the same bytes, in a new
 * Buffer over the returned memory. The caller must not touch `bytes` meanwhile.
 * `verifyAndWrite` also writes a block that matches its digest, on the same worker.
 * With `threads: 0` hashing is done inline.
 */
export class BlockHasher {
  private readonly workers: Worker[] = []
  private readonly pending = new Map<number, Pending>()
  private readonly sessions = new Map<number, WorkerFileDigest>()
  private nextId = 0
  private nextSession = 0
  private turn = 0
  private closing = false

  constructor (threads: number) {
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(new URL('./block-hasher-worker.js', import.meta.url), { workerData: { writePiece: WRITE_PIECE } })
      worker.unref()
      worker.on('message', (reply: BlockReply | SessionReply) => {
        if ('type' in reply) {
          this.sessions.get(reply.session)?.settle(reply)
          return
        }
        const { id, buffer, digest, written, error } = reply
        const p = this.pending.get(id)
        if (p === undefined) return
        this.pending.delete(id)
        if (error !== undefined) p.reject(Object.assign(new Error(`writing a block failed: ${error.message}`), { code: error.code }))
        else p.resolve({ digest: new Uint8Array(digest), bytes: Buffer.from(buffer, 0, p.length), written })
      })
      // A worker that dies takes its pending hashes with it: fail them (the job retries)
      // and hash inline from then on rather than post to a dead thread.
      const retire = (err: Error): void => {
        this.workers.splice(this.workers.indexOf(worker), 1)
        for (const p of this.pending.values()) p.reject(err)
        this.pending.clear()
        for (const session of this.sessions.values()) if (session.worker === worker) session.fail(err)
      }
      worker.on('error', retire)
      worker.on('exit', (code) => {
        if (!this.closing && this.workers.includes(worker)) retire(new Error(`the hashing worker exited (${code})`))
      })
      this.workers.push(worker)
    }
  }

  /**
   * Starts the whole-file digest of the file at `path`, kept on a worker; blocks
   * written through `verifyAndWrite` with this session are hashed from memory when
   * they come in order. Without workers, a WholeFileHasher (its own thread) does it.
   */
  fileDigest (path: string): FileDigest {
    if (this.workers.length === 0) return new WholeFileHasher(path)
    const id = this.nextSession++
    const session = new WorkerFileDigest(id, this.workers[id % this.workers.length], path, (ended) => this.sessions.delete(ended))
    this.sessions.set(id, session)
    return session
  }

  async hash (bytes: Buffer): Promise<{ digest: Uint8Array, bytes: Buffer }> {
    const { digest, bytes: back } = await this.run(bytes)
    return { digest, bytes: back }
  }

  /**
   * Verifies `bytes` against the SHA-256 `expected` and, only if they match, writes
   * them at `position` of `file`, both off the event loop. Resolves with whether
   * they matched (and are written) and the bytes; a failed write rejects with its
   * errno error. The caller must keep `file` open until this settles. Given the
   * file's `digest` session, a written block that is next in the file is hashed into
   * it from memory.
   */
  async verifyAndWrite (bytes: Buffer, expected: Uint8Array, file: FileHandle, position: number, digest?: FileDigest): Promise<{ ok: boolean, bytes: Buffer }> {
    const session = digest instanceof WorkerFileDigest ? digest.id : undefined
    const answer = await this.run(bytes, { fd: file.fd, position, expected, session })
    if (answer.written || !digestsEqual(answer.digest, expected)) return { ok: answer.written, bytes: answer.bytes }
    // Hashed inline: write from here.
    await writeFully(file, answer.bytes, position)
    return { ok: true, bytes: answer.bytes }
  }

  private async run (bytes: Buffer, write?: { fd: number, position: number, expected: Uint8Array, session?: number }): Promise<Answer> {
    // Only memory the buffer owns alone can move; small buffers share Node's pool.
    const owned = bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer
    if (this.workers.length === 0 || !owned) {
      return { digest: createHash('sha256').update(bytes).digest(), bytes, written: false }
    }
    const id = this.nextId++
    const worker = this.workers[this.turn++ % this.workers.length]
    return await new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, length: bytes.length })
      worker.postMessage({ id, buffer: bytes.buffer, length: bytes.length, write }, [bytes.buffer as ArrayBuffer])
    })
  }

  async close (): Promise<void> {
    this.closing = true
    await Promise.all(this.workers.map(async w => await w.terminate()))
  }
}
