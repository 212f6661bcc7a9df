/** What a Range header asks of a representation of `size` bytes (RFC 9110 §14). */
export type RangeRequest =
  | { kind: 'none' }
  | { kind: 'range', start: number, end: number }
  | { kind: 'unsatisfiable' }

const NONE: RangeRequest = { kind: 'none' }
const SPEC = /^(\d*)-(\d*)$/

/**
 * Single byte ranges only. Several ranges, other units or malformed syntax make
 * the header ignored (a full 200), which RFC 9110 allows and every client handles;
 * multipart/byteranges would buy nothing for block fetches.
 */
export function parseRange (header: string | undefined, size: number): RangeRequest {
  if (header === undefined) return NONE
  const eq = header.indexOf('=')
  if (eq < 0 || header.slice(0, eq).trim().toLowerCase() !== 'bytes') return NONE
  const specs = header.slice(eq + 1).split(',').map(s => s.trim()).filter(s => s !== '')
  if (specs.length !== 1) return NONE
  const match = SPEC.exec(specs[0])
  if (match === null) return NONE
  const [, first, last] = match
  if (first === '' && last === '') return NONE

  if (first === '') {
    const suffix = Number(last)
    if (suffix === 0 || size === 0) return { kind: 'unsatisfiable' }
    return { kind: 'range', start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(first)
  if (last !== '' && Number(last) < start) return NONE
  if (start >= size) return { kind: 'unsatisfiable' }
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1)
  return { kind: 'range', start, end }
}
