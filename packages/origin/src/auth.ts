import { timingSafeEqual } from 'node:crypto'
import { sha256 } from '@canopy/core'

/** What a token may do: read files and manifests, or send uploads. */
export type TokenRight = 'download' | 'upload'

export const TOKEN_RIGHTS: readonly TokenRight[] = ['download', 'upload']

/** A token and its rights; a bare string means download rights only (token files written before uploads existed). */
export type TokenGrant = string | { token: string, rights: readonly TokenRight[] }

export type AuthOutcome = 'ok' | 'missing' | 'invalid' | 'forbidden'

/**
 * Bearer tokens, compared by their SHA-256 digests so every comparison has the same
 * length and takes the same time whichever token (if any) matches.
 */
export class BearerTokens {
  readonly #grants: Array<{ digest: Buffer, rights: ReadonlySet<TokenRight> }>

  constructor (tokens: readonly TokenGrant[]) {
    this.#grants = tokens.map(t => typeof t === 'string'
      ? { digest: sha256(t), rights: new Set<TokenRight>(['download']) }
      : { digest: sha256(t.token), rights: new Set(t.rights) })
  }

  get enabled (): boolean {
    return this.#grants.length > 0
  }

  /** Whether some token carries this right (with no tokens at all, everyone has every right). */
  grants (right: TokenRight): boolean {
    return !this.enabled || this.#grants.some(g => g.rights.has(right))
  }

  /**
   * 'ok', 'missing' (no credentials), 'invalid' (credentials that match no token) or
   * 'forbidden' (a known token without this right: 403, not 401, so the client
   * knows that asking again with the same token is useless).
   */
  check (authorization: string | undefined, right: TokenRight = 'download'): AuthOutcome {
    if (!this.enabled) return 'ok'
    if (authorization === undefined) return 'missing'
    const match = /^Bearer[ ]+([^\s]+)\s*$/i.exec(authorization)
    if (match === null) return 'invalid'
    const given = sha256(match[1])
    // A token listed twice has the rights of both lines.
    let known = false
    let allowed = false
    for (const grant of this.#grants) {
      const same = timingSafeEqual(given, grant.digest)
      known = same || known
      allowed = (same && grant.rights.has(right)) || allowed
    }
    if (!known) return 'invalid'
    return allowed ? 'ok' : 'forbidden'
  }
}

/** The token of a grant, whichever form it has. */
export function grantToken (grant: TokenGrant): string {
  return typeof grant === 'string' ? grant : grant.token
}
