/**
 * The lab on Docker containers, driven by docker-compose: the same topology as the
 * namespace lab (topology.ts), one container per host from the `lab` image
 * (Dockerfile), both networks internal (no gateway, no NAT, nothing published), the
 * router container shaping both directions of the WAN with the namespace lab's tc tbf,
 * agents finding each other by mDNS on the branch network.
 *
 * The run's work directory is mounted at the same path in every container, so the
 * harness reads the agents' files and talks to their Unix control sockets exactly as
 * it does on the namespace lab. Processes are started in a host with `docker exec`
 * (as the caller's uid, so their files are the caller's); each records its pid so
 * that a signal reaches the process itself, not the `docker exec` client.
 *
 * Containers and networks carry the label canopy-lab=<pid>: a lab whose process died
 * is removed by the next one (or `npm run lab -- clean`).
 */
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { CanopyError, throwIfAborted } from '@canopy/core'
import { renderRunCompose } from './compose.ts'
import { buildOrDestroy, hostNamed } from './engine.ts'
import type { LabEngine, LabEngineOptions, LabHost } from './engine.ts'
import { pidAlive } from './netns.ts'
import type { Support } from './netns.ts'
import { ADDRESSES, formatRate, tbfArguments } from './topology.ts'

const LABEL = 'canopy-lab'
const PROJECT_PREFIX = 'canopy-lab-'
/** This checkout, and where the image keeps it (Dockerfile WORKDIR). */
const CHECKOUT = fileURLToPath(new URL('../../../', import.meta.url))
const IMAGE_ROOT = '/opt/canopy/'
const BUILD_SCRIPT = join(CHECKOUT, 'scripts', 'docker-images.sh')
/** The file host.sh and router.sh write once the host's route or the WAN's shaping is set. */
const READY_FILE = '/run/canopy-lab-ready'
/** A lab's set-up commands: building the image the first time takes minutes (scripts/docker-base.sh). */
const BUILD_TIMEOUT_MS = 20 * 60_000
const COMMAND_TIMEOUT_MS = 120_000

interface Output { stdout: string, stderr: string }

async function run (command: string, args: string[], { timeout = COMMAND_TIMEOUT_MS, signal }: { timeout?: number, signal?: AbortSignal } = {}): Promise<Output> {
  return await new Promise((resolve, reject) => {
    execFile(command, args, { maxBuffer: 64 * 1024 * 1024, timeout, ...(signal !== undefined ? { signal } : {}) }, (err, stdout, stderr) => {
      if (err === null) resolve({ stdout, stderr })
      else reject(new CanopyError('ERR_LAB_COMMAND', `${command} ${args.join(' ')}: ${stderr.trim().split('\n').slice(-20).join('\n') || err.message}`, { cause: err }))
    })
  })
}

const docker = async (...args: string[]): Promise<string> => (await run('docker', args)).stdout

/** `docker-compose` (v1, Debian's) or `docker compose` (v2); undefined when neither runs. */
async function composeCommand (): Promise<string[] | undefined> {
  for (const command of [['docker-compose'], ['docker', 'compose']]) {
    try {
      await run(command[0], [...command.slice(1), 'version'])
      return command
    } catch {
      // Try the next.
    }
  }
  return undefined
}

/** Whether this machine can run the compose lab; the reason when it cannot. */
export async function composeSupport (): Promise<Support> {
  if (process.platform !== 'linux') return { ok: false, reason: 'the compose lab needs Linux (the harness uses the agents\' Unix sockets through a bind mount)' }
  try {
    await docker('version', '--format', '{{.Server.Version}}')
  } catch (err) {
    return { ok: false, reason: `no Docker engine answers: ${(err as Error).message.split('\n').at(-1) ?? ''} (start dockerd; .ci/run does: dockerd --iptables=false)` }
  }
  if (await composeCommand() === undefined) return { ok: false, reason: 'neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)' }
  return { ok: true }
}

/** The pids of labs that have containers or networks, and those objects' ids. */
async function labObjects (): Promise<Map<number, { containers: string[], networks: string[] }>> {
  const labs = new Map<number, { containers: string[], networks: string[] }>()
  const entry = (pid: number): { containers: string[], networks: string[] } => {
    let found = labs.get(pid)
    if (found === undefined) labs.set(pid, found = { containers: [], networks: [] })
    return found
  }
  const format = `{{.ID}} {{.Label "${LABEL}"}}`
  for (const line of (await docker('ps', '-a', '--filter', `label=${LABEL}`, '--format', format)).split('\n').filter(Boolean)) {
    const [id, pid] = line.split(' ')
    entry(Number(pid)).containers.push(id)
  }
  for (const line of (await docker('network', 'ls', '--filter', `label=${LABEL}`, '--format', format)).split('\n').filter(Boolean)) {
    const [id, pid] = line.split(' ')
    entry(Number(pid)).networks.push(id)
  }
  return labs
}

async function removeObjects ({ containers, networks }: { containers: string[], networks: string[] }): Promise<void> {
  if (containers.length > 0) await docker('rm', '-f', '-v', ...containers).catch(() => {})
  if (networks.length > 0) await docker('network', 'rm', ...networks).catch(() => {})
}

/**
 * Removes the containers and networks of compose labs whose process is gone; with
 * `all`, of every compose lab. Returns the pids of the labs removed.
 */
export async function cleanComposeLabs (all = false): Promise<number[]> {
  const removed: number[] = []
  for (const [pid, objects] of await labObjects()) {
    if (all || !(pid > 0 && pidAlive(pid))) {
      await removeObjects(objects)
      removed.push(pid)
    }
  }
  return removed
}

/** Builds (or finds cached) the lab image with scripts/docker-images.sh; its tag. */
async function labImage (workDir: string, signal?: AbortSignal): Promise<string> {
  const given = process.env.CANOPY_LAB_IMAGE
  if (given !== undefined && given !== '') return given
  const { stdout, stderr } = await run('bash', [BUILD_SCRIPT, 'lab'], { timeout: BUILD_TIMEOUT_MS, ...(signal !== undefined ? { signal } : {}) })
  await writeFile(join(workDir, 'image-build.log'), stderr)
  return stdout.trim().split('\n').at(-1)!
}

export class ComposeLab implements LabEngine {
  readonly hosts = new Map<string, LabHost>()
  readonly agentHosts: LabHost[] = []
  private readonly project = `${PROJECT_PREFIX}${process.pid}`
  private readonly composeFile: string
  private readonly workDir: string
  private readonly user = `${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`
  private readonly children = new Set<ChildProcess>()
  private compose: string[] = ['docker-compose']
  private processes = 0
  private routerLanInterface?: string
  private destroyed = false

  readonly wanBitsPerSecond: number

  private constructor (workDir: string, wanBitsPerSecond: number) {
    this.workDir = workDir
    this.wanBitsPerSecond = wanBitsPerSecond
    this.composeFile = join(workDir, 'docker-compose.lab.json')
  }

  /** Builds the image if needed and brings the lab up; on any failure removes what it made and throws. */
  static async create (options: LabEngineOptions): Promise<ComposeLab> {
    await cleanComposeLabs()
    const running = [...(await labObjects()).keys()].filter(pid => pid !== process.pid)
    if (running.length > 0) {
      throw new CanopyError('ERR_LAB_BUSY', `a compose lab of process ${running.join(', ')} runs on this Docker engine, and labs share addresses: wait for it, or remove it with \`npm run lab -- clean\``)
    }
    const lab = new ComposeLab(options.workDir, options.wanBitsPerSecond)
    return await buildOrDestroy(lab, async () => await lab.build(options))
  }

  host (name: string): LabHost {
    return hostNamed(this.hosts, name)
  }

  private container (hostName: string): string {
    return `${this.project}-${this.host(hostName).name}`
  }

  private async build (options: LabEngineOptions): Promise<void> {
    const log = options.log ?? (() => {})
    const found = await composeCommand()
    if (found === undefined) throw new CanopyError('ERR_LAB_UNSUPPORTED', 'neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)')
    this.compose = found
    log('compose lab: building the lab image (scripts/docker-images.sh lab; cached after the first time)')
    const image = await labImage(this.workDir, options.signal)

    this.hosts.set('dc', { name: 'dc', address: ADDRESSES.origin })
    this.hosts.set('router', { name: 'router', address: ADDRESSES.routerLan })
    const lanHosts: LabHost[] = []
    for (let i = 1; i <= options.agents; i++) lanHosts.push({ name: `agent-${i}`, address: ADDRESSES.agent(i) })
    for (const [i, name] of (options.extras ?? []).entries()) lanHosts.push({ name, address: ADDRESSES.extra(i + 1) })
    for (const host of lanHosts) {
      this.hosts.set(host.name, host)
      if (host.name.startsWith('agent-')) this.agentHosts.push(host)
    }
    await writeFile(this.composeFile, renderRunCompose({
      project: this.project,
      image,
      lanHosts,
      wanBitsPerSecond: options.wanBitsPerSecond,
      workDir: this.workDir,
      labels: { [LABEL]: String(process.pid) }
    }))
    log(`compose lab: ${this.compose.join(' ')} -p ${this.project} up (${image}, ${this.hosts.size} hosts)`)
    await run(this.compose[0], [...this.compose.slice(1), '-p', this.project, '-f', this.composeFile, 'up', '-d', '--no-build'],
      options.signal !== undefined ? { signal: options.signal } : {})
    await this.waitReady(options.signal)
  }

  /** Waits until every host set its route and the router shaped the WAN (host.sh, router.sh). */
  private async waitReady (signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + 60_000
    for (const name of this.hosts.keys()) {
      for (;;) {
        if (signal !== undefined) throwIfAborted(signal)
        try {
          await docker('exec', this.container(name), 'test', '-e', READY_FILE)
          break
        } catch (err) {
          if (Date.now() > deadline) {
            const logs = await run('docker', ['logs', '--tail', '20', this.container(name)]).catch(() => ({ stdout: '', stderr: '' }))
            throw new CanopyError('ERR_LAB_TIMEOUT', `the ${name} container was not ready within 60 s: ${(err as Error).message} ${logs.stdout}${logs.stderr}`)
          }
          await sleep(200)
        }
      }
    }
  }

  /** The command as the image sees it: its Node, and its copy of this checkout. */
  private inContainer (command: string[]): string[] {
    return command.map((arg, i) => {
      if (i === 0 && arg === process.execPath) return 'node'
      if (!arg.startsWith(this.workDir) && arg.startsWith(CHECKOUT)) return IMAGE_ROOT + arg.slice(CHECKOUT.length)
      return arg
    })
  }

  spawn (hostName: string, command: string[], logFile?: string): ChildProcess {
    const container = this.container(hostName)
    const pidFile = `/tmp/canopy-lab-process-${++this.processes}.pid`
    const child = spawn('docker', ['exec', '--user', this.user, container, 'sh', '-c', 'echo $$ > "$0" && exec "$@"', pidFile, ...this.inContainer(command)],
      { stdio: ['ignore', 'pipe', 'pipe'] })
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    if (logFile !== undefined) child.stderr!.pipe(createWriteStream(logFile))
    // A signal to the `docker exec` client would not reach the command: send it in the container.
    const killClient = child.kill.bind(child)
    child.kill = (signal: NodeJS.Signals | number = 'SIGTERM'): boolean => {
      const name = typeof signal === 'number' ? String(signal) : signal.replace(/^SIG/, '')
      execFile('docker', ['exec', '--user', '0', container, 'sh', '-c', `kill -s ${name} "$(cat ${pidFile})"`], err => {
        // The container is gone or the command never started: stop the client at least.
        if (err !== null) killClient(signal)
      })
      return true
    }
    return child
  }

  async exec (hostName: string, command: string[]): Promise<string> {
    return await docker('exec', '--user', this.user, this.container(hostName), ...this.inContainer(command))
  }

  /**
   * The router's branch-side interface: the end of the shaped link, so what crossed
   * the WAN toward the branch (a packet the router's queue dropped crossed the
   * datacenter's interface but not the link, and its retransmission crosses again).
   */
  async wanCounters (): Promise<{ towardBranch: number, towardDatacenter: number }> {
    const stats = `/sys/class/net/${await this.lanInterface()}/statistics`
    const [tx, rx] = (await docker('exec', this.container('router'), 'cat', `${stats}/tx_bytes`, `${stats}/rx_bytes`)).trim().split('\n').map(Number)
    return { towardBranch: tx, towardDatacenter: rx }
  }

  /** The router's branch-side interface (found by its address, once). */
  private async lanInterface (): Promise<string> {
    if (this.routerLanInterface === undefined) {
      const addresses = await docker('exec', this.container('router'), 'ip', '-o', '-4', 'addr', 'show')
      this.routerLanInterface = addresses.split('\n').find(line => line.includes(` inet ${ADDRESSES.routerLan}/`))?.split(/\s+/)[1]
      if (this.routerLanInterface === undefined) throw new CanopyError('ERR_LAB_HOST', `the router has no interface with ${ADDRESSES.routerLan}: ${addresses}`)
    }
    return this.routerLanInterface
  }

  /** The router already shapes the WAN toward the branch on its LAN side: only its queue deepens. */
  async deepenQueueTowardBranch (queueMs: number): Promise<string> {
    const lan = await this.lanInterface()
    await docker('exec', '--user', '0:0', this.container('router'), 'tc', 'qdisc', 'replace', 'dev', lan, 'root', ...tbfArguments(this.wanBitsPerSecond, queueMs))
    return `tbf ${formatRate(this.wanBitsPerSecond)} with ${queueMs} ms of queue, in the router (${lan})`
  }

  /**
   * Stops every process (SIGTERM, then SIGKILL after 5 s), takes the project down and
   * removes whatever still carries this lab's label. Idempotent.
   */
  async destroy (): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    const running = [...this.children].filter(c => c.exitCode === null && c.signalCode === null)
    for (const child of running) child.kill('SIGTERM')
    const killer = setTimeout(() => { for (const child of running) child.kill('SIGKILL') }, 5000)
    const exited = Promise.all(running.map(async child => child.exitCode === null && child.signalCode === null ? await once(child, 'exit') : undefined))
    await Promise.race([exited, sleep(10_000)])
    clearTimeout(killer)
    await run(this.compose[0], [...this.compose.slice(1), '-p', this.project, '-f', this.composeFile, 'down', '--volumes', '--remove-orphans', '--timeout', '1']).catch(() => {})
    const left = (await labObjects()).get(process.pid)
    if (left !== undefined) await removeObjects(left)
    for (const child of this.children) child.kill('SIGKILL')
  }
}
