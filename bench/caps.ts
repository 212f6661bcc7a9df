// Caps hold: one `low` job on loopback (an unshaped link, hundreds of MiB/s) under a
// policy cap of BENCH_CAP (default 1MiB/s), measured over BENCH_SECONDS (default 20)
// after a 3 s start. Prints one JSON document: the cap, the rate measured (verified
// bytes of the job over the window, so up to one request of slack), the ratio, and
// whether it is within 5%. Also the same with a per-priority cap inside work hours
// that are always on, to exercise the schedule path. Then peer serving: agent A holds
// the file and serves it under a policy cap of `peerServing: BENCH_CAP`; agent B (its
// peer on loopback) downloads it from an origin held to 256 KiB/s, so that it asks A
// for all it can; the rate is A's bytes served to peers over the same window.
//   npm run bench:caps
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseSize, silentLogger } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import type { CanopyAgent as Agent } from '@canopy/agent'
import { startOrigin } from '@canopy/origin'

const CAP = parseSize(process.env.BENCH_CAP ?? '1MiB')
const SECONDS = Number(process.env.BENCH_SECONDS ?? 20)
const START_S = 3

const dir = await mkdtemp(join(tmpdir(), 'canopy-bench-caps-'))
try {
  await mkdir(join(dir, 'root'))
  const size = Math.ceil(CAP * (SECONDS + START_S + 10) / (1024 * 1024)) * 1024 * 1024
  await writeFile(join(dir, 'root', 'f.bin'), randomBytes(size))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin'), logger: silentLogger })
  await origin.ready
  const results = []
  for (const [name, policy] of [
    ['low cap', { low: CAP }],
    ['work-hours cap', { workHours: { days: 'sun-sat', from: '00:00', to: '24:00', background: CAP } }]
  ] as const) {
    const agent = await startAgent({ stateDir: join(dir, `agent-${results.length}`), bandwidthPolicy: policy })
    try {
      const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, `out-${results.length}.bin`) }], priority: 'low' })
      await new Promise(resolve => setTimeout(resolve, START_S * 1000))
      const a = { t: performance.now(), bytes: agent.getJob(job.id).bytes.transferred }
      await new Promise(resolve => setTimeout(resolve, SECONDS * 1000))
      const view = agent.getJob(job.id)
      const b = { t: performance.now(), bytes: view.bytes.transferred }
      const rate = (b.bytes - a.bytes) * 1000 / (b.t - a.t)
      results.push({ name, policy, capBytesPerSecond: CAP, measuredBytesPerSecond: Math.round(rate), ratio: Math.round(rate / CAP * 1000) / 1000, within5pct: Math.abs(rate / CAP - 1) <= 0.05, reason: view.reason })
    } finally {
      await agent.stop()
    }
  }
  await origin.close()
  results.push(await peerServing(dir))
  process.stdout.write(JSON.stringify({ bench: 'caps', seconds: SECONDS, node: process.version, results }, null, 2) + '\n')
} finally {
  await rm(dir, { recursive: true, force: true })
}

/** A serves B at most CAP: bytes A sent to peers over SECONDS, after START_S. */
async function peerServing (dir: string): Promise<Record<string, unknown>> {
  const ORIGIN_RATE = 256 * 1024
  const root = join(dir, 'peer-root')
  await mkdir(root)
  const size = Math.ceil((CAP + ORIGIN_RATE) * (SECONDS + START_S + 10) / (1024 * 1024)) * 1024 * 1024
  await writeFile(join(root, 'g.bin'), randomBytes(size))
  // Small blocks: the window's error is one block.
  const origin = await startOrigin({ root, stateDir: join(dir, 'peer-origin'), blockSize: 256 * 1024, logger: silentLogger })
  await origin.ready
  const swarmKey = randomBytes(32)
  const p2p = { listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, swarmKey }
  const agents: Agent[] = []
  try {
    const a = await startAgent({ stateDir: join(dir, 'peer-a'), p2p })
    agents.push(a)
    const done = async (agent: Agent, id: string): Promise<JobView> => {
      for (;;) {
        const view = agent.getJob(id)
        if (view.state === 'transferred' || view.state === 'acknowledged' || view.state === 'error') return view
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
    const first = await a.createJob({ files: [{ url: `${origin.url}/g.bin`, path: join(dir, 'peer-a.bin') }], autoComplete: true })
    await done(a, first.id)
    // The origin slows down only now (its state directory, so its secret and the
    // content key, are the same): A got the file at loopback speed.
    await origin.close()
    const slow = await startOrigin({ root, stateDir: join(dir, 'peer-origin'), blockSize: 256 * 1024, rateLimit: ORIGIN_RATE, logger: silentLogger })
    await slow.ready
    a.setPolicy({ peerServing: CAP })
    const address = a.status().peer!.addresses.find(ma => ma.startsWith('/ip4/127.0.0.1/'))!
    const b = await startAgent({ stateDir: join(dir, 'peer-b'), p2p: { ...p2p, peers: [address] } })
    agents.push(b)
    while ((b.status().peer?.connected ?? 0) < 1) await new Promise(resolve => setTimeout(resolve, 100))
    const served = (): number => a.peers().peers.reduce((sum, p) => sum + p.bytesToPeer, 0)
    const job = await b.createJob({ files: [{ url: `${slow.url}/g.bin`, path: join(dir, 'peer-b.bin') }], priority: 'low' })
    await new Promise(resolve => setTimeout(resolve, START_S * 1000))
    const start = { t: performance.now(), bytes: served() }
    await new Promise(resolve => setTimeout(resolve, SECONDS * 1000))
    const end = { t: performance.now(), bytes: served() }
    const view = b.getJob(job.id)
    await slow.close()
    const rate = (end.bytes - start.bytes) * 1000 / (end.t - start.t)
    return {
      name: 'peer serving cap',
      policy: { peerServing: CAP },
      capBytesPerSecond: CAP,
      measuredBytesPerSecond: Math.round(rate),
      ratio: Math.round(rate / CAP * 1000) / 1000,
      within5pct: Math.abs(rate / CAP - 1) <= 0.05,
      requester: { state: view.state, fromPeers: view.bytes.fromPeers, fromOrigin: view.bytes.fromOrigin, originBytesPerSecond: ORIGIN_RATE }
    }
  } finally {
    for (const agent of agents) await agent.stop()
  }
}
