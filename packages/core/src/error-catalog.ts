/**
 * Every stable error code of Canopy's agent, client and control API, each once: the
 * HTTP status the control API answers it with, and whether a job that fails with it
 * is retried by default (`transient`). The control API maps codes to statuses from
 * here (codes not listed answer 500); docs/API.md lists them for users.
 */
export interface ErrorSpec {
  /**
   * HTTP status of the control API's answer carrying this code; absent: 500, should
   * it ever reach the API (the client's own codes, and why a job failed, which the
   * API reports inside job views).
   */
  status?: number
  /** A job failing with it is retried with backoff (some failures decide otherwise case by case). */
  transient: boolean
}

export const ERROR_CATALOG = {
  // Arguments and requests
  ERR_INVALID_ARGUMENT: { transient: false },
  ERR_INVALID_REQUEST: { status: 400, transient: false },
  ERR_BAD_JSON: { status: 400, transient: false },
  ERR_INVALID_POLICY: { status: 400, transient: false },
  ERR_TOO_MANY_FILES: { status: 400, transient: false },
  ERR_TOO_MANY_HEADERS: { status: 400, transient: false },
  ERR_HEADERS_TOO_LARGE: { status: 400, transient: false },
  ERR_URL_TOO_LONG: { status: 400, transient: false },
  ERR_NAME_TOO_LONG: { status: 400, transient: false },
  ERR_BODY_TOO_LARGE: { status: 413, transient: false },
  ERR_UNAUTHORIZED: { status: 401, transient: false },
  ERR_NOT_FOUND: { status: 404, transient: false },
  ERR_METHOD_NOT_ALLOWED: { status: 405, transient: false },
  // Jobs and the agent
  ERR_JOB_NOT_FOUND: { status: 404, transient: false },
  ERR_AMBIGUOUS_JOB_ID: { status: 409, transient: false },
  ERR_INVALID_STATE: { status: 409, transient: false },
  ERR_TOO_MANY_JOBS: { status: 409, transient: false },
  ERR_NO_PEER_NODE: { status: 404, transient: false },
  ERR_TOO_MANY_CLIENTS: { status: 503, transient: true },
  ERR_AGENT_STOPPING: { status: 503, transient: true },
  ERR_AGENT_ALREADY_RUNNING: { transient: false },
  ERR_API_LISTEN: { transient: false },
  ERR_METRICS_LISTEN: { transient: false },
  ERR_ABORTED: { transient: false },
  ERR_INTERNAL: { transient: true },
  // Why a job failed (JobError.code)
  ERR_NETWORK: { transient: true },
  ERR_HTTP_SERVER: { transient: true },
  ERR_HTTP_NOT_FOUND: { transient: false },
  ERR_HTTP_FORBIDDEN: { transient: false },
  ERR_HTTP_STATUS: { transient: false },
  ERR_TLS: { transient: false },
  ERR_PROTOCOL: { transient: true },
  ERR_REMOTE_CHANGED: { transient: true },
  ERR_INVALID_MANIFEST: { transient: false },
  ERR_DIGEST_MISMATCH: { transient: false },
  ERR_DESTINATION: { status: 409, transient: false },
  ERR_DISK_FULL: { status: 507, transient: false },
  ERR_NO_PROGRESS: { transient: false },
  ERR_MAX_TIME: { transient: false },
  ERR_CACHE_FULL: { status: 507, transient: false },
  // Uploads (the agent's tus client)
  ERR_LOCAL_FILE_CHANGED: { transient: false },
  ERR_UPLOAD_TOO_LARGE: { transient: false },
  ERR_UPLOAD_REFUSED: { transient: false },
  ERR_ORIGIN_DISK_FULL: { transient: false },
  ERR_UPLOAD_CHECKSUM: { transient: true },
  ERR_UPLOAD_REPLY: { transient: true },
  // The state store
  ERR_STATE_CORRUPT: { transient: false },
  ERR_STATE_TOO_NEW: { transient: false },
  // Between peers (logged, and a reason to stop asking a peer; never sent to the control API)
  ERR_PEER_PROTOCOL: { transient: true },
  ERR_PEER_UNKNOWN_CONTENT: { transient: true },
  ERR_PEER_DENIED: { transient: true },
  ERR_PEER_REFUSED: { transient: true },
  /** An offer to a hosted cache out of bounds, or whose manifest does not match its id (logged by the hosted cache; the offerer hears "refused"). */
  ERR_OFFER_INVALID: { transient: false },
  ERR_INVALID_PEER: { transient: false },
  ERR_INVALID_PEER_KEY: { transient: false },
  ERR_INVALID_SWARM_KEY: { transient: false },
  ERR_FILE_CHANGED: { transient: true },
  ERR_TIMEOUT: { transient: true },
  /** The scheduler stopped a run to give its slot to another job (never a job's error). */
  ERR_YIELD: { transient: true },
  // The CLI and the lab
  ERR_USAGE: { transient: false },
  ERR_UNKNOWN: { transient: false },
  ERR_LAB_TIMEOUT: { transient: false },
  ERR_LAB_PROCESS: { transient: false },
  ERR_LAB_SCENARIO: { transient: false },
  ERR_LAB_HOST: { transient: false },
  ERR_LAB_COMMAND: { transient: false },
  ERR_LAB_BUSY: { transient: false },
  ERR_LAB_UNSUPPORTED: { transient: false },
  // The client's own (never sent by the agent)
  ERR_AGENT_NOT_RUNNING: { transient: true },
  ERR_AGENT_ACCESS_DENIED: { transient: false },
  ERR_AGENT_TIMEOUT: { transient: true },
  ERR_AGENT_CONNECTION: { transient: true },
  ERR_AGENT_BAD_RESPONSE: { transient: false },
  ERR_AGENT_RESPONSE_TOO_LARGE: { transient: false },
  ERR_EVENTS_ENDED: { transient: true }
} as const satisfies Record<string, ErrorSpec>

export type CatalogCode = keyof typeof ERROR_CATALOG

/** The control API's HTTP status for an error code: the catalog's, 500 for any other. */
export function httpStatusOf (code: string): number {
  return (ERROR_CATALOG as Record<string, ErrorSpec>)[code]?.status ?? 500
}

/** Whether a job failing with `code` is retried by default (unknown codes: no). */
export function isTransientCode (code: string): boolean {
  return (ERROR_CATALOG as Record<string, ErrorSpec>)[code]?.transient ?? false
}

/**
 * The first `code` found on an error or down its `cause` chain (at most `depth`
 * links: libraries wrap socket errors) that `accept` takes; undefined when none.
 */
export function codeInCauses (err: unknown, accept: (code: string) => boolean, depth = 4): string | undefined {
  let e: unknown = err
  for (let i = 0; i < depth && e !== null && typeof e === 'object'; i++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && accept(code)) return code
    e = (e as { cause?: unknown }).cause
  }
  return undefined
}
