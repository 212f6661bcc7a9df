/**
 * Reuses block buffers, one pool for the whole agent. A transfer allocates one buffer
 * per block; at hundreds of MiB/s, leaving them to the garbage collector made RSS
 * climb toward 250 MiB and spent a tenth of the time in GC. The pool is the agent's,
 * not a transfer's: with a pool per transfer, the next transfer allocated a new set
 * while the last one's was still waiting for the collector, and the agent's peak RSS
 * over five 1 GiB downloads in a row was 250-258 MiB; with one pool, 216-220
 * (`BENCH_SIZES=1GiB BENCH_ROUNDS=5 npm run bench:download`).
 *
 * Only buffers of a power-of-two length are kept (block sizes are powers of two; a
 * file's short last block is not worth keeping), up to `maxBytes` in all, which is
 * also what the pool holds while the agent is idle.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>()
  private readonly maxBytes: number
  private pooledBytes = 0

  constructor (maxBytes: number) {
    this.maxBytes = maxBytes
  }

  /** A buffer of `length` bytes with its own memory (never a slice of Node's shared pool). */
  take (length: number): Buffer {
    const reused = this.free.get(length)?.pop()
    if (reused !== undefined) {
      this.pooledBytes -= length
      return reused
    }
    // allocUnsafeSlow: own ArrayBuffer, so it can be transferred to a hashing worker
    return Buffer.allocUnsafeSlow(length)
  }

  /** Takes back a buffer from `take` that nothing reads or writes any more. */
  give (buffer: Buffer): void {
    const length = buffer.length
    const ownsMemory = buffer.byteOffset === 0 && buffer.buffer.byteLength === length
    if (!ownsMemory || length === 0 || (length & (length - 1)) !== 0 || this.pooledBytes + length > this.maxBytes) return
    let list = this.free.get(length)
    if (list === undefined) this.free.set(length, list = [])
    list.push(buffer)
    this.pooledBytes += length
  }

  /** Bytes kept for reuse now. */
  get bytes (): number {
    return this.pooledBytes
  }
}
