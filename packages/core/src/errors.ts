/**
 * Every error Canopy raises on purpose carries a stable `code` (scripts and the
 * control API match on it) and a message that says what happened and what to do.
 */
export class CanopyError extends Error {
  readonly code: string

  constructor (code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'CanopyError'
    this.code = code
  }
}

/** Stable error codes shared by the packages. */
export const ErrorCode = {
  InvalidManifest: 'ERR_INVALID_MANIFEST',
  InvalidArgument: 'ERR_INVALID_ARGUMENT',
  Aborted: 'ERR_ABORTED'
} as const

export function isCanopyError (err: unknown, code?: string): err is CanopyError {
  return err instanceof CanopyError && (code === undefined || err.code === code)
}

/** Throws `ERR_ABORTED` when the signal is aborted; call at loop boundaries. */
export function throwIfAborted (signal?: AbortSignal): void {
  if (signal?.aborted === true) {
    throw new CanopyError(ErrorCode.Aborted, 'The operation was aborted', { cause: signal.reason })
  }
}
