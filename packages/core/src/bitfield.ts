/**
 * The bitfield layout of the exchange protocol (HaveResponse's `have` and
 * `fetching`): block i is bit (7 - i mod 8) of byte floor(i / 8), most significant
 * bit first, as BitTorrent's. One module for both sides of the wire.
 */

/** An empty bitfield for `count` blocks. */
export function emptyBitfield (count: number): Uint8Array {
  return new Uint8Array(Math.ceil(count / 8))
}

export function hasBit (bits: Uint8Array, i: number): boolean {
  return (bits[i >> 3] & (0x80 >> (i & 7))) !== 0
}

export function setBit (bits: Uint8Array, i: number): void {
  bits[i >> 3] |= 0x80 >> (i & 7)
}

export function clearBit (bits: Uint8Array, i: number): void {
  bits[i >> 3] &= ~(0x80 >> (i & 7))
}

const BITS_SET = Uint8Array.from({ length: 256 }, (_, b) => { let n = 0; for (let v = b; v !== 0; v >>= 1) n += v & 1; return n })

/** How many bits are set. */
export function countBits (bits: Uint8Array): number {
  let n = 0
  for (const b of bits) n += BITS_SET[b]
  return n
}
