import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { decodeMessage, encodeFrameParts, encodeMessage, MessageType, readProof, RESPONSE_HEAD_BYTES } from '@canopy/core'
import type { ExchangeMessage } from '@canopy/core'

const body = (frame: Uint8Array): Uint8Array => frame.subarray(4)

test('every exchange message round-trips, with its length prefix', () => {
  const messages: ExchangeMessage[] = [
    { type: MessageType.HaveRequest, discoveryId: randomBytes(32), proof: randomBytes(32) },
    { type: MessageType.HaveResponse, status: 0, blockCount: 13, bitfield: randomBytes(2), fetching: randomBytes(2) },
    { type: MessageType.BlockRequest, discoveryId: randomBytes(32), proof: randomBytes(32), index: 123456 },
    { type: MessageType.BlockResponse, status: 0, index: 7, data: randomBytes(1000) }
  ]
  for (const m of messages) {
    const frame = encodeMessage(m)
    assert.equal(Buffer.from(frame).readUInt32BE(0), frame.length - 4)
    const back = decodeMessage(body(frame)) as unknown as Record<string, unknown>
    for (const [k, v] of Object.entries(m)) assert.deepEqual(v instanceof Uint8Array ? Buffer.from(back[k] as Uint8Array) : back[k], v instanceof Uint8Array ? Buffer.from(v) : v, k)
  }
})

test('malformed messages are refused with ERR_PROTOCOL', () => {
  const cases = [
    new Uint8Array(0),
    Uint8Array.from([99]),
    Uint8Array.from([MessageType.HaveRequest, 1, 2, 3]),
    Uint8Array.from([MessageType.BlockRequest, ...randomBytes(60)]),
    body(encodeMessage({ type: MessageType.HaveResponse, status: 0, blockCount: 20, bitfield: randomBytes(2), fetching: randomBytes(2) })) // 20 blocks need 3 bytes each
  ]
  for (const c of cases) assert.throws(() => decodeMessage(c), { code: 'ERR_PROTOCOL' })
})

test('a read proof is bound to the key and to both peers', () => {
  const key = randomBytes(32)
  const [a, b] = [randomBytes(38), randomBytes(38)]
  const proof = readProof(key, a, b)
  assert.equal(proof.length, 32)
  assert.notDeepEqual(readProof(key, b, a), proof)
  assert.notDeepEqual(readProof(randomBytes(32), a, b), proof)
  assert.deepEqual(readProof(key, a, b), proof)
})

test('a block response is framed as its head and the block itself, not a copy', () => {
  const data = randomBytes(5000)
  const m: ExchangeMessage = { type: MessageType.BlockResponse, status: 0, index: 9, data }
  const parts = encodeFrameParts(m)
  assert.equal(parts.length, 2)
  assert.equal(parts[1], data, 'the block goes out as it is')
  assert.equal(parts[0].length, 4 + RESPONSE_HEAD_BYTES)
  assert.deepEqual(Buffer.concat(parts), Buffer.from(encodeMessage(m)))
  const back = decodeMessage(body(Buffer.concat(parts)))
  assert.equal(back.type === MessageType.BlockResponse && back.index, 9)
})
