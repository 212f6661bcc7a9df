/**
 * @canopy/core: content identity (manifests, block CIDs), key derivation, sizes and
 * error types. Pure: no network, no files.
 */
export { CanopyError, ErrorCode, isCanopyError, throwIfAborted } from './errors.ts'
export { codeInCauses, ERROR_CATALOG, httpStatusOf, isTransientCode } from './error-catalog.ts'
export type { CatalogCode, ErrorSpec } from './error-catalog.ts'
export {
  assertBlockSize, blockCid, blockCount, blockDigest, blockSpan,
  DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, RAW_CODEC, SHA256_CODE
} from './blocks.ts'
export {
  createManifest, decodeManifest, encodeManifest, manifestByteLimit, manifestId, manifestSizeLimit,
  MANIFEST_MEDIA_TYPE, MANIFEST_VERSION, MAX_BLOCKS, MAX_CONTENT_SIZE, MAX_MANIFEST_BYTES, SIDECAR_SUFFIX
} from './manifest.ts'
export type { CreateManifestOptions, IdentifiedManifest, Manifest, PublishedManifest } from './manifest.ts'
export { contentKey, discoveryId, DISCOVERY_LABEL, generateSecret, readProof } from './keys.ts'
export { digestsEqual, sha256 } from './hash.ts'
export { clearBit, countBits, emptyBitfield, hasBit, setBit } from './bitfield.ts'
export { parseContentRange } from './content-range.ts'
export type { ContentRange } from './content-range.ts'
export { formatBytes, parseSize } from './sizes.ts'
export { formatDuration, parseDuration } from './durations.ts'
export { silentLogger, withFields } from './logger.ts'
export type { Logger } from './logger.ts'
export { AGENT_EVENT_TYPES, API_SOCKET_NAME, API_VERSION, FINAL_STATES, JOB_TYPES, PRIORITIES } from './api.ts'
export type {
  AgentByteTotals, AgentEvent, AgentEventType, AgentStatus, StoreRecovery, BandwidthStatus, PolicyView, WanPathStatus, ApiErrorBody, CacheEntryView, CacheView, PeersView, PeerStatus, AddFilesRequest, CreateJobFile, CreateJobRequest, JobBytes, JobLimits, JobError, JobFileView, HostedCacheUse,
  JobHttpOptions, JobHttpView, JobNotify, JobPriority, JobState, JobType, JobUploadView, JobView, SetPriorityRequest, SetRateLimitRequest
} from './api.ts'
export type { AbortOptions, AgentControl, Awaitable, CanopyControl, ControlEvents, ControlEventSource } from './control.ts'
export { decodeMessage, encodeFrameParts, encodeMessage, EXCHANGE_PROTOCOL, ExchangeStatus, MAX_FRAME_BODY, MAX_REQUEST_BODY, MessageType, RESPONSE_HEAD_BYTES } from './wire.ts'
export type { ExchangeMessage } from './wire.ts'
