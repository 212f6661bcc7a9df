/**
 * The less-than-best-effort controller of background transfers: a pure function of
 * delay samples and time (no timers, no I/O), so that it can be tested sample by
 * sample. Its output is the rate at which the agent may read from one WAN path.
 *
 * Ideas taken from LEDBAT (RFC 6817), LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus,
 * what Windows uses for BITS and Delivery Optimization) and receiver-driven LEDBAT
 * (RFC 9840), adapted to a receiver that sees round-trip times, not one-way delays:
 *
 * - base delay: the minimum round-trip time over `baseBuckets` buckets of
 *   `baseBucketMs` each (default 10 × 1 minute, RFC 6817's BASE_HISTORY), so a
 *   route that gets slower is learnt within 10 minutes and one that gets faster at once;
 * - current delay: the minimum of the last `currentSamples` samples (RFC 6817's
 *   CURRENT_FILTER), which discards one-off spikes (a busy event loop, a lost packet);
 * - queueing delay = current − base, held under `targetMs` (default 60 ms, as LEDBAT++);
 * - above the target: multiplicative decrease (LEDBAT++), deeper the further above:
 *   `decreasePerSecond` e-folds per second per target's worth of excess, counted up
 *   to one target (a loss-based flow's deep queue takes us to the floor in ~2.5 s);
 *   applied continuously at each sample rather than as one cut per round trip, since
 *   the samples lag the rate by a round trip and the filter;
 * - below a quarter of the target: multiplicative growth, `growthPerSecond` e-folds
 *   per second on an empty queue (from the floor to a 20 Mbit/s link in ~4 s),
 *   slowing as the queue grows; between a quarter of the target and the target it
 *   holds (see GROW_BELOW);
 * - periodic slowdown (LEDBAT++): every `slowdownEveryMs` the rate drops to the floor
 *   for a couple of round trips so that our own queue drains and the base delay is
 *   measured again; then the rate it had is restored;
 * - no samples for `staleMs`: the rate falls back to `initialRate` (it cannot know
 *   whether it hurts anyone, so it does not keep a high rate blind);
 * - application-limited: the rate never runs ahead of 8 × what was actually read
 *   (a transfer held back by a disk or a cap must not build credit for a later burst);
 * - someone else under the target: in the hold zone (between GROW_BELOW × target and
 *   the target), when what we read is well under the path's capacity (the most we read
 *   in a second over the last CAPACITY_MS), the queue is not ours: another flow holds
 *   it, and it decreases (`holdDecreasePerSecond`). A flow limited by its receive window
 *   (curl, measured in the lab) keeps the queue under the target and its rate is window
 *   / RTT: a standing queue of ours just under the target halved it (see SHARE_OF_CAPACITY).
 */
export interface DelayControllerInit {
  /** Queueing delay to stay under, ms. Default 60. */
  targetMs?: number
  /** Lowest rate, bytes/s: what a background transfer keeps while it yields. Default 16 KiB/s. */
  minRate?: number
  /** Highest rate, bytes/s. Default 10 GB/s (no limit in practice). */
  maxRate?: number
  /** Rate at the start and after losing the samples, bytes/s. Default 256 KiB/s. */
  initialRate?: number
  /** Growth on an empty queue, e-folds per second, below the rate where the queue last built up. Default 1.2. */
  growthPerSecond?: number
  /** Decrease when above the target, e-folds per second per target's worth of excess queue. Default 2. */
  decreasePerSecond?: number
  /** Length of one base-delay bucket, ms. Default 60 000. */
  baseBucketMs?: number
  /** Buckets kept. Default 10. */
  baseBuckets?: number
  /** Samples the current delay is the minimum of. Default 3. */
  currentSamples?: number
  /** Without a sample for this long, ms, the rate falls back to initialRate. Default 3000. */
  staleMs?: number
  /** Time between periodic slowdowns, ms; 0: never. Default 60 000. */
  slowdownEveryMs?: number
  /** Decrease in the hold zone when another flow holds the queue, e-folds per second. Default 1.5. */
  holdDecreasePerSecond?: number
}

export type ControllerState = 'starting' | 'growing' | 'yielding' | 'slowdown' | 'blind'

export interface ControllerSnapshot {
  rate: number
  state: ControllerState
  /** Current − base, ms (undefined before the first sample). */
  queueDelayMs?: number
  baseDelayMs?: number
  currentDelayMs?: number
  targetMs: number
}

export const DELAY_CONTROLLER_DEFAULTS = {
  targetMs: 60,
  minRate: 16 * 1024,
  maxRate: 10e9,
  initialRate: 256 * 1024,
  growthPerSecond: 1.2,
  decreasePerSecond: 2,
  baseBucketMs: 60_000,
  baseBuckets: 10,
  currentSamples: 3,
  staleMs: 3000,
  slowdownEveryMs: 60_000,
  holdDecreasePerSecond: 1.5
} as const

/** Longest step of growth computed at once (a long gap between updates is not credit). */
const MAX_STEP_S = 0.5
/**
 * Excess queue counted at most, in targets: the decrease is at most decreasePerSecond
 * e-folds per second. A receiver's cut shows late (the sender fills our socket's
 * receive buffer, up to megabytes with Linux autotuning, before its window closes),
 * so a steeper decrease collapses to the floor on one overshoot.
 */
const MAX_OVER = 1
/** Slowdown length: 2 round trips, within these bounds (ms). */
const SLOWDOWN_MIN_MS = 250
const SLOWDOWN_MAX_MS = 1000
/** The application-limited bound: the rate stays within this multiple of what was read. */
const APP_LIMIT_FACTOR = 8
/**
 * The controller grows only while the queueing delay is under this fraction of the
 * target, and holds between it and the target. Why not LEDBAT's symmetric gain: a
 * receiver that paces its reads sees a queue that jumps (near zero below the path's
 * capacity, the window's worth above it), and a loss-based flow such as curl runs
 * with a queue that swings between ~20 ms and the buffer's depth (measured in the
 * lab: 20-130 ms behind a 300 ms tbf); growing anywhere under the target, we took a
 * share back at every swing.
 */
const GROW_BELOW = 0.25
/** Window over which the bytes actually read are measured, ms. */
const USE_WINDOW_MS = 1000
/** The path's capacity is the most read in one use window over this long, ms. */
const CAPACITY_MS = 30_000
/**
 * In the hold zone, reading less than this share of the capacity means the queue is
 * someone else's. Alone, a queue over GROW_BELOW × target means the link is full, so
 * what we read is the capacity (within the swings of one-second windows).
 */
const SHARE_OF_CAPACITY = 0.75

export class DelayController {
  readonly targetMs: number
  private readonly init: Required<DelayControllerInit>
  private rateNow: number
  private state: ControllerState = 'starting'
  /** Minimum RTT per bucket, newest last, with the bucket's start. */
  private readonly buckets: Array<{ start: number, min: number }> = []
  private readonly recent: number[] = []
  private lastSampleAt = -Infinity
  private lastUpdateAt?: number
  private nextSlowdownAt?: number
  private slowdownUntil?: number
  private rateBeforeSlowdown = 0
  /** Bytes read in the current and the previous use window. */
  private useWindowStart = -Infinity
  private useBytes = 0
  private usedRate?: number
  /** What was read in each recent use window (bytes/s) with its end, for the capacity. */
  private readonly usedHistory: Array<{ at: number, rate: number }> = []
  /** The most read in one use window over CAPACITY_MS (updated once per window, not per sample). */
  private capacity?: number

  constructor (init: DelayControllerInit = {}) {
    this.init = { ...DELAY_CONTROLLER_DEFAULTS, ...Object.fromEntries(Object.entries(init).filter(([, v]) => v !== undefined)) }
    const { targetMs, minRate, maxRate, initialRate } = this.init
    if (!(targetMs > 0) || !(minRate > 0) || !(maxRate >= minRate)) throw new RangeError('targetMs and minRate must be positive, maxRate at least minRate')
    this.targetMs = targetMs
    this.rateNow = Math.min(maxRate, Math.max(minRate, initialRate))
  }

  /** A round-trip time measured at `at` (ms, any monotonic clock). */
  onSample (rttMs: number, at: number): void {
    if (!Number.isFinite(rttMs) || rttMs < 0) return
    const { baseBucketMs, baseBuckets, currentSamples } = this.init
    const last = this.buckets.at(-1)
    if (last === undefined || at - last.start >= baseBucketMs) {
      this.buckets.push({ start: at, min: rttMs })
      if (this.buckets.length > baseBuckets) this.buckets.shift()
    } else {
      last.min = Math.min(last.min, rttMs)
    }
    this.recent.push(rttMs)
    if (this.recent.length > currentSamples) this.recent.shift()
    this.lastSampleAt = at
    this.nextSlowdownAt ??= at + this.init.slowdownEveryMs
    this.update(at)
  }

  /** Bytes the transfers of this path read (for the application-limited bound). */
  onBytes (bytes: number, at: number): void {
    if (at - this.useWindowStart >= USE_WINDOW_MS) {
      if (Number.isFinite(this.useWindowStart)) {
        this.usedRate = this.useBytes * 1000 / Math.max(USE_WINDOW_MS, at - this.useWindowStart)
        this.usedHistory.push({ at, rate: this.usedRate })
        while (this.usedHistory.length > 0 && this.usedHistory[0].at < at - CAPACITY_MS) this.usedHistory.shift()
        this.capacity = this.usedHistory.length < 2 ? undefined : Math.max(...this.usedHistory.map(h => h.rate))
      }
      this.useWindowStart = at
      this.useBytes = 0
    }
    this.useBytes += bytes
  }

  get baseDelayMs (): number | undefined {
    return this.buckets.length === 0 ? undefined : Math.min(...this.buckets.map(b => b.min))
  }

  get currentDelayMs (): number | undefined {
    return this.recent.length === 0 ? undefined : Math.min(...this.recent)
  }

  get queueDelayMs (): number | undefined {
    const base = this.baseDelayMs
    const current = this.currentDelayMs
    return base === undefined || current === undefined ? undefined : current - base
  }

  /** The allowed rate at `at`, bytes/s (advances the controller to `at`). */
  rate (at: number): number {
    this.update(at)
    return this.rateNow
  }

  snapshot (at: number): ControllerSnapshot {
    this.update(at)
    const q = this.queueDelayMs
    return {
      rate: this.rateNow,
      state: this.state,
      targetMs: this.targetMs,
      ...(q !== undefined ? { queueDelayMs: q, baseDelayMs: this.baseDelayMs, currentDelayMs: this.currentDelayMs } : {})
    }
  }

  private update (at: number): void {
    const { minRate, maxRate, initialRate, growthPerSecond, staleMs, slowdownEveryMs } = this.init
    const dt = Math.min(MAX_STEP_S, Math.max(0, (at - (this.lastUpdateAt ?? at)) / 1000))
    this.lastUpdateAt = Math.max(this.lastUpdateAt ?? at, at)

    if (this.slowdownUntil !== undefined) {
      if (at < this.slowdownUntil) return
      // Back to where it was: the slowdown was a measurement, not a verdict.
      this.slowdownUntil = undefined
      this.rateNow = this.rateBeforeSlowdown
    }
    if (at - this.lastSampleAt > staleMs) {
      if (Number.isFinite(this.lastSampleAt) || this.state !== 'starting') {
        this.state = 'blind'
        this.rateNow = Math.min(this.rateNow, initialRate)
      }
      return
    }
    const q = this.queueDelayMs
    const current = this.currentDelayMs
    if (q === undefined || current === undefined) return

    if (slowdownEveryMs > 0 && this.nextSlowdownAt !== undefined && at >= this.nextSlowdownAt && this.state === 'growing') {
      this.rateBeforeSlowdown = this.rateNow
      this.rateNow = minRate
      this.state = 'slowdown'
      this.slowdownUntil = at + Math.min(SLOWDOWN_MAX_MS, Math.max(SLOWDOWN_MIN_MS, 2 * current))
      this.nextSlowdownAt = at + slowdownEveryMs
      return
    }

    if (q > this.targetMs) {
      this.state = 'yielding'
      // Continuous, not one cut per round trip: the samples lag the rate by a round
      // trip and the filter, and discrete cuts on a lagging signal cut several times
      // for one excess. Bounded at MAX_OVER × the target's worth of excess.
      const over = Math.min(MAX_OVER, (q - this.targetMs) / this.targetMs)
      this.rateNow *= Math.exp(-this.init.decreasePerSecond * over * dt)
    } else if (q > GROW_BELOW * this.targetMs && this.othersQueue()) {
      this.state = 'yielding'
      this.rateNow *= Math.exp(-this.init.holdDecreasePerSecond * dt)
    } else {
      this.state = 'growing'
      // Grows only while the queue is nearly empty, and holds between that and the target.
      const grown = this.rateNow * Math.exp(growthPerSecond * Math.max(0, 1 - q / (GROW_BELOW * this.targetMs)) * dt)
      // Growth stops (nothing shrinks) once the rate is well ahead of what is read.
      const limit = this.usedRate === undefined ? Infinity : Math.max(initialRate, APP_LIMIT_FACTOR * this.usedRate)
      this.rateNow = Math.min(grown, Math.max(this.rateNow, limit))
    }
    this.rateNow = Math.min(maxRate, Math.max(minRate, this.rateNow))
  }

  /** Whether the queue in the hold zone is another flow's: we read well under the path's capacity. */
  private othersQueue (): boolean {
    return this.usedRate !== undefined && this.capacity !== undefined && this.usedRate < SHARE_OF_CAPACITY * this.capacity
  }
}
