import { readFileSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'

/** The dashboard's files: plain HTML, JS and CSS, served as they are (no build step). */
const FILES: Record<string, { file: string, type: string }> = {
  '/dashboard/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' }
}

/** Read once, at the first request: three small files (~20 KiB). */
let loaded: Map<string, Buffer> | undefined

function content (path: string): Buffer {
  loaded ??= new Map(Object.entries(FILES).map(([route, { file }]) => [route, readFileSync(new URL(file, import.meta.url))]))
  return loaded.get(path)!
}

/**
 * Serves the web dashboard's static files under /dashboard/ and answers true, or
 * answers false for any other path. The files hold no data: the page asks the
 * control API for it (GET /v1/status, /v1/jobs, /v1/peers, /v1/cache, /v1/events)
 * with the bearer token it reads from the URL's fragment (#token=..., which
 * browsers never send to the server), so on the TCP listener the files are served
 * without the token and every byte of data still needs it.
 */
export function serveDashboard (req: IncomingMessage, res: ServerResponse): boolean {
  const path = new URL(req.url ?? '/', 'http://agent').pathname
  if (path === '/dashboard') {
    res.writeHead(308, { location: '/dashboard/' }).end()
    return true
  }
  const entry = FILES[path]
  if (entry === undefined) return false
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end()
    return true
  }
  const body = content(path)
  res.writeHead(200, {
    'content-type': entry.type,
    'content-length': body.length,
    'cache-control': 'no-cache',
    // Only its own files; data from this origin only; no framing by other sites.
    'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer'
  })
  res.end(req.method === 'HEAD' ? undefined : body)
  return true
}
