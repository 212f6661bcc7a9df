import { watch, type FSWatcher } from 'node:fs'
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { isCanopyError, ErrorCode, SIDECAR_SUFFIX, type Logger } from '@canopy/core'
import type { ManifestStore } from './manifests.ts'
import { isInside, isMissing, relKey, type Jail } from './paths.ts'

/** Editors and copies touch a file many times in a row; hash once it settles. */
const DEBOUNCE_MS = 200

/**
 * Regular files under `dir`, depth first. Symlinks are not followed (they may
 * loop or leave root; requests through them still work, resolved at request time),
 * sidecars are metadata rather than content, and origin state is skipped.
 */
async function * walk (jail: Jail, dir: string, logger: Logger, signal: AbortSignal): AsyncGenerator<string> {
  if (jail.excluded.some(ex => isInside(ex, dir))) return
  let entries
  try {
    entries = await readdir(dir, { withFileTypes: true })
  } catch (err) {
    logger.warn('cannot list a directory under the served root; its files get manifests on first request', { dir, error: String(err) })
    return
  }
  for (const entry of entries) {
    if (signal.aborted) return
    const abs = join(dir, entry.name)
    if (entry.isDirectory()) yield * walk(jail, abs, logger, signal)
    else if (entry.isFile() && !entry.name.endsWith(SIDECAR_SUFFIX)) yield abs
  }
}

/**
 * Keeps manifests of everything under root current: a scan at startup, then
 * fs.watch events. Work runs one file at a time so hashing never competes with
 * itself for the disk; requests for a file still being hashed wait for it.
 */
export class Scanner {
  readonly #jail: Jail
  readonly #store: ManifestStore
  readonly #logger: Logger
  readonly #signal: AbortSignal
  readonly #timers = new Map<string, NodeJS.Timeout>()
  #queue: Promise<void> = Promise.resolve()
  #watcher: FSWatcher | undefined

  constructor (jail: Jail, store: ManifestStore, logger: Logger, signal: AbortSignal) {
    this.#jail = jail
    this.#store = store
    this.#logger = logger
    this.#signal = signal
  }

  /** Full scan; resolves when it is done (never rejects: failures are logged). */
  scan (): Promise<void> {
    return this.#enqueue(async () => {
      const seen = new Set<string>()
      let files = 0
      const started = performance.now()
      for await (const abs of walk(this.#jail, this.#jail.root, this.#logger, this.#signal)) {
        const rel = relKey(this.#jail.root, abs)
        seen.add(rel)
        await this.#ensure(rel, abs)
        files++
      }
      if (this.#signal.aborted) return
      await this.#store.prune(seen)
      this.#logger.info('manifest scan done', { files, ms: Math.round(performance.now() - started) })
    })
  }

  watch (): void {
    try {
      this.#watcher = watch(this.#jail.root, { recursive: true, signal: this.#signal }, (_event, filename) => {
        // No name means the platform lost track (e.g. an overflowed queue): rescan everything.
        this.#schedule(filename === null ? null : relKey(this.#jail.root, join(this.#jail.root, filename)))
      })
      this.#watcher.on('error', err => {
        this.#logger.warn('watching the served root failed; changed files get new manifests on their next request',
          { error: String(err) })
        this.#watcher?.close()
      })
    } catch (err) {
      this.#logger.warn('cannot watch the served root; changed files get new manifests on their next request',
        { error: String(err) })
    }
  }

  async close (): Promise<void> {
    this.#watcher?.close()
    for (const timer of this.#timers.values()) clearTimeout(timer)
    this.#timers.clear()
    await this.#queue
  }

  #schedule (rel: string | null): void {
    if (this.#signal.aborted) return
    const key = rel ?? '\0all'
    clearTimeout(this.#timers.get(key))
    this.#timers.set(key, setTimeout(() => {
      this.#timers.delete(key)
      if (rel === null) void this.scan()
      else void this.#enqueue(() => this.#refresh(rel))
    }, DEBOUNCE_MS))
  }

  #enqueue (task: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(async () => {
      if (this.#signal.aborted) return
      try {
        await task()
      } catch (err) {
        if (!isCanopyError(err, ErrorCode.Aborted)) this.#logger.error('manifest scan failed', { error: String(err) })
      }
    })
    this.#queue = run
    return run
  }

  async #refresh (rel: string): Promise<void> {
    const abs = join(this.#jail.root, rel)
    if (rel === '' || this.#jail.excluded.some(ex => isInside(ex, abs))) return
    let st
    try {
      st = await lstat(abs)
    } catch (err) {
      if (!isMissing(err)) throw err
      this.#store.forget(rel)
      return
    }
    if (st.isDirectory()) {
      for await (const file of walk(this.#jail, abs, this.#logger, this.#signal)) {
        await this.#ensure(relKey(this.#jail.root, file), file)
      }
    } else if (st.isFile() && !abs.endsWith(SIDECAR_SUFFIX)) {
      await this.#ensure(rel, abs)
    }
  }

  async #ensure (rel: string, abs: string): Promise<void> {
    try {
      const st = await lstat(abs)
      if (st.isFile()) await this.#store.get(rel, abs, st)
    } catch (err) {
      if (this.#signal.aborted || isCanopyError(err, ErrorCode.Aborted)) return
      if (isMissing(err)) this.#store.forget(rel)
      else this.#logger.warn('could not compute a manifest', { path: rel, error: String(err) })
    }
  }
}
