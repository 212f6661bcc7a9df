// The frame every benchmark shares: a temp dir, canopy processes, one JSON document
// on stdout (with the machine's facts), clean-up, and a non-zero exit on failure.
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Processes } from './processes.ts'

export function runBench (name: string, what: string, body: (dir: string, processes: Processes) => Promise<Record<string, unknown>>): void {
  const run = async (): Promise<void> => {
    const dir = await mkdtemp(join(tmpdir(), `canopy-bench-${name}-`))
    const processes = new Processes()
    try {
      const result = await body(dir, processes)
      console.log(JSON.stringify({ bench: name, what, node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, ...result }, null, 2))
    } finally {
      await processes.stopAll()
      await rm(dir, { recursive: true, force: true })
    }
  }
  run().catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
}
