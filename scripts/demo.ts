// `npm start`: Canopy's main job on one machine. Starts an origin serving a generated
// sample file and three agents (each its own process and state directory), has each
// agent download the file with `canopy get`, and prints what happened.
// Everything listens on 127.0.0.1 or Unix sockets; mDNS is not used.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { formatBytes, parseSize } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { Processes, writeRandomFile } from './lib/processes.ts'

const AGENTS = Number(process.env.CANOPY_DEMO_AGENTS ?? 3)
const SIZE = parseSize(process.env.CANOPY_DEMO_SIZE ?? '64MiB')
const processes = new Processes()

async function run (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = processes.start(args)
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stdout, stderr }
}

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

    const originUrl = await processes.origin(root, join(dir, 'origin-state'))
    console.log(`canopy demo: origin at ${originUrl}, manifests computed`)

    const agents: Array<{ name: string, stateDir: string }> = []
    for (let i = 1; i <= AGENTS; i++) agents.push({ name: `agent-${i}`, stateDir: join(dir, `agent-${i}`) })
    await Promise.all(agents.map(async agent => await processes.agent(agent.stateDir)))
    console.log(`canopy demo: ${AGENTS} agents running; each downloads ${originUrl}/sample.bin in turn\n`)

    const rows: string[][] = [['agent', 'state', 'bytes', 'seconds*', 'MiB/s*', 'from origin', 'from peers', 'digest']]
    for (const agent of agents) {
      const dest = join(dir, `${agent.name}-download`, 'sample.bin')
      await mkdir(join(dir, `${agent.name}-download`))
      const started = performance.now()
      const res = await run(['get', `${originUrl}/sample.bin`, '-o', dest, '--json', '--state-dir', agent.stateDir])
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
    console.log('Peer caching (agents fetching from each other first) is not built yet: each agent pulls from the origin.')
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
