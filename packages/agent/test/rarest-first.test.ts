// The order in which blocks are asked of peers: rarest first, then by index.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { rarestFirst } from '../src/transfer/peer-fetch.ts'

/** A bitfield of `count` blocks (most significant bit first, as on the wire) with `blocks` set. */
function bits (count: number, blocks: number[]): Uint8Array {
  const out = new Uint8Array(Math.ceil(count / 8))
  for (const i of blocks) out[i >> 3] |= 0x80 >> (i & 7)
  return out
}

test('blocks held by fewer peers come first; blocks no peer has, or that we have, are left out', () => {
  const count = 10
  const a = bits(count, [0, 1, 2, 3, 4, 5, 6, 7])
  const b = bits(count, [0, 1, 2, 3])
  const c = bits(count, [0, 1, 6])
  const have = new Set([1])
  const order = rarestFirst(count, i => !have.has(i), [a, b, c])
  // 4, 5, 7: one holder; 2, 3, 6: two; 0: three; 1 we have; 8, 9 nobody has.
  assert.deepEqual(order, [4, 5, 7, 2, 3, 6, 0])
})

test('with no peers or nothing missing the order is empty', () => {
  assert.deepEqual(rarestFirst(5, () => true, []), [])
  assert.deepEqual(rarestFirst(5, () => false, [bits(5, [0, 1, 2, 3, 4])]), [])
})
