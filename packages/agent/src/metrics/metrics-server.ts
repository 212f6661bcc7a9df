import { createServer } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { CanopyError } from '@canopy/core'
import type { Logger } from '@canopy/core'
import type { AgentMetrics } from './agent-metrics.ts'

export interface MetricsServerComponents {
  metrics: Pick<AgentMetrics, 'expose'>
  logger: Logger
}

export interface MetricsServerInit {
  /** HOST:PORT, or PORT / :PORT for 127.0.0.1 (the metrics are not for the whole LAN unless asked). */
  listen: string
}

export interface MetricsServer {
  /** host:port it listens on. */
  address: string
  close: () => Promise<void>
}

/** "PORT" or ":PORT" (loopback), "HOST:PORT", "[v6]:PORT". */
export function parseMetricsListen (text: string): { host: string, port: number } {
  const match = /^(?:(?:\[([^\]]+)\]|([^:[\]]+)):|:)?(\d{1,5})$/.exec(text)
  const port = Number(match?.[3])
  if (match === null || port > 65535) {
    throw new CanopyError('ERR_INVALID_ARGUMENT', `--metrics-listen ${text}: give HOST:PORT (e.g. 0.0.0.0:9464 for Prometheus on another machine), or PORT for 127.0.0.1`)
  }
  return { host: match[1] ?? match[2] ?? '127.0.0.1', port }
}

/**
 * A listener that answers GET /metrics only, without a token, for a Prometheus
 * server to scrape (the control API's TCP listener serves /metrics too, behind its
 * token). Off unless --metrics-listen is given.
 */
export async function startMetricsServer (components: MetricsServerComponents, init: MetricsServerInit): Promise<MetricsServer> {
  const { host, port } = parseMetricsListen(init.listen)
  const server = createServer((req, res) => {
    if (new URL(req.url ?? '/', 'http://agent').pathname !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Only GET /metrics here\n')
      return
    }
    serveMetrics(components, req, res)
  })
  // A scraper holds its connection open between scrapes; requests are small.
  server.headersTimeout = 10_000
  server.requestTimeout = 10_000
  server.maxConnections = 64
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.off('error', reject)
        resolve()
      })
    })
  } catch (err) {
    throw new CanopyError('ERR_METRICS_LISTEN', `Cannot listen on ${init.listen} for metrics: ${(err as Error).message}. Pick another --metrics-listen`, { cause: err })
  }
  const a = server.address() as AddressInfo
  const address = `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`
  components.logger.info('metrics listening', { address })
  return {
    address,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

/** Answers GET (or HEAD) /metrics with the Prometheus text (here and on the control API). */
export function serveMetrics (components: MetricsServerComponents, req: IncomingMessage, res: ServerResponse): void {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end('Use GET /metrics\n')
    return
  }
  components.metrics.expose().then(({ contentType, text }) => {
    res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' })
    res.end(req.method === 'HEAD' ? undefined : text)
  }, (err: unknown) => {
    components.logger.error('metrics failed', { err: String(err) })
    res.writeHead(500).end()
  })
}
