// The lab's pure parts: rates, the tbf shape, counter agreement, the compose file
// rendered from the topology (the committed one and an automated run's), and the chart.
// The lab itself runs in test/lab.test.ts (namespaces) and test/lab-compose.test.ts.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { ADDRESSES, countersAgree, formatRate, parseRate, renderChart, renderCompose, renderRunCompose, tbfArguments } from '@canopy/lab'
import type { LabReport } from '@canopy/lab'

test('parseRate reads tc-style rates and refuses nonsense', () => {
  assert.equal(parseRate('20mbit'), 20_000_000)
  assert.equal(parseRate('20Mbit/s'), 20_000_000)
  assert.equal(parseRate('512kbit'), 512_000)
  assert.equal(parseRate('1.5gbit'), 1_500_000_000)
  for (const bad of ['fast', '20 MB', '', '1kbit', '20tbit']) assert.throws(() => parseRate(bad), { code: 'ERR_INVALID_ARGUMENT' }, bad)
  assert.equal(formatRate(20_000_000), '20mbit')
  assert.equal(formatRate(512_000), '512kbit')
})

test('the WAN bucket holds 10 ms of traffic, at least 32 KiB', () => {
  assert.deepEqual(tbfArguments(20_000_000), ['tbf', 'rate', '20mbit', 'burst', String(32 * 1024), 'latency', '50ms'])
  assert.equal(tbfArguments(1_000_000_000)[4], String(1_250_000))
})

test('counters agree within headers above and a leaver\'s socket buffers below', () => {
  const MiB = 1024 * 1024
  assert.ok(countersAgree(32 * MiB, 32 * MiB + 300_000))
  assert.ok(countersAgree(32 * MiB, 31 * MiB), 'bytes queued for an agent that left')
  assert.ok(!countersAgree(32 * MiB, 40 * MiB), 'traffic the origin did not count')
  assert.ok(!countersAgree(32 * MiB, 20 * MiB), 'bytes counted that never crossed')
})

test('docker-compose.yml is what the topology renders (regenerate: npm run lab -- compose > docker-compose.yml)', async () => {
  const committed = await readFile(fileURLToPath(new URL('../../../docker-compose.yml', import.meta.url)), 'utf8')
  const rendered = renderCompose()
  assert.equal(committed, rendered)
  for (const address of [ADDRESSES.origin, ADDRESSES.routerWan, ADDRESSES.routerLan]) assert.ok(rendered.includes(address))
})

test('a compose lab run: internal networks without a host address, nothing published, the namespace lab\'s tbf, every object labelled', () => {
  const labels = { 'canopy-lab': '4242' }
  const file = JSON.parse(renderRunCompose({
    project: 'canopy-lab-4242',
    image: 'canopy:lab',
    lanHosts: [{ name: 'agent-1', address: ADDRESSES.agent(1) }, { name: 'liar', address: ADDRESSES.extra(1) }],
    wanBitsPerSecond: 20_000_000,
    workDir: '/tmp/canopy-lab-x',
    labels
  })) as { services: Record<string, Record<string, unknown>>, networks: Record<string, Record<string, unknown>> }
  assert.deepEqual(Object.keys(file.services).sort(), ['agent-1', 'dc', 'liar', 'router'])
  assert.deepEqual(Object.keys(file.networks).sort(), ['branch', 'wan'])
  for (const network of Object.values(file.networks)) {
    assert.equal(network.internal, true)
    assert.deepEqual(network.driver_opts, { 'com.docker.network.bridge.inhibit_ipv4': 'true' })
    assert.deepEqual(network.labels, labels)
  }
  for (const [name, service] of Object.entries(file.services)) {
    assert.equal(service.ports, undefined, name)
    assert.equal(service.network_mode, undefined, name)
    assert.deepEqual(service.labels, labels, name)
    assert.equal(service.container_name, `canopy-lab-4242-${name}`)
  }
  const router = file.services.router
  assert.deepEqual(router.environment, { WAN_TBF: tbfArguments(20_000_000).join(' '), ROUTER_WAN: ADDRESSES.routerWan, ROUTER_LAN: ADDRESSES.routerLan })
  assert.deepEqual(router.networks, { wan: { ipv4_address: ADDRESSES.routerWan }, branch: { ipv4_address: ADDRESSES.routerLan } })
  assert.deepEqual(file.services.dc.networks, { wan: { ipv4_address: ADDRESSES.origin } })
  assert.deepEqual(file.services.dc.volumes, ['/tmp/canopy-lab-x:/tmp/canopy-lab-x'])
  assert.deepEqual(file.services.liar.networks, { branch: { ipv4_address: ADDRESSES.extra(1) } })
  assert.deepEqual(file.services['agent-1'].environment, { LAB_ROUTE: 'default', LAB_GATEWAY: ADDRESSES.routerLan })
})

test('the chart draws one panel per host and says the verdict', () => {
  const report = {
    scenario: 'patch-day',
    agents: 2,
    size: 4,
    wan: { bitsPerSecond: 20_000_000 },
    origin: { ratio: 1 },
    pass: false,
    reasons: ['the origin sent <too much>'],
    timeline: [{ t: 1, host: 'agent-1', what: 'job started' }],
    hosts: [
      { host: 'agent-1', member: true, state: 'acknowledged', seconds: 2, samples: [{ t: 1, fromOrigin: 0, fromPeers: 0, fromCache: 0 }, { t: 3, fromOrigin: 1, fromPeers: 2, fromCache: 1 }] },
      { host: 'intruder', member: false, state: 'acknowledged', samples: [] }
    ]
  } as unknown as LabReport
  const svg = renderChart(report)
  assert.match(svg, /^<svg /)
  assert.equal(svg.match(/<polygon /g)?.length, 3, 'origin, peers and hosted-cache areas for the host with samples')
  // The hosted cache's area is stacked on the peers': from origin + peers (3 of 4: y = top + PANEL/4) to the total (4 of 4: the panel's top).
  const cacheArea = svg.match(/<polygon points="([^"]+)" fill="#1971c2"/)?.[1].split(' ').map(p => Number(p.split(',')[1]))
  assert.ok(cacheArea !== undefined)
  assert.equal(Math.min(...cacheArea), 56 + 22, 'the total reaches the top of the first panel')
  assert.ok(svg.includes('intruder (no key)'))
  assert.ok(svg.includes('FAIL: the origin sent &lt;too much&gt;'), 'text is escaped')
})
