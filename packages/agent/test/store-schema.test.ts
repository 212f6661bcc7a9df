import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { Level } from 'level'
import { isCanopyError } from '@canopy/core'
import { MIGRATIONS, readSchema, STORE_SCHEMA, upgradeSchema } from '../src/store/schema.ts'
import type { Migration } from '../src/store/schema.ts'

const dirs: string[] = []
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })

async function store (): Promise<{ db: Level<string, string>, dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-schema-'))
  dirs.push(dir)
  const db = new Level<string, string>(join(dir, 'db'))
  await db.open()
  return { db, dir }
}

/** Real migrations for the test: schema 1 renames a field of every job, schema 2 adds a sublevel entry. */
const renameField: Migration = async (db) => {
  const jobs = db.sublevel<string, Record<string, unknown>>('jobs', { valueEncoding: 'json' })
  for await (const [id, job] of jobs.iterator()) {
    const { oldName, ...rest } = job
    await jobs.put(id, oldName === undefined ? rest : { ...rest, name: oldName })
  }
}
const addMarker: Migration = async (db) => { await db.sublevel<string, string>('extra', { valueEncoding: 'utf8' }).put('marker', 'yes') }

test('a new store and a store without a version (the 0.1.0 layout) get the current schema', async () => {
  const { db } = await store()
  assert.equal(MIGRATIONS.length, STORE_SCHEMA)
  assert.equal(await upgradeSchema(db, 'd'), 0)
  assert.equal(await readSchema(db, 'd'), STORE_SCHEMA)
  assert.equal(await upgradeSchema(db, 'd'), STORE_SCHEMA, 'a second open migrates nothing')
  await db.close()
})

test('migrations run in order from the recorded schema, each recorded as it completes', async () => {
  const { db } = await store()
  await db.sublevel<string, Record<string, unknown>>('jobs', { valueEncoding: 'json' }).put('j1', { id: 'j1', oldName: 'a.iso' })
  await db.sublevel<string, string>('meta', { valueEncoding: 'utf8' }).put('schema', '1')
  const steps: number[] = []
  const migrations = [async () => { throw new Error('schema 0 → 1 must not run again') }, renameField, addMarker]
  assert.equal(await upgradeSchema(db, 'd', { target: 3, migrations, onStep: from => steps.push(from) }), 1)
  assert.deepEqual(steps, [1, 2])
  assert.deepEqual(await db.sublevel<string, Record<string, unknown>>('jobs', { valueEncoding: 'json' }).get('j1'), { id: 'j1', name: 'a.iso' })
  assert.equal(await db.sublevel<string, string>('extra', { valueEncoding: 'utf8' }).get('marker'), 'yes')
  assert.equal(await readSchema(db, 'd'), 3)
  await db.close()
})

test('an interrupted migration goes on from the step it was in', async () => {
  const { db } = await store()
  const failing: Migration = async () => { throw new Error('disk full') }
  await assert.rejects(upgradeSchema(db, 'd', { target: 2, migrations: [async () => {}, failing] }), /disk full/)
  assert.equal(await readSchema(db, 'd'), 1)
  await upgradeSchema(db, 'd', { target: 2, migrations: [async () => { throw new Error('done already') }, addMarker] })
  assert.equal(await readSchema(db, 'd'), 2)
  await db.close()
})

test('a newer or unreadable schema is refused, naming the directory', async () => {
  const { db, dir } = await store()
  const meta = db.sublevel<string, string>('meta', { valueEncoding: 'utf8' })
  await meta.put('schema', String(STORE_SCHEMA + 1))
  await assert.rejects(upgradeSchema(db, dir), (err: unknown) => isCanopyError(err, 'ERR_STATE_TOO_NEW') && (err as Error).message.includes(dir))
  assert.equal(await meta.get('schema'), String(STORE_SCHEMA + 1), 'left as it was')
  await meta.put('schema', '1e3')
  await assert.rejects(upgradeSchema(db, dir), (err: unknown) => isCanopyError(err, 'ERR_STATE_CORRUPT'))
  await db.close()
})
