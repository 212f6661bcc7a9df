// The agent-wide pool of block buffers.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { BufferPool } from '../src/transfer/buffer-pool.ts'

const MiB = 1024 * 1024

test('a buffer given back is the next one taken of its length, by any transfer', () => {
  const pool = new BufferPool(4 * MiB)
  const first = pool.take(MiB)
  assert.equal(first.length, MiB)
  assert.equal(first.byteOffset, 0)
  assert.equal(first.buffer.byteLength, MiB, 'owns its memory, so it can move to a hashing worker')
  pool.give(first)
  assert.equal(pool.bytes, MiB)
  assert.equal(pool.take(MiB), first)
  assert.equal(pool.bytes, 0)
  assert.notEqual(pool.take(MiB), first, 'taken once, not twice')
})

test('lengths are pooled apart; short last blocks and slices are not kept', () => {
  const pool = new BufferPool(8 * MiB)
  const big = pool.take(4 * MiB)
  const small = pool.take(64 * 1024)
  pool.give(big)
  pool.give(small)
  assert.equal(pool.take(64 * 1024), small)
  assert.equal(pool.take(4 * MiB), big)
  const short = pool.take(MiB - 123)
  pool.give(short)
  const slice = Buffer.allocUnsafeSlow(2 * MiB).subarray(0, MiB)
  pool.give(slice)
  assert.equal(pool.bytes, 0)
})

test('the pool keeps no more than its limit', () => {
  const pool = new BufferPool(2 * MiB)
  const buffers = [pool.take(MiB), pool.take(MiB), pool.take(MiB)]
  for (const b of buffers) pool.give(b)
  assert.equal(pool.bytes, 2 * MiB)
  assert.equal(pool.take(MiB), buffers[1])
  assert.equal(pool.take(MiB), buffers[0])
  assert.notEqual(pool.take(MiB), buffers[2], 'the third was dropped')
})
