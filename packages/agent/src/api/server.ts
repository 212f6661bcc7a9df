import { createServer, request as httpRequest } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { chmod, rm } from 'node:fs/promises'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { CanopyError, httpStatusOf } from '@canopy/core'
import type { AgentControl, ApiErrorBody, Logger } from '@canopy/core'
import type { RequestLimits } from '../options.ts'
import { validateAddFiles, validateCreateJob, validatePriority, validateRateLimit } from '../jobs/validate.ts'
import { EventClients, serveEvents } from './events.ts'
import { serveDashboard } from './dashboard/serve.ts'
import { serveMetrics } from '../metrics/index.ts'
import { isDiskFull, stateDiskFull } from '../store/disk-full.ts'
import { pageOfJobs } from './job-pages.ts'
import type { AgentMetrics } from '../metrics/index.ts'

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

/** A %-encoded path segment; a malformed escape is the client's mistake (400), not ours. */
function decodePathSegment (segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new CanopyError('ERR_INVALID_REQUEST', `The path segment "${segment.slice(0, 80)}" has a malformed %-escape: encode "%" as %25`)
  }
}

/** The path's {placeholders} filled from `parts`, or undefined when it does not match. */
function matchPath (template: string, parts: string[]): Record<string, string> | undefined {
  const pattern = template.split('/').filter(Boolean)
  if (pattern.length !== parts.length) return undefined
  const params: Record<string, string> = {}
  for (const [i, segment] of pattern.entries()) {
    if (segment.startsWith('{')) params[segment.slice(1, -1)] = decodePathSegment(parts[i])
    else if (segment !== parts[i]) return undefined
  }
  return params
}

/**
 * Every route of the control API. docs/openapi.json documents exactly these (a test
 * compares the two and checks live answers against the document's schemas).
 * Request bodies are checked here, against `limits`; the agent takes typed arguments.
 */
export function apiRoutes (agent: AgentControl, eventClients: EventClients, logger: Logger, limits: RequestLimits): ApiRoute[] {
  const ok = (body: unknown): [number, unknown] => [200, body]
  return [
    { method: 'GET', path: '/v1/status', handle: async () => ok(await agent.status()) },
    {
      method: 'GET',
      path: '/v1/events',
      handle: async ({ res, url }) => {
        await serveEvents(agent, eventClients, res, url.searchParams.get('job') ?? undefined, logger)
        return undefined
      }
    },
    { method: 'GET', path: '/v1/policy', handle: async () => ok(await agent.policy()) },
    { method: 'POST', path: '/v1/policy', handle: async ({ req }) => ok(await agent.setPolicy(await readJson(req))) },
    { method: 'GET', path: '/v1/peers', handle: async () => ok(await agent.peers()) },
    { method: 'GET', path: '/v1/cache', handle: async () => ok(await agent.cache()) },
    { method: 'POST', path: '/v1/cache/clear', handle: async () => ok(await agent.clearCache()) },
    { method: 'GET', path: '/v1/jobs', handle: async ({ url }) => ok(pageOfJobs(await agent.listJobs(), url.searchParams)) },
    { method: 'POST', path: '/v1/jobs', handle: async ({ req }) => [201, await agent.createJob(validateCreateJob(await readJson(req), limits))] },
    { method: 'GET', path: '/v1/jobs/{id}', handle: async ({ params }) => ok(await agent.getJob(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/suspend', handle: async ({ params }) => ok(await agent.suspend(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/resume', handle: async ({ params }) => ok(await agent.resume(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/cancel', handle: async ({ params }) => ok(await agent.cancel(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/complete', handle: async ({ params }) => ok(await agent.complete(params.id)) },
    { method: 'POST', path: '/v1/jobs/{id}/priority', handle: async ({ req, params }) => ok(await agent.setPriority(params.id, validatePriority(await readJson(req)))) },
    { method: 'POST', path: '/v1/jobs/{id}/rate-limit', handle: async ({ req, params }) => ok(await agent.setRateLimit(params.id, validateRateLimit(await readJson(req)) ?? null)) },
    {
      method: 'POST',
      path: '/v1/jobs/{id}/files',
      handle: async ({ req, params }) => {
        const body = await readJson(req)
        // Checked against the job's destinations as they are now; the agent checks the fit again under the job's lock.
        const existing = (await agent.getJob(params.id)).files.map(f => f.path)
        return ok(await agent.addFiles(params.id, validateAddFiles(body, limits, existing)))
      }
    }
  ]
}

/** What the API server serves, and with what. */
export interface ApiServerComponents {
  control: AgentControl
  /** Served at /metrics (Prometheus text), behind the same access as the API. */
  metrics: AgentMetrics
  logger: Logger
  /** The limits request bodies are checked against. */
  limits: RequestLimits
}

export interface ApiServerInit {
  socketPath: string
  tcp?: TcpApiOptions
}

/**
 * The control API: HTTP+JSON on a Unix socket that only the agent's user may use
 * (the state directory is 0700 and the socket 0600). Routes: apiRoutes above;
 * documented in docs/API.md and docs/openapi.json.
 */
export async function startApiServer (components: ApiServerComponents, init: ApiServerInit): Promise<ApiServer> {
  const { control: agent, metrics, logger, limits } = components
  const { socketPath, tcp } = init
  const eventClients = new EventClients()
  const routes = apiRoutes(agent, eventClients, logger, limits)
  /** Answers with [status, JSON body], or undefined when it answered itself (the event stream). */
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<[number, unknown] | undefined> => {
    // The target is a path: joined to the base, not resolved against it ("//host/..." would name another host).
    const url = URL.parse(`http://agent${req.url?.startsWith('/') === true ? req.url : `/${req.url ?? ''}`}`)
    if (url === null) throw new CanopyError('ERR_INVALID_REQUEST', `The request target ${JSON.stringify(req.url?.slice(0, 200))} is not a path: ask for /v1/...`)
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
    if (req.url === '/metrics') return serveMetrics({ metrics, logger }, req, res)
    route(req, res).then(reply => { if (reply !== undefined) send(res, reply[0], reply[1]) }, (thrown: unknown) => {
      if (res.headersSent) {
        res.destroy()
        return
      }
      // A full state disk fails the store's writes: say so, not "internal error".
      const err = !(thrown instanceof CanopyError) && isDiskFull(thrown) ? stateDiskFull(thrown) : thrown
      const code = err instanceof CanopyError ? err.code : 'ERR_INTERNAL'
      const status = httpStatusOf(code)
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
    const expected = createHash('sha256').update(tcp.token).digest()
    const tcpServer = createServer((req, res) => {
      if (serveDashboard(req, res)) return
      // The scheme is case-insensitive (RFC 9110 §11.1), the token is not.
      const given = createHash('sha256').update(/^bearer +(\S+) *$/i.exec(req.headers.authorization ?? '')?.[1] ?? '').digest()
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
