import { formatBytes } from '@canopy/core'
import type { BandwidthStatus, JobPriority, Logger, PolicyView } from '@canopy/core'
import { DEFAULT_POLICY, capsInForce, describeCap, inWorkHours, nextPolicyEdge, writePolicy } from './policy.ts'
import type { BackgroundPriority, BandwidthPolicy, CapInForce } from './policy.ts'
import { DelayController } from './delay-controller.ts'
import type { ControllerSnapshot, DelayControllerInit } from './delay-controller.ts'
import { ByteWindow, TokenBucket } from './pacer.ts'
import { PeerServing } from './peer-serving.ts'
import type { ReadPacer } from './pacer.ts'

/** Times one small request to the origin (see headProbe); rejects when it could not. */
export type Probe = (signal: AbortSignal) => Promise<void>

export interface WanPathsInit {
  /** Background transfers yield to other traffic. Default true. */
  enabled?: boolean
  /** Queueing delay the controller keeps its traffic under, ms. Default 60. */
  targetDelayMs?: number
  /** Time between delay probes of a path with background transfers, ms. Default 50. */
  probeIntervalMs?: number
  /** Longest wait for one probe, ms. Default 5000. */
  probeTimeoutMs?: number
  /** The rest of the controller's settings (tests, the lab). */
  controller?: DelayControllerInit
}

export interface WanPathsComponents {
  logger: Logger
  /** Monotonic clock, ms. Default performance.now. */
  now?: () => number
  /** Wall clock for the work-hours schedule, ms since the epoch. Default Date.now. */
  clock?: () => number
}

export interface PathView {
  /** The origin's host:port (one controller per WAN path, i.e. per origin host). */
  host: string
  /** Background transfers on it now. */
  transfers: number
  controller: ControllerSnapshot
}

/** One transfer's hold on its WAN path. */
export interface PathLease {
  /** What the transfer's reads go through; unlimited while the job is foreground. */
  readonly pacer: ReadPacer
  /** Why the transfer runs slower than it could, in plain words; undefined when it does not. */
  why: () => string | undefined
  release: () => void
}

interface Holder {
  background: () => boolean
  probe: Probe
}

/** How long a path nobody holds keeps its controller, ms. */
const PATH_KEEP_MS = 10 * 60_000

/** Smallest window of a path, bytes: two of the smallest requests. */
const MIN_WINDOW = 32 * 1024

class WanPath {
  readonly controller: DelayController
  readonly bucket: TokenBucket
  readonly window: ByteWindow
  readonly holders = new Set<Holder>()
  /** When the last holder left (performance.now()); undefined while held. */
  idleSince?: number
  private probing = false
  private timer?: NodeJS.Timeout
  private readonly stopped = new AbortController()
  readonly host: string
  private readonly init: Required<Omit<WanPathsInit, 'controller'>>
  private readonly now: () => number
  private readonly logger: Logger

  constructor (host: string, init: Required<Omit<WanPathsInit, 'controller'>>, controller: DelayControllerInit, now: () => number, logger: Logger) {
    this.host = host
    this.init = init
    this.now = now
    this.logger = logger
    this.controller = new DelayController({ ...controller, targetMs: init.targetDelayMs })
    this.bucket = new TokenBucket({ rate: () => this.controller.rate(this.now()), now })
    // Bytes in flight that fill the idle round trip plus the target's worth of queue
    // at the rate allowed: at that rate the queue settles at the target; above it the
    // queue the window allows grows with the rate, and the controller sees it.
    this.window = new ByteWindow(() => Math.max(MIN_WINDOW, this.controller.rate(this.now()) * ((this.controller.baseDelayMs ?? 0) + this.controller.targetMs) / 1000))
  }

  get backgroundCount (): number {
    let n = 0
    for (const h of this.holders) if (h.background()) n++
    return n
  }

  /** Keeps a probe loop running while a background transfer holds the path. */
  wake (): void {
    if (this.probing || this.timer !== undefined || this.stopped.signal.aborted || this.backgroundCount === 0) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      void this.probeOnce()
    }, this.init.probeIntervalMs)
    // A probe loop never keeps the process alive.
    this.timer.unref()
  }

  private async probeOnce (): Promise<void> {
    const holder = [...this.holders].reverse().find(h => h.background())
    if (holder === undefined) return
    this.probing = true
    const started = this.now()
    try {
      await holder.probe(AbortSignal.any([this.stopped.signal, AbortSignal.timeout(this.init.probeTimeoutMs)]))
      this.controller.onSample(this.now() - started, this.now())
    } catch (err) {
      // No sample: a controller without samples falls back to a low rate by itself.
      if (!this.stopped.signal.aborted) this.logger.debug('delay probe failed', { host: this.host, err: String(err) })
    } finally {
      this.probing = false
      this.wake()
    }
  }

  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.stopped.abort()
  }
}

/**
 * The WAN paths background transfers use, one per origin host, each with one
 * delay controller and one token bucket that every background transfer to that
 * host shares (so two background jobs together yield like one). Foreground
 * transfers take a lease too, but their reads are never paced: a job whose priority
 * is raised to foreground mid-transfer runs at full speed from its next read.
 */
export class WanPaths {
  private readonly paths = new Map<string, WanPath>()
  private readonly init: Required<Omit<WanPathsInit, 'controller'>>
  private readonly controllerInit: DelayControllerInit
  private readonly logger: Logger
  private readonly now: () => number
  private readonly clock: () => number
  private policyNow: BandwidthPolicy = DEFAULT_POLICY
  private readonly capBuckets = new Map<string, TokenBucket>()
  private serving?: PeerServing

  constructor (components: WanPathsComponents, init: WanPathsInit = {}) {
    this.logger = components.logger
    this.now = components.now ?? (() => performance.now())
    this.clock = components.clock ?? Date.now
    this.init = {
      enabled: init.enabled ?? true,
      targetDelayMs: init.targetDelayMs ?? 60,
      probeIntervalMs: init.probeIntervalMs ?? 50,
      probeTimeoutMs: init.probeTimeoutMs ?? 5000
    }
    this.controllerInit = init.controller ?? {}
  }

  get enabled (): boolean {
    return this.init.enabled
  }

  /**
   * A transfer from `url` starts. `background()` says, at each read, whether the
   * job is background now; `probe` times one small request to the same origin with
   * the job's credentials.
   */
  lease (url: string | URL, priority: () => JobPriority, probe: Probe, jobCap: () => number | undefined = () => undefined): PathLease {
    const host = new URL(url).host
    const background = (): boolean => priority() !== 'foreground'
    // The caps of policy and of the job itself, whatever the path's controller says.
    const capped = this.capPacer(priority, jobCap)
    if (!this.init.enabled) {
      return {
        pacer: capped,
        why: () => this.capReason(priority, jobCap),
        release: () => {}
      }
    }
    this.forgetIdlePaths()
    let path = this.paths.get(host)
    if (path === undefined) this.paths.set(host, path = new WanPath(host, this.init, this.controllerInit, this.now, this.logger))
    const p = path
    const holder: Holder = { background, probe }
    p.holders.add(holder)
    p.idleSince = undefined
    p.wake()
    let released = false
    return {
      pacer: {
        readSize: () => Math.min(capped.readSize(), background() ? p.bucket.readSize() : Infinity),
        consumed: (bytes) => {
          const capWait = capped.consumed(bytes)
          if (!background()) return capWait
          p.wake()
          p.controller.onBytes(bytes, this.now())
          return Math.max(capWait, p.bucket.consumed(bytes))
        },
        window: {
          requestSize: () => background() ? p.window.requestSize() : Infinity,
          acquire: async (bytes, signal) => background() ? await p.window.acquire(bytes, signal) : () => {}
        }
      },
      why: () => this.capReason(priority, jobCap) ?? (background() ? describe(p.controller.snapshot(this.now())) : undefined),
      release: () => {
        if (released) return
        released = true
        p.holders.delete(holder)
        // Kept a while without holders (its probes stop by themselves): the next
        // transfer from this origin, e.g. the job that takes the slot after a time
        // slice, goes on at the rate and with the base delay learnt, not from scratch.
        if (p.holders.size === 0) p.idleSince = this.now()
      }
    }
  }

  get policy (): BandwidthPolicy {
    return this.policyNow
  }

  /** Replaces the policy in force (already parsed and checked: see parsePolicy). */
  setPolicy (policy: BandwidthPolicy): void {
    this.policyNow = policy
  }

  /** The policy caps in force now for a job of `priority`, the tightest first. */
  capsFor (priority: JobPriority): CapInForce[] {
    return capsInForce(this.policyNow, priority, this.clock())
  }

  /** What the scheduler needs of the policy (scheduler/policy.ts CapsInput): the cap of 0 blocking a priority now, and when the caps next change by themselves. */
  capsNow (): { blocking: (priority: BackgroundPriority) => CapInForce | undefined, changesAt?: number } {
    const at = this.clock()
    const changesAt = nextPolicyEdge(this.policyNow, at)
    return {
      blocking: (priority) => capsInForce(this.policyNow, priority, at).find(c => c.rate === 0),
      ...(changesAt !== undefined ? { changesAt } : {})
    }
  }

  /** Token buckets of the caps: one for all background jobs, one per priority, one per job. */
  private capPacer (priority: () => JobPriority, jobCap: () => number | undefined): ReadPacer {
    const own = new TokenBucket({ rate: () => jobCap() ?? Infinity, now: this.now })
    return {
      readSize: () => {
        const p = priority()
        let size = own.readSize()
        if (p !== 'foreground') size = Math.min(size, this.capBucket('background').readSize(), this.capBucket(p).readSize())
        return size
      },
      consumed: (bytes) => {
        const p = priority()
        let wait = own.consumed(bytes)
        if (p !== 'foreground') wait = Math.max(wait, this.capBucket('background').consumed(bytes), this.capBucket(p).consumed(bytes))
        return wait
      }
    }
  }

  private capBucket (key: 'background' | BackgroundPriority): TokenBucket {
    let bucket = this.capBuckets.get(key)
    if (bucket === undefined) {
      this.capBuckets.set(key, bucket = new TokenBucket({ rate: () => this.capRate(key), now: this.now }))
    }
    return bucket
  }

  /** The cap `key` in force now, bytes/s (Infinity: none). */
  private capRate (key: 'background' | BackgroundPriority): number {
    const caps = capsInForce(this.policyNow, key === 'background' ? 'low' : key, this.clock()).filter(c => c.key === key)
    return caps[0]?.rate ?? Infinity
  }

  /** "capped by policy at 2 MiB/s (work hours)", "blocked by policy (work hours)", "capped at 1 MiB/s (this job's limit)". */
  private capReason (priority: () => JobPriority, jobCap: () => number | undefined): string | undefined {
    const [cap] = this.capsFor(priority())
    const own = jobCap()
    if (own !== undefined && (cap === undefined || own < cap.rate)) {
      return own === 0 ? 'blocked: this job\'s rate limit is 0' : `capped at ${formatBytes(own)}/s (this job's rate limit)`
    }
    return cap === undefined ? undefined : describeCap(cap)
  }

  /**
   * The gate of peer serving (BranchCache's cap on peer-caching bandwidth, and the
   * WAN caps for serving that is not exempt from them): see peer-serving.ts. The
   * peer exchange asks it before it offers or sends blocks.
   */
  get peerServing (): PeerServing {
    return (this.serving ??= new PeerServing({
      policy: () => this.policyNow,
      backgroundCap: { rate: () => this.capRate('background'), bucket: this.capBucket('background') },
      now: this.now
    }))
  }

  /** Paths nobody has held for PATH_KEEP_MS are forgotten (checked at each new lease). */
  private forgetIdlePaths (): void {
    const now = this.now()
    for (const [host, p] of this.paths) {
      if (p.idleSince !== undefined && now - p.idleSince > PATH_KEEP_MS) {
        p.stop()
        this.paths.delete(host)
      }
    }
  }

  views (): PathView[] {
    const now = this.now()
    return [...this.paths.values()].filter(p => p.holders.size > 0).map(p => ({ host: p.host, transfers: p.backgroundCount, controller: p.controller.snapshot(now) }))
  }

  close (): void {
    for (const p of this.paths.values()) p.stop()
    this.paths.clear()
  }
}

/** The plain-language reason a background transfer runs slower than the link (job views). */
export function describe (s: ControllerSnapshot): string | undefined {
  const q = s.queueDelayMs === undefined ? '' : ` (queue delay ${Math.round(s.queueDelayMs)} ms)`
  switch (s.state) {
    case 'yielding': return `yielding to other traffic${q}`
    case 'slowdown': return 'measuring the idle delay of the path (a pause of a few round trips)'
    case 'blind': return 'no delay measurements from the origin: holding a low rate'
    case 'starting': return 'measuring the path before speeding up'
    default: return undefined
  }
}

/** The bandwidth policy in force, as GET /v1/policy gives it. */
export function policyView (paths: WanPaths, at: number): PolicyView {
  return { policy: writePolicy(paths.policy), workHoursNow: inWorkHours(paths.policy, at) }
}

/** What `canopy status` shows of bandwidth: the target, the policy and each WAN path's controller. */
export function bandwidthStatus (paths: WanPaths, targetDelayMs: number, at: number): BandwidthStatus {
  return {
    targetDelayMs,
    policy: policyView(paths, at),
    paths: paths.views().map(p => ({
      host: p.host,
      transfers: p.transfers,
      rate: Math.round(p.controller.rate),
      state: p.controller.state,
      ...(p.controller.queueDelayMs !== undefined ? { queueDelayMs: Math.round(p.controller.queueDelayMs * 10) / 10, baseDelayMs: Math.round(p.controller.baseDelayMs! * 10) / 10 } : {})
    }))
  }
}
