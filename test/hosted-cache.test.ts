// The hosted-cache role (issue 18): real agent processes and real libp2p nodes on
// loopback, static peers (mDNS off). An agent offers what it fetched from the origin;
// the hosted cache pulls it from peers, verified, and keeps it for the branch.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFile } from 'node:fs/promises'
import { request } from 'undici'
import { decodeManifest, discoveryId, DISCOVERY_LABEL, EXCHANGE_PROTOCOL, generateSecret, MANIFEST_MEDIA_TYPE, manifestId, silentLogger } from '@canopy/core'
import type { JobView, PublishedManifest } from '@canopy/core'
import { decodeOffer, ExchangeSession, HOSTED_CACHE_PROTOCOL, loadOrCreatePeerKey, parseSwarmKey, sendOffer, serveExchange, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode } from '@canopy/agent/peers'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  FINISHED, fileSha256, loopbackAddress, originContentBytes, originWithFile, startAgentProcess, swarmKeyFile, tempDir, waitConnected
} from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

const MiB = 1024 * 1024

async function fetchWith (agent: AgentProcess, url: string, path: string): Promise<JobView> {
  const job = await agent.client.createJob({ files: [{ url, path }], autoComplete: true })
  return await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
}

/** Waits (up to 60 s) until the agent's cache holds `manifestId`. */
async function waitHeld (agent: AgentProcess, manifestId: string): Promise<boolean> {
  for (let i = 0; i < 600; i++) {
    if ((await agent.client.cache()).entries.some(e => e.manifestId === manifestId)) return true
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return false
}

async function manifestOf (url: string): Promise<PublishedManifest> {
  const res = await request(url, { headers: { accept: MANIFEST_MEDIA_TYPE } })
  return decodeManifest(Buffer.from(await res.body.arrayBuffer()))
}

async function memberNode (t: TestContext, dir: string, name: string, keyFile: string): Promise<PeerNode> {
  const node = await startPeerNode({ privateKey: await loadOrCreatePeerKey(join(dir, name)), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: parseSwarmKey(await readFile(keyFile, 'utf8')), mdns: false, logger: silentLogger })
  t.after(async () => await node.stop())
  return node
}

test('laptops: A fetches from the origin and offers; the hosted cache pulls and keeps it across a SIGKILL; B asks it before A; C gets it from the hosted cache after A left', async (t) => {
  const size = 12 * MiB + 4321
  const { dir, origin, sha256 } = await originWithFile(t, size)
  const url = `${origin.url}/f.bin`
  const keyFile = await swarmKeyFile(dir)
  const keyArgs = ['--swarm-key', keyFile]
  const hosted = await startAgentProcess(join(dir, 'hosted'), [...keyArgs, '--hosted-cache'])
  t.after(async () => await hosted.kill())
  const a = await startAgentProcess(join(dir, 'a'), [...keyArgs, '--hosted-cache-addr', await loopbackAddress(hosted)])
  t.after(async () => await a.kill())
  assert.equal(await waitConnected(a, 1), 1)
  assert.equal((await hosted.client.status()).peer?.hostedCache, true)
  assert.equal((await a.client.status()).peer?.hostedCache, undefined)
  assert.deepEqual((await a.client.peers()).peers.map(p => p.hostedCache), [true])

  const first = await fetchWith(a, url, join(dir, 'a.bin'))
  assert.equal(first.state, 'acknowledged', JSON.stringify(first.error))
  assert.equal(first.bytes.fromOrigin, size)
  assert.deepEqual(first.files[0].hostedCache, { state: 'not-held' })
  const heldId = first.files[0].manifestId!
  assert.ok(await waitHeld(hosted, heldId), `the hosted cache did not pull the offered content\n${hosted.stderr().slice(-3000)}`)
  const held = (await hosted.client.cache()).entries.find(e => e.manifestId === heldId)!
  assert.equal(held.size, size)
  assert.equal(held.name, 'a.bin')
  // The default quota of the role: min(1 TiB, half the disk), beyond an agent's min(10 GiB, 10%).
  assert.ok((await hosted.client.cache()).quotaBytes > (await a.client.cache()).quotaBytes)
  const originAfterA = await originContentBytes(origin.url)
  assert.ok(originAfterA <= 1.01 * size, `pulling went to the origin: ${originAfterA} for ${size}`)

  // A offers again (a second download): held content is a cheap no-op.
  const again = await fetchWith(a, url, join(dir, 'a2.bin'))
  assert.equal(again.state, 'acknowledged')

  // The hosted cache is killed and restarted on its state directory: it still has the content.
  await hosted.kill('SIGKILL')
  const restarted = await startAgentProcess(hosted.stateDir, [...keyArgs, '--hosted-cache'])
  t.after(async () => await restarted.kill())
  assert.ok((await restarted.client.cache()).entries.some(e => e.manifestId === heldId), 'the hosted cache lost its content in the restart')

  // B has A and the hosted cache as peers, both holding the content: the hosted cache is asked first.
  const b = await startAgentProcess(join(dir, 'b'), [...keyArgs, '--hosted-cache-addr', await loopbackAddress(restarted), '--peer', await loopbackAddress(a)])
  t.after(async () => await b.kill())
  assert.equal(await waitConnected(b, 2), 2)
  const preferred = await fetchWith(b, url, join(dir, 'b.bin'))
  assert.equal(preferred.state, 'acknowledged', JSON.stringify(preferred.error))
  assert.equal(preferred.bytes.fromCache, size, JSON.stringify(preferred.bytes))
  assert.equal(preferred.bytes.fromPeers, 0)

  // A (and B) leave: C still gets the content from the hosted cache, not from the origin.
  await a.kill()
  await b.kill()
  const originBefore = await originContentBytes(origin.url)
  const c = await startAgentProcess(join(dir, 'c'), [...keyArgs, '--hosted-cache-addr', await loopbackAddress(restarted)])
  t.after(async () => await c.kill())
  assert.equal(await waitConnected(c, 1), 1)
  const second = await fetchWith(c, url, join(dir, 'c.bin'))
  assert.equal(second.state, 'acknowledged', JSON.stringify(second.error))
  assert.equal(await fileSha256(join(dir, 'c.bin')), sha256)
  const fromOrigin = await originContentBytes(origin.url) - originBefore
  t.diagnostic(`C: ${second.bytes.fromCache} bytes from the hosted cache, ${second.bytes.fromOrigin} (origin counted ${fromOrigin}) from the origin, of ${size}`)
  assert.ok(fromOrigin <= 0.01 * size, `the origin sent ${fromOrigin} of ${size}`)
  assert.ok(second.bytes.fromCache >= 0.99 * size, `only ${second.bytes.fromCache} of ${size} from the hosted cache`)
  assert.equal(second.bytes.fromPeers, 0)
  assert.deepEqual(second.files[0].hostedCache, { state: 'served' })
  assert.ok((second.bytes.byPeer ?? {})[(await restarted.client.status()).peer!.peerId] >= 0.99 * size)

  // A member without the content key learns nothing from the hosted cache, even with the discovery id.
  const manifest = await manifestOf(url)
  const realKey = Buffer.from(manifest.key!, 'base64')
  const member = await memberNode(t, dir, 'member', keyFile)
  const cacheAddress = multiaddr(await loopbackAddress(restarted))
  await member.libp2p.dial(cacheAddress)
  const cachePeer = peerIdFromString((await restarted.client.status()).peer!.peerId)
  const guessing = await ExchangeSession.open(member.libp2p, cachePeer, discoveryId(realKey, DISCOVERY_LABEL), generateSecret())
  await assert.rejects(guessing.have(), { code: 'ERR_PEER_UNKNOWN_CONTENT' })
  await assert.rejects(guessing.block(0), { code: 'ERR_PEER_UNKNOWN_CONTENT' })
  // With the key (as a member that got it from the origin), the same member is served.
  // A member that holds the key cannot make the cache hold other content under it.
  const other = { ...manifest, blocks: [...manifest.blocks].reverse() }
  assert.equal(await sendOffer(member.libp2p, cachePeer, { ...other, id: manifestId(other) }, 'other.bin', url), 'refused')
  const entitled = await ExchangeSession.open(member.libp2p, cachePeer, discoveryId(realKey, DISCOVERY_LABEL), realKey)
  assert.equal((await entitled.block(0))?.length, manifest.blockSize)
  await entitled.close()

  // An outsider without the swarm key cannot even talk to it.
  const outsider = await memberNode(t, dir, 'outsider', await swarmKeyFile(dir, 'other.key'))
  await assert.rejects(async () => {
    const stream = await outsider.libp2p.dialProtocol(cacheAddress, EXCHANGE_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    await stream.close()
  })
})

test('a member that offers content and serves corrupted blocks: nothing reaches the hosted cache\'s store or any agent, and the member is banned', async (t) => {
  const size = 8 * MiB
  const { dir, origin, sha256 } = await originWithFile(t, size)
  const url = `${origin.url}/f.bin`
  const keyFile = await swarmKeyFile(dir)
  const hosted = await startAgentProcess(join(dir, 'hosted'), ['--swarm-key', keyFile, '--hosted-cache'])
  t.after(async () => await hosted.kill())
  const cacheAddress = multiaddr(await loopbackAddress(hosted))
  const cachePeer = peerIdFromString((await hosted.client.status()).peer!.peerId)

  const manifest = await manifestOf(url)
  const key = Buffer.from(manifest.key!, 'base64')
  const id = discoveryId(key, DISCOVERY_LABEL)
  const liar = await memberNode(t, dir, 'liar', keyFile)
  await serveExchange(liar.libp2p, {
    lookup: (asked) => Buffer.compare(asked, id) === 0
      ? { manifest, key, has: () => true, read: async (i) => Buffer.alloc(Math.min(manifest.blockSize, manifest.size - i * manifest.blockSize), 0x42) }
      : undefined
  }, silentLogger)
  await liar.libp2p.dial(cacheAddress)

  // An honest agent, connected before the ban (all of them share 127.0.0.1 here: a new
  // peer id from a banned address is refused). An ordinary static peer, not configured
  // as a hosted cache: it recognises one by its announcement (identify), as with mDNS.
  const b = await startAgentProcess(join(dir, 'b'), ['--swarm-key', keyFile, '--peer', cacheAddress.toString()])
  t.after(async () => await b.kill())
  assert.equal(await waitConnected(b, 1), 1)

  // A manifest that is not the one its id names is refused outright.
  const forged = { ...manifest, blocks: [...manifest.blocks].reverse() }
  assert.equal(await sendOffer(liar.libp2p, cachePeer, forged, 'f.bin', url), 'refused')
  // The real manifest, with bad blocks behind it: accepted, pulled, every block refused.
  assert.equal(await sendOffer(liar.libp2p, cachePeer, manifest, 'f.bin', url), 'accepted')
  // A second offer of what is being pulled is a no-op.
  assert.equal(await sendOffer(liar.libp2p, cachePeer, manifest, 'f.bin', url), 'held')
  let bans: string[] = []
  for (let i = 0; i < 300 && !bans.includes(liar.libp2p.peerId.toString()); i++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    bans = (await hosted.client.peers()).bans.map(b => b.peerId)
  }
  assert.deepEqual(bans, [liar.libp2p.peerId.toString()])
  for (let i = 0; i < 300 && !/could not pull offered content/.test(hosted.stderr()); i++) await new Promise(resolve => setTimeout(resolve, 100))
  assert.match(hosted.stderr(), /could not pull offered content/)
  assert.deepEqual((await hosted.client.cache()).entries, [])

  // B gets the right file, none of it from the hosted cache.

  const done = await fetchWith(b, url, join(dir, 'b.bin'))
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.bytes.fromCache, 0)
  assert.equal(await fileSha256(join(dir, 'b.bin')), sha256)
  assert.deepEqual(done.files[0].hostedCache, { state: 'not-held' })
  // B asked it first (above: not-held) but offers only to configured hosted caches: an
  // offer hands over the content key, and any member could announce the protocol.
  assert.match(b.stderr(), /content not offered to hosted caches that only announced themselves/)
})

test('a configured hosted cache that is down: the job completes from the origin and says the hosted cache was unreachable', async (t) => {
  const size = 3 * MiB
  const { dir, origin, sha256 } = await originWithFile(t, size)
  const down = '/ip4/127.0.0.1/tcp/1'
  const a = await startAgentProcess(join(dir, 'a'), ['--hosted-cache-addr', down])
  t.after(async () => await a.kill())
  const done = await fetchWith(a, `${origin.url}/f.bin`, join(dir, 'a.bin'))
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.bytes.fromOrigin, size)
  assert.equal(await fileSha256(join(dir, 'a.bin')), sha256)
  assert.deepEqual(done.files[0].hostedCache, { state: 'unreachable', unreachable: [down] })
})

test('a hosted cache reads few offers at once and none larger than its bound', async (t) => {
  const dir = await tempDir()
  const keyFile = await swarmKeyFile(dir)
  const hosted = await startAgentProcess(join(dir, 'hosted'), ['--swarm-key', keyFile, '--hosted-cache'])
  t.after(async () => await hosted.kill())
  const cacheAddress = multiaddr(await loopbackAddress(hosted))
  const reply = async (stream: Stream): Promise<string> => {
    const framed = new FramedStreamReader(stream)
    return await framed.next()
  }
  // An offer frame beyond 4 KiB: the stream is ended, no reply.
  const big = await memberNode(t, dir, 'big', keyFile)
  const stream = await big.libp2p.dialProtocol(cacheAddress, HOSTED_CACHE_PROTOCOL)
  const body = Buffer.alloc(8192, 0x20)
  const head = Buffer.alloc(4)
  head.writeUInt32BE(body.length)
  stream.send(Buffer.concat([head, body]))
  assert.equal(await reply(stream), 'ended')
  // Members that open offer streams and send nothing hold at most 4 of them; more are told "busy".
  const idle: Stream[] = []
  for (const name of ['m1', 'm2', 'm3']) {
    const node = await memberNode(t, dir, name, keyFile)
    for (let i = 0; i < 2; i++) idle.push(await node.libp2p.dialProtocol(cacheAddress, HOSTED_CACHE_PROTOCOL))
  }
  const answers = await Promise.all(idle.map(async s => await Promise.race([reply(s), new Promise<string>(resolve => setTimeout(() => resolve('waiting'), 3000))])))
  assert.deepEqual(answers.filter(a => a === 'busy').length, 2, answers.join(' '))
  assert.deepEqual(answers.filter(a => a === 'waiting').length, 4, answers.join(' '))
  for (const s of idle) s.abort(new Error('done'))
})

/** Reads one length-prefixed JSON reply's status from a raw stream, or 'ended'. */
class FramedStreamReader {
  private readonly stream: Stream
  constructor (stream: Stream) { this.stream = stream }
  async next (): Promise<string> {
    let buffered = Buffer.alloc(0)
    return await new Promise<string>(resolve => {
      this.stream.addEventListener('message', (event) => {
        const data = event.data
        buffered = Buffer.concat([buffered, ...(data instanceof Uint8Array ? [data] : [...data].map(p => p.subarray()))])
        if (buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
          resolve((JSON.parse(buffered.subarray(4, 4 + buffered.readUInt32BE(0)).toString()) as { status: string }).status)
        }
      })
      this.stream.addEventListener('close', () => resolve('ended'))
      this.stream.addEventListener('remoteCloseWrite', () => resolve('ended'))
    })
  }
}

test('offers are decoded strictly and within bounds', () => {
  const good = { manifestId: 'bagaaierabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnop', key: Buffer.alloc(32, 1).toString('base64'), name: 'f.bin', url: 'http://o/f.bin' }
  const encode = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v))
  assert.deepEqual(decodeOffer(encode(good)), good)
  for (const bad of [
    { ...good, extra: 1 },
    { ...good, key: 'c2hvcnQ=' },
    { ...good, name: 'x'.repeat(257) },
    { ...good, name: '../../etc/passwd' },
    { ...good, url: 'http://o/' + 'x'.repeat(2048) },
    { ...good, manifestId: 'not a cid' },
    { ...good, name: 7 },
    [good]
  ]) assert.throws(() => decodeOffer(encode(bad)), { code: 'ERR_OFFER_INVALID' }, JSON.stringify(bad).slice(0, 80))
  assert.throws(() => decodeOffer(Buffer.from('{')), { code: 'ERR_OFFER_INVALID' })
})
