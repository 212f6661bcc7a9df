import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import {
  blockCid, blockCount, blockDigest, blockSpan, createManifest, decodeManifest, encodeManifest, formatBytes,
  manifestByteLimit, manifestId, manifestSizeLimit, MAX_CONTENT_SIZE, MAX_MANIFEST_BYTES, parseSize, sha256,
  type IdentifiedManifest, type Manifest
} from '../src/index.ts'

const BS = 64 * 1024
const INVALID = { code: 'ERR_INVALID_MANIFEST' }

async function * chunked (data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size)
}

const hex = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')

/** What a manifest of `data` must be, computed block by block without createManifest. */
function expectedManifest (data: Buffer, blockSize: number): Manifest {
  const blocks: string[] = []
  for (let at = 0; at < data.length; at += blockSize) blocks.push(blockCid(sha256(data.subarray(at, at + blockSize))))
  return { version: 1, size: data.length, blockSize, sha256: hex(data), blocks }
}

test('createManifest gives the same manifest whatever the chunking, and it round-trips', async () => {
  const data = randomBytes(5 * BS + 12345)
  const expected = expectedManifest(data, BS)
  assert.equal(expected.blocks.length, 6)
  let first: IdentifiedManifest | undefined
  for (const chunk of [1000, 4096, 7919, BS - 1, BS, BS + 1, 3 * BS, data.length]) {
    const m = await createManifest(chunked(data, chunk), { blockSize: BS })
    const { id, ...fields } = m
    assert.deepEqual(fields, expected, `chunk ${chunk}`)
    assert.equal(id, manifestId(expected))
    first ??= m
    assert.deepEqual(m, first)
  }
  assert.ok(first !== undefined)
  const encoded = encodeManifest(first)
  for (const input of [encoded, new TextDecoder().decode(encoded), JSON.parse(new TextDecoder().decode(encoded)) as unknown]) {
    const decoded = decodeManifest(input)
    assert.deepEqual(decoded, first)
  }
  assert.match(first.id, /^bagaaiera/)
  for (const [i, cid] of first.blocks.entries()) {
    const { offset, length } = blockSpan(i, data.length, BS)
    assert.deepEqual(Buffer.from(blockDigest(cid)), sha256(data.subarray(offset, offset + length)))
    assert.match(cid, /^bafkrei/)
  }
})

test('block size edge cases', async () => {
  const empty = await createManifest(chunked(Buffer.alloc(0), 1), { blockSize: BS })
  assert.equal(empty.size, 0)
  assert.deepEqual(empty.blocks, [])
  assert.equal(empty.sha256, hex(Buffer.alloc(0)))
  assert.deepEqual(decodeManifest(encodeManifest(empty)), empty)

  const exact = randomBytes(2 * BS)
  const m2 = await createManifest(chunked(exact, 1000), { blockSize: BS })
  assert.equal(m2.blocks.length, 2)
  assert.deepEqual(m2.blocks, expectedManifest(exact, BS).blocks)

  const short = randomBytes(2 * BS + 1)
  const m3 = await createManifest(chunked(short, BS), { blockSize: BS })
  assert.equal(m3.blocks.length, 3)
  assert.equal(m3.blocks[2], blockCid(sha256(short.subarray(2 * BS))))
  assert.deepEqual(blockSpan(2, short.length, BS), { offset: 2 * BS, length: 1 })

  assert.equal(blockCount(0, BS), 0)
  assert.equal(blockCount(1, BS), 1)
  assert.equal(blockCount(BS, BS), 1)
  assert.equal(blockCount(BS + 1, BS), 2)

  const small = await createManifest(chunked(Buffer.from('x'), 1))
  assert.equal(small.blockSize, 1024 * 1024)
  await assert.rejects(createManifest(chunked(Buffer.from('x'), 1), { blockSize: 1000 }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(createManifest(chunked(Buffer.from('x'), 1), { blockSize: 32 * 1024 }), { code: 'ERR_INVALID_ARGUMENT' })
  await assert.rejects(createManifest(chunked(Buffer.from('x'), 1), { blockSize: 32 * 1024 * 1024 }), { code: 'ERR_INVALID_ARGUMENT' })
})

test('createManifest stops when aborted', async () => {
  const ac = new AbortController()
  ac.abort()
  await assert.rejects(createManifest(chunked(randomBytes(BS), 1000), { blockSize: BS, signal: ac.signal }), { code: 'ERR_ABORTED' })
})

/** A valid manifest as a plain object, to break one field at a time. */
async function validObject (): Promise<Record<string, unknown>> {
  const m = await createManifest(chunked(randomBytes(3 * BS), BS), { blockSize: BS })
  return JSON.parse(new TextDecoder().decode(encodeManifest(m))) as Record<string, unknown>
}

test('decodeManifest rejects malformed manifests with ERR_INVALID_MANIFEST', async () => {
  const good = await validObject()
  const blocks = good.blocks as string[]
  const digest = sha256('block')
  const dagPb = CID.createV1(0x70, Digest.create(0x12, digest)).toString()
  const sha512 = CID.createV1(0x55, Digest.create(0x13, createHash('sha512').update('block').digest())).toString()
  const v0 = CID.createV0(Digest.create(0x12, digest)).toString()
  const shortDigest = CID.createV1(0x55, Digest.create(0x12, digest.subarray(0, 16))).toString()

  const broken: Array<[string, unknown]> = [
    ['one block missing', { ...good, blocks: blocks.slice(1) }],
    ['one block too many', { ...good, blocks: [...blocks, blocks[0]] }],
    ['bad CID string', { ...good, blocks: [blocks[0], 'not-a-cid', blocks[2]] }],
    ['block id not a string', { ...good, blocks: [blocks[0], 42, blocks[2]] }],
    ['dag-pb codec', { ...good, blocks: [blocks[0], dagPb, blocks[2]] }],
    ['sha2-512 hash', { ...good, blocks: [blocks[0], sha512, blocks[2]] }],
    ['CIDv0', { ...good, blocks: [blocks[0], v0, blocks[2]] }],
    ['truncated digest', { ...good, blocks: [blocks[0], shortDigest, blocks[2]] }],
    ['blocks not an array', { ...good, blocks: 'x' }],
    ['unknown version', { ...good, version: 2 }],
    ['version as string', { ...good, version: '1' }],
    ['no version', { ...good, version: undefined }],
    ['negative size', { ...good, size: -1 }],
    ['fractional size', { ...good, size: 3 * BS - 0.5 }],
    ['size as string', { ...good, size: String(3 * BS) }],
    ['size too large', { ...good, size: MAX_CONTENT_SIZE + 1 }],
    ['block size not a power of two', { ...good, blockSize: 100_000 }],
    ['block size too small', { ...good, blockSize: 32 * 1024 }],
    ['block size missing', { ...good, blockSize: undefined }],
    ['uppercase sha256', { ...good, sha256: (good.sha256 as string).toUpperCase() }],
    ['short sha256', { ...good, sha256: 'abcd' }],
    ['id that does not match', { ...good, id: manifestId({ ...(good as unknown as Manifest), size: 3 * BS - 1 }) }],
    ['id that is not a CID', { ...good, id: 'nonsense' }],
    ['key too short', { ...good, key: Buffer.alloc(16).toString('base64') }],
    ['key not base64', { ...good, key: '!'.repeat(43) + '=' }],
    ['key not a string', { ...good, key: 42 }],
    ['array', [good]],
    ['null', null],
    ['number', 7]
  ]
  for (const [why, value] of broken) {
    assert.throws(() => decodeManifest(value), INVALID, why)
    if (value !== undefined) assert.throws(() => decodeManifest(JSON.stringify(value)), INVALID, `${why} (as text)`)
  }
  for (const text of ['', 'not json', '{"version":1', '[1,2]', 'null', '"a string"']) {
    assert.throws(() => decodeManifest(text), INVALID, text)
    assert.throws(() => decodeManifest(new TextEncoder().encode(text)), INVALID, text)
  }
})

test('decodeManifest accepts an id and a key that fit, and drops unknown fields', async () => {
  const good = await validObject()
  const id = manifestId(good as unknown as Manifest)
  const key = randomBytes(32).toString('base64')
  const decoded = decodeManifest({ ...good, id, key, extra: 'ignored' })
  assert.equal(decoded.id, id)
  assert.equal(decoded.key, key)
  assert.equal((decoded as unknown as Record<string, unknown>).extra, undefined)
  // Field order of the input does not matter: the id hashes the canonical encoding.
  const reordered = { blocks: good.blocks, sha256: good.sha256, blockSize: good.blockSize, size: good.size, version: 1 }
  assert.equal(decodeManifest(reordered).id, id)
})

test('parseSize reads plain numbers, binary and decimal units', () => {
  const cases: Array<[string, number]> = [
    ['0', 0], ['1048576', 1048576], ['64k', 65536], ['64K', 65536], ['64KiB', 65536], ['64kb', 64000],
    ['1m', 1048576], ['1MiB', 1048576], ['1MB', 1_000_000], ['1.5 GB', 1_500_000_000], ['2g', 2 * 1024 ** 3],
    ['1t', 1024 ** 4], ['1TB', 1000 ** 4], [' 10 ', 10], ['10b', 10], ['0.5k', 512]
  ]
  for (const [text, bytes] of cases) assert.equal(parseSize(text), bytes, text)
  for (const text of ['', 'abc', '-1', '1 xb', '1e3', '1,5m', 'k', '1 k b', '99999999999 TiB']) {
    assert.throws(() => parseSize(text), { code: 'ERR_INVALID_ARGUMENT' }, text)
  }
})

test('formatBytes', () => {
  assert.equal(formatBytes(0), '0 B')
  assert.equal(formatBytes(1023), '1023 B')
  assert.equal(formatBytes(1536), '1.5 KiB')
  assert.equal(formatBytes(1024 ** 3), '1.0 GiB')
})

test('decodeManifest parses with bounded memory: bombs and oversized documents are refused early', async () => {
  const good = await validObject()
  const text = JSON.stringify(good)
  const bytes = (s: string): Uint8Array => new TextEncoder().encode(s)
  /** Decoding allocates little whatever the input (JSON.parse of `nested` builds 8 M arrays). */
  const refusedSmall = (input: Uint8Array, message: RegExp): void => {
    const before = process.memoryUsage().heapUsed
    assert.throws(() => decodeManifest(input), { ...INVALID, message })
    assert.ok(process.memoryUsage().heapUsed - before < 16 * 1024 * 1024, `decoding allocated ${process.memoryUsage().heapUsed - before} bytes`)
  }
  // 16 MB of nested arrays in an unknown field: JSON.parse would build 8 M arrays first.
  const nested = `{"version":1,"junk":${'['.repeat(8_000_000)}${']'.repeat(8_000_000)}}`
  refusedSmall(bytes(nested), /junk must not be an object or an array/)
  // A million block ids for a file of three blocks: refused at the fourth.
  const many = `{"version":1,"size":${3 * BS},"blockSize":${BS},"blocks":[${`"${(good.blocks as string[])[0]}",`.repeat(1_000_000)}"x"]}`
  refusedSmall(bytes(many), /more than a manifest of/)
  // Whitespace padding beyond what a manifest of three blocks can take.
  const padded = text.replace('"blocks":', '"blocks":' + ' '.repeat(200_000))
  refusedSmall(bytes(padded), /more than a manifest of/)
  // Block ids first (no size yet): refused at the first id past the count that follows.
  const idsFirst = `{"blocks":[${`"${(good.blocks as string[])[0]}",`.repeat(4)}"x"],"version":1,"size":${3 * BS},"blockSize":${BS}}`
  assert.throws(() => decodeManifest(idsFirst), INVALID)

  const broken: Array<[string, string]> = [
    ['duplicate field', text.replace('{', '{"size":1,')],
    ['object in an unknown field', text.replace('{', '{"extra":{"a":1},')],
    ['data after the object', text + '{}'],
    ['a long unknown string', text.replace('{', `{"extra":"${'x'.repeat(2000)}",`)],
    ['a long block id', text.replace('"blocks":["', `"blocks":["${'b'.repeat(200)}`)],
    ['a raw control character', text.replace('"blocks":["', '"blocks":["\u0001')],
    ['too many fields', text.replace('{', '{' + Array.from({ length: 40 }, (_, i) => `"f${i}":0,`).join(''))],
    ['unterminated', text.slice(0, -3)]
  ]
  for (const [why, doc] of broken) assert.throws(() => decodeManifest(doc), INVALID, why)
  // Pretty-printed, with escapes in a value and unknown scalar fields: still a manifest.
  const pretty = JSON.stringify({ ...good, note: 'caf\u00e9 \\ "quoted"', flag: true, nothing: null }, null, 2)
  assert.equal(decodeManifest(pretty).id, decodeManifest(text).id)
})

test('manifestSizeLimit reads the most bytes a manifest may take from its first bytes', async () => {
  const good = await validObject()
  const encoded = encodeManifest(good as unknown as Manifest)
  const text = new TextDecoder().decode(encoded)
  const atBlocks = text.indexOf('"blocks":') + '"blocks":'.length
  assert.equal(manifestSizeLimit(encoded.subarray(0, atBlocks)), manifestByteLimit(3))
  assert.equal(manifestSizeLimit(encoded), manifestByteLimit(3))
  assert.equal(manifestSizeLimit(encoded.subarray(0, atBlocks - 12)), undefined, 'blocks not reached yet')
  assert.equal(manifestSizeLimit(new TextEncoder().encode('{"blocks":[')), MAX_MANIFEST_BYTES, 'no size before the blocks')
  assert.equal(manifestSizeLimit(new TextEncoder().encode('<html>')), undefined)
})
