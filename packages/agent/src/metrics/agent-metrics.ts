import type { EventEmitter } from 'node:events'
import { Counter, Gauge, Registry } from 'prom-client'
import { PRIORITIES } from '@canopy/core'
import type { CacheView, JobPriority, JobState, JobView, PeersView, WanPathStatus } from '@canopy/core'
import type { ControlEvents as AgentEvents } from '@canopy/core'

/** Where received bytes came from, as a metric label (bounded: these three only). */
export type ByteSource = 'origin' | 'peer' | 'hosted_cache'

/** Why a peer was banned (bounded label values). */
export type BanReason = 'bad_blocks'

/** Every job state, so that the jobs gauge shows zeros rather than missing series. */
const JOB_STATES: readonly JobState[] = ['queued', 'connecting', 'transferring', 'suspended', 'error', 'transient_error',
  'transferred', 'acknowledged', 'cancelled']
const SOURCES: readonly ByteSource[] = ['origin', 'peer', 'hosted_cache']


export interface AgentMetricsComponents {
  /** Job events: bytes are counted from the changes of each job's bytes by source. */
  events: EventEmitter<AgentEvents>
  /** Every job now (read at each scrape: states, rates, and bytes not yet seen in an event). */
  jobs: () => JobView[]
  /** The peer node's peers and bans, or undefined without one. */
  peers: () => PeersView | undefined
  /** The block cache, or undefined without a peer node. */
  cache: () => CacheView | undefined
  /** The WAN paths background jobs use now, with their delay controllers (polite transfers). */
  wanPaths?: () => WanPathStatus[]
}

export interface AgentMetricsInit {
  /** The agent's version, in canopy_agent_info. */
  version: string
  /** When the agent started (ms since the epoch). */
  startedAt: number
}

/** Bytes received by the agent's jobs since it started, by source, and served to peers. */
export interface ByteTotals {
  fromOrigin: number
  fromPeers: number
  fromCache: number
  servedToPeers: number
}

/** Hooks of the peer sharing code (one call where the bytes move). */
export interface SharingMetrics {
  /** Verified bytes of blocks sent to a peer. */
  servedToPeer: (bytes: number) => void
  /** A peer asked for content: held (partial or cached) or not. */
  contentLookup: (hit: boolean) => void
  /** A cached file was dropped to make room (least recently used). */
  cacheEvicted: (bytes: number) => void
  peerBanned: (reason: BanReason) => void
  /**
   * What servedToPeer and contentLookup counted since the start (the numbers of
   * canopy_agent_peer_served_bytes_total and canopy_agent_peer_requests_total), for
   * GET /v1/cache.
   */
  peerCounts: () => { hits: number, misses: number, bytesServed: number }
}

export interface AgentMetrics extends SharingMetrics {
  readonly registry: Registry
  /** A block that did not match its manifest, by where it came from. */
  verificationFailed: (source: 'origin' | 'peer' | 'cache') => void
  totals: () => ByteTotals
  /** The Prometheus text exposition, and its content type. */
  expose: () => Promise<{ contentType: string, text: string }>
  /** Stops listening to job events. */
  close: () => void
}

interface Seen { priority: JobPriority, origin: number, peer: number, hosted_cache: number }

/**
 * The agent's Prometheus metrics, in a registry of its own (several agents share a
 * process in tests). Bytes received are counted from the jobs' own byte counts (the
 * numbers `canopy job` shows): each job event and each scrape adds what a job's
 * bytes by source grew by since last seen, so the counters and the jobs agree. A
 * count that shrinks (blocks fetched again after a failed whole-file check) is not
 * subtracted: those bytes did cross the wire, and will again.
 */
export function createAgentMetrics (components: AgentMetricsComponents, init: AgentMetricsInit): AgentMetrics {
  const registry = new Registry()
  const seen = new Map<string, Seen>()
  const totals = { origin: 0, peer: 0, hosted_cache: 0 }

  const received = new Counter({
    name: 'canopy_agent_received_bytes_total',
    help: 'Verified bytes received by download jobs, by source (origin, peer, hosted_cache) and job priority',
    labelNames: ['source', 'priority'] as const,
    registers: [registry]
  })
  const served = new Counter({
    name: 'canopy_agent_peer_served_bytes_total',
    help: 'Verified block bytes sent to peers',
    registers: [registry]
  })
  const verification = new Counter({
    name: 'canopy_agent_verification_failures_total',
    help: 'Blocks that did not match their manifest, by source (origin, peer, hosted_cache)',
    labelNames: ['source'] as const,
    registers: [registry]
  })
  const lookups = new Counter({
    name: 'canopy_agent_peer_requests_total',
    help: 'Requests from peers for content, by result: hit (held, complete or partial) or miss',
    labelNames: ['result'] as const,
    registers: [registry]
  })
  const evictions = new Counter({
    name: 'canopy_agent_cache_evictions_total',
    help: 'Cached files dropped to make room for new ones (least recently used)',
    registers: [registry]
  })
  const evictedBytes = new Counter({
    name: 'canopy_agent_cache_evicted_bytes_total',
    help: 'Bytes of cached files dropped to make room',
    registers: [registry]
  })
  const bans = new Counter({
    name: 'canopy_agent_peer_bans_total',
    help: 'Peers banned, by reason (bad_blocks: blocks that failed verification)',
    labelNames: ['reason'] as const,
    registers: [registry]
  })
  // Polite transfers: one series per WAN path (origin host) that background jobs use now.
  const controllerStates = ['starting', 'growing', 'yielding', 'slowdown', 'blind'] as const
  new Gauge({
    name: 'canopy_agent_wan_path_state',
    help: 'State of the delay controller of each WAN path background jobs use now (1 for the state it is in: yielding means it backs off for other traffic)',
    labelNames: ['host', 'state'] as const,
    registers: [registry],
    collect () {
      this.reset()
      for (const p of components.wanPaths?.() ?? []) for (const state of controllerStates) this.set({ host: p.host, state }, p.state === state ? 1 : 0)
    }
  })
  new Gauge({
    name: 'canopy_agent_wan_path_queue_delay_seconds',
    help: 'Queueing delay measured on each WAN path background jobs use now (current round trip less the base)',
    labelNames: ['host'] as const,
    registers: [registry],
    collect () {
      this.reset()
      for (const p of components.wanPaths?.() ?? []) if (p.queueDelayMs !== undefined) this.set({ host: p.host }, p.queueDelayMs / 1000)
    }
  })
  new Gauge({
    name: 'canopy_agent_wan_path_rate_bytes_per_second',
    help: 'Rate the background transfers on each WAN path may read together now (the delay controller\'s)',
    labelNames: ['host'] as const,
    registers: [registry],
    collect () {
      this.reset()
      for (const p of components.wanPaths?.() ?? []) this.set({ host: p.host }, p.rate)
    }
  })
  new Gauge({
    name: 'canopy_agent_jobs',
    help: 'Jobs by state',
    labelNames: ['state'] as const,
    registers: [registry],
    collect () {
      const counts = new Map<JobState, number>(JOB_STATES.map(s => [s, 0]))
      for (const job of components.jobs()) counts.set(job.state, (counts.get(job.state) ?? 0) + 1)
      for (const [state, n] of counts) this.set({ state }, n)
    }
  })
  new Gauge({
    name: 'canopy_agent_transfer_rate_bytes_per_second',
    help: 'Sum of the recent transfer rates of the jobs transferring now, by priority',
    labelNames: ['priority'] as const,
    registers: [registry],
    collect () {
      const sums = new Map<JobPriority, number>(PRIORITIES.map(p => [p, 0]))
      for (const job of components.jobs()) {
        count(job)
        if (job.rate !== undefined) sums.set(job.priority, (sums.get(job.priority) ?? 0) + job.rate)
      }
      for (const [priority, n] of sums) this.set({ priority }, n)
    }
  })
  new Gauge({
    name: 'canopy_agent_cache_size_bytes',
    help: 'Bytes of completed files kept for peers',
    registers: [registry],
    collect () { this.set(components.cache()?.usedBytes ?? 0) }
  })
  new Gauge({
    name: 'canopy_agent_cache_quota_bytes',
    help: 'The cache quota (0 without a peer node)',
    registers: [registry],
    collect () { this.set(components.cache()?.quotaBytes ?? 0) }
  })
  new Gauge({
    name: 'canopy_agent_cache_files',
    help: 'Files kept for peers',
    registers: [registry],
    collect () { this.set(components.cache()?.entries.length ?? 0) }
  })
  new Gauge({
    name: 'canopy_agent_peers_connected',
    help: 'Peers with an open connection',
    registers: [registry],
    collect () { this.set(components.peers()?.peers.length ?? 0) }
  })
  new Gauge({
    name: 'canopy_agent_peers_banned',
    help: 'Peers banned now',
    registers: [registry],
    collect () { this.set(components.peers()?.bans.length ?? 0) }
  })
  const info = new Gauge({
    name: 'canopy_agent_info',
    help: 'Always 1; the agent\'s version as a label',
    labelNames: ['version'] as const,
    registers: [registry]
  })
  const started = new Gauge({
    name: 'canopy_agent_start_time_seconds',
    help: 'When the agent started, in seconds since the Unix epoch',
    registers: [registry]
  })
  info.set({ version: init.version }, 1)
  started.set(init.startedAt / 1000)
  // Every series present from the start (at 0): rate() and the dashboard need no special case.
  for (const source of SOURCES) {
    verification.inc({ source }, 0)
    for (const priority of PRIORITIES) received.inc({ source, priority }, 0)
  }
  for (const result of ['hit', 'miss']) lookups.inc({ result }, 0)
  bans.inc({ reason: 'bad_blocks' }, 0)
  served.inc(0)
  evictions.inc(0)
  evictedBytes.inc(0)

  function current (job: JobView): Seen {
    return { priority: job.priority, origin: job.bytes.fromOrigin, peer: job.bytes.fromPeers, hosted_cache: job.bytes.fromCache }
  }
  /** Adds what the job received since it was last seen. */
  function count (job: JobView): void {
    const now = current(job)
    const before = seen.get(job.id)
    seen.set(job.id, now)
    if (before === undefined) {
      // A job created since the start: all its bytes are new.
      for (const source of SOURCES) add(source, job.priority, now[source])
      return
    }
    for (const source of SOURCES) add(source, job.priority, now[source] - before[source])
  }
  function add (source: ByteSource, priority: JobPriority, bytes: number): void {
    if (!(bytes > 0)) return
    received.inc({ source, priority }, bytes)
    totals[source] += bytes
  }
  // Jobs recovered at start: their bytes were received before (not since the start).
  for (const job of components.jobs()) seen.set(job.id, current(job))
  const onJob = (job: JobView): void => {
    count(job)
  }
  const onRemoved = (id: string): void => { seen.delete(id) }
  components.events.on('job:state', onJob)
  components.events.on('job:progress', onJob)
  components.events.on('job:updated', onJob)
  components.events.on('job:removed', onRemoved)

  let servedTotal = 0
  const requests = { hits: 0, misses: 0 }
  return {
    registry,
    servedToPeer: bytes => {
      served.inc(bytes)
      servedTotal += bytes
    },
    contentLookup: hit => {
      lookups.inc({ result: hit ? 'hit' : 'miss' })
      if (hit) requests.hits++
      else requests.misses++
    },
    peerCounts: () => ({ ...requests, bytesServed: servedTotal }),
    cacheEvicted: bytes => {
      evictions.inc()
      evictedBytes.inc(bytes)
    },
    peerBanned: reason => bans.inc({ reason }),
    verificationFailed: source => verification.inc({ source: source === 'cache' ? 'hosted_cache' : source }),
    totals: () => {
      for (const job of components.jobs()) count(job)
      return { fromOrigin: totals.origin, fromPeers: totals.peer, fromCache: totals.hosted_cache, servedToPeers: servedTotal }
    },
    expose: async () => ({ contentType: registry.contentType, text: await registry.metrics() }),
    close: () => {
      components.events.off('job:state', onJob)
      components.events.off('job:progress', onJob)
      components.events.off('job:updated', onJob)
      components.events.off('job:removed', onRemoved)
    }
  }
}
