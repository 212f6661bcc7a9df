import { createServer, request as httpRequest } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { chmod, rm } from 'node:fs/promises'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { CanopyError } from '@canopy/core'
import type { ApiErrorBody, Logger } from '@canopy/core'
import type { CanopyAgent } from '../agent.ts'
import { EventClients, MAX_EVENT_CLIENTS, serveEvents } from './events.ts'
import { serveDashboard } from './dashboard/serve.ts'
import { serveMetrics } from '../metrics/index.ts'

/** Largest request body the API reads. */
const MAX_BODY_BYTES = 1024 * 1024

export interface ApiServer {
  /** The TCP listener's address (host:port), when there is one. */
  tcpAddress?: string
  close: () => Promise<void>
}

/** The optional TCP listener for remote administration. */
export interface TcpApiOptions {
  /** host:port to listen on (port 0: any free port). */
  listen: string
  /** The bearer token every request must carry (Authorization: Bearer <token>). */
  token: string
}

const STATUS_BY_CODE: Record<string, number> = {
  ERR_INVALID_REQUEST: 400,
  ERR_BAD_JSON: 400,
  ERR_TOO_MANY_FILES: 400,
  ERR_TOO_MANY_HEADERS: 400,
  ERR_HEADERS_TOO_LARGE: 400,
  ERR_URL_TOO_LONG: 400,
  ERR_NAME_TOO_LONG: 400,
  ERR_TOO_MANY_JOBS: 409,
  ERR_JOB_NOT_FOUND: 404,
  ERR_NO_PEER_NODE: 404,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_INVALID_STATE: 409,
  ERR_AMBIGUOUS_JOB_ID: 409,
  ERR_BODY_TOO_LARGE: 413,
  ERR_TOO_MANY_CLIENTS: 503,
  ERR_DESTINATION: 409,
  ERR_DISK_FULL: 507,
  ERR_AGENT_STOPPING: 503
}

async function readJson (req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new CanopyError('ERR_BODY_TOO_LARGE', `Request bodies are limited to ${MAX_BODY_BYTES} bytes`)
    chunks.push(chunk)
  }
  if (size === 0) return {}
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new CanopyError('ERR_BAD_JSON', 'The request body is not valid JSON')
  }
}

function send (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

/** True if something answers on the socket (another agent), false if it is stale. */
async function socketAnswers (socketPath: string): Promise<boolean> {
  return await new Promise(resolve => {
    const req = httpRequest({ socketPath, path: '/v1/status', timeout: 2000 }, res => {
      res.resume()
      resolve(true)
    })
    req.on('error', () => resolve(false))
    req.on('timeout', () => {
      req.destroy()
      resolve(false)
    })
    req.end()
  })
}

interface RouteContext {
  req: IncomingMessage
  res: ServerResponse
  url: URL
  /** Values of the path's {placeholders}. */
  params: Record<string, string>
}

export interface ApiRoute {
  method: 'GET' | 'POST'
  /** Path template, e.g. /v1/jobs/{id}/suspend (the form docs/openapi.json uses). */
  path: string
  /** Answers with [status, JSON body], or undefined when it answered itself. */
  handle: (ctx: RouteContext) => Promise<[number, unknown] | undefined>
}

/** The path's {placeholders} filled from `parts`, or undefined when it does not match. */
function matchPath (template: string, parts: string[]): Record<string, string> | undefined {
  const pattern = template.split('/').filter(Boolean)
  if (pattern.length !== parts.length) return undefined
  const params: Record<string, string> = {}
  for (const [i, segment] of pattern.entries()) {
    if (segment.startsWith('{')) params[segment.slice(1, -1)] = decodeURIComponent(parts[i])
    else if (segment !== parts[i]) return undefined
  }
  return params
}

/**
 * Every route of the control API. docs/openapi.json documents exactly these (a test
 * compares the two and checks live answers against the document's schemas).
 */
export function apiRoutes (agent: CanopyAgent, eventClients: EventClients, logger: Logger): ApiRoute[] {
  const ok = (body: unknown): [number, unknown] => [200, body]
  return [
    { method: 'GET', path: '/v1/status', handle: async () => ok(agent.status()) },
    {
      method: 'GET',
      path: '/v1/events',
      handle: async ({ res, url }) => {
        serveEvents(agent, eventClients, res, url.searchParams.get('job') ?? undefined, logger)
        return undefined
      }
    },
    { method: 'GET', path: '/v1/peers', handle: async () => ok(agent.peers()) },
    { method: 'GET', path: '/v1/cache', handle: async () => ok(agent.cache()) },
    { method: 'POST', path: '/v1/cache/clear', handle: async () => ok(await agent.clearCache()) },
    { method: 'GET', path: '/v1/jobs', handle: async () => ok({ jobs: agent.listJobs() }) },
    { method: 'POST', path: '/v1/jobs', handle: async ({ req }) => [201, await agent.createJob(await readJson(req))] },
    { method: 'GET', path: '/v1/jobs/{id}', handle: async ({ params }) => ok(agent.getJob(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/suspend', handle: async ({ params }) => ok(await agent.suspend(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/resume', handle: async ({ params }) => ok(await agent.resume(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/cancel', handle: async ({ params }) => ok(await agent.cancel(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/complete', handle: async ({ params }) => ok(await agent.complete(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/priority', handle: async ({ req, params }) => ok(await agent.setPriority(params.id, await readJson(req))) },
    { method: 'POST', path: '/v1/jobs/{id}/files', handle: async ({ req, params }) => ok(await agent.addFiles(params.id, await readJson(req))) }
  ]
}

/**
 * The control API: HTTP+JSON on a Unix socket that only the agent's user may use
 * (the state directory is 0700 and the socket 0600). Routes: apiRoutes above;
 * documented in docs/API.md and docs/openapi.json.
 */
export async function startApiServer (agent: CanopyAgent, socketPath: string, logger: Logger, tcp?: TcpApiOptions): Promise<ApiServer> {
  const eventClients = new EventClients()
  // Each event stream listens to the agent (four listeners).
  agent.setMaxListeners(4 * MAX_EVENT_CLIENTS + 10)
  const routes = apiRoutes(agent, eventClients, logger)
  /** Answers with [status, JSON body], or undefined when it answered itself (the event stream). */
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<[number, unknown] | undefined> => {
    const url = new URL(req.url ?? '/', 'http://agent')
    if (!url.pathname.startsWith('/v1/')) throw new CanopyError('ERR_NOT_FOUND', `No route ${url.pathname}: the API lives under /v1/`)
    const method = req.method ?? 'GET'
    const parts = url.pathname.split('/').filter(Boolean)
    const matching = routes.map(r => ({ route: r, params: matchPath(r.path, parts) })).filter(m => m.params !== undefined)
    if (matching.length === 0) throw new CanopyError('ERR_NOT_FOUND', `No route ${method} ${url.pathname}`)
    const found = matching.find(m => m.route.method === method)
    if (found === undefined) {
      throw new CanopyError('ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${url.pathname}; use ${matching.map(m => m.route.method).join(' or ')}`)
    }
    const params = found.params!
    // Jobs are addressed by id or by a unique prefix of it; handlers see the full id.
    if (params.id !== undefined) params.id = agent.resolveJobId(params.id)
    const job = url.searchParams.get('job')
    if (job !== null) url.searchParams.set('job', agent.resolveJobId(job))
    return await found.route.handle({ req, res, url, params })
  }

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    if (req.url === '/metrics') return serveMetrics({ metrics: agent.metrics, logger }, req, res)
    route(req, res).then(reply => { if (reply !== undefined) send(res, reply[0], reply[1]) }, (err: unknown) => {
      if (res.headersSent) {
        res.destroy()
        return
      }
      const code = err instanceof CanopyError ? err.code : 'ERR_INTERNAL'
      const status = STATUS_BY_CODE[code] ?? 500
      if (status === 500) logger.error('control API failure', { err: String((err as Error)?.stack ?? err) })
      const body: ApiErrorBody = { error: { code, message: err instanceof Error ? err.message : String(err) } }
      send(res, status, body)
    })
  }
  const server = createServer(handle)

  if (await socketAnswers(socketPath)) {
    throw new CanopyError('ERR_AGENT_ALREADY_RUNNING', `Another agent answers on ${socketPath}`)
  }
  await rm(socketPath, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await chmod(socketPath, 0o600)
  const servers = [server]
  let tcpAddress: string | undefined
  if (tcp !== undefined) {
    // The same API over TCP, for remote administration: every request must carry the
    // token (compared in constant time); the Unix socket stays as it is.
    const expected = createHash('sha256').update(`Bearer ${tcp.token}`).digest()
    const tcpServer = createServer((req, res) => {
      if (serveDashboard(req, res)) return
      const given = createHash('sha256').update(req.headers.authorization ?? '').digest()
      if (!timingSafeEqual(given, expected)) {
        res.setHeader('www-authenticate', 'Bearer realm="canopy-agent"')
        send(res, 401, { error: { code: 'ERR_UNAUTHORIZED', message: 'This listener needs Authorization: Bearer <the token of --api-token-file>' } } satisfies ApiErrorBody)
        return
      }
      handle(req, res)
    })
    const { host, port } = parseListen(tcp.listen)
    try {
      await new Promise<void>((resolve, reject) => {
        tcpServer.once('error', reject)
        tcpServer.listen(port, host, () => {
          tcpServer.off('error', reject)
          resolve()
        })
      })
    } catch (err) {
      server.close()
      throw new CanopyError('ERR_API_LISTEN', `Cannot listen on ${tcp.listen} for the control API: ${(err as Error).message}`, { cause: err })
    }
    const address = tcpServer.address() as AddressInfo
    tcpAddress = `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
    servers.push(tcpServer)
    logger.info('control API listening on TCP', { address: tcpAddress })
  }
  return {
    ...(tcpAddress !== undefined ? { tcpAddress } : {}),
    close: async () => {
      await eventClients.endAll(1000)
      await Promise.all(servers.map(async s => {
        s.closeAllConnections()
        await new Promise<void>(resolve => s.close(() => resolve()))
      }))
    }
  }
}

/** "host:port", "[v6]:port" or ":port" (all interfaces). */
export function parseListen (text: string): { host: string, port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text)
  const port = Number(match?.[3])
  if (match === null || !(port >= 0 && port <= 65535)) throw new CanopyError('ERR_INVALID_ARGUMENT', `${text}: give the API listener as host:port, e.g. 127.0.0.1:7380`)
  return { host: match[1] ?? (match[2] === '' ? '0.0.0.0' : match[2]), port }
}
