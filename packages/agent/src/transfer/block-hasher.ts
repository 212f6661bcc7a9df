import { createHash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { Worker } from 'node:worker_threads'
import { digestsEqual } from '@canopy/core'
import { WRITE_PIECE, writeFully } from './partial-file.ts'
import { FileDigests } from './file-digest.ts'
import type { FileDigest } from './file-digest.ts'
import type { BlockRequest, HasherReply, WriteOrder } from './hasher-protocol.ts'

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

/**
 * SHA-256 of blocks on worker threads. Node 24 runs WebCrypto digests on the
 * calling thread, so an async-looking `subtle.digest` does not take hashing off the
 * event loop; these workers do. A block's memory is transferred to the worker and
 * back (no copy): `hash` resolves with the digest and the same bytes, in a new
 * Buffer over the returned memory. The caller must not touch `bytes` meanwhile.
 * `verifyAndWrite` also writes a block that matches its digest, on the same worker.
 * With `threads: 0` hashing is done inline.
 *
 * The workers also keep whole-file digests (`fileDigest`): with one worker, on it
 * (one thread for all hashing: the least memory); with two or more, on the last one,
 * which then takes no blocks, so that verifying blocks and hashing files run in
 * parallel; with none, on a thread started for them.
 */
export class BlockHasher {
  private readonly workers: Worker[] = []
  private readonly pending = new Map<number, Pending>()
  private readonly digests = new FileDigests(() => this.digestWorker())
  /** The thread for whole-file digests when there are no block workers. */
  private digestOnly?: Worker
  private nextId = 0
  private turn = 0
  private closing = false
  private readonly nice: number

  /**
   * `nice`: the Linux nice value of the worker threads (0: as the agent; 10: for
   * background work, so that hashing on a user's behalf yields the CPU to what the
   * user runs). Elsewhere, or where it cannot be set, it is ignored.
   */
  constructor (threads: number, options: { nice?: number } = {}) {
    this.nice = options.nice ?? 0
    for (let i = 0; i < threads; i++) {
      // A worker that dies takes its pending hashes with it: fail them (the job retries)
      // and hash inline from then on rather than post to a dead thread.
      this.workers.push(this.startWorker('./block-hasher-worker.js', (worker, err) => {
        if (!this.workers.includes(worker)) return
        this.workers.splice(this.workers.indexOf(worker), 1)
        for (const p of this.pending.values()) p.reject(err)
        this.pending.clear()
        this.digests.failWorker(worker, err)
      }))
    }
  }

  /** Starts the whole-file digest of the file at `path`, off the event loop. */
  fileDigest (path: string): FileDigest {
    return this.digests.open(path)
  }

  private digestWorker (): Worker {
    if (this.workers.length > 0) return this.workers[this.workers.length - 1]
    this.digestOnly ??= this.startWorker('./digest-worker.js', (worker, err) => {
      if (this.digestOnly === worker) this.digestOnly = undefined
      this.digests.failWorker(worker, err)
    })
    return this.digestOnly
  }

  /** A worker thread running `script`, answering blocks and digests; `retire` runs if it errs or exits. */
  private startWorker (script: string, retire: (worker: Worker, err: Error) => void): Worker {
    const worker = new Worker(new URL(script, import.meta.url), { workerData: { writePiece: WRITE_PIECE, nice: this.nice } })
    worker.unref()
    worker.on('message', (reply: HasherReply) => {
      if ('type' in reply) {
        this.digests.settle(reply)
        return
      }
      const { id, buffer, digest, written, error } = reply
      const p = this.pending.get(id)
      if (p === undefined) return
      this.pending.delete(id)
      if (error !== undefined) p.reject(Object.assign(new Error(`writing a block failed: ${error.message}`), { code: error.code }))
      else p.resolve({ digest: new Uint8Array(digest), bytes: Buffer.from(buffer, 0, p.length), written })
    })
    worker.on('error', (err) => retire(worker, err))
    worker.on('exit', (code) => {
      if (!this.closing) retire(worker, new Error(`the hashing worker exited (${code})`))
    })
    return worker
  }

  async hash (bytes: Buffer): Promise<{ digest: Uint8Array, bytes: Buffer }> {
    const { digest, bytes: back } = await this.run(bytes)
    return { digest, bytes: back }
  }

  /**
   * Verifies `bytes` against the SHA-256 `expected` and, only if they match, writes
   * them at `position` of `file`, both off the event loop. Resolves with whether
   * they matched (and are written) and the bytes; a failed write rejects with its
   * errno error. The caller must keep `file` open until this settles.
   */
  async verifyAndWrite (bytes: Buffer, expected: Uint8Array, file: FileHandle, position: number): Promise<{ ok: boolean, bytes: Buffer }> {
    const answer = await this.run(bytes, { fd: file.fd, position, expected })
    if (answer.written || !digestsEqual(answer.digest, expected)) return { ok: answer.written, bytes: answer.bytes }
    // Hashed inline: write from here.
    await writeFully(file, answer.bytes, position)
    return { ok: true, bytes: answer.bytes }
  }

  private async run (bytes: Buffer, write?: WriteOrder): Promise<Answer> {
    // Only memory the buffer owns alone can move; small buffers share Node's pool.
    const owned = bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer
    if (this.workers.length === 0 || !owned) {
      return { digest: createHash('sha256').update(bytes).digest(), bytes, written: false }
    }
    const id = this.nextId++
    // With two or more workers the last one keeps the whole-file digests and takes no blocks.
    const blockWorkers = this.workers.length > 1 ? this.workers.length - 1 : 1
    const worker = this.workers[this.turn++ % blockWorkers]
    return await new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, length: bytes.length })
      const request: BlockRequest = { id, buffer: bytes.buffer as ArrayBuffer, length: bytes.length, ...(write !== undefined ? { write } : {}) }
      worker.postMessage(request, [bytes.buffer as ArrayBuffer])
    })
  }

  async close (): Promise<void> {
    this.closing = true
    await Promise.all([...this.workers, ...(this.digestOnly === undefined ? [] : [this.digestOnly])].map(async w => await w.terminate()))
  }
}
