import { createCipheriv, createDecipheriv, createHmac, createSecretKey } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { Uint8ArrayList } from 'uint8arraylist'

/**
 * Noise's crypto with the ChaCha20-Poly1305 key of each direction made into a
 * KeyObject once, instead of one per message. On Node 24, `createCipheriv` with raw
 * key bytes costs 21-31 µs against ~2.5 µs with a KeyObject (docs/LIBP2P.md),
 * and Noise calls it for every message of at most 64 KiB, on both sides. (The
 * library's path with raw key bytes also showed, in perf, a TypeError with its stack
 * trace built per call inside `prepareSecretKey`.)
 * Small messages keep the library's own path (its WebAssembly code is faster there).
 * Both directions answer with the pieces as they are (a Uint8ArrayList, which the
 * interface allows and Noise passes on as it is) instead of concatenating them: one
 * 64 KiB allocation and copy less per message, and fewer collections (raw transport
 * 245 → 290 MiB/s, sender CPU 3.0 → 2.4 s per GiB on the build machine).
 */
const keys = new WeakMap<Uint8Array, KeyObject>()

function keyObject (k: Uint8Array): KeyObject {
  let key = keys.get(k)
  if (key === undefined) {
    key = createSecretKey(k)
    keys.set(k, key)
  }
  return key
}

/** Below this many bytes the library's WebAssembly ChaCha20-Poly1305 is faster (its own threshold). */
const SMALL = 1200
const TAG = 16

/** The pieces of a message: Noise hands over a Uint8Array or a list of them (a Uint8ArrayList). */
function pieces (data: Uint8Array | Iterable<Uint8Array>): Iterable<Uint8Array> {
  return data instanceof Uint8Array ? [data] : data
}

export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt (plaintext, nonce, ad, k) {
    if (plaintext.byteLength < SMALL) return defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
    const cipher = createCipheriv('chacha20-poly1305', keyObject(k), nonce, { authTagLength: TAG })
    cipher.setAAD(ad, { plaintextLength: plaintext.byteLength })
    const out = new Uint8ArrayList()
    for (const piece of pieces(plaintext)) out.append(cipher.update(piece))
    cipher.final()
    out.append(cipher.getAuthTag())
    return out
  },
  chaCha20Poly1305Decrypt (ciphertext, nonce, ad, k, dst) {
    if (ciphertext.byteLength < SMALL) return defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
    const length = ciphertext.byteLength - TAG
    const decipher = createDecipheriv('chacha20-poly1305', keyObject(k), nonce, { authTagLength: TAG })
    decipher.setAAD(ad, { plaintextLength: length })
    decipher.setAuthTag(ciphertext.subarray(length))
    const text = ciphertext instanceof Uint8Array ? ciphertext.subarray(0, length) : ciphertext.sublist(0, length)
    const out: Uint8Array[] = []
    for (const piece of pieces(text)) out.push(decipher.update(piece))
    decipher.final()
    return out.length === 1 ? out[0] : new Uint8ArrayList(...out)
  }
}

/**
 * Noise's crypto with the swarm key mixed into every Diffie-Hellman result: each
 * handshake key is derived from HMAC-SHA256(swarm key, DH output) instead of the DH
 * output alone. This is what Noise's `psk` modifier achieves (the pre-shared key
 * enters the chaining key), placed where @chainsafe/libp2p-noise lets an application
 * reach (it offers XX only, with an overridable crypto). Without the swarm key, a
 * node that runs the handshake can derive none of its keys: it cannot read the
 * responder's static key and identity payload in message 2 (the prologue alone,
 * authenticated but not secret, let it: the ChaCha20 key came from `ee` only, see
 * docs/SECURITY.md), nor make message 3 that a member accepts. Messages after the
 * handshake cost the same as before (only 3 HMACs per handshake are added).
 */
export function membershipCrypto (swarmKey: Uint8Array): ICryptoInterface {
  const key = createSecretKey(swarmKey)
  return {
    ...noiseCrypto,
    generateX25519SharedKey (privateKey, publicKey) {
      const shared = noiseCrypto.generateX25519SharedKey(privateKey, publicKey).subarray(0, 32)
      return createHmac('sha256', key).update('canopy/noise-dh/v1').update(shared).digest()
    }
  }
}
