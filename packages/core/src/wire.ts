import { CanopyError } from './errors.ts'
import { MAX_BLOCK_SIZE } from './blocks.ts'
import { MAX_BLOCKS } from './manifest.ts'

/**
 * Messages of the peer block exchange (`/canopy/exchange/1.0.0`). Every frame is a
 * 4-byte big-endian body length, then the body: a type byte and fixed fields.
 * Sizes are bounded per type; anything else is a protocol error.
 */
export const EXCHANGE_PROTOCOL = '/canopy/exchange/1.0.0'

export const MessageType = {
  HaveRequest: 1,
  HaveResponse: 2,
  BlockRequest: 3,
  BlockResponse: 4
} as const

export const ExchangeStatus = {
  Ok: 0,
  /** The peer holds nothing under this discovery id. */
  Unknown: 1,
  /** The proof of the content key is wrong: the asker did not get the key from the origin. */
  Denied: 2,
  /** The peer does not have this block (yet). */
  Missing: 3
} as const

export type ExchangeMessage =
  | { type: typeof MessageType.HaveRequest, discoveryId: Uint8Array, proof: Uint8Array }
  | { type: typeof MessageType.HaveResponse, status: number, blockCount: number, bitfield: Uint8Array, fetching: Uint8Array }
  | { type: typeof MessageType.BlockRequest, discoveryId: Uint8Array, proof: Uint8Array, index: number }
  | { type: typeof MessageType.BlockResponse, status: number, index: number, data: Uint8Array }

/** Largest frame body: a block response carrying the largest block. */
export const MAX_FRAME_BODY = 1 + 1 + 4 + MAX_BLOCK_SIZE
const MAX_BITFIELD = Math.ceil(MAX_BLOCKS / 8)

function bad (why: string): CanopyError {
  return new CanopyError('ERR_PROTOCOL', `Malformed exchange message: ${why}`)
}

/** Type, status and one 32-bit number: the head every response starts with. */
function responseHead (type: number, status: number, value: number): Buffer {
  const head = Buffer.alloc(RESPONSE_HEAD_BYTES)
  head[0] = type
  head[1] = status
  head.writeUInt32BE(value, 2)
  return head
}

/** Encodes one message as a frame (length prefix included). */
export function encodeMessage (m: ExchangeMessage): Uint8Array {
  const parts = encodeFrameParts(m)
  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

/**
 * Encodes one message as the parts of a frame, to be sent one after the other: a
 * block response is its head (length prefix included) and then the block's bytes
 * as they are, so that a block is not copied into a frame buffer; any other
 * message is one part.
 */
export function encodeFrameParts (m: ExchangeMessage): Uint8Array[] {
  let body: Buffer
  switch (m.type) {
    case MessageType.HaveRequest:
      body = Buffer.concat([Buffer.from([m.type]), m.discoveryId, m.proof])
      break
    case MessageType.HaveResponse:
      body = Buffer.concat([responseHead(m.type, m.status, m.blockCount), m.bitfield, m.fetching])
      break
    case MessageType.BlockRequest: {
      const tail = Buffer.alloc(4)
      tail.writeUInt32BE(m.index, 0)
      body = Buffer.concat([Buffer.from([m.type]), m.discoveryId, m.proof, tail])
      break
    }
    case MessageType.BlockResponse: {
      const head = Buffer.concat([Buffer.alloc(4), responseHead(m.type, m.status, m.index)])
      head.writeUInt32BE(head.length - 4 + m.data.length, 0)
      return m.data.length === 0 ? [head] : [head, m.data]
    }
  }
  const frame = Buffer.allocUnsafe(4 + body.length)
  frame.writeUInt32BE(body.length, 0)
  body.copy(frame, 4)
  return [frame]
}

/** Bytes of a response's head in a frame body: type, status and one 32-bit number. */
export const RESPONSE_HEAD_BYTES = 6

/** Decodes one frame body (without its length prefix), strictly. */
export function decodeMessage (body: Uint8Array): ExchangeMessage {
  if (body.length === 0) throw bad('empty')
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  switch (b[0]) {
    case MessageType.HaveRequest:
      if (b.length !== 65) throw bad(`have request of ${b.length} bytes`)
      return { type: MessageType.HaveRequest, discoveryId: b.subarray(1, 33), proof: b.subarray(33, 65) }
    case MessageType.HaveResponse: {
      if (b.length < 6) throw bad('short have response')
      const blockCount = b.readUInt32BE(2)
      if (blockCount > MAX_BLOCKS) throw bad('too many blocks')
      // Two bitfields: the blocks the peer has, and those it is fetching from the origin now.
      const size = Math.ceil(blockCount / 8)
      if (b.length !== 6 + 2 * size || size > MAX_BITFIELD) throw bad('bitfield lengths do not match the block count')
      return { type: MessageType.HaveResponse, status: b[1], blockCount, bitfield: b.subarray(6, 6 + size), fetching: b.subarray(6 + size) }
    }
    case MessageType.BlockRequest:
      if (b.length !== 69) throw bad(`block request of ${b.length} bytes`)
      return { type: MessageType.BlockRequest, discoveryId: b.subarray(1, 33), proof: b.subarray(33, 65), index: b.readUInt32BE(65) }
    case MessageType.BlockResponse:
      if (b.length < 6 || b.length > MAX_FRAME_BODY) throw bad(`block response of ${b.length} bytes`)
      return { type: MessageType.BlockResponse, status: b[1], index: b.readUInt32BE(2), data: b.subarray(6) }
    default:
      throw bad(`unknown type ${b[0]}`)
  }
}

/** Largest body a frame of this direction may have: requests are small, responses carry blocks. */
export const MAX_REQUEST_BODY = 69
