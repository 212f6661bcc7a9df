// WAN paths: one controller and one window per origin host, shared by background
// transfers; foreground transfers are never paced; the window gives bytes back.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { silentLogger } from '@canopy/core'
import type { JobPriority } from '@canopy/core'
import { WanPaths, describe as describeController } from '../src/bandwidth/wan-paths.ts'
import { ByteWindow, TokenBucket } from '../src/bandwidth/pacer.ts'

const noProbe = async (): Promise<void> => {}

test('foreground transfers are never paced; background ones share one path per host', async () => {
  const paths = new WanPaths({ logger: silentLogger }, { probeIntervalMs: 10_000 })
  let priority: JobPriority = 'low'
  const a = paths.lease('http://origin.example:8080/a', () => priority, noProbe)
  const b = paths.lease('http://origin.example:8080/b', () => 'normal', noProbe)
  const other = paths.lease('http://other.example/c', () => 'high', noProbe)
  try {
    assert.deepEqual(paths.views().map(v => [v.host, v.transfers]), [['origin.example:8080', 2], ['other.example', 1]])
    assert.ok(Number.isFinite(a.pacer.readSize()))
    assert.ok(Number.isFinite(a.pacer.window!.requestSize()))
    priority = 'foreground'
    assert.equal(a.pacer.readSize(), Infinity)
    assert.equal(a.pacer.consumed(1 << 30), 0)
    assert.equal(a.pacer.window!.requestSize(), Infinity)
    assert.equal(a.why(), undefined)
    assert.equal(paths.views()[0].transfers, 1)
  } finally {
    a.release()
    b.release()
    other.release()
    paths.close()
  }
  assert.deepEqual(paths.views(), [], 'a path nobody holds is not shown')
})

test('turned off (target delay 0): nothing is paced', () => {
  const paths = new WanPaths({ logger: silentLogger }, { enabled: false })
  const lease = paths.lease('http://origin.example/a', () => 'low', noProbe)
  assert.equal(lease.pacer.readSize(), Infinity)
  assert.equal(lease.pacer.window, undefined)
  assert.deepEqual(paths.views(), [])
})

test('a path probes while a background transfer holds it, and its controller takes the samples', async () => {
  let probes = 0
  const paths = new WanPaths({ logger: silentLogger }, { probeIntervalMs: 1 })
  const lease = paths.lease('http://origin.example/a', () => 'low', async () => { probes++ })
  try {
    while (probes < 5) await new Promise(resolve => setTimeout(resolve, 5))
    const [view] = paths.views()
    assert.ok(view.controller.baseDelayMs !== undefined)
  } finally {
    lease.release()
    paths.close()
  }
  const after = probes
  await new Promise(resolve => setTimeout(resolve, 30))
  assert.ok(probes <= after + 1, 'no probes once released')
})

test('the next transfer from an origin goes on with what its path learnt (a time slice switch does not start from scratch)', async () => {
  let probes = 0
  const paths = new WanPaths({ logger: silentLogger }, { probeIntervalMs: 1 })
  const first = paths.lease('http://origin.example/a', () => 'low', async () => { probes++ })
  while (probes < 5) await new Promise(resolve => setTimeout(resolve, 5))
  first.release()
  const next = paths.lease('http://origin.example/b', () => 'normal', async () => {})
  try {
    assert.ok(paths.views()[0].controller.baseDelayMs !== undefined, 'the base delay measured for the first transfer is there')
  } finally {
    next.release()
    paths.close()
  }
})

test('the reason a job gives names the queue delay when it yields', () => {
  assert.equal(describeController({ rate: 1, state: 'yielding', queueDelayMs: 48.4, targetMs: 60 }), 'yielding to other traffic (queue delay 48 ms)')
  assert.equal(describeController({ rate: 1, state: 'growing', queueDelayMs: 1, targetMs: 60 }), undefined)
})

test('a byte window lets requests through while they fit, one alone when it is bigger, and wakes waiters as bytes come back', async () => {
  let limit = 100
  const w = new ByteWindow(() => limit, 4)
  const signal = new AbortController().signal
  const r1 = await w.acquire(60, signal)
  let second = false
  const p2 = w.acquire(60, signal).then(release => { second = true; return release })
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(second, false, 'does not fit beside the first')
  r1()
  const r2 = await p2
  assert.equal(second, true)
  r2()
  const big = await w.acquire(1000, signal)
  big()
  // A waiter gives up when its signal aborts.
  const hold = await w.acquire(100, signal)
  const ac = new AbortController()
  const waiting = w.acquire(50, ac.signal)
  ac.abort(new Error('stop'))
  await assert.rejects(waiting, /stop/)
  hold()
  limit = Infinity
  assert.equal(w.requestSize(), Infinity)
})

test('a token bucket at a rate of 0 says wait; at a finite rate the waits add up to the rate', () => {
  let now = 0
  let rate = 0
  const bucket = new TokenBucket({ rate: () => rate, now: () => now, minBurst: 1000 })
  assert.ok(bucket.consumed(2000) > 0, 'blocked: a wait')
  rate = 1000
  now = 10_000
  bucket.readSize()
  // 10 reads of 1000 bytes at 1000 B/s: about 10 s of waiting in all (logical, on the injected clock).
  let waited = 0
  for (let i = 0; i < 10; i++) {
    // As a reader does: after a pause (at most 250 ms each), ask again.
    for (let wait = bucket.consumed(1000); wait > 0; wait = bucket.consumed(0)) {
      waited += wait
      now += wait
    }
  }
  assert.ok(waited >= 8000 && waited <= 11_000, `waited ${waited} ms`)
})
