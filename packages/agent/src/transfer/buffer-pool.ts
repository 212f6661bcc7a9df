/**
 * Reuses block-sized buffers. A transfer allocates one buffer per block; at hundreds
 * of MiB/s, leaving them to the garbage collector made RSS climb toward 250 MiB and
 * spent a tenth of the time in GC. Buffers of other sizes are simply allocated.
 */
export class BufferPool {
  private readonly free: Buffer[] = []
  private readonly size: number
  private readonly max: number

  constructor (size: number, max: number) {
    this.size = size
    this.max = max
  }

  /** A buffer of `length` bytes with its own memory (never a slice of Node's shared pool). */
  take (length: number): Buffer {
    if (length === this.size) {
      const reused = this.free.pop()
      if (reused !== undefined) return reused
    }
    // allocUnsafeSlow: own ArrayBuffer, so it can be transferred to a hashing worker
    return Buffer.allocUnsafeSlow(length)
  }

  give (buffer: Buffer): void {
    if (buffer.length === this.size && buffer.byteOffset === 0 && this.free.length < this.max) this.free.push(buffer)
  }
}
