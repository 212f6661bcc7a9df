/**
 * The CPU priority of the agent's own threads: its main thread (socket reads, Noise
 * for peers, the API), V8's helper threads (garbage collection) and libuv's pool
 * (file reads for peers) run at the background nice value while no foreground job
 * runs, and at the agent's own value while one does. The hashing threads of
 * background jobs are niced on their own (transfer/block-hasher.ts).
 *
 * On Linux a thread has its own nice value, set through its thread id. Raising a
 * thread's priority back needs CAP_SYS_NICE (or an RLIMIT_NICE that allows it): an
 * agent without either never lowers its threads, or a foreground job arriving later
 * would run at the low priority.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { getPriority, setPriority } from 'node:os'
import type { Logger } from '@canopy/core'

/** Thread names (comm) of the agent's own threads; worker threads ("WorkerThread") set their own. */
const OWN_THREADS = /^(MainThread|node|V8Worker|V8 DefaultWorke|libuv-worker)/

/** Whether this process may lower a thread's nice value again (CAP_SYS_NICE, or RLIMIT_NICE down to `nice`). */
export function mayRaisePriority (nice: number): boolean {
  if (process.platform !== 'linux') return false
  try {
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]
    const CAP_SYS_NICE = 23n
    if (capEff !== undefined && ((BigInt(`0x${capEff}`) >> CAP_SYS_NICE) & 1n) === 1n) return true
    // RLIMIT_NICE: the lowest nice value reachable is 20 - the soft limit.
    const limit = /^Max nice priority\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]
    return limit !== undefined && 20 - Number(limit) <= nice
  } catch {
    return false
  }
}

export class CpuPriority {
  private readonly logger: Logger
  private readonly base: number
  private readonly backgroundNice: number
  private readonly enabled: boolean
  private background = false

  /** `backgroundNice`: the nice value while only background work runs (not below the agent's own). */
  constructor (components: { logger: Logger }, init: { backgroundNice: number }) {
    this.logger = components.logger
    this.base = process.platform === 'linux' ? getPriority(0) : 0
    this.backgroundNice = Math.max(this.base, init.backgroundNice)
    this.enabled = this.backgroundNice > this.base && mayRaisePriority(this.base)
  }

  /** Whether the agent's threads follow the work (false: they stay at the agent's priority). */
  get active (): boolean {
    return this.enabled
  }

  /** Sets the agent's threads to the background nice value (no foreground job runs) or back to its own. */
  set (backgroundOnly: boolean): void {
    if (!this.enabled || backgroundOnly === this.background) return
    this.background = backgroundOnly
    const nice = backgroundOnly ? this.backgroundNice : this.base
    // On Linux, pid 0 is the calling thread: the main thread.
    this.renice(0, nice)
    for (const tid of readdirSync('/proc/self/task')) {
      if (Number(tid) === process.pid) continue
      const name = readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()
      if (OWN_THREADS.test(name)) this.renice(Number(tid), nice)
    }
  }

  private renice (tid: number, nice: number): void {
    try {
      setPriority(tid, nice)
    } catch (err) {
      // A thread that ended meanwhile.
      this.logger.debug('could not set the priority of a thread', { tid, nice, err: String(err) })
    }
  }
}
