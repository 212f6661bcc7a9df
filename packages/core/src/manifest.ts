import { createHash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { assertBlockSize, blockCid, blockCount, blockDigest, DEFAULT_BLOCK_SIZE, SHA256_CODE } from './blocks.ts'
import { CanopyError, ErrorCode, throwIfAborted } from './errors.ts'
import { sha256 } from './hash.ts'

/** Media type of a manifest, used for content negotiation on the content's own URL. */
export const MANIFEST_MEDIA_TYPE = 'application/vnd.canopy.manifest+json'
/** Suffix of the static sidecar that `canopy publish` writes next to a file. */
export const SIDECAR_SUFFIX = '.canopy'
export const MANIFEST_VERSION = 1
/** Largest content a manifest may describe (1 TiB). */
export const MAX_CONTENT_SIZE = 2 ** 40
/** Most blocks a manifest may list; bounds the memory a manifest can make us spend. */
export const MAX_BLOCKS = 2 ** 20
/** Upper bound of an encoded manifest (a CID string is 59 characters), for reading one off the wire. */
export const MAX_MANIFEST_BYTES = MAX_BLOCKS * 64 + 64 * 1024
/** multicodec code of JSON: the codec of a manifest id. */
export const JSON_CODEC = 0x0200

/** What a manifest says about one file. All fields are covered by the manifest id. */
export interface Manifest {
  version: 1
  /** Total size in bytes. */
  size: number
  /** Block size in bytes: a power of two from 64 KiB to 16 MiB. */
  blockSize: number
  /** Whole-file SHA-256, lowercase hex. */
  sha256: string
  /** Block ids in order: CIDv1, raw codec, sha2-256 (`bafkrei…`). */
  blocks: string[]
}

/** A manifest with its id (CIDv1 of its canonical encoding). */
export interface IdentifiedManifest extends Manifest {
  id: string
}

/**
 * A manifest as an origin serves it: with its id and the per-content key (base64).
 * The key is not part of the manifest id.
 */
export interface PublishedManifest extends IdentifiedManifest {
  key?: string
}

/** Canonical encoding: JSON with a fixed key order and no whitespace. The manifest id hashes these bytes. */
export function encodeManifest (m: Manifest): Uint8Array {
  const canonical = {
    version: m.version,
    size: m.size,
    blockSize: m.blockSize,
    sha256: m.sha256,
    blocks: m.blocks
  }
  return new TextEncoder().encode(JSON.stringify(canonical))
}

/** CIDv1 (json codec, sha2-256) of the canonical encoding (`bagaaiera…`). */
export function manifestId (m: Manifest): string {
  return CID.createV1(JSON_CODEC, Digest.create(SHA256_CODE, sha256(encodeManifest(m)))).toString()
}

function invalid (why: string): CanopyError {
  return new CanopyError(ErrorCode.InvalidManifest, `Invalid manifest: ${why}`)
}

/** Most bytes an encoded manifest of `blocks` blocks may take: a block id per 128 bytes (room for pretty-printing), plus 64 KiB. */
export function manifestByteLimit (blocks: number): number {
  return blocks * MAX_BLOCK_ID_BYTES + 64 * 1024
}

/** A block id is 59 characters; this leaves room for indentation and the forms a CID parser accepts. */
const MAX_BLOCK_ID_BYTES = 128
/** Longest value of any other field (sha256 64, id 61, key 44 characters); unknown fields are tolerated up to it. */
const MAX_FIELD_BYTES = 1024
const MAX_FIELDS = 32

/**
 * Parses manifest JSON with memory bounded by what a manifest can hold. JSON.parse
 * first builds whatever the text describes: 60 MB of nested arrays took an agent to
 * 3.3 GiB before any check ran (issue 13, item 7). This reads exactly the manifest's
 * shape: one object of at most MAX_FIELDS fields whose values are scalars of at most
 * MAX_FIELD_BYTES, except `blocks`, an array of short strings no longer than size
 * and blockSize allow (when they come first, as in the canonical encoding) or
 * MAX_BLOCKS. Each token is bounded before it is decoded, so nothing is built that
 * a valid manifest would not hold, and a document longer than its own block count
 * allows is refused.
 */
function parseManifestJson (bytes: Uint8Array, untilBlocks = false): Record<string, unknown> {
  let at = 0
  const end = bytes.length
  const skipSpace = (): void => {
    while (at < end && (bytes[at] === 0x20 || bytes[at] === 0x0a || bytes[at] === 0x0d || bytes[at] === 0x09)) at++
  }
  const where = (): string => `at byte ${at}`
  const expect = (char: string): void => {
    skipSpace()
    if (bytes[at] !== char.charCodeAt(0)) throw invalid(`expected '${char}' ${where()}`)
    at++
  }
  /** A JSON token of at most `max` bytes, decoded by JSON.parse only once it is known to be that short and flat. */
  const bounded = (start: number, max: number, what: string): unknown => {
    if (at - start > max) throw invalid(`${what} longer than ${max} bytes ${where()}`)
    try {
      return JSON.parse(utf8.decode(bytes.subarray(start, at)))
    } catch {
      throw invalid(`malformed ${what} ${where()}`)
    }
  }
  const string = (max: number, what: string): string => {
    skipSpace()
    if (bytes[at] !== 0x22) throw invalid(`${what} must be a string ${where()}`)
    const start = at++
    let escaped = false
    while (at < end && bytes[at] !== 0x22) {
      if (bytes[at] < 0x20) throw invalid(`control character in ${what} ${where()}`)
      if (bytes[at] === 0x5c) {
        escaped = true
        at++
      }
      at++
      if (at - start > max) throw invalid(`${what} longer than ${max} bytes ${where()}`)
    }
    if (at >= end) throw invalid(`unterminated string ${where()}`)
    at++
    if (escaped) return bounded(start, max, what) as string
    try {
      return utf8.decode(bytes.subarray(start + 1, at - 1))
    } catch {
      throw invalid(`${what} is not UTF-8 ${where()}`)
    }
  }
  const scalar = (field: string): unknown => {
    skipSpace()
    const c = bytes[at]
    if (c === 0x22) return string(MAX_FIELD_BYTES, `field ${field}`)
    if (c === 0x7b || c === 0x5b) throw invalid(`field ${field} must not be an object or an array ${where()}`)
    const start = at
    while (at < end && /[-+.0-9a-zA-Z]/.test(String.fromCharCode(bytes[at]))) {
      at++
      if (at - start > 64) throw invalid(`field ${field} too long ${where()}`)
    }
    if (at === start) throw invalid(`expected a value for field ${field} ${where()}`)
    return bounded(start, 64, `field ${field}`)
  }

  const fields: Record<string, unknown> = Object.create(null) as Record<string, unknown>
  let count = 0
  expect('{')
  skipSpace()
  if (bytes[at] === 0x7d) {
    at++
  } else {
    for (;;) {
      const name = string(64, 'field name')
      if (Object.hasOwn(fields, name)) throw invalid(`field ${name} appears twice`)
      if (++count > MAX_FIELDS) throw invalid(`more than ${MAX_FIELDS} fields`)
      expect(':')
      if (name === 'blocks') {
        const { size, blockSize } = fields
        const known = typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 && size <= MAX_CONTENT_SIZE &&
          typeof blockSize === 'number' && isBlockSize(blockSize)
        const limit = known ? Math.min(MAX_BLOCKS, blockCount(size, blockSize)) : MAX_BLOCKS
        if (untilBlocks) throw new HeaderRead(known ? manifestByteLimit(limit) : MAX_MANIFEST_BYTES)
        if (known && end > manifestByteLimit(limit)) {
          throw invalid(`${end} bytes is more than a manifest of ${size} bytes in blocks of ${blockSize} can take (${manifestByteLimit(limit)})`)
        }
        skipSpace()
        if (bytes[at] !== 0x5b) throw invalid('blocks must be an array')
        at++
        const blocks: unknown[] = []
        skipSpace()
        if (bytes[at] === 0x5d) {
          at++
        } else {
          for (;;) {
            if (blocks.length === limit) throw invalid(`more than the ${limit} block ids that size and blockSize allow ${where()}`)
            blocks.push(string(MAX_BLOCK_ID_BYTES, 'a block id'))
            skipSpace()
            if (bytes[at] === 0x5d) { at++; break }
            expect(',')
          }
        }
        fields.blocks = blocks
      } else {
        fields[name] = scalar(name)
      }
      skipSpace()
      if (bytes[at] === 0x7d) { at++; break }
      expect(',')
    }
  }
  skipSpace()
  if (at !== end) throw invalid(`unexpected data after the manifest ${where()}`)
  return fields
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** parseManifestJson reached `blocks` in header mode: the most bytes the whole document may take. */
class HeaderRead {
  readonly limit: number
  constructor (limit: number) {
    this.limit = limit
  }
}

/**
 * The most bytes the manifest that starts with `prefix` may take, from the fields
 * before its `blocks` (size and block size: the canonical order puts them first),
 * so a reader can stop a response that grows beyond it without reading the rest.
 * Undefined while the prefix does not reach `blocks` (or is not a manifest: the
 * full decode says why).
 */
export function manifestSizeLimit (prefix: Uint8Array): number | undefined {
  try {
    parseManifestJson(prefix, true)
  } catch (err) {
    if (err instanceof HeaderRead) return err.limit
  }
  return undefined
}

function isBlockSize (n: number): boolean {
  try {
    assertBlockSize(n)
    return true
  } catch {
    return false
  }
}

/**
 * Strictly decodes a manifest from JSON text, bytes or an already-parsed value.
 * Rejects unknown versions, sizes out of bounds, a block count that does not match
 * size and block size, malformed CIDs, and an `id` that is not the manifest's own.
 * Text and bytes are parsed with bounded memory (parseManifestJson), whatever they hold.
 */
export function decodeManifest (input: string | Uint8Array | unknown): PublishedManifest {
  let value: unknown = input
  if (typeof input === 'string' || input instanceof Uint8Array) {
    if (input.length > MAX_MANIFEST_BYTES) throw invalid(`larger than ${MAX_MANIFEST_BYTES} bytes`)
    const bytes = typeof input === 'string' ? new TextEncoder().encode(input) : input
    if (bytes.length > MAX_MANIFEST_BYTES) throw invalid(`larger than ${MAX_MANIFEST_BYTES} bytes`)
    value = parseManifestJson(bytes)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid('not a JSON object')
  const v = value as Record<string, unknown>
  if (v.version !== MANIFEST_VERSION) throw invalid(`unknown version ${JSON.stringify(v.version)} (this agent reads version ${MANIFEST_VERSION})`)
  const { size, blockSize, sha256: wholeDigest, blocks } = v
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || size > MAX_CONTENT_SIZE) {
    throw invalid(`size must be an integer from 0 to ${MAX_CONTENT_SIZE}`)
  }
  if (typeof blockSize !== 'number') throw invalid('blockSize missing')
  try {
    assertBlockSize(blockSize)
  } catch (err) {
    throw invalid((err as Error).message)
  }
  if (typeof wholeDigest !== 'string' || !/^[0-9a-f]{64}$/.test(wholeDigest)) throw invalid('sha256 must be 64 lowercase hex digits')
  if (!Array.isArray(blocks)) throw invalid('blocks must be an array')
  const expected = blockCount(size, blockSize)
  if (blocks.length !== expected) {
    throw invalid(`${blocks.length} blocks listed, but ${size} bytes in blocks of ${blockSize} make ${expected}`)
  }
  if (expected > MAX_BLOCKS) throw invalid(`more than ${MAX_BLOCKS} blocks`)
  for (const b of blocks) {
    if (typeof b !== 'string') throw invalid('a block id is not a string')
    try {
      blockDigest(b)
    } catch (err) {
      throw invalid((err as Error).message)
    }
  }
  const manifest: Manifest = { version: MANIFEST_VERSION, size, blockSize, sha256: wholeDigest, blocks: blocks as string[] }
  const id = manifestId(manifest)
  if (v.id !== undefined && v.id !== id) throw invalid(`id ${String(v.id).slice(0, 80)} does not match its contents (${id})`)
  const out: PublishedManifest = { ...manifest, id }
  if (v.key !== undefined) {
    if (typeof v.key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(v.key)) throw invalid('key must be 32 bytes in base64')
    out.key = v.key
  }
  return out
}

export interface CreateManifestOptions {
  /** Block size; default 1 MiB. */
  blockSize?: number
  signal?: AbortSignal
}

/**
 * Builds a manifest by streaming the content once. Memory stays flat in the
 * content's size: one block is held at a time. Hashing runs on the calling thread
 * (WebCrypto's async digest does too, on Node 24); callers that must stay
 * responsive run this in a worker.
 */
export async function createManifest (source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: CreateManifestOptions = {}): Promise<IdentifiedManifest> {
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE
  assertBlockSize(blockSize)
  const whole = createHash('sha256')
  const blocks: string[] = []
  let size = 0
  const block = Buffer.allocUnsafe(blockSize)
  let filled = 0
  const flush = (): void => {
    blocks.push(blockCid(sha256(block.subarray(0, filled))))
    filled = 0
  }

  for await (const chunk of source) {
    throwIfAborted(options.signal)
    whole.update(chunk)
    size += chunk.length
    if (size > MAX_CONTENT_SIZE) throw new CanopyError(ErrorCode.InvalidArgument, `Content larger than ${MAX_CONTENT_SIZE} bytes cannot be published`)
    let at = 0
    while (at < chunk.length) {
      const take = Math.min(blockSize - filled, chunk.length - at)
      block.set(chunk.subarray(at, at + take), filled)
      filled += take
      at += take
      if (filled === blockSize) flush()
    }
  }
  if (filled > 0) flush()
  const manifest: Manifest = { version: MANIFEST_VERSION, size, blockSize, sha256: whole.digest('hex'), blocks }
  return { ...manifest, id: manifestId(manifest) }
}
