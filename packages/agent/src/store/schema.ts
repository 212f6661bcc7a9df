/**
 * The version of the state store's layout, and the migrations between versions, so
 * that a newer agent (a package upgrade) reads what an older one wrote, and an older
 * agent refuses a store it would misread instead of damaging it.
 */
import type { Level } from 'level'
import { CanopyError } from '@canopy/core'

/** The layout this code reads and writes. */
export const STORE_SCHEMA = 1

/** Where the version is kept: sublevel `meta`, key `schema`, a decimal number. */
const META = 'meta'
const SCHEMA_KEY = 'schema'

export type Migration = (db: Level<string, string>) => Promise<void>

/**
 * MIGRATIONS[n] turns a store of schema n into schema n + 1. A store without a version
 * is schema 0: what agents wrote before the version was kept (0.1.0), and a new, empty
 * store. Each step is recorded as it completes, so a migration interrupted by a crash
 * goes on from the step it was in: a step must be safe to run again.
 */
export const MIGRATIONS: readonly Migration[] = [
  // 0 → 1: the layout is unchanged (jobs, blocks, manifests, cache, notify); the version is new.
  async () => {}
]

/** Reads the store's schema: 0 when it has none. */
export async function readSchema (db: Level<string, string>, stateDir: string): Promise<number> {
  const text = await db.sublevel<string, string>(META, { valueEncoding: 'utf8' }).get(SCHEMA_KEY)
  if (text === undefined) return 0
  const schema = Number(text)
  if (!/^\d{1,6}$/.test(text) || !Number.isSafeInteger(schema)) {
    throw new CanopyError('ERR_STATE_CORRUPT', `The state store of ${stateDir} has an unreadable schema version ${JSON.stringify(text.slice(0, 40))}: restore it from a backup, or pick another --state-dir`)
  }
  return schema
}

/**
 * Brings the store to `target` with `migrations`; refuses a store written by a newer
 * agent (its layout is unknown here) with ERR_STATE_TOO_NEW. Resolves with the schema
 * the store had.
 */
export async function upgradeSchema (db: Level<string, string>, stateDir: string, options: { target?: number, migrations?: readonly Migration[], onStep?: (from: number) => void } = {}): Promise<number> {
  const target = options.target ?? STORE_SCHEMA
  const migrations = options.migrations ?? MIGRATIONS
  if (migrations.length < target) throw new CanopyError('ERR_INVALID_ARGUMENT', `migrations up to schema ${target} are missing`)
  const found = await readSchema(db, stateDir)
  if (found > target) {
    throw new CanopyError('ERR_STATE_TOO_NEW',
      `The state directory ${stateDir} was written by a newer Canopy (store schema ${found}; this agent reads up to ${target}): install that version again, or pick another --state-dir`)
  }
  const meta = db.sublevel<string, string>(META, { valueEncoding: 'utf8' })
  for (let from = found; from < target; from++) {
    options.onStep?.(from)
    await migrations[from](db)
    await meta.put(SCHEMA_KEY, String(from + 1))
  }
  return found
}
