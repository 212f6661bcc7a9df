/**
 * The lab on Linux network namespaces (what CI and the benchmarks run, as root):
 * one namespace per host, veth links, a bridge for the branch LAN inside the router's
 * namespace, and tc tbf on both directions of the WAN veth. Nothing is created in the
 * root namespace, so no lab traffic (mDNS included) can reach the host's interfaces.
 *
 * Every namespace is named canopy-lab-<pid>-<host>: a lab whose process died is
 * recognised by its dead pid and removed by the next one (or `npm run lab -- clean`).
 */
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { once } from 'node:events'
import { promisify } from 'node:util'
import { CanopyError } from '@canopy/core'
import { ADDRESSES, formatRate, tbfArguments } from './topology.ts'
import { buildOrDestroy, hostNamed } from './engine.ts'

const execFileAsync = promisify(execFile)

export const NAMESPACE_PREFIX = 'canopy-lab-'
/** The WAN interface's name on both ends of the link. */
const WAN_IF = 'wan0'
/** A LAN host's interface (its end of the veth to the bridge). */
const LAN_IF = 'eth0'

export interface LabHost {
  /** dc, router, agent-1, ..., or an extra host's name. */
  name: string
  /** Network namespace. */
  ns: string
  /** Its address (the LAN address for branch hosts, the WAN address for dc). */
  address: string
}

export interface NetnsLabOptions {
  agents: number
  /** Extra hosts on the branch LAN (e.g. a lying peer, an intruder). */
  extras?: string[]
  wanBitsPerSecond: number
}

export type Support = { ok: true } | { ok: false, reason: string }

async function run (command: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, { maxBuffer: 16 * 1024 * 1024 })
    return stdout
  } catch (err) {
    const e = err as Error & { stderr?: string }
    throw new CanopyError('ERR_LAB_COMMAND', `${command} ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`, { cause: err })
  }
}

const ip = async (...args: string[]): Promise<string> => await run('ip', args)

/** Whether this machine can build the namespace lab; the reason when it cannot. */
export async function netnsSupport (): Promise<Support> {
  if (process.platform !== 'linux') return { ok: false, reason: 'the namespace lab needs Linux' }
  if (process.getuid?.() !== 0) return { ok: false, reason: 'the namespace lab needs root (ip netns, veth and tc need CAP_NET_ADMIN)' }
  const probe = `${NAMESPACE_PREFIX}${process.pid}-probe`
  try {
    await ip('netns', 'add', probe)
  } catch (err) {
    return { ok: false, reason: `cannot create a network namespace: ${(err as Error).message}` }
  }
  try {
    await ip('-n', probe, 'link', 'add', 'b0', 'type', 'bridge')
    await ip('-n', probe, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1')
    await ip('-n', probe, 'link', 'set', 'v0', 'up')
    await run('tc', ['-n', probe, 'qdisc', 'add', 'dev', 'v0', 'root', ...tbfArguments(20_000_000)])
    return { ok: true }
  } catch (err) {
    return { ok: false, reason: `namespaces work but a lab part does not: ${(err as Error).message}` }
  } finally {
    await ip('netns', 'del', probe).catch(() => {})
  }
}

export function pidAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function labNamespaces (): Promise<string[]> {
  const text = await ip('netns', 'list')
  return text.split('\n').map(line => line.split(' ')[0]).filter(name => name.startsWith(NAMESPACE_PREFIX))
}

/** Kills what runs in `ns` and deletes it. */
async function removeNamespace (ns: string): Promise<void> {
  const pids = (await ip('netns', 'pids', ns).catch(() => '')).split('\n').map(Number).filter(pid => pid > 0)
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
  await ip('netns', 'del', ns).catch(() => {})
}

/**
 * Removes the namespaces (and their processes) of labs whose process is gone; with
 * `all`, of every lab, running or not. Returns the names removed.
 */
export async function cleanNamespaces (all = false): Promise<string[]> {
  const removed: string[] = []
  for (const ns of await labNamespaces()) {
    const pid = Number(/^canopy-lab-(\d+)-/.exec(ns)?.[1])
    if (all || !(pid > 0 && pidAlive(pid))) {
      await removeNamespace(ns)
      removed.push(ns)
    }
  }
  return removed
}

export class NetnsLab {
  readonly hosts = new Map<string, LabHost>()
  readonly agentHosts: LabHost[] = []
  readonly wanBitsPerSecond: number
  private readonly prefix = `${NAMESPACE_PREFIX}${process.pid}-`
  private readonly children = new Set<ChildProcess>()
  private destroyed = false

  private constructor (wanBitsPerSecond: number) {
    this.wanBitsPerSecond = wanBitsPerSecond
  }

  /** Builds the topology; on any failure removes what it made and throws. */
  static async create (options: NetnsLabOptions): Promise<NetnsLab> {
    await cleanNamespaces()
    const lab = new NetnsLab(options.wanBitsPerSecond)
    return await buildOrDestroy(lab, async () => await lab.build(options))
  }

  host (name: string): LabHost {
    return hostNamed(this.hosts, name)
  }

  private async addHost (name: string, address: string): Promise<LabHost> {
    const host = { name, ns: this.prefix + name, address }
    await ip('netns', 'add', host.ns)
    this.hosts.set(name, host)
    await ip('-n', host.ns, 'link', 'set', 'lo', 'up')
    return host
  }

  private async build (options: NetnsLabOptions): Promise<void> {
    const dc = await this.addHost('dc', ADDRESSES.origin)
    const router = await this.addHost('router', ADDRESSES.routerLan)
    await run('ip', ['netns', 'exec', router.ns, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'])

    // The WAN: a veth between dc and the router, shaped in both directions.
    await ip('-n', router.ns, 'link', 'add', WAN_IF, 'type', 'veth', 'peer', 'name', WAN_IF, 'netns', dc.ns)
    for (const [ns, address] of [[dc.ns, ADDRESSES.origin], [router.ns, ADDRESSES.routerWan]]) {
      await ip('-n', ns, 'addr', 'add', `${address}/${ADDRESSES.wanPrefix}`, 'dev', WAN_IF)
      await ip('-n', ns, 'link', 'set', WAN_IF, 'up')
      await run('tc', ['-n', ns, 'qdisc', 'add', 'dev', WAN_IF, 'root', ...tbfArguments(this.wanBitsPerSecond)])
    }
    await ip('-n', dc.ns, 'route', 'add', 'default', 'via', ADDRESSES.routerWan)

    // The branch LAN: a bridge in the router's namespace. Multicast snooping off so
    // mDNS queries reach every port whatever IGMP state the bridge has learnt.
    await ip('-n', router.ns, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0')
    await ip('-n', router.ns, 'addr', 'add', `${ADDRESSES.routerLan}/${ADDRESSES.lanPrefix}`, 'dev', 'br0')
    await ip('-n', router.ns, 'link', 'set', 'br0', 'up')

    const lanHosts: Array<[string, string]> = []
    for (let i = 1; i <= options.agents; i++) lanHosts.push([`agent-${i}`, ADDRESSES.agent(i)])
    for (const [i, name] of (options.extras ?? []).entries()) lanHosts.push([name, ADDRESSES.extra(i + 1)])
    for (const [name, address] of lanHosts) {
      const host = await this.addHost(name, address)
      // The router's end of the veth is named after the host (at most 15 characters).
      const port = `v${this.hosts.size}`
      await ip('-n', router.ns, 'link', 'add', port, 'type', 'veth', 'peer', 'name', LAN_IF, 'netns', host.ns)
      await ip('-n', router.ns, 'link', 'set', port, 'master', 'br0', 'up')
      await ip('-n', host.ns, 'addr', 'add', `${address}/${ADDRESSES.lanPrefix}`, 'dev', LAN_IF)
      await ip('-n', host.ns, 'link', 'set', LAN_IF, 'up')
      await ip('-n', host.ns, 'route', 'add', 'default', 'via', ADDRESSES.routerLan)
      if (name.startsWith('agent-')) this.agentHosts.push(host)
    }
  }

  /**
   * Starts `command` inside a host's namespace. `ip netns exec` execs the command, so
   * the child's pid is the command's own. Its stderr goes to `logFile` when given.
   */
  spawn (hostName: string, command: string[], logFile?: string): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.host(hostName).ns, ...command], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    if (logFile !== undefined) child.stderr!.pipe(createWriteStream(logFile))
    return child
  }

  /** Runs a command inside a host's namespace to its end; its stdout. */
  async exec (hostName: string, command: string[]): Promise<string> {
    return await run('ip', ['netns', 'exec', this.host(hostName).ns, ...command])
  }

  /**
   * Bytes the datacenter's end of the WAN link sent toward the branch, and received
   * from it, as the kernel counts them (frames, headers included).
   */
  /**
   * Moves the bottleneck toward the branch from the datacenter's WAN interface to the
   * router's LAN side (br0), with a deep queue. A tbf on the sending host's own
   * interface pushes back on the sender (TCP small queues keep each socket's bytes in
   * the local qdisc under ~1 MB), so a loss-based flow never fills it; a branch link's
   * queue is in a router that cannot push back. LAN traffic is bridged between ports
   * and does not pass br0's qdisc.
   */
  async deepenQueueTowardBranch (queueMs: number): Promise<string> {
    await run('tc', ['-n', this.host('dc').ns, 'qdisc', 'del', 'dev', WAN_IF, 'root'])
    await run('tc', ['-n', this.host('router').ns, 'qdisc', 'replace', 'dev', 'br0', 'root', ...tbfArguments(this.wanBitsPerSecond, queueMs)])
    return `tbf ${formatRate(this.wanBitsPerSecond)} with ${queueMs} ms of queue, in the router (br0)`
  }

  async wanCounters (): Promise<{ towardBranch: number, towardDatacenter: number }> {
    const [link] = JSON.parse(await ip('-n', this.host('dc').ns, '-s', '-j', 'link', 'show', 'dev', WAN_IF)) as Array<{ stats64: { rx: { bytes: number }, tx: { bytes: number } } }>
    return { towardBranch: link.stats64.tx.bytes, towardDatacenter: link.stats64.rx.bytes }
  }

  /** Stops every process (SIGTERM, then SIGKILL after 5 s) and removes every namespace. Idempotent. */
  async destroy (): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    const running = [...this.children].filter(c => c.exitCode === null && c.signalCode === null)
    for (const child of running) child.kill('SIGTERM')
    const killer = setTimeout(() => { for (const child of running) child.kill('SIGKILL') }, 5000)
    await Promise.all(running.map(async child => child.exitCode === null && child.signalCode === null ? await once(child, 'exit') : undefined))
    clearTimeout(killer)
    for (const host of [...this.hosts.values()].reverse()) await removeNamespace(host.ns)
  }
}
