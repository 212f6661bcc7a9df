import { createHash } from 'node:crypto'

/** Inline SHA-256, for small inputs. */
export function sha256 (data: Uint8Array | string): Buffer {
  return createHash('sha256').update(data).digest()
}

/** Constant-shape comparison of two digests. */
export function digestsEqual (a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i]
  return diff === 0
}
