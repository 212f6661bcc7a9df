import type { PeerId } from '@libp2p/interface'
import { digestsEqual, discoveryId, DISCOVERY_LABEL } from '@canopy/core'
import type { ExchangeSession } from '../peers/exchange.ts'
import type { BlockSink, BlockTransferOptions } from './block-transfer.ts'

/** Requests in flight to one peer (pipelined on one stream). */
const IN_FLIGHT_PER_PEER = 8
/** Blocks received from peers and not yet verified and written, at most. */
const MAX_PROCESSING = 16
/** Bad blocks from one peer before this transfer stops asking it. */
const BAD_BLOCKS_PER_TRANSFER = 3

/** What a transfer needs from the agent's peer node. */
export interface PeerSessions {
  /** Sessions to the connected peers (not banned) for one content; peers that fail to answer are left out. */
  open: (discoveryId: Uint8Array, key: Uint8Array, signal: AbortSignal) => Promise<ExchangeSession[]>
  /** Counts a block from `peer` that failed verification (the agent bans repeat offenders). */
  penalize: (peer: PeerId, reason: string) => void
}

const hasBit = (bits: Uint8Array, i: number): boolean => (bits[i >> 3] & (0x80 >> (i & 7))) !== 0

/**
 * Fetches the missing blocks that connected peers have, before the origin is asked
 * for the rest. Each block is verified against the manifest like an origin block; a
 * peer that sends a bad block is penalized and, after a few, no longer asked. Any
 * block a peer cannot give is simply left for the origin.
 */
export async function fetchFromPeers (o: BlockTransferOptions, expected: Uint8Array[], sink: BlockSink): Promise<void> {
  if (o.peers === undefined || o.manifest.key === undefined) return
  const key = Buffer.from(o.manifest.key, 'base64')
  const sessions = await o.peers.open(discoveryId(key, DISCOVERY_LABEL), key, o.signal)
  if (sessions.length === 0) return
  const offers = (await Promise.all(sessions.map(async session => {
    try {
      return { session, bits: await session.have(), cursor: 0, bad: 0 }
    } catch {
      return undefined
    }
  }))).filter(offer => offer !== undefined)
  const claimed = new Set<number>()
  const count = expected.length
  let failed = false

  const worker = async (offer: NonNullable<typeof offers[number]>): Promise<void> => {
    for (;;) {
      o.signal.throwIfAborted()
      if (failed) return
      while (offer.cursor < count && (o.progress.has(offer.cursor) || claimed.has(offer.cursor) || !hasBit(offer.bits, offer.cursor))) offer.cursor++
      if (offer.cursor >= count || offer.bad >= BAD_BLOCKS_PER_TRANSFER) return
      const index = offer.cursor++
      claimed.add(index)
      let received: Uint8Array | undefined
      try {
        received = await offer.session.block(index)
      } catch {
        claimed.delete(index)
        offer.bad = BAD_BLOCKS_PER_TRANSFER // the stream is gone: stop using this peer here
        return
      }
      if (received === undefined) {
        claimed.delete(index)
        continue
      }
      // Own the memory, so that the hashing worker can take it without a copy.
      const own = Buffer.allocUnsafeSlow(received.length)
      own.set(received)
      // Verify and store while the next request is already on its way.
      const done: Promise<void> = accept(offer, index, own).catch((err: unknown) => {
        failed = true
        throw err
      }).finally(() => processing.delete(done))
      done.catch(() => {})
      processing.add(done)
      while (processing.size >= MAX_PROCESSING) await Promise.race(processing)
    }
  }

  const accept = async (offer: NonNullable<typeof offers[number]>, index: number, own: Buffer): Promise<void> => {
    const { digest, bytes } = await o.blockHasher.hash(own)
    if (!digestsEqual(digest, expected[index])) {
      claimed.delete(index)
      offer.bad++
      o.logger.warn('block from a peer failed verification', { jobId: o.jobId, block: index, peer: offer.session.peer.toString() })
      o.peers!.penalize(offer.session.peer, `block ${index} failed verification`)
      return
    }
    await sink.store(index, bytes, 'peer')
  }
  const processing = new Set<Promise<void>>()

  // Every worker has stopped before this returns: none may write after the file closes.
  const results = await Promise.allSettled(offers.flatMap(offer => Array.from({ length: IN_FLIGHT_PER_PEER }, async () => {
    try {
      await worker(offer)
    } catch (err) {
      failed = true
      throw err
    }
  })))
  const stored = await Promise.allSettled([...processing])
  await Promise.all(sessions.map(async s => await s.close()))
  const failure = [...results, ...stored].find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failure !== undefined) throw failure.reason
}
