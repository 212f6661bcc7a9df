import { randomBytes } from 'node:crypto'
import { chmod, link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CanopyError, ErrorCode } from '@canopy/core'

export const SECRET_FILE = 'origin.secret'
const SECRET_BYTES = 32

/**
 * The origin's secret: every content key is derived from it, so it must survive
 * restarts (agents hold keys derived from it) and stay readable by the owner only.
 */
export async function loadOrCreateSecret (stateDir: string): Promise<Buffer> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  const file = join(stateDir, SECRET_FILE)
  const existing = await readSecret(file)
  if (existing !== undefined) return existing

  // Written under a temporary name and linked into place: link() fails when the
  // name exists, so two origins starting on one state directory agree on a single
  // secret, and a crash never leaves a half-written secret behind.
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`
  const secret = randomBytes(SECRET_BYTES)
  try {
    await writeFile(tmp, secret, { mode: 0o600, flag: 'wx' })
    await chmod(tmp, 0o600)
    try {
      await link(tmp, file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const winner = await readSecret(file)
      if (winner === undefined) throw err
      return winner
    }
    return secret
  } finally {
    await unlink(tmp).catch(() => {})
  }
}

async function readSecret (file: string): Promise<Buffer | undefined> {
  let bytes: Buffer
  try {
    bytes = await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  if (bytes.length !== SECRET_BYTES) {
    throw new CanopyError(ErrorCode.InvalidArgument,
      `${file} holds ${bytes.length} bytes, not a ${SECRET_BYTES}-byte secret: restore it from a backup, ` +
      'or delete it to create a new one (agents then need the manifests again)')
  }
  return bytes
}
