/** The live progress of `canopy get` on stderr. */
import type { JobView } from '@canopy/core'
import { formatProgressLine, formatState } from './format.ts'

/** Redraws at most this often (4 per second). */
const REDRAW_MS = 250
/** The rate is measured over this window. */
const RATE_WINDOW_MS = 5000
/** While a job waits to retry, its line counts down this often (no event comes meanwhile). */
const COUNTDOWN_MS = 1000

export interface ProgressStream {
  isTTY?: boolean
  columns?: number
  write: (text: string) => unknown
}

/**
 * On a terminal: one line, redrawn in place at most 4 times a second (bar, bytes,
 * percent, rate, ETA, state and reason). Elsewhere: a line only when the job stops
 * moving forward for a reason the user should know (retrying, suspended).
 */
export class ProgressReporter {
  readonly #stream: ProgressStream
  readonly #tty: boolean
  readonly #now: () => number
  readonly #samples: Array<{ t: number, bytes: number }> = []
  #lastDraw = -Infinity
  #drawn = false
  #lastNote = ''
  /** The state and reason on the line now: a change is drawn at once, never skipped by the redraw limit. */
  #drawnState = ''
  #countdown: NodeJS.Timeout | undefined

  constructor (stream: ProgressStream, opts: { tty?: boolean, now?: () => number } = {}) {
    this.#stream = stream
    this.#tty = opts.tty ?? stream.isTTY === true
    this.#now = opts.now ?? Date.now
  }

  /** Bytes per second over the last few seconds, once there is enough to tell. */
  rate (): number | undefined {
    const s = this.#samples
    if (s.length < 2) return undefined
    const dt = s[s.length - 1].t - s[0].t
    if (dt < 500) return undefined
    return Math.max(0, (s[s.length - 1].bytes - s[0].bytes) * 1000 / dt)
  }

  update (job: JobView): void {
    const t = this.#now()
    this.#samples.push({ t, bytes: job.bytes.transferred })
    while (this.#samples.length > 2 && t - this.#samples[0].t > RATE_WINDOW_MS) this.#samples.shift()
    if (job.state !== 'transferring') this.#samples.splice(0, this.#samples.length - 1)

    if (this.#tty) {
      // A state change is always drawn: the last event before a long wait (a retry
      // in minutes) is often one, and skipping it left "connecting" on screen.
      const state = `${job.state}:${job.reason ?? ''}`
      if (t - this.#lastDraw < REDRAW_MS && state === this.#drawnState) return
      this.#drawnState = state
      this.#draw(job, t)
      clearInterval(this.#countdown)
      this.#countdown = undefined
      if (job.state === 'transient_error') {
        this.#countdown = setInterval(() => this.#draw(job, this.#now()), COUNTDOWN_MS)
        this.#countdown.unref()
      }
      return
    }
    // Keyed on the cause, not on the reason text: a retry's reason counts down every second.
    const key = job.state === 'transient_error'
      ? `${job.state}:${job.error?.code ?? ''}:${job.error?.message ?? job.reason ?? ''}`
      : job.state === 'suspended' ? job.state : ''
    if (key !== '' && key !== this.#lastNote) this.#stream.write(`canopy: job ${job.id}: ${formatState(job)}\n`)
    this.#lastNote = key
  }

  #draw (job: JobView, t: number): void {
    this.#lastDraw = t
    const line = formatProgressLine(job, { rate: this.rate(), columns: this.#stream.columns, now: t })
    this.#stream.write(`\r${line}\x1b[K`)
    this.#drawn = true
  }

  /** Removes the progress line, before a final message. */
  clear (): void {
    clearInterval(this.#countdown)
    this.#countdown = undefined
    if (this.#drawn) this.#stream.write('\r\x1b[K')
    this.#drawn = false
  }
}
