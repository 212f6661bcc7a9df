import type { CatalogCode } from './error-catalog.ts'

/**
 * Every error Canopy raises on purpose carries a stable `code` (scripts and the
 * control API match on it) and a message that says what happened and what to do.
 */
export class CanopyError extends Error {
  readonly code: string

  constructor (code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    // Subclasses are named after themselves without repeating it (PeerExchangeError, ...).
    this.name = new.target.name
    this.code = code
  }
}

/** Named constants of some codes (every code, with its HTTP status: ERROR_CATALOG in error-catalog.ts). */
export const ErrorCode = {
  InvalidManifest: 'ERR_INVALID_MANIFEST',
  InvalidArgument: 'ERR_INVALID_ARGUMENT',
  Aborted: 'ERR_ABORTED'
} as const satisfies Record<string, CatalogCode>

export function isCanopyError (err: unknown, code?: string): err is CanopyError {
  return err instanceof CanopyError && (code === undefined || err.code === code)
}

/** Throws `ERR_ABORTED` when the signal is aborted; call at loop boundaries. */
export function throwIfAborted (signal?: AbortSignal): void {
  if (signal?.aborted === true) {
    throw new CanopyError(ErrorCode.Aborted, 'The operation was aborted', { cause: signal.reason })
  }
}
