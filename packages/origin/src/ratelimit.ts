import { setTimeout as sleep } from 'node:timers/promises'

/**
 * One bucket shared by every response of an origin, so `rateLimit` caps the
 * origin's total output (what a WAN link would), not each connection's.
 * Takers may go into debt and then sleep it off: a large piece never stalls forever,
 * and concurrent takers queue up in the order they asked.
 */
export class TokenBucket {
  readonly rate: number
  readonly #burst: number
  #tokens: number
  #last = performance.now()

  /** `rate` in bytes per second; bursts of up to 50 ms of traffic after idle time. */
  constructor (rate: number) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`rate limit must be a positive number of bytes per second, not ${rate}`)
    this.rate = rate
    this.#burst = Math.max(1, rate / 20)
    this.#tokens = this.#burst
  }

  /** Piece size that keeps pacing smooth at this rate. */
  get pieceSize (): number {
    return Math.min(64 * 1024, Math.max(1024, Math.floor(this.rate / 20)))
  }

  async take (bytes: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now()
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.rate / 1000)
    this.#last = now
    this.#tokens -= bytes
    if (this.#tokens >= 0) return
    try {
      await sleep(-this.#tokens / this.rate * 1000, undefined, { signal })
    } catch (err) {
      // Bytes that will never be sent should not slow the others down.
      this.#tokens += bytes
      throw err
    }
  }
}
