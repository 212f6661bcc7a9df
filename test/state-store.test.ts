// The agent's state directory and store under damage and misuse (issue 13, items 11
// and 12): a store that does not open, a damaged one, a job whose record was lost, a
// shared state directory, a full state disk.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmod, chown, lstat, mkdir, readdir, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { Level } from 'level'
import { CanopyClient } from '@canopy/client'
import { startAgent } from '@canopy/agent'
import { originWithFile, refusingOrigin, runCli, startAgentProcess, tempDir } from './helpers.ts'

const MiB = 1024 * 1024
const exists = async (path: string): Promise<boolean> => await lstat(path).then(() => true, () => false)

test('a state store that cannot be opened or repaired stops the agent with its path and what to do', async () => {
  const stateDir = await tempDir()
  // A file where the database's directory should be: neither LevelDB nor its repairer can use it.
  await writeFile(join(stateDir, 'db'), 'not a database')
  const run = await runCli(['agent', '--state-dir', stateDir, '--no-p2p'], { timeoutMs: 60_000 })
  assert.equal(run.signal, null, `the agent did not exit by itself: ${run.stderr}`)
  assert.notEqual(run.code, 0)
  assert.match(run.stderr, /ERR_STATE_CORRUPT/)
  assert.ok(run.stderr.includes(join(stateDir, 'db')), run.stderr)
  assert.match(run.stderr, /Restore .* from a backup, or move it aside/)
})

test('a damaged state store is repaired at start, a copy kept, its jobs kept, and `canopy status` says so', async () => {
  const stateDir = await tempDir()
  const out = await tempDir()
  const first = await startAgentProcess(stateDir, ['--no-p2p'])
  const job = await first.client.createJob({ files: [{ url: `${await refusingOrigin()}/f.bin`, path: join(out, 'f.bin') }] })
  await first.client.suspend(job.id)
  await first.kill()
  // CURRENT names the manifest LevelDB opens: damaged, the database "failed to open".
  await writeFile(join(stateDir, 'db', 'CURRENT'), 'MANIFEST-999999\n')
  const second = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    const status = await second.client.status()
    assert.ok(status.storeRecovery !== undefined, 'the status reports the repair')
    assert.deepEqual(status.storeRecovery.droppedJobs, [])
    assert.ok(status.storeRecovery.damagedCopy !== undefined && await exists(join(status.storeRecovery.damagedCopy, 'CURRENT')))
    const kept = await second.client.getJob(job.id)
    assert.equal(kept.state, 'suspended')
    const printed = await runCli(['status', '--state-dir', stateDir])
    assert.match(printed.stdout, /state store: +damaged at start: no job lost; repaired, the damaged copy is in /)
  } finally {
    await second.kill()
  }
})

test('a truncated store log does not bring a suspended job back transferring: it comes back suspended, with the reason', async (t) => {
  const { origin } = await originWithFile(t, 32 * MiB, 'f.bin', { rateLimit: 2 * MiB })
  const stateDir = await tempDir()
  const out = await tempDir()
  const first = await startAgentProcess(stateDir, ['--no-p2p'])
  const job = await first.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(out, 'f.bin') }] })
  while ((await first.client.getJob(job.id)).bytes.transferred === 0) await new Promise(resolve => setTimeout(resolve, 50))
  // LevelDB appends each write to its log (a write(2) per record): the log's size now
  // is where a cut loses the suspend and everything after it, as a crash before the
  // log reached the disk, a copy of a running store, or a restored backup would.
  const log = join(stateDir, 'db', (await readdir(join(stateDir, 'db'))).filter(n => n.endsWith('.log')).sort().at(-1)!)
  const beforeSuspend = (await stat(log)).size
  await first.client.suspend(job.id)
  await first.kill()
  assert.ok((await stat(log)).size > beforeSuspend, 'the suspend was written to the log')
  await truncate(log, beforeSuspend)

  const second = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    const back = await second.client.getJob(job.id)
    assert.equal(back.state, 'suspended', `the job came back ${back.state}`)
    assert.equal(back.error?.code, 'ERR_STATE_STALE')
    assert.match(back.error.message, /state store lost its last writes/)
    const status = await second.client.status()
    assert.ok(status.storeRecovery?.lostWrites !== undefined, 'the status reports the lost writes')
    assert.deepEqual(status.storeRecovery.staleJobs.map(j => [j.id, j.storedState, j.lastState]), [[job.id, 'transferring', 'suspended']])
    assert.match(second.stderr(), /the state store lost its last writes/)
    const printed = await runCli(['status', '--state-dir', stateDir])
    assert.match(printed.stdout, /state store: +lost its last 1 state change; 1 job suspended/)
  } finally {
    await second.kill()
  }
  // Reported once: the store and the generation file agree again.
  const third = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    assert.equal((await third.client.status()).storeRecovery, undefined)
    assert.equal((await third.client.getJob(job.id)).state, 'suspended')
  } finally {
    await third.kill()
  }
})

test('a job whose record was lost is reported, and its partial file (only it) removed at start', async (t) => {
  const { origin } = await originWithFile(t, 32 * MiB, 'f.bin', { rateLimit: 4 * MiB })
  const stateDir = await tempDir()
  const out = await tempDir()
  const first = await startAgentProcess(stateDir, ['--no-p2p'])
  const lost = await first.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(out, 'lost.bin') }] })
  const kept = await first.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(out, 'kept.bin') }] })
  for (const id of [lost.id, kept.id]) {
    while ((await first.client.getJob(id)).bytes.transferred === 0) await new Promise(resolve => setTimeout(resolve, 50))
    await first.client.suspend(id)
  }
  await first.kill()
  const partials = (await readdir(out)).filter(n => n.endsWith('.canopy-part'))
  assert.equal(partials.length, 2, String(partials))
  // What is not the lost job's partial must stay: a file merely named like a partial,
  // and a link named exactly like one more of the lost job's.
  const lookalike = join(out, '.notes.deadbeef.canopy-part')
  await writeFile(lookalike, 'mine')
  const link = join(out, `.link.${lost.id.slice(0, 8)}.canopy-part`)
  await symlink(lookalike, link)
  // LevelDB drops a log record whose checksum fails (with the rest of its 32 KiB
  // block); which records share a block is not under a test's control, so the damage
  // is made directly: the job's record goes, its block marks stay, as after that drop.
  const db = new Level<string, string>(join(stateDir, 'db'))
  await db.sublevel('jobs').del(lost.id)
  await db.close()

  const second = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    const status = await second.client.status()
    assert.deepEqual(status.storeRecovery?.droppedJobs, [lost.id])
    assert.equal(status.storeRecovery?.removedPartials.length, 1)
    const left = (await readdir(out)).sort()
    assert.ok(!left.some(n => n.includes(`.lost.bin.${lost.id.slice(0, 8)}`)), `the lost job's partial is gone: ${String(left)}`)
    assert.ok(left.some(n => n.includes(`.kept.bin.${kept.id.slice(0, 8)}`)), `the kept job's partial stays: ${String(left)}`)
    assert.ok(await exists(lookalike) && await exists(link), 'nothing else is deleted')
    assert.deepEqual((await second.client.listJobs()).map(j => j.id), [kept.id])
    assert.match(second.stderr(), /a job was dropped: its record in the state store was unreadable/)
  } finally {
    await second.kill()
  }
  // Reported once: the marks went with the partial.
  const third = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    assert.equal((await third.client.status()).storeRecovery, undefined)
  } finally {
    await third.kill()
  }
})

test('an existing shared state directory is refused, not narrowed to 0700', async () => {
  const parent = await tempDir()
  const shared = join(parent, 'shared')
  await mkdir(shared)
  await chmod(shared, 0o1777)
  await assert.rejects(startAgent({ stateDir: shared, p2p: undefined }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_INVALID_ARGUMENT')
    assert.match(err.message, /is shared \(mode 1777/)
    return true
  })
  assert.equal((await stat(shared)).mode & 0o7777, 0o1777, 'the directory is left as it was')
  // Another user's directory that others may enter: refused as well.
  const theirs = join(parent, 'theirs')
  await mkdir(theirs, { mode: 0o755 })
  await chmod(theirs, 0o755)
  if (process.getuid?.() === 0) {
    await chown(theirs, 65534, 65534)
    await assert.rejects(startAgent({ stateDir: theirs, p2p: undefined }), /is shared \(mode 755, owner uid 65534/)
  }
  // One's own directory, readable by others: made owner-only (it was always so).
  const own = join(parent, 'own')
  await mkdir(own, { mode: 0o755 })
  await chmod(own, 0o755)
  const agent = await startAgent({ stateDir: own, p2p: undefined })
  await agent.stop()
  assert.equal((await stat(own)).mode & 0o777, 0o700)
})

test('a full state disk answers ERR_DISK_FULL with a plain message, not ERR_INTERNAL', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to mount a small tmpfs')
  const mnt = await tempDir()
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt])
  if (mounted.status !== 0) return t.skip(`cannot mount a tmpfs here: ${mounted.stderr.toString()}`)
  t.after(() => { spawnSync('umount', ['-l', mnt]) })
  const stateDir = join(mnt, 'agent')
  const out = await tempDir()
  const agent = await startAgent({ stateDir, p2p: undefined })
  const client = new CanopyClient({ stateDir })
  try {
    // Fill what is left of the disk.
    const filler = join(mnt, 'filler')
    spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'])
    const origin = await refusingOrigin()
    let failure: (Error & { code?: string }) | undefined
    // LevelDB's log takes writes until its buffered block reaches the disk: a few jobs at most.
    for (let i = 0; i < 200 && failure === undefined; i++) {
      await client.createJob({ name: 'x'.repeat(200), files: [{ url: `${origin}/f${i}.bin`, path: join(out, `f${i}.bin`) }] })
        .catch((err: Error & { code?: string }) => { failure = err })
    }
    assert.ok(failure !== undefined, 'a write failed')
    assert.equal(failure.code, 'ERR_DISK_FULL', failure.message)
    assert.match(failure.message, /disk of the agent's state directory is full: free some space/)
    await rm(filler)
  } finally {
    await client.close()
    await agent.stop().catch(() => {})
  }
})
