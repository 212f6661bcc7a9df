// `npm start`: Canopy's main job on one machine. Starts an origin serving a generated
// sample file and three agents (each its own process and state directory), has each
// agent download the file with `canopy get`, and prints what happened.
// Everything listens on 127.0.0.1 or Unix sockets; mDNS is not used.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { formatBytes, parseSize } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { Processes, withClient, writeRandomFile } from './lib/processes.ts'

const AGENTS = Number(process.env.CANOPY_DEMO_AGENTS ?? 3)
const SIZE = parseSize(process.env.CANOPY_DEMO_SIZE ?? '64MiB')
const processes = new Processes()

async function sha256File (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-demo-'))
  try {
    const root = join(dir, 'origin-root')
    await mkdir(root)
    const sample = join(root, 'sample.bin')
    console.log(`canopy demo: writing a ${formatBytes(SIZE)} sample file in ${root}`)
    await writeRandomFile(sample, SIZE)
    const expected = await sha256File(sample)

    const { url: originUrl } = await processes.origin(root, join(dir, 'origin-state'))
    console.log(`canopy demo: origin at ${originUrl}, manifests computed`)

    const agents: Array<{ name: string, stateDir: string }> = []
    for (let i = 1; i <= AGENTS; i++) agents.push({ name: `agent-${i}`, stateDir: join(dir, `agent-${i}`) })
    // One organisation: a swarm key, and each agent told the addresses of the ones
    // started before it (static peers on loopback stand in for mDNS on a LAN).
    const keyFile = join(dir, 'org.key')
    const key = await processes.run(['keygen'])
    await writeFile(keyFile, key.stdout, { mode: 0o600 })
    const addresses: string[] = []
    for (const agent of agents) {
      await processes.agent(agent.stateDir, ['--swarm-key', keyFile, ...addresses.flatMap(a => ['--peer', a])])
      const status = await withClient(agent.stateDir, async c => await c.status())
      addresses.push(status.peer!.addresses.find(a => a.startsWith('/ip4/127.0.0.1/'))!)
    }
    // Give the dials a moment, then show who is connected to whom.
    for (let tries = 0; tries < 50; tries++) {
      const counts = await Promise.all(agents.map(async a => await withClient(a.stateDir, async c => (await c.status()).peer?.connected ?? 0)))
      if (counts.every(n => n === AGENTS - 1)) break
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    for (const agent of agents) {
      const peer = (await withClient(agent.stateDir, async c => await c.status())).peer!
      console.log(`canopy demo: ${agent.name} is peer ${peer.peerId.slice(0, 16)}…, connected to ${peer.connected} of ${AGENTS - 1} peers (same swarm key)`)
    }
    console.log(`canopy demo: each agent downloads ${originUrl}/sample.bin in turn\n`)

    const rows: string[][] = [['agent', 'state', 'bytes', 'seconds*', 'MiB/s*', 'from origin', 'from peers', 'digest']]
    for (const agent of agents) {
      const dest = join(dir, `${agent.name}-download`, 'sample.bin')
      await mkdir(join(dir, `${agent.name}-download`))
      const started = performance.now()
      const res = await processes.run(['get', `${originUrl}/sample.bin`, '-o', dest, '--json', '--state-dir', agent.stateDir])
      const seconds = (performance.now() - started) / 1000
      if (res.code !== 0) throw new Error(`canopy get failed on ${agent.name} (exit ${res.code}): ${res.stderr}`)
      const job = JSON.parse(res.stdout) as JobView
      const ok = await sha256File(dest) === expected
      rows.push([agent.name, job.state, formatBytes(job.bytes.transferred), seconds.toFixed(2),
        (job.bytes.transferred / 1048576 / seconds).toFixed(0), formatBytes(job.bytes.fromOrigin), formatBytes(job.bytes.fromPeers),
        ok ? 'ok' : 'MISMATCH'])
    }
    const widths = rows[0].map((_, c) => Math.max(...rows.map(r => r[c].length)))
    for (const row of rows) console.log(row.map((cell, c) => cell.padEnd(widths[c])).join('  '))

    const metrics = await (await fetch(`${originUrl}/metrics`)).text()
    const sent = Number(/canopy_origin_bytes_sent_total\{kind="content"\} (\d+)/.exec(metrics)?.[1] ?? 0)
    console.log('* wall time of the whole `canopy get` process, including its start-up')
    console.log(`\norigin sent ${formatBytes(sent)} of content for ${AGENTS} downloads of ${formatBytes(SIZE)} (${(sent / SIZE).toFixed(2)} × the file).`)
    console.log('Agents ask their peers first and the origin for what no peer has; every block is verified against the manifest either way.')
    if (rows.slice(1).some(r => r[7] !== 'ok')) process.exitCode = 1
  } finally {
    await processes.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  console.error(`canopy demo failed: ${err instanceof Error ? err.message : String(err)}`)
  process.exitCode = 1
})
