import { Agent, EnvHttpProxyAgent, ProxyAgent, interceptors, request } from 'undici'
import type { Dispatcher } from 'undici'
import { rootCertificates } from 'node:tls'
import { MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES, SIDECAR_SUFFIX, decodeManifest, manifestSizeLimit, parseContentRange } from '@canopy/core'
import type { PublishedManifest } from '@canopy/core'
import { REMOTE_CHANGED, JobErrorCode, TransferError, classifyError, httpStatusError } from '../errors.ts'

type Body = Awaited<ReturnType<typeof request>>['body']

export interface HttpOptions {
  /** Connections per origin; also the most block requests in flight to one origin. */
  connections: number
  /** Milliseconds to wait for response headers, and between body chunks. */
  timeoutMs: number
  /**
   * 'environment' (default): HTTP_PROXY / HTTPS_PROXY / NO_PROXY (either case), as
   * curl and most tools read them; 'direct': no proxy; else a proxy URL.
   */
  proxy?: string
  /** PEM contents: extra trusted CAs (added to Node's), a client certificate and its key. */
  tls?: { ca?: string, cert?: string, key?: string }
}

/** Whether the environment names a proxy (HTTP_PROXY, HTTPS_PROXY, either case). */
export function environmentProxy (env: NodeJS.ProcessEnv = process.env): boolean {
  return ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'].some(name => (env[name] ?? '') !== '')
}

/** Whether requests made with these options go through a proxy (then the agent's direct range client must not be used). */
export function usesProxy (options: Pick<HttpOptions, 'proxy'>): boolean {
  const proxy = options.proxy ?? 'environment'
  return proxy === 'environment' ? environmentProxy() : proxy !== 'direct'
}

/** Redirects followed before a request fails (CDNs and mirrors redirect). */
const MAX_REDIRECTS = 5

/**
 * A keep-alive connection pool that follows redirects: one per agent, shared by the
 * jobs without proxy or TLS options of their own, and one per transfer of a job
 * that has them.
 */
export function createDispatcher (options: HttpOptions): Dispatcher {
  const tls = options.tls === undefined ? undefined : { ...options.tls, ...(options.tls.ca !== undefined ? { ca: [...rootCertificates, options.tls.ca] } : {}) }
  const common = {
    connections: options.connections,
    headersTimeout: options.timeoutMs,
    bodyTimeout: options.timeoutMs,
    keepAliveTimeout: 30_000,
    ...(tls !== undefined ? { connect: tls } : {})
  }
  const proxy = options.proxy ?? 'environment'
  const base = proxy === 'direct' || (proxy === 'environment' && !environmentProxy())
    ? new Agent(common)
    : proxy === 'environment'
      ? new EnvHttpProxyAgent({ ...common, ...(tls !== undefined ? { requestTls: tls } : {}) })
      : new ProxyAgent({ uri: proxy, ...common, ...(tls !== undefined ? { requestTls: tls } : {}) })
  return base.compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTS }))
}

export interface RangeResponse {
  /** 206 for exactly the bytes asked for; the caller reads or discards `body`. */
  kind: 'partial'
  body: Body
}

export interface FullResponse {
  /** 200: the server ignored Range; the caller reads or discards `body`. */
  kind: 'full'
  body: Body
  contentLength: number
}

/**
 * Stops reading a response body we do not want. undici emits an error on a body
 * destroyed before its end; nobody waits for this one, so swallow it.
 */
export function discard (body: Body): void {
  body.on('error', () => {})
  body.destroy()
}

/** Reads a whole body up to `limit` bytes. */
export async function readBounded (body: Body, limit: number, url: string): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > limit) {
      discard(body)
      throw new TransferError(JobErrorCode.ProtocolViolation, `the response from ${url} is larger than ${limit} bytes`, { transient: false, url })
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, total)
}

function header (headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/**
 * GETs bytes [offset, offset+length) of `url`. A 206 must carry a Content-Range for
 * exactly those bytes. A 200 means the server ignores Range. Either way the body is
 * handed back unread.
 */
export async function requestRange (dispatcher: Dispatcher, url: string, offset: number, length: number,
  headers: Record<string, string>, signal: AbortSignal, expectedTotal?: number): Promise<RangeResponse | FullResponse> {
  let res
  try {
    res = await request(url, {
      dispatcher,
      method: 'GET',
      headers: { ...headers, range: `bytes=${offset}-${offset + length - 1}` },
      signal
    })
  } catch (err) {
    if (signal.aborted) throw err
    throw classifyError(err, url, 'network')
  }
  if (res.statusCode === 206) {
    const range = parseContentRange(header(res.headers, 'content-range'))
    const otherTotal = range?.total !== undefined && expectedTotal !== undefined && range.total !== expectedTotal
    if (otherTotal) {
      discard(res.body)
      // The file changed size under its manifest: rediscover it.
      throw new TransferError(REMOTE_CHANGED, `the file on the server is ${range.total} bytes, not ${expectedTotal}: it changed; starting it over`, { transient: true, url })
    }
    if (range === undefined || range.first !== offset || range.last !== offset + length - 1) {
      discard(res.body)
      throw new TransferError(JobErrorCode.ProtocolViolation,
        `the server answered a different range than asked for (${header(res.headers, 'content-range') ?? 'no Content-Range'})`, { transient: true, url })
    }
    return { kind: 'partial', body: res.body }
  }
  if (res.statusCode === 200) {
    return { kind: 'full', body: res.body, contentLength: Number(header(res.headers, 'content-length') ?? -1) }
  }
  discard(res.body)
  if (res.statusCode === 416) {
    throw new TransferError(REMOTE_CHANGED, 'the file on the server is shorter than its manifest says: it changed; starting it over', { transient: true, url })
  }
  throw httpStatusError(res.statusCode, url)
}

/** A manifest's size and block size come within its first bytes; past this, the reader stops looking for them. */
const MANIFEST_HEADER_PROBE = 64 * 1024

/**
 * Reads a manifest response, stopping as soon as it grows beyond what a manifest of
 * its own size and block size can take (read from its first bytes), or beyond
 * MAX_MANIFEST_BYTES: a hostile origin cannot make the agent buffer 64 MiB for a
 * manifest of one block.
 */
async function readManifestBody (body: Body, from: string): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  let limit: number | undefined
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk)
    total += chunk.length
    if (limit === undefined && total <= MANIFEST_HEADER_PROBE) limit = manifestSizeLimit(Buffer.concat(chunks, total))
    const max = limit ?? (total > MANIFEST_HEADER_PROBE ? MAX_MANIFEST_BYTES : Infinity)
    if (total > Math.min(max, MAX_MANIFEST_BYTES)) {
      discard(body)
      throw new TransferError(JobErrorCode.InvalidManifest,
        `Invalid manifest: more than the ${Math.min(max, MAX_MANIFEST_BYTES)} bytes a manifest ${limit === undefined ? '' : 'of its size and block size '}can take; the publisher must fix it (from ${from})`,
        { transient: false, url: from })
    }
  }
  return Buffer.concat(chunks, total)
}

/** The URL of the static sidecar manifest of `url` (`<path>.canopy`, query kept). */
export function sidecarUrl (url: string): string {
  const u = new URL(url)
  u.pathname += SIDECAR_SUFFIX
  return u.toString()
}

/**
 * Finds the manifest of `url`: content negotiation on the same URL first, then the
 * static sidecar `<url>.canopy`; `undefined` when the server publishes neither.
 * A manifest that is present but invalid is an error, not "no manifest": the
 * publisher made a mistake the user should hear about.
 */
export async function discoverManifest (dispatcher: Dispatcher, url: string, headers: Record<string, string>,
  signal: AbortSignal): Promise<PublishedManifest | undefined> {
  const get = async (target: string, accept: string) => {
    try {
      return await request(target, { dispatcher, method: 'GET', headers: { ...headers, accept }, signal })
    } catch (err) {
      if (signal.aborted) throw err
      throw classifyError(err, target, 'network')
    }
  }
  // A manifest is parsed with memory bounded by its own block count (decodeManifest);
  // one announced as larger than any manifest can be is not even read.
  const decode = async (res: { body: Body, headers: Record<string, string | string[] | undefined> }, from: string): Promise<PublishedManifest> => {
    const body = res.body
    const announced = Number(header(res.headers, 'content-length') ?? 0)
    if (announced > MAX_MANIFEST_BYTES) {
      discard(body)
      throw new TransferError(JobErrorCode.InvalidManifest,
        `Invalid manifest: ${announced} bytes announced, more than any manifest can take (${MAX_MANIFEST_BYTES}); the publisher must fix it (from ${from})`,
        { transient: false, url: from })
    }
    const bytes = await readManifestBody(body, from)
    try {
      return decodeManifest(bytes)
    } catch (err) {
      throw new TransferError(JobErrorCode.InvalidManifest, `${(err as Error).message} (from ${from})`, { transient: false, url: from, cause: err })
    }
  }

  const res = await get(url, `${MANIFEST_MEDIA_TYPE}, */*;q=0.1`)
  const type = header(res.headers, 'content-type') ?? ''
  if (res.statusCode === 200 && type.startsWith(MANIFEST_MEDIA_TYPE)) return await decode(res, url)
  // The server answered with the content itself (or an error): stop reading it now.
  discard(res.body)
  if (res.statusCode !== 200 && res.statusCode !== 206) throw httpStatusError(res.statusCode, url)

  const sidecar = sidecarUrl(url)
  const side = await get(sidecar, `${MANIFEST_MEDIA_TYPE}, application/json;q=0.9, */*;q=0.1`)
  // Servers that answer every path with an HTML page (single-page-app hosts, some
  // CDNs) have no sidecar; a sidecar is served as the manifest type, JSON or bytes.
  const html = side.statusCode === 200 && (header(side.headers, 'content-type') ?? '').startsWith('text/html')
  if (side.statusCode === 200 && !html) return await decode(side, sidecar)
  discard(side.body)
  if (html || side.statusCode === 404 || side.statusCode === 410 || side.statusCode === 403 || side.statusCode === 401) return undefined
  throw httpStatusError(side.statusCode, sidecar)
}
