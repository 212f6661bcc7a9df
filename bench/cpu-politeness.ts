// CPU politeness: a CPU-bound program (SHA-256 over 1 MiB, in a loop, in its own
// process at normal priority) runs BENCH_SECONDS (default 10) alone, then while a
// `low` job downloads from a local origin at full loopback rate, then while the same
// download runs as `foreground`. Background jobs hash on threads at nice 10, so the
// program should keep >= 90% of its solo speed with the low job; the foreground run
// is the comparison. The origin runs in its own process at nice 19: on a branch
// machine it is a remote server, and its CPU is not the user's. Prints one JSON document.
//   npm run bench:cpu
// Env: BENCH_SECONDS (10), BENCH_FILE_SIZE (2GiB; must outlast warm-up + measurement).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseSize } from '@canopy/core'
import type { JobPriority } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import { fileURLToPath } from 'node:url'

const CLI = fileURLToPath(new URL('../packages/cli/bin/canopy.js', import.meta.url))

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const FILE_SIZE = parseSize(process.env.BENCH_FILE_SIZE ?? '2GiB')
/** A low job starts at 256 KiB/s and grows to the loopback's rate in a few seconds. */
const WARM_UP_MS = 8000

const BUSY = `const { createHash } = require('node:crypto'); const b = Buffer.alloc(1 << 20, 1); let n = 0; const end = Date.now() + ${SECONDS * 1000}; while (Date.now() < end) { createHash('sha256').update(b).digest(); n++ } process.stdout.write(String(n / ${SECONDS}))`

async function busy (): Promise<number> {
  const child = spawn(process.execPath, ['-e', BUSY], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  await once(child, 'exit')
  return Number(out)
}

const dir = await mkdtemp(join(tmpdir(), 'canopy-bench-cpu-'))
try {
  await mkdir(join(dir, 'root'))
  // A big file without a big random source: one random 64 MiB pattern, repeated.
  const pattern = randomBytes(64 * 1024 * 1024)
  const handle = await open(join(dir, 'root', 'f.bin'), 'w')
  for (let at = 0; at < FILE_SIZE; at += pattern.length) await handle.write(pattern, 0, Math.min(pattern.length, FILE_SIZE - at))
  await handle.close()
  const originProcess = spawn('nice', ['-n', '19', process.execPath, CLI, 'origin', join(dir, 'root'), '--host', '127.0.0.1', '--port', '0', '--state-dir', join(dir, 'origin')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let originLog = ''
  const originUrl = await new Promise<string>((resolve, reject) => {
    originProcess.stderr.on('data', (d: Buffer) => {
      originLog += d.toString()
      const url = /at (http:\/\/\S+)/.exec(originLog)?.[1]
      if (url !== undefined && originLog.includes('manifests ready')) resolve(url)
    })
    originProcess.once('exit', code => reject(new Error(`the origin exited (${code}): ${originLog}`)))
  })
  const origin = { url: originUrl.replace(/\/$/, ''), close: async () => { originProcess.kill('SIGTERM'); await once(originProcess, 'exit') } }
  const solo = await busy()
  const runs: Array<Record<string, unknown>> = []
  for (const priority of ['low', 'foreground'] as JobPriority[]) {
    const agent = await startAgent({ stateDir: join(dir, `agent-${priority}`) })
    try {
      const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, `out-${priority}.bin`) }], priority })
      await new Promise(resolve => setTimeout(resolve, WARM_UP_MS))
      const before = { t: performance.now(), bytes: agent.getJob(job.id).bytes.transferred }
      const speed = await busy()
      const after = { t: performance.now(), view: agent.getJob(job.id) }
      runs.push({
        priority,
        programOpsPerSecond: speed,
        programKeeps: Math.round(speed / solo * 1000) / 1000,
        jobMiBPerSecond: Math.round((after.view.bytes.transferred - before.bytes) / 1048576 / ((after.t - before.t) / 1000)),
        jobState: after.view.state
      })
      await agent.cancel(job.id)
    } finally {
      await agent.stop()
    }
  }
  await origin.close()
  process.stdout.write(JSON.stringify({ bench: 'cpu-politeness', seconds: SECONDS, fileSize: FILE_SIZE, node: process.version, soloOpsPerSecond: solo, runs }, null, 2) + '\n')
} finally {
  await rm(dir, { recursive: true, force: true })
}
