/** `canopy dashboard`: the URL of the agent's web dashboard, or a local read-only bridge to it. */
import { spawn } from 'node:child_process'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer, request } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { CanopyClient } from '@canopy/client'
import { ExitCode, UsageError } from '../errors.ts'
import { flag, out, remoteAgent, say, str } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { untilSignal } from './signals.ts'

/** Opens `url` in the desktop's browser; failures only print (a server has none). */
function openBrowser (url: string): void {
  const [command, ...args] = process.platform === 'darwin' ? ['open', url] : process.platform === 'win32' ? ['cmd', '/c', 'start', '', url] : ['xdg-open', url]
  const child = spawn(command, args, { stdio: 'ignore', detached: true })
  child.on('error', err => say(`canopy dashboard: cannot open a browser (${err.message}): open the URL above yourself`))
  child.unref()
}

/**
 * Serves the dashboard's files and passes GET requests for /v1/* to the agent's
 * Unix socket, for a browser on this machine holding `token`. Read-only: the bridge
 * forwards no other method, so the page cannot change jobs through it.
 */
async function startBridge (socketPath: string, token: string, port: number): Promise<{ url: string, close: () => Promise<void> }> {
  const { serveDashboard } = await import('@canopy/agent/dashboard')
  const expected = createHash('sha256').update(`Bearer ${token}`).digest()
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (serveDashboard(req, res)) return
    const given = createHash('sha256').update(req.headers.authorization ?? '').digest()
    if (!timingSafeEqual(given, expected)) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'ERR_UNAUTHORIZED', message: 'Open the URL canopy dashboard printed (with its #token=...)' } }))
      return
    }
    if (req.method !== 'GET' || !(req.url ?? '').startsWith('/v1/')) {
      res.writeHead(405, { allow: 'GET', 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'ERR_METHOD_NOT_ALLOWED', message: 'canopy dashboard only reads: use the CLI to change jobs' } }))
      return
    }
    const upstream = request({ socketPath, path: req.url, method: 'GET', headers: { accept: req.headers.accept ?? '*/*' } }, answer => {
      res.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/json', 'cache-control': 'no-store' })
      res.flushHeaders()
      answer.pipe(res)
    })
    upstream.on('error', err => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'ERR_AGENT_NOT_RUNNING', message: `The agent does not answer: ${err.message}` } }))
      else res.destroy()
    })
    res.on('close', () => upstream.destroy())
    upstream.end()
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve())
  })
  const address = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${address.port}`,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

export const dashboardVerb: Verb = {
  name: 'dashboard',
  summary: 'print (or open) the URL of the agent\'s web dashboard',
  help: `Usage: canopy dashboard [--open] [--port N] [--url URL --token-file F] [--state-dir D]

The agent's web dashboard: jobs with their progress, state and reason, bytes by
source over time, peers and cache, live. It lives on the agent's TCP listener
(canopy agent --api-listen) at /dashboard/, behind the listener's token, which
the URL carries after "#" (browsers never send that part to a server).

With --url (or CANOPY_AGENT_URL) and --token-file (or CANOPY_API_TOKEN_FILE), it
prints that URL and exits. For the local agent, it serves the dashboard itself
on 127.0.0.1 (a read-only bridge to the agent's socket, with a token of its own)
and prints the URL; it runs until Ctrl-C.

Options:
  --open          also open the URL in the desktop's browser
  --port N        the local bridge's port (default: any free port)
  --url URL       an agent's TCP listener, e.g. http://10.0.0.5:7380
  --token-file F  the file that holds its token (the agent's --api-token-file)
  --state-dir D   the local agent's state directory

Examples:
  canopy dashboard --open
  canopy dashboard --url http://10.0.0.5:7380 --token-file ~/.canopy/branch-lyon.token
`,
  options: { open: { type: 'boolean' }, port: { type: 'string' } },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const remote = await remoteAgent(ctx.values)
    if (remote !== undefined) {
      if (remote.token === undefined) throw new UsageError(`the dashboard of ${remote.url} needs its token: give --token-file F (or CANOPY_API_TOKEN_FILE)`, 'dashboard')
      const url = `${new URL(remote.url).origin}/dashboard/#token=${encodeURIComponent(remote.token)}`
      out(`${url}\n`)
      if (flag(ctx.values, 'open')) openBrowser(url)
      return ExitCode.Ok
    }
    const portText = str(ctx.values, 'port') ?? '0'
    if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw new UsageError(`--port ${portText}: a TCP port, 0 to 65535`, 'dashboard')
    // Fails with "no agent" (exit 3) before anything listens.
    const client = new CanopyClient({ stateDir: ctx.stateDir })
    try {
      await client.status()
    } finally {
      await client.close()
    }
    const { socketPath } = client
    const stopping = untilSignal('canopy dashboard')
    const token = randomBytes(18).toString('base64url')
    const bridge = await startBridge(socketPath, token, Number(portText))
    const url = `${bridge.url}/dashboard/#token=${token}`
    out(`${url}\n`)
    say('canopy dashboard: serving the local agent\'s dashboard on 127.0.0.1 until Ctrl-C')
    if (flag(ctx.values, 'open')) openBrowser(url)
    await stopping
    await bridge.close()
    return ExitCode.Ok
  }
}
