/**
 * The bandwidth policy's hold on what the agent serves to peers: BranchCache's
 * separate limit on peer-caching bandwidth (`peerServing`), and the WAN caps for
 * serving that is not exempt from them (a peer that is not on the LAN, or any peer
 * when `lanPeersExempt` is false: then served bytes draw on the `background` cap
 * that background jobs share).
 *
 * A requester drops, and penalizes, a peer whose block answer is late (30 s, see
 * peers/exchange.ts), and one that claims blocks it then answers "Missing" for. So a
 * capped agent does not make answers wait past MAX_SERVING_WAIT_MS, and does not
 * offer blocks it will not send: while serving is blocked (a cap of 0) or its queue is
 * full, its have answers offer nothing and requesters go to the origin or to other
 * peers.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { isLocalAddress } from '../peers/scope.ts'
import type { BandwidthPolicy } from './policy.ts'
import { pace } from './pacer.ts'
import type { ReadPacer } from './pacer.ts'

/** Longest a block answer waits for the caps, ms: well below the requester's 30 s deadline for a block. */
export const MAX_SERVING_WAIT_MS = 20_000
/** Longest single sleep, ms: a cap raised or lifted meanwhile is noticed within this. */
const RECHECK_MS = 250

/** What the peer exchange asks before it offers or sends blocks (peers/exchange.ts). */
export interface PeerServingGate {
  /** Whether blocks may be offered to the peer at `address` (an IP address) now. */
  open: (address: string) => boolean
  /** Waits until `bytes` of a block may be sent to the peer at `address`; false, at once, when they may not be. */
  admit: (bytes: number, address: string, signal: AbortSignal) => Promise<boolean>
}

export interface PeerServingComponents {
  /** The policy in force now. */
  policy: () => BandwidthPolicy
  /** The `background` cap in force now (bytes/s; Infinity: none), and its bucket shared with background jobs. */
  backgroundCap: { rate: () => number, bucket: ReadPacer }
  /** Monotonic clock, ms. Default performance.now. */
  now?: () => number
}

/** Whether `address` (an IP address, v4 or v6) is on the LAN, as the peer node's dialling rule says. */
export function onLan (address: string): boolean {
  return isLocalAddress(address, address.includes(':') ? 6 : 4)
}

/**
 * The serving cap as a queue in time: each block admitted moves `due` (when the cap
 * has paid for everything admitted) on by its bytes at the cap, and its answer waits
 * until then. Over any long stretch what leaves is at most the cap; a cap lowered or
 * raised applies to the blocks admitted from then on.
 */
export class PeerServing implements PeerServingGate {
  private readonly policy: () => BandwidthPolicy
  private readonly background: PeerServingComponents['backgroundCap']
  private readonly now: () => number
  private due = 0

  constructor (components: PeerServingComponents) {
    this.policy = components.policy
    this.background = components.backgroundCap
    this.now = components.now ?? (() => performance.now())
  }

  /** LAN peers are exempt from the WAN caps unless the policy says otherwise; other peers never are. */
  private countsAgainstWan (address: string): boolean {
    return !this.policy().lanPeersExempt || !onLan(address)
  }

  private cap (): number {
    return this.policy().peerServing ?? Infinity
  }

  /** Ms the serving cap's queue holds now. */
  private backlogMs (): number {
    return Math.max(0, this.due - this.now())
  }

  open = (address: string): boolean => {
    if (this.cap() <= 0) return false
    if (this.countsAgainstWan(address) && this.background.rate() <= 0) return false
    return this.backlogMs() < MAX_SERVING_WAIT_MS
  }

  admit = async (bytes: number, address: string, signal: AbortSignal): Promise<boolean> => {
    signal.throwIfAborted()
    if (!this.open(address)) return false
    const wan = this.countsAgainstWan(address)
    // What the WAN cap would add to the wait: refused rather than late.
    if (wan && bytes * 1000 / this.background.rate() > MAX_SERVING_WAIT_MS) return false
    const cap = this.cap()
    if (Number.isFinite(cap)) {
      const start = Math.max(this.now(), this.due)
      const until = start + bytes * 1000 / cap
      if (until - this.now() > MAX_SERVING_WAIT_MS) return false
      this.due = until
      for (let left = until - this.now(); left > 0; left = until - this.now()) {
        // Lifted meanwhile: the queue is gone.
        if (!Number.isFinite(this.cap())) {
          this.due = 0
          break
        }
        await sleep(Math.min(RECHECK_MS, left), undefined, { signal })
      }
    }
    if (wan) await pace(this.background.bucket, bytes, signal)
    return true
  }
}
