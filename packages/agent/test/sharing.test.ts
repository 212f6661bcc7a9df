// PeerSharing with its real parts: libp2p nodes on 127.0.0.1 (mDNS off), a level
// store and a block cache in temp dirs, the hashing worker.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { blockDigest, contentKey, createManifest, discoveryId, DISCOVERY_LABEL, silentLogger } from '@canopy/core'
import type { PublishedManifest } from '@canopy/core'
import { ExchangeSession, generateSwarmKey, loadOrCreatePeerKey, parseSwarmKey, PeerSharing, serveExchange, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode } from '@canopy/agent/peers'
import { JobStore } from '../src/store/job-store.ts'
import { BlockHasher } from '../src/transfer/block-hasher.ts'

const BS = 64 * 1024
const swarmKey = parseSwarmKey(generateSwarmKey())

async function tempDir (t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-sharing-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

async function node (t: TestContext, dir: string): Promise<PeerNode> {
  const n = await startPeerNode({ privateKey: await loadOrCreatePeerKey(dir), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey, mdns: false, logger: silentLogger })
  t.after(async () => await n.stop())
  return n
}

/** An agent's sharing side: a peer node, its store and cache in `dir`. */
async function sharingAgent (t: TestContext, dir: string, quota = 1024 ** 3): Promise<{ node: PeerNode, store: JobStore, sharing: PeerSharing }> {
  const store = new JobStore(join(dir, 'db'))
  await store.open()
  const hasher = new BlockHasher(1)
  const n = await node(t, dir)
  t.after(async () => {
    await hasher.close()
    await store.close()
  })
  const sharing = new PeerSharing(n.libp2p, store, dir, hasher, silentLogger, quota)
  await sharing.start()
  return { node: n, store, sharing }
}

/** One file's bytes and manifest, published by two origins: one key each. */
async function content (dir: string, name = 'file.bin'): Promise<{ bytes: Buffer, path: string, byA: PublishedManifest, byB: PublishedManifest }> {
  const bytes = randomBytes(3 * BS + 100)
  const path = join(dir, name)
  await writeFile(path, bytes)
  const manifest = await createManifest([bytes], { blockSize: BS })
  const keyed = (secret: number): PublishedManifest => ({ ...manifest, key: contentKey(Buffer.alloc(32, secret), manifest.id).toString('base64') })
  return { bytes, path, byA: keyed(1), byB: keyed(2) }
}

/** A member holding `manifest`'s key asks `server` for its bitfield and block 0 (checked against the manifest). */
async function fetchBlock0 (client: PeerNode, server: PeerNode, manifest: PublishedManifest): Promise<void> {
  const key = Buffer.from(manifest.key!, 'base64')
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const session = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, discoveryId(key, DISCOVERY_LABEL), key)
  try {
    assert.equal((await session.have()).have[0], 0b11110000)
    const block = await session.block(0)
    assert.deepEqual(new Uint8Array(createHash('sha256').update(block!).digest()), blockDigest(manifest.blocks[0]))
  } finally {
    await session.close()
  }
}

test('content fetched from two origins (two keys) is served to holders of either key, also after a restart', async (t) => {
  const dir = await tempDir(t)
  const c = await content(dir)
  const client = await node(t, join(dir, 'client'))
  const first = await sharingAgent(t, join(dir, 'server'))
  for (const manifest of [c.byA, c.byB]) {
    await first.store.putManifest(manifest)
    await first.sharing.admit(manifest, c.path)
  }
  await fetchBlock0(client, first.node, c.byA)
  await fetchBlock0(client, first.node, c.byB)
  assert.equal(first.sharing.cacheView().entries.length, 1, 'one file in the cache')
  assert.deepEqual(await first.store.keysOf(c.byA.id), [c.byA.key, c.byB.key])
  await first.node.stop()
  await first.store.close()

  // The same state directory, a new agent: both keys again.
  const store = new JobStore(join(dir, 'server', 'db'))
  await store.open()
  const hasher = new BlockHasher(1)
  t.after(async () => {
    await hasher.close()
    await store.close()
  })
  const again = await node(t, join(dir, 'server'))
  const sharing = new PeerSharing(again.libp2p, store, join(dir, 'server'), hasher, silentLogger, 1024 ** 3)
  await sharing.start()
  await fetchBlock0(client, again, c.byA)
  await fetchBlock0(client, again, c.byB)
  assert.equal(sharing.cacheView().entries.length, 1)
})

test('the keys kept per manifest id are bounded: the oldest goes first', async (t) => {
  const dir = await tempDir(t)
  const store = new JobStore(join(dir, 'db'))
  await store.open()
  t.after(async () => await store.close())
  const manifest = await createManifest([randomBytes(100)], { blockSize: BS })
  const keys = Array.from({ length: 12 }, (_, i) => contentKey(Buffer.alloc(32, i), manifest.id).toString('base64'))
  await Promise.all(keys.map(async key => await store.putManifest({ ...manifest, key })))
  const kept = await store.keysOf(manifest.id)
  assert.equal(kept.length, 8)
  assert.deepEqual(kept, keys.slice(-8))
  await store.deleteManifest(manifest.id)
  assert.deepEqual(await store.keysOf(manifest.id), [])
})

test('a banned peer is neither served nor asked, and a fresh peer id from its address is refused too', async (t) => {
  const dir = await tempDir(t)
  const c = await content(dir)
  const server = await sharingAgent(t, join(dir, 'server'))
  await server.store.putManifest(c.byA)
  await server.sharing.admit(c.byA, c.path)
  // Every peer here also serves the content, so that server.sharing.open() would
  // reach any it admits.
  const peer = async (name: string): Promise<PeerNode> => {
    const n = await node(t, join(dir, name))
    await serveExchange(n.libp2p, { lookup: () => undefined }, silentLogger)
    return n
  }
  const honest = await peer('honest')
  const liar = await peer('liar')
  await fetchBlock0(honest, server.node, c.byA)
  await fetchBlock0(liar, server.node, c.byA)

  for (let i = 0; i < 3; i++) server.sharing.penalize(liar.libp2p.peerId, 'bad block')
  assert.deepEqual(server.sharing.bans().map(b => b.peer), [liar.libp2p.peerId.toString()])
  assert.deepEqual(server.sharing.addressBans().map(b => b.address), ['127.0.0.1'])

  // Served: not the liar, nor a new identity from the same address.
  await assert.rejects(fetchBlock0(liar, server.node, c.byA))
  const minted = await peer('minted')
  await assert.rejects(fetchBlock0(minted, server.node, c.byA))
  // The honest peer, known before the ban, shares the address and is still served.
  await fetchBlock0(honest, server.node, c.byA)
  // Asked: only the honest peer.
  const key = Buffer.from(c.byA.key!, 'base64')
  const sessions = await server.sharing.open(discoveryId(key, DISCOVERY_LABEL), key, AbortSignal.timeout(10_000))
  t.after(async () => { for (const s of sessions) await s.close() })
  assert.deepEqual(sessions.map(s => s.peer.toString()), [honest.libp2p.peerId.toString()])
})

/** Three different files of one size (content() each), the cache's view of which are held. */
async function threeFiles (dir: string): Promise<Array<Awaited<ReturnType<typeof content>>>> {
  return await Promise.all(['one.bin', 'two.bin', 'three.bin'].map(async name => await content(dir, name)))
}
const held = (sharing: PeerSharing): string[] => sharing.cacheView().entries.map(e => e.name ?? '').sort()

test('the cache evicts the least recently used file, and remembers its last use across a restart', async (t) => {
  const dir = await tempDir(t)
  const [one, two, three] = await threeFiles(dir)
  const size = one.bytes.length
  const client = await node(t, join(dir, 'client'))
  const first = await sharingAgent(t, join(dir, 'server'), 2 * size)
  for (const c of [one, two]) {
    await first.store.putManifest(c.byA)
    assert.deepEqual(await first.sharing.admit(c.byA, c.path, undefined, 'http://origin.test/' + c.path), { cached: true })
  }
  // A peer reads one.bin: two.bin is now the least recently used. Its last use is
  // saved when the file closes (2 s after the last read).
  await fetchBlock0(client, first.node, one.byA)
  for (let i = 0; i < 100 && (await first.store.cacheRecords()).every(r => r.usedAt === undefined); i++) await new Promise(resolve => setTimeout(resolve, 100))
  await first.node.stop()
  await first.store.close()

  const { store, sharing } = await sharingAgent(t, join(dir, 'server'), 2 * size)
  assert.deepEqual(held(sharing), ['one.bin', 'two.bin'])
  assert.equal(sharing.cacheView().entries.find(e => e.name === 'one.bin')?.source, 'http://origin.test/' + one.path)
  await store.putManifest(three.byA)
  assert.deepEqual(await sharing.admit(three.byA, three.path), { cached: true })
  assert.deepEqual(held(sharing), ['one.bin', 'three.bin'], 'two.bin, the least recently used, was evicted')
})

test('the cache never evicts a file peers are reading: a new file that needs its room is refused with the reason', async (t) => {
  const dir = await tempDir(t)
  const [one, two] = await threeFiles(dir)
  const client = await node(t, join(dir, 'client'))
  const server = await sharingAgent(t, join(dir, 'server'), one.bytes.length + 10)
  await server.store.putManifest(one.byA)
  await server.sharing.admit(one.byA, one.path)
  // The read leaves one.bin open for the peer's next blocks: it is in use.
  await fetchBlock0(client, server.node, one.byA)
  await server.store.putManifest(two.byA)
  const refused = await server.sharing.admit(two.byA, two.path)
  assert.equal(refused.cached, false)
  assert.match(refused.cached ? '' : refused.reason, /peers are reading now/)
  assert.deepEqual(held(server.sharing), ['one.bin'])
  // Larger than the whole quota: refused, saying so.
  const big = await createManifest([randomBytes(2 * one.bytes.length)], { blockSize: BS })
  const bigPath = join(dir, 'big.bin')
  await writeFile(bigPath, randomBytes(2 * one.bytes.length))
  const tooBig = await server.sharing.admit({ ...big, key: one.byA.key }, bigPath)
  assert.match(tooBig.cached ? '' : tooBig.reason, /more than the whole cache quota/)
})
