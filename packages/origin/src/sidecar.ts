import { randomBytes } from 'node:crypto'
import { rename, unlink, writeFile } from 'node:fs/promises'
import { assertBlockSize, contentKey, DEFAULT_BLOCK_SIZE, SIDECAR_SUFFIX, type PublishedManifest } from '@canopy/core'
import { computeManifest } from './manifests.ts'

export interface PublishSidecarOptions {
  /** Manifest block size; default DEFAULT_BLOCK_SIZE (1 MiB). */
  blockSize?: number
  /** Origin secret the content key is derived from (see loadOrCreateSecret). */
  secret: Uint8Array
  signal?: AbortSignal
}

/**
 * Writes `<file>.canopy` for origins that cannot compute manifests themselves
 * (nginx, S3, a CDN). Written to a temporary name and renamed, so a web server
 * never hands out half a sidecar.
 */
export async function publishSidecar (file: string, options: PublishSidecarOptions): Promise<PublishedManifest> {
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE
  assertBlockSize(blockSize)
  const { manifest } = await computeManifest(file, blockSize, options.signal)
  const published: PublishedManifest = { ...manifest, key: contentKey(options.secret, manifest.id).toString('base64') }
  const target = file + SIDECAR_SUFFIX
  const tmp = `${target}.${randomBytes(6).toString('hex')}.tmp`
  try {
    await writeFile(tmp, JSON.stringify(published) + '\n', { flag: 'wx', mode: 0o644 })
    await rename(tmp, target)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  return published
}
