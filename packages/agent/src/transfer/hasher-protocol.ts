/**
 * The messages between the agent and its hashing workers (block-hasher-worker.js,
 * digest-worker.js), types only: BlockHasher and FileDigests send and read them, the
 * workers check theirs against them (JSDoc imports under @ts-check). Block messages
 * have no `type`; whole-file digest messages have one: one worker thread may serve both.
 */

/** Write a block that matches `expected` at `position` of the open file `fd`. */
export interface WriteOrder {
  fd: number
  position: number
  expected: Uint8Array
}

/** Hash (and maybe write) a block; its memory is transferred to the worker. */
export interface BlockRequest {
  id: number
  buffer: ArrayBuffer
  length: number
  write?: WriteOrder
}

/** The answer to a BlockRequest; the block's memory comes back in `buffer`. */
export interface BlockReply {
  id: number
  buffer: ArrayBuffer
  /** The block's SHA-256 (32 bytes). */
  digest: ArrayBuffer
  /** The block matched and was written (asked with a write order only). */
  written: boolean
  /** The write failed (its errno code and message). */
  error?: { code?: string, message: string }
}

/** Whole-file digest sessions: open a file, hash its first `upTo` bytes as they are complete, finish at `size`, close. */
export type DigestRequest =
  | { type: 'open', session: number, path: string }
  | { type: 'advance', session: number, upTo: number }
  | { type: 'finish', session: number, size: number }
  | { type: 'close', session: number }

export type DigestReply =
  | { type: 'digest', session: number, hex: string }
  | { type: 'error', session: number, message: string }

export type HasherRequest = BlockRequest | DigestRequest
export type HasherReply = BlockReply | DigestReply
