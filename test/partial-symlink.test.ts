// A symbolic link planted at a job's partial-file name cannot redirect the agent's
// writes outside the destination folder, nor be renamed into place (issue 13, item 10).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { originWithFile, plainServer, startAgentProcess, tempDir } from './helpers.ts'

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
