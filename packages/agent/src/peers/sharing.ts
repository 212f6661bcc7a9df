import { link, mkdir, open, rm, stat, statfs } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import type { Connection, PeerId } from '@libp2p/interface'
import { blockDigest, blockSpan, digestsEqual, discoveryId, DISCOVERY_LABEL, formatBytes } from '@canopy/core'
import type { CacheView, Logger, PeersView, PublishedManifest } from '@canopy/core'
import type { FileProgress } from '../jobs/job.ts'
import type { CacheRecord, JobStore } from '../store/job-store.ts'
import type { PeerSessions } from '../transfer/peer-fetch.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import { ExchangeSession, remoteAddress, serveExchange } from './exchange.ts'
import type { BlockSource, ServeLimits, SharedContent } from './exchange.ts'
import type { PeerLibp2p } from './node.ts'
import type { SharingMetrics } from '../metrics/agent-metrics.ts'
import type { HostedCaches } from './offer.ts'

/** Bad blocks from one peer before it is banned. */
const BAN_AFTER = 3
/** How long a ban lasts (of a peer id, and of the addresses it used). */
const BAN_MS = 10 * 60_000
/** Peer ids remembered with the time they were first seen (for address bans); the oldest are forgotten first. */
const MAX_REMEMBERED_PEERS = 4096
/** How long opening a session to one peer may take. */
const OPEN_TIMEOUT_MS = 5000
/** A file served to peers stays open this long after its last block was read. */
const IDLE_CLOSE_MS = 2000

interface Entry {
  manifest: PublishedManifest
  key: Uint8Array
  /** A partial file with its progress, or a cached file (every block present). */
  path: string
  progress?: FileProgress
  /** Blocks being fetched now: advertised as claims, so that peers do not fetch them from the origin too. */
  inFlight?: Set<number>
  cache?: CacheRecord
  /** The file, open while peers read it (closed IDLE_CLOSE_MS after the last read). */
  file?: Promise<FileHandle>
  closer?: NodeJS.Timeout
}

/** What became of a file offered to the cache: kept, or not and why (in words for people). */
export type AdmitResult = { cached: true } | { cached: false, reason: string }

/**
 * The agent's side of peer caching: which content it can serve (by discovery id),
 * reading and re-verifying blocks before they leave, the block cache of completed
 * files, and sessions to connected peers for its own transfers, with bans for peers
 * that send bad blocks.
 *
 * The cache is a hard link of each completed file under `<state-dir>/cache/`, so it
 * costs no copy and survives the user deleting the file. A block read for a peer is
 * verified against the manifest before it is sent, and a cached file whose size,
 * mtime or inode changed is dropped: the cache never serves what it did not verify.
 */
export class PeerSharing implements BlockSource, PeerSessions {
  private readonly libp2p: PeerLibp2p
  private readonly store: JobStore
  private readonly cacheDir: string
  private readonly logger: Logger
  private readonly blockHasher: BlockHasher
  private readonly entries = new Map<string, Entry>()
  private readonly strikes = new Map<string, number>()
  /** Bytes of verified blocks received from / sent to each peer, since the agent started. */
  private readonly fromPeer = new Map<string, number>()
  private readonly toPeer = new Map<string, number>()
  private readonly usedAt = new Map<string, number>()
  private quotaBytes: number
  private readonly bannedUntil = new Map<string, number>()
  /** Remote IP addresses banned, and until when: a new peer id costs nothing to mint, a new address more. */
  private readonly addressBannedUntil = new Map<string, { until: number, since: number }>()
  /** When each peer id was first connected (ms): ids already known when their address was banned stay admitted. */
  private readonly firstSeen = new Map<string, number>()
  private readonly serveLimits?: Partial<ServeLimits>
  /** Counts bytes served, lookups, evictions and bans (set by the agent). */
  metrics?: SharingMetrics
  /** The branch's hosted caches (offer.ts): asked first, offered completed files (set by startSharing). */
  hostedCaches?: HostedCaches

  constructor (libp2p: PeerLibp2p, store: JobStore, stateDir: string, blockHasher: BlockHasher, logger: Logger, quotaBytes?: number, serveLimits?: Partial<ServeLimits>) {
    this.quotaBytes = quotaBytes ?? 0
    this.serveLimits = serveLimits
    this.libp2p = libp2p
    this.blockHasher = blockHasher
    this.store = store
    this.cacheDir = join(stateDir, 'cache')
    this.logger = logger
  }

  /** Serves the exchange protocol and re-admits the cached files recorded in the store. */
  async start (): Promise<void> {
    await mkdir(this.cacheDir, { recursive: true, mode: 0o700 })
    if (this.quotaBytes <= 0) {
      // Default quota: 10 GiB or 10% of the disk that holds the cache, whichever is smaller.
      const { blocks, bsize } = await statfs(this.cacheDir)
      this.quotaBytes = Math.min(10 * 1024 ** 3, Math.floor(blocks * bsize / 10))
    }
    for (const record of await this.store.cacheRecords()) {
      const manifest = await this.store.getManifest(record.manifestId)
      if (manifest?.key === undefined || !await this.unchanged(record)) {
        await this.forget(record)
        continue
      }
      if (record.usedAt !== undefined) this.usedAt.set(record.manifestId, Date.parse(record.usedAt))
      await this.addCached(manifest, record)
    }
    // Bans apply both ways: a banned peer's connections (and new peer ids from a
    // banned address) are closed as they open, and its streams are not served.
    this.libp2p.addEventListener('connection:open', (event) => {
      const connection = event.detail
      const peer = connection.remotePeer.toString()
      if (!this.firstSeen.has(peer)) {
        this.firstSeen.set(peer, Date.now())
        if (this.firstSeen.size > MAX_REMEMBERED_PEERS) this.firstSeen.delete(this.firstSeen.keys().next().value!)
      }
      if (!this.admits(connection)) {
        this.logger.debug('closing a connection from a banned peer or address', { peer, address: remoteAddress(connection) })
        void connection.close().catch(() => connection.abort(new Error('banned')))
      }
    })
    await serveExchange(this.libp2p, this, this.logger, this.serveLimits)
  }

  /** Shares a cached file under every content key its manifest id was stored with. */
  private async addCached (manifest: PublishedManifest, record: CacheRecord): Promise<void> {
    const keys = new Set([...await this.store.keysOf(manifest.id), ...manifest.key === undefined ? [] : [manifest.key]])
    for (const key of keys) this.add({ manifest: { ...manifest, key }, key: Buffer.from(key, 'base64'), path: record.path, cache: record })
  }

  /** Offers the blocks of a file being downloaded, as they are verified. */
  sharePartial (manifest: PublishedManifest, path: string, progress: FileProgress, inFlight: Set<number>): void {
    if (manifest.key === undefined) return
    const existing = this.entries.get(hexId(manifest))
    if (existing?.cache !== undefined) return
    this.add({ manifest, key: Buffer.from(manifest.key, 'base64'), path, progress, inFlight })
  }

  /**
   * Stops offering the partial file at `path` (its job was cancelled, or the file
   * is being fetched again from scratch): peers must not be told of blocks that are
   * about to be deleted. A completed file in the cache is not affected.
   */
  stopSharingPartial (path: string): void {
    for (const [id, entry] of this.entries) {
      if (entry.cache === undefined && entry.path === path) {
        this.release(entry)
        this.entries.delete(id)
      }
    }
  }

  /**
   * Keeps a completed, verified file for peers (a hard link into the cache); `name`
   * is the file's name for people, `source` where it came from (its URL, or "offered
   * by <peer id>"). Says whether it was kept, and if not why: a download carries on
   * without it, a preload job fails with the reason.
   */
  async admit (manifest: PublishedManifest, path: string, name = basename(path), source?: string): Promise<AdmitResult> {
    if (manifest.key === undefined) return notCached('the origin gave no content key with its manifest (an origin without a secret): peers could not be allowed to read it')
    // The same content already cached (fetched before from another origin, under
    // another key): the file stays, and is now also offered under this key.
    const cached = this.cachedRecords().find(r => r.manifestId === manifest.id)
    if (cached !== undefined && await this.unchanged(cached)) {
      await this.addCached(manifest, cached)
      return { cached: true }
    }
    const cachePath = join(this.cacheDir, manifest.id)
    const size = (await stat(path)).size
    if (size > this.quotaBytes) {
      this.logger.info('completed file larger than the cache quota; not cached', { path, size, quota: this.quotaBytes })
      return notCached(tooLarge(size, this.quotaBytes))
    }
    if (!await this.evictFor(size, manifest.id)) {
      this.logger.info('the cache is full of files peers are reading now; not cached', { path, size, quota: this.quotaBytes })
      return notCached(`the cache (quota ${formatBytes(this.quotaBytes)}) is full of files peers are reading now, which are never evicted: try again later, or raise --cache-size`)
    }
    try {
      await rm(cachePath, { force: true })
      await link(path, cachePath)
    } catch (err) {
      // Another filesystem than the state directory's: not cached (a copy would
      // double the disk writes of every download).
      this.logger.info('completed file not cached for peers', { path, err: (err as Error).message })
      const entry = this.entries.get(hexId(manifest))
      if (entry !== undefined) this.release(entry)
      this.entries.delete(hexId(manifest))
      return notCached(`could not link it into the cache (${(err as Error).message}): the cache lives on the state directory's filesystem`)
    }
    const s = await stat(cachePath)
    const record: CacheRecord = { manifestId: manifest.id, path: cachePath, size: s.size, mtimeMs: s.mtimeMs, ino: s.ino, addedAt: new Date().toISOString(), name, ...(source !== undefined ? { source } : {}) }
    await this.store.putCacheRecord(record)
    await this.addCached(manifest, record)
    return { cached: true }
  }

  /** Whether the cache holds the file of this manifest id (under any key). */
  holds (manifestId: string): boolean {
    return this.cachedRecords().some(r => r.manifestId === manifestId)
  }

  /** The manifest id shared under this content key (base64) now, if any. */
  manifestUnder (key: string): string | undefined {
    return this.entries.get(discoveryId(Buffer.from(key, 'base64'), DISCOVERY_LABEL).toString('hex'))?.manifest.id
  }

  /** Bytes the cache may hold. */
  get quota (): number {
    return this.quotaBytes
  }

  /** Whether `peer` is one of the branch's hosted caches (its blocks count as the job's fromCache). */
  isHostedCache (peer: PeerId): boolean {
    return this.hostedCaches?.isHostedCache(peer) === true
  }

  /** The files in the cache, each once (an entry per content key shares one record). */
  private cachedRecords (): CacheRecord[] {
    const records = new Map<string, CacheRecord>()
    for (const entry of this.entries.values()) if (entry.cache !== undefined) records.set(entry.cache.manifestId, entry.cache)
    return [...records.values()]
  }

  /**
   * Drops least recently used files until `incoming` more bytes fit in the quota.
   * Files peers are reading now (open: read in the last IDLE_CLOSE_MS) are never
   * dropped, since their transfers need them; false when the rest cannot make room
   * (nothing is dropped then).
   */
  private async evictFor (incoming: number, keep: string): Promise<boolean> {
    const cached = this.cachedRecords().filter(r => r.manifestId !== keep)
    let used = cached.reduce((sum, r) => sum + r.size, 0)
    const inUse = new Set([...this.entries.values()].filter(e => e.cache !== undefined && e.file !== undefined).map(e => e.cache!.manifestId))
    const evictable = cached.filter(r => !inUse.has(r.manifestId))
      .sort((a, b) => (this.usedAt.get(a.manifestId) ?? Date.parse(a.addedAt)) - (this.usedAt.get(b.manifestId) ?? Date.parse(b.addedAt)))
    if (used - evictable.reduce((sum, r) => sum + r.size, 0) + incoming > this.quotaBytes) return false
    for (const record of evictable) {
      if (used + incoming <= this.quotaBytes) break
      this.logger.info('evicting a cached file (least recently used)', { manifestId: record.manifestId, size: record.size })
      await this.forget(record)
      this.metrics?.cacheEvicted(record.size)
      used -= record.size
    }
    return true
  }

  /** What the cache holds (GET /v1/cache). */
  cacheView (): CacheView {
    const entries = this.cachedRecords()
    return {
      usedBytes: entries.reduce((sum, r) => sum + r.size, 0),
      quotaBytes: this.quotaBytes,
      ...this.metrics?.peerCounts() ?? { hits: 0, misses: 0, bytesServed: 0 },
      entries: entries.map(r => ({
        manifestId: r.manifestId,
        ...(r.name !== undefined ? { name: r.name } : {}),
        size: r.size,
        ...(r.source !== undefined ? { source: r.source } : {}),
        addedAt: r.addedAt,
        usedAt: new Date(this.usedAt.get(r.manifestId) ?? Date.parse(r.addedAt)).toISOString()
      }))
    }
  }

  /** Empties the cache (files being downloaded stay shared). */
  async clearCache (): Promise<CacheView> {
    for (const record of this.cachedRecords()) await this.forget(record)
    return this.cacheView()
  }

  /** Whether the cache holds this content, complete and unchanged on disk (a preload of it has nothing to fetch). */
  async holdsIntact (manifestId: string): Promise<boolean> {
    const record = this.cachedRecords().find(r => r.manifestId === manifestId)
    return record !== undefined && await this.unchanged(record)
  }

  /** Connected peers and bans (GET /v1/peers). */
  peersView (): PeersView {
    return {
      peers: this.libp2p.getPeers().map(peer => {
        const id = peer.toString()
        return {
          peerId: id,
          addresses: this.libp2p.getConnections(peer).map(c => c.remoteAddr.toString()),
          bytesFromPeer: this.fromPeer.get(id) ?? 0,
          bytesToPeer: this.toPeer.get(id) ?? 0,
          ...(this.isHostedCache(peer) ? { hostedCache: true as const } : {})
        }
      }),
      bans: this.bans().map(b => ({ peerId: b.peer, until: b.until }))
    }
  }

  received (peer: PeerId, bytes: number): void {
    const id = peer.toString()
    this.fromPeer.set(id, (this.fromPeer.get(id) ?? 0) + bytes)
  }

  lookup (id: Uint8Array): SharedContent | undefined {
    const entry = this.entries.get(Buffer.from(id).toString('hex'))
    this.metrics?.contentLookup(entry !== undefined)
    if (entry === undefined) return undefined
    return {
      manifest: entry.manifest,
      key: entry.key,
      has: (i) => entry.cache !== undefined || entry.progress?.has(i) === true,
      fetching: (i) => entry.cache === undefined && entry.inFlight?.has(i) === true,
      read: async (i) => await this.read(entry, i),
      served: (peer, bytes) => {
        const key = peer.toString()
        this.toPeer.set(key, (this.toPeer.get(key) ?? 0) + bytes)
        this.metrics?.servedToPeer(bytes)
        if (entry.cache !== undefined) this.usedAt.set(entry.cache.manifestId, Date.now())
      }
    }
  }

  /**
   * Whether a connection may be used, either way: not if its peer id is banned, nor
   * if its address is and the peer id was first seen after that ban began (a fresh
   * identity from a banned machine). Ids known before stay (peers that share the
   * address, e.g. agents on one host, are judged by their own strikes).
   */
  admits (connection: Connection): boolean {
    const now = Date.now()
    const peer = connection.remotePeer.toString()
    if ((this.bannedUntil.get(peer) ?? 0) > now) return false
    const ban = this.addressBannedUntil.get(remoteAddress(connection))
    if (ban === undefined || ban.until <= now) return true
    const seen = this.firstSeen.get(peer)
    return seen !== undefined && seen < ban.since
  }

  async open (id: Uint8Array, key: Uint8Array, signal: AbortSignal): Promise<ExchangeSession[]> {
    // Hosted caches first: their sessions open, answer and are asked before the others'.
    const peers = this.libp2p.getPeers().filter(p => this.libp2p.getConnections(p).every(c => this.admits(c)))
      .sort((a, b) => Number(this.isHostedCache(b)) - Number(this.isHostedCache(a)))
    const sessions = await Promise.all(peers.map(async peer => {
      // A timeout for opening only: the signal given to the dial stays with the
      // stream, and a plain AbortSignal.timeout would reset a healthy session later.
      const opening = new AbortController()
      const timer = setTimeout(() => opening.abort(new Error('opening the exchange timed out')), OPEN_TIMEOUT_MS)
      try {
        return await ExchangeSession.open(this.libp2p, peer, id, key, AbortSignal.any([signal, opening.signal]))
      } catch (err) {
        this.logger.debug('could not open an exchange with a peer', { peer: peer.toString(), err: (err as Error).message })
        return undefined
      } finally {
        clearTimeout(timer)
      }
    }))
    return sessions.filter(s => s !== undefined)
  }

  self (): PeerId {
    return this.libp2p.peerId
  }

  penalize (peer: PeerId, reason: string): void {
    const key = peer.toString()
    // Blocks already in flight when the ban began: the ban stands, no new one.
    if ((this.bannedUntil.get(key) ?? 0) > Date.now()) return
    const strikes = (this.strikes.get(key) ?? 0) + 1
    this.strikes.set(key, strikes)
    if (strikes >= BAN_AFTER) {
      const now = Date.now()
      this.bannedUntil.set(key, now + BAN_MS)
      this.strikes.delete(key)
      const addresses = [...new Set(this.libp2p.getConnections(peer).map(remoteAddress))]
      for (const address of addresses) {
        const previous = this.addressBannedUntil.get(address)
        this.addressBannedUntil.set(address, { until: now + BAN_MS, since: previous !== undefined && previous.until > now ? previous.since : now })
      }
      this.logger.warn('peer banned', { peer: key, addresses, reason, forMs: BAN_MS })
      // Both ways: it is neither asked nor served, and its connections close.
      void this.libp2p.hangUp(peer).catch(() => {})
      this.dropExpiredBans(now)
      this.metrics?.peerBanned('bad_blocks')
    }
  }

  /** Bans that ended are forgotten (the maps stay as small as the bans in force). */
  private dropExpiredBans (now: number): void {
    for (const [peer, until] of this.bannedUntil) if (until <= now) this.bannedUntil.delete(peer)
    for (const [address, ban] of this.addressBannedUntil) if (ban.until <= now) this.addressBannedUntil.delete(address)
  }

  /** Addresses banned now, with when their ban ends. */
  addressBans (): Array<{ address: string, until: string }> {
    const now = Date.now()
    return [...this.addressBannedUntil].filter(([, ban]) => ban.until > now).map(([address, ban]) => ({ address, until: new Date(ban.until).toISOString() }))
  }

  /** Peers banned now, with when their ban ends. */
  bans (): Array<{ peer: string, until: string }> {
    const now = Date.now()
    return [...this.bannedUntil].filter(([, until]) => until > now).map(([peer, until]) => ({ peer, until: new Date(until).toISOString() }))
  }

  private add (entry: Entry): void {
    const id = hexId(entry.manifest)
    const previous = this.entries.get(id)
    if (previous !== undefined) this.release(previous)
    this.entries.set(id, entry)
  }

  /**
   * The entry's file, opened once for the blocks peers read in a row rather than per
   * block. A cached file is checked (size, mtime, inode) when it is opened; while it
   * is open, every block is still verified before it leaves.
   */
  private async file (entry: Entry): Promise<FileHandle> {
    if (entry.file === undefined) {
      const opening = (async () => {
        if (entry.cache !== undefined && !await this.unchanged(entry.cache)) {
          await this.forget(entry.cache)
          throw new Error('the cached file changed')
        }
        return await open(entry.path, 'r')
      })()
      // A failed open is tried again at the next read.
      opening.catch(() => { if (entry.file === opening) entry.file = undefined })
      entry.file = opening
    }
    const file = entry.file
    clearTimeout(entry.closer)
    entry.closer = setTimeout(() => this.release(entry), IDLE_CLOSE_MS)
    entry.closer.unref()
    return await file
  }

  /**
   * Closes the entry's file (after any read under way: FileHandle.close waits for it).
   * A cached file's last use is saved then, once per spell of reads.
   */
  private release (entry: Entry): void {
    clearTimeout(entry.closer)
    const file = entry.file
    entry.file = undefined
    file?.then(async handle => await handle.close()).catch(() => {})
    const record = entry.cache
    const usedAt = record === undefined ? undefined : this.usedAt.get(record.manifestId)
    if (record === undefined || file === undefined || usedAt === undefined || this.entries.get(hexId(entry.manifest)) !== entry) return
    record.usedAt = new Date(usedAt).toISOString()
    this.store.putCacheRecord(record).catch((err: unknown) => this.logger.debug('could not save when a cached file was last used', { manifestId: record.manifestId, err: String(err) }))
  }

  private async read (entry: Entry, index: number): Promise<Uint8Array> {
    const { offset, length } = blockSpan(index, entry.manifest.size, entry.manifest.blockSize)
    const handle = await this.file(entry)
    let bytes: Buffer = Buffer.allocUnsafeSlow(length)
    const { bytesRead } = await handle.read(bytes, 0, length, offset)
    if (bytesRead !== length) throw new Error('short read')
    // Never serve what was not verified: the disk is not trusted more than the wire.
    // (On the hashing worker: the event loop is busy with Noise.)
    const hashed = await this.blockHasher.hash(bytes)
    bytes = hashed.bytes
    if (!digestsEqual(hashed.digest, blockDigest(entry.manifest.blocks[index]))) {
      if (entry.cache !== undefined) await this.forget(entry.cache)
      throw new Error(`block ${index} on disk does not match its manifest`)
    }
    return bytes
  }

  private async unchanged (record: CacheRecord): Promise<boolean> {
    const s = await stat(record.path).catch(() => undefined)
    return s !== undefined && s.size === record.size && s.mtimeMs === record.mtimeMs && s.ino === record.ino
  }

  private async forget (record: CacheRecord): Promise<void> {
    this.logger.info('dropping a cached file', { manifestId: record.manifestId })
    for (const [id, entry] of this.entries) {
      if (entry.cache?.manifestId !== record.manifestId) continue
      this.entries.delete(id)
      this.release(entry)
    }
    await this.store.deleteCacheRecord(record.manifestId)
    await rm(record.path, { force: true })
  }
}

function notCached (reason: string): AdmitResult {
  return { cached: false, reason }
}

/** Why a file larger than the quota is not cached, with what to do. */
export function tooLarge (size: number, quota: number): string {
  return `it is ${formatBytes(size)}, more than the whole cache quota (${formatBytes(quota)}): raise --cache-size, then resume`
}

function hexId (manifest: PublishedManifest): string {
  return discoveryId(Buffer.from(manifest.key ?? '', 'base64'), DISCOVERY_LABEL).toString('hex')
}
