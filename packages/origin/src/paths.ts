import { constants, type Stats } from 'node:fs'
import { open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises'
import { isAbsolute, join, relative, sep } from 'node:path'

/**
 * A request path refused before touching the file system: 400 when it is not
 * well-formed, 404 when it tries to climb out of root (refused without saying why).
 */
export class MalformedPathError extends Error {
  readonly status: 400 | 404

  constructor (message: string, status: 400 | 404 = 400) {
    super(message)
    this.name = 'MalformedPathError'
    this.status = status
  }
}

/** The directory served, and the directories under it that must never be served (origin state). */
export interface Jail {
  /** realpath of the served root. */
  root: string
  /** realpaths of directories refused even when inside root. */
  excluded: string[]
}

export type Resolved =
  | { kind: 'file', abs: string, rel: string, stat: Stats }
  | { kind: 'directory', abs: string, rel: string }
  | { kind: 'not-found' }

/**
 * Segments of a request target's path. Decoding happens before splitting, so an
 * encoded slash or dot (`..%2f`, `%2e%2e`) yields the same `..` segment as a literal
 * one and is refused rather than resolved.
 */
export function urlPathSegments (target: string): { segments: string[], trailingSlash: boolean } {
  // Absolute-form (`GET http://host/path`, sent through proxies): only the path matters.
  const origin = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(target)
  const path = origin === null ? target : target.slice(origin[0].length) || '/'
  const end = path.search(/[?#]/)
  const raw = end < 0 ? path : path.slice(0, end)
  if (!raw.startsWith('/')) throw new MalformedPathError('request target must be an absolute path')
  let decoded: string
  try {
    decoded = decodeURIComponent(raw)
  } catch {
    throw new MalformedPathError('malformed percent-encoding in path')
  }
  return { segments: checkedSegments(decoded), trailingSlash: decoded.length > 1 && decoded.endsWith('/') }
}

/** Segments of a path relative to root given through the API (not URL-encoded). */
export function relPathSegments (relPath: string): string[] {
  if (isAbsolute(relPath)) throw new MalformedPathError(`${relPath} must be relative to the served root`)
  return checkedSegments(relPath)
}

function checkedSegments (path: string): string[] {
  if (path.includes('\0')) throw new MalformedPathError('NUL byte in path')
  // Backslash separates on Windows only; on POSIX it is an ordinary file-name character.
  const parts = path.split(sep === '\\' ? /[\\/]/ : '/')
  const segments: string[] = []
  for (const part of parts) {
    if (part === '' || part === '.') continue
    if (part === '..') throw new MalformedPathError('path escapes the served root', 404)
    segments.push(part)
  }
  return segments
}

export function isInside (parent: string, child: string): boolean {
  if (child === parent) return true
  const rel = relative(parent, child)
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel)
}

/** Path of `abs` relative to root, with `/` separators (the manifest cache's key). */
export function relKey (root: string, abs: string): string {
  return relative(root, abs).split(sep).join('/')
}

/**
 * Resolves segments inside the jail. Symlinks are followed, but only to targets
 * inside root; everything else (missing, outside, excluded, sockets, FIFOs) looks
 * the same: not found, so a probe learns nothing about the file system.
 */
export async function resolveInside (jail: Jail, segments: string[]): Promise<Resolved> {
  let real: string
  let st: Stats
  try {
    real = await realpath(join(jail.root, ...segments))
    if (!isInside(jail.root, real) || jail.excluded.some(dir => isInside(dir, real))) return { kind: 'not-found' }
    st = await stat(real)
  } catch (err) {
    if (isMissing(err)) return { kind: 'not-found' }
    throw err
  }
  const rel = relKey(jail.root, real)
  if (st.isFile()) return { kind: 'file', abs: real, rel, stat: st }
  if (st.isDirectory()) return { kind: 'directory', abs: real, rel }
  return { kind: 'not-found' }
}

/** Errors that mean "there is no such file for you" rather than a server fault. */
export function isMissing (err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP' || code === 'EACCES' ||
    code === 'EPERM' || code === 'ENAMETOOLONG' || code === 'EINVAL'
}

/** Where the kernel says an open descriptor lives (Linux: /proc/self/fd), or undefined where it cannot say. */
async function openedPath (handle: FileHandle): Promise<string | undefined> {
  try {
    return await readlink(`/proc/self/fd/${handle.fd}`)
  } catch {
    return undefined
  }
}

/**
 * Opens `abs` (a path resolveInside checked) and proves that what was opened is
 * inside the jail. Checking a path and then opening it by name is a race: a
 * directory on the way swapped for a symlink between the two made the origin open
 * its own secret (issue 13, item 9). So the check is made on the open descriptor:
 * the last component is opened with O_NOFOLLOW, and the kernel's own path of the
 * descriptor (/proc/self/fd/N, which names the file actually opened, whatever links
 * led there) must be inside root and outside origin state. Where /proc is missing,
 * the descriptor's device and inode must match a fresh resolution of the path
 * (a narrower window, not none; see docs/SECURITY.md).
 * Undefined (and nothing left open) when the opened file is not the one checked.
 */
export async function openInside (jail: Jail, abs: string, flags: number): Promise<FileHandle | undefined> {
  let handle: FileHandle
  try {
    handle = await open(abs, flags | constants.O_NOFOLLOW)
  } catch (err) {
    if (isMissing(err)) return undefined
    throw err
  }
  try {
    let where = await openedPath(handle)
    if (where === undefined) {
      const [real, opened] = await Promise.all([realpath(abs), handle.stat()])
      const current = await stat(real)
      if (current.dev !== opened.dev || current.ino !== opened.ino) where = undefined
      else where = real
    }
    if (where !== undefined && isInside(jail.root, where) && !jail.excluded.some(dir => isInside(dir, where))) return handle
  } catch (err) {
    await handle.close()
    if (isMissing(err)) return undefined
    throw err
  }
  await handle.close()
  return undefined
}
