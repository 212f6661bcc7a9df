/**
 * The tus 1.0 protocol as the agent's clients see it on the wire: the failure codes
 * particular to uploads, headers, metadata, the server's digest and refusals mapped to
 * errors that say what to do. Shared by the upload (tus-upload.ts) and the reply
 * download (tus-reply.ts).
 */
import type { Dispatcher } from 'undici'
import { JobErrorCode, TransferError, httpStatusError } from '../errors.ts'
import { readBounded } from './http.ts'

/** Stable codes of the failures particular to uploads (the others are JobErrorCode's). */
export const TusErrorCode = {
  /** The local file's size, mtime or inode changed while it was being sent. */
  LocalFileChanged: 'ERR_LOCAL_FILE_CHANGED',
  /** The server refuses the upload's size (413). */
  TooLarge: 'ERR_UPLOAD_TOO_LARGE',
  /** The server refuses the upload itself: its name (400), a file of that name exists (409). */
  Refused: 'ERR_UPLOAD_REFUSED',
  /** The server's disk is full (507): retry once space is freed; the bytes sent are kept. */
  ServerDiskFull: 'ERR_ORIGIN_DISK_FULL',
  /** Fragments kept failing the server's checksum (460). */
  Checksum: 'ERR_UPLOAD_CHECKSUM',
  /** The server's upload handler failed or its reply is unusable. */
  Reply: 'ERR_UPLOAD_REPLY'
} as const

export const TUS_VERSION = '1.0.0'

/** Longest server reason quoted in an error message. */
const MAX_ERROR_TEXT = 4096

export type TusHeaders = Record<string, string | string[] | undefined>

export function header (headers: TusHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** The hex SHA-256 of an RFC 9530 `Repr-Digest` header, if it carries a sha-256 member. */
export function parseReprDigest (value: string | undefined): string | undefined {
  const match = /(?:^|,)\s*sha-256=:([A-Za-z0-9+/]+={0,2}):/.exec(value ?? '')
  if (match === null) return undefined
  const digest = Buffer.from(match[1], 'base64')
  return digest.length === 32 ? digest.toString('hex') : undefined
}

export function encodeMetadata (metadata: Record<string, string>): string {
  return Object.entries(metadata).map(([key, value]) => {
    if (key === '' || /[\s,]/.test(key)) throw new TransferError(JobErrorCode.Internal, `tus metadata key ${JSON.stringify(key)} must not be empty or hold spaces or commas`, { transient: false })
    return `${key} ${Buffer.from(value, 'utf8').toString('base64')}`
  }).join(',')
}

/** The server's plain-text reason, bounded, for error messages. */
export async function reasonOf (body: Dispatcher.ResponseData['body']): Promise<string> {
  try {
    const text = (await readBounded(body, MAX_ERROR_TEXT, '')).toString('utf8').trim()
    return text === '' ? '' : `: ${text.replace(/\s+/g, ' ')}`
  } catch {
    return ''
  }
}

/** Maps a refusal to an error; `during` names the request for the message. */
export async function refusalError (res: Dispatcher.ResponseData, url: string, during: string): Promise<TransferError> {
  const status = res.statusCode
  const reason = await reasonOf(res.body)
  switch (status) {
    case 413:
      return new TransferError(TusErrorCode.TooLarge, `The server refuses an upload this large (HTTP 413${reason}): ask its administrator to raise the limit`, { transient: false, url })
    case 507:
      return new TransferError(TusErrorCode.ServerDiskFull, `The server's disk is full (HTTP 507${reason}): the upload resumes once space is freed there`, { transient: true, url })
    case 400:
    case 409:
      return new TransferError(TusErrorCode.Refused, `The server refused the upload at ${during} (HTTP ${status}${reason})`, { transient: false, url })
    case 401:
    case 403:
      return new TransferError(JobErrorCode.HttpForbidden, `The server refused access to ${url} (HTTP ${status}${reason}): check the token and its upload rights`, { transient: false, url })
    case 412:
      return new TransferError(JobErrorCode.ProtocolViolation, `${url} does not speak tus 1.0 (HTTP 412${reason})`, { transient: false, url })
    default: {
      const err = httpStatusError(status, url)
      return reason === '' ? err : new TransferError(err.code, `${err.message}${reason}`, { transient: err.transient, url })
    }
  }
}
