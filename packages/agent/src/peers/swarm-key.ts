import { createHmac, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { CanopyError } from '@canopy/core'

/** First line of a swarm key file: the format and its version. */
export const SWARM_KEY_HEADER = '/canopy/swarm-key/1.0.0'

/**
 * An organisation's swarm key: 32 random bytes that every member agent holds.
 * `canopy keygen` writes one; agents started with `--swarm-key FILE` accept only
 * peers that hold the same key.
 */
export function generateSwarmKey (): string {
  return `${SWARM_KEY_HEADER}\n${randomBytes(32).toString('hex')}\n`
}

export function parseSwarmKey (text: string): Buffer {
  const lines = text.split(/\r?\n/).map(l => l.trim()).filter(l => l !== '')
  if (lines.length !== 2 || lines[0] !== SWARM_KEY_HEADER || !/^[0-9a-f]{64}$/i.test(lines[1])) {
    throw new CanopyError('ERR_INVALID_SWARM_KEY', `Not a Canopy swarm key: expected "${SWARM_KEY_HEADER}" and 64 hex digits; make one with \`canopy keygen > org.key\``)
  }
  return Buffer.from(lines[1], 'hex')
}

export async function readSwarmKey (path: string): Promise<Buffer> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new CanopyError('ERR_INVALID_SWARM_KEY', `Cannot read the swarm key ${path}: ${(err as Error).message}`, { cause: err })
  }
  return parseSwarmKey(text)
}

/**
 * The Noise prologue of members. Noise hashes the prologue into the handshake
 * transcript without sending it, so two nodes complete a handshake only if their
 * prologues are equal. The prologue alone is not secret key material, though: it is
 * only authenticated data, and a node without the key that ignores the tags could
 * still decrypt a member's second handshake message (its identity). The swarm key
 * therefore also enters every handshake key (membershipCrypto in noise-crypto.ts);
 * the prologue keeps keyless agents and agents of other organisations apart with a
 * clear failure. Unlike libp2p's pnet (XSalsa20 over every byte, which halved peer
 * throughput in our measurements) neither costs anything after the handshake.
 * Agents without a swarm key use a fixed, public prologue: they talk only to other
 * keyless Canopy agents.
 */
export function noisePrologue (swarmKey?: Uint8Array): Uint8Array {
  if (swarmKey === undefined) return new TextEncoder().encode('canopy/noise-prologue/open/v1')
  return createHmac('sha256', swarmKey).update('canopy/noise-prologue/v1').digest()
}
