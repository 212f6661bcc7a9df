/**
 * The tus client's other two calls: the upload-reply download (what `canopy origin
 * --on-upload` answered for a completed upload) and termination (tus DELETE) of an
 * upload that is cancelled. Uploading itself is tus-upload.ts.
 */
import { rename, rm, writeFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { request, type Dispatcher } from 'undici'
import { JobErrorCode, TransferError, classifyError } from '../errors.ts'
import { createDispatcher, discard, readBounded } from './http.ts'
import { DEFAULT_TIMEOUT_MS } from './tus-upload.ts'
import { header, reasonOf, refusalError, TUS_VERSION, TusErrorCode } from './tus-protocol.ts'
import type { TusUploadComponents } from './tus-upload.ts'

export interface UploadReplyInit {
  /** `TusUploadResult.replyUrl`. */
  replyUrl: string
  /** Where the reply is written (atomically: a temporary file renamed into place). */
  path: string
  headers?: Record<string, string>
  /** Longest reply accepted; default 16 MiB. */
  maxBytes?: number
  /** How long to wait for a handler still running; default 120 000 ms. */
  waitMs?: number
  signal?: AbortSignal
}

const DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
/** Retry-After values above this are capped: the wait is bounded by waitMs anyway. */
const MAX_REPLY_POLL_MS = 5_000

/**
 * Downloads the reply of the server's upload handler to `path` (upload-reply jobs).
 * Waits while the server says the handler still runs (503); a failed handler (502)
 * is a TusErrorCode.Reply error carrying the server's reason.
 */
export async function fetchUploadReply (components: TusUploadComponents, init: UploadReplyInit): Promise<number> {
  const ownDispatcher = components.dispatcher === undefined ? createDispatcher({ connections: 1, timeoutMs: DEFAULT_TIMEOUT_MS }) : undefined
  const dispatcher = components.dispatcher ?? ownDispatcher!
  const signal = init.signal ?? new AbortController().signal
  const deadline = Date.now() + (init.waitMs ?? DEFAULT_TIMEOUT_MS)
  const url = init.replyUrl
  try {
    for (;;) {
      let res: Dispatcher.ResponseData
      try {
        res = await request(url, { dispatcher, method: 'GET', headers: { ...init.headers }, signal })
      } catch (err) {
        if (signal.aborted) throw err
        throw classifyError(err, url, 'network')
      }
      if (res.statusCode === 503 && Date.now() < deadline) {
        discard(res.body)
        const after = Number(header(res.headers, 'retry-after') ?? '1')
        await sleep(Math.min(MAX_REPLY_POLL_MS, Number.isFinite(after) && after > 0 ? after * 1000 : 1000), undefined, { signal })
        continue
      }
      if (res.statusCode === 502) {
        throw new TransferError(TusErrorCode.Reply, `The server's upload handler failed${await reasonOf(res.body)}`, { transient: false, url })
      }
      if (res.statusCode !== 200) throw await refusalError(res, url, 'the reply')
      const reply = await readBounded(res.body, init.maxBytes ?? DEFAULT_MAX_REPLY_BYTES, url).catch((err: unknown) => {
        if (err instanceof TransferError && err.code === JobErrorCode.ProtocolViolation) {
          throw new TransferError(TusErrorCode.Reply, `The server's reply is longer than ${init.maxBytes ?? DEFAULT_MAX_REPLY_BYTES} bytes`, { transient: false, url })
        }
        throw classifyError(err, url, 'network')
      })
      const temp = `${init.path}.canopy-reply-${process.pid}`
      try {
        await writeFile(temp, reply, { signal })
        await rename(temp, init.path)
      } catch (err) {
        await rm(temp, { force: true })
        throw classifyError(err)
      }
      return reply.length
    }
  } finally {
    await ownDispatcher?.close()
  }
}

export interface TusTerminateInit {
  /** The upload's URL (`TusUploadResult.uploadUrl`, or the one `onCreated` reported). */
  uploadUrl: string
  headers?: Record<string, string>
  /** Longest wait for the server's answer; default 10 000 ms (a cancel should not hang on a dead server). */
  timeoutMs?: number
  signal?: AbortSignal
}

/**
 * Ends an unfinished upload on the server (the tus termination extension: DELETE),
 * so that its bytes are freed now rather than when it expires. An upload the server
 * no longer knows (404, 410) counts as ended; a server without the extension
 * answers otherwise and the upload stays until it expires (an error says so).
 */
export async function tusTerminate (components: TusUploadComponents, init: TusTerminateInit): Promise<void> {
  const timeoutMs = init.timeoutMs ?? 10_000
  const ownDispatcher = components.dispatcher === undefined ? createDispatcher({ connections: 1, timeoutMs }) : undefined
  const dispatcher = components.dispatcher ?? ownDispatcher!
  const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), ...(init.signal !== undefined ? [init.signal] : [])])
  try {
    let res: Dispatcher.ResponseData
    try {
      res = await request(init.uploadUrl, { dispatcher, method: 'DELETE', headers: { ...init.headers, 'tus-resumable': TUS_VERSION }, signal })
    } catch (err) {
      throw classifyError(err, init.uploadUrl, 'network')
    }
    if (res.statusCode === 204 || res.statusCode === 200 || res.statusCode === 404 || res.statusCode === 410) {
      discard(res.body)
      return
    }
    throw await refusalError(res, init.uploadUrl, 'termination')
  } finally {
    await ownDispatcher?.close()
  }
}
