// Bandwidth policy: parsing (rates, days, clock times, the work-hours window), errors
// that name the key, caps in force at a given time (the injectable clock), and the
// reasons and pacing of WAN paths under a policy.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { silentLogger } from '@canopy/core'
import { PolicyError, capsInForce, inWorkHours, parsePolicy, parseRate, writePolicy } from '../src/bandwidth/policy.ts'
import { WanPaths } from '../src/bandwidth/wan-paths.ts'

const MiB = 1024 * 1024
/** Local time: Wednesday 2026-12-02 at hh:mm, and Saturday 2026-12-05. */
const wednesday = (hh: number, mm = 0): number => new Date(2026, 11, 2, hh, mm).getTime()
const saturday = (hh: number): number => new Date(2026, 11, 5, hh, 0).getTime()

test('rates parse in the units administrators write', () => {
  assert.equal(parseRate('2MiB/s', 'low'), 2 * MiB)
  assert.equal(parseRate('512 KiB/s', 'low'), 512 * 1024)
  assert.equal(parseRate('20mbit', 'low'), 2_500_000)
  assert.equal(parseRate('1.5MB/s', 'low'), 1_500_000)
  assert.equal(parseRate(4096, 'low'), 4096)
  assert.equal(parseRate('0', 'low'), 0)
})

test('bad input: a clear error naming the key', () => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ low: 'fast' }, 'low', /not a rate/],
    [{ low: '-1MiB/s' }, 'low', /negative/],
    [{ background: -5 }, 'background', /0 or more/],
    [{ workHours: { days: 'mon-fri', from: '09:00', to: '09:00', low: 0 } }, 'workHours', /empty/],
    [{ workHours: { days: 'mon-fri', from: '17:00', to: '08:00', low: 0 } }, 'workHours', /ends before it starts/],
    [{ workHours: { days: 'funday', low: 0 } }, 'workHours.days', /not a day/],
    [{ workHours: { from: '25:00', low: 0 } }, 'workHours.from', /time of day/],
    [{ workHours: { days: 'mon-fri' } }, 'workHours', /without a cap/],
    [{ workHours: { low: 'x' } }, 'workHours.low', /not a rate/],
    [{ lowest: 1 }, 'lowest', /unknown setting/],
    [{ lanPeersExempt: 'yes' }, 'lanPeersExempt', /true or false/],
    ['slow', 'policy', /JSON object/]
  ]
  for (const [input, key, message] of cases) {
    assert.throws(() => parsePolicy(input), (err: unknown) => {
      assert.ok(err instanceof PolicyError, String(err))
      assert.equal(err.key, key)
      assert.equal(err.code, 'ERR_INVALID_POLICY')
      assert.match(err.message, message)
      assert.ok(err.message.startsWith(`${key}: `))
      return true
    }, JSON.stringify(input))
  }
})

test('work hours follow the clock: weekdays 08:00-17:00, and their caps replace the others then', () => {
  const policy = parsePolicy({ background: '10MiB/s', low: '4MiB/s', workHours: { days: 'mon-fri', from: '08:00', to: '17:00', low: '1MiB/s' } })
  assert.equal(inWorkHours(policy, wednesday(7, 59)), false)
  assert.equal(inWorkHours(policy, wednesday(8, 0)), true)
  assert.equal(inWorkHours(policy, wednesday(16, 59)), true)
  assert.equal(inWorkHours(policy, wednesday(17, 0)), false)
  assert.equal(inWorkHours(policy, saturday(10)), false)
  assert.deepEqual(capsInForce(policy, 'low', wednesday(10)), [
    { rate: 1 * MiB, source: 'work hours', key: 'low' },
    { rate: 10 * MiB, source: 'policy', key: 'background' }
  ])
  assert.deepEqual(capsInForce(policy, 'low', saturday(10))[0], { rate: 4 * MiB, source: 'policy', key: 'low' })
  assert.deepEqual(capsInForce(policy, 'normal', wednesday(10)), [{ rate: 10 * MiB, source: 'policy', key: 'background' }])
  assert.deepEqual(capsInForce(policy, 'foreground', wednesday(10)), [], 'foreground is never capped by policy')
})

test('a policy written back reads the same', () => {
  const input = { low: 1048576, workHours: { days: 'sat,sun', from: '00:00', to: '24:00', background: 0 }, peerServing: 5_000_000, lanPeersExempt: false }
  const policy = parsePolicy(input)
  assert.deepEqual(parsePolicy(writePolicy(policy)), policy)
  assert.deepEqual(policy.workHours!.days, [0, 6])
})

test('a WAN path says why a capped job is slower, and a cap of 0 blocks with its reason', () => {
  let now = wednesday(10)
  const paths = new WanPaths({ logger: silentLogger, clock: () => now }, { probeIntervalMs: 60_000 })
  paths.setPolicy(parsePolicy({ low: '2MiB/s', workHours: { days: 'mon-fri', from: '08:00', to: '17:00', low: 0 } }))
  const low = paths.lease('http://origin.example/a', () => 'low', async () => {})
  const fg = paths.lease('http://origin.example/b', () => 'foreground', async () => {})
  const own = paths.lease('http://origin.example/c', () => 'normal', async () => {}, () => 512 * 1024)
  try {
    assert.equal(low.why(), 'blocked by policy: low-priority jobs are capped at 0 (work hours)')
    assert.ok(low.pacer.consumed(1) > 0, 'blocked: every read waits')
    assert.equal(low.pacer.readSize(), 1)
    now = saturday(10)
    assert.equal(low.why(), 'capped by policy at 2.0 MiB/s (policy)')
    assert.equal(fg.why(), undefined)
    assert.equal(fg.pacer.readSize(), Infinity)
    assert.equal(own.why(), 'capped at 512 KiB/s (this job\'s rate limit)')
  } finally {
    low.release()
    fg.release()
    own.release()
    paths.close()
  }
})

test('the peer-serving gate: no cap lets blocks through; a cap of 0 offers and sends nothing; the queue never waits past its bound', async () => {
  let now = 0
  const paths = new WanPaths({ logger: silentLogger, now: () => now }, {})
  const gate = paths.peerServing
  const signal = new AbortController().signal
  const lan = '192.168.1.20'
  assert.equal(gate.open(lan), true)
  assert.equal(await gate.admit(64 * MiB, lan, signal), true, 'no cap: at once')
  paths.setPolicy(parsePolicy({ peerServing: 0 }))
  assert.equal(gate.open(lan), false, 'a cap of 0: have answers offer nothing')
  assert.equal(await gate.admit(1, lan, signal), false, 'a cap of 0: the block is answered Missing, at once')

  // 1 MiB/s: 15 MiB queue 15 s of sending; 6 MiB more would wait 21 s, past the bound.
  paths.setPolicy(parsePolicy({ peerServing: MiB }))
  const first = gate.admit(15 * MiB, lan, signal)
  let sent = false
  void first.then(() => { sent = true })
  assert.equal(await gate.admit(6 * MiB, lan, signal), false, 'refused rather than late')
  assert.equal(gate.open(lan), true, '15 s queued is under the bound')
  await new Promise(resolve => setTimeout(resolve, 300))
  assert.equal(sent, false, 'the 15 MiB wait for the cap')
  now += 15_000
  assert.equal(await first, true)
  paths.close()
})

test('serving LAN peers does not count against the WAN caps by default; with lanPeersExempt false, or for a peer off the LAN, it does', async () => {
  const paths = new WanPaths({ logger: silentLogger }, {})
  const gate = paths.peerServing
  const signal = new AbortController().signal
  paths.setPolicy(parsePolicy({ background: 0 }))
  assert.equal(gate.open('10.0.0.7'), true, 'a LAN peer is exempt from the background cap')
  assert.equal(await gate.admit(MiB, 'fd00::7', signal), true)
  assert.equal(gate.open('203.0.113.9'), false, 'a peer off the LAN is not')
  assert.equal(await gate.admit(MiB, '203.0.113.9', signal), false)
  paths.setPolicy(parsePolicy({ background: 0, lanPeersExempt: false }))
  assert.equal(gate.open('10.0.0.7'), false, 'not exempt: the background cap of 0 blocks serving too')
  assert.equal(await gate.admit(MiB, '10.0.0.7', signal), false)
  paths.close()
})
