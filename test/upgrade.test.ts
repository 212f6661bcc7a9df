// Upgrades keep state: a state directory written by an earlier release's agent
// (test/fixtures/state-<version>.json, see state-fixture.ts) is read by this one, with
// its jobs, its peer cache and its peer identity; a store written by a newer agent is
// refused, untouched.
import assert from 'node:assert/strict'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Level } from 'level'
import { startOrigin } from '@canopy/origin'
import { restoreState } from './fixtures/state-fixture.ts'
import type { StateFixture } from './fixtures/state-fixture.ts'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

const FIXTURE = JSON.parse(await readFile(new URL('./fixtures/state-0.1.0.json', import.meta.url), 'utf8')) as StateFixture
// The fixture's jobs were finished or suspended on the day it was made: the agent must
// not expire them in a test run years later.
const KEEP_JOBS = ['--retention', '36500d', '--inactive-job-timeout', '36500d']

/** The fixture restored into a new state dir, and an origin serving the files its jobs name. */
async function restored (t: { after: (fn: () => Promise<void>) => void }): Promise<{ stateDir: string, downloads: string, served: string }> {
  const dir = await tempDir()
  const served = join(dir, 'served')
  const downloads = join(dir, 'downloads')
  await mkdir(served)
  await mkdir(downloads)
  // The content the fixture's origin served (see the fixture's manifests).
  await writeFile(join(served, 'later.bin'), 'canopy upgrade fixture: a file whose job waits, suspended\n'.repeat(400).slice(0, 20000))
  const origin = await startOrigin({ root: served, stateDir: join(dir, 'origin-state'), host: '127.0.0.1', port: 0 })
  t.after(async () => { await origin.close() })
  const stateDir = join(dir, 'state')
  await restoreState(FIXTURE, stateDir, origin.url, downloads)
  return { stateDir, downloads, served }
}

async function schemaOf (stateDir: string): Promise<string | undefined> {
  const db = new Level<string, string>(join(stateDir, 'db'))
  try {
    return await db.sublevel<string, string>('meta', { valueEncoding: 'utf8' }).get('schema')
  } finally {
    await db.close()
  }
}

test(`a state directory written by the ${FIXTURE.version} agent keeps its jobs, cache and identity`, async (t) => {
  const { stateDir, downloads } = await restored(t)
  assert.equal(await schemaOf(stateDir), undefined, 'the fixture predates the schema version')
  const expectedPeerId = peerIdFromPrivateKey(privateKeyFromProtobuf(Buffer.from(FIXTURE.files['peer.key'], 'base64'))).toString()
  const oldJobs = FIXTURE.db.filter(([k]) => k.startsWith('!jobs!')).map(([, v]) => JSON.parse(v) as { id: string, state: string, name: string })
  assert.deepEqual(oldJobs.map(j => j.state).sort(), ['acknowledged', 'suspended'])

  const agent = await startAgentProcess(stateDir, KEEP_JOBS)
  try {
    const jobs = await agent.client.listJobs()
    assert.deepEqual(jobs.map(j => [j.id, j.state]).sort(), oldJobs.map(j => [j.id, j.state]).sort())
    const status = await agent.client.status()
    assert.equal(status.peer?.peerId, expectedPeerId)
    const cache = await agent.client.cache()
    const cached = FIXTURE.db.filter(([k]) => k.startsWith('!cache!')).map(([k]) => k.slice('!cache!'.length))
    assert.deepEqual(cache.entries.map(e => e.manifestId), cached)
    // The suspended job still works: resumed, it downloads from the origin its record names.
    const suspended = oldJobs.find(j => j.state === 'suspended')!
    await agent.client.resume(suspended.id)
    const done = await agent.client.waitForJob(suspended.id)
    assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
    assert.equal((await readFile(join(downloads, 'later.bin'))).length, 20000)
  } finally {
    await agent.kill()
  }
  assert.equal(await schemaOf(stateDir), '1', 'the store now records its schema')
})

test('a store written by a newer agent is refused and left as it was', async (t) => {
  const { stateDir } = await restored(t)
  const db = new Level<string, string>(join(stateDir, 'db'))
  await db.sublevel<string, string>('meta', { valueEncoding: 'utf8' }).put('schema', '99')
  await db.close()
  const r = await runCli(['agent', '--state-dir', stateDir, '--no-p2p', ...KEEP_JOBS], { timeoutMs: 60_000 })
  assert.equal(r.signal, null, r.stderr)
  assert.notEqual(r.code, 0)
  assert.match(r.stderr, /ERR_STATE_TOO_NEW/)
  assert.ok(r.stderr.includes(stateDir), r.stderr)
  assert.equal(await schemaOf(stateDir), '99')
  const check = new Level<string, string>(join(stateDir, 'db'))
  const jobs: string[] = []
  for await (const key of check.keys({ gt: '!jobs!', lt: '!jobs!~' })) jobs.push(key)
  await check.close()
  assert.equal(jobs.length, 2)
})
