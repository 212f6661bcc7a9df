// A symbolic link planted at a job's partial-file name cannot redirect the agent's
// writes outside the destination folder, nor be renamed into place (issue 13, item 10).
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { originWithFile, startAgentProcess, tempDir } from './helpers.ts'

/** A server without manifests (a plain transfer): the bytes at /f.bin, 404 elsewhere. */
async function plainServer (t: TestContext): Promise<string> {
  const bytes = randomBytes(3 * 1024 * 1024)
  const server = createServer((req, res) => {
    if (req.url !== '/f.bin') {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length }).end(bytes)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

for (const mode of ['blocks', 'plain'] as const) {
  test(`a symlink at the partial's name fails the job and leaves its target alone (${mode} transfer)`, async t => {
    const base = mode === 'blocks' ? (await originWithFile(t, 3 * 1024 * 1024)).origin.url : await plainServer(t)
    const dir = await tempDir()
    const dest = join(dir, 'dest')
    await mkdir(dest)
    const victim = join(dir, 'outside.txt')
    await writeFile(victim, 'precious')
    const agent = await startAgentProcess(join(dir, 'state'))
    t.after(async () => await agent.kill())
    const path = join(dest, 'f.bin')
    const job = await agent.client.createJob({ files: [{ url: `${base}/f.bin`, path }], autoComplete: true, start: false })
    // The partial's name is documented (docs/ARCHITECTURE.md), so a local user can plant it.
    const partPath = join(dest, `.f.bin.${job.id.slice(0, 8)}.canopy-part`)
    await symlink(victim, partPath)
    await agent.client.resume(job.id)
    const done = await agent.client.waitForJob(job.id, { until: ['error', 'acknowledged', 'transient_error'], intervalMs: 100 })
    assert.equal(done.state, 'error', JSON.stringify(done.error))
    assert.equal(done.error?.code, 'ERR_DESTINATION')
    assert.match(done.error?.message ?? '', /is a symbolic link, not the download's partial file.*Remove it/)
    assert.equal(await readFile(victim, 'utf8'), 'precious', 'the file outside the destination folder is untouched')
    assert.ok((await lstat(partPath)).isSymbolicLink(), 'the planted link is left where it was')
    await assert.rejects(lstat(path), { code: 'ENOENT' }, 'nothing was put in place')
  })
}
