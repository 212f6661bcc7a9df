import { blockSpan, clearBit, countBits, discoveryId, DISCOVERY_LABEL, hasBit, setBit } from '@canopy/core'
import type { Logger, PublishedManifest } from '@canopy/core'
import type { ExchangeSession } from '../peers/exchange.ts'
import type { FileProgress } from '../jobs/job.ts'
import type { BlockSink } from './block-sink.ts'
import type { BufferPool } from './buffer-pool.ts'
import type { BlockPicker } from './picker.ts'
import type { PeerSessions } from './peer-sessions.ts'

export type { PeerSessions } from './peer-sessions.ts'

/** What the peer side of one file's transfer works with. */
export interface PeerExchangeContext {
  jobId: string
  manifest: PublishedManifest
  progress: FileProgress
  buffers: BufferPool
  logger: Logger
  peers?: PeerSessions
}

/** Requests in flight to one peer (pipelined on one stream). */
const IN_FLIGHT_PER_PEER = 8
/** Blocks received from peers and not yet verified and written, at most. */
const MAX_PROCESSING = 16
/** Bad blocks from one peer before this transfer stops asking it. */
const BAD_BLOCKS_PER_TRANSFER = 3
/** How often the peers' bitfields are asked for again while the transfer runs. */
const REFRESH_MS = 100
/**
 * A peer that gained no block for this long is stalled: its claims (blocks it says it
 * is fetching from the origin) and its share of the chunks are no longer waited for.
 */
const STALL_MS = 10_000
/**
 * How long a refresh waits for the peers' have answers; a peer that has not answered
 * by then is left out until it does (its answer has its own deadline, see exchange.ts).
 * Before, the origin side waited for every first answer: one peer that answered a
 * byte at a time held the download at 0 B.
 */
const ANSWERS_WAIT_MS = 2_000
/**
 * Blocks a peer claimed and then answered "Missing" for, in one transfer, before it is
 * penalized and no longer asked. A few are honest (a cache file evicted between the
 * answers); one that claims every block and has none slowed a 32 MiB download from
 * 0.3 s to 12 s, unpunished, before this bound.
 */
const UNFULFILLED_CLAIMS = 4

interface Offer {
  session: ExchangeSession
  have: Uint8Array
  fetching: Uint8Array
  bad: number
  /** Still asked and believed: its stream works and it sent fewer than BAD_BLOCKS_PER_TRANSFER bad blocks. */
  alive: boolean
  /** The peer knows this content (it answered for it); one that does not may start soon. */
  interested: boolean
  /** Position in `order` of the next block to consider asking this peer for. */
  cursor: number
  /** Blocks it had at the last refresh, and when that count last grew (or it became interested). */
  haveCount: number
  progressAt: number
  /** Whether the stall was logged (once per stall). */
  reportedStall?: boolean
  /** Blocks it claimed and answered "Missing" for: not believed from it again in this transfer. */
  refused: Uint8Array
  unfulfilled: number
  /** Its have answer under way, if any (a refresh does not wait for it past ANSWERS_WAIT_MS). */
  asking?: Promise<void>
  /** The peer is a hosted cache of the branch: its blocks are the job's fromCache. */
  hostedCache: boolean
}


/**
 * The blocks to ask peers for, rarest first: every block `missing` that at least
 * one of `bitfields` has, ordered by how many have it (fewest first), then by index.
 * Fetching the rarest blocks first spreads copies through the swarm before the only
 * peer holding some block leaves, and leaves the common blocks, which any peer can
 * serve, for last. A counting sort: O(blocks × peers).
 */
export function rarestFirst (count: number, missing: (index: number) => boolean, bitfields: readonly Uint8Array[]): number[] {
  const byHolders: number[][] = Array.from({ length: bitfields.length + 1 }, () => [])
  for (let i = 0; i < count; i++) {
    if (!missing(i)) continue
    let holders = 0
    for (const bits of bitfields) if (hasBit(bits, i)) holders++
    if (holders > 0) byHolders[holders].push(i)
  }
  return byHolders.flat()
}

/**
 * The peer side of a transfer, running beside the origin side: it keeps the
 * connected peers' bitfields fresh (what they have, and what they are fetching from
 * the origin right now), tells the picker so that the origin is not asked for those
 * blocks, and fetches from peers every missing block one of them has. Each block is
 * verified against the manifest like an origin block; a peer that sends a bad block
 * is penalized and, after a few, no longer asked. The claims of a peer that gains
 * no block for STALL_MS are ignored, and the origin gets those blocks.
 *
 * Stalls are judged per peer, by its progress, not by a block's age: on a slow WAN a
 * 4 MiB range may take longer than STALL_MS to arrive while its owner is busy and
 * healthy, and fetching it again would send it over the WAN twice.
 */
export async function exchangeWithPeers (o: PeerExchangeContext, expected: Uint8Array[], sink: BlockSink,
  picker: BlockPicker, inFlight: Set<number>, signal: AbortSignal): Promise<{ run: () => Promise<void> } | undefined> {
  if (o.peers === undefined || o.manifest.key === undefined) return undefined
  const key = Buffer.from(o.manifest.key, 'base64')
  const sessions = await o.peers.open(discoveryId(key, DISCOVERY_LABEL), key, signal)
  if (sessions.length === 0) return undefined
  picker.spreadOut()
  const count = expected.length
  const offers: Offer[] = sessions.map(session => ({ session, have: new Uint8Array(0), fetching: new Uint8Array(0), bad: 0, alive: true, interested: false, cursor: 0, haveCount: 0, progressAt: Date.now(), refused: new Uint8Array(Math.ceil(count / 8)), unfulfilled: 0, hostedCache: o.peers?.isHostedCache?.(session.peer) === true }))
  const stalled = (f: Offer): boolean => Date.now() - f.progressAt > STALL_MS
  // Share the origin work: the agents that fetch this content (this one and every
  // peer that answers for it) sort their peer ids, and chunk c falls to agent
  // c mod n. Every agent computes the same split from the same set. Another agent's
  // chunk becomes ours when its owner stalls; an owner that leaves drops out of the
  // set at the next refresh, and the split is made again without it.
  const self = o.peers.self().toString()
  /** Chunk c's owner is owners[c mod n]: a peer's offer, or undefined for this agent. */
  let owners: Array<Offer | undefined> = [undefined]
  const share = (): void => {
    // A peer with every block fetches nothing from the origin: it gets no share.
    const members = offers.filter(f => f.alive && f.interested && f.haveCount < count)
    const ids = [self, ...members.map(f => f.session.peer.toString())].sort()
    if (ids.length !== owners.length) o.logger.debug('origin work shared out anew', { jobId: o.jobId, agents: ids.length })
    owners = ids.map(id => members.find(f => f.session.peer.toString() === id))
  }
  // Slow start: agents that start together see each other's interest and claims only
  // at their next refreshes, and until then may split the chunks differently. So one
  // origin request starts at once and the others after two more refreshes: what two
  // agents may then fetch twice is one request, not all of them (the lab's bad-peer
  // scenario showed 4 ranges of 4 MiB fetched twice in the first 100 ms).
  let refreshes = 0
  /** The blocks peers have and this agent lacks, rarest first (made at each refresh). */
  let order: number[] = []
  picker.usePeers({
    has: (i) => offers.some(f => f.alive && hasBit(f.have, i)),
    fetching: (i) => offers.some(f => f.alive && hasBit(f.fetching, i) && !stalled(f)),
    mine: (chunk) => {
      const owner = owners[chunk % owners.length]
      return owner === undefined || stalled(owner)
    },
    mayIssue: (issued) => issued === 0 || refreshes >= 3
  })
  const finished = (): boolean => o.progress.complete || signal.aborted || !offers.some(f => f.alive)
  /** Stops asking a peer in this transfer; a misdeed (too slow, false claims) also counts towards its ban. */
  const drop = (f: Offer, misdeed?: string): void => {
    if (!f.alive) return
    f.alive = false
    if (misdeed === undefined) return
    o.logger.warn('peer penalized', { jobId: o.jobId, peer: f.session.peer.toString(), reason: misdeed })
    o.peers!.penalize(f.session.peer, misdeed)
    f.session.abort(new Error(`dropped: ${misdeed}`))
  }
  const timedOut = (err: unknown): boolean => (err as { code?: string }).code === 'ERR_TIMEOUT'

  const ask = async (f: Offer): Promise<void> => {
    try {
      const bits = await f.session.have()
      // What it answered "Missing" for before is not believed again.
      for (let b = 0; b < f.refused.length && b < bits.have.length; b++) bits.have[b] &= ~f.refused[b]
      const haveCount = countBits(bits.have)
      if (!f.interested || haveCount > f.haveCount) f.progressAt = Date.now()
      f.have = bits.have
      f.haveCount = haveCount
      f.fetching = bits.fetching
      f.interested = true
      f.cursor = 0
    } catch (err) {
      // A peer that started the same download a moment after us does not know
      // the content yet: ask again at the next refresh.
      if ((err as { code?: string }).code === 'ERR_PEER_UNKNOWN_CONTENT') f.interested = false
      else drop(f, timedOut(err) ? 'answered a have request too slowly' : undefined)
    } finally {
      f.asking = undefined
    }
  }
  const refresh = async (): Promise<void> => {
    // Waited for: the answers asked now, not one still due from an earlier refresh.
    const asked: Array<Promise<void>> = []
    for (const f of offers) if (f.alive && f.asking === undefined) asked.push(f.asking = ask(f))
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all(asked),
      new Promise(resolve => { timer = setTimeout(resolve, ANSWERS_WAIT_MS) })
    ])
    clearTimeout(timer)
    for (const f of offers) {
      // Logged here, once per stall, not in the predicate the picker calls per block.
      const now = f.alive && stalled(f)
      if (now && f.reportedStall !== true) o.logger.debug('peer stalled: its claims and chunks are no longer waited for', { jobId: o.jobId, peer: f.session.peer.toString(), have: f.haveCount })
      f.reportedStall = now
    }
    share()
    order = rarestFirst(count, i => !o.progress.has(i), offers.filter(f => f.alive).map(f => f.have))
    refreshes++
  }

  let failed = false
  const processing = new Set<Promise<void>>()
  const accept = async (offer: Offer, index: number, received: Buffer): Promise<void> => {
    try {
      const { ok, bytes } = await sink.verifyAndStore(index, received, offer.hostedCache ? 'cache' : 'peer')
      o.buffers.give(bytes)
      if (!ok) {
        offer.bad++
        o.logger.warn('block from a peer failed verification', { jobId: o.jobId, block: index, peer: offer.session.peer.toString() })
        o.peers!.penalize(offer.session.peer, `block ${index} failed verification`)
        // Its bitfields are lies too: a peer left "alive" would keep the picker from
        // asking the origin for every block it claims, and the transfer would wait
        // for it for ever (found by the lab's bad-peer scenario).
        if (offer.bad >= BAD_BLOCKS_PER_TRANSFER) offer.alive = false
        return
      }
      o.peers!.received(offer.session.peer, bytes.length)
    } finally {
      inFlight.delete(index)
    }
  }

  // Hosted caches are asked first: a block one of them has (and still serves) is not
  // asked of other peers, whose machines are someone's desktop (BranchCache's order).
  // One that fails, is too slow or lies is dropped, and the other peers take over.
  const hostedHas = (i: number): boolean => offers.some(f => f.hostedCache && f.alive && hasBit(f.have, i))
  const askLoop = async (offer: Offer): Promise<void> => {
    const mayAsk = (i: number): boolean => hasBit(offer.have, i) && (offer.hostedCache || !hostedHas(i))
    while (!finished() && !failed && offer.alive) {
      while (offer.cursor < order.length && (o.progress.has(order[offer.cursor]) || inFlight.has(order[offer.cursor]) || !mayAsk(order[offer.cursor]))) offer.cursor++
      if (offer.cursor >= order.length) {
        // Nothing from this peer now: look again after the next refresh.
        await new Promise(resolve => setTimeout(resolve, REFRESH_MS))
        offer.cursor = 0
        continue
      }
      const index = order[offer.cursor++]
      inFlight.add(index)
      // The block is received straight into a buffer of the pool, which owns its
      // memory: the hashing worker can take it without a copy.
      const into = o.buffers.take(blockSpan(index, o.manifest.size, o.manifest.blockSize).length)
      let received: Uint8Array | undefined
      try {
        received = await offer.session.block(index, into)
      } catch (err) {
        // `into` is not handed back to the pool: a read of the failed stream may still
        // be under way into it, and must not land in a buffer that another block uses.
        inFlight.delete(index)
        // The stream is gone: stop using this peer here (and count it if it was too slow).
        drop(offer, timedOut(err) ? `sent block ${index} too slowly` : undefined)
        return
      }
      if (received === undefined) {
        o.buffers.give(into)
        inFlight.delete(index)
        clearBit(offer.have, index)
        setBit(offer.refused, index)
        if (++offer.unfulfilled >= UNFULFILLED_CLAIMS) drop(offer, `claimed ${offer.unfulfilled} blocks it did not have`)
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
    // Every ask loop has stopped before this returns: none may write after the file closes.
    const results = await Promise.allSettled(offers.flatMap(offer => Array.from({ length: IN_FLIGHT_PER_PEER }, async () => await askLoop(offer))))
    const stored = await Promise.allSettled([...processing])
    await refresher
    // The picker must not wait for peers that are gone.
    picker.usePeers(undefined)
    await Promise.all(offers.map(async f => { if (f.alive) await f.session.close(); else f.session.abort(new Error('the transfer is over')) }))
    const failure = [...results, ...stored].find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failure !== undefined) throw failure.reason
  }
  return { run }
}
