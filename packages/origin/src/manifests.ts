import { createHash } from 'node:crypto'
import { constants, type Stats } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { CanopyError, createManifest, decodeManifest, ErrorCode, type IdentifiedManifest, type Logger } from '@canopy/core'
import { openInside, type Jail } from './paths.ts'

/** Read size while hashing: large reads keep the syscall count low on multi-GiB files. */
const READ_CHUNK = 1024 * 1024
/** Attempts before giving up on a file that keeps changing while it is hashed. */
const ATTEMPTS = 3
/** Opening a FIFO that replaced a checked file must not block a thread-pool thread. */
export const READ_FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0)

export const ErrFileChanged = 'ERR_FILE_CHANGED'

/** What decides whether a cached manifest still describes a file. */
export interface FileIdentity {
  size: number
  mtimeMs: number
  ino: number
  blockSize: number
}

interface Entry extends FileIdentity {
  path: string
  manifest: IdentifiedManifest
}

function identityOf (st: Stats, blockSize: number): FileIdentity {
  return { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, blockSize }
}

function sameIdentity (a: FileIdentity, b: FileIdentity): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.blockSize === b.blockSize
}

/**
 * Manifest of a file, checked against a stat before and after the read: a file
 * written to while it is hashed would otherwise get a manifest of bytes that never
 * existed together. With a jail, the file is opened through openInside, so a path
 * swapped under the origin cannot make it hash (and describe) a file outside root.
 */
export async function computeManifest (file: string, blockSize: number, signal?: AbortSignal, jail?: Jail): Promise<{ manifest: IdentifiedManifest, stat: Stats }> {
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const handle: FileHandle | undefined = jail === undefined ? await open(file, READ_FLAGS) : await openInside(jail, file, READ_FLAGS)
    if (handle === undefined) throw Object.assign(new Error(`${file} is not a file under the served root`), { code: 'ENOENT' })
    try {
      const before = await handle.stat()
      if (!before.isFile()) throw new CanopyError(ErrorCode.InvalidArgument, `${file} is not a regular file`)
      const body = handle.createReadStream({ start: 0, highWaterMark: READ_CHUNK, autoClose: false })
      const manifest = await createManifest(body, { blockSize, signal })
      const after = await handle.stat()
      if (sameIdentity(identityOf(before, blockSize), identityOf(after, blockSize)) && manifest.size === after.size) {
        return { manifest, stat: after }
      }
    } finally {
      await handle.close()
    }
  }
  throw new CanopyError(ErrFileChanged,
    `${file} kept changing while its manifest was computed; it is computed again once the file is left alone`)
}

/** Stops waiting (not the shared work) when this caller's signal fires. */
function abortable<T> (promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (signal === undefined) return promise
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(new CanopyError(ErrorCode.Aborted, 'The operation was aborted', { cause: signal.reason }))
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      value => { signal.removeEventListener('abort', onAbort); resolve(value) },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err) })
  })
}

export interface ManifestStoreOptions {
  /** Directory of the on-disk cache (`<stateDir>/manifests`). */
  dir: string
  /** Files are opened beneath its root only (see openInside). */
  jail: Jail
  blockSize: number
  logger: Logger
  /** Ends every computation when the origin closes. */
  signal: AbortSignal
  /** Called with the number of cached manifests whenever it changes. */
  onCount: (count: number) => void
}

/**
 * Manifests by relative path, in memory and on disk, keyed by file identity so a
 * restart reuses them and a changed file never gets a stale one. Concurrent
 * requests for the same file share one computation.
 */
export class ManifestStore {
  readonly #options: ManifestStoreOptions
  readonly #entries = new Map<string, Entry>()
  readonly #inflight = new Map<string, Promise<IdentifiedManifest>>()
  readonly #writes = new Set<Promise<void>>()

  constructor (options: ManifestStoreOptions) {
    this.#options = options
  }

  async init (): Promise<void> {
    await mkdir(this.#options.dir, { recursive: true, mode: 0o700 })
  }

  get count (): number {
    return this.#entries.size
  }

  /** The manifest of `abs` (known as `rel`), whose current stat is `st`. */
  async get (rel: string, abs: string, st: Stats, signal?: AbortSignal): Promise<IdentifiedManifest> {
    const identity = identityOf(st, this.#options.blockSize)
    const cached = this.#entries.get(rel)
    if (cached !== undefined && sameIdentity(cached, identity)) return cached.manifest
    const key = `${rel}\0${identity.size}\0${identity.mtimeMs}\0${identity.ino}`
    let shared = this.#inflight.get(key)
    if (shared === undefined) {
      shared = this.#load(rel, abs, identity).finally(() => this.#inflight.delete(key))
      // A caller that stops waiting must not turn the shared failure into an unhandled rejection.
      shared.catch(() => {})
      this.#inflight.set(key, shared)
    }
    return await abortable(shared, signal)
  }

  async #load (rel: string, abs: string, identity: FileIdentity): Promise<IdentifiedManifest> {
    const stored = await this.#readDisk(rel, identity)
    if (stored !== undefined) {
      this.#remember(stored)
      return stored.manifest
    }
    const started = performance.now()
    const { manifest, stat: st } = await computeManifest(abs, this.#options.blockSize, this.#options.signal, this.#options.jail)
    // The file may have moved on since the caller's stat: the entry records what was hashed.
    const entry: Entry = { path: rel, ...identityOf(st, this.#options.blockSize), manifest }
    this.#remember(entry)
    this.#persist(entry)
    this.#options.logger.debug('manifest computed', {
      path: rel, id: manifest.id, size: manifest.size, ms: Math.round(performance.now() - started)
    })
    return manifest
  }

  #file (rel: string): string {
    return join(this.#options.dir, `${createHash('sha256').update(rel).digest('hex')}.json`)
  }

  async #readDisk (rel: string, identity: FileIdentity): Promise<Entry | undefined> {
    let text: string
    try {
      text = await readFile(this.#file(rel), 'utf8')
    } catch {
      return undefined
    }
    try {
      const value = JSON.parse(text) as Partial<Entry>
      if (value.path !== rel || !sameIdentity(value as FileIdentity, identity)) return undefined
      // Keys are derived per response from the origin secret, never cached.
      const { key: _key, ...manifest } = decodeManifest(value.manifest)
      if (manifest.blockSize !== identity.blockSize || manifest.size !== identity.size) return undefined
      return { path: rel, ...identity, manifest }
    } catch (err) {
      this.#options.logger.warn('ignoring a corrupt manifest cache entry', { path: rel, error: String(err) })
      return undefined
    }
  }

  #remember (entry: Entry): void {
    this.#entries.set(entry.path, entry)
    this.#options.onCount(this.#entries.size)
  }

  #persist (entry: Entry): void {
    const file = this.#file(entry.path)
    const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`
    const write = (async () => {
      try {
        await writeFile(tmp, JSON.stringify(entry), { mode: 0o600 })
        await rename(tmp, file)
      } catch (err) {
        await unlink(tmp).catch(() => {})
        this.#options.logger.warn('could not save a manifest to the cache; it is computed again after a restart',
          { path: entry.path, error: String(err) })
      }
    })()
    this.#writes.add(write)
    void write.finally(() => this.#writes.delete(write))
  }

  /** Drops `rel` and everything under it (a file or directory that is gone). */
  forget (rel: string): void {
    for (const path of [...this.#entries.keys()]) {
      if (path === rel || path.startsWith(`${rel}/`)) {
        this.#entries.delete(path)
        void unlink(this.#file(path)).catch(() => {})
      }
    }
    this.#options.onCount(this.#entries.size)
  }

  /** After a complete scan: drops what no longer exists, in memory and on disk. */
  async prune (seen: Set<string>): Promise<void> {
    for (const path of [...this.#entries.keys()]) {
      if (!seen.has(path)) this.#entries.delete(path)
    }
    this.#options.onCount(this.#entries.size)
    const keep = new Set([...seen].map(rel => this.#file(rel)))
    let names: string[]
    try {
      names = await readdir(this.#options.dir)
    } catch {
      return
    }
    for (const name of names) {
      const file = join(this.#options.dir, name)
      if (name.endsWith('.json') && !keep.has(file)) await unlink(file).catch(() => {})
    }
  }

  /** Waits for running computations (aborted by the origin's signal) and cache writes. */
  async settle (): Promise<void> {
    await Promise.allSettled([...this.#inflight.values(), ...this.#writes])
    await Promise.allSettled([...this.#writes])
  }
}
