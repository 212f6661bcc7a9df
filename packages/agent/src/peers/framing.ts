import type { Stream } from '@libp2p/interface'
import { CanopyError } from '@canopy/core'

export interface FramedStreamInit {
  /**
   * Bytes kept from the peer before the stream is paused (the muxer then grants no
   * more window, and the peer must stop sending). A read waiting for a longer frame
   * than this may buffer that frame, no more.
   */
  maxBuffered: number
  /** How long one write may wait for the peer to read (then the stream is reset). */
  writeTimeoutMs: number
}

/**
 * Length-prefixed frames over a libp2p v3 stream: a 4-byte big-endian length, then
 * the body. Reads are bounded (a frame larger than the caller allows, or an empty
 * one, is a protocol error) and timed out; what arrives before it is read is bounded
 * too: past `maxBuffered` the stream is paused, so yamux stops returning window
 * credit and the peer can send at most its current window, which the stream's own
 * read buffer limit (4 MiB) caps; a peer that sends beyond it gets its stream reset
 * (v3 returns window credit as soon as a chunk is dispatched, so without the pause a
 * peer that is never read from could fill the agent's memory: 1.7 GiB in 11 s, see
 * docs/SECURITY.md). Writes wait for 'drain' when the stream's buffer is full (v3's
 * onDrain() resolves only once, see docs/LIBP2P.md), at most `writeTimeoutMs`. A stream that ends in the
 * middle of a frame is an error, never a short message.
 */
export class FramedStream {
  readonly stream: Stream
  private readonly maxBuffered: number
  private readonly writeTimeoutMs: number
  private chunks: Uint8Array[] = []
  private buffered = 0
  /** Bytes the read under way waits for (it may buffer that much even past maxBuffered). */
  private wanted = 0
  /** The remote closed its end (cleanly, or with `failure`). */
  private ended = false
  private failure?: Error
  /** When the last bytes arrived (ms, performance.now()). */
  private lastData = 0
  /** The read waiting for more bytes, if any. */
  private wake?: () => void

  constructor (stream: Stream, init: FramedStreamInit) {
    this.stream = stream
    this.maxBuffered = init.maxBuffered
    this.writeTimeoutMs = init.writeTimeoutMs
    // The stream's events rather than its async iterator: the iterator costs a
    // promise, and the timeout race here one more and a timer, for every chunk of at
    // most 64 KiB; this way a read waits once per frame.
    stream.addEventListener('message', (event) => {
      const data = event.data
      if (data instanceof Uint8Array) this.push(data)
      else for (const part of data) this.push(part)
      this.lastData = performance.now()
      this.flow()
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

  /**
   * Pauses the stream while more than the bound is buffered and no read needs it,
   * resumes it otherwise. (A closed stream can neither: v3 throws, once from a timer.)
   */
  private flow (): void {
    const status = this.stream.readStatus
    if (status !== 'readable' && status !== 'paused') return
    const full = this.buffered >= Math.max(this.maxBuffered, this.wanted)
    try {
      if (full && status === 'readable') this.stream.pause()
      else if (!full && status === 'paused') this.stream.resume()
    } catch {
      // closing under us: the 'close' event ends reads
    }
  }

  /**
   * The next frame's body, or undefined at a clean end of stream between frames.
   * Fails after `timeoutMs` without data, and (given `wholeFrameMs`) when the whole
   * frame took longer than that, however its bytes trickled in.
   */
  async read (maxBody: number, timeoutMs: number, wholeFrameMs?: number): Promise<Uint8Array | undefined> {
    const deadline = wholeFrameMs === undefined ? undefined : performance.now() + wholeFrameMs
    const length = await this.readLength(maxBody, timeoutMs, deadline)
    if (length === undefined) return undefined
    return await this.readBody(length, timeoutMs, undefined, deadline)
  }


  /**
   * The length of the next frame's body (read it with readBody), or undefined at a
   * clean end of stream between frames.
   */
  async readLength (maxBody: number, timeoutMs: number, deadline?: number): Promise<number | undefined> {
    if (!await this.fill(4, timeoutMs, deadline)) {
      if (this.buffered === 0) return undefined
      throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame header')
    }
    const length = Buffer.from(this.take(4)).readUInt32BE(0)
    // Every message has at least a type byte: an empty frame is a peer's error, not
    // a message to decode (it threw a TypeError here).
    if (length === 0) throw new CanopyError('ERR_PROTOCOL', 'an empty frame (every message has at least its type byte)')
    if (length > maxBody) throw new CanopyError('ERR_PROTOCOL', `a frame of ${length} bytes exceeds the limit of ${maxBody}`)
    return length
  }

  /**
   * The next `n` bytes of the current frame's body. With `into` (at least `n` bytes
   * long), they are copied there, so that a block lands in memory the caller owns
   * in one copy; without it, they are a view of what arrived when it came in one
   * piece.
   */
  async readBody (n: number, timeoutMs: number, into?: Uint8Array, deadline?: number): Promise<Uint8Array> {
    if (!await this.fill(n, timeoutMs, deadline)) throw new CanopyError('ERR_PROTOCOL', 'the stream ended inside a frame')
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
      const settle = (err?: Error): void => {
        clearTimeout(timer)
        this.stream.removeEventListener('drain', onDrain)
        this.stream.removeEventListener('close', onClose)
        if (err === undefined) resolve()
        else reject(err)
      }
      const onDrain = (): void => settle()
      const onClose = (): void => settle(new CanopyError('ERR_PROTOCOL', 'the stream closed while sending'))
      // A peer that stops reading holds what we queued for it: past the deadline its
      // stream is reset, and the memory freed.
      const timer = setTimeout(() => {
        const err = new CanopyError('ERR_TIMEOUT', `the peer read nothing for ${this.writeTimeoutMs} ms; its stream is reset`)
        settle(err)
        this.stream.abort(err)
      }, this.writeTimeoutMs)
      this.stream.addEventListener('drain', onDrain, { once: true })
      this.stream.addEventListener('close', onClose, { once: true })
    })
  }

  /**
   * Waits until `n` bytes are buffered; false at a clean end of stream. Fails after
   * `timeoutMs` without any data from the peer.
   */
  private async fill (n: number, timeoutMs: number, deadline = Infinity): Promise<boolean> {
    if (this.buffered < n) {
      this.wanted = n
      this.flow()
    }
    try {
      return await this.fillWanted(n, timeoutMs, deadline)
    } finally {
      this.wanted = 0
    }
  }

  private async fillWanted (n: number, timeoutMs: number, deadline: number): Promise<boolean> {
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
          const now = performance.now()
          const idle = now - Math.max(since, this.lastData)
          if (idle >= timeoutMs) done(new CanopyError('ERR_TIMEOUT', `no data from the peer for ${timeoutMs} ms`))
          else if (now >= deadline) done(new CanopyError('ERR_TIMEOUT', 'the peer sent a frame too slowly'))
          else timer = setTimeout(check, Math.min(timeoutMs - idle, deadline - now))
        }
        this.wake = () => { if (this.buffered >= n || this.ended) done() }
        timer = setTimeout(check, Math.min(timeoutMs, Math.max(0, deadline - performance.now())))
      })
    }
    return true
  }

  private take (n: number, into?: Uint8Array): Uint8Array {
    try {
      return this.takeBuffered(n, into)
    } finally {
      this.flow()
    }
  }

  private takeBuffered (n: number, into?: Uint8Array): Uint8Array {
    if (n === 0) return new Uint8Array(0)
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
