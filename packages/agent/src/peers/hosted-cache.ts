import { mkdir, open, rm, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { blockDigest, blockSpan, CanopyError, decodeManifest, discoveryId, DISCOVERY_LABEL, hasBit } from '@canopy/core'
import type { Logger, PublishedManifest } from '@canopy/core'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import { FramedStream } from './framing.ts'
import type { PeerLibp2p } from './node.ts'
import { decodeOffer, encodeJson, HOSTED_CACHE_PROTOCOL, MAX_OFFER_BYTES, MAX_OFFER_MANIFEST_BYTES, OFFER_TIMEOUT_MS, OfferError } from './offer.ts'
import type { Offer, OfferReply } from './offer.ts'
import type { ExchangeSession } from './exchange.ts'
import type { PeerSharing } from './sharing.ts'

/** Offer streams read at once, in all; more are answered "busy". */
const OFFER_STREAMS = 4
/** Offers accepted and waiting to be pulled; more are answered "busy" (the offerer may offer again later). */
const MAX_PENDING_OFFERS = 64
/** Contents pulled at once: one, so that pulling stays background work for the peers that serve it. */
const PULLS_AT_ONCE = 1
/** Block requests in flight during a pull, over all its peers. */
const PULL_IN_FLIGHT = 4
/** Bad blocks from one peer before a pull stops asking it (each one is also a strike towards its ban). */
const BAD_BLOCKS_PER_PULL = 3
/** A pull may take this long, plus a second per MiB (1 MiB/s, far below any LAN); then it is given up. */
const PULL_BASE_MS = 5 * 60_000
/** Pull times are bounded in any case. */
const PULL_MAX_MS = 6 * 3600_000
/** How often, and how many times, the peers' bitfields are asked again for blocks nobody had. */
const REASK_MS = 1000
const REASKS = 10

/**
 * Default quota of a hosted cache: 1 TiB or half the disk that holds the state
 * directory, whichever is smaller (an ordinary agent keeps min(10 GiB, 10%)): a
 * hosted cache is a branch server whose disk is there for the cache.
 */
export async function hostedCacheQuota (stateDir: string): Promise<number> {
  const { blocks, bsize } = await statfs(stateDir)
  return Math.min(2 ** 40, Math.floor(blocks * bsize / 2))
}

export interface HostedCacheComponents {
  libp2p: PeerLibp2p
  sharing: PeerSharing
  store: JobStore
  blockHasher: BlockHasher
  logger: Logger
}

interface Pull {
  offer: Offer
  manifest: PublishedManifest
  from: string
}

/**
 * The hosted-cache role (`canopy agent --hosted-cache`): an always-on branch agent
 * that takes the content members offer (offer.ts) and keeps it for the branch. An
 * offer is checked (bounded sizes; the manifest's id recomputed from its canonical
 * bytes must be the offered one), queued (MAX_PENDING_OFFERS), then pulled, one at
 * a time, from the connected peers only: a hosted cache never asks an origin, so an
 * offer can never cause WAN traffic. Every block is verified against the manifest
 * before it is written; a peer that sends bad blocks gets strikes (and bans) as in
 * any transfer. A complete pull is admitted to the cache (PeerSharing.admit), which
 * serves it to members that prove the content key, and only to them, like any peer.
 */
export class HostedCache {
  private readonly c: HostedCacheComponents
  private readonly pullDir: string
  private readonly pending: Pull[] = []
  /** Manifest ids waiting or being pulled (a second offer of them is "held"). */
  private readonly queued = new Set<string>()
  private pulling = 0
  private receiving = 0
  private readonly stopping = new AbortController()
  private readonly running = new Set<Promise<void>>()

  constructor (components: HostedCacheComponents, init: { stateDir: string }) {
    this.c = components
    this.pullDir = join(init.stateDir, 'hosted-pulls')
  }

  async start (): Promise<void> {
    // Pulls cut short by a stop are not resumed: the offerer offers again, or a member
    // that fetches the content from the origin does.
    await rm(this.pullDir, { recursive: true, force: true })
    await mkdir(this.pullDir, { recursive: true, mode: 0o700 })
    await this.c.libp2p.handle(HOSTED_CACHE_PROTOCOL, (stream: Stream, connection: Connection) => {
      void this.receive(stream, connection)
    }, { maxInboundStreams: 2 })
  }

  async stop (): Promise<void> {
    this.stopping.abort(new CanopyError('ERR_AGENT_STOPPING', 'the agent is stopping'))
    await Promise.allSettled([...this.running])
  }

  /** What is waiting and being pulled (for logs and tests). */
  get backlog (): { pending: number, pulling: number } {
    return { pending: this.pending.length, pulling: this.pulling }
  }

  private async receive (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    if (!this.c.sharing.admits(connection)) {
      stream.abort(new CanopyError('ERR_PEER_REFUSED', 'banned'))
      return
    }
    const framed = new FramedStream(stream, { maxBuffered: MAX_OFFER_BYTES, writeTimeoutMs: OFFER_TIMEOUT_MS })
    const reply = async (status: OfferReply): Promise<void> => { await framed.write(encodeJson({ status })) }
    this.receiving++
    try {
      if (this.receiving > OFFER_STREAMS) {
        await reply('busy')
        return
      }
      const body = await framed.read(MAX_OFFER_BYTES, OFFER_TIMEOUT_MS, OFFER_TIMEOUT_MS)
      if (body === undefined) return
      const offer = decodeOffer(body)
      if (this.c.sharing.holds(offer.manifestId) || this.queued.has(offer.manifestId)) {
        await reply('held')
        return
      }
      // A key already naming other content here: taking the offer would replace what
      // members get under that key (the cache cannot tell which manifest the key is for).
      const under = this.c.sharing.manifestUnder(offer.key)
      if (under !== undefined && under !== offer.manifestId) throw new OfferError(`the offered key already names other content here (${under})`)
      if (this.pending.length >= MAX_PENDING_OFFERS) {
        await reply('busy')
        return
      }
      await reply('want')
      const bytes = await framed.read(MAX_OFFER_MANIFEST_BYTES, OFFER_TIMEOUT_MS, OFFER_TIMEOUT_MS)
      if (bytes === undefined) return
      let manifest: PublishedManifest
      try {
        manifest = decodeManifest(bytes)
      } catch (err) {
        throw new OfferError(`the offered manifest does not decode: ${(err as Error).message}`)
      }
      // The id binds every block hash: what is pulled can only be this content.
      if (manifest.id !== offer.manifestId) throw new OfferError(`the offered manifest's id is ${manifest.id}, not the offered ${offer.manifestId}`)
      if (manifest.size > this.c.sharing.quota) {
        this.c.logger.info('offer larger than the hosted cache\'s quota', { peer, manifestId: manifest.id, size: manifest.size, quota: this.c.sharing.quota })
        await reply('full')
        return
      }
      if (this.c.sharing.holds(offer.manifestId) || this.queued.has(offer.manifestId)) {
        await reply('held')
        return
      }
      this.queued.add(manifest.id)
      this.pending.push({ offer, manifest: { ...manifest, key: offer.key }, from: peer })
      this.c.logger.info('offer accepted by the hosted cache', { peer, manifestId: manifest.id, name: offer.name, size: manifest.size })
      await reply('accepted')
      this.next()
    } catch (err) {
      this.c.logger.warn('bad offer to the hosted cache', { peer, err: (err as Error).message })
      if (err instanceof OfferError) await reply('refused').catch(() => {})
      stream.abort(err as Error)
      return
    } finally {
      this.receiving--
    }
    await stream.close().catch(() => {})
  }

  private next (): void {
    while (this.pulling < PULLS_AT_ONCE && this.pending.length > 0 && !this.stopping.signal.aborted) {
      const pull = this.pending.shift()!
      this.pulling++
      const run: Promise<void> = this.pull(pull).catch((err: unknown) => {
        this.c.logger.warn('hosted cache could not pull offered content; it stays out of the cache', { manifestId: pull.manifest.id, from: pull.from, err: (err as Error).message })
      }).finally(() => {
        this.pulling--
        this.queued.delete(pull.manifest.id)
        this.running.delete(run)
        this.next()
      })
      this.running.add(run)
    }
  }

  /** Pulls every block of the manifest from peers, verified, into a file of its own; then admits it to the cache. */
  private async pull ({ manifest, offer, from }: Pull): Promise<void> {
    const { sharing, blockHasher, store, logger } = this.c
    const limit = Math.min(PULL_MAX_MS, PULL_BASE_MS + Math.ceil(manifest.size / 1024))
    const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(limit)])
    const key = Buffer.from(manifest.key!, 'base64')
    const path = join(this.pullDir, manifest.id)
    const started = Date.now()
    const sessions = await sharing.open(discoveryId(key, DISCOVERY_LABEL), key, signal)
    const file = await open(path, 'w', 0o600)
    try {
      await pullBlocks({ manifest, sessions, blockHasher, file, signal, penalize: (peer, reason) => sharing.penalize(peer, reason), logger })
      await file.sync()
    } finally {
      await file.close()
      await Promise.all(sessions.map(async s => await s.close()))
    }
    try {
      await store.putManifest(manifest)
      await sharing.admit(manifest, path, offer.name === '' ? manifest.id : offer.name, `offered by ${from}`)
    } finally {
      // The cache holds a hard link of it (or nothing, if it could not be admitted).
      await rm(path, { force: true })
    }
    logger.info('hosted cache pulled offered content from peers', { manifestId: manifest.id, name: offer.name, size: manifest.size, ms: Date.now() - started, held: sharing.holds(manifest.id) })
  }
}

interface Source {
  session: ExchangeSession
  have: Uint8Array
  bad: number
  alive: boolean
}

/**
 * Fetches every block of `manifest` from `sessions`, PULL_IN_FLIGHT at a time,
 * verifying each against the manifest before it is written at its offset. A peer
 * that sends a bad block is penalized (strikes, then a ban: PeerSharing.penalize)
 * and, after BAD_BLOCKS_PER_PULL, no longer asked; its block is asked of another
 * peer. Fails when some block is on no peer that still answers.
 */
export async function pullBlocks (o: {
  manifest: PublishedManifest
  sessions: ExchangeSession[]
  blockHasher: BlockHasher
  file: import('node:fs/promises').FileHandle
  signal: AbortSignal
  penalize: (peer: PeerId, reason: string) => void
  logger: Logger
}): Promise<void> {
  const { manifest, signal } = o
  const count = manifest.blocks.length
  if (count === 0) return
  const sources: Source[] = o.sessions.map(session => ({ session, have: new Uint8Array(0), bad: 0, alive: true }))
  const ask = async (): Promise<void> => {
    await Promise.all(sources.filter(s => s.alive).map(async s => {
      try {
        s.have = (await s.session.have()).have
      } catch {
        s.have = new Uint8Array(0)
      }
    }))
  }
  await ask()
  const todo: number[] = Array.from({ length: count }, (_, i) => i)
  let reasks = 0
  let turn = 0
  const pick = (index: number): Source | undefined => {
    const holders = sources.filter(s => s.alive && hasBit(s.have, index))
    return holders.length === 0 ? undefined : holders[turn++ % holders.length]
  }
  let remaining = count
  const failed = new AbortController()
  const stop = AbortSignal.any([signal, failed.signal])
  const worker = async (): Promise<void> => {
    while (remaining > 0) {
      stop.throwIfAborted()
      if (todo.length === 0) {
        // The last blocks are in other workers' hands; one that fails comes back here.
        await new Promise(resolve => setTimeout(resolve, 10))
        continue
      }
      const index = todo.shift()!
      let source = pick(index)
      while (source === undefined) {
        if (reasks >= REASKS) throw new CanopyError('ERR_PEER_UNKNOWN_CONTENT', `block ${index} is on no connected peer that answers`)
        reasks++
        await new Promise(resolve => setTimeout(resolve, REASK_MS))
        stop.throwIfAborted()
        await ask()
        source = pick(index)
      }
      const { offset, length } = blockSpan(index, manifest.size, manifest.blockSize)
      // Memory of its own: the hashing worker can take it without a copy.
      const into = Buffer.allocUnsafeSlow(length)
      let received: Uint8Array | undefined
      try {
        received = await source.session.block(index, into)
      } catch (err) {
        o.logger.debug('a peer failed during a hosted-cache pull', { peer: source.session.peer.toString(), err: (err as Error).message })
        source.alive = false
        todo.push(index)
        continue
      }
      if (received === undefined) {
        // It said it had it: not believed again for this block.
        source.have[index >> 3] &= ~(0x80 >> (index & 7))
        todo.push(index)
        continue
      }
      // Anything but `into` came with the wrong length: it fails verification.
      const bytes = received === into ? into : Buffer.from(received)
      const { ok } = await o.blockHasher.verifyAndWrite(bytes, blockDigest(manifest.blocks[index]), o.file, offset)
      if (ok) {
        remaining--
        continue
      }
      source.bad++
      o.logger.warn('block from a peer failed verification during a hosted-cache pull', { peer: source.session.peer.toString(), block: index })
      o.penalize(source.session.peer, `block ${index} failed verification (hosted-cache pull)`)
      if (source.bad >= BAD_BLOCKS_PER_PULL) source.alive = false
      source.have[index >> 3] &= ~(0x80 >> (index & 7))
      todo.push(index)
    }
  }
  const workers = Array.from({ length: PULL_IN_FLIGHT }, async () => await worker().catch((err: unknown) => {
    failed.abort(err)
    throw err
  }))
  const results = await Promise.allSettled(workers)
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failure !== undefined) throw signal.aborted ? signal.reason : failed.signal.reason
}
