// Partial files are only ever regular files of the agent's user (issue 13, item 10).
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chown, lstat, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openPartial, renamePartialIntoPlace } from '../src/transfer/partial-file.ts'

const dirs: string[] = []
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })
async function dir (): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'canopy-partial-'))
  dirs.push(d)
  return d
}
const DESTINATION = { code: 'ERR_DESTINATION' }

test('openPartial creates and sizes a partial file, and reopens it without truncating what it holds', async () => {
  const d = await dir()
  const part = join(d, '.f.part')
  const handle = await openPartial(part, 10)
  await handle.write(Buffer.from('abc'), 0, 3, 0)
  await handle.close()
  const again = await openPartial(part, 10)
  await again.close()
  assert.equal((await readFile(part)).subarray(0, 3).toString(), 'abc')
  assert.equal((await lstat(part)).size, 10)
})

test('openPartial refuses a symlink, a FIFO and another user\'s file at the partial\'s name', async () => {
  const d = await dir()
  const victim = join(d, 'victim')
  await writeFile(victim, 'precious')
  await symlink(victim, join(d, 'link'))
  await assert.rejects(openPartial(join(d, 'link'), 100), { ...DESTINATION, message: /symbolic link/ })
  assert.equal(await readFile(victim, 'utf8'), 'precious')
  execFileSync('mkfifo', [join(d, 'fifo')])
  await assert.rejects(openPartial(join(d, 'fifo'), 100), { ...DESTINATION, message: /not a regular file/ })
  if (process.getuid?.() === 0) {
    await writeFile(join(d, 'theirs'), 'theirs')
    await chown(join(d, 'theirs'), 65534, 65534)
    await assert.rejects(openPartial(join(d, 'theirs'), 100), { ...DESTINATION, message: /belongs to another user/ })
    assert.equal(await readFile(join(d, 'theirs'), 'utf8'), 'theirs')
  }
})

test('renamePartialIntoPlace moves only a regular file of ours into place', async () => {
  const d = await dir()
  await writeFile(join(d, 'victim'), 'precious')
  await symlink(join(d, 'victim'), join(d, '.link.part'))
  await assert.rejects(renamePartialIntoPlace(join(d, '.link.part'), join(d, 'dest')), { ...DESTINATION, message: /symbolic link/ })
  await assert.rejects(lstat(join(d, 'dest')), { code: 'ENOENT' })
  await writeFile(join(d, '.good.part'), 'data')
  await renamePartialIntoPlace(join(d, '.good.part'), join(d, 'dest'))
  assert.equal(await readFile(join(d, 'dest'), 'utf8'), 'data')
})
