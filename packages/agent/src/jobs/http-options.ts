/**
 * A job's HTTP options: custom request headers and credentials for the origin.
 * Their values are secrets as far as the agent knows (API keys travel in headers),
 * so they are write-only: checked here, stored with the job record (the state
 * directory is owner-only), sent to the origin, and shown only as header names and
 * a credential scheme.
 */
import { readFile } from 'node:fs/promises'
import { accessSync, constants } from 'node:fs'
import { isAbsolute } from 'node:path'
import { CanopyError } from '@canopy/core'
import type { JobHttpOptions, JobHttpView } from '@canopy/core'

export const HTTP_LIMITS = {
  /** Custom headers per job. */
  headers: 32,
  /** Bytes of all custom header names and values together (a server's own limit is often 8 KiB). */
  headerBytes: 8192
} as const

/**
 * Headers the agent sets itself or that would break the transfer: the request's
 * target and framing, the range and validators it sends, content negotiation of
 * the manifest, and Authorization (use credentials, so that it stays write-only
 * and is dropped on redirects to other hosts).
 */
const RESERVED = new Set(['host', 'range', 'if-range', 'if-modified-since', 'if-none-match', 'accept', 'authorization', 'proxy-authorization',
  'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'expect'])
/** RFC 9110 token characters. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

function bad (message: string): CanopyError {
  return new CanopyError('ERR_INVALID_REQUEST', message)
}

/** Checks `http` of a job request. */
export function validateHttpOptions (value: unknown): JobHttpOptions {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('http must be an object { headers?, credentials? }')
  const { headers, credentials, proxy, tls, ...rest } = value as Record<string, unknown>
  if (Object.keys(rest).length > 0) throw bad(`http.${Object.keys(rest)[0]} is not an HTTP option: use headers, credentials, proxy or tls`)
  const out: JobHttpOptions = {}
  if (headers !== undefined) {
    if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw bad('http.headers must be an object of header names to values')
    const entries = Object.entries(headers as Record<string, unknown>)
    if (entries.length > HTTP_LIMITS.headers) throw new CanopyError('ERR_TOO_MANY_HEADERS', `A job may set at most ${HTTP_LIMITS.headers} headers, not ${entries.length}`)
    let bytes = 0
    const seen = new Set<string>()
    for (const [name, v] of entries) {
      if (!TOKEN.test(name)) throw bad(`"${name.slice(0, 100)}" is not a valid header name`)
      const lower = name.toLowerCase()
      if (RESERVED.has(lower)) throw bad(`The ${name} header is set by the agent${lower === 'authorization' ? ': give credentials instead (http.credentials)' : ''}`)
      if (seen.has(lower)) throw bad(`The ${name} header appears twice`)
      seen.add(lower)
      // Visible ASCII and spaces only: no CR/LF (header injection), no other controls.
      if (typeof v !== 'string' || !/^[\x20-\x7e\t]*$/.test(v)) throw bad(`The value of the ${name} header must be printable ASCII text`)
      bytes += name.length + v.length
    }
    if (bytes > HTTP_LIMITS.headerBytes) throw new CanopyError('ERR_HEADERS_TOO_LARGE', `The job's headers take ${bytes} bytes; at most ${HTTP_LIMITS.headerBytes} are allowed`)
    out.headers = Object.fromEntries(entries) as Record<string, string>
  }
  if (credentials !== undefined) {
    const c = credentials as Record<string, unknown>
    const text = (x: unknown): x is string => typeof x === 'string' && x.length > 0 && x.length <= 4096 && /^[\x20-\x7e]*$/.test(x)
    if (c?.scheme === 'bearer' && text(c.token) && Object.keys(c).length === 2) out.credentials = { scheme: 'bearer', token: c.token }
    else if (c?.scheme === 'basic' && text(c.username) && !c.username.includes(':') && typeof c.password === 'string' && (c.password === '' || text(c.password)) && Object.keys(c).length === 3) {
      out.credentials = { scheme: 'basic', username: c.username, password: c.password }
    } else {
      throw bad('http.credentials must be { scheme: "bearer", token } or { scheme: "basic", username, password } (printable ASCII; no ":" in the username)')
    }
  }
  if (proxy !== undefined) {
    const url = typeof proxy === 'string' && proxy !== 'direct' && URL.canParse(proxy) ? new URL(proxy) : undefined
    if (proxy !== 'direct' && (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:'))) {
      throw bad('http.proxy must be "direct" or a proxy URL such as http://proxy.example.com:3128')
    }
    out.proxy = proxy as string
  }
  if (tls !== undefined) {
    if (typeof tls !== 'object' || tls === null || Array.isArray(tls)) throw bad('http.tls must be an object { caFile?, certFile?, keyFile? }')
    const files = tls as Record<string, unknown>
    for (const [key, path] of Object.entries(files)) {
      if (!['caFile', 'certFile', 'keyFile'].includes(key)) throw bad(`http.tls.${key} is not a TLS option: use caFile, certFile or keyFile`)
      if (typeof path !== 'string' || !isAbsolute(path)) throw bad(`http.tls.${key} must be an absolute path`)
      try {
        accessSync(path, constants.R_OK)
      } catch {
        throw bad(`http.tls.${key}: the agent cannot read ${path}`)
      }
    }
    if ((files.certFile === undefined) !== (files.keyFile === undefined)) throw bad('http.tls: give certFile and keyFile together')
    out.tls = files as NonNullable<JobHttpOptions['tls']>
  }
  return out
}

/** The PEM contents of a job's TLS files, read now (they may have been renewed since the job was created). */
export async function readTls (tls: JobHttpOptions['tls']): Promise<{ ca?: string, cert?: string, key?: string } | undefined> {
  if (tls === undefined) return undefined
  const read = async (path: string | undefined): Promise<string | undefined> => path === undefined ? undefined : await readFile(path, 'utf8')
  const [ca, cert, key] = await Promise.all([read(tls.caFile), read(tls.certFile), read(tls.keyFile)])
  return { ...(ca !== undefined ? { ca } : {}), ...(cert !== undefined ? { cert } : {}), ...(key !== undefined ? { key } : {}) }
}

/** The headers every request of the job to its origin carries. */
export function requestHeaders (http: JobHttpOptions | undefined): Record<string, string> {
  const headers: Record<string, string> = { ...http?.headers }
  const c = http?.credentials
  if (c?.scheme === 'bearer') headers.authorization = `Bearer ${c.token}`
  else if (c?.scheme === 'basic') headers.authorization = `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
  return headers
}

/** What a view shows: header names and the credential scheme, never values. */
export function httpView (http: JobHttpOptions | undefined): JobHttpView | undefined {
  if (http === undefined || Object.keys(http).length === 0) return undefined
  let proxy = http.proxy
  if (proxy !== undefined && proxy !== 'direct') {
    const url = new URL(proxy)
    url.username = ''
    url.password = ''
    proxy = url.href
  }
  return {
    headers: Object.keys(http.headers ?? {}),
    ...(http.credentials !== undefined ? { credentials: http.credentials.scheme } : {}),
    ...(proxy !== undefined ? { proxy } : {}),
    ...(http.tls !== undefined ? { tls: { ...http.tls } } : {})
  }
}
