import type { PeerId } from '@libp2p/interface'
import { blockSpan, discoveryId, DISCOVERY_LABEL } from '@canopy/core'
import type { ExchangeSession } from '../peers/exchange.ts'
import type { BlockSink, BlockTransferOptions } from './block-transfer.ts'
import type { BlockPicker } from './picker.ts'

/** Requests in flight to one peer (pipelined on one stream). */
const IN_FLIGHT_PER_PEER = 8
/** Blocks received from peers and not yet verified and written, at most. */
const MAX_PROCESSING = 16
/** Bad blocks from one peer before this transfer stops asking it. */
const BAD_BLOCKS_PER_TRANSFER = 3
/** How often the peers' bitfields are asked for again while the transfer runs. */
const REFRESH_MS = 100
/** A peer's claim on a block (it is fetching it from the origin) is honoured this long. */
const STALL_MS = 10_000

/** What a transfer needs from the agent's peer node. */
export interface PeerSessions {
  /** Sessions to the connected peers (not banned) for one content; peers that fail to answer are left out. */
  open: (discoveryId: Uint8Array, key: Uint8Array, signal: AbortSignal) => Promise<ExchangeSession[]>
  /** Counts a block from `peer` that failed verification (the agent bans repeat offenders). */
  penalize: (peer: PeerId, reason: string) => void
  /** This agent's own peer id. */
  self: () => PeerId
  /** Counts verified bytes received from `peer`. */
  received: (peer: PeerId, bytes: number) => void
}

interface Offer {
  session: ExchangeSession
  have: Uint8Array
  fetching: Uint8Array
  bad: number
  alive: boolean
  /** The peer knows this content (it answered for it); one that does not may start soon. */
  interested: boolean
  cursor: number
}

const hasBit = (bits: Uint8Array, i: number): boolean => (bits[i >> 3] & (0x80 >> (i & 7))) !== 0
const clearBit = (bits: Uint8Array, i: number): void => { bits[i >> 3] &= ~(0x80 >> (i & 7)) }

/**
 * The peer side of a transfer, running beside the origin side: it keeps the
 * connected peers' bitfields fresh (what they have, and what they are fetching from
 * the origin right now), tells the picker so that the origin is not asked for those
 * blocks, and fetches from peers every missing block one of them has. Each block is
 * verified against the manifest like an origin block; a peer that sends a bad block
 * is penalized and, after a few, no longer asked. A peer's claim that does not turn
 * into a block within STALL_MS is ignored, and the origin gets that block.
 */
export async function exchangeWithPeers (o: BlockTransferOptions, expected: Uint8Array[], sink: BlockSink,
  picker: BlockPicker, inFlight: Set<number>, signal: AbortSignal): Promise<{ run: () => Promise<void> } | undefined> {
  if (o.peers === undefined || o.manifest.key === undefined) return undefined
  const key = Buffer.from(o.manifest.key, 'base64')
  const sessions = await o.peers.open(discoveryId(key, DISCOVERY_LABEL), key, signal)
  if (sessions.length === 0) return undefined
  const count = expected.length
  const offers: Offer[] = sessions.map(session => ({ session, have: new Uint8Array(0), fetching: new Uint8Array(0), bad: 0, alive: true, interested: false, cursor: 0 }))
  const claimedSince = new Map<number, number>()
  picker.peerHas = (i) => offers.some(f => f.alive && hasBit(f.have, i))
  picker.peerFetching = (i) => {
    const since = claimedSince.get(i)
    return since !== undefined && Date.now() - since < STALL_MS
  }
  // Share the origin work: the agents that fetch this content (this one and every
  // peer that answers for it) sort their peer ids, and chunk c falls to agent
  // c mod n. Every agent computes the same split from the same set. Another agent's
  // chunk becomes ours when nobody has or claims its blocks STALL_MS after we
  // started (its owner is slow, gone, or never started).
  const started = Date.now()
  const self = o.peers.self().toString()
  let rank = 0
  let agents = 1
  const share = (): void => {
    const ids = [self, ...offers.filter(f => f.alive && f.interested).map(f => f.session.peer.toString())].sort()
    rank = ids.indexOf(self)
    agents = ids.length
  }
  picker.mine = (chunk) => chunk % agents === rank || Date.now() - started > STALL_MS
  const finished = (): boolean => o.progress.complete || signal.aborted || !offers.some(f => f.alive && f.bad < BAD_BLOCKS_PER_TRANSFER)

  const refresh = async (): Promise<void> => {
    await Promise.all(offers.filter(f => f.alive).map(async f => {
      try {
        const bits = await f.session.have()
        f.have = bits.have
        f.fetching = bits.fetching
        f.interested = true
        f.cursor = 0
      } catch (err) {
        // A peer that started the same download a moment after us does not know
        // the content yet: ask again at the next refresh.
        if ((err as { code?: string }).code === 'ERR_PEER_UNKNOWN_CONTENT') f.interested = false
        else f.alive = false
      }
    }))
    share()
    const now = Date.now()
    for (let i = 0; i < count; i++) {
      const claimed = !o.progress.has(i) && offers.some(f => f.alive && hasBit(f.fetching, i))
      if (!claimed) claimedSince.delete(i)
      else if (!claimedSince.has(i)) claimedSince.set(i, now)
    }
  }

  let failed = false
  const processing = new Set<Promise<void>>()
  const accept = async (offer: Offer, index: number, received: Buffer): Promise<void> => {
    try {
      const { ok, bytes } = await sink.verifyAndStore(index, received, 'peer')
      o.buffers.give(bytes)
      if (!ok) {
        offer.bad++
        o.logger.warn('block from a peer failed verification', { jobId: o.jobId, block: index, peer: offer.session.peer.toString() })
        o.peers!.penalize(offer.session.peer, `block ${index} failed verification`)
        return
      }
      o.peers!.received(offer.session.peer, bytes.length)
    } finally {
      inFlight.delete(index)
    }
  }

  const worker = async (offer: Offer): Promise<void> => {
    while (!finished() && !failed && offer.alive && offer.bad < BAD_BLOCKS_PER_TRANSFER) {
      while (offer.cursor < count && (o.progress.has(offer.cursor) || inFlight.has(offer.cursor) || !hasBit(offer.have, offer.cursor))) offer.cursor++
      if (offer.cursor >= count) {
        // Nothing from this peer now: look again after the next refresh.
        await new Promise(resolve => setTimeout(resolve, REFRESH_MS))
        offer.cursor = 0
        continue
      }
      const index = offer.cursor++
      inFlight.add(index)
      // The block is received straight into a buffer of the pool, which owns its
      // memory: the hashing worker can take it without a copy.
      const into = o.buffers.take(blockSpan(index, o.manifest.size, o.manifest.blockSize).length)
      let received: Uint8Array | undefined
      try {
        received = await offer.session.block(index, into)
      } catch {
        inFlight.delete(index)
        offer.alive = false // the stream is gone: stop using this peer here
        return
      }
      if (received === undefined) {
        o.buffers.give(into)
        inFlight.delete(index)
        clearBit(offer.have, index)
        continue
      }
      // Anything but `into` came with the wrong length: it fails verification (inline).
      const bytes = received === into ? into : Buffer.from(received.buffer, received.byteOffset, received.byteLength)
      // Verify and store while the next request is already on its way.
      const done: Promise<void> = accept(offer, index, bytes).catch((err: unknown) => {
        failed = true
        throw err
      }).finally(() => processing.delete(done))
      done.catch(() => {})
      processing.add(done)
      while (processing.size >= MAX_PROCESSING) await Promise.race(processing).catch(() => {})
    }
  }

  // The origin side starts only once the peers' first answers are in: otherwise it
  // would ask the origin for everything before knowing what peers have.
  await refresh()
  const run = async (): Promise<void> => {
    const refresher = (async () => {
      while (!finished() && !failed) {
        await new Promise(resolve => setTimeout(resolve, REFRESH_MS))
        if (!finished()) await refresh()
      }
    })()
    // Every worker has stopped before this returns: none may write after the file closes.
    const results = await Promise.allSettled(offers.flatMap(offer => Array.from({ length: IN_FLIGHT_PER_PEER }, async () => await worker(offer))))
    const stored = await Promise.allSettled([...processing])
    await refresher
    // The picker must not wait for peers that are gone.
    picker.peerHas = () => false
    picker.peerFetching = () => false
    picker.mine = () => true
    await Promise.all(sessions.map(async s => await s.close()))
    const failure = [...results, ...stored].find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failure !== undefined) throw failure.reason
  }
  return { run }
}
