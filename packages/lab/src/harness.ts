/**
 * What every scenario does on a built lab: the origin in the datacenter, agents on
 * the branch LAN (real `canopy` processes, mDNS on, the organisation swarm key), the
 * sample content, a sampler that records each agent's bytes by source over time, and
 * the origin's and the WAN interface's byte counters.
 */
import { execFile } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { CanopyClient } from '@canopy/client'
import { CanopyError, throwIfAborted } from '@canopy/core'
import type { JobState, JobView } from '@canopy/core'
import type { LabEngine, LabHost } from './engine.ts'
import type { BackgroundReport } from './background-report.ts'
import { ADDRESSES, CONTENT_PATH, MiB, ORIGIN_PORT, PEER_PORT } from './topology.ts'

export const CLI = fileURLToPath(new URL('../../cli/bin/canopy.js', import.meta.url))
const LIAR = fileURLToPath(new URL('../bin/liar.ts', import.meta.url))
const FINISHED: readonly JobState[] = ['acknowledged', 'error', 'cancelled']
/** How often the sampler reads each agent's job. */
const SAMPLE_MS = 250

export interface Sample {
  /** Seconds since the run started. */
  t: number
  fromOrigin: number
  fromPeers: number
  /** From a hosted cache (JobBytes.fromCache). */
  fromCache: number
}

export interface LabAgent {
  host: LabHost
  stateDir: string
  /** Where its job puts the content. */
  outPath: string
  client: CanopyClient
  child: ChildProcess
  peerId: string
  /** Holds the organisation key. */
  member: boolean
  jobId?: string
  /** Seconds since the run started. */
  startedAt?: number
  finishedAt?: number
  last?: JobView
  samples: Sample[]
  /** Stopped on purpose by the scenario. */
  left?: boolean
  /** The arguments it was started with after its state dir and key (for a restart). */
  extraArgs: string[]
  /** Started with `--hosted-cache`: its job (a preload) has no destination file. */
  hostedCache?: boolean
  /** Times it was started (a restart adds one; its log is logs/<host>.<n>.log after the first). */
  starts: number
}

/** A scenario's measurement in the report: a number, a text, a flag, or numbers by host. */
export type Figure = number | string | boolean | null | Record<string, number | string>

export interface TimelineEvent {
  t: number
  host: string
  what: string
}

export interface Counters {
  /** Body bytes the origin says it sent (content and manifests). */
  originBytes: number
  /** Of those, the content's (without manifests). */
  originContentBytes: number
  /** Bytes the WAN link carried toward the branch (LabEngine.wanCounters). */
  wanBytes: number
}

async function sha256File (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

export class LabRun {
  readonly lab: LabEngine
  readonly workDir: string
  readonly size: number
  readonly contentUrl = `http://${ADDRESSES.origin}:${ORIGIN_PORT}${CONTENT_PATH}`
  readonly agents = new Map<string, LabAgent>()
  readonly timeline: TimelineEvent[] = []
  readonly signal: AbortSignal
  sha256 = ''
  swarmKeyFile = ''
  /** The `background` scenario's own report. */
  background?: BackgroundReport
  /** A scenario's own measurements (phases, times), reported as they are. */
  readonly figures: Record<string, Figure> = {}
  private readonly t0 = performance.now()
  private readonly log: (line: string) => void
  private sampling?: Promise<void>
  private stopSampling = false

  constructor (lab: LabEngine, options: { workDir: string, size: number, signal: AbortSignal, log: (line: string) => void }) {
    this.lab = lab
    this.workDir = options.workDir
    this.size = options.size
    this.signal = options.signal
    this.log = options.log
  }

  /** Seconds since the run started. */
  now (): number {
    return Math.round((performance.now() - this.t0)) / 1000
  }

  mark (host: string, what: string): void {
    this.timeline.push({ t: this.now(), host, what })
    this.log(`${this.now().toFixed(1)} s  ${host}: ${what}`)
  }

  /** Writes the content, makes the organisation key, starts the origin in the datacenter. */
  async setUp (): Promise<void> {
    await mkdir(join(this.workDir, 'content'), { recursive: true })
    await mkdir(join(this.workDir, 'logs'), { recursive: true })
    await mkdir(join(this.workDir, 'out'), { recursive: true })
    const hash = createHash('sha256')
    const out = createWriteStream(join(this.workDir, 'content', CONTENT_PATH.slice(1)))
    for (let left = this.size; left > 0; left -= MiB) {
      const chunk = randomBytes(Math.min(left, MiB))
      hash.update(chunk)
      if (!out.write(chunk)) await once(out, 'drain')
    }
    out.end()
    await once(out, 'finish')
    this.sha256 = hash.digest('hex')

    // The real `canopy keygen`, as an administrator would make the key.
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'keygen'])
    this.swarmKeyFile = join(this.workDir, 'org.key')
    await writeFile(this.swarmKeyFile, stdout, { mode: 0o600 })
    await chmod(this.swarmKeyFile, 0o600)

    const origin = this.lab.spawn('dc', [process.execPath, CLI, 'origin', join(this.workDir, 'content'),
      '--host', ADDRESSES.origin, '--port', String(ORIGIN_PORT), '--state-dir', join(this.workDir, 'origin-state')],
    join(this.workDir, 'logs', 'origin.log'))
    await this.waitForOutput(origin, 'manifests ready', 'the origin')
    this.mark('dc', 'origin ready')
    this.sampling = this.sample()
  }

  private async waitForOutput (child: ChildProcess, text: string, what: string): Promise<string> {
    let seen = ''
    const ready = new Promise<string>((resolve, reject) => {
      const onData = (d: Buffer): void => {
        seen += d.toString()
        if (seen.includes(text)) resolve(seen)
      }
      child.stdout!.on('data', onData)
      child.stderr!.on('data', onData)
      child.once('exit', code => reject(new CanopyError('ERR_LAB_PROCESS', `${what} exited (${code}) before it was ready: ${seen.slice(-2000)}`)))
    })
    const timeout = AbortSignal.any([this.signal, AbortSignal.timeout(60_000)])
    const aborted = once(timeout, 'abort').then(() => { throw new CanopyError('ERR_LAB_TIMEOUT', `${what} was not ready within 60 s: ${seen.slice(-2000)}`) })
    return await Promise.race([ready, aborted])
  }

  /**
   * Starts `canopy agent` on a LAN host: mDNS on, the default peer port, and the
   * organisation key unless `member` is false (an intruder).
   */
  async startAgent (hostName: string, { member = true, extraArgs = [] }: { member?: boolean, extraArgs?: string[] } = {}): Promise<LabAgent> {
    const host = this.lab.host(hostName)
    const stateDir = join(this.workDir, 'agents', hostName)
    const args = [process.execPath, CLI, 'agent', '--state-dir', stateDir, ...(member ? ['--swarm-key', this.swarmKeyFile] : []), ...extraArgs]
    const starts = (this.agents.get(hostName)?.starts ?? 0) + 1
    const logFile = join(this.workDir, 'logs', starts === 1 ? `${hostName}.log` : `${hostName}.${starts}.log`)
    const child = this.lab.spawn(hostName, args, logFile)
    const client = new CanopyClient({ stateDir })
    for (let tries = 0; ; tries++) {
      throwIfAborted(this.signal)
      try {
        const status = await client.status()
        const agent: LabAgent = {
          host, stateDir, outPath: join(this.workDir, 'out', `${hostName}.bin`), client, child, peerId: status.peer?.peerId ?? '', member, samples: [], extraArgs, starts,
          ...(extraArgs.includes('--hosted-cache') ? { hostedCache: true } : {})
        }
        this.agents.set(hostName, agent)
        this.mark(hostName, !member ? 'agent started without the organisation key' : starts > 1 ? 'agent restarted' : agent.hostedCache === true ? 'hosted cache started' : 'agent started')
        return agent
      } catch (err) {
        // 60 s: on two cores at a load average of 16-28, four agents starting at once
        // took from 20 s to over 30 s to answer (namespaces and containers alike).
        if (tries > 600 || child.exitCode !== null) {
          await client.close()
          throw new CanopyError('ERR_LAB_PROCESS', `the agent on ${hostName} did not start: ${(err as Error).message} (log: ${logFile})`)
        }
        await sleep(100)
      }
    }
  }

  /** Starts `canopy agent --hosted-cache` (the branch's always-on cache) on a LAN host. */
  async startHostedCache (hostName: string): Promise<LabAgent> {
    return await this.startAgent(hostName, { extraArgs: ['--hosted-cache'] })
  }

  /** The arguments that point an agent at `hosted` (its LAN address, the default peer port, its peer id). */
  hostedCacheArgs (hosted: LabAgent): string[] {
    return ['--hosted-cache-addr', `/ip4/${hosted.host.address}/tcp/${PEER_PORT}/p2p/${hosted.peerId}`]
  }

  /**
   * Kills an agent (SIGKILL: no chance to flush anything) and starts it again on the
   * same host with the same state directory and arguments; the new process.
   */
  async restart (agent: LabAgent): Promise<LabAgent> {
    await this.leave(agent)
    return await this.startAgent(agent.host.name, { member: agent.member, extraArgs: agent.extraArgs })
  }

  /**
   * Runs the real `canopy` command line on a host against `agent`'s control socket
   * (`canopy --state-dir <its state dir> <args>`); its stdout.
   */
  async canopy (agent: LabAgent, args: string[]): Promise<string> {
    return await this.lab.exec(agent.host.name, [process.execPath, CLI, '--state-dir', agent.stateDir, ...args])
  }

  /**
   * `canopy preload <content> --detach --json` on `agent`: a job that fetches the
   * content into its cache, with no destination file; the sampler follows it.
   */
  async startPreload (agent: LabAgent): Promise<void> {
    const output = await this.canopy(agent, ['preload', this.contentUrl, '--detach', '--json'])
    let parsed: unknown
    try {
      parsed = JSON.parse(output)
    } catch {
      parsed = output.trim()
    }
    // The created job (a JobView), a list of them, or a bare id.
    const job = Array.isArray(parsed) ? parsed[0] as unknown : parsed
    const id = typeof job === 'string' ? job : (job as { id?: unknown } | null)?.id
    if (typeof id !== 'string' || id === '') throw new CanopyError('ERR_LAB_PROCESS', `canopy preload on ${agent.host.name} printed no job id: ${output.slice(0, 500)}`)
    agent.jobId = id
    agent.startedAt = this.now()
    this.mark(agent.host.name, 'preload started')
  }

  /** Whether `agent`'s cache (its API's view, what `canopy cache --json` prints) lists the whole content. */
  async cachesContent (agent: LabAgent): Promise<boolean> {
    const view = await agent.client.cache()
    // The lab has one content: an entry of its size is it (entries are completed, verified files).
    return view.entries.some(e => e.size === this.size)
  }

  /**
   * Waits until `agent`'s cache lists the whole content; the run's time then, or
   * undefined when it did not within `timeoutMs` (the scenario judges that).
   */
  async waitCached (agent: LabAgent, timeoutMs: number): Promise<number | undefined> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      throwIfAborted(this.signal)
      try {
        if (await this.cachesContent(agent)) {
          this.mark(agent.host.name, 'its cache lists the content')
          return this.now()
        }
      } catch {
        // Still starting, or restarting: ask again.
      }
      if (Date.now() > deadline) {
        this.mark(agent.host.name, `its cache did not list the content within ${timeoutMs / 1000} s`)
        return undefined
      }
      await sleep(200)
    }
  }

  /** Waits until `agent` is connected to the peer `peerId` (found by mDNS or dialled). */
  async waitPeer (agent: LabAgent, peerId: string, timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      throwIfAborted(this.signal)
      if ((await agent.client.peers()).peers.some(p => p.peerId === peerId)) return
      if (Date.now() > deadline) throw new CanopyError('ERR_LAB_TIMEOUT', `${agent.host.name} did not connect to ${peerId} within ${timeoutMs / 1000} s`)
      await sleep(100)
    }
  }

  /** Starts the lying peer (bin/liar.ts) on a LAN host; resolves with its peer id. */
  async startLiar (hostName: string): Promise<string> {
    const child = this.lab.spawn(hostName, [process.execPath, LIAR, '--url', this.contentUrl, '--swarm-key', this.swarmKeyFile, '--state-dir', join(this.workDir, 'agents', hostName)],
      join(this.workDir, 'logs', `${hostName}.log`))
    const output = await this.waitForOutput(child, '"peerId"', 'the lying peer')
    const peerId = (JSON.parse(output.split('\n').find(l => l.includes('"peerId"'))!) as { peerId: string }).peerId
    this.mark(hostName, 'lying peer started')
    return peerId
  }

  /** Waits until `agent` has at least `peers` connections (found by mDNS). */
  async waitConnected (agent: LabAgent, peers: number, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      throwIfAborted(this.signal)
      const connected = (await agent.client.status()).peer?.connected ?? 0
      if (connected >= peers) return
      if (Date.now() > deadline) throw new CanopyError('ERR_LAB_TIMEOUT', `${agent.host.name} found ${connected} of ${peers} peers by mDNS within ${timeoutMs / 1000} s`)
      await sleep(100)
    }
  }

  /** Creates the download job of the content on `agent`. */
  async startJob (agent: LabAgent): Promise<void> {
    const job = await agent.client.createJob({ name: 'lab content', files: [{ url: this.contentUrl, path: agent.outPath }], autoComplete: true })
    agent.jobId = job.id
    agent.startedAt = this.now()
    agent.last = job
    this.mark(agent.host.name, 'job started')
  }

  /** Waits until each agent's job is finished (acknowledged, error or cancelled). */
  async waitDone (agents: LabAgent[], until: (agent: LabAgent) => boolean = a => a.finishedAt !== undefined): Promise<void> {
    while (!agents.every(until)) {
      throwIfAborted(this.signal)
      await sleep(50)
    }
  }

  /** Mean fraction transferred of `agents`' jobs (0 to 1). */
  progress (agents: LabAgent[]): number {
    return agents.reduce((sum, a) => sum + (a.last?.bytes.transferred ?? 0), 0) / (agents.length * this.size)
  }

  /** Stops an agent on purpose (it leaves the swarm). */
  async leave (agent: LabAgent, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    agent.left = true
    agent.child.kill(signal)
    if (agent.child.exitCode === null && agent.child.signalCode === null) await once(agent.child, 'exit')
    this.mark(agent.host.name, `left (${signal})`)
  }

  private async sample (): Promise<void> {
    while (!this.stopSampling) {
      await Promise.all([...this.agents.values()].map(async agent => {
        if (agent.jobId === undefined || agent.finishedAt !== undefined || agent.left === true) return
        try {
          const job = await agent.client.getJob(agent.jobId)
          agent.last = job
          agent.samples.push({ t: this.now(), fromOrigin: job.bytes.fromOrigin, fromPeers: job.bytes.fromPeers, fromCache: job.bytes.fromCache })
          if (FINISHED.includes(job.state)) {
            agent.finishedAt = this.now()
            this.mark(agent.host.name, `job ${job.state}`)
          }
        } catch {
          // An agent that is going away: its last sample stands.
        }
      }))
      await sleep(SAMPLE_MS)
    }
  }

  async counters (): Promise<Counters> {
    const script = 'fetch(process.argv[1]).then(async r => process.stdout.write(await r.text()))'
    const text = await this.lab.exec('dc', [process.execPath, '-e', script, `http://${ADDRESSES.origin}:${ORIGIN_PORT}/metrics`])
    let originBytes = 0
    let originContentBytes = 0
    for (const line of text.split('\n')) {
      if (!line.startsWith('canopy_origin_bytes_sent_total{')) continue
      const bytes = Number(line.split(' ').at(-1))
      originBytes += bytes
      if (line.includes('kind="content"')) originContentBytes += bytes
    }
    return { originBytes, originContentBytes, wanBytes: (await this.lab.wanCounters()).towardBranch }
  }

  /** Whether the agent's file has the content's SHA-256. */
  async fileCorrect (agent: LabAgent): Promise<boolean> {
    try {
      return await sha256File(agent.outPath) === this.sha256
    } catch {
      return false
    }
  }

  async close (): Promise<void> {
    this.stopSampling = true
    await this.sampling
    await Promise.all([...this.agents.values()].map(async a => await a.client.close()))
  }
}
