import { Counter, Gauge, Registry } from 'prom-client'

export type BodyKind = 'content' | 'manifest'

/** Bounded label values: anything else a client sends is counted as OTHER. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'])

export interface OriginMetrics {
  registry: Registry
  bytesSent: (kind: BodyKind, bytes: number) => void
  request: (method: string, status: number) => void
  manifests: (count: number) => void
  /** A connection refused by a cap (total or per address). */
  refused: (reason: 'total' | 'address') => void
  /** A response dropped because its client stopped reading. */
  stalled: () => void
}

/** A registry per origin: several origins share a process in tests and in the lab. */
export function createMetrics (): OriginMetrics {
  const registry = new Registry()
  const bytes = new Counter({
    name: 'canopy_origin_bytes_sent_total',
    help: 'Response body bytes written to clients, by kind of body (content or manifest)',
    labelNames: ['kind'] as const,
    registers: [registry]
  })
  const requests = new Counter({
    name: 'canopy_origin_requests_total',
    help: 'Requests answered, by method and status code',
    labelNames: ['method', 'status'] as const,
    registers: [registry]
  })
  const manifests = new Gauge({
    name: 'canopy_origin_manifests',
    help: 'Manifests held in the origin\'s cache',
    registers: [registry]
  })
  const refused = new Counter({
    name: 'canopy_origin_connections_refused_total',
    help: 'Connections answered 503 and closed at once, by the cap they hit (total or address)',
    labelNames: ['reason'] as const,
    registers: [registry]
  })
  const stalled = new Counter({
    name: 'canopy_origin_responses_stalled_total',
    help: 'Responses dropped because the client took nothing for the send timeout',
    registers: [registry]
  })
  bytes.inc({ kind: 'content' }, 0)
  bytes.inc({ kind: 'manifest' }, 0)
  return {
    registry,
    bytesSent: (kind, n) => bytes.inc({ kind }, n),
    request: (method, status) => requests.inc({ method: METHODS.has(method) ? method : 'OTHER', status: String(status) }),
    manifests: count => manifests.set(count),
    refused: reason => refused.inc({ reason }),
    stalled: () => stalled.inc()
  }
}
