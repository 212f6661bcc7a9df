import { createHash } from 'node:crypto'
import { Worker } from 'node:worker_threads'

interface Pending {
  resolve: (value: { digest: Uint8Array, bytes: Buffer }) => void
  reject: (err: Error) => void
  length: number
}

/**
 * SHA-256 of blocks on worker threads. Node 24 runs WebCrypto digests on the
 * calling thread, so an async-looking `subtle.digest` does not take hashing off the
 * event loop; these workers do. A block's memory is transferred to the worker and
 * back (no copy): `hash` resolves with the digest and the same bytes, in a new
 * Buffer over the returned memory. The caller must not touch `bytes` meanwhile.
 * With `threads: 0` hashing is done inline.
 */
export class BlockHasher {
  private readonly workers: Worker[] = []
  private readonly pending = new Map<number, Pending>()
  private nextId = 0
  private turn = 0
  private closing = false

  constructor (threads: number) {
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(new URL('./block-hasher-worker.js', import.meta.url))
      worker.unref()
      worker.on('message', ({ id, buffer, digest }: { id: number, buffer: ArrayBuffer, digest: ArrayBuffer }) => {
        const p = this.pending.get(id)
        if (p === undefined) return
        this.pending.delete(id)
        p.resolve({ digest: new Uint8Array(digest), bytes: Buffer.from(buffer, 0, p.length) })
      })
      // A worker that dies takes its pending hashes with it: fail them (the job retries)
      // and hash inline from then on rather than post to a dead thread.
      const retire = (err: Error): void => {
        this.workers.splice(this.workers.indexOf(worker), 1)
        for (const p of this.pending.values()) p.reject(err)
        this.pending.clear()
      }
      worker.on('error', retire)
      worker.on('exit', (code) => {
        if (!this.closing && this.workers.includes(worker)) retire(new Error(`the hashing worker exited (${code})`))
      })
      this.workers.push(worker)
    }
  }

  async hash (bytes: Buffer): Promise<{ digest: Uint8Array, bytes: Buffer }> {
    // Only memory the buffer owns alone can move; small buffers share Node's pool.
    const owned = bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer
    if (this.workers.length === 0 || !owned) {
      return { digest: createHash('sha256').update(bytes).digest(), bytes }
    }
    const id = this.nextId++
    const worker = this.workers[this.turn++ % this.workers.length]
    return await new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, length: bytes.length })
      worker.postMessage({ id, buffer: bytes.buffer, length: bytes.length }, [bytes.buffer as ArrayBuffer])
    })
  }

  async close (): Promise<void> {
    this.closing = true
    await Promise.all(this.workers.map(async w => await w.terminate()))
  }
}
