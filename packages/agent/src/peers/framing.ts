import type { Stream } from '@libp2p/interface'
import { CanopyError } from '@canopy/core'

/**
 * Length-prefixed frames over a libp2p v3 stream: a 4-byte big-endian length, then
 * the body. Reads are bounded (a frame larger than the caller allows is a protocol
 * error) and timed out; writes wait for 'drain' when the stream's buffer is full
 * (v3's onDrain() resolves only once, see shared/notes/libp2p-v3.md). A stream that
 * ends in the middle of a frame is an error, never a short message.
 */
export class FramedStream {
  readonly stream: Stream
  private readonly iterator: AsyncIterator<Uint8Array | { subarray: () => Uint8Array }>
  private chunks: Uint8Array[] = []
  private buffered = 0

  constructor (stream: Stream) {
    this.stream = stream
    this.iterator = stream[Symbol.asyncIterator]()
  }

  /** The next frame's body, or undefined at a clean end of stream between frames. */
  async read (maxBody: number, timeoutMs: number): Promise<Uint8Array | undefined> {
    if (!await this.fill(4, timeoutMs)) {
      if (this.buffered === 0) return undefined
      throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame header')
    }
    const length = Buffer.from(this.take(4)).readUInt32BE(0)
    if (length > maxBody) throw new CanopyError('ERR_PROTOCOL', `a frame of ${length} bytes exceeds the limit of ${maxBody}`)
    if (!await this.fill(length, timeoutMs)) throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame')
    return this.take(length)
  }

  async write (frame: Uint8Array): Promise<void> {
    if (this.stream.send(frame)) return
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        this.stream.removeEventListener('close', onClose)
        resolve()
      }
      const onClose = (): void => {
        this.stream.removeEventListener('drain', onDrain)
        reject(new CanopyError('ERR_PROTOCOL', 'the stream closed while sending'))
      }
      this.stream.addEventListener('drain', onDrain, { once: true })
      this.stream.addEventListener('close', onClose, { once: true })
    })
  }

  /** Reads until `n` bytes are buffered; false at end of stream. */
  private async fill (n: number, timeoutMs: number): Promise<boolean> {
    while (this.buffered < n) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new CanopyError('ERR_TIMEOUT', `no data from the peer for ${timeoutMs} ms`)), timeoutMs)
      })
      let next
      const pending = this.iterator.next()
      // If the timeout wins, the read is abandoned: its later rejection (a reset
      // stream) must not count as unhandled.
      pending.catch(() => {})
      try {
        next = await Promise.race([pending, timeout])
      } finally {
        clearTimeout(timer)
      }
      if (next.done === true) return false
      const chunk = next.value instanceof Uint8Array ? next.value : next.value.subarray()
      if (chunk.length === 0) continue
      this.chunks.push(chunk)
      this.buffered += chunk.length
    }
    return true
  }

  private take (n: number): Uint8Array {
    const first = this.chunks[0]
    if (first.length >= n) {
      // The common case for big frames: no copy.
      this.chunks[0] = first.subarray(n)
      if (this.chunks[0].length === 0) this.chunks.shift()
      this.buffered -= n
      return first.subarray(0, n)
    }
    const out = new Uint8Array(n)
    let filled = 0
    while (filled < n) {
      const head = this.chunks[0]
      const use = Math.min(head.length, n - filled)
      out.set(head.subarray(0, use), filled)
      filled += use
      if (use === head.length) this.chunks.shift()
      else this.chunks[0] = head.subarray(use)
    }
    this.buffered -= n
    return out
  }
}
