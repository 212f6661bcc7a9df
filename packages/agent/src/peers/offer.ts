import type { Connection, PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { CanopyError, encodeManifest } from '@canopy/core'
import type { HostedCacheUse, Logger, PublishedManifest } from '@canopy/core'
import { FramedStream } from './framing.ts'
import type { PeerLibp2p } from './node.ts'

/**
 * The hosted-cache protocol: only an agent started with --hosted-cache registers it,
 * so it is also how agents recognise one (identify lists a peer's protocols, for
 * static and mDNS-discovered peers alike). A member offers it content it fetched
 * from the origin; the hosted cache then pulls the blocks from peers (never from the
 * origin) and verifies each one before it stores it (hosted-cache.ts).
 *
 * One offer per stream, every frame length-prefixed (framing.ts):
 *   offerer → cache: Offer (JSON, ≤ MAX_OFFER_BYTES)
 *   cache → offerer: Reply (JSON): held | want | busy | full | refused
 *   if want: offerer → cache: the manifest's canonical encoding (≤ MAX_OFFER_MANIFEST_BYTES)
 *            cache → offerer: Reply: accepted | refused
 * The manifest id the cache computes from those bytes must be the offered id: the id
 * binds every block hash, so nothing but the blocks of that manifest can be stored.
 */
export const HOSTED_CACHE_PROTOCOL = '/canopy/hosted-cache/1.0.0'

/** Largest offer frame: an id (≤ 100 characters), a key (44), a name and a URL (bounded below), in JSON. */
export const MAX_OFFER_BYTES = 4096
export const MAX_OFFER_NAME = 256
export const MAX_OFFER_URL = 2048
/**
 * Largest manifest an offer may carry: 8 MiB of canonical JSON is ~140 000 blocks
 * (a block id is 59 characters and its quotes and comma), 140 GiB in 1 MiB blocks.
 * Larger content is simply not offered (the cache reads the whole frame in memory).
 */
export const MAX_OFFER_MANIFEST_BYTES = 8 * 1024 * 1024
/** How long an offer's exchange may take, from the stream's opening (a manifest of 8 MiB on a LAN takes well under a second). */
export const OFFER_TIMEOUT_MS = 30_000
/** Offers an agent has under way at once, and waiting; past that, an offer is dropped (and logged): offering is best effort. */
const OFFERS_IN_FLIGHT = 2
const OFFERS_WAITING = 32

export interface Offer {
  manifestId: string
  /** The content key (base64), as the origin gave it: it names the content among peers and is what readers must prove. */
  key: string
  /** The file's name for people (`canopy cache` shows it). */
  name: string
  /** Where the offerer fetched it: informational only (a hosted cache never fetches it). */
  url: string
}

export type OfferReply = 'held' | 'want' | 'busy' | 'full' | 'refused' | 'accepted'
const REPLIES: readonly OfferReply[] = ['held', 'want', 'busy', 'full', 'refused', 'accepted']

/** Thrown for an offer that breaks the protocol's bounds (and logged against the offerer). */
export class OfferError extends CanopyError {
  constructor (message: string) {
    super('ERR_OFFER_INVALID', message)
    this.name = 'OfferError'
  }
}

/** Peer ids remembered as hosted caches, at most (the oldest are forgotten first): new ids cost a peer nothing. */
const MAX_REMEMBERED = 1024

function remember (set: Set<string>, id: string): void {
  set.add(id)
  if (set.size > MAX_REMEMBERED) set.delete(set.values().next().value!)
}

function peerIdOf (ma: Multiaddr): string | undefined {
  return ma.getComponents().find(c => c.name === 'p2p')?.value
}

export function encodeJson (value: unknown): Uint8Array {
  const body = Buffer.from(JSON.stringify(value))
  const frame = Buffer.allocUnsafe(4 + body.length)
  frame.writeUInt32BE(body.length, 0)
  body.copy(frame, 4)
  return frame
}

function encodeFrame (body: Uint8Array): Uint8Array[] {
  const head = Buffer.allocUnsafe(4)
  head.writeUInt32BE(body.length, 0)
  return [head, body]
}

/** Strictly decodes an offer: every field present, a string, within its bound; nothing else. */
export function decodeOffer (body: Uint8Array): Offer {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(body).toString('utf8'))
  } catch {
    throw new OfferError('the offer is not JSON')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new OfferError('the offer is not a JSON object')
  const v = value as Record<string, unknown>
  const keys = Object.keys(v)
  if (keys.length !== 4 || !['manifestId', 'key', 'name', 'url'].every(k => typeof v[k] === 'string')) throw new OfferError('an offer has exactly manifestId, key, name and url, all strings')
  const offer = v as unknown as Offer
  if (!/^b[a-z2-7]{20,100}$/.test(offer.manifestId)) throw new OfferError('the offered manifest id is not a CID')
  if (!/^[A-Za-z0-9+/]{43}=$/.test(offer.key)) throw new OfferError('the offered key is not 32 bytes in base64')
  if (offer.name.length > MAX_OFFER_NAME || [...offer.name].some(ch => ch < ' ' || ch === '/' || ch === '\\')) throw new OfferError(`the offered name must be a file name of at most ${MAX_OFFER_NAME} characters`)
  if (offer.url.length > MAX_OFFER_URL) throw new OfferError(`the offered URL is longer than ${MAX_OFFER_URL} characters`)
  return offer
}

export function decodeReply (body: Uint8Array): OfferReply {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(body).toString('utf8'))
  } catch {
    throw new OfferError('the hosted cache\'s reply is not JSON')
  }
  const status = (value as { status?: unknown } | null)?.status
  if (typeof status !== 'string' || !REPLIES.includes(status as OfferReply)) throw new OfferError('the hosted cache\'s reply has no known status')
  return status as OfferReply
}

/**
 * Offers one manifest's content to the hosted cache `peer`; resolves with its last
 * reply ('held': it had it; 'accepted': it will pull it; 'busy', 'full', 'refused').
 */
export async function sendOffer (libp2p: PeerLibp2p, peer: PeerId, manifest: PublishedManifest, name: string, url: string, signal?: AbortSignal): Promise<OfferReply> {
  if (manifest.key === undefined) throw new OfferError('content without a content key is not offered')
  const timeout = AbortSignal.timeout(OFFER_TIMEOUT_MS)
  const stream = await libp2p.dialProtocol(peer, HOSTED_CACHE_PROTOCOL, { signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]) })
  const framed = new FramedStream(stream, { maxBuffered: 4096, writeTimeoutMs: OFFER_TIMEOUT_MS })
  try {
    const offer: Offer = { manifestId: manifest.id, key: manifest.key, name: name.slice(0, MAX_OFFER_NAME), url: url.length > MAX_OFFER_URL ? '' : url }
    await framed.write(encodeJson(offer))
    const reply = await readReply(framed)
    if (reply !== 'want') return reply
    const encoded = encodeManifest(manifest)
    if (encoded.length > MAX_OFFER_MANIFEST_BYTES) {
      stream.abort(new OfferError('manifest too large to offer'))
      return 'refused'
    }
    await framed.write(...encodeFrame(encoded))
    return await readReply(framed)
  } finally {
    await stream.close().catch(() => stream.abort(new Error('offer over')))
  }
}

async function readReply (framed: FramedStream): Promise<OfferReply> {
  const body = await framed.read(256, OFFER_TIMEOUT_MS, OFFER_TIMEOUT_MS)
  if (body === undefined) throw new OfferError('the hosted cache closed the offer without a reply')
  return decodeReply(body)
}

export interface HostedCachesInit {
  /** --hosted-cache-addr: dialled as static peers; a peer id in them (/p2p/…) names the cache before identify does. */
  addresses: Multiaddr[]
}

/**
 * An agent's view of the branch's hosted caches: the configured ones (by address or
 * peer id) and any connected peer whose identify lists HOSTED_CACHE_PROTOCOL (so one
 * found by mDNS counts too). Transfers ask them all first (PeerSharing.open), and
 * blocks from them count as the job's fromCache. Completed files are offered to the
 * configured ones only: an offer hands over the content key, and any member could
 * announce the protocol to collect the keys of content it may not read.
 */
export class HostedCaches {
  private readonly libp2p: PeerLibp2p
  private readonly logger: Logger
  private readonly addresses: Multiaddr[]
  /** Peer ids of configured hosted caches (given with /p2p/, or connected at a configured address). */
  private readonly trusted = new Set<string>()
  /** Peer ids that announced the protocol (identify). */
  private readonly announced = new Set<string>()
  private inFlight = 0
  private readonly waiting: Array<() => Promise<void>> = []

  constructor (components: { libp2p: PeerLibp2p, logger: Logger }, init: HostedCachesInit) {
    this.libp2p = components.libp2p
    this.logger = components.logger
    this.addresses = init.addresses
    for (const ma of init.addresses) {
      const id = peerIdOf(ma)
      if (id !== undefined) this.trusted.add(id)
    }
    this.libp2p.addEventListener('peer:identify', (event) => {
      const { peerId, protocols } = event.detail
      if (protocols.includes(HOSTED_CACHE_PROTOCOL) && !this.announced.has(peerId.toString())) {
        remember(this.announced, peerId.toString())
        this.logger.info('hosted cache found', { peer: peerId.toString(), configured: this.trusted.has(peerId.toString()) })
      }
    })
    this.libp2p.addEventListener('connection:open', (event) => this.trustIfConfigured(event.detail))
    // Connections opened before this listened (the static dials start with the node).
    for (const connection of this.libp2p.getConnections()) this.trustIfConfigured(connection)
  }

  /** A connection to a configured address without a peer id: whoever answers there is that hosted cache. */
  private trustIfConfigured (connection: Connection): void {
    const at = connection.remoteAddr.decapsulateCode(421).toString()
    if (this.addresses.some(ma => peerIdOf(ma) === undefined && ma.decapsulateCode(421).toString() === at)) remember(this.trusted, connection.remotePeer.toString())
  }

  isHostedCache (peer: PeerId): boolean {
    return this.trusted.has(peer.toString()) || this.announced.has(peer.toString())
  }

  /** Configured hosted caches that are connected: the ones offered content. */
  connected (): PeerId[] {
    return this.libp2p.getPeers().filter(p => this.trusted.has(p.toString()))
  }

  /** Configured addresses with no open connection (the hosted cache is down, or not reachable). */
  unreachable (): string[] {
    const connections = this.libp2p.getConnections()
    return this.addresses.filter(ma => {
      const id = peerIdOf(ma)
      const at = ma.decapsulateCode(421).toString()
      return !connections.some(c => id !== undefined ? c.remotePeer.toString() === id : c.remoteAddr.decapsulateCode(421).toString() === at)
    }).map(ma => ma.toString())
  }

  /**
   * A transfer's use of the hosted caches, from the peers it opened sessions to:
   * 'not-held' when one is among them (it becomes 'served' with its first block),
   * 'unreachable' when one is configured and none is connected; undefined when the
   * agent knows of none.
   */
  use (sessionPeers: PeerId[]): HostedCacheUse | undefined {
    if (sessionPeers.some(p => this.isHostedCache(p))) return { state: 'not-held' }
    const unreachable = this.unreachable()
    if (unreachable.length > 0) return { state: 'unreachable', unreachable }
    return undefined
  }

  /**
   * Offers a completed, verified file to every connected hosted cache, in the
   * background: it never delays the job (the caller does not wait), and at most
   * OFFERS_IN_FLIGHT offers run at once, OFFERS_WAITING wait; beyond, it is dropped.
   */
  offer (manifest: PublishedManifest, name: string, url: string): void {
    if (manifest.key === undefined) return
    const unconfigured = this.libp2p.getPeers().filter(p => this.announced.has(p.toString()) && !this.trusted.has(p.toString()))
    if (unconfigured.length > 0) {
      this.logger.info('content not offered to hosted caches that only announced themselves (an offer gives the content key: configure them with --hosted-cache-addr)', { peers: unconfigured.map(String).join(','), manifestId: manifest.id })
    }
    for (const peer of this.connected()) {
      if (this.waiting.length >= OFFERS_WAITING) {
        this.logger.info('offer to a hosted cache dropped: too many waiting', { peer: peer.toString(), manifestId: manifest.id })
        continue
      }
      this.waiting.push(async () => {
        const reply = await sendOffer(this.libp2p, peer, manifest, name, url)
        this.logger.info('content offered to a hosted cache', { peer: peer.toString(), manifestId: manifest.id, reply })
      })
    }
    this.next()
  }

  private next (): void {
    while (this.inFlight < OFFERS_IN_FLIGHT && this.waiting.length > 0) {
      const run = this.waiting.shift()!
      this.inFlight++
      void run().catch((err: unknown) => this.logger.info('offer to a hosted cache failed', { err: (err as Error).message })).finally(() => {
        this.inFlight--
        this.next()
      })
    }
  }
}
