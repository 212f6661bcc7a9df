/**
 * What serving peers may cost, and the counters that hold it there: the limits
 * (ServeLimits; the defaults are exchange.ts's DEFAULT_SERVE_LIMITS), a first-come
 * semaphore in bytes or requests (Allowance), per-key counts (Counter), and the remote
 * address a limit per address is keyed by.
 */
import type { Connection } from '@libp2p/interface'

/**
 * What one agent spends on serving peers, at most. Every outside input is bounded:
 * a member (anyone with the swarm key, with or without a content key) can open
 * streams, send requests and stop reading; these caps hold what that costs. The
 * figures are what docs/SECURITY.md states.
 */
export interface ServeLimits {
  /** Exchange streams served at once per peer id (and per connection). */
  streamsPerPeer: number
  /**
   * Exchange streams one peer id may open per second. Past it the stream is refused
   * and the peer gets a strike (sharing.ts bans after three): each new stream brings
   * its first yamux window (256 KiB) before anything can refuse it, so a peer that
   * opens and drops streams fast makes the agent decrypt and discard what it pushes
   * (~450 streams/s, +185..+335 MiB RSS in test/hostile-peers.test.ts before strikes).
   * An honest peer opens one stream per content it fetches from us.
   */
  streamOpensPerSecond: number
  /** Exchange streams served at once per remote IP address (peer ids cost nothing to mint). */
  streamsPerAddress: number
  /** Exchange streams served at once in all. */
  streams: number
  /** Requests of one peer (all its streams) being answered at once. */
  requestsPerPeer: number
  /** Bytes of answers (blocks, bitfields) read and not yet handed to the muxer, over all peers. */
  budgetBytes: number
  /** Bytes of requests buffered per stream before it is paused (backpressure into yamux). */
  requestBufferBytes: number
  /** How long an answer may wait for the peer to read (then its stream is reset). */
  writeTimeoutMs: number
  /** How long the next whole request may take to arrive, however its bytes trickle in. */
  requestTimeoutMs: number
}

/** The IP address of a connection's remote end (the text after /ip4/ or /ip6/), or its whole address. */
export function remoteAddress (connection: Connection): string {
  const first = connection.remoteAddr.getComponents()[0]
  return first?.value ?? connection.remoteAddr.toString()
}

/**
 * A counting semaphore in units (bytes, requests), first come first served. One
 * holder may always take more than the capacity when nothing else is held, so that
 * an answer larger than the budget is slow, never stuck.
 */
export class Allowance {
  private used = 0
  private readonly waiters: Array<{ units: number, grant: () => void }> = []
  readonly capacity: number

  constructor (capacity: number) {
    this.capacity = capacity
  }

  get idle (): boolean {
    return this.used === 0 && this.waiters.length === 0
  }

  async take (units: number, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted()
    if (this.waiters.length === 0 && (this.used === 0 || this.used + units <= this.capacity)) {
      this.used += units
      return
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        units,
        grant: () => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        }
      }
      const onAbort = (): void => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1)
        reject(signal.reason)
        this.grantWaiting()
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(waiter)
    })
  }

  give (units: number): void {
    this.used -= units
    this.grantWaiting()
  }

  private grantWaiting (): void {
    while (this.waiters.length > 0 && (this.used === 0 || this.used + this.waiters[0].units <= this.capacity)) {
      const waiter = this.waiters.shift()!
      this.used += waiter.units
      waiter.grant()
    }
  }
}

/** Counts held per key (peer id, address); a key at its cap is refused. */
export class Counter {
  private readonly counts = new Map<string, number>()
  count (key: string): number {
    return this.counts.get(key) ?? 0
  }

  add (key: string, delta: number): void {
    const next = this.count(key) + delta
    if (next === 0) this.counts.delete(key)
    else this.counts.set(key, next)
  }
}

/**
 * Events per key in the current one-second window (stream opens per peer id): a
 * fixed window, so a burst straddling two windows may reach twice the rate, once.
 * Keys whose window is over are swept when the map grows, so it stays as small as
 * the keys seen in the last second (plus `sweepAt`).
 */
export class RateCounter {
  private readonly windows = new Map<string, { start: number, count: number }>()
  private readonly sweepAt: number

  constructor (sweepAt = 1024) {
    this.sweepAt = sweepAt
  }

  /** Counts one event for `key` now; returns the count in its current window (1 for the first). */
  hit (key: string, now = performance.now()): number {
    let window = this.windows.get(key)
    if (window === undefined || now - window.start >= 1000) {
      if (window === undefined && this.windows.size >= this.sweepAt) this.sweep(now)
      window = { start: now, count: 0 }
      this.windows.set(key, window)
    }
    return ++window.count
  }

  private sweep (now: number): void {
    for (const [key, window] of this.windows) if (now - window.start >= 1000) this.windows.delete(key)
  }
}
