// The peer-serving cap of the bandwidth policy on real agent processes (peers on
// loopback): with a cap of 0 an agent serves nothing and its peer gets the file from
// the origin; with the cap lifted, live, the next peer gets it from the agent.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { FINISHED, fileSha256, loopbackAddress, originWithFile, startAgentProcess, swarmKeyFile, waitConnected } from './helpers.ts'

test('peer serving capped at 0: nothing is served and the requester goes to the origin; lifted live, peers are served again', async (t) => {
  const size = 4 * 1024 * 1024 + 123
  const { dir, origin, sha256 } = await originWithFile(t, size)
  const keyArgs = ['--swarm-key', await swarmKeyFile(dir)]
  const a = await startAgentProcess(join(dir, 'a'), keyArgs)
  t.after(async () => await a.kill())
  const get = async (agent: typeof a, name: string) => {
    const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, name) }], autoComplete: true })
    const done = await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
    assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
    assert.equal(await fileSha256(join(dir, name)), sha256)
    return done
  }
  assert.equal((await get(a, 'a.bin')).bytes.fromOrigin, size)
  await a.client.setPolicy({ peerServing: 0 })

  const b = await startAgentProcess(join(dir, 'b'), [...keyArgs, '--peer', await loopbackAddress(a)])
  t.after(async () => await b.kill())
  await waitConnected(b, 1)
  const second = await get(b, 'b.bin')
  assert.equal(second.bytes.fromPeers, 0, 'A served B despite its cap of 0')
  assert.equal(second.bytes.fromOrigin, size)
  const served = async (): Promise<number> => (await a.client.peers()).peers.reduce((sum, p) => sum + p.bytesToPeer, 0)
  assert.equal(await served(), 0)
  // Not punished for it: A offered nothing, so B has no false claim to hold against it.
  assert.deepEqual((await b.client.peers()).bans, [])

  await a.client.setPolicy({ peerServing: '64MiB/s' })
  const c = await startAgentProcess(join(dir, 'c'), [...keyArgs, '--peer', await loopbackAddress(a)])
  t.after(async () => await c.kill())
  await waitConnected(c, 1)
  const third = await get(c, 'c.bin')
  assert.ok(third.bytes.fromPeers > 0, `C got ${third.bytes.fromPeers} bytes from peers once the cap was lifted`)
  assert.ok(await served() > 0)
})
