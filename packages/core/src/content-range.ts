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

/** The parsed header, or undefined when it is absent or not of that form. */
export function parseContentRange (value: string | undefined): ContentRange | undefined {
  const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value ?? '')
  if (match === null) return undefined
  return { first: Number(match[1]), last: Number(match[2]), ...(match[3] !== '*' ? { total: Number(match[3]) } : {}) }
}
