import type { Stats } from 'node:fs'
import { realpath, stat, type FileHandle } from 'node:fs/promises'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import {
  assertBlockSize, CanopyError, contentKey, DEFAULT_BLOCK_SIZE, ErrorCode, isCanopyError,
  MANIFEST_MEDIA_TYPE, silentLogger, type Logger, type PublishedManifest
} from '@canopy/core'
import { BearerTokens, grantToken, type TokenGrant } from './auth.ts'
import { ConnectionLimits, defaultMaxConnections, defaultMaxConnectionsPerAddress } from './connections.ts'
import { listDirectory, listingHtml } from './listing.ts'
import { ErrFileChanged, ManifestStore, READ_FLAGS } from './manifests.ts'
import { createMetrics, type BodyKind, type OriginMetrics } from './metrics.ts'
import { contentType, prefersManifest } from './negotiate.ts'
import { isMissing, MalformedPathError, openInside, relPathSegments, resolveInside, urlPathSegments, type Jail } from './paths.ts'
import { parseRange } from './ranges.ts'
import { TokenBucket } from './ratelimit.ts'
import { Scanner } from './scan.ts'
import { createUploads, type UploadOptions, type Uploads } from './uploads.ts'
import { loadOrCreateSecret } from './secret.ts'
import { evaluatePreconditions, fileEtag, httpDate, ifRangeAllows } from './validators.ts'

/** Options of startOrigin; every default is listed here. */
export interface OriginOptions {
  /** Directory served (required). */
  root: string
  /** Origin state: `origin.secret` (created on first start, mode 0600) and the `manifests/` cache. Never served. */
  stateDir: string
  /** Listening address; default '127.0.0.1'. */
  host?: string
  /** Listening port; default 0 (any free port; the CLI passes 8080). */
  port?: number
  /** Manifest block size; default DEFAULT_BLOCK_SIZE (1 MiB). */
  blockSize?: number
  /**
   * When non-empty, every request (content, manifest, metrics) needs `Authorization: Bearer <token>`
   * of a token with the right for it; a bare string has download rights only. Default none.
   */
  tokens?: TokenGrant[]
  /** Accept tus uploads into `uploads.dir` (see UploadOptions); default off. */
  uploads?: UploadOptions
  /** Answer directory URLs with a listing (HTML, or JSON when asked); default false: 404. */
  listDirectories?: boolean
  /** Cap on all response bodies together, in bytes per second; default unlimited. */
  rateLimit?: number
  /** Compute manifests of everything under root at startup and on change; default true. */
  scan?: boolean
  /**
   * A response whose client takes no bytes for this long is dropped (its socket and
   * file closed); default 30,000 ms. A client reading slower than about 16 KiB per
   * timeout is dropped too.
   */
  sendTimeoutMs?: number
  /**
   * Connections served at once; more get a 503 and are closed. Default: half the
   * process's open-file limit less 64 (each connection may hold a socket and a file),
   * from 16 to 1,024; 1,000 where the limit cannot be read.
   */
  maxConnections?: number
  /** Connections from one client address; default a quarter of maxConnections, at least 64 (a branch behind NAT is one address). */
  maxConnectionsPerAddress?: number
  /** Default silentLogger. */
  logger?: Logger
}

export interface Origin {
  /** `http://host:port` */
  url: string
  /** The tus creation URL when uploads are on. */
  uploadUrl?: string
  port: number
  /** Resolves when the startup scan is done (at once when `scan` is false); never rejects. */
  ready: Promise<void>
  close: () => Promise<void>
  /** The manifest of a file under root (path relative to root), as the origin serves it. */
  manifestFor: (relPath: string, signal?: AbortSignal) => Promise<PublishedManifest>
}

export const ErrNotFound = 'ERR_NOT_FOUND'

/**
 * `/metrics` is reserved for the Prometheus exposition: a file literally named
 * `metrics` at the top of root cannot be fetched (one under a subdirectory can).
 */
const METRICS_PATH = '/metrics'
export const DEFAULT_SEND_TIMEOUT_MS = 30_000
/** Large reads: fewer syscalls and writes per byte on multi-GiB files. */
const READ_CHUNK = 256 * 1024

interface Context {
  jail: Jail
  secret: Buffer
  store: ManifestStore
  metrics: OriginMetrics
  tokens: BearerTokens
  bucket: TokenBucket | undefined
  uploads: Uploads | undefined
  listDirectories: boolean
  sendTimeoutMs: number
  logger: Logger
}

export async function startOrigin (options: OriginOptions): Promise<Origin> {
  const logger = options.logger ?? silentLogger
  const metrics = createMetrics()
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE
  assertBlockSize(blockSize)
  if (options.rateLimit !== undefined && !(options.rateLimit > 0 && Number.isFinite(options.rateLimit))) {
    throw new CanopyError(ErrorCode.InvalidArgument, `rateLimit must be a positive number of bytes per second, not ${options.rateLimit}`)
  }
  const sendTimeoutMs = options.sendTimeoutMs ?? DEFAULT_SEND_TIMEOUT_MS
  if (!(Number.isSafeInteger(sendTimeoutMs) && sendTimeoutMs > 0)) {
    throw new CanopyError(ErrorCode.InvalidArgument, `sendTimeoutMs must be a positive number of milliseconds, not ${sendTimeoutMs}`)
  }
  const maxConnections = options.maxConnections ?? defaultMaxConnections()
  let limits: ConnectionLimits
  try {
    limits = new ConnectionLimits({
      maxConnections,
      maxConnectionsPerAddress: options.maxConnectionsPerAddress ?? defaultMaxConnectionsPerAddress(maxConnections),
      onRefused: reason => metrics.refused(reason)
    })
  } catch (err) {
    throw new CanopyError(ErrorCode.InvalidArgument, (err as Error).message)
  }
  for (const token of (options.tokens ?? []).map(grantToken)) {
    if (!/^[\x21-\x7e]+$/.test(token)) {
      throw new CanopyError(ErrorCode.InvalidArgument, 'Bearer tokens must be non-empty printable ASCII without spaces')
    }
  }
  const root = await realpath(options.root).catch((err: unknown) => {
    throw new CanopyError(ErrorCode.InvalidArgument, `The served root ${options.root} does not exist or is unreadable: create it or fix the path`, { cause: err })
  })
  if (!(await stat(root)).isDirectory()) {
    throw new CanopyError(ErrorCode.InvalidArgument, `The served root ${options.root} is not a directory`)
  }
  const secret = await loadOrCreateSecret(options.stateDir)
  const tokens = new BearerTokens(options.tokens ?? [])
  const uploads = options.uploads === undefined ? undefined : await createUploads({ tokens, registry: metrics.registry, logger }, options.uploads)
  // Unfinished uploads are never served, even when the upload directory is under root.
  const jail: Jail = { root, excluded: [await realpath(options.stateDir), ...(uploads !== undefined ? [uploads.stagingDir] : [])] }
  const lifetime = new AbortController()
  const store = new ManifestStore({
    dir: join(jail.excluded[0], 'manifests'), jail, blockSize, logger, signal: lifetime.signal, onCount: metrics.manifests
  })
  await store.init()
  const ctx: Context = {
    jail,
    secret,
    store,
    metrics,
    tokens,
    bucket: options.rateLimit === undefined ? undefined : new TokenBucket(options.rateLimit),
    listDirectories: options.listDirectories ?? false,
    sendTimeoutMs,
    uploads,
    logger
  }

  const server = createServer((req, res) => {
    if (limits.refused(req.socket)) {
      res.destroy()
      return
    }
    handle(ctx, req, res).catch((err: unknown) => {
      logger.error('request failed', { method: req.method, url: req.url, error: String(err) })
      if (!res.headersSent) sendStatus(req, res, 500, 'Internal server error')
      else res.destroy()
    })
  })
  // Before the HTTP parser's own listener: a refused connection is answered and closed here.
  server.prependListener('connection', socket => limits.admit(socket))
  const host = options.host ?? '127.0.0.1'
  server.listen(options.port ?? 0, host)
  try {
    await once(server, 'listening')
  } catch (err) {
    lifetime.abort()
    await uploads?.close()
    throw err
  }
  const port = (server.address() as AddressInfo).port
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`

  const scanner = new Scanner(jail, store, logger, lifetime.signal)
  let ready = Promise.resolve()
  if (options.scan !== false) {
    // Watch first, so a change made during the scan is not missed.
    scanner.watch()
    ready = scanner.scan()
  }
  logger.info('origin listening', { url, root, blockSize, auth: ctx.tokens.enabled, rateLimit: options.rateLimit })

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      lifetime.abort()
      const closed = new Promise<void>(resolve => server.close(() => resolve()))
      server.closeAllConnections()
      await scanner.close()
      await uploads?.close()
      await store.settle()
      await closed
    })()
    return closing
  }

  const manifestFor = async (relPath: string, signal?: AbortSignal): Promise<PublishedManifest> => {
    let segments: string[]
    try {
      segments = relPathSegments(relPath)
    } catch (err) {
      throw new CanopyError(ErrorCode.InvalidArgument, `${relPath}: ${(err as Error).message}`)
    }
    const target = await resolveInside(jail, segments)
    if (target.kind !== 'file') throw new CanopyError(ErrNotFound, `No file ${relPath} under the served root ${root}`)
    return publish(ctx, await store.get(target.rel, target.abs, target.stat, signal))
  }

  return { url, port, ready, close, manifestFor, ...(uploads !== undefined ? { uploadUrl: `${url}${uploads.prefix}/` } : {}) }
}

function publish (ctx: Context, manifest: PublishedManifest): PublishedManifest {
  return { ...manifest, key: contentKey(ctx.secret, manifest.id).toString('base64') }
}

async function handle (ctx: Context, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET'
  // Fires when the response is done or the client went away, whichever comes first:
  // the signal ends waits and body transfers of a request nobody listens to any more.
  const gone = new AbortController()
  res.once('close', () => {
    gone.abort()
    ctx.metrics.request(method, res.statusCode)
  })
  // The upload endpoint reads its bodies and checks upload rights itself.
  if (ctx.uploads?.matches(req.url ?? '/') === true) return await ctx.uploads.handle(req, res)
  // A body on GET/HEAD means nothing here; drain it so the connection stays usable.
  req.resume()

  const auth = ctx.tokens.check(req.headers.authorization)
  if (auth === 'forbidden') return sendStatus(req, res, 403, 'This token has no download rights')
  if (auth !== 'ok') {
    const challenge = auth === 'invalid' ? 'Bearer realm="canopy", error="invalid_token"' : 'Bearer realm="canopy"'
    return sendStatus(req, res, 401, 'A valid bearer token is required', { 'WWW-Authenticate': challenge })
  }
  if (method !== 'GET' && method !== 'HEAD') {
    return sendStatus(req, res, 405, 'Only GET and HEAD are supported', { Allow: 'GET, HEAD' })
  }
  const target = req.url ?? '/'
  if (target.split(/[?#]/)[0] === METRICS_PATH) return await serveMetrics(ctx, req, res)

  let path: { segments: string[], trailingSlash: boolean }
  try {
    path = urlPathSegments(target)
  } catch (err) {
    if (!(err instanceof MalformedPathError)) throw err
    return sendStatus(req, res, err.status, err.status === 404 ? 'Not found' : `Bad request: ${err.message}`)
  }
  const resolved = await resolveInside(ctx.jail, path.segments)
  if (resolved.kind === 'directory' && ctx.listDirectories) {
    return await serveListing(ctx, req, res, resolved.abs, path.segments)
  }
  if (resolved.kind !== 'file' || path.trailingSlash) return sendStatus(req, res, 404, 'Not found')

  if (prefersManifest(req.headers.accept)) return await serveManifest(ctx, req, res, gone.signal, resolved)
  await serveFile(ctx, req, res, gone.signal, resolved.abs)
}

async function serveFile (ctx: Context, req: IncomingMessage, res: ServerResponse, gone: AbortSignal, abs: string): Promise<void> {
  // Headers come from the open file's own stat, so the ETag names the bytes that are
  // sent; HEAD opens it too, so that neither reveals anything of a file outside root.
  let handle: FileHandle | undefined
  let st: Stats
  try {
    handle = await openInside(ctx.jail, abs, READ_FLAGS)
    if (handle === undefined) return sendStatus(req, res, 404, 'Not found')
    st = await handle.stat()
  } catch (err) {
    await handle?.close()
    if (isMissing(err)) return sendStatus(req, res, 404, 'Not found')
    throw err
  }
  if (!st.isFile()) {
    await handle.close()
    return sendStatus(req, res, 404, 'Not found')
  }
  if (req.method !== 'GET') {
    await handle.close()
    handle = undefined
  }
  try {
    const validators = { etag: fileEtag(st), mtimeMs: st.mtimeMs }
    const headers: OutgoingHttpHeaders = {
      ETag: validators.etag,
      'Last-Modified': httpDate(st.mtimeMs),
      Vary: 'Accept'
    }
    const precondition = evaluatePreconditions(req.headers, validators)
    if (precondition === 304) return sendStatus(req, res, 304, '', headers)
    if (precondition === 412) return sendStatus(req, res, 412, 'Precondition failed', headers)

    headers['Accept-Ranges'] = 'bytes'
    headers['Content-Type'] = contentType(abs)
    headers['X-Content-Type-Options'] = 'nosniff'
    const range = ifRangeAllows(req.headers, validators) ? parseRange(req.headers.range, st.size) : { kind: 'none' as const }
    if (range.kind === 'unsatisfiable') {
      return sendStatus(req, res, 416, 'Range not satisfiable', { ...headers, 'Content-Range': `bytes */${st.size}` })
    }
    const start = range.kind === 'range' ? range.start : 0
    const end = range.kind === 'range' ? range.end : st.size - 1
    if (range.kind === 'range') headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`
    headers['Content-Length'] = end - start + 1
    res.writeHead(range.kind === 'range' ? 206 : 200, headers)
    if (handle === undefined || end < start) {
      res.end()
      return
    }
    const body = handle.createReadStream({ start, end, highWaterMark: READ_CHUNK })
    handle = undefined // the stream closes it
    await sendBody(ctx, res, gone, body, end - start + 1, 'content')
  } finally {
    await handle?.close()
  }
}

/**
 * Writes a body chunk by chunk, paced by the rate limit when there is one. Bytes
 * are counted when the socket has taken them, so an aborted response counts only
 * what left the origin.
 */
async function sendBody (ctx: Context, res: ServerResponse, gone: AbortSignal, body: AsyncIterable<Buffer> & { destroy: () => void }, length: number, kind: BodyKind): Promise<void> {
  const counted = (bytes: number) => (err?: Error | null): void => {
    if (err == null) ctx.metrics.bytesSent(kind, bytes)
  }
  let sent = 0
  try {
    if (gone.aborted) return
    for await (const chunk of body) {
      const pieceSize = ctx.bucket?.pieceSize ?? chunk.length
      for (let at = 0; at < chunk.length; at += pieceSize) {
        const piece = pieceSize >= chunk.length ? chunk : chunk.subarray(at, at + pieceSize)
        if (ctx.bucket !== undefined) await ctx.bucket.take(piece.length, gone)
        if (gone.aborted) return
        sent += piece.length
        if (!res.write(piece, counted(piece.length))) await drained(ctx, res, gone)
      }
    }
    if (sent !== length) {
      // The file shrank after its headers went out: cut the connection so the client
      // sees a short body rather than waiting for bytes that will not come.
      ctx.logger.warn('file shrank while being sent', { expected: length, sent })
      res.destroy()
      return
    }
    res.end()
  } catch (err) {
    if (gone.aborted || res.destroyed) return
    ctx.logger.error('sending a response body failed', { error: String(err) })
    res.destroy()
  } finally {
    body.destroy()
  }
}

async function serveManifest (ctx: Context, req: IncomingMessage, res: ServerResponse, gone: AbortSignal, file: { rel: string, abs: string, stat: Stats }): Promise<void> {
  let manifest: PublishedManifest
  try {
    manifest = publish(ctx, await ctx.store.get(file.rel, file.abs, file.stat, gone))
  } catch (err) {
    if (gone.aborted) return
    if (isMissing(err)) return sendStatus(req, res, 404, 'Not found')
    if (isCanopyError(err, ErrFileChanged)) {
      return sendStatus(req, res, 503, 'The file is changing; try again shortly', { 'Retry-After': '5' })
    }
    throw err
  }
  // The manifest id covers every field but the key, and the key follows from the id.
  const headers: OutgoingHttpHeaders = { ETag: `"m-${manifest.id}"`, Vary: 'Accept' }
  const precondition = evaluatePreconditions(req.headers, { etag: headers.ETag as string })
  if (precondition === 304) return sendStatus(req, res, 304, '', headers)
  if (precondition === 412) return sendStatus(req, res, 412, 'Precondition failed', headers)
  const body = Buffer.from(JSON.stringify(manifest))
  res.writeHead(200, {
    ...headers,
    'Content-Type': MANIFEST_MEDIA_TYPE,
    'Content-Length': body.length,
    'X-Content-Type-Options': 'nosniff'
  })
  if (req.method === 'HEAD') {
    res.end()
    return
  }
  await sendBody(ctx, res, gone, oneChunk(body), body.length, 'manifest')
}

/**
 * Waits until the socket took what was written, at most the send timeout: a client
 * that stops reading must not hold a socket, a file and their buffers for ever
 * (issue 13, item 8: 1,100 such clients took the origin from 111 to 981 MiB RSS).
 */
async function drained (ctx: Context, res: ServerResponse, gone: AbortSignal): Promise<void> {
  const deadline = AbortSignal.timeout(ctx.sendTimeoutMs)
  try {
    await once(res, 'drain', { signal: AbortSignal.any([gone, deadline]) })
  } catch (err) {
    if (gone.aborted || !deadline.aborted) throw err
    ctx.metrics.stalled()
    ctx.logger.debug('dropped a response: its client took nothing for the send timeout', { sendTimeoutMs: ctx.sendTimeoutMs })
    res.destroy()
    throw err
  }
}

function oneChunk (buffer: Buffer): AsyncIterable<Buffer> & { destroy: () => void } {
  return {
    async * [Symbol.asyncIterator] () { yield buffer },
    destroy () {}
  }
}

async function serveMetrics (ctx: Context, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = Buffer.from(await ctx.metrics.registry.metrics())
  res.writeHead(200, { 'Content-Type': ctx.metrics.registry.contentType, 'Content-Length': body.length })
  res.end(req.method === 'HEAD' ? undefined : body)
}

async function serveListing (ctx: Context, req: IncomingMessage, res: ServerResponse, abs: string, segments: string[]): Promise<void> {
  const entries = await listDirectory(ctx.jail, abs)
  if (entries === undefined) return sendStatus(req, res, 404, 'Not found')
  const base = segments.length === 0 ? '/' : `/${segments.map(encodeURIComponent).join('/')}/`
  const json = /\bapplication\/json\b/i.test(req.headers.accept ?? '')
  const body = Buffer.from(json ? JSON.stringify({ path: decodeURIComponent(base), entries }) : listingHtml(base, entries))
  res.writeHead(200, {
    'Content-Type': json ? 'application/json' : 'text/html; charset=utf-8',
    'Content-Length': body.length,
    'X-Content-Type-Options': 'nosniff',
    Vary: 'Accept'
  })
  res.end(req.method === 'HEAD' ? undefined : body)
}

/** A status with a short plain-text reason (no body on HEAD and 304). */
function sendStatus (req: IncomingMessage, res: ServerResponse, status: number, message: string, headers: OutgoingHttpHeaders = {}): void {
  const body = status === 304 || req.method === 'HEAD' || message === '' ? undefined : Buffer.from(message + '\n')
  res.writeHead(status, body === undefined
    ? headers
    : { ...headers, 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length })
  res.end(body)
}
