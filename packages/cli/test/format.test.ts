import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { JobView } from '@canopy/core'
import { formatDuration, formatJobDetails, formatProgressLine, formatState, formatSummary, formatTable, truncate } from '../src/format.ts'
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
