// What a node without the swarm key learns from a member: a raw TCP client on
// 127.0.0.1 speaks multistream-select and the first Noise XX message itself, then
// derives every key of the handshake that it can and decrypts message 2 ignoring its
// authentication tags (an attacker need not check them).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createDecipheriv, createHmac, createPublicKey, diffieHellman, generateKeyPairSync } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '@canopy/core'
import { generateSwarmKey, loadOrCreatePeerKey, parseSwarmKey, startPeerNode } from '@canopy/agent/peers'

/** Reads exact byte counts from a socket (fails if it ends first, or after 10 s). */
function reader (socket: Socket): (n: number) => Promise<Buffer> {
  let buffered = Buffer.alloc(0)
  let wake: (() => void) | undefined
  let ended = false
  socket.on('data', (d: Buffer) => { buffered = Buffer.concat([buffered, d]); wake?.() })
  socket.on('close', () => { ended = true; wake?.() })
  return async (n) => {
    const deadline = AbortSignal.timeout(10_000)
    while (buffered.length < n) {
      if (ended) throw new Error(`the member closed the connection after ${buffered.length} of ${n} bytes`)
      deadline.throwIfAborted()
      await new Promise<void>(resolve => { wake = resolve; setTimeout(resolve, 100) })
    }
    const out = buffered.subarray(0, n)
    buffered = buffered.subarray(n)
    return out
  }
}

function varintFrame (text: string): Buffer {
  const body = Buffer.from(text)
  assert.ok(body.length < 128)
  return Buffer.concat([Buffer.from([body.length]), body])
}

/** Noise's HKDF with two outputs (the chaining key and a cipher key). */
function hkdf (ck: Buffer, ikm: Buffer): [Buffer, Buffer] {
  const temp = createHmac('sha256', ck).update(ikm).digest()
  const one = createHmac('sha256', temp).update(Buffer.from([1])).digest()
  const two = createHmac('sha256', temp).update(Buffer.concat([one, Buffer.from([2])])).digest()
  return [one, two]
}

/** ChaCha20-Poly1305's keystream applied without checking the tag (nonce 0: the first message under a key). */
function decryptIgnoringTag (key: Buffer, sealed: Buffer): Buffer {
  const iv = Buffer.alloc(16)
  iv[0] = 1 // block 0 made the Poly1305 key; the text starts at block 1
  const decipher = createDecipheriv('chacha20', key, iv)
  return Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - 16)), decipher.final()])
}

function x25519Public (raw: Buffer): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' })
}

/**
 * Runs the initiator's side up to message 2 against `address`, and returns what
 * decrypting it yields: the responder's static key and its identity payload.
 * `mix` is applied to every DH result (what a member holding the key would do).
 */
async function outsiderReadsMessage2 (host: string, port: number, mix: (dh: Buffer) => Buffer): Promise<Buffer> {
  const socket = connect(port, host)
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  try {
    const read = reader(socket)
    socket.write(Buffer.concat([varintFrame('/multistream/1.0.0\n'), varintFrame('/noise\n')]))
    for (const expected of ['/multistream/1.0.0\n', '/noise\n']) {
      const length = (await read(1))[0]
      assert.equal((await read(length)).toString(), expected)
    }
    const { publicKey, privateKey } = generateKeyPairSync('x25519')
    const ephemeral = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url')
    const message1 = ephemeral // e, and an empty payload (no key yet: sent as it is)
    const length1 = Buffer.alloc(2)
    length1.writeUInt16BE(message1.length)
    socket.write(Buffer.concat([length1, message1]))
    const length2 = (await read(2)).readUInt16BE(0)
    const message2 = await read(length2)
    const remoteEphemeral = message2.subarray(0, 32)
    const sealedStatic = message2.subarray(32, 32 + 48)
    const sealedPayload = message2.subarray(80)
    // The protocol name is 32 bytes: it is the initial hash and chaining key. The
    // prologue only enters the hash, which is only authenticated data.
    let ck: Buffer = Buffer.from('Noise_XX_25519_ChaChaPoly_SHA256')
    let k: Buffer
    ;[ck, k] = hkdf(ck, mix(diffieHellman({ privateKey, publicKey: x25519Public(remoteEphemeral) })))
    const remoteStatic = decryptIgnoringTag(k, sealedStatic)
    ;[ck, k] = hkdf(ck, mix(diffieHellman({ privateKey, publicKey: x25519Public(remoteStatic) })))
    return Buffer.concat([remoteStatic, decryptIgnoringTag(k, sealedPayload)])
  } finally {
    socket.destroy()
  }
}

test('a node without the swarm key learns no peer id from a member\'s handshake; one with the key does', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-membership-'))
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const member = await startPeerNode({ privateKey: await loadOrCreatePeerKey(dir), listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey, mdns: false, logger: silentLogger })
  t.after(async () => {
    await member.stop()
    await rm(dir, { recursive: true, force: true })
  })
  const port = Number(member.libp2p.getMultiaddrs()[0].getComponents().find(c => c.name === 'tcp')!.value)
  const identity = Buffer.from(member.libp2p.peerId.publicKey!.raw)

  // An outsider (no key, or a wrong one: the prologue is never checked when the tags
  // are ignored) gets bytes that contain no identity.
  const wrongKey = parseSwarmKey(generateSwarmKey())
  for (const mix of [(dh: Buffer) => dh, (dh: Buffer) => createHmac('sha256', wrongKey).update('canopy/noise-dh/v1').update(dh).digest()]) {
    const seen = await outsiderReadsMessage2('127.0.0.1', port, mix)
    assert.equal(seen.includes(identity), false, 'an outsider read the member\'s identity key (its peer id) from message 2')
  }
  // The same decoder with the swarm key finds it: the check above can fail.
  const seen = await outsiderReadsMessage2('127.0.0.1', port, (dh) => createHmac('sha256', swarmKey).update('canopy/noise-dh/v1').update(dh).digest())
  assert.equal(seen.includes(identity), true, 'a member decodes message 2')
})
