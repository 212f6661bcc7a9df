import { createServer, request as httpRequest } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { chmod, rm } from 'node:fs/promises'
import { CanopyError } from '@canopy/core'
import type { ApiErrorBody, Logger } from '@canopy/core'
import type { CanopyAgent } from '../agent.ts'
import { EventClients, MAX_EVENT_CLIENTS, serveEvents } from './events.ts'

/** Largest request body the API reads. */
const MAX_BODY_BYTES = 1024 * 1024

export interface ApiServer {
  close: () => Promise<void>
}

const STATUS_BY_CODE: Record<string, number> = {
  ERR_INVALID_REQUEST: 400,
  ERR_BAD_JSON: 400,
  ERR_TOO_MANY_FILES: 400,
  ERR_URL_TOO_LONG: 400,
  ERR_NAME_TOO_LONG: 400,
  ERR_TOO_MANY_JOBS: 409,
  ERR_JOB_NOT_FOUND: 404,
  ERR_NO_PEER_NODE: 404,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_INVALID_STATE: 409,
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

/**
 * The control API: HTTP+JSON on a Unix socket that only the agent's user may use
 * (the state directory is 0700 and the socket 0600). Routes are listed in
 * @canopy/core's api.ts and in docs/API.md.
 */
export async function startApiServer (agent: CanopyAgent, socketPath: string, logger: Logger): Promise<ApiServer> {
  const eventClients = new EventClients()
  // Each event stream listens to the agent (four listeners).
  agent.setMaxListeners(4 * MAX_EVENT_CLIENTS + 10)
  /** Answers with [status, JSON body], or undefined when it answered itself (the event stream). */
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<[number, unknown] | undefined> => {
    const url = new URL(req.url ?? '/', 'http://agent')
    const parts = url.pathname.split('/').filter(Boolean)
    if (parts[0] !== 'v1') throw new CanopyError('ERR_NOT_FOUND', `No route ${url.pathname}: the API lives under /v1/`)
    const method = req.method ?? 'GET'
    const only = (allowed: string): void => {
      if (method !== allowed) throw new CanopyError('ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${url.pathname}; use ${allowed}`)
    }
    if (parts.length === 2 && parts[1] === 'status') {
      only('GET')
      return [200, agent.status()]
    }
    if (parts.length === 2 && parts[1] === 'events') {
      only('GET')
      serveEvents(agent, eventClients, res, url.searchParams.get('job') ?? undefined, logger)
      return undefined
    }
    if (parts.length === 2 && parts[1] === 'peers') {
      only('GET')
      return [200, agent.peers()]
    }
    if (parts.length === 2 && parts[1] === 'cache') {
      only('GET')
      return [200, agent.cache()]
    }
    if (parts.length === 3 && parts[1] === 'cache' && parts[2] === 'clear') {
      only('POST')
      return [200, await agent.clearCache()]
    }
    if (parts[1] === 'jobs' && parts.length === 2) {
      if (method === 'POST') return [201, await agent.createJob(await readJson(req))]
      only('GET')
      return [200, { jobs: agent.listJobs() }]
    }
    if (parts[1] === 'jobs' && parts.length === 3) {
      only('GET')
      return [200, agent.getJob(parts[2])]
    }
    if (parts[1] === 'jobs' && parts.length === 4 && ['suspend', 'resume', 'cancel', 'complete', 'priority', 'files'].includes(parts[3])) {
      only('POST')
      const id = parts[2]
      switch (parts[3]) {
        case 'priority': return [200, await agent.setPriority(id, await readJson(req))]
        case 'files': return [200, await agent.addFiles(id, await readJson(req))]
        case 'suspend': return [200, await agent.suspend(id)]
        case 'resume': return [200, await agent.resume(id)]
        case 'cancel': return [200, await agent.cancel(id)]
        case 'complete': return [200, await agent.complete(id)]
      }
    }
    throw new CanopyError('ERR_NOT_FOUND', `No route ${method} ${url.pathname}`)
  }

  const server = createServer((req, res) => {
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
  })

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
  return {
    close: async () => {
      await eventClients.endAll(1000)
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}
