import { timingSafeEqual } from 'node:crypto'
import { sha256 } from '@canopy/core'

/**
 * Bearer tokens, compared by their SHA-256 digests so every comparison has the same
 * length and takes the same time whichever token (if any) matches.
 */
export class BearerTokens {
  readonly #digests: Buffer[]

  constructor (tokens: readonly string[]) {
    this.#digests = tokens.map(t => sha256(t))
  }

  get enabled (): boolean {
    return this.#digests.length > 0
  }

  /** 'ok', 'missing' (no credentials) or 'invalid' (credentials that match no token). */
  check (authorization: string | undefined): 'ok' | 'missing' | 'invalid' {
    if (!this.enabled) return 'ok'
    if (authorization === undefined) return 'missing'
    const match = /^Bearer[ ]+([^\s]+)\s*$/i.exec(authorization)
    if (match === null) return 'invalid'
    const given = sha256(match[1])
    let ok = false
    for (const digest of this.#digests) ok = timingSafeEqual(given, digest) || ok
    return ok ? 'ok' : 'invalid'
  }
}
