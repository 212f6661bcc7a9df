/**
 * @canopy/origin: the compact origin server. Serves files with Range and
 * validators, and their manifests by content negotiation on the same URL.
 */
export { startOrigin } from './server.ts'
export type { Origin, OriginOptions } from './server.ts'
export { publishSidecar } from './sidecar.ts'
export type { PublishSidecarOptions } from './sidecar.ts'
export { loadOrCreateSecret } from './secret.ts'
