// The scheduling policy as a pure function: made-up jobs, runs and times in, a plan
// out. No agent, no process, no waiting: the clock is an argument.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { AGENT_DEFAULTS } from '@canopy/agent'
import type { JobPriority } from '@canopy/core'
import type { JobRecord } from '../src/jobs/job.ts'
import { blockedReason, plan } from '../src/scheduler/policy.ts'
import type { CapsInput, PlanInput, RunView } from '../src/scheduler/policy.ts'
import { capsInForce, nextPolicyEdge, parsePolicy } from '../src/bandwidth/policy.ts'
import type { BandwidthPolicy } from '../src/bandwidth/policy.ts'
import { competition, reasonFor } from '../src/scheduler/waiting.ts'

const T0 = Date.parse('2026-03-01T00:00:00Z')
const MIN = 60_000
const DAY = 86_400_000
const limits = { ...AGENT_DEFAULTS, maxBackgroundJobs: 2, timeSliceMs: 5 * MIN }

let serial = 0
/** A job record as the store holds it; `at` is its creation (and queue) time. */
function job (priority: JobPriority, fields: Partial<JobRecord> = {}, at = T0 + serial): JobRecord {
  const id = `job-${String(++serial).padStart(4, '0')}`
  const iso = new Date(at).toISOString()
  return { id, name: id, type: 'download', priority, state: 'queued', files: [], autoComplete: false, retryCount: 0, createdAt: iso, modifiedAt: iso, queuedAt: at, ...fields }
}

/** A job that runs since `startedAt` (transferring, its clocks started then). */
function runningJob (priority: JobPriority, startedAt: number): JobRecord {
  return job(priority, { state: 'transferring', activeSince: startedAt, progressAt: startedAt })
}

function input (jobs: JobRecord[], now: number, running: Array<[JobRecord, RunView]> = [], extra: Partial<PlanInput> = {}): PlanInput {
  return { jobs, running: new Map(running.map(([j, r]) => [j.id, r])), locked: new Set(), held: new Map(), now, limits, ...extra }
}

const ids = (jobs: Array<{ id: string }>): string[] => jobs.map(j => j.id)

test('launches: foreground at once, background by priority then queue order, within the slots', () => {
  const low = job('low')
  const normalOld = job('normal', {}, T0 - 10)
  const normalNew = job('normal')
  const high = job('high')
  const fg = job('foreground')
  const busy = runningJob('normal', T0)
  const p = plan(input([low, normalOld, normalNew, high, fg, busy], T0 + 1000, [[busy, { startedAt: T0, stopping: false }]]))
  // One background slot is taken: the foreground job and the best background job start.
  assert.deepEqual(ids(p.launch), [fg.id, high.id])
  // The normal and low jobs wait: no equal's time slice is over yet, and the policy says when it will be.
  assert.deepEqual(p.yield, [])
  assert.equal(p.wakeAt, T0 + limits.timeSliceMs)
  // A slot frees: the older of the two normal jobs is next.
  assert.deepEqual(ids(plan(input([low, normalOld, normalNew], T0 + 1000)).launch), [normalOld.id, normalNew.id])
})

test('preemption: a waiting higher priority stops the weakest running job, once, however often it is asked', () => {
  const a = runningJob('normal', T0)
  const b = runningJob('low', T0 + 10)
  const c = runningJob('low', T0 + 20)
  const high = job('high')
  const runs: Array<[JobRecord, RunView]> = [[a, { startedAt: T0, stopping: false }], [b, { startedAt: T0 + 10, stopping: false }], [c, { startedAt: T0 + 20, stopping: false }]]
  const p = plan(input([a, b, c, high], T0 + 1000, runs))
  assert.deepEqual(p.launch, [])
  // The weakest: the lowest priority, and among equals the one that started last.
  assert.deepEqual(p.yield.map(y => [y.job.id, y.why, y.for?.id]), [[c.id, 'preempted', high.id]])

  // While that job stops, its slot counts as being freed: no second victim.
  runs[2][1].stopping = true
  assert.deepEqual(plan(input([a, b, c, high], T0 + 2000, runs)).yield, [])
})

test('preemption needs a strictly higher priority, and a due retry never preempts', () => {
  const a = runningJob('normal', T0)
  const b = runningJob('normal', T0)
  const equal = job('normal')
  const retry = job('high', { state: 'transient_error', retryAt: new Date(T0 + 500).toISOString(), activeSince: T0, progressAt: T0 })
  const runs: Array<[JobRecord, RunView]> = [[a, { startedAt: T0, stopping: false }], [b, { startedAt: T0, stopping: false }]]
  const p = plan(input([a, b, equal, retry], T0 + 1000, runs))
  assert.deepEqual(p.launch, [])
  assert.deepEqual(p.yield, [])
  // Both wait for the end of a time slice, and the policy says when that is.
  assert.equal(p.wakeAt, T0 + limits.timeSliceMs)
})

test('time slices: an equal waits until the slice ends, then takes the slot of the longest-running job', () => {
  const first = runningJob('normal', T0)
  const second = runningJob('normal', T0 + MIN)
  const waiting = job('normal')
  const runs: Array<[JobRecord, RunView]> = [[first, { startedAt: T0, stopping: false }], [second, { startedAt: T0 + MIN, stopping: false }]]
  const before = plan(input([first, second, waiting], T0 + 4 * MIN, runs))
  assert.deepEqual(before.yield, [])
  assert.equal(before.wakeAt, T0 + limits.timeSliceMs)
  const after = plan(input([first, second, waiting], T0 + limits.timeSliceMs, runs))
  assert.deepEqual(after.yield.map(y => [y.job.id, y.why]), [[first.id, 'slice']])
  // A lower priority waiting does not end anyone's slice.
  const low = job('low')
  assert.deepEqual(plan(input([first, second, low], T0 + 10 * limits.timeSliceMs, runs)).yield, [])
})

test('deadlines: no progress, maximum time, inactivity and retention, each at its time', () => {
  const stalled = job('normal', { state: 'transient_error', retryAt: new Date(T0 + DAY).toISOString(), activeSince: T0, progressAt: T0, limits: { noProgressTimeoutMs: MIN } })
  const slow = job('normal', { state: 'transient_error', retryAt: new Date(T0 + DAY).toISOString(), activeSince: T0, progressAt: T0 + 3 * MIN, activeMs: MIN, limits: { maxDownloadTimeMs: 3 * MIN } })
  const idle = job('normal', { state: 'suspended', modifiedAt: new Date(T0).toISOString() })
  const done = job('normal', { state: 'acknowledged', completedAt: new Date(T0).toISOString() })
  const jobs = [stalled, slow, idle, done]

  const early = plan(input(jobs, T0 + MIN - 1))
  assert.deepEqual(early.expire, [])
  assert.equal(early.wakeAt, T0 + MIN, 'the next deadline is the stalled job\'s')

  const p = plan(input(jobs, T0 + 2 * MIN))
  assert.deepEqual(p.expire.map(e => [e.job.id, e.kind]), [[stalled.id, 'no-progress'], [slow.id, 'max-time']])
  assert.deepEqual(plan(input(jobs, T0 + limits.retentionMs)).expire.map(e => e.kind), ['no-progress', 'max-time', 'retention'])
  assert.deepEqual(plan(input(jobs, T0 + limits.inactiveJobTimeoutMs)).expire.map(e => [e.job.id, e.kind]), [
    [stalled.id, 'no-progress'], [slow.id, 'max-time'], [idle.id, 'inactive'], [done.id, 'retention']])
})

test('deadlines: a locked job is left alone, a held one waits for its hold, an expiring one is not launched', () => {
  const old = job('normal', { state: 'suspended', modifiedAt: new Date(T0).toISOString() })
  const now = T0 + limits.inactiveJobTimeoutMs + 1
  assert.deepEqual(plan(input([old], now, [], { locked: new Set([old.id]) })), { expire: [], launch: [], yield: [] })
  const held = plan(input([old], now, [], { held: new Map([[old.id, now + MIN]]) }))
  assert.deepEqual(held.expire, [])
  assert.equal(held.wakeAt, now + MIN)
  const queued = job('normal', { modifiedAt: new Date(T0).toISOString() })
  const p = plan(input([queued], now))
  assert.deepEqual(p.expire.map(e => e.kind), ['inactive'])
  assert.deepEqual(p.launch, [], 'a job whose deadline is being acted on does not start')
})

test('wake-ups: a retry\'s time, and the clocks of the jobs launched now', () => {
  const retry = job('normal', { state: 'transient_error', retryAt: new Date(T0 + 30_000).toISOString(), activeSince: T0, progressAt: T0 + 20_000 })
  assert.equal(plan(input([retry], T0)).wakeAt, T0 + 30_000)
  const fresh = job('normal')
  const p = plan(input([fresh], T0 + 5))
  assert.deepEqual(ids(p.launch), [fresh.id])
  assert.equal(p.wakeAt, T0 + 5 + limits.noProgressTimeoutMs, 'its no-progress clock starts at launch')
})

test('the clock is an input: the same jobs give another plan at another time', () => {
  const retry = job('normal', { state: 'transient_error', retryAt: new Date(T0 + 30_000).toISOString(), activeSince: T0, progressAt: T0 })
  assert.deepEqual(plan(input([retry], T0 + 29_999)).launch, [])
  assert.deepEqual(ids(plan(input([retry], T0 + 30_000)).launch), [retry.id])
})

test('waiting reasons: who is ahead, preempted, time slice over, retry countdown', () => {
  const high = runningJob('high', T0)
  const normalRunning = runningJob('normal', T0)
  const first = job('normal', {}, T0 - 5)
  const second = job('normal', {}, T0 - 1)
  const preempted = job('low', { waitReason: 'preempted' })
  const sliced = job('normal', { waitReason: 'slice' }, T0 + 100)
  const retry = job('normal', { state: 'transient_error', retryAt: new Date(T0 + 65_000).toISOString(), error: { code: 'ERR_NETWORK', message: 'connection refused', transient: true, at: new Date(T0).toISOString() } })
  const jobs = [high, normalRunning, first, second, preempted, sliced, retry]
  const running = new Map<string, RunView>([[high.id, { startedAt: T0, stopping: false }], [normalRunning.id, { startedAt: T0, stopping: false }]])
  const now = T0 + 1000
  const snapshot = competition(jobs, running, now)
  const reason = (j: JobRecord): string | undefined => reasonFor(j, running.get(j.id), now, () => snapshot)
  assert.equal(reason(first), 'waiting: 1 higher-priority job and 1 same-priority job ahead')
  assert.equal(reason(second), 'waiting: 1 higher-priority job and 2 same-priority jobs ahead')
  assert.equal(reason(preempted), 'waiting: preempted by a higher-priority job')
  assert.equal(reason(sliced), 'waiting: time slice over; 1 higher-priority job and 3 same-priority jobs ahead')
  assert.equal(reason(retry), 'connection refused, next retry in 64 s')
  assert.equal(reasonFor(retry, undefined, T0 + 70_000, () => snapshot), 'connection refused, retry due: waiting for a free slot')
  assert.equal(reason(job('foreground')), 'waiting to start')
  assert.equal(reason(high), undefined)
})

/** The caps the agent hands the policy (WanPaths.capsNow), from a policy and the time. */
function capsAt (policy: BandwidthPolicy, at: number): CapsInput {
  const changesAt = nextPolicyEdge(policy, at)
  return { blocking: (priority) => capsInForce(policy, priority, at).find(c => c.rate === 0), ...(changesAt !== undefined ? { changesAt } : {}) }
}

test('a cap of 0 keeps jobs queued, holding no slot, with the reason; they start at the work-hours edge', () => {
  const policy = parsePolicy({ workHours: { days: 'mon-fri', from: '08:00', to: '17:00', low: 0 } })
  // Local time: Wednesday 2026-12-02 at 10:00, in the work hours.
  const wednesday = (hh: number): number => new Date(2026, 11, 2, hh, 0).getTime()
  // Created just before (older jobs would meet their inactivity deadline first).
  const low = job('low', {}, wednesday(10) - MIN)
  const normal = job('normal', {}, wednesday(10) - MIN)
  const at10 = plan(input([low, normal], wednesday(10), [], { caps: capsAt(policy, wednesday(10)) }))
  assert.deepEqual(ids(at10.launch), [normal.id], 'the low job waits; the normal one starts, with a slot to spare')
  assert.equal(at10.wakeAt, wednesday(17), 'the end of the work hours is a time to look again')
  const reason = reasonFor(low, undefined, wednesday(10), () => competition([low, normal], new Map(), wednesday(10)), blockedReason(low, capsAt(policy, wednesday(10))))
  assert.equal(reason, 'blocked by policy: low-priority jobs are capped at 0 (work hours)')
  // At 17:00 the cap is gone: it starts.
  const fresh = { ...low, modifiedAt: new Date(wednesday(17)).toISOString() }
  assert.deepEqual(ids(plan(input([fresh], wednesday(17), [], { caps: capsAt(policy, wednesday(17)) })).launch), [low.id])
  assert.equal(blockedReason(low, capsAt(policy, wednesday(17))), undefined)
})

test('running jobs a cap of 0 now blocks go back to the queue once, and their slots count as being freed', () => {
  const a = runningJob('low', T0)
  const b = runningJob('low', T0 + 10)
  const waiting = job('low')
  const runs: Array<[JobRecord, RunView]> = [[a, { startedAt: T0, stopping: false }], [b, { startedAt: T0 + 10, stopping: false }]]
  const blocked = capsAt(parsePolicy({ background: 0 }), T0)
  const p = plan(input([a, b, waiting], T0 + 10 * MIN, runs, { caps: blocked }))
  assert.deepEqual(p.yield.map(y => [y.job.id, y.why, y.for]), [[a.id, 'blocked', undefined], [b.id, 'blocked', undefined]])
  assert.deepEqual(p.launch, [], 'nothing launches while the cap is 0, and no time slice is handed on')
  // While they stop, they are not asked again.
  runs[0][1].stopping = true
  runs[1][1].stopping = true
  assert.deepEqual(plan(input([a, b, waiting], T0 + 10 * MIN + 1, runs, { caps: blocked })).yield, [])
  // Without caps (the policy changed live), the three run again, two at a time.
  assert.deepEqual(plan(input([{ ...a, state: 'queued' }, { ...b, state: 'queued' }, waiting], T0 + 11 * MIN, [], { caps: capsAt(parsePolicy({}), T0) })).launch.length, 2)
})

test('a job whose own rate limit is 0 waits too, whatever its priority; foreground jobs are never capped by policy', () => {
  const fgStopped = job('foreground', { rateLimit: 0 })
  const fg = job('foreground')
  const caps = capsAt(parsePolicy({ background: 0 }), T0)
  assert.deepEqual(ids(plan(input([fgStopped, fg], T0, [], { caps })).launch), [fg.id])
  assert.equal(blockedReason(fgStopped, caps), 'blocked: this job\'s rate limit is 0')
  // A retry that is due waits for the cap, and says so.
  const retry = job('low', { state: 'transient_error', retryAt: new Date(T0 - 1).toISOString(), error: { code: 'ERR_HTTP', message: 'origin answered 503' } } as Partial<JobRecord>)
  assert.deepEqual(plan(input([retry], T0, [], { caps })).launch, [])
  assert.equal(reasonFor(retry, undefined, T0, () => competition([retry], new Map(), T0), blockedReason(retry, caps)), 'origin answered 503, retry due; blocked by policy: background transfers are capped at 0 (policy)')
})
