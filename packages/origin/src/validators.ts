import type { IncomingHttpHeaders } from 'node:http'

/**
 * Strong ETag from the file's identity. Size, mtime (to the microsecond) and inode
 * change whenever the bytes can have changed, without reading them.
 */
export function fileEtag (stat: { size: number, mtimeMs: number, ino: number }): string {
  return `"${stat.size.toString(16)}-${Math.round(stat.mtimeMs * 1000).toString(16)}-${stat.ino.toString(16)}"`
}

/** Last-Modified carries whole seconds; comparisons below use the same truncation. */
export function httpDate (mtimeMs: number): string {
  return new Date(mtimeMs).toUTCString()
}

interface ParsedTag { weak: boolean, tag: string }

function parseTags (header: string): ParsedTag[] | '*' {
  if (header.trim() === '*') return '*'
  const tags: ParsedTag[] = []
  for (const m of header.matchAll(/(W\/)?("[^"]*")/g)) tags.push({ weak: m[1] !== undefined, tag: m[2] })
  return tags
}

function weakMatch (header: string, etag: string): boolean {
  const tags = parseTags(header)
  return tags === '*' || tags.some(t => t.tag === etag)
}

function strongMatch (header: string, etag: string): boolean {
  const tags = parseTags(header)
  return tags === '*' || tags.some(t => !t.weak && t.tag === etag)
}

function parseDate (value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const ms = Date.parse(value)
  return Number.isNaN(ms) ? undefined : ms
}

const seconds = (ms: number): number => Math.floor(ms / 1000)

export interface Validators {
  etag: string
  /** Absent for representations without a meaningful modification time (the manifest). */
  mtimeMs?: number
}

/**
 * Preconditions in the order of RFC 9110 §13.2.2, for GET and HEAD:
 * 412 when If-Match / If-Unmodified-Since fail, 304 when the client's copy is current.
 */
export function evaluatePreconditions (headers: IncomingHttpHeaders, v: Validators): 200 | 304 | 412 {
  const ifMatch = headers['if-match']
  if (ifMatch !== undefined) {
    if (!strongMatch(ifMatch, v.etag)) return 412
  } else if (v.mtimeMs !== undefined) {
    const since = parseDate(headers['if-unmodified-since'])
    if (since !== undefined && seconds(v.mtimeMs) > seconds(since)) return 412
  }
  const ifNoneMatch = headers['if-none-match']
  if (ifNoneMatch !== undefined) {
    if (weakMatch(ifNoneMatch, v.etag)) return 304
  } else if (v.mtimeMs !== undefined) {
    const since = parseDate(headers['if-modified-since'])
    if (since !== undefined && seconds(v.mtimeMs) <= seconds(since)) return 304
  }
  return 200
}

/** If-Range: the Range applies only when the client's validator still names this representation. */
export function ifRangeAllows (headers: IncomingHttpHeaders, v: Validators): boolean {
  const raw = headers['if-range']
  const value = (Array.isArray(raw) ? raw[0] : raw)?.trim()
  if (value === undefined) return true
  if (value.startsWith('"') || value.startsWith('W/')) {
    return !value.startsWith('W/') && value === v.etag
  }
  return v.mtimeMs !== undefined && value === httpDate(v.mtimeMs)
}
