/**
 * Pacing of what a transfer reads. A reader asks `readSize()` before each socket
 * read and reports `consumed(bytes)` after it; a positive answer is how long to
 * stop reading. A stopped socket is what slows the sender: its data piles up in our
 * receive buffer, the advertised TCP window closes, and the origin can send only as
 * fast as we read (a receiver cannot set the sender's congestion window).
 */
export interface ReadPacer {
  /** Most bytes the next read may take now (Infinity: no limit). */
  readSize: () => number
  /** `bytes` were read; ms to wait before the next read (0: read on). */
  consumed: (bytes: number) => number
  /** Bytes requested and not yet received, bounded (range requests); none: no bound. */
  window?: RequestWindow
}

/**
 * The window of a receiver that asks for bytes: what it has requested and not yet
 * received is what the origin may have in flight toward it, whatever TCP's windows
 * are. LEDBAT bounds a sender's congestion window; a receiver bounds this.
 */
export interface RequestWindow {
  /** Bytes one request should ask for at most now (Infinity: as many as it likes). */
  requestSize: () => number
  /** Waits until `bytes` more fit in the window; resolves with the function that gives them back. */
  acquire: (bytes: number, signal: AbortSignal) => Promise<() => void>
}

export interface TokenBucketInit {
  /** The rate in force, bytes/s, read at every refill (it may change at any time); 0 blocks. */
  rate: () => number
  /** Burst the bucket holds, as time at the current rate. Default 20 ms. */
  burstMs?: number
  /** Smallest burst, bytes. Default 16 KiB (a read smaller than that costs more CPU than it saves). */
  minBurst?: number
  /** Clock, ms. Default performance.now. */
  now?: () => number
}

/** Longest single pause, ms: a rate that rises meanwhile is noticed within this. */
const MAX_PAUSE_MS = 250

/**
 * A token bucket that may go into debt by one read: a read takes at most what the
 * bucket holds (at least one minimum burst), and the reader then waits until the
 * debt is paid. Reads stay small (one burst), so the origin's bursts into the WAN
 * queue stay small too: 16 KiB is 6.5 ms of a 20 Mbit/s link.
 */
export class TokenBucket implements ReadPacer {
  private readonly rateOf: () => number
  private readonly burstMs: number
  private readonly minBurst: number
  private readonly now: () => number
  private tokens: number
  private last: number

  constructor (init: TokenBucketInit) {
    this.rateOf = init.rate
    this.burstMs = init.burstMs ?? 20
    this.minBurst = init.minBurst ?? 16 * 1024
    this.now = init.now ?? (() => performance.now())
    this.last = this.now()
    this.tokens = this.burst(this.rateOf())
  }

  private burst (rate: number): number {
    // A bucket at a rate of 0 holds nothing: blocked means blocked.
    if (rate <= 0) return 0
    return Math.max(this.minBurst, rate * this.burstMs / 1000)
  }

  private refill (): number {
    const now = this.now()
    const rate = this.rateOf()
    this.tokens = Math.min(this.burst(rate), this.tokens + Math.max(0, now - this.last) * rate / 1000)
    this.last = now
    return rate
  }

  readSize = (): number => {
    const rate = this.refill()
    if (!Number.isFinite(rate)) return Infinity
    // Blocked (a cap of 0): a byte at a time, so a paused socket barely trickles.
    if (rate <= 0) return 1
    return Math.max(this.minBurst, Math.floor(this.tokens))
  }

  consumed = (bytes: number): number => {
    const rate = this.refill()
    if (!Number.isFinite(rate)) return 0
    this.tokens -= bytes
    return this.wait(rate)
  }

  /** Ms until the bucket is out of debt (MAX_PAUSE_MS at most, then ask again). */
  wait (rate = this.refill()): number {
    if (this.tokens >= 0 || !Number.isFinite(rate)) return 0
    if (rate <= 0) return MAX_PAUSE_MS
    return Math.min(MAX_PAUSE_MS, Math.ceil(-this.tokens * 1000 / rate))
  }
}

/**
 * A window of `limit()` bytes shared by every request of a WAN path. A request
 * larger than the whole window is let through alone (the window never deadlocks).
 * Waiters look again when bytes come back and every WINDOW_RECHECK_MS (the limit
 * follows the controller's rate).
 */
export class ByteWindow implements RequestWindow {
  private inFlight = 0
  private readonly waiters: Array<{ bytes: number, wake: () => void }> = []
  private timer?: NodeJS.Timeout
  private readonly limit: () => number
  private readonly pieces: number

  /** `limit()`: the window now, bytes (Infinity: none); requests ask for about limit / pieces. */
  constructor (limit: () => number, pieces = 4) {
    this.limit = limit
    this.pieces = pieces
  }

  requestSize = (): number => {
    const limit = this.limit()
    return Number.isFinite(limit) ? Math.max(MIN_REQUEST, Math.floor(limit / this.pieces)) : Infinity
  }

  acquire = async (bytes: number, signal: AbortSignal): Promise<() => void> => {
    signal.throwIfAborted()
    if (!this.fits(bytes)) {
      await new Promise<void>((resolve, reject) => {
        const waiter = {
          bytes,
          wake: () => {
            signal.removeEventListener('abort', onAbort)
            resolve()
          }
        }
        const onAbort = (): void => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1)
          reject(signal.reason)
        }
        signal.addEventListener('abort', onAbort, { once: true })
        this.waiters.push(waiter)
        this.recheckSoon()
      })
    } else {
      this.inFlight += bytes
    }
    let given = false
    return () => {
      if (given) return
      given = true
      this.inFlight -= bytes
      this.wakeWaiters()
    }
  }

  private fits (bytes: number): boolean {
    return this.inFlight === 0 || this.inFlight + bytes <= this.limit()
  }

  private wakeWaiters (): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0].bytes)) {
      const w = this.waiters.shift()!
      this.inFlight += w.bytes
      w.wake()
    }
    if (this.waiters.length > 0) this.recheckSoon()
  }

  private recheckSoon (): void {
    if (this.timer !== undefined) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.wakeWaiters()
    }, WINDOW_RECHECK_MS)
    this.timer.unref()
  }
}

/** Smallest range request a window asks for (a request costs a round trip of headers). */
const MIN_REQUEST = 16 * 1024
const WINDOW_RECHECK_MS = 20

/** For stream readers: reports `bytes` and sleeps as long as the pacer says. */
export async function pace (pacer: ReadPacer | undefined, bytes: number, signal: AbortSignal): Promise<void> {
  if (pacer === undefined) return
  for (let wait = pacer.consumed(bytes); wait > 0; wait = pacer.consumed(0)) {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }, wait)
      const onAbort = (): void => {
        clearTimeout(timer)
        reject(signal.reason)
      }
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
  }
}

/** A body read through a pacer (the undici paths: a paused iteration stops the socket too). */
export async function * pacedChunks (body: AsyncIterable<Buffer>, pacer: ReadPacer | undefined, signal: AbortSignal): AsyncGenerator<Buffer> {
  for await (const chunk of body) {
    yield chunk
    await pace(pacer, chunk.length, signal)
  }
}
