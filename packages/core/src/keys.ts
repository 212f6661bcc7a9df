import { createHmac, randomBytes } from 'node:crypto'
import { CID } from 'multiformats/cid'

/**
 * Per-content key, as in BranchCache: K = HMAC-SHA256(origin secret, manifest id bytes).
 * The origin hands K out with the manifest (after its own access control); only a
 * holder of K can name or read the content among peers.
 */
export function contentKey (originSecret: Uint8Array, manifestId: string): Buffer {
  return createHmac('sha256', originSecret).update(CID.parse(manifestId).bytes).digest()
}

/**
 * Discovery id = HMAC-SHA256(K, label). Peers advertise and ask only by this id: it
 * reveals nothing about the content to a peer that lacks K.
 */
export function discoveryId (key: Uint8Array, label: string): Buffer {
  return createHmac('sha256', key).update(label, 'utf8').digest()
}

/** The label of the discovery id under which a manifest's blocks are advertised. */
export const DISCOVERY_LABEL = 'canopy/discovery/v1'

/** A fresh 32-byte secret (origin secrets, organisation keys). */
export function generateSecret (): Buffer {
  return randomBytes(32)
}

/**
 * Proof that the asker holds the content key, bound to both peer ids (which Noise
 * authenticates): HMAC-SHA256(K, "canopy/read/v1" | asker | server). A peer that
 * never got K from the origin cannot compute it, and a proof seen by one server
 * is useless with another, or to another asker.
 */
export function readProof (key: Uint8Array, asker: Uint8Array, server: Uint8Array): Buffer {
  return createHmac('sha256', key).update('canopy/read/v1').update(asker).update(server).digest()
}
