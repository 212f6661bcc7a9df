import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { CanopyError } from '@canopy/core'

/** File of the agent's libp2p identity (Ed25519, protobuf-encoded) in its state directory. */
export const PEER_KEY_FILE = 'peer.key'

/**
 * The agent's libp2p identity, created on first start and kept (owner-only) so the
 * agent keeps its peer id across restarts.
 */
export async function loadOrCreatePeerKey (stateDir: string): Promise<PrivateKey> {
  const path = join(stateDir, PEER_KEY_FILE)
  let bytes: Buffer | undefined
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new CanopyError('ERR_INVALID_PEER_KEY', `${path} is not a libp2p private key: move it away to make a new identity`, { cause: err })
    }
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  const temp = `${path}.${process.pid}.tmp`
  await writeFile(temp, privateKeyToProtobuf(key), { mode: 0o600 })
  await chmod(temp, 0o600)
  await rename(temp, path)
  return key
}
