// The block exchange between two real libp2p nodes on 127.0.0.1 (mDNS off).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { blockDigest, blockSpan, contentKey, createManifest, discoveryId, DISCOVERY_LABEL, encodeMessage, EXCHANGE_PROTOCOL, MessageType, readProof, silentLogger } from '@canopy/core'
import type { PublishedManifest } from '@canopy/core'
import { ExchangeSession, generateSwarmKey, loadOrCreatePeerKey, parseSwarmKey, serveExchange, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode, SharedContent } from '@canopy/agent/peers'
import type { Stream } from '@libp2p/interface'
import { RateCounter } from '../src/peers/serve-limits.ts'

const BS = 64 * 1024
const swarmKey = parseSwarmKey(generateSwarmKey())

async function node (t: { after: (fn: () => Promise<void>) => void }): Promise<PeerNode> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-exchange-'))
  const n = await startPeerNode({ privateKey: await loadOrCreatePeerKey(dir), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey, mdns: false, logger: silentLogger })
  t.after(async () => {
    await n.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return n
}

/** Content held in memory, all blocks but the ones listed. */
async function content (missing: number[] = []): Promise<{ shared: SharedContent, bytes: Buffer, manifest: PublishedManifest, key: Buffer, id: Buffer }> {
  const bytes = randomBytes(5 * BS + 1000)
  const manifest = await createManifest([bytes], { blockSize: BS })
  const key = contentKey(Buffer.alloc(32, 1), manifest.id)
  const shared: SharedContent = {
    manifest,
    key,
    has: (i) => !missing.includes(i),
    read: async (i) => {
      const { offset, length } = blockSpan(i, manifest.size, manifest.blockSize)
      return bytes.subarray(offset, offset + length)
    }
  }
  return { shared, bytes, manifest, key, id: discoveryId(key, DISCOVERY_LABEL) }
}

test('a member that holds the content key gets the bitfield and verified blocks, pipelined', async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content([2])
  await serveExchange(server.libp2p, { lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined }, silentLogger)
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const session = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  t.after(async () => await session.close())
  const bits = await session.have()
  assert.deepEqual([...bits.have], [0b11011100])
  assert.deepEqual([...bits.fetching], [0])
  const blocks = await Promise.all([0, 1, 2, 3, 4, 5].map(async i => await session.block(i)))
  assert.equal(blocks[2], undefined, 'the missing block is reported missing')
  for (const i of [0, 1, 3, 4, 5]) {
    const digest = createHash('sha256').update(blocks[i]!).digest()
    assert.deepEqual(new Uint8Array(digest), blockDigest(c.manifest.blocks[i]))
  }
})

/** Sends raw frames on a new exchange stream, closes its writing end, and returns every byte answered. */
async function rawExchange (client: PeerNode, server: PeerNode, ...frames: Uint8Array[]): Promise<Buffer> {
  const stream = await client.libp2p.dialProtocol(server.libp2p.peerId, EXCHANGE_PROTOCOL)
  for (const frame of frames) stream.send(frame)
  await stream.close()
  const chunks: Uint8Array[] = []
  for await (const chunk of stream) chunks.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
  return Buffer.concat(chunks)
}

test('a member without the content key gets nothing usable, and cannot tell whether the agent holds the content', async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  await serveExchange(server.libp2p, { lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined }, silentLogger)
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const wrongKey = randomBytes(32)
  const session = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, wrongKey)
  await assert.rejects(session.have(), { code: 'ERR_PEER_UNKNOWN_CONTENT' })
  const again = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, wrongKey)
  await assert.rejects(again.block(0), { code: 'ERR_PEER_UNKNOWN_CONTENT' })
  const unknown = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, randomBytes(32), c.key)
  await assert.rejects(unknown.have(), { code: 'ERR_PEER_UNKNOWN_CONTENT' })
  // The oracle: the same bytes answer a wrong proof for held content and any proof
  // for content not held (they said "Denied" and "Unknown").
  const proof = readProof(wrongKey, client.libp2p.peerId.toMultihash().bytes, server.libp2p.peerId.toMultihash().bytes)
  const ask = (id: Uint8Array): Uint8Array[] => [
    encodeMessage({ type: MessageType.HaveRequest, discoveryId: id, proof }),
    encodeMessage({ type: MessageType.BlockRequest, discoveryId: id, proof, index: 1 })
  ]
  const held = await rawExchange(client, server, ...ask(c.id))
  const notHeld = await rawExchange(client, server, ...ask(randomBytes(32)))
  assert.ok(held.length > 0)
  assert.deepEqual(held, notHeld)
  // With the key, the same agent does answer.
  const member = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  assert.equal((await member.have()).have.length, 1)
  await member.close()
})

test('an empty frame is a protocol error that resets the stream, on either side', async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  await serveExchange(server.libp2p, { lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined }, silentLogger)
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  // To the server: reset, nothing answered (it threw a TypeError from the framing).
  await assert.rejects(rawExchange(client, server, Buffer.alloc(4)), { name: 'StreamResetError' })
  // To a session: a clean ERR_PROTOCOL error for the request, not a TypeError.
  await client.libp2p.handle('/test/empty-frame/1.0.0', (stream) => { stream.send(Buffer.alloc(4)) })
  const stream = await server.libp2p.dialProtocol(client.libp2p.peerId, '/test/empty-frame/1.0.0')
  const session = new (ExchangeSession as unknown as new (...args: unknown[]) => ExchangeSession)(stream, client.libp2p.peerId, c.id, new Uint8Array(32))
  await assert.rejects(session.have(), { code: 'ERR_PROTOCOL', message: /empty frame/ })
  // The server still serves well-formed requests.
  const member = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  assert.equal((await member.have()).have.length, 1)
  await member.close()
})

test('a malformed or oversized request closes that stream and is a strike against the peer; the server keeps serving others', async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  const strikes: string[] = []
  await serveExchange(server.libp2p, {
    lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined,
    penalize: (peer) => strikes.push(peer.toString())
  }, silentLogger)
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  for (const garbage of [
    Buffer.from([0, 0, 0, 2, 99, 1]), // unknown type
    Buffer.from([0x7f, 0xff, 0xff, 0xff]), // a 2 GiB frame announced
    encodeMessage({ type: MessageType.BlockResponse, status: 0, index: 0, data: new Uint8Array(10) }) // a response as a request
  ]) {
    const stream = await client.libp2p.dialProtocol(server.libp2p.peerId, EXCHANGE_PROTOCOL)
    stream.send(garbage)
    const chunks: Uint8Array[] = []
    let reset = false
    try {
      for await (const chunk of stream) chunks.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
    } catch (err) {
      reset = (err as Error).name === 'StreamResetError'
    }
    assert.equal(reset, true, 'the server resets the stream')
    assert.equal(Buffer.concat(chunks).length, 0, 'nothing is answered to a malformed request')
  }
  const session = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  assert.equal((await session.have()).have.length, 1)
  await session.close()
  // One strike per bad frame (sharing.ts bans at three); none for the good session.
  assert.deepEqual(strikes, Array(3).fill(client.libp2p.peerId.toString()))
})

test('stream opens are counted per peer in one-second windows; stale windows are swept', () => {
  const opens = new RateCounter(2)
  assert.deepEqual([0, 10, 999].map(now => opens.hit('a', now)), [1, 2, 3])
  assert.equal(opens.hit('a', 1000), 1, 'a new second starts a new count')
  assert.equal(opens.hit('b', 1001), 1)
  // A third key finds the map at its sweep size: a's and b's windows are not over yet.
  assert.equal(opens.hit('c', 1500), 1)
  assert.equal((opens as unknown as { windows: Map<string, unknown> }).windows.size, 3)
  // At 2600 every window is over: the next new key sweeps them all.
  assert.equal(opens.hit('d', 2600), 1)
  assert.deepEqual([...(opens as unknown as { windows: Map<string, unknown> }).windows.keys()], ['d'])
})

/** Resolves when the stream closes (reset or not), with its final status. */
async function closed (stream: Stream): Promise<string> {
  if (stream.status !== 'open') return stream.status
  return await new Promise(resolve => stream.addEventListener('close', () => resolve(stream.status), { once: true }))
}

test('a peer that never reads its answers has its stream reset (write deadline); others are still served', { timeout: 60_000 }, async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  await serveExchange(server.libp2p, { lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined }, silentLogger, { writeTimeoutMs: 500 })
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const stream = await client.libp2p.dialProtocol(server.libp2p.peerId, EXCHANGE_PROTOCOL)
  stream.pause() // never read: the server's window for answers runs out
  const proof = readProof(c.key, client.libp2p.peerId.toMultihash().bytes, server.libp2p.peerId.toMultihash().bytes)
  for (let i = 0; i < 8; i++) stream.send(encodeMessage({ type: MessageType.BlockRequest, discoveryId: c.id, proof, index: i % 5 }))
  assert.equal(await closed(stream), 'reset')
  const session = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  assert.equal((await session.have()).have.length, 1)
  await session.close()
})

test('a peer that trickles a request byte by byte has its stream closed', { timeout: 60_000 }, async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  await serveExchange(server.libp2p, { lookup: () => undefined }, silentLogger, { requestTimeoutMs: 1000 })
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const stream = await client.libp2p.dialProtocol(server.libp2p.peerId, EXCHANGE_PROTOCOL)
  const request = encodeMessage({ type: MessageType.HaveRequest, discoveryId: c.id, proof: new Uint8Array(32) })
  const end = closed(stream)
  let sent = 0
  // One byte every 100 ms: never idle long, but the request would take 6.9 s.
  while (stream.status === 'open' && sent < request.length) {
    stream.send(request.subarray(sent, ++sent))
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.equal(await end, 'reset')
  assert.ok(sent < request.length, 'the server waited for the whole request')
})

test('streams beyond the per-peer cap are refused; answers under a tiny budget still all arrive, in order', { timeout: 60_000 }, async (t) => {
  const [server, client] = [await node(t), await node(t)]
  const c = await content()
  // A budget of one byte and one request in flight per peer: every answer waits for the one before.
  await serveExchange(server.libp2p, { lookup: (id) => Buffer.compare(id, c.id) === 0 ? c.shared : undefined }, silentLogger, { streamsPerPeer: 2, requestsPerPeer: 1, budgetBytes: 1 })
  await client.libp2p.dial(server.libp2p.getMultiaddrs()[0])
  const sessions = await Promise.all([0, 1].map(async () => await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)))
  const blocks = await Promise.all(sessions.flatMap(s => [0, 1, 3, 4, 5].map(async i => await s.block(i))))
  for (const [n, block] of blocks.entries()) {
    const i = [0, 1, 3, 4, 5][n % 5]
    assert.deepEqual(new Uint8Array(createHash('sha256').update(block!).digest()), blockDigest(c.manifest.blocks[i]))
  }
  // A third stream at once: refused (reset before an answer).
  const third = await ExchangeSession.open(client.libp2p, server.libp2p.peerId, c.id, c.key)
  await assert.rejects(third.have())
  for (const s of sessions) await s.close()
})

test('a peer that pushes answers nobody asked for fills at most a bounded buffer of the session, then is held by yamux', { timeout: 60_000 }, async (t) => {
  const [hostile, client] = [await node(t), await node(t)]
  const c = await content()
  const answer = encodeMessage({ type: MessageType.BlockResponse, status: 0, index: 0, data: randomBytes(1024 * 1024) })
  let pushed = 0
  const stop = AbortSignal.timeout(3000)
  await hostile.libp2p.handle(EXCHANGE_PROTOCOL, (stream) => {
    void (async () => {
      // A true answer to the have request, then a block after block, unasked.
      stream.send(encodeMessage({ type: MessageType.HaveResponse, status: 0, blockCount: 6, bitfield: new Uint8Array(1), fetching: new Uint8Array(1) }))
      while (!stop.aborted && stream.writeStatus === 'writable') {
        pushed += answer.length
        if (!stream.send(answer)) {
          await new Promise<void>(resolve => {
            stream.addEventListener('drain', () => resolve(), { once: true })
            stop.addEventListener('abort', () => resolve(), { once: true })
          })
        }
      }
    })()
  })
  await client.libp2p.dial(hostile.libp2p.getMultiaddrs()[0])
  const session = await ExchangeSession.open(client.libp2p, hostile.libp2p.peerId, c.id, c.key)
  t.after(async () => await session.close())
  await session.have()
  await new Promise(resolve => stop.addEventListener('abort', resolve, { once: true }))
  // Bytes received and not read: the framing's buffer and the stream's own.
  const { framed } = session as unknown as { framed: { buffered: number, stream: Stream } }
  const held = framed.buffered + framed.stream.readBufferLength
  const bound = 8 * 1024 * 1024 + answer.length + 4 * 1024 * 1024 + 64 * 1024
  t.diagnostic(`pushed ${Math.round(pushed / 2 ** 20)} MiB, the session holds ${Math.round(held / 2 ** 20)} MiB`)
  assert.ok(held <= bound, `the session holds ${held} bytes (bound ${bound})`)
})
