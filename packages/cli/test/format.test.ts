import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { JobView } from '@canopy/core'
import { formatDuration, formatJobDetails, formatJobsTable, formatPreloadSummary, formatProgressLine, formatState, formatSummary, formatTable, truncate, truncateWords } from '../src/format.ts'
import { ProgressReporter } from '../src/progress.ts'

const bytes = (total: number, transferred: number): JobView['bytes'] =>
  ({ total, transferred, fromOrigin: transferred, fromPeers: 0, fromCache: 0 })

test('durations', () => {
  assert.equal(formatDuration(4.4), '4 s')
  assert.equal(formatDuration(185), '3m05s')
  assert.equal(formatDuration(7260), '2h01m')
  assert.equal(formatDuration(Infinity), '-')
})

test('job details show the limits in force, in words', () => {
  const job = {
    id: 'j1', name: 'a.bin', type: 'download', priority: 'low', state: 'queued', files: [], bytes: bytes(10, 0),
    filesTransferred: 0, filesTotal: 0, autoComplete: false, createdAt: '2026-01-01T00:00:00Z', modifiedAt: '2026-01-01T00:00:00Z',
    limits: { retryMinMs: 2000, retryMaxMs: 600_000, noProgressTimeoutMs: 1_209_600_000, maxDownloadTimeMs: 0 }
  } satisfies JobView
  assert.match(formatJobDetails(job), /^limits: +retry 2 s to 10 min, no progress 14 d, max time none$/m)
  assert.match(formatJobDetails({ ...job, limits: { ...job.limits, maxDownloadTimeMs: 5_400_000 } }), /max time 90 min$/m)
})

test('tables pad every column but the last', () => {
  assert.equal(formatTable(['A', 'BB'], [['xxx', 'y'], ['z', '']]), 'A    BB\nxxx  y\nz\n')
})

test('states with reasons', () => {
  assert.equal(formatState({ state: 'queued', reason: 'waiting: 2 jobs ahead' }), 'queued (waiting: 2 jobs ahead)')
  assert.equal(formatState({ state: 'suspended', reason: 'suspended: resume it' }), 'suspended: resume it')
  assert.equal(formatState({ state: 'transferring' }), 'transferring')
  assert.equal(truncate('abcdef', 4), 'abc…')
})

test('the progress line shows bar, percent, bytes, rate, ETA and fits the terminal', () => {
  const line = formatProgressLine({ state: 'transferring', bytes: bytes(100 * 1048576, 25 * 1048576) }, { rate: 1048576 * 5, columns: 120 })
  assert.match(line, /^\[=+> +\] +25% {2}25\.0 MiB \/ 100 MiB {2}5\.0 MiB\/s {2}ETA 15 s {2}transferring$/)
  const narrow = formatProgressLine({ state: 'transient_error', reason: 'retrying in 8 s: origin answered 503', bytes: bytes(10, 5) }, { columns: 30 })
  assert.ok(narrow.length <= 29, narrow)
  assert.match(formatProgressLine({ state: 'transient_error', reason: 'in 8 s', bytes: bytes(10, 5) }), /retrying: in 8 s$/)
  assert.match(formatProgressLine({ state: 'connecting', bytes: bytes(-1, 0) }), /^0 B \/ \? {2}connecting$/)
})

test('the summary line', () => {
  assert.equal(formatSummary('/tmp/a', { total: 2097152, transferred: 2097152, fromOrigin: 1048576, fromPeers: 1048576, fromCache: 0 }, 2),
    '/tmp/a: 2.0 MiB in 2.0 s (1.0 MiB/s), from origin 1.0 MiB, peers 1.0 MiB')
})

test('the summary of a preload: what went into the cache, and each file it held already or could not keep', () => {
  const file = (url: string, more: Partial<JobView['files'][number]>): JobView['files'][number] => ({ url, path: '/s', bytesTotal: 1048576, bytesTransferred: 1048576, ...more })
  const job = {
    bytes: { total: 3145728, transferred: 3145728, fromOrigin: 1048576, fromPeers: 2097152, fromCache: 0 },
    files: [file('http://o/a.iso', { cached: true }), file('http://o/b.iso', { cached: true, skipped: true }), file('http://o/c.iso', { cached: false, notCachedReason: 'the origin published no manifest for it' })]
  } as JobView
  assert.equal(formatPreloadSummary(job, 2),
    'preloaded 2 of 3 files (3.0 MiB) into the cache in 2.0 s (1.5 MiB/s), from origin 1.0 MiB, peers 2.0 MiB\n' +
    '  http://o/b.iso: already in the cache\n' +
    '  http://o/c.iso: not cached: the origin published no manifest for it')
})

test('the reporter redraws at most 4 times a second on a terminal, and notes retries elsewhere', () => {
  let now = 0
  const tty: string[] = []
  const r = new ProgressReporter({ isTTY: true, columns: 100, write: t => tty.push(t) }, { now: () => now })
  const job = (state: JobView['state'], transferred: number, reason?: string): JobView => ({ state, reason, bytes: bytes(1000, transferred), id: 'j' } as JobView)
  for (let i = 0; i <= 10; i++) {
    now = i * 100
    r.update(job('transferring', i * 100))
  }
  assert.equal(tty.length, 4) // at 0, 300, 600, 900 ms
  assert.equal(r.rate(), 1000)
  r.clear()
  assert.equal(tty.at(-1), '\r\x1b[K')

  const lines: string[] = []
  const plain = new ProgressReporter({ isTTY: false, write: t => lines.push(t) })
  plain.update(job('transferring', 1))
  const down = { code: 'ERR_NETWORK', message: 'network down', transient: true, at: '' }
  plain.update({ ...job('transient_error', 1, 'network down, next retry in 2 s'), error: down })
  plain.update({ ...job('transient_error', 1, 'network down, next retry in 1 s'), error: down })
  plain.update(job('transferring', 2))
  assert.deepEqual(lines, ['canopy: job j: transient_error (network down, next retry in 2 s)\n'])
})

// Regression: `canopy get` against a dead origin showed "0 B / ? connecting" for the
// whole wait: the transient_error event came within 250 ms of the connecting one and
// was skipped by the redraw limit, and nothing else came until the next retry.
test('on a terminal, a change of state is drawn at once, and a retry is counted down', () => {
  let now = Date.parse('2026-03-01T12:00:00Z')
  const tty: string[] = []
  const r = new ProgressReporter({ isTTY: true, columns: 160, write: t => tty.push(t) }, { now: () => now })
  const base = { id: 'j', bytes: bytes(-1, 0) } as JobView
  r.update({ ...base, state: 'connecting' })
  now += 20
  const retryAt = new Date(now + 8000).toISOString()
  const refused = { code: 'ERR_NETWORK', message: 'origin unreachable (ECONNREFUSED)', transient: true, at: '' }
  r.update({ ...base, state: 'transient_error', reason: 'origin unreachable (ECONNREFUSED), next retry in 8 s', error: refused, retryAt })
  r.clear()
  assert.equal(tty.length, 3, JSON.stringify(tty))
  assert.match(tty[1], /0 B \/ \? {2}retrying: origin unreachable \(ECONNREFUSED\), next retry in 8 s/)
  // The countdown comes from retryAt and the clock, not from the reason's text.
  const later = formatProgressLine({ ...base, state: 'transient_error', reason: 'stale, next retry in 8 s', error: refused, retryAt }, { now: now + 5000 })
  assert.match(later, /retrying: origin unreachable \(ECONNREFUSED\), next retry in 3 s$/)
  assert.match(formatProgressLine({ ...base, state: 'transient_error', error: refused, retryAt }, { now: now + 9000 }), /retrying now$/)
})

test('the jobs table fits the terminal, cuts reasons at a word and says so; without a width nothing is cut', () => {
  const job = (id: string, name: string, reason: string): JobView => ({
    id, name, state: 'transient_error', reason, priority: 'normal', bytes: bytes(-1, 0)
  } as JobView)
  const reason = 'origin unreachable (ECONNREFUSED), next retry in 8 s; the origin has been down since the last maintenance window'
  const jobs = [
    job('3f2a9c1e-0000-4000-8000-000000000001', 'a-rather-long-file-name-of-a-nightly-build-2026-03-01.tar.zst', reason),
    job('3f2a9c1e-0000-4000-8000-000000000002', 'b.iso', 'waiting to start'),
    job('7aa01234-0000-4000-8000-000000000003', 'c.iso', 'suspended: resume it to continue')
  ]
  const fitted = formatJobsTable(jobs, 140)
  assert.ok(fitted.cut)
  for (const line of fitted.text.split('\n')) assert.ok(line.length <= 139, `${line.length}: ${line}`)
  // Unique prefixes: 8 characters unless two ids share them.
  assert.match(fitted.text, /^3f2a9c1e-0000-4000-8000-000000000001 /m)
  assert.match(fitted.text, /^7aa01234 /m)
  // Cut after a whole word, never inside one.
  const cutReason = /transient_error \((.*)…/.exec(fitted.text)?.[1] ?? ''
  assert.ok(reason.startsWith(cutReason) && /[\s,;(]/.test(reason[cutReason.length]), cutReason)
  const whole = formatJobsTable(jobs)
  assert.equal(whole.cut, false)
  assert.ok(whole.text.includes(reason))
  assert.equal(truncateWords('origin unreachable now', 12), 'origin…')
})
