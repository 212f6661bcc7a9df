import { test } from 'node:test'
import assert from 'node:assert/strict'
import { CID } from 'multiformats/cid'
import {
  blockCid, contentKey, createManifest, discoveryId, encodeManifest, DISCOVERY_LABEL, generateSecret, manifestId, sha256, type Manifest
} from '../src/index.ts'

/*
 * Fixed vectors, computed independently of this code base with the openssl CLI
 * (hashes, HMACs) and python3 (only to assemble CID bytes and base32 them):
 *
 *   printf 'hello' > block; openssl dgst -sha256 -r block
 *     -> BLOCK_DIGEST; block CID = 'b' + base32lower(01 55 12 20 || BLOCK_DIGEST)
 *   printf '<MANIFEST_JSON>' > manifest.json; openssl dgst -sha256 -r manifest.json
 *     -> digest D; manifest id = 'b' + base32lower(01 80 04 12 20 || D)  (CIDv1, json codec 0x0200, sha2-256)
 *   (those CID bytes written to cid.bin)
 *   openssl dgst -sha256 -mac HMAC -macopt hexkey:000102…1f -r cid.bin              -> CONTENT_KEY
 *   printf 'canopy/discovery/v1' > label
 *   openssl dgst -sha256 -mac HMAC -macopt hexkey:<CONTENT_KEY> -r label            -> DISCOVERY_ID
 */
const SECRET = Buffer.from(Array.from({ length: 32 }, (_, i) => i))
const BLOCK_DIGEST = '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'
const BLOCK_CID = 'bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq'
const MANIFEST_JSON = `{"version":1,"size":5,"blockSize":65536,"sha256":"${BLOCK_DIGEST}","blocks":["${BLOCK_CID}"]}`
const MANIFEST_ID = 'bagaaieragct4ssxioc3abxrw6c3f44zb7fyboysdh7suso4qiwsg3mhchr5q'
const MANIFEST_ID_BYTES = '018004122030a7c94ae870b600de36f0b65e7321f9701762433fe5493b9045a46db0e23c7b'
const CONTENT_KEY = 'adc34ccc251c1c4a97e94abf060849a15baf6a9599247b264caec28a164d7fb3'
const DISCOVERY_ID = '3bfb5caebfaba35981fefd80df084a4b672fb1d2a54ad536148c5724fcb680f0'

const manifest: Manifest = { version: 1, size: 5, blockSize: 65536, sha256: BLOCK_DIGEST, blocks: [BLOCK_CID] }

async function * oneChunk (bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes
}

test('the fixed manifest has the independently computed ids', async () => {
  assert.equal(blockCid(sha256('hello')), BLOCK_CID)
  assert.equal(manifestId(manifest), MANIFEST_ID)
  assert.equal(Buffer.from(CID.parse(MANIFEST_ID).bytes).toString('hex'), MANIFEST_ID_BYTES)
  const built = await createManifest(oneChunk(Buffer.from('hello')), { blockSize: 65536 })
  assert.deepEqual(built, { ...manifest, id: MANIFEST_ID })
  assert.equal(Buffer.from(encodeManifest(manifest)).toString(), MANIFEST_JSON)
})

test('contentKey is HMAC-SHA256(secret, manifest id bytes)', () => {
  const key = contentKey(SECRET, MANIFEST_ID)
  assert.equal(key.toString('hex'), CONTENT_KEY)
  assert.equal(key.length, 32)
  assert.notEqual(contentKey(generateSecret(), MANIFEST_ID).toString('hex'), CONTENT_KEY)
})

test('discoveryId is HMAC-SHA256(K, label)', () => {
  assert.equal(DISCOVERY_LABEL, 'canopy/discovery/v1')
  assert.equal(discoveryId(Buffer.from(CONTENT_KEY, 'hex'), DISCOVERY_LABEL).toString('hex'), DISCOVERY_ID)
  assert.notEqual(discoveryId(Buffer.from(CONTENT_KEY, 'hex'), 'other').toString('hex'), DISCOVERY_ID)
})

test('generateSecret gives 32 fresh bytes', () => {
  const a = generateSecret()
  assert.equal(a.length, 32)
  assert.notDeepEqual(a, generateSecret())
})
