// Real libp2p nodes on 127.0.0.1 (mDNS off: no multicast leaves this machine's
// root namespace): identity, membership by swarm key, the dial scope.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { silentLogger } from '@canopy/core'
import { generateSwarmKey, isDialable, loadOrCreatePeerKey, parseSwarmKey, startPeerNode } from '@canopy/agent/peers'
import type { PeerNode } from '@canopy/agent/peers'

async function node (t: { after: (fn: () => Promise<void>) => void }, swarmKey?: Uint8Array): Promise<PeerNode> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-peer-'))
  const n = await startPeerNode({
    privateKey: await loadOrCreatePeerKey(dir),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    swarmKey,
    mdns: false,
    logger: silentLogger
  })
  t.after(async () => {
    await n.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return n
}

test('the peer identity is created once, kept owner-only, and reused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-peer-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const first = await loadOrCreatePeerKey(dir)
  const second = await loadOrCreatePeerKey(dir)
  assert.equal(first.type, 'Ed25519')
  assert.ok(first.publicKey.equals(second.publicKey))
  assert.equal((await stat(join(dir, 'peer.key'))).mode & 0o777, 0o600)
})

test('swarm keys: generated keys parse; anything else is refused with a clear error', () => {
  const key = parseSwarmKey(generateSwarmKey())
  assert.equal(key.length, 32)
  assert.notDeepEqual(parseSwarmKey(generateSwarmKey()), key)
  for (const bad of ['', 'hello', '/canopy/swarm-key/1.0.0\nabc', '/key/swarm/psk/1.0.0/\n/base16/\n' + 'a'.repeat(64)]) {
    assert.throws(() => parseSwarmKey(bad), { code: 'ERR_INVALID_SWARM_KEY' })
  }
})

test('two members with the same swarm key connect and can ping', async (t) => {
  const key = parseSwarmKey(generateSwarmKey())
  const a = await node(t, key)
  const b = await node(t, key)
  await a.libp2p.dial(b.libp2p.getMultiaddrs()[0])
  const rtt = await a.libp2p.services.ping.ping(b.libp2p.peerId)
  assert.ok(rtt >= 0)
  assert.equal(a.libp2p.getConnections(b.libp2p.peerId).length, 1)
})

test('a node with another swarm key, or none, cannot open a connection, either way', async (t) => {
  const key = parseSwarmKey(generateSwarmKey())
  const member = await node(t, key)
  const outsider = await node(t, parseSwarmKey(generateSwarmKey()))
  const keyless = await node(t)
  for (const other of [outsider, keyless]) {
    await assert.rejects(other.libp2p.dial(member.libp2p.getMultiaddrs()[0]))
    await assert.rejects(member.libp2p.dial(other.libp2p.getMultiaddrs()[0]))
    assert.equal(member.libp2p.getConnections(other.libp2p.peerId).length, 0)
    assert.equal(other.libp2p.getConnections(member.libp2p.peerId).length, 0)
  }
})

test('only LAN addresses are dialable (checked without dialling anything)', () => {
  for (const ok of ['/ip4/127.0.0.1/tcp/7373', '/ip4/10.1.2.3/tcp/1', '/ip4/172.20.0.5/tcp/1', '/ip4/192.168.1.9/tcp/1', '/ip4/169.254.3.4/tcp/1', '/ip6/::1/tcp/1', '/ip6/fd00::1/tcp/1', '/ip6/fe80::1/tcp/1']) {
    assert.equal(isDialable(multiaddr(ok)), true, ok)
  }
  for (const no of ['/ip4/8.8.8.8/tcp/53', '/ip4/172.32.0.1/tcp/1', '/ip4/100.64.0.1/tcp/1', '/ip6/2001:db8::1/tcp/1', '/dns4/example.com/tcp/1', '/ip4/127.0.0.1/udp/1']) {
    assert.equal(isDialable(multiaddr(no)), false, no)
  }
})
