/**
 * @canopy/client: typed client of the Canopy agent's control API (HTTP+JSON on a
 * Unix socket in the agent's state directory). Used by the `canopy` CLI and by
 * applications.
 */
export { AgentApiError, CanopyClient, DEFAULT_WAIT_UNTIL, defaultStateDir, EventStream, MAX_RESPONSE_BYTES } from './client.ts'
export type { CallOptions, ClientOptions, WaitForJobOptions, WatchOptions } from './client.ts'
