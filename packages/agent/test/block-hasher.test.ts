// Block verification and writing on the hashing workers, against real files.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { open, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BlockHasher } from '@canopy/agent'
import { tempDir } from '../../../test/helpers.ts'

const digest = (bytes: Uint8Array): Buffer => createHash('sha256').update(bytes).digest()

/** A block that owns its memory (as the buffer pool's do), so it can move to a worker. */
function ownedCopy (bytes: Uint8Array): Buffer {
  const own = Buffer.allocUnsafeSlow(bytes.length)
  own.set(bytes)
  return own
}

for (const threads of [1, 0]) {
  test(`verifyAndWrite (${threads === 0 ? 'inline' : 'on a worker'}) writes a matching block at its offset and leaves the file alone otherwise`, async (t) => {
    const dir = await tempDir('canopy-hasher-')
    const hasher = new BlockHasher(threads)
    t.after(async () => await hasher.close())
    const path = join(dir, 'part')
    const before = Buffer.alloc(3 * 65536 + 3 * 100_000, 0xee)
    await writeFile(path, before)
    const file = await open(path, 'r+')
    t.after(async () => await file.close())
    // Longer than one write piece and not a multiple of it: the tail must land too.
    const block = randomBytes(3 * 65536 + 12345)
    const good = await hasher.verifyAndWrite(ownedCopy(block), digest(block), file, 100_000)
    assert.equal(good.ok, true)
    assert.deepEqual(good.bytes, block, 'the bytes come back to the caller')
    const afterGood = await readFile(path)
    assert.deepEqual(afterGood.subarray(100_000, 100_000 + block.length), block)
    assert.deepEqual(afterGood.subarray(0, 100_000), before.subarray(0, 100_000))
    assert.deepEqual(afterGood.subarray(100_000 + block.length), before.subarray(100_000 + block.length))

    const corrupted = ownedCopy(block)
    corrupted[77] ^= 1
    const bad = await hasher.verifyAndWrite(corrupted, digest(randomBytes(8)), file, 0)
    assert.equal(bad.ok, false)
    assert.equal(bad.bytes.length, block.length)
    assert.deepEqual(await readFile(path), afterGood, 'a block that fails verification is never written')
  })

  test(`verifyAndWrite (${threads === 0 ? 'inline' : 'on a worker'}) rejects with the errno code when the write fails`, async (t) => {
    const dir = await tempDir('canopy-hasher-')
    const hasher = new BlockHasher(threads)
    t.after(async () => await hasher.close())
    const path = join(dir, 'part')
    await writeFile(path, Buffer.alloc(65536))
    const readOnly = await open(path, 'r')
    t.after(async () => await readOnly.close())
    const block = randomBytes(65536)
    await assert.rejects(hasher.verifyAndWrite(ownedCopy(block), digest(block), readOnly, 0), { code: 'EBADF' })
    // The worker is still there for the next block.
    const { digest: d } = await hasher.hash(ownedCopy(block))
    assert.deepEqual(Buffer.from(d), digest(block))
  })
}

for (const threads of [1, 2, 0]) {
  test(`fileDigest (${threads} hashing workers) equals the file's SHA-256 whatever order blocks complete in, with a prefix already on disk, for several files at once`, async (t) => {
    const dir = await tempDir('canopy-digest-')
    const digests = new BlockHasher(threads)
    t.after(async () => await digests.close())
    const blockSize = 65536
    const files = await Promise.all([0, 1].map(async (n) => {
      const path = join(dir, `part-${n}`)
      const content = randomBytes(10 * blockSize + 777 + n)
      // Blocks 0-1 are on disk from "before a restart"; the rest is zeros until written.
      await writeFile(path, Buffer.concat([content.subarray(0, 2 * blockSize), Buffer.alloc(content.length - 2 * blockSize)]))
      const handle = await open(path, 'r+')
      t.after(async () => await handle.close())
      const session = digests.fileDigest(path)
      t.after(async () => await session.close())
      session.advance(2 * blockSize)
      return { content, handle, session, done: new Set([0, 1]) }
    }))
    for (const i of [2, 3, 6, 4, 5, 9, 7, 8, 10]) {
      for (const f of files) {
        const block = f.content.subarray(i * blockSize, Math.min(f.content.length, (i + 1) * blockSize))
        await f.handle.write(block, 0, block.length, i * blockSize)
        f.done.add(i)
        let prefix = 0
        while (f.done.has(prefix)) prefix++
        f.session.advance(Math.min(f.content.length, prefix * blockSize))
      }
    }
    for (const f of files) assert.equal(await f.session.finish(f.content.length), digest(f.content).toString('hex'))
  })
}

test('fileDigest fails with the reason when the file cannot be read, and the worker goes on', async (t) => {
  const dir = await tempDir('canopy-digest-')
  const digests = new BlockHasher(1)
  t.after(async () => await digests.close())
  const missing = digests.fileDigest(join(dir, 'no-such-file'))
  await assert.rejects(missing.finish(10), /hashing the partial file failed: ENOENT/)
  await missing.close()

  const short = join(dir, 'short')
  await writeFile(short, Buffer.alloc(100))
  const truncated = digests.fileDigest(short)
  truncated.advance(100)
  await assert.rejects(truncated.finish(200), /the file ended at 100 bytes, expected 200/)
  await truncated.close()

  const ok = digests.fileDigest(short)
  ok.advance(100)
  assert.equal(await ok.finish(100), digest(Buffer.alloc(100)).toString('hex'))
  await ok.close()
})
