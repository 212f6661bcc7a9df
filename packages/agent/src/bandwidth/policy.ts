/**
 * Bandwidth policy, the agent's equivalent of BITS group policy and Delivery
 * Optimization's settings: caps on background transfers (all of them, and per
 * priority), a weekly work-hours schedule with caps of its own, a cap on what the
 * agent serves to peers, and whether LAN peer traffic counts against the WAN caps.
 * Foreground jobs are never capped by policy (as BITS). A cap of 0 blocks.
 *
 * The written form (config file, API) is JSON; rates are text ("2MiB/s", "512KiB/s",
 * "20mbit", a plain number of bytes/s) so an administrator writes what they mean:
 *
 *   {
 *     "background": "10MiB/s",
 *     "low": "2MiB/s",
 *     "workHours": { "days": "mon-fri", "from": "08:00", "to": "17:00", "background": "1MiB/s", "low": 0 },
 *     "peerServing": "20MiB/s",
 *     "lanPeersExempt": true
 *   }
 */
import { CanopyError, formatBytes } from '@canopy/core'
import type { JobPriority } from '@canopy/core'

export type BackgroundPriority = Exclude<JobPriority, 'foreground'>

/** Caps in bytes/s; absent: no cap. */
export interface Caps {
  /** Every background job together. */
  background?: number
  high?: number
  normal?: number
  low?: number
}

export interface WorkHours extends Caps {
  /** Days of the week it applies, 0 = Sunday … 6 = Saturday. */
  days: number[]
  /** Minutes after midnight, local time: [from, to). */
  from: number
  to: number
}

export interface BandwidthPolicy extends Caps {
  workHours?: WorkHours
  /** What the agent serves to peers, bytes/s. */
  peerServing?: number
  /** LAN peer traffic does not count against the WAN caps. Default true. */
  lanPeersExempt: boolean
}

export const DEFAULT_POLICY: BandwidthPolicy = { lanPeersExempt: true }

/** A policy that does not parse: `key` names the setting, the message says what to write. */
export class PolicyError extends CanopyError {
  readonly key: string

  constructor (key: string, message: string) {
    super('ERR_INVALID_POLICY', `${key}: ${message}`)
    this.name = 'PolicyError'
    this.key = key
  }
}

const RATE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1000,
  kib: 1024,
  mb: 1e6,
  mib: 1024 ** 2,
  gb: 1e9,
  gib: 1024 ** 3,
  kbit: 1000 / 8,
  mbit: 1e6 / 8,
  gbit: 1e9 / 8
}

/** "2MiB/s", "512 KiB/s", "20mbit", "1.5MB/s", 1048576 → bytes/s. 0 is allowed (blocks). */
export function parseRate (value: unknown, key: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new PolicyError(key, `${value} is not a rate: give 0 or more bytes per second`)
    // Beyond 2^53 a number is rounded: as large as text is allowed, no larger.
    if (!Number.isSafeInteger(Math.floor(value))) throw new PolicyError(key, `${value} is too large`)
    return Math.floor(value)
  }
  if (typeof value !== 'string') throw new PolicyError(key, 'a rate is a number of bytes/s or text such as "2MiB/s", "512KiB/s" or "20mbit"')
  const match = /^\s*(-?\d+(?:\.\d+)?)\s*([a-z]*)(?:\/s|ps)?\s*$/i.exec(value)
  const unit = match === null ? undefined : RATE_UNITS[match[2].toLowerCase()]
  if (match === null || unit === undefined) throw new PolicyError(key, `"${value}" is not a rate: write e.g. "2MiB/s", "512KiB/s", "20mbit" or a number of bytes/s`)
  const rate = Number(match[1]) * unit
  if (rate < 0) throw new PolicyError(key, `"${value}" is negative: a cap is 0 (blocked) or more`)
  if (!Number.isSafeInteger(Math.floor(rate))) throw new PolicyError(key, `"${value}" is too large`)
  return Math.floor(rate)
}

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat']

/** "mon-fri", "mon,wed,fri", "sat-sun" → day numbers (a range may wrap: "fri-mon"). */
export function parseDays (value: unknown, key: string): number[] {
  if (typeof value !== 'string' || value.trim() === '') throw new PolicyError(key, 'days are text such as "mon-fri" or "mon,wed,fri"')
  const days = new Set<number>()
  for (const part of value.toLowerCase().split(',').map(p => p.trim())) {
    const [a, b] = part.split('-').map(p => p.trim().slice(0, 3))
    const from = DAY_NAMES.indexOf(a)
    const to = b === undefined ? from : DAY_NAMES.indexOf(b)
    if (from < 0 || to < 0 || part.split('-').length > 2) throw new PolicyError(key, `"${part}" is not a day or a range of days: use sun, mon, tue, wed, thu, fri, sat, e.g. "mon-fri"`)
    for (let d = from; ; d = (d + 1) % 7) {
      days.add(d)
      if (d === to) break
    }
  }
  return [...days].sort((x, y) => x - y)
}

/** "08:00" → 480 minutes; "24:00" is the end of the day. */
export function parseClock (value: unknown, key: string): number {
  const match = typeof value === 'string' ? /^\s*(\d{1,2}):(\d{2})\s*$/.exec(value) : null
  const minutes = match === null ? NaN : Number(match[1]) * 60 + Number(match[2])
  if (match === null || Number(match[2]) > 59 || minutes > 24 * 60) throw new PolicyError(key, `${JSON.stringify(value)} is not a time of day: write HH:MM, e.g. "08:00" or "17:30"`)
  return minutes
}

const CAP_KEYS = ['background', 'high', 'normal', 'low'] as const
const TOP_KEYS = [...CAP_KEYS, 'workHours', 'peerServing', 'lanPeersExempt']
const WORK_KEYS = [...CAP_KEYS, 'days', 'from', 'to']

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function readCaps (input: Record<string, unknown>, prefix: string): Caps {
  const caps: Caps = {}
  for (const key of CAP_KEYS) {
    if (input[key] !== undefined && input[key] !== null) caps[key] = parseRate(input[key], `${prefix}${key}`)
  }
  return caps
}

/**
 * Reads a policy from its written form. Anything it cannot read is a PolicyError
 * naming the key; nothing is half-applied (the caller keeps its previous policy).
 * One work-hours window per week: a window that is empty (from = to, no days) is
 * refused, and so is one that ends before it starts (it would wrap past midnight
 * and overlap the next day's: write two days' hours instead).
 */
export function parsePolicy (input: unknown): BandwidthPolicy {
  if (!isObject(input)) throw new PolicyError('policy', 'a policy is a JSON object, e.g. {"low": "2MiB/s"}')
  for (const key of Object.keys(input)) {
    if (!TOP_KEYS.includes(key)) throw new PolicyError(key, `unknown setting; a policy may set ${TOP_KEYS.join(', ')}`)
  }
  const policy: BandwidthPolicy = { ...readCaps(input, ''), lanPeersExempt: true }
  if (input.peerServing !== undefined && input.peerServing !== null) policy.peerServing = parseRate(input.peerServing, 'peerServing')
  if (input.lanPeersExempt !== undefined) {
    if (typeof input.lanPeersExempt !== 'boolean') throw new PolicyError('lanPeersExempt', 'true or false')
    policy.lanPeersExempt = input.lanPeersExempt
  }
  const w = input.workHours
  if (w !== undefined && w !== null) {
    if (!isObject(w)) throw new PolicyError('workHours', 'an object: {"days": "mon-fri", "from": "08:00", "to": "17:00", "low": "1MiB/s"}')
    for (const key of Object.keys(w)) {
      if (!WORK_KEYS.includes(key)) throw new PolicyError(`workHours.${key}`, `unknown setting; work hours may set ${WORK_KEYS.join(', ')}`)
    }
    const days = parseDays(w.days ?? 'mon-fri', 'workHours.days')
    const from = parseClock(w.from ?? '08:00', 'workHours.from')
    const to = parseClock(w.to ?? '17:00', 'workHours.to')
    if (from === to) throw new PolicyError('workHours', `the window ${formatClock(from)}-${formatClock(to)} is empty: give a "to" later than "from"`)
    if (to < from) throw new PolicyError('workHours', `the window ${formatClock(from)}-${formatClock(to)} ends before it starts (it would overlap the next day's): use "to" up to "24:00"`)
    const caps = readCaps(w, 'workHours.')
    if (Object.keys(caps).length === 0) throw new PolicyError('workHours', 'work hours without a cap change nothing: set background, high, normal or low')
    policy.workHours = { days, from, to, ...caps }
  }
  return policy
}

export function formatClock (minutes: number): string {
  return `${String(Math.floor(minutes / 60)).padStart(2, '0')}:${String(minutes % 60).padStart(2, '0')}`
}

/** The policy back in its written form (GET /v1/policy, canopy policy). */
export function writePolicy (policy: BandwidthPolicy): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const key of CAP_KEYS) if (policy[key] !== undefined) out[key] = policy[key]
  if (policy.workHours !== undefined) {
    const w = policy.workHours
    out.workHours = {
      days: w.days.map(d => DAY_NAMES[d]).join(','),
      from: formatClock(w.from),
      to: formatClock(w.to),
      ...Object.fromEntries(CAP_KEYS.filter(k => w[k] !== undefined).map(k => [k, w[k]]))
    }
  }
  if (policy.peerServing !== undefined) out.peerServing = policy.peerServing
  out.lanPeersExempt = policy.lanPeersExempt
  return out
}

/** Whether `at` (ms since the epoch, local time) is in the work hours. */
export function inWorkHours (policy: BandwidthPolicy, at: number): boolean {
  const w = policy.workHours
  if (w === undefined) return false
  const d = new Date(at)
  const minutes = d.getHours() * 60 + d.getMinutes()
  return w.days.includes(d.getDay()) && minutes >= w.from && minutes < w.to
}

export interface CapInForce {
  /** bytes/s; 0 blocks. */
  rate: number
  /** Where it comes from, for people: "work hours", "policy". */
  source: 'work hours' | 'policy'
  /** Which setting: background or the priority. */
  key: keyof Caps
}

/**
 * The caps in force at `at` for a job of `priority`: the one on its priority and the
 * one on all background jobs (work hours replace the settings they set, during work
 * hours). Foreground: none. The tightest is first.
 */
export function capsInForce (policy: BandwidthPolicy, priority: JobPriority, at: number): CapInForce[] {
  if (priority === 'foreground') return []
  const work = inWorkHours(policy, at) ? policy.workHours : undefined
  const caps: CapInForce[] = []
  for (const key of ['background', priority] as const) {
    if (work?.[key] !== undefined) caps.push({ rate: work[key], source: 'work hours', key })
    else if (policy[key] !== undefined) caps.push({ rate: policy[key], source: 'policy', key })
  }
  return caps.sort((a, b) => a.rate - b.rate)
}

/** "capped by policy at 2.0 MiB/s (work hours)", "blocked by policy: low-priority jobs are capped at 0 (work hours)". */
export function describeCap (cap: CapInForce): string {
  const where = cap.source === 'work hours' ? 'work hours' : 'policy'
  const what = cap.key === 'background' ? 'background transfers' : `${cap.key}-priority jobs`
  return cap.rate === 0 ? `blocked by policy: ${what} are capped at 0 (${where})` : `capped by policy at ${formatBytes(cap.rate)}/s (${where})`
}

/**
 * When the caps in force next change by themselves (ms since the epoch): the next
 * start or end of the work hours after `at` (local time; a day the window does not
 * apply to gives a time at which nothing changes, which costs one look). Undefined
 * without work hours.
 */
export function nextPolicyEdge (policy: BandwidthPolicy, at: number): number | undefined {
  const w = policy.workHours
  if (w === undefined) return undefined
  let next = Infinity
  for (let day = 0; day <= 7; day++) {
    for (const minutes of [w.from, w.to]) {
      const d = new Date(at)
      d.setDate(d.getDate() + day)
      d.setHours(Math.floor(minutes / 60), minutes % 60, 0, 0)
      if (d.getTime() > at && d.getTime() < next) next = d.getTime()
    }
  }
  return Number.isFinite(next) ? next : undefined
}
