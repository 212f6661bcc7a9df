import assert from 'node:assert/strict'
import { test } from 'node:test'
import { formatDuration, isCanopyError, parseDuration } from '@canopy/core'

test('parseDuration reads plain milliseconds and ms, s, m, min, h, d', () => {
  const cases: Array<[string, number]> = [
    ['1500', 1500], ['1500ms', 1500], ['30s', 30_000], ['5m', 300_000], ['5 min', 300_000],
    ['1.5h', 5_400_000], ['14d', 1_209_600_000], [' 2 S ', 2000], ['0', 0]
  ]
  for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text)
  for (const text of ['', 'soon', '5 weeks', '-1s', '1e3', '9'.repeat(20) + 'd']) {
    assert.throws(() => parseDuration(text), (err: unknown) => isCanopyError(err, 'ERR_INVALID_ARGUMENT'), text)
  }
})

test('formatDuration rounds for reading: one decimal below 10 units, whole numbers above', () => {
  const cases: Array<[number, string]> = [
    [500, '500 ms'], [1000, '1 s'], [1500, '1.5 s'], [40_000, '40 s'], [119_000, '119 s'], [120_000, '2 min'],
    [594_000, '9.9 min'], [2_879_000, '48 min'], [7_200_000, '2 h'], [86_400_000, '24 h'], [1_209_600_000, '14 d'], [7_776_000_000, '90 d']
  ]
  for (const [ms, text] of cases) assert.equal(formatDuration(ms), text, String(ms))
})
