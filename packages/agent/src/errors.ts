import { CanopyError, codeInCauses } from '@canopy/core'
import type { CatalogCode } from '@canopy/core'
import { isDiskFull } from './store/disk-full.ts'

/** Stable codes of the errors a job can end in (JobError.code). */
export const JobErrorCode = {
  Network: 'ERR_NETWORK',
  HttpServer: 'ERR_HTTP_SERVER',
  HttpNotFound: 'ERR_HTTP_NOT_FOUND',
  HttpForbidden: 'ERR_HTTP_FORBIDDEN',
  HttpStatus: 'ERR_HTTP_STATUS',
  DigestMismatch: 'ERR_DIGEST_MISMATCH',
  InvalidManifest: 'ERR_INVALID_MANIFEST',
  DiskFull: 'ERR_DISK_FULL',
  Destination: 'ERR_DESTINATION',
  ProtocolViolation: 'ERR_PROTOCOL',
  Tls: 'ERR_TLS',
  Internal: 'ERR_INTERNAL',
  /** No progress for the job's no-progress timeout (set by the scheduler, not by a transfer). */
  NoProgress: 'ERR_NO_PROGRESS',
  /** The job's maximum download time ran out (set by the scheduler). */
  MaxTime: 'ERR_MAX_TIME',
  /** A preload job's content does not fit the peer cache (larger than its quota, or it is full of files peers are reading). */
  CacheFull: 'ERR_CACHE_FULL'
} as const satisfies Record<string, CatalogCode>

/**
 * Why the scheduler stopped a running job that did nothing wrong: a higher priority
 * needs its slot, or its time slice ended while an equal waits. The runner puts the
 * job back in the queue (its block marks stay: it resumes from them).
 */
export class SchedulerYield extends CanopyError {
  readonly why: 'preempted' | 'slice'

  constructor (why: 'preempted' | 'slice') {
    super('ERR_YIELD', why === 'preempted' ? 'preempted by a higher-priority job' : 'time slice over')
    this.name = 'SchedulerYield'
    this.why = why
  }
}

/** Code of the transient error that tells the runner the remote file changed: rediscover it and start it over. */
export const REMOTE_CHANGED = 'ERR_REMOTE_CHANGED' satisfies CatalogCode

/**
 * A failure of a transfer. `transient` failures (network down, origin 5xx, a short
 * response) are retried with backoff; the others stop the job in `error` until the
 * user resumes it.
 */
export class TransferError extends CanopyError {
  readonly transient: boolean
  readonly url?: string

  constructor (code: string, message: string, options: { transient: boolean, url?: string, cause?: unknown }) {
    super(code, message, { cause: options.cause })
    this.name = 'TransferError'
    this.transient = options.transient
    this.url = options.url
  }
}

const TRANSIENT_NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EPIPE', 'EAI_AGAIN',
  'ENOTFOUND', 'ECONNABORTED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
])

/** Errors of the destination's filesystem that the user has to fix. */
const DESTINATION_CODES = new Set(['EACCES', 'EROFS', 'EPERM', 'EISDIR', 'ENOTDIR', 'ENAMETOOLONG', 'EXDEV', 'EBUSY', 'EIO'])

/** The errno code of an error the transfer knows how to report (undici wraps socket errors: it may be on a cause). */
function errnoCode (err: unknown): string | undefined {
  return codeInCauses(err, code => TRANSIENT_NETWORK_CODES.has(code) || DESTINATION_CODES.has(code) || code === 'ENOSPC' || code === 'EDQUOT')
}

/** The code of a certificate failure, which no retry will fix. */
function tlsCode (err: unknown): string | undefined {
  return codeInCauses(err, code => code.startsWith('CERT_') || code.startsWith('ERR_TLS_') || code.includes('SELF_SIGNED') ||
    code.startsWith('UNABLE_TO_') || code === 'HOSTNAME_MISMATCH')
}

/**
 * Turns a thrown error into a TransferError with a plain-language reason. `during`
 * says what failed: on the network, EACCES/EPERM mean a firewall or sandbox
 * refused the connection, not a folder's permissions.
 */
export function classifyError (err: unknown, url?: string, during: 'network' | 'files' = 'files'): TransferError {
  if (err instanceof TransferError) return err
  const code = errnoCode(err)
  if (during === 'network' && (code === 'EACCES' || code === 'EPERM')) {
    return new TransferError(JobErrorCode.Network, `origin unreachable (${code}: the connection was refused by the system)`, { transient: true, url, cause: err })
  }
  if (code === 'ENOSPC' || code === 'EDQUOT' || isDiskFull(err)) {
    return new TransferError(JobErrorCode.DiskFull, 'The disk is full: free some space, then resume the job', { transient: false, url, cause: err })
  }
  if (code !== undefined && DESTINATION_CODES.has(code)) {
    return new TransferError(JobErrorCode.Destination, `Cannot write the destination (${code}): check the folder's permissions, then resume the job`, { transient: false, url, cause: err })
  }
  if (code !== undefined) {
    return new TransferError(JobErrorCode.Network, `origin unreachable (${code})`, { transient: true, url, cause: err })
  }
  const tls = tlsCode(err)
  if (tls !== undefined) {
    return new TransferError(JobErrorCode.Tls, `The server's TLS certificate was refused (${tls}): fix the certificate or the trust settings, then resume the job`, { transient: false, url, cause: err })
  }
  const message = err instanceof Error ? err.message : String(err)
  if (/max redirects|redirect/i.test(message)) {
    return new TransferError(JobErrorCode.HttpStatus, `Too many redirects for ${url ?? 'the URL'}: check the URL`, { transient: false, url, cause: err })
  }
  return new TransferError(JobErrorCode.Internal, `Unexpected failure: ${message}`, { transient: true, url, cause: err })
}

/** The error for an HTTP status the transfer cannot use. */
export function httpStatusError (status: number, url: string): TransferError {
  if (status === 404 || status === 410) {
    return new TransferError(JobErrorCode.HttpNotFound, `The server has no file at ${url} (HTTP ${status}): check the URL`, { transient: false, url })
  }
  if (status === 401 || status === 403) {
    return new TransferError(JobErrorCode.HttpForbidden, `The server refused access to ${url} (HTTP ${status}): check the credentials`, { transient: false, url })
  }
  if (status >= 500 || status === 408 || status === 429) {
    return new TransferError(JobErrorCode.HttpServer, `the origin answered HTTP ${status}`, { transient: true, url })
  }
  return new TransferError(JobErrorCode.HttpStatus, `The server answered HTTP ${status} for ${url}`, { transient: false, url })
}
