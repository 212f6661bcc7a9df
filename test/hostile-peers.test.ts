// A hostile member (it has the swarm key; in the last attack also the content key)
// against a real agent process: it opens many exchange streams, sends requests and
// never reads the answers, and pushes bytes nobody asked for (1 MiB block answers). The agent's memory is
// measured from outside (/proc/<pid>/status) while the attack runs, and the agent
// keeps answering its control API and an honest peer.
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import {
  blockDigest, decodeManifest, discoveryId, DISCOVERY_LABEL, encodeMessage, EXCHANGE_PROTOCOL, MANIFEST_MEDIA_TYPE, MessageType, readProof, silentLogger
} from '@canopy/core'
import type { PublishedManifest } from '@canopy/core'
import { ExchangeSession, loadOrCreatePeerKey, parseSwarmKey, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode } from '@canopy/agent/peers'
import { FINISHED, loopbackAddress, originWithFile, startAgentProcess, swarmKeyFile } from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

const MiB = 1024 * 1024
/**
 * The agent's resident memory may grow this much over its level before an attack,
 * at most, during it. The bounds it rests on (exchange.ts, DEFAULT_SERVE_LIMITS): 8
 * streams per peer, each holding at most a 4 MiB yamux window of requests and of
 * answers, 16 requests in flight per peer, 64 MiB of answers in all. Before them a
 * have flood took an agent from 255 MiB to 1.7 GiB in 11 s, and 32 streams of 8
 * block requests held ~285 MiB.
 */
const GROWTH_BOUND = 128 * MiB
/** How long each attack runs. */
const ATTACK_MS = 8000


async function rss (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024
}

/** Samples the agent's RSS every 50 ms until `done` settles; returns the highest. */
async function peakRssDuring (pid: number, done: Promise<unknown>): Promise<number> {
  let peak = await rss(pid)
  let finished = false
  void done.finally(() => { finished = true })
  while (!finished) {
    peak = Math.max(peak, await rss(pid).catch(() => 0))
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return Math.max(peak, await rss(pid))
}

async function member (t: TestContext, dir: string, keyFile: string): Promise<PeerNode> {
  const n = await startPeerNode({ privateKey: await loadOrCreatePeerKey(dir), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: parseSwarmKey(await readFile(keyFile, 'utf8')), mdns: false, logger: silentLogger })
  t.after(async () => await n.stop())
  return n
}

/**
 * Sends `frames` over and over on `stream` until `stop`, never reading: the stream
 * is paused, so this side grants the agent no window for its answers. Sends only
 * what the agent's window lets through (a peer that ignores windows breaks yamux
 * and loses its connection at once), as fast as it lets through.
 */
let sentBytes = 0

/** Waits for the stream's 'drain', its end or `stop`; kicks the stream after 20 ms (v3 sometimes misses a drain). */
async function drained (stream: Stream, stop: AbortSignal): Promise<void> {
  await new Promise<void>(resolve => {
    const done = (): void => {
      clearTimeout(kick)
      stream.removeEventListener('drain', done)
      stream.removeEventListener('close', done)
      stop.removeEventListener('abort', done)
      resolve()
    }
    // A hostile sender need not be polite: it pokes its own stream to send on.
    const kick = setTimeout(() => stream.dispatchEvent(new Event('drain')), 20)
    stream.addEventListener('drain', done)
    stream.addEventListener('close', done)
    stop.addEventListener('abort', done)
  })
}

/**
 * Sends `frames` over and over on `stream` until `stop`, never reading: the stream
 * is paused, so this side grants the agent no window for its answers. Sends only
 * what the agent's window lets through (a peer that ignores windows breaks yamux
 * and loses its connection at once), as fast as it lets through.
 */
async function flood (stream: Stream, frames: Uint8Array, stop: AbortSignal): Promise<void> {
  if (stream.status !== 'open') return
  stream.pause()
  while (!stop.aborted && stream.writeStatus === 'writable') {
    sentBytes += frames.length
    if (!stream.send(frames)) await drained(stream, stop)
  }
}

async function exchangeStreams (attacker: PeerNode, agent: AgentProcess, count: number): Promise<Stream[]> {
  const address = multiaddr(await loopbackAddress(agent))
  await attacker.libp2p.dial(address)
  const streams = await Promise.all(Array.from({ length: count }, async () => await attacker.libp2p.dialProtocol(address, EXCHANGE_PROTOCOL, { signal: AbortSignal.timeout(10_000) }).catch(() => undefined)))
  return streams.filter(s => s !== undefined)
}

/** An honest member (with the content key) gets block 0 from the agent, verified. */
async function honestFetch (honest: PeerNode, agent: AgentProcess, manifest: PublishedManifest): Promise<void> {
  const key = Buffer.from(manifest.key!, 'base64')
  const address = multiaddr(await loopbackAddress(agent))
  const connection = await honest.libp2p.dial(address)
  const session = await ExchangeSession.open(honest.libp2p, connection.remotePeer, discoveryId(key, DISCOVERY_LABEL), key, AbortSignal.timeout(20_000))
  try {
    const block = await session.block(0)
    assert.deepEqual(new Uint8Array(createHash('sha256').update(block!).digest()), blockDigest(manifest.blocks[0]))
  } finally {
    await session.close()
  }
}

test('a hostile member cannot grow an agent\'s memory beyond a bound; the agent keeps answering', { timeout: 180_000 }, async (t) => {
  const size = 24 * MiB
  const { dir, origin } = await originWithFile(t, size, 'f.bin', { blockSize: MiB })
  const keyFile = await swarmKeyFile(dir)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--swarm-key', keyFile])
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  assert.equal((await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })).state, 'acknowledged')
  const res = await request(`${origin.url}/f.bin`, { headers: { accept: MANIFEST_MEDIA_TYPE } })
  const manifest = decodeManifest(Buffer.from(await res.body.arrayBuffer()))
  const key = Buffer.from(manifest.key!, 'base64')
  const id = discoveryId(key, DISCOVERY_LABEL)
  const pid = agent.child.pid!
  const honest = await member(t, join(dir, 'honest'), keyFile)
  await honestFetch(honest, agent, manifest)

  const attacks: Array<{ name: string, run: (attacker: PeerNode) => Promise<void> }> = [
    {
      // No content key needed: requests for anything, answers never read. (One
      // stream: the agent's answers to the first requests of each stream cost the
      // attacker more than its requests cost the agent.)
      name: 'have requests, answers never read',
      run: async (attacker) => {
        const have = encodeMessage({ type: MessageType.HaveRequest, discoveryId: randomBytes(32), proof: randomBytes(32) })
        const [stream] = await exchangeStreams(attacker, agent, 1)
        await flood(stream, Buffer.concat(Array.from({ length: 1024 }, () => have)), AbortSignal.timeout(ATTACK_MS))
      }
    },
    {
      // With the content key: 32 streams, 8 block requests pipelined on each, never read.
      name: 'pipelined block requests with the content key on 32 streams, never read',
      run: async (attacker) => {
        const agentPeer = (await attacker.libp2p.dial(multiaddr(await loopbackAddress(agent)))).remotePeer
        const proof = readProof(key, attacker.libp2p.peerId.toMultihash().bytes, agentPeer.toMultihash().bytes)
        const streams = await exchangeStreams(attacker, agent, 32)
        for (const [s, stream] of streams.entries()) {
          if (stream.status !== 'open') continue // refused by the agent (its caps)
          stream.pause()
          for (let i = 0; i < 8; i++) {
            const request = encodeMessage({ type: MessageType.BlockRequest, discoveryId: id, proof, index: (s * 8 + i) % manifest.blocks.length })
            sentBytes += request.length
            stream.send(request)
          }
        }
        await new Promise(resolve => setTimeout(resolve, ATTACK_MS))
      }
    },
    {
      // No content key needed, and no frame the agent could call a protocol error:
      // streams opened on 8 lanes as fast as the agent takes them, each filled with
      // its first window (256 KiB) of have requests and reset at once. Each new
      // stream's window arrives before anything can refuse it; before the cap on
      // stream opens per second the agent decrypted and dropped them by the hundred
      // per second.
      name: 'streams opened and reset at once, each with a window of have requests',
      run: async (attacker) => {
        const have = encodeMessage({ type: MessageType.HaveRequest, discoveryId: randomBytes(32), proof: randomBytes(32) })
        const window = Buffer.concat(Array.from({ length: Math.floor(256 * 1024 / have.length) }, () => have))
        const stop = AbortSignal.timeout(ATTACK_MS)
        await Promise.all(Array.from({ length: 8 }, async () => {
          while (!stop.aborted) {
            const [stream] = await exchangeStreams(attacker, agent, 1).catch(() => [])
            if (stream === undefined || stream.status !== 'open') {
              await new Promise(resolve => setTimeout(resolve, 50))
              continue
            }
            sentBytes += window.length
            if (!stream.send(window)) await drained(stream, stop)
            stream.abort(new Error('next stream'))
          }
        }))
      }
    },
    {
      // No content key needed: answers nobody asked for, 1 MiB blocks, pushed on 8
      // streams at once as fast as the agent's windows let them through; a stream the
      // agent resets is replaced by a new one. Before the bounds, 2.1 GiB in 5 s; with
      // the bounds but no strikes, the agent dropped each new stream's first window
      // (~450 streams/s) and grew +185..+335 MiB. It ends with the attacker banned.
      name: 'unsolicited 1 MiB block answers pushed on 8 streams',
      run: async (attacker) => {
        const answer = encodeMessage({ type: MessageType.BlockResponse, status: 0, index: 0, data: randomBytes(MiB) })
        const stop = AbortSignal.timeout(ATTACK_MS)
        await Promise.all(Array.from({ length: 8 }, async () => {
          while (!stop.aborted) {
            const [stream] = await exchangeStreams(attacker, agent, 1).catch(() => [])
            if (stream === undefined) {
              await new Promise(resolve => setTimeout(resolve, 50))
              continue
            }
            await flood(stream, answer, stop)
            stream.abort(new Error('next stream'))
          }
        }))
      }
    }
  ]
  // Every attacker is connected before the first attack: an agent bans new peer ids
  // from a banned peer's address, and all of them share 127.0.0.1; each is judged by
  // its own strikes.
  const attackers: PeerNode[] = []
  for (const n of attacks.keys()) {
    const attacker = await member(t, join(dir, `attacker-${n}`), keyFile)
    await attacker.libp2p.dial(multiaddr(await loopbackAddress(agent)))
    attackers.push(attacker)
  }
  for (const [n, { name, run }] of attacks.entries()) {
    const attacker = attackers[n]
    const before = await rss(pid)
    const running = run(attacker)
    // The agent answers while under attack: its API, and an honest peer.
    const answering = (async () => {
      await new Promise(resolve => setTimeout(resolve, ATTACK_MS / 2))
      await agent.client.status()
      await honestFetch(honest, agent, manifest)
    })()
    const peak = await peakRssDuring(pid, Promise.all([running, answering])).catch((err: unknown) => {
      throw new Error(`the agent died under "${name}": ${String(err)}\n${agent.stderr().slice(-3000)}`)
    })
    await running
    await answering
    t.diagnostic(`${name}: ${Math.round(sentBytes / MiB)} MiB sent`)
    sentBytes = 0
    t.diagnostic(`${name}: RSS ${Math.round(before / MiB)} MiB before, peak ${Math.round(peak / MiB)} MiB`)
    assert.ok(peak - before < GROWTH_BOUND, `${name}: the agent grew from ${Math.round(before / MiB)} to ${Math.round(peak / MiB)} MiB (bound: +${GROWTH_BOUND / MiB} MiB)`)
    if (!name.startsWith('have') && !name.startsWith('pipelined')) {
      // Frames that are not requests, and streams opened too fast, are strikes.
      const { bans } = await agent.client.peers()
      assert.ok(bans.some(b => b.peerId === attacker.libp2p.peerId.toString()), `the attacker of "${name}" was not banned: ${JSON.stringify(bans)}`)
    }
    await attacker.stop()
  }
  await honestFetch(honest, agent, manifest)
  assert.equal((await agent.client.status()).peer !== undefined, true)
})
