// The generation file that tells a store that lost its last writes (store/write-generation.ts).
import assert from 'node:assert/strict'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { encodeGenerationFile, GENERATION_FILE_BYTES, GenerationWriter, lostWrites, readGenerationFile, RECENT_TRANSITIONS } from '../src/store/write-generation.ts'

test('a store behind the file lost writes; the lost changes are named while the file still holds the first of them', () => {
  const recent = [{ g: 4, id: 'a', state: 'queued' as const }, { g: 5, id: 'b', state: 'suspended' as const }, { g: 6, id: 'a', state: 'deleted' as const }]
  assert.equal(lostWrites(6, { generation: 6, recent }), undefined)
  // Ahead of the file (a crash between the store's write and the file's): nothing lost.
  assert.equal(lostWrites(7, { generation: 6, recent }), undefined)
  assert.equal(lostWrites(0, undefined), undefined)
  assert.deepEqual(lostWrites(4, { generation: 6, recent }), { expected: 6, found: 4, transitions: recent.slice(1) })
  // Older than the file remembers (a restored backup): which jobs is not known.
  assert.deepEqual(lostWrites(1, { generation: 6, recent }), { expected: 6, found: 1 })
})

test('the file keeps the last changes only, at a fixed size; one torn, removed or not parsing tells nothing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-gen-'))
  const path = join(dir, 'store-generation')
  const writer = new GenerationWriter(path, { generation: 0, recent: [] })
  // Only a start creates it: a change does not bring back a file removed under the agent.
  await assert.rejects(writer.commit({ g: 1, id: 'x', state: 'queued' }), { code: 'ENOENT' })
  await writer.write(true)
  await Promise.all(Array.from({ length: RECENT_TRANSITIONS + 10 }, async (_, i) => await writer.commit({ g: i + 1, id: `job${i}`, state: 'queued' })))
  const file = await readGenerationFile(path)
  assert.equal(file?.generation, RECENT_TRANSITIONS + 10)
  assert.equal(file.recent.length, RECENT_TRANSITIONS)
  assert.equal(file.recent[0].g, 11)
  const bytes = await readFile(path)
  assert.equal(bytes.length, GENERATION_FILE_BYTES)
  // A torn write: part of the new content over the old.
  bytes[20] ^= 1
  await writeFile(path, bytes)
  assert.equal(await readGenerationFile(path), undefined)
  // Ids as long as the agent's (36) still fit, the oldest giving way if need be.
  const long = { generation: 9e15, recent: Array.from({ length: RECENT_TRANSITIONS }, (_, i) => ({ g: 9e15 - i, id: 'f'.repeat(36), state: 'transient_error' as const })) }
  assert.equal(encodeGenerationFile(long).length, GENERATION_FILE_BYTES)
  for (const junk of ['', '{', '[]', '{"generation":"7","recent":[]}', 'x'.repeat(1 << 20)]) {
    await writeFile(path, junk)
    assert.equal(await readGenerationFile(path), undefined, junk.slice(0, 20))
  }
})
