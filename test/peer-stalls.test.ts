// A hostile member of the swarm that stalls downloads instead of corrupting them
// (issue 13, item 2), against a real agent process: one that answers a byte at a
// time, and one that claims every block and has none. The download goes to the
// origin; the liar is penalized until it is banned.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { decodeManifest, decodeMessage, encodeMessage, EXCHANGE_PROTOCOL, ExchangeStatus, MANIFEST_MEDIA_TYPE, MessageType, silentLogger } from '@canopy/core'
import type { ExchangeMessage } from '@canopy/core'
import { loadOrCreatePeerKey, parseSwarmKey, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode } from '@canopy/agent/peers'
import { FINISHED, fileSha256, loopbackAddress, originWithFile, randomFile, startAgentProcess, swarmKeyFile, waitConnected } from './helpers.ts'

const MiB = 1024 * 1024

async function member (t: TestContext, dir: string, keyFile: string): Promise<PeerNode> {
  const n = await startPeerNode({ privateKey: await loadOrCreatePeerKey(dir), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: parseSwarmKey(await readFile(keyFile, 'utf8')), mdns: false, logger: silentLogger })
  t.after(async () => await n.stop())
  return n
}

/** The requests arriving on an exchange stream, decoded (a test's reader: no bounds needed). */
async function * requests (stream: Stream): AsyncGenerator<ExchangeMessage> {
  let buffered = Buffer.alloc(0)
  for await (const chunk of stream) {
    buffered = Buffer.concat([buffered, chunk.subarray()])
    while (buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
      const length = buffered.readUInt32BE(0)
      yield decodeMessage(buffered.subarray(4, 4 + length))
      buffered = buffered.subarray(4 + length)
    }
  }
}

async function blockCountOf (url: string): Promise<number> {
  const res = await request(url, { headers: { accept: MANIFEST_MEDIA_TYPE } })
  return decodeManifest(Buffer.from(await res.body.arrayBuffer())).blocks.length
}

test('a member that answers a byte at a time does not hold a download: it comes from the origin', { timeout: 120_000 }, async (t) => {
  const size = 16 * MiB
  const { dir, origin, sha256 } = await originWithFile(t, size, 'f.bin', { blockSize: MiB })
  const keyFile = await swarmKeyFile(dir)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--swarm-key', keyFile])
  t.after(async () => await agent.kill())
  const hostile = await member(t, join(dir, 'hostile'), keyFile)
  const stop = new AbortController()
  t.after(() => stop.abort())
  await hostile.libp2p.handle(EXCHANGE_PROTOCOL, (stream) => {
    void (async () => {
      // The head of a 64 KiB answer, then one byte a second: before the fix every
      // byte reset a 30 s idle timeout, and the origin side waited for this answer
      // (the test's timeout ended the wait).
      stream.send(Buffer.from([0, 1, 0, 0]))
      while (!stop.signal.aborted && stream.writeStatus === 'writable') {
        await new Promise(resolve => setTimeout(resolve, 1000))
        stream.send(Buffer.from([MessageType.HaveResponse]))
      }
    })().catch(() => {})
  })
  await hostile.libp2p.dial(multiaddr(await loopbackAddress(agent)))
  await waitConnected(agent, 1)
  const dest = join(dir, 'out.bin')
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: dest }], autoComplete: true })
  const done = await agent.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.bytes.fromOrigin, size)
  assert.equal(await fileSha256(dest), sha256)
})

test('a member that claims every block and has none is penalized, then banned; downloads come from the origin', { timeout: 180_000 }, async (t) => {
  const size = 8 * MiB
  const { dir, origin } = await originWithFile(t, size, 'f0.bin', { blockSize: MiB })
  for (const n of [1, 2]) await randomFile(join(dir, 'root', `f${n}.bin`), size)
  const keyFile = await swarmKeyFile(dir)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--swarm-key', keyFile])
  t.after(async () => await agent.kill())
  const hostile = await member(t, join(dir, 'liar'), keyFile)
  const blocks = await blockCountOf(`${origin.url}/f0.bin`)
  let missingAnswers = 0
  await hostile.libp2p.handle(EXCHANGE_PROTOCOL, (stream) => {
    void (async () => {
      for await (const req of requests(stream)) {
        if (req.type === MessageType.HaveRequest) {
          const all = new Uint8Array(Math.ceil(blocks / 8)).fill(0xff)
          stream.send(encodeMessage({ type: MessageType.HaveResponse, status: ExchangeStatus.Ok, blockCount: blocks, bitfield: all, fetching: new Uint8Array(all.length) }))
        } else if (req.type === MessageType.BlockRequest) {
          missingAnswers++
          stream.send(encodeMessage({ type: MessageType.BlockResponse, status: ExchangeStatus.Missing, index: req.index, data: new Uint8Array(0) }))
        }
      }
    })().catch(() => {})
  })
  const liar = hostile.libp2p.peerId.toString()
  const address = multiaddr(await loopbackAddress(agent))
  for (const n of [0, 1, 2]) {
    // The liar is connected for each download (a ban hangs up on it, and it is then refused).
    await hostile.libp2p.dial(address).catch(() => {})
    if ((await agent.client.peers()).bans.some(b => b.peerId === liar)) break
    const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f${n}.bin`, path: join(dir, `out${n}.bin`) }], autoComplete: true })
    const done = await agent.client.waitForJob(job.id, { intervalMs: 100, until: FINISHED })
    assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
    assert.equal(done.bytes.fromOrigin, size)
  }
  assert.ok(missingAnswers > 0, 'the liar was asked')
  const { bans } = await agent.client.peers()
  assert.ok(bans.some(b => b.peerId === liar), `the liar is banned: ${JSON.stringify(bans)}; it answered "Missing" ${missingAnswers} times`)
  assert.match(agent.stderr(), /peer penalized.*claimed 4 blocks it did not have/)
})
