// The agent's metrics module on its own: bytes counted from the changes of each job's
// bytes by source (as the job events carry them), jobs recovered at start not counted
// again, shrinking counts not subtracted, and the hooks of the code that moves bytes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import type { JobView } from '@canopy/core'
import type { AgentEvents } from '../src/agent.ts'
import { createAgentMetrics } from '../src/metrics/index.ts'

function job (id: string, fromOrigin: number, fromPeers: number, extra: Partial<JobView> = {}): JobView {
  return {
    id, priority: 'normal', state: 'transferring', bytes: { total: 100, transferred: fromOrigin + fromPeers, fromOrigin, fromPeers, fromCache: 0 }, ...extra
  } as JobView
}

async function value (metrics: ReturnType<typeof createAgentMetrics>, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = (await metrics.registry.getMetricsAsJSON()).find(m => m.name === name)
  assert.ok(metric !== undefined, name)
  return (metric.values as Array<{ labels: Record<string, string | number>, value: number }>)
    .filter(v => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((n, v) => n + v.value, 0)
}

test('bytes are counted from job events and scrapes, once, by source and priority', async () => {
  const events = new EventEmitter<AgentEvents>()
  // What the agent holds: every event carries a job as it is now.
  const jobs = new Map([['recovered', job('recovered', 50, 10, { state: 'queued' })]])
  const emit = (event: 'job:state' | 'job:progress', view: JobView): void => {
    jobs.set(view.id, view)
    events.emit(event, view)
  }
  const metrics = createAgentMetrics({ events, jobs: () => [...jobs.values()], peers: () => undefined, cache: () => undefined }, { version: 't', startedAt: 0 })
  // The recovered job's 60 bytes were received before the start.
  assert.deepEqual(metrics.totals(), { fromOrigin: 0, fromPeers: 0, fromCache: 0, servedToPeers: 0 })
  emit('job:progress', job('recovered', 70, 10))
  emit('job:state', job('new', 0, 0, { state: 'connecting', priority: 'low' }))
  emit('job:progress', job('new', 30, 5, { priority: 'low' }))
  // A whole-file mismatch unmarked blocks: nothing subtracted, and refetched bytes count again.
  emit('job:progress', job('new', 10, 5, { priority: 'low' }))
  emit('job:progress', job('new', 40, 5, { priority: 'low' }))
  assert.equal(await value(metrics, 'canopy_agent_received_bytes_total', { source: 'origin', priority: 'normal' }), 20)
  assert.equal(await value(metrics, 'canopy_agent_received_bytes_total', { source: 'origin', priority: 'low' }), 60)
  assert.equal(await value(metrics, 'canopy_agent_received_bytes_total', { source: 'peer' }), 5)
  // A scrape reads the jobs too: bytes not yet in an event are counted, once.
  jobs.set('recovered', job('recovered', 80, 10))
  jobs.set('new', job('new', 40, 25, { priority: 'low', rate: 1000 }))
  const text = (await metrics.expose()).text
  assert.match(text, /^canopy_agent_received_bytes_total\{source="peer",priority="low"\} 25$/m)
  assert.match(text, /^canopy_agent_transfer_rate_bytes_per_second\{priority="low"\} 1000$/m)
  assert.match(text, /^canopy_agent_jobs\{state="transferring"\} 2$/m)
  assert.deepEqual(metrics.totals(), { fromOrigin: 90, fromPeers: 25, fromCache: 0, servedToPeers: 0 })
  events.emit('job:removed', 'new')
  metrics.close()
  assert.equal(events.listenerCount('job:progress'), 0)
})

test('the hooks count served bytes, peer requests, evictions, bans and verification failures', async () => {
  const events = new EventEmitter<AgentEvents>()
  const metrics = createAgentMetrics({ events, jobs: () => [], peers: () => ({ peers: [], bans: [{ peerId: 'p', until: '' }] }), cache: () => ({ usedBytes: 7, quotaBytes: 9, hits: 0, misses: 0, bytesServed: 0, entries: [] }) }, { version: 't', startedAt: 0 })
  metrics.servedToPeer(100)
  metrics.servedToPeer(28)
  metrics.contentLookup(true)
  metrics.contentLookup(false)
  metrics.contentLookup(false)
  metrics.cacheEvicted(4096)
  metrics.peerBanned('bad_blocks')
  metrics.verificationFailed('peer')
  metrics.verificationFailed('cache')
  assert.equal(await value(metrics, 'canopy_agent_peer_served_bytes_total'), 128)
  assert.equal(await value(metrics, 'canopy_agent_peer_requests_total', { result: 'miss' }), 2)
  assert.equal(await value(metrics, 'canopy_agent_cache_evicted_bytes_total'), 4096)
  assert.equal(await value(metrics, 'canopy_agent_cache_evictions_total'), 1)
  assert.equal(await value(metrics, 'canopy_agent_peer_bans_total', { reason: 'bad_blocks' }), 1)
  assert.equal(await value(metrics, 'canopy_agent_verification_failures_total', { source: 'peer' }), 1)
  assert.equal(await value(metrics, 'canopy_agent_verification_failures_total', { source: 'hosted_cache' }), 1)
  assert.equal(await value(metrics, 'canopy_agent_peers_banned'), 1)
  assert.equal(await value(metrics, 'canopy_agent_cache_size_bytes'), 7)
  assert.equal(metrics.totals().servedToPeers, 128)
  // GET /v1/cache shows the same numbers as the counters.
  assert.deepEqual(metrics.peerCounts(), { hits: 1, misses: 2, bytesServed: 128 })
  metrics.close()
})
