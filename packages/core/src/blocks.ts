import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { CanopyError, ErrorCode } from './errors.ts'

/** multicodec code of raw bytes, the codec of every block CID. */
export const RAW_CODEC = 0x55
/** multicodec code of sha2-256. */
export const SHA256_CODE = 0x12

export const MIN_BLOCK_SIZE = 64 * 1024
export const MAX_BLOCK_SIZE = 16 * 1024 * 1024
export const DEFAULT_BLOCK_SIZE = 1024 * 1024

export function assertBlockSize (blockSize: number): void {
  if (!Number.isSafeInteger(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE ||
      (blockSize & (blockSize - 1)) !== 0) {
    throw new CanopyError(ErrorCode.InvalidArgument,
      `Block size ${blockSize} is not allowed: use a power of two from 64 KiB to 16 MiB (default 1 MiB)`)
  }
}

/** Number of blocks of a `size`-byte file cut into `blockSize` blocks (0 for an empty file). */
export function blockCount (size: number, blockSize: number): number {
  return Math.ceil(size / blockSize)
}

/** Byte span of block `index`: the last block may be short. */
export function blockSpan (index: number, size: number, blockSize: number): { offset: number, length: number } {
  const offset = index * blockSize
  return { offset, length: Math.min(blockSize, size - offset) }
}

/** CIDv1 (raw codec, sha2-256) of a block, given the block's SHA-256 digest. Same ids IPFS uses for raw leaves. */
export function blockCid (sha256Digest: Uint8Array): string {
  return CID.createV1(RAW_CODEC, Digest.create(SHA256_CODE, sha256Digest)).toString()
}

/**
 * The SHA-256 digest a block CID commits to. Rejects anything that is not a
 * CIDv1 with the raw codec and a 32-byte sha2-256 multihash.
 */
export function blockDigest (cid: string): Uint8Array {
  let parsed: CID
  try {
    parsed = CID.parse(cid)
  } catch (err) {
    throw new CanopyError(ErrorCode.InvalidManifest, `"${cid.slice(0, 80)}" is not a valid CID`, { cause: err })
  }
  if (parsed.version !== 1 || parsed.code !== RAW_CODEC || parsed.multihash.code !== SHA256_CODE ||
      parsed.multihash.digest.length !== 32) {
    throw new CanopyError(ErrorCode.InvalidManifest,
      `Block id ${cid.slice(0, 80)} must be a CIDv1 with the raw codec and a sha2-256 hash`)
  }
  return parsed.multihash.digest
}
