// Agents as real processes whose peer nodes find each other through static peers on
// loopback (mDNS stays off in the root namespace).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { writeFile } from 'node:fs/promises'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

test('two agents with the same swarm key connect through a static peer; status shows it', async (t) => {
  const dir = await tempDir(t)
  const key = await runCli(['keygen'])
  assert.equal(key.code, 0)
  await writeFile(join(dir, 'org.key'), key.stdout, { mode: 0o600 })
  const a = await startAgentProcess(join(dir, 'a'), ['--swarm-key', join(dir, 'org.key')])
  t.after(async () => await a.kill())
  const statusA = await a.client.status()
  assert.ok(statusA.peer !== undefined)
  assert.equal(statusA.peer.swarmKey, true)
  assert.equal(statusA.peer.mdns, false)
  const address = statusA.peer.addresses.find(ma => ma.startsWith('/ip4/127.0.0.1/tcp/'))
  assert.ok(address !== undefined, statusA.peer.addresses.join(' '))

  const b = await startAgentProcess(join(dir, 'b'), ['--swarm-key', join(dir, 'org.key'), '--peer', address])
  t.after(async () => await b.kill())
  let connected = 0
  for (let i = 0; i < 100 && connected === 0; i++) {
    connected = (await b.client.status()).peer?.connected ?? 0
    if (connected === 0) await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.equal(connected, 1)
  assert.equal((await a.client.status()).peer?.connected, 1)

  const human = await runCli(['status', '--state-dir', b.stateDir])
  assert.equal(human.code, 0)
  assert.match(human.stdout, /peer id: +12D3KooW/)
  assert.match(human.stdout, /1 connected; mDNS off; swarm key required/)
})

test('an agent with another swarm key is never connected', async (t) => {
  const dir = await tempDir(t)
  await writeFile(join(dir, 'one.key'), (await runCli(['keygen'])).stdout)
  await writeFile(join(dir, 'two.key'), (await runCli(['keygen'])).stdout)
  const a = await startAgentProcess(join(dir, 'a'), ['--swarm-key', join(dir, 'one.key')])
  t.after(async () => await a.kill())
  const address = (await a.client.status()).peer!.addresses.find(ma => ma.startsWith('/ip4/127.0.0.1/'))!
  const b = await startAgentProcess(join(dir, 'b'), ['--swarm-key', join(dir, 'two.key'), '--peer', address])
  t.after(async () => await b.kill())
  // Long enough for several dial attempts (the first at start-up).
  await new Promise(resolve => setTimeout(resolve, 1500))
  assert.equal((await b.client.status()).peer?.connected, 0)
  assert.equal((await a.client.status()).peer?.connected, 0)
})

test('bad peer flags are usage errors (checked before anything is dialled)', async (t) => {
  const dir = await tempDir(t)
  const outside = await runCli(['agent', '--state-dir', join(dir, 's'), '--no-mdns', '--peer', '/ip4/8.8.8.8/tcp/7373'])
  assert.equal(outside.code, 2)
  assert.match(outside.stderr, /LAN address/)
  const key = await runCli(['agent', '--state-dir', join(dir, 's'), '--no-mdns', '--swarm-key', join(dir, 'missing.key')])
  assert.equal(key.code, 2)
  assert.match(key.stderr, /swarm key/)
})
