import { test } from 'node:test'
import assert from 'node:assert/strict'
import { clearBit, countBits, emptyBitfield, hasBit, parseContentRange, setBit } from '@canopy/core'

test('parseContentRange reads bytes first-last/total and */total forms of 206 answers only', () => {
  assert.deepEqual(parseContentRange('bytes 0-1048575/4194304'), { first: 0, last: 1048575, total: 4194304 })
  assert.deepEqual(parseContentRange('bytes 5-9/*'), { first: 5, last: 9 })
  for (const bad of [undefined, '', 'bytes */100', 'bytes 1-2', 'items 1-2/3', 'bytes 1-2/3 ', 'bytes -1-2/3']) {
    assert.equal(parseContentRange(bad), undefined, String(bad))
  }
})

test('bitfields: block i is bit 7 - i mod 8 of byte i / 8, most significant first', () => {
  const bits = emptyBitfield(10)
  assert.equal(bits.length, 2)
  setBit(bits, 0)
  setBit(bits, 9)
  assert.deepEqual([...bits], [0x80, 0x40])
  assert.equal(hasBit(bits, 9), true)
  assert.equal(hasBit(bits, 8), false)
  assert.equal(countBits(bits), 2)
  clearBit(bits, 0)
  assert.deepEqual([...bits], [0x00, 0x40])
})
