import { lstat, mkdir, readdir, readFile, realpath, statfs, writeFile } from 'node:fs/promises'
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { join } from 'node:path'
import { ERRORS, EVENTS, Server as TusServer, type Upload } from '@tus/server'
import { Counter, Gauge, type Registry } from 'prom-client'
import { CanopyError, ErrorCode, silentLogger, type Logger } from '@canopy/core'
import type { BearerTokens } from './auth.ts'
import { checkUploadName, STAGING_DIR, UploadNameError } from './upload-names.ts'
import { runUploadHandler, type UploadHandlerOptions } from './upload-reply.ts'
import {
  CHECKSUM_ALGORITHMS, DISK_FULL_MESSAGE, isDiskFull, refusal, requestScope, UploadStore,
  type CompletedUpload, type RequestScope, type TusRefusal
} from './upload-store.ts'

/** The upload endpoint's options (`startOrigin({ uploads })`); every default is listed here. */
export interface UploadOptions {
  /** Directory where completed uploads appear (required); unfinished ones wait in its `.canopy-uploads/`. */
  dir: string
  /** URL path of the tus creation endpoint; default '/uploads/'. */
  path?: string
  /** Largest upload accepted, in bytes (refused from `Upload-Length`, before any byte is sent); default 64 GiB. */
  maxSize?: number
  /** Most unfinished uploads at once; default 100. */
  maxSessions?: number
  /** An unfinished upload without a byte for this long is deleted (BITS: 14 days); default 14 days; 0 never. */
  expiryMs?: number
  /** Free space kept on the upload disk: an upload that would eat into it is refused; default 256 MiB. */
  minFreeBytes?: number
  /** Replace an existing file of the same name; default false (409 at creation and at completion). */
  overwrite?: boolean
  /** `--on-upload`: run for each completed upload; its stdout is the reply. Default none. */
  handler?: UploadHandlerOptions
}

export const DEFAULT_UPLOAD_PATH = '/uploads/'
export const DEFAULT_MAX_UPLOAD_SIZE = 64 * 1024 ** 3
export const DEFAULT_MAX_UPLOAD_SESSIONS = 100
export const DEFAULT_UPLOAD_EXPIRY_MS = 14 * 24 * 3600 * 1000
export const DEFAULT_MIN_FREE_BYTES = 256 * 1024 * 1024
/** How often expired uploads are looked for. */
const SWEEP_INTERVAL_MS = 3600 * 1000
/** tus upload ids as the server makes them (Uid.rand: 16 random bytes, hex). */
const UPLOAD_ID = /^[0-9a-f]{32}$/
const REPLY_SUFFIX = '/reply'

export interface UploadsComponents {
  tokens: BearerTokens
  registry: Registry
  logger?: Logger
}

export interface Uploads {
  /** The path prefix served, without its trailing slash ('/uploads'). */
  prefix: string
  /** realpath of the upload directory, and of its staging directory (never served for download). */
  dir: string
  stagingDir: string
  /** Whether a request target belongs to the upload endpoint. */
  matches: (target: string) => boolean
  handle: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  /** Deletes expired uploads now (also done hourly); resolves with how many unfinished ones went. */
  sweep: () => Promise<number>
  close: () => Promise<void>
}

type RefusalReason = 'auth' | 'name' | 'too_large' | 'exists' | 'sessions' | 'disk_full' | 'checksum' | 'other'

function createUploadMetrics (registry: Registry): {
  bytes: Counter, completed: Counter, refused: Counter<'reason'>, sessions: Gauge, handler: Counter<'outcome'>
} {
  const metrics = {
    bytes: new Counter({ name: 'canopy_origin_upload_bytes_received_total', help: 'Upload bytes stored', registers: [registry] }),
    completed: new Counter({ name: 'canopy_origin_uploads_completed_total', help: 'Uploads completed and placed under their final name', registers: [registry] }),
    refused: new Counter({ name: 'canopy_origin_uploads_refused_total', help: 'Upload requests refused, by reason', labelNames: ['reason'] as const, registers: [registry] }),
    sessions: new Gauge({ name: 'canopy_origin_upload_sessions', help: 'Unfinished uploads held', registers: [registry] }),
    handler: new Counter({ name: 'canopy_origin_upload_handler_runs_total', help: '--on-upload handler runs, by outcome', labelNames: ['outcome'] as const, registers: [registry] })
  }
  metrics.bytes.inc(0)
  return metrics
}

/** The parts of @tus/server's PATCH handler (not exported; 2.4) that readPatchBodiesDirectly wraps. */
interface PatchHandlerInternals {
  send: (req: Request, context: { signal: AbortSignal }, headers?: Headers) => Promise<Response>
  writeToStore: (body: ReadableStream | null, upload: Upload, maxBodySize: number, context: { signal: AbortSignal }) => Promise<number>
}

/**
 * @tus/server 2 hands a PATCH body to the store through two web-stream adapters
 * (srvx's Readable.toWeb of the request, then Readable.fromWeb) and two more Node
 * streams: ~3.3 CPU-seconds per GiB on the origin, more than the rest of the upload
 * path (bench/upload.ts, cpuSecondsPerGiB.originDuringCurl). The request scope carries
 * the Node request, and the PATCH handler is wrapped so that the web body is never
 * made (`body` null, which it takes for an empty one) and the store reads the request
 * itself, within the same limit. The handler's checks (offset, length, expiry, lock)
 * and its answer are unchanged. Should an update of @tus/server rename these methods,
 * the wrapper stays off and uploads take the slower path (a warning says so).
 */
function readPatchBodiesDirectly (tus: TusServer, store: UploadStore, logger: Logger): void {
  const handler = tus.handlers.PATCH as unknown as PatchHandlerInternals
  if (typeof handler.send !== 'function' || typeof handler.writeToStore !== 'function') {
    logger.warn('@tus/server\'s PATCH handler has changed: upload bodies go through its web streams (slower)')
    return
  }
  const send = handler.send.bind(handler)
  const writeToStore = handler.writeToStore.bind(handler)
  handler.send = async (req, context, headers) => {
    if (requestScope.getStore()?.body !== undefined) Object.defineProperty(req, 'body', { value: null, configurable: true })
    return await send(req, context, headers)
  }
  handler.writeToStore = async (body, upload, maxBodySize, context) => {
    const request = requestScope.getStore()?.body
    if (request === undefined || body !== null) return await writeToStore(body, upload, maxBodySize, context)
    if (context.signal.aborted) throw ERRORS.ABORTED
    return await store.writeFromRequest(request, upload.id, upload.offset, maxBodySize)
  }
}

export async function createUploads (components: UploadsComponents, init: UploadOptions): Promise<Uploads> {
  const logger = components.logger ?? silentLogger
  const prefix = (init.path ?? DEFAULT_UPLOAD_PATH).replace(/\/+$/, '')
  if (!/^\/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$/.test(prefix) || prefix.includes('//') || prefix.split('/').some(s => s === '..' || s === '.')) {
    throw new CanopyError(ErrorCode.InvalidArgument, `The upload path ${init.path ?? ''} must be an absolute URL path such as /uploads/`)
  }
  const maxSize = init.maxSize ?? DEFAULT_MAX_UPLOAD_SIZE
  const maxSessions = init.maxSessions ?? DEFAULT_MAX_UPLOAD_SESSIONS
  const expiryMs = init.expiryMs ?? DEFAULT_UPLOAD_EXPIRY_MS
  const minFree = init.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES
  for (const [name, value] of Object.entries({ maxSize, maxSessions, expiryMs, minFreeBytes: minFree })) {
    if (!Number.isSafeInteger(value) || value < 0 || (value === 0 && (name === 'maxSize' || name === 'maxSessions'))) {
      throw new CanopyError(ErrorCode.InvalidArgument, `uploads.${name} must be a ${name === 'maxSize' || name === 'maxSessions' ? 'positive' : 'non-negative'} integer, not ${value}`)
    }
  }
  if (init.handler !== undefined && init.handler.command.length === 0) {
    throw new CanopyError(ErrorCode.InvalidArgument, 'uploads.handler.command must name a program')
  }
  const dir = await realpath(init.dir).catch((err: unknown) => {
    throw new CanopyError(ErrorCode.InvalidArgument, `The upload directory ${init.dir} does not exist: create it or fix the path`, { cause: err })
  })
  if (!(await lstat(dir)).isDirectory()) throw new CanopyError(ErrorCode.InvalidArgument, `The upload directory ${init.dir} is not a directory`)
  const stagingDir = join(dir, STAGING_DIR)
  await mkdir(stagingDir, { recursive: true, mode: 0o700 })
  if (!(await lstat(stagingDir)).isDirectory()) {
    throw new CanopyError(ErrorCode.InvalidArgument, `${stagingDir} must be a directory (it holds unfinished uploads)`)
  }

  const metrics = createUploadMetrics(components.registry)
  const lifetime = new AbortController()
  const store = new UploadStore({ directory: stagingDir, expiryMs, onBytes: n => metrics.bytes.inc(n), logger })
  const sessions = new Set(await store.unfinished())
  const countSessions = (): void => { metrics.sessions.set(sessions.size) }
  countSessions()
  const refused = (reason: RefusalReason, status: number, message: string): TusRefusal => {
    metrics.refused.inc({ reason })
    return refusal(status, message)
  }
  const replyLocation = (id: string): string => `${prefix}/${id}${REPLY_SUFFIX}`
  const completionHeaders = (done: CompletedUpload): Record<string, string> => ({
    'Repr-Digest': `sha-256=:${Buffer.from(done.sha256, 'hex').toString('base64')}:`,
    ...(done.reply !== undefined ? { 'Canopy-Reply-Location': replyLocation(done.id) } : {})
  })

  const finishing = new Map<string, Promise<CompletedUpload>>()
  const handlersRunning = new Set<string>()

  async function runHandler (done: CompletedUpload): Promise<void> {
    if (init.handler === undefined) return
    handlersRunning.add(done.id)
    try {
      const env: Record<string, string> = {
        CANOPY_UPLOAD_ID: done.id,
        CANOPY_UPLOAD_NAME: done.name,
        CANOPY_UPLOAD_PATH: join(dir, done.name),
        CANOPY_UPLOAD_SIZE: String(done.size),
        CANOPY_UPLOAD_SHA256: done.sha256,
        // A NUL cannot travel in the environment; metadata values are client input.
        CANOPY_UPLOAD_METADATA: JSON.stringify(done.metadata).replaceAll('\0', '')
      }
      const outcome = await runUploadHandler(init.handler, env, lifetime.signal)
      if (outcome.ok) {
        await writeFile(store.replyPath(done.id), outcome.reply)
        done.reply = { state: 'ok', bytes: outcome.reply.length }
      } else {
        logger.warn('upload handler failed', { id: done.id, name: done.name, reason: outcome.reason })
        done.reply = { state: 'failed', reason: outcome.reason }
      }
      metrics.handler.inc({ outcome: outcome.ok ? 'ok' : 'failed' })
      await store.saveCompleted(done)
    } finally {
      handlersRunning.delete(done.id)
    }
  }

  /** Places a complete upload under its final name, once, however many final PATCHes ask. */
  async function finish (upload: Upload): Promise<CompletedUpload> {
    const known = await store.completed(upload.id)
    if (known !== undefined) return known
    const name = checkUploadName(upload.metadata?.filename)
    const size = upload.size ?? upload.offset
    const sha256 = await store.digest(upload.id, size, lifetime.signal)
    const done: CompletedUpload = {
      id: upload.id,
      name,
      size,
      sha256,
      metadata: upload.metadata ?? {},
      completedAt: new Date().toISOString(),
      ...(init.handler !== undefined ? { reply: { state: 'running' as const } } : {})
    }
    // The record first: after a crash between the two, startup finds the record and
    // the staged data, and places it then.
    await store.saveCompleted(done)
    let placed: 'placed' | 'exists'
    try {
      placed = await store.place(upload.id, join(dir, name), init.overwrite === true)
    } catch (err) {
      await store.forgetCompleted(upload.id)
      if (isDiskFull(err)) throw refused('disk_full', 507, DISK_FULL_MESSAGE)
      throw err
    }
    if (placed === 'exists') {
      await store.forgetCompleted(upload.id)
      throw refused('exists', 409, `A file named ${name} appeared in the upload directory while this upload ran; the upload is kept until it expires: remove or rename that file, then send the final PATCH again`)
    }
    await store.forgetPartial(upload.id)
    sessions.delete(upload.id)
    countSessions()
    metrics.completed.inc()
    logger.info('upload completed', { id: upload.id, name, size, sha256 })
    await runHandler(done)
    return done
  }

  const tus = new TusServer({
    path: prefix,
    datastore: store,
    relativeLocation: true,
    maxSize,
    disableTerminationForFinishedUploads: true,
    allowedHeaders: ['Upload-Checksum'],
    exposedHeaders: ['Repr-Digest', 'Canopy-Reply-Location', 'Tus-Checksum-Algorithm'],
    async onUploadCreate (_req, upload) {
      let name: string
      try {
        name = checkUploadName(upload.metadata?.filename)
      } catch (err) {
        if (err instanceof UploadNameError) throw refused('name', 400, `Bad upload name: ${err.message}`)
        throw err
      }
      if (init.overwrite !== true && await lstat(join(dir, name)).then(() => true, () => false)) {
        throw refused('exists', 409, `A file named ${name} already exists in the upload directory: pick another name`)
      }
      if (sessions.size >= maxSessions) {
        throw refused('sessions', 503, `The origin holds ${sessions.size} unfinished uploads, its limit: try again later`)
      }
      const size = upload.size ?? 0
      const { bavail, bsize } = await statfs(dir)
      const free = bavail * bsize
      if (free - minFree < size) {
        throw refused('disk_full', 507, `Not enough free space on the origin's upload disk: the upload needs ${size} bytes, ${Math.max(0, free - minFree)} are available (${minFree} are kept free)`)
      }
      sessions.add(upload.id)
      countSessions()
      return {}
    },
    async onUploadFinish (_req, upload) {
      let done = finishing.get(upload.id)
      if (done === undefined) {
        done = finish(upload)
        finishing.set(upload.id, done)
        done.finally(() => finishing.delete(upload.id)).catch(() => {})
      }
      return { headers: completionHeaders(await done) }
    },
    onResponseError (_req, err) {
      // A full disk fails the store's write, and the tus server's own pipeline reports
      // the raw error before the store's 507 refusal arrives.
      if (isDiskFull(err)) {
        metrics.refused.inc({ reason: 'disk_full' })
        return refusal(507, DISK_FULL_MESSAGE)
      }
      const status = (err as { status_code?: number }).status_code
      if (status === undefined || status >= 500) {
        if (status !== 507 && status !== 503) logger.error('upload request failed', { error: err instanceof Error ? err.message : (err as TusRefusal).body })
      }
      if (status === 413) metrics.refused.inc({ reason: 'too_large' })
      if (status === 460) metrics.refused.inc({ reason: 'checksum' })
      if (status === undefined) return { status_code: 500, body: 'The upload failed on the origin; see its log\n' }
      return undefined
    }
  })
  readPatchBodiesDirectly(tus, store, logger)
  tus.on(EVENTS.POST_TERMINATE, (_req: unknown, _res: unknown, id: string) => {
    sessions.delete(id)
    countSessions()
  })

  // Completed records whose placement a crash interrupted, and handlers a restart cut short.
  for (const name of await readdir(stagingDir)) {
    if (!name.endsWith('.done')) continue
    const id = name.slice(0, -5)
    const done = await store.completed(id)
    if (done === undefined) continue
    if (await lstat(store.dataPath(id)).then(() => true, () => false)) {
      const placed = await store.place(id, join(dir, done.name), init.overwrite === true).catch(() => 'failed' as const)
      if (placed === 'placed') {
        await store.forgetPartial(id)
        sessions.delete(id)
      } else {
        logger.warn('a completed upload could not be placed at startup', { id, name: done.name, outcome: placed })
        await store.forgetCompleted(id)
        continue
      }
    }
    if (done.reply?.state === 'running') {
      done.reply = { state: 'failed', reason: 'the origin restarted while the upload handler ran' }
      await store.saveCompleted(done)
    }
  }
  countSessions()

  const sweep = async (): Promise<number> => {
    const expired = await store.sweep()
    for (const id of expired) sessions.delete(id)
    // Reconcile with the disk: a creation that failed after its check left a reservation.
    const onDisk = new Set(await store.unfinished())
    for (const id of sessions) if (!onDisk.has(id)) sessions.delete(id)
    countSessions()
    if (expired.length > 0) logger.info('expired uploads deleted', { count: expired.length })
    return expired.length
  }
  await sweep()
  const sweeper = setInterval(() => {
    sweep().catch((err: unknown) => logger.error('deleting expired uploads failed', { error: String(err) }))
  }, SWEEP_INTERVAL_MS)
  sweeper.unref()

  function matches (target: string): boolean {
    const path = target.split(/[?#]/)[0]
    return path === prefix || path.startsWith(prefix + '/')
  }

  function send (res: ServerResponse, status: number, message: string, headers: OutgoingHttpHeaders = {}): void {
    const body = Buffer.from(message + '\n')
    res.writeHead(status, { ...headers, 'Tus-Resumable': '1.0.0', 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length })
    res.end(res.req.method === 'HEAD' ? undefined : body)
  }

  async function serveReply (res: ServerResponse, id: string): Promise<void> {
    const done = await store.completed(id)
    if (done === undefined) return send(res, 404, 'No completed upload with this id (it may have expired)')
    if (done.reply === undefined) return send(res, 404, 'The origin runs no --on-upload handler: this upload has no reply')
    if (done.reply.state === 'running') {
      if (handlersRunning.has(id)) return send(res, 503, 'The upload handler is still running', { 'Retry-After': '2' })
      return send(res, 502, 'The upload handler was interrupted (the origin restarted)')
    }
    if (done.reply.state === 'failed') return send(res, 502, `The upload handler failed: ${done.reply.reason}`)
    const reply = await readFile(store.replyPath(id))
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': reply.length,
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff'
    })
    res.end(res.req.method === 'HEAD' ? undefined : reply)
  }

  async function handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET'
    if (method !== 'OPTIONS') {
      const auth = components.tokens.check(req.headers.authorization, 'upload')
      if (auth !== 'ok') {
        metrics.refused.inc({ reason: 'auth' })
        // The body is not read: closing the connection stops the client sending it.
        const headers: OutgoingHttpHeaders = { Connection: 'close' }
        if (auth === 'forbidden') return send(res, 403, 'This token has no upload rights: ask for a token with the "upload" right', headers)
        headers['WWW-Authenticate'] = auth === 'invalid' ? 'Bearer realm="canopy", error="invalid_token"' : 'Bearer realm="canopy"'
        return send(res, 401, 'A valid bearer token with upload rights is required', headers)
      }
    }
    const path = (req.url ?? '/').split(/[?#]/)[0]
    const rest = path.slice(prefix.length).replace(/^\/+/, '').replace(/\/+$/, '')
    const reply = rest.endsWith(REPLY_SUFFIX) ? rest.slice(0, -REPLY_SUFFIX.length) : undefined
    if (reply !== undefined) {
      if (!UPLOAD_ID.test(reply)) return send(res, 404, 'Not found')
      if (method !== 'GET' && method !== 'HEAD') return send(res, 405, 'Only GET and HEAD are supported on a reply', { Allow: 'GET, HEAD', Connection: 'close' })
      return await serveReply(res, reply)
    }
    if (method === 'GET') return send(res, 405, 'Uploads are not readable here; their reply is at <upload URL>/reply', { Allow: 'POST, HEAD, PATCH, DELETE, OPTIONS' })
    if (rest === '' ? method !== 'POST' && method !== 'OPTIONS' : !UPLOAD_ID.test(rest) || method === 'POST') {
      return send(res, rest === '' || UPLOAD_ID.test(rest) ? 405 : 404, rest === '' || UPLOAD_ID.test(rest) ? `${method} is not supported here` : 'No upload with this id', { Connection: 'close' })
    }
    const scope: RequestScope = method === 'PATCH' ? { body: req } : {}
    const checksum = req.headers['upload-checksum']
    if (checksum !== undefined && (method === 'PATCH' || method === 'POST')) {
      const parsed = /^([a-z0-9-]+) ([A-Za-z0-9+/]+={0,2})$/.exec(Array.isArray(checksum) ? '' : checksum.trim())
      const algorithm = parsed?.[1]
      if (parsed === null || algorithm === undefined || !(CHECKSUM_ALGORITHMS as readonly string[]).includes(algorithm)) {
        return send(res, 400, `Upload-Checksum must be "<algorithm> <base64 digest>" with an algorithm among ${CHECKSUM_ALGORITHMS.join(', ')}`, { 'Tus-Checksum-Algorithm': CHECKSUM_ALGORITHMS.join(','), Connection: 'close' })
      }
      scope.checksum = { algorithm, expected: Buffer.from(parsed[2], 'base64') }
    }
    if (method === 'OPTIONS') res.setHeader('Tus-Checksum-Algorithm', CHECKSUM_ALGORITHMS.join(','))
    if (method === 'HEAD' && UPLOAD_ID.test(rest)) {
      const done = await store.completed(rest)
      if (done !== undefined) for (const [name, value] of Object.entries(completionHeaders(done))) res.setHeader(name, value)
    }
    await requestScope.run(scope, async () => { await tus.handle(req, res) })
  }

  return {
    prefix,
    dir,
    stagingDir,
    matches,
    handle,
    sweep,
    async close () {
      clearInterval(sweeper)
      lifetime.abort()
      await Promise.allSettled([...finishing.values()])
    }
  }
}
