/**
 * @canopy/origin: the compact origin server. Serves files with Range and
 * validators, and their manifests by content negotiation on the same URL.
 */
export { startOrigin } from './server.ts'
export type { Origin, OriginOptions } from './server.ts'
export { publishSidecar } from './sidecar.ts'
export type { PublishSidecarOptions } from './sidecar.ts'
export { loadOrCreateSecret } from './secret.ts'
export { BearerTokens, TOKEN_RIGHTS } from './auth.ts'
export type { TokenGrant, TokenRight } from './auth.ts'
export {
  DEFAULT_MAX_UPLOAD_SESSIONS, DEFAULT_MAX_UPLOAD_SIZE, DEFAULT_MIN_FREE_BYTES, DEFAULT_UPLOAD_EXPIRY_MS, DEFAULT_UPLOAD_PATH
} from './uploads.ts'
export type { UploadOptions } from './uploads.ts'
export type { UploadHandlerOptions } from './upload-reply.ts'
export { checkUploadName, STAGING_DIR } from './upload-names.ts'
