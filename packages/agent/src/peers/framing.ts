import type { Stream } from '@libp2p/interface'
import { CanopyError } from '@canopy/core'

/**
 * Length-prefixed frames over a libp2p v3 stream: a 4-byte big-endian length, then
 * the body. Reads are bounded (a frame larger than the caller allows is a protocol
 * error) and timed out; writes wait for 'drain' when the stream's buffer is full
 * (v3's onDrain() resolves only once, see docs/LIBP2P.md). A stream that
 * ends in the middle of a frame is an error, never a short message.
 */
export class FramedStream {
  readonly stream: Stream
  private chunks: Uint8Array[] = []
  private buffered = 0
  /** The remote closed its end (cleanly, or with `failure`). */
  private ended = false
  private failure?: Error
  /** When the last bytes arrived (ms, performance.now()). */
  private lastData = 0
  /** The read waiting for more bytes, if any. */
  private wake?: () => void

  constructor (stream: Stream) {
    this.stream = stream
    // The stream's events rather than its async iterator: the iterator costs a
    // promise, and the timeout race here one more and a timer, for every chunk of at
    // most 64 KiB; this way a read waits once per frame.
    stream.addEventListener('message', (event) => {
      const data = event.data
      if (data instanceof Uint8Array) this.push(data)
      else for (const part of data) this.push(part)
      this.lastData = performance.now()
      this.wake?.()
    })
    const end = (error?: Error): void => {
      this.ended = true
      this.failure ??= error
      this.wake?.()
    }
    stream.addEventListener('close', (event) => end(event.error))
    stream.addEventListener('remoteCloseWrite', () => end())
    if (stream.readStatus !== 'readable' && stream.readStatus !== 'paused') this.ended = true
  }

  private push (chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.chunks.push(chunk)
    this.buffered += chunk.length
  }

  /** The next frame's body, or undefined at a clean end of stream between frames. */
  async read (maxBody: number, timeoutMs: number): Promise<Uint8Array | undefined> {
    const length = await this.readLength(maxBody, timeoutMs)
    if (length === undefined) return undefined
    return await this.readBody(length, timeoutMs)
  }

  /**
   * The length of the next frame's body (read it with readBody), or undefined at a
   * clean end of stream between frames.
   */
  async readLength (maxBody: number, timeoutMs: number): Promise<number | undefined> {
    if (!await this.fill(4, timeoutMs)) {
      if (this.buffered === 0) return undefined
      throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame header')
    }
    const length = Buffer.from(this.take(4)).readUInt32BE(0)
    if (length > maxBody) throw new CanopyError('ERR_PROTOCOL', `a frame of ${length} bytes exceeds the limit of ${maxBody}`)
    return length
  }

  /**
   * The next `n` bytes of the current frame's body. With `into` (at least `n` bytes
   * long), they are copied there, so that a block lands in memory the caller owns
   * in one copy; without it, they are a view of what arrived when it came in one
   * piece.
   */
  async readBody (n: number, timeoutMs: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!await this.fill(n, timeoutMs)) throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame')
    return this.take(n, into)
  }

  /**
   * Sends one frame given in parts (a block goes as it is, after its head, without
   * being copied into one buffer), then waits for 'drain' if the stream's buffer is full.
   */
  async write (...parts: Uint8Array[]): Promise<void> {
    let room = true
    for (const part of parts) room = this.stream.send(part)
    if (room) return
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

  /**
   * Waits until `n` bytes are buffered; false at a clean end of stream. Fails after
   * `timeoutMs` without any data from the peer.
   */
  private async fill (n: number, timeoutMs: number): Promise<boolean> {
    while (this.buffered < n) {
      if (this.failure !== undefined) throw this.failure
      if (this.ended) return false
      const since = performance.now()
      await new Promise<void>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined
        const done = (err?: Error): void => {
          clearTimeout(timer)
          this.wake = undefined
          if (err === undefined) resolve()
          else reject(err)
        }
        // Idle time, not time per frame: data that keeps coming moves the deadline.
        const check = (): void => {
          const idle = performance.now() - Math.max(since, this.lastData)
          if (idle >= timeoutMs) done(new CanopyError('ERR_TIMEOUT', `no data from the peer for ${timeoutMs} ms`))
          else timer = setTimeout(check, timeoutMs - idle)
        }
        this.wake = () => { if (this.buffered >= n || this.ended) done() }
        timer = setTimeout(check, timeoutMs)
      })
    }
    return true
  }

  private take (n: number, into?: Uint8Array): Uint8Array {
    const first = this.chunks[0]
    if (into === undefined && first.length >= n) {
      // The common case for big frames: no copy.
      this.chunks[0] = first.subarray(n)
      if (this.chunks[0].length === 0) this.chunks.shift()
      this.buffered -= n
      return first.subarray(0, n)
    }
    const out = into?.subarray(0, n) ?? new Uint8Array(n)
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
