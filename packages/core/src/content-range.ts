/**
 * The `Content-Range` of a 206 answer (RFC 9110, 14.4): `bytes first-last/total`,
 * total `*` when the server does not say. One parser for every HTTP path of the agent.
 */
export interface ContentRange {
  first: number
  last: number
  /** The whole representation's length; undefined for `*`. */
  total?: number
}

/**
 * The parsed header, or undefined when it is absent, not of that form, or impossible:
 * numbers beyond 2^53 (they would be rounded), first after last, last at or past the
 * total. It comes from an origin, hostile or not: a caller may take the range as it is.
 */
export function parseContentRange (value: string | undefined): ContentRange | undefined {
  const match = /^bytes (\d{1,16})-(\d{1,16})\/(\d{1,16}|\*)$/.exec(value ?? '')
  if (match === null) return undefined
  const [first, last] = [Number(match[1]), Number(match[2])]
  const total = match[3] === '*' ? undefined : Number(match[3])
  if (!Number.isSafeInteger(last) || !Number.isSafeInteger(total ?? 0) || first > last || (total !== undefined && last >= total)) return undefined
  return { first, last, ...(total !== undefined ? { total } : {}) }
}
