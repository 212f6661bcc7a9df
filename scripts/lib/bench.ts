// The frame every benchmark shares: a temp dir, canopy processes, one JSON document
// on stdout (with the machine's facts), clean-up, and a non-zero exit on failure.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
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

/**
 * CPU seconds (user + system) of the whole process `pid`, threads that already ended
 * included (a finished transfer's whole-file hashing worker is gone from /proc/<pid>/task).
 */
export async function processCpu (pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 of stat(5), in USER_HZ (hundredths of a second).
  return (Number(fields[11]) + Number(fields[12])) / 100
}
