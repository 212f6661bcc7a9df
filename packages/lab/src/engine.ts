/**
 * What a scenario needs from a built lab, whichever engine built it: network
 * namespaces (netns.ts) or containers (compose-lab.ts). Hosts have the topology's
 * names and addresses (topology.ts); a process started on a host lives in that
 * host's network stack and sees the run's work directory at the same path.
 */
import type { ChildProcess } from 'node:child_process'
import { CanopyError } from '@canopy/core'

export const ENGINES = ['netns', 'compose'] as const
export type EngineName = typeof ENGINES[number]

export interface LabHost {
  /** dc, router, agent-1, ..., or an extra host's name. */
  name: string
  /** Its address (the LAN address for branch hosts, the WAN address for dc). */
  address: string
}

export interface LabEngineOptions {
  agents: number
  /** Extra hosts on the branch LAN (e.g. a lying peer, an intruder). */
  extras?: string[]
  wanBitsPerSecond: number
  /** The run's work directory (content, state, logs): every host sees it at this path. */
  workDir: string
  /** Progress lines. */
  log?: (line: string) => void
  signal?: AbortSignal
}

export interface LabEngine {
  readonly agentHosts: LabHost[]
  /** The WAN link's rate (its shaper's). */
  readonly wanBitsPerSecond: number
  host: (name: string) => LabHost
  /**
   * Starts `command` on a host (argv; the first item may be this process's Node, and
   * paths inside this checkout are valid). Its stderr goes to `logFile` when given;
   * `kill()` on the child signals the command itself.
   */
  spawn: (hostName: string, command: string[], logFile?: string) => ChildProcess
  /** Runs a command on a host to its end; its stdout. */
  exec: (hostName: string, command: string[]) => Promise<string>
  /**
   * Gives the WAN toward the branch a branch router's deep queue (`queueMs` of buffer at
   * the link's rate), in a router that cannot push back on the sender (the `background`
   * scenario); says where it put it.
   */
  deepenQueueTowardBranch: (queueMs: number) => Promise<string>
  /** Bytes the WAN link carried toward the branch and toward the datacenter, as the kernel counts them. */
  wanCounters: () => Promise<{ towardBranch: number, towardDatacenter: number }>
  /** Stops every process and removes everything the lab made. Idempotent. */
  destroy: () => Promise<void>
}

/** Returns `lab` once `build` made it; on any failure removes what it made and throws. */
export async function buildOrDestroy<T extends Pick<LabEngine, 'destroy'>> (lab: T, build: () => Promise<void>): Promise<T> {
  try {
    await build()
  } catch (err) {
    await lab.destroy()
    throw err
  }
  return lab
}

/** The host called `name` among a lab's hosts (ERR_LAB_HOST when there is none). */
export function hostNamed<H> (hosts: ReadonlyMap<string, H>, name: string): H {
  const host = hosts.get(name)
  if (host === undefined) throw new CanopyError('ERR_LAB_HOST', `the lab has no host "${name}"`)
  return host
}
