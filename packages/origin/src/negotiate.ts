import { MANIFEST_MEDIA_TYPE } from '@canopy/core'

/**
 * Whether a request asks for the manifest rather than the bytes: the manifest
 * media type is listed with a non-zero quality no lower than any other type's.
 * Plain clients (no Accept, or `*\/*`) always get the bytes.
 */
export function prefersManifest (accept: string | undefined): boolean {
  if (accept === undefined) return false
  let manifest = 0
  let other = 0
  for (const range of accept.split(',')) {
    const [type, ...params] = range.split(';').map(s => s.trim().toLowerCase())
    let q = 1
    for (const param of params) {
      const m = /^q\s*=\s*([01](?:\.\d{0,3})?)$/.exec(param)
      if (m !== null) q = Number(m[1])
    }
    if (type === MANIFEST_MEDIA_TYPE) manifest = Math.max(manifest, q)
    else if (type !== '') other = Math.max(other, q)
  }
  return manifest > 0 && manifest >= other
}

const TYPES: Record<string, string> = {
  '.txt': 'text/plain; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.json': 'application/json',
  '.canopy': 'application/json',
  '.iso': 'application/x-iso9660-image',
  '.zip': 'application/zip',
  '.gz': 'application/gzip',
  '.tar': 'application/x-tar',
  '.msi': 'application/x-msi',
  '.deb': 'application/vnd.debian.binary-package',
  '.rpm': 'application/x-rpm'
}

export function contentType (name: string): string {
  const dot = name.lastIndexOf('.')
  return (dot >= 0 ? TYPES[name.slice(dot).toLowerCase()] : undefined) ?? 'application/octet-stream'
}
