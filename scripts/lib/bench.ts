// The frame every benchmark shares: a temp dir, canopy processes, one JSON document
// on stdout (with the machine's facts), clean-up, and a non-zero exit on failure.
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
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
 * included (they are gone from /proc/<pid>/task).
 */
export async function processCpu (pid: number): Promise<number> {
  return statCpuSeconds(await readFile(`/proc/${pid}/stat`, 'utf8'))
}

/** CPU seconds (user + system) of each thread of `pid`, summed by thread name. */
export async function threadCpu (pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => undefined)
    if (stat === undefined) continue // the thread ended
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    out.set(name, (out.get(name) ?? 0) + statCpuSeconds(stat))
  }
  return out
}

/** utime + stime of a /proc stat line (fields 14 and 15 of stat(5)), in seconds. */
function statCpuSeconds (stat: string): number {
  // After the command name in parentheses (which may hold spaces) fields[0] is field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}

/** Linux's USER_HZ: /proc times are in hundredths of a second. */
const CLOCK_TICKS = 100
export const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0)
