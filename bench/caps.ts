// Caps hold: one `low` job on loopback (an unshaped link, hundreds of MiB/s) under a
// policy cap of BENCH_CAP (default 1MiB/s), measured over BENCH_SECONDS (default 20)
// after a 3 s start. Prints one JSON document: the cap, the rate measured (verified
// bytes of the job over the window, so up to one request of slack), the ratio, and
// whether it is within 5%. Also the same with a per-priority cap inside work hours
// that are always on, to exercise the schedule path.
//   npm run bench:caps
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseSize, silentLogger } from '@canopy/core'
import { startAgent } from '@canopy/agent'
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
  process.stdout.write(JSON.stringify({ bench: 'caps', seconds: SECONDS, node: process.version, results }, null, 2) + '\n')
} finally {
  await rm(dir, { recursive: true, force: true })
}
