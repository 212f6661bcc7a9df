// The agent's Prometheus metrics against real downloads: a real origin, agents as real
// processes peering on loopback, scraped on --metrics-listen and on the control API's
// TCP listener; and the Grafana dashboard's queries against a real agent's output.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { AgentStatus } from '@canopy/core'
import { FINISHED, loopbackAddress, originWithFile, runCli, startAgentProcess, swarmKeyFile, waitConnected } from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

interface Sample { name: string, labels: Record<string, string>, value: number }

/** The samples of a Prometheus text exposition (names, labels, values; comments skipped). */
function parseExposition (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    assert.ok(match !== null, `not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) labels[key] = value
    samples.push({ name: match[1], labels, value: Number(match[3]) })
  }
  return samples
}

/** Sum of the samples named `name` whose labels include `where`. */
function sum (samples: Sample[], name: string, where: Record<string, string> = {}): number {
  return samples.filter(s => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0)
}

async function scrape (url: string, token?: string): Promise<Sample[]> {
  const res = await fetch(url, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
  assert.equal(res.status, 200, `${url}: ${res.status}`)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  return parseExposition(await res.text())
}

async function download (agent: AgentProcess, url: string, path: string) {
  const job = await agent.client.createJob({ files: [{ url, path }], autoComplete: true, priority: 'high' })
  const done = await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  return done
}

test('metrics after downloads from the origin and from a peer agree with the jobs\' bytes; status shows the totals', async (t) => {
  const size = 6 * 1024 * 1024 + 777
  const { dir, origin } = await originWithFile(t, size)
  const keyArgs = ['--swarm-key', await swarmKeyFile(dir)]
  const tokenFile = join(dir, 'api.token')
  const token = 'metrics-test-token-51c2'
  await writeFile(tokenFile, `${token}\n`, { mode: 0o600 })
  const a = await startAgentProcess(join(dir, 'a'), [...keyArgs, '--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await a.kill())
  const b = await startAgentProcess(join(dir, 'b'), [...keyArgs, '--peer', await loopbackAddress(a), '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile])
  t.after(async () => await b.kill())
  assert.equal(await waitConnected(b, 1), 1)

  const first = await download(a, `${origin.url}/f.bin`, join(dir, 'a.bin'))
  const second = await download(b, `${origin.url}/f.bin`, join(dir, 'b.bin'))
  assert.ok(second.bytes.fromPeers > 0, `B got ${second.bytes.fromPeers} bytes from A`)

  // A: on its metrics listener (no token), every byte from the origin; it served B's peer bytes.
  const statusA = await a.client.status()
  assert.match(statusA.metricsListen ?? '', /^127\.0\.0\.1:\d+$/)
  const metricsA = await scrape(`http://${statusA.metricsListen!}/metrics`)
  assert.equal(sum(metricsA, 'canopy_agent_received_bytes_total', { source: 'origin' }), first.bytes.fromOrigin)
  assert.equal(sum(metricsA, 'canopy_agent_received_bytes_total', { source: 'origin' }), size)
  assert.equal(sum(metricsA, 'canopy_agent_received_bytes_total', { source: 'peer' }), 0)
  assert.equal(sum(metricsA, 'canopy_agent_received_bytes_total', { priority: 'high' }), size)
  assert.equal(sum(metricsA, 'canopy_agent_peer_served_bytes_total'), second.bytes.fromPeers)
  assert.ok(sum(metricsA, 'canopy_agent_peer_requests_total', { result: 'hit' }) > 0)
  assert.equal(sum(metricsA, 'canopy_agent_jobs', { state: 'acknowledged' }), 1)
  assert.equal(sum(metricsA, 'canopy_agent_cache_size_bytes'), size)
  assert.equal(sum(metricsA, 'canopy_agent_cache_files'), 1)
  assert.equal(sum(metricsA, 'canopy_agent_peers_connected'), 1)
  assert.equal(sum(metricsA, 'canopy_agent_verification_failures_total'), 0)
  assert.deepEqual(statusA.bytes, { fromOrigin: size, fromPeers: 0, fromCache: 0, servedToPeers: second.bytes.fromPeers, since: statusA.startedAt })

  // B: on the control API's TCP listener, behind its token.
  const statusB = await b.client.status()
  const metricsUrl = `http://${statusB.apiTcp!}/metrics`
  assert.equal((await fetch(metricsUrl)).status, 401)
  assert.equal((await fetch(metricsUrl, { headers: { authorization: 'Bearer wrong' } })).status, 401)
  const metricsB = await scrape(metricsUrl, token)
  assert.equal(sum(metricsB, 'canopy_agent_received_bytes_total', { source: 'peer' }), second.bytes.fromPeers)
  assert.equal(sum(metricsB, 'canopy_agent_received_bytes_total', { source: 'origin' }), second.bytes.fromOrigin)
  assert.equal(sum(metricsB, 'canopy_agent_received_bytes_total'), size)
  assert.equal(sum(metricsB, 'canopy_agent_peer_served_bytes_total'), 0)

  // canopy status: totals and the share from peers, human and JSON.
  const json = await runCli(['status', '--json', '--state-dir', b.stateDir])
  assert.equal(json.code, 0, json.stderr)
  const shown = JSON.parse(json.stdout) as AgentStatus
  assert.equal(shown.bytes.fromPeers, second.bytes.fromPeers)
  assert.equal(shown.bytes.fromOrigin, second.bytes.fromOrigin)
  const human = await runCli(['status', '--state-dir', b.stateDir])
  const share = (second.bytes.fromPeers / size * 100).toFixed(1)
  assert.match(human.stdout, new RegExp(`received: +origin .*, peers .* since start \\(${share.replace('.', '\\.')}% from peers\\)`))
  assert.match(human.stdout, /served to peers: +0 B/)

  // Bytes received before a start are not counted again after it.
  await b.kill()
  const restarted = await startAgentProcess(b.stateDir, keyArgs)
  t.after(async () => await restarted.kill())
  const after = await restarted.client.status()
  assert.deepEqual({ ...after.bytes, since: '' }, { fromOrigin: 0, fromPeers: 0, fromCache: 0, servedToPeers: 0, since: '' })
})

const GRAFANA_DIR = fileURLToPath(new URL('../deploy/grafana/', import.meta.url))

/** The metric names a Grafana dashboard's queries use. */
function queriedMetrics (dashboard: unknown): Set<string> {
  const names = new Set<string>()
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(walk)
    else if (node !== null && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if ((key === 'expr' || key === 'query' || key === 'definition') && typeof value === 'string') {
          for (const [name] of value.matchAll(/\bcanopy_[a-z0-9_]+/g)) names.add(name)
        } else walk(value)
      }
    }
  }
  walk(dashboard)
  return names
}

test('every metric the Grafana dashboards query exists in a real agent\'s and origin\'s /metrics', async (t) => {
  const { dir, origin } = await originWithFile(t, 1024)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await agent.kill())
  const exposed = new Set([
    ...(await scrape(`http://${(await agent.client.status()).metricsListen!}/metrics`)).map(s => s.name),
    ...(await scrape(`${origin.url}/metrics`)).map(s => s.name)
  ])
  const files = (await readdir(GRAFANA_DIR)).filter(f => f.endsWith('.json'))
  assert.ok(files.length > 0, `no dashboards in ${GRAFANA_DIR}`)
  for (const file of files) {
    const queried = queriedMetrics(JSON.parse(await readFile(join(GRAFANA_DIR, file), 'utf8')))
    assert.ok(queried.size >= 5, `${file} queries ${[...queried].join(', ')}`)
    const missing = [...queried].filter(name => !exposed.has(name))
    assert.deepEqual(missing, [], `${file} queries metrics no agent or origin exposes`)
  }
})
