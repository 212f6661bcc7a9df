// A hostile member (it has the swarm key; in the last attack also the content key)
// against a real agent process: it opens many exchange streams, sends requests and
// never reads the answers, and pushes bytes nobody asked for. The agent's memory is
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
 * answers, 16 requests in flight per peer, 64 MiB of answers in all. Before them the
 * same attacks took an agent from 255 MiB to 1.7 GiB in 11 s.
 */
const GROWTH_BOUND = 160 * MiB
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
async function flood (stream: Stream, frames: Uint8Array, stop: AbortSignal): Promise<void> {
  stream.pause()
  while (!stop.aborted && stream.writeStatus === 'writable') {
    if (stream.send(frames)) continue
    await new Promise<void>(resolve => {
      const done = (): void => { stream.removeEventListener('drain', done); stream.removeEventListener('close', done); stop.removeEventListener('abort', done); resolve() }
      stream.addEventListener('drain', done)
      stream.addEventListener('close', done)
      stop.addEventListener('abort', done)
    })
    await new Promise(resolve => setImmediate(resolve))
  }
}

/** Opens up to `count` exchange streams to the agent (those it refuses are skipped) and floods each with `frames`. */
async function attack (attacker: PeerNode, agent: AgentProcess, count: number, frames: (i: number) => Uint8Array): Promise<void> {
  const address = multiaddr(await loopbackAddress(agent))
  await attacker.libp2p.dial(address)
  const stop = AbortSignal.timeout(ATTACK_MS)
  const floods: Array<Promise<void>> = []
  for (let i = 0; i < count; i++) {
    const stream = await attacker.libp2p.dialProtocol(address, EXCHANGE_PROTOCOL, { signal: AbortSignal.timeout(5000) }).catch(() => undefined)
    if (stream !== undefined) floods.push(flood(stream, frames(i), stop).catch(() => {}))
  }
  await Promise.all(floods)
  if (!stop.aborted) await new Promise(resolve => stop.addEventListener('abort', resolve, { once: true }))
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
  agent.child.once('exit', (code, signal) => process.stderr.write(`agent exited: ${code} ${signal}\n${agent.stderr().slice(-3000)}\n`))
  const honest = await member(t, join(dir, 'honest'), keyFile)
  await honestFetch(honest, agent, manifest)

  const attacks: Array<{ name: string, run: (attacker: PeerNode) => Promise<void> }> = [
    {
      // No content key needed: requests for anything, answers never read.
      name: 'have requests, answers never read',
      run: async (attacker) => {
        const have = encodeMessage({ type: MessageType.HaveRequest, discoveryId: randomBytes(32), proof: randomBytes(32) })
        await attack(attacker, agent, 32, () => Buffer.concat(Array.from({ length: 1024 }, () => have)))
      }
    },
    {
      // Bytes nobody asked for, on streams the agent is serving.
      name: 'unsolicited answers pushed',
      run: async (attacker) => {
        const answer = encodeMessage({ type: MessageType.BlockResponse, status: 0, index: 0, data: randomBytes(MiB) })
        const have = encodeMessage({ type: MessageType.HaveRequest, discoveryId: id, proof: randomBytes(32) })
        // Eight requests fill the agent's pipeline first; then the answer's bytes.
        await attack(attacker, agent, 32, () => Buffer.concat([...Array.from({ length: 8 }, () => have), answer]))
      }
    },
    {
      // With the content key: block requests, pipelined, on many streams, never read.
      name: 'pipelined block requests with the content key, never read',
      run: async (attacker) => {
        const agentPeer = (await attacker.libp2p.dial(multiaddr(await loopbackAddress(agent)))).remotePeer
        const proof = readProof(key, attacker.libp2p.peerId.toMultihash().bytes, agentPeer.toMultihash().bytes)
        await attack(attacker, agent, 32, (s) => Buffer.concat(Array.from({ length: 8 }, (_, i) => encodeMessage({ type: MessageType.BlockRequest, discoveryId: id, proof, index: (s * 8 + i) % manifest.blocks.length }))))
      }
    }
  ]
  for (const [n, { name, run }] of attacks.entries()) {
    const attacker = await member(t, join(dir, `attacker-${n}`), keyFile)
    const before = await rss(pid)
    const running = run(attacker)
    // The agent answers while under attack: its API, and an honest peer.
    const answering = (async () => {
      await new Promise(resolve => setTimeout(resolve, ATTACK_MS / 2))
      await agent.client.status()
      await honestFetch(honest, agent, manifest)
    })()
    const peak = await peakRssDuring(pid, Promise.all([running, answering]))
    await running
    await answering
    t.diagnostic(`${name}: RSS ${Math.round(before / MiB)} MiB before, peak ${Math.round(peak / MiB)} MiB`)
    assert.ok(peak - before < GROWTH_BOUND, `${name}: the agent grew from ${Math.round(before / MiB)} to ${Math.round(peak / MiB)} MiB (bound: +${GROWTH_BOUND / MiB} MiB)`)
    await attacker.stop()
  }
  await honestFetch(honest, agent, manifest)
  assert.equal((await agent.client.status()).peer !== undefined, true)
})
