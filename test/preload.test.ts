// Preload jobs and the cache view, with real agent processes, a real origin and the
// real CLI: an agent warmed with `canopy preload` serves its peers without the
// origin, keeps the content across a SIGKILL, and says why when it cannot cache.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { CacheView, JobView } from '@canopy/core'
import {
  FINISHED, loopbackAddress, originContentBytes, originWithFile, plainServer, runCli, startAgentProcess, swarmKeyFile, waitConnected
} from './helpers.ts'

const MiB = 1024 * 1024

/** One series' value in Prometheus text. */
function counter (text: string, series: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${series} `))
  assert.ok(line !== undefined, `${series} is missing`)
  return Number(line.split(' ').at(-1))
}

test('canopy preload warms an agent: canopy cache lists it, a peer takes it without the origin, and a SIGKILL loses nothing', async (t) => {
  const size = 6 * MiB + 123
  const { dir, origin } = await originWithFile(t, size, 'patch.msu')
  const url = `${origin.url}/patch.msu`
  const keyArgs = ['--swarm-key', await swarmKeyFile(dir)]
  const cache = await startAgentProcess(join(dir, 'cache'), keyArgs)
  t.after(async () => await cache.kill())

  const preloaded = await runCli(['preload', url, '--json', '--state-dir', cache.stateDir])
  assert.equal(preloaded.code, 0, preloaded.stderr)
  const job = JSON.parse(preloaded.stdout) as JobView
  assert.equal(job.type, 'preload')
  assert.equal(job.priority, 'low', 'a warm-up defaults to low priority')
  assert.equal(job.state, 'acknowledged')
  assert.equal(job.name, 'preload patch.msu')
  assert.equal(job.bytes.fromOrigin, size)
  assert.equal(job.files[0].cached, true)
  // The staging copy is gone: the cache's hard link is the only one.
  assert.deepEqual(await readdir(join(cache.stateDir, 'preload')), [])

  const listed = JSON.parse((await runCli(['cache', '--json', '--state-dir', cache.stateDir])).stdout) as CacheView
  assert.equal(listed.entries.length, 1)
  assert.equal(listed.entries[0].name, 'patch.msu')
  assert.equal(listed.entries[0].size, size)
  assert.equal(listed.entries[0].source, url)
  assert.equal(listed.entries[0].manifestId, job.files[0].manifestId)
  assert.deepEqual([listed.hits, listed.misses, listed.bytesServed], [0, 0, 0])

  // Preloading held content again costs nothing.
  const again = await cache.client.createJob({ type: 'preload', files: [{ url }], autoComplete: true })
  const done = await cache.client.waitForJob(again.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.files[0].skipped, true)
  assert.equal(done.bytes.fromOrigin, 0)
  assert.equal(await originContentBytes(origin.url), size)

  // SIGKILL and restart: the content is still there (its record and its hard link).
  await cache.kill('SIGKILL')
  const restarted = await startAgentProcess(cache.stateDir, [...keyArgs, '--metrics-listen', '127.0.0.1:0'])
  t.after(async () => await restarted.kill())
  assert.deepEqual((await restarted.client.cache()).entries.map(e => [e.name, e.size, e.source]), [['patch.msu', size, url]])

  // A member of the branch takes it from the preloaded agent: no origin bytes.
  const member = await startAgentProcess(join(dir, 'member'), [...keyArgs, '--peer', await loopbackAddress(restarted)])
  t.after(async () => await member.kill())
  await waitConnected(member, 1)
  const fetched = await member.client.createJob({ files: [{ url, path: join(dir, 'patch.msu') }], autoComplete: true })
  const got = await member.client.waitForJob(fetched.id, { intervalMs: 50, until: FINISHED })
  assert.equal(got.state, 'acknowledged', JSON.stringify(got.error))
  const sent = await originContentBytes(origin.url) - size
  t.diagnostic(`origin sent ${sent} bytes for the member's download of ${size} (preloaded)`)
  assert.ok(sent <= 0.01 * size, `origin sent ${sent} bytes after the preload`)
  assert.ok(got.bytes.fromPeers >= 0.99 * size)

  // The preloaded agent counted the request and the bytes, in its view and its metrics alike.
  const view = await restarted.client.cache()
  assert.ok(view.hits >= 1, `hits ${view.hits}`)
  assert.ok(view.bytesServed >= got.bytes.fromPeers, `served ${view.bytesServed}`)
  const metrics = await (await fetch(`http://${(await restarted.client.status()).metricsListen!}/metrics`)).text()
  assert.equal(counter(metrics, 'canopy_agent_peer_requests_total{result="hit"}'), view.hits)
  assert.equal(counter(metrics, 'canopy_agent_peer_requests_total{result="miss"}'), view.misses)
  assert.equal(counter(metrics, 'canopy_agent_peer_served_bytes_total'), view.bytesServed)
  const text = (await runCli(['cache', '--state-dir', restarted.stateDir])).stdout
  assert.match(text, /^6\.0 MiB of .* used, 1 file; peers' requests: \d+ hits?, \d+ miss(es)?, 6\.0 MiB served$/m)
  assert.match(text, /^NAME +SIZE +LAST USED +ADDED +SOURCE$/m)
  assert.match(text, new RegExp(`^patch\\.msu +6\\.0 MiB .*${url.replaceAll('.', '\\.')}$`, 'm'))
})

test('preload of a 404 stops in error with the reason; of content larger than the cache, before fetching a byte', async (t) => {
  const { dir, origin } = await originWithFile(t, 4 * MiB)
  // The staging files of a job the agent no longer has (a damaged store dropped it) are swept at start.
  await mkdir(join(dir, 'a', 'preload', '0f0e6d3c-stray'), { recursive: true })
  await writeFile(join(dir, 'a', 'preload', '0f0e6d3c-stray', '.0.0f0e6d3c.canopy-part'), 'partial')
  const agent = await startAgentProcess(join(dir, 'a'), ['--cache-size', '2MiB'])
  assert.deepEqual(await readdir(join(dir, 'a', 'preload')), [])
  t.after(async () => await agent.kill())

  const missing = await runCli(['preload', `${origin.url}/nope.bin`, '--state-dir', agent.stateDir])
  assert.equal(missing.code, 1)
  assert.match(missing.stderr, /canopy: preload [0-9a-f-]+ failed: ERR_HTTP_NOT_FOUND: /)

  const big = await agent.client.createJob({ type: 'preload', files: [{ url: `${origin.url}/f.bin` }], autoComplete: true })
  const failed = await agent.client.waitForJob(big.id, { intervalMs: 50, until: FINISHED })
  assert.equal(failed.state, 'error')
  assert.equal(failed.error?.code, 'ERR_CACHE_FULL')
  assert.match(failed.error?.message ?? '', /f\.bin: it is 4\.0 MiB, more than the whole cache quota \(2\.0 MiB\): raise --cache-size/)
  assert.equal(await originContentBytes(origin.url), 0, 'nothing was fetched')
  assert.equal((await agent.client.cache()).entries.length, 0)
})

test('preload of a URL without a manifest completes, and says it could not be cached for peers', async (t) => {
  const base = await plainServer(t)
  const { dir } = await originWithFile(t, 1)
  const agent = await startAgentProcess(join(dir, 'a'))
  t.after(async () => await agent.kill())
  const run = await runCli(['preload', `${base}/f.bin`, '--json', '--state-dir', agent.stateDir])
  assert.equal(run.code, 0, run.stderr)
  const job = JSON.parse(run.stdout) as JobView
  assert.equal(job.state, 'acknowledged')
  assert.equal(job.bytes.fromOrigin, 3 * MiB)
  assert.equal(job.files[0].cached, false)
  assert.match(job.files[0].notCachedReason ?? '', /published no manifest/)
  assert.match(run.stderr, /preloaded 0 of 1 file .*\n {2}http:.*f\.bin: not cached: the origin published no manifest/)
  assert.equal((await agent.client.cache()).entries.length, 0)
  assert.deepEqual(await readdir(join(agent.stateDir, 'preload')), [], 'the download was dropped')
})

test('preload requests: no destination, and an agent with a peer node', async (t) => {
  const { dir, origin } = await originWithFile(t, 1024)
  const agent = await startAgentProcess(join(dir, 'a'), ['--no-p2p'])
  t.after(async () => await agent.kill())
  await assert.rejects(agent.client.createJob({ type: 'preload', files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'x') }] }), { code: 'ERR_INVALID_REQUEST', message: /a preload job has no destination/ })
  await assert.rejects(agent.client.createJob({ type: 'preload', files: [{ url: `${origin.url}/f.bin` }] }), { code: 'ERR_NO_PEER_NODE' })
  await assert.rejects(agent.client.createJob({ files: [{ url: `${origin.url}/f.bin` }] }), { code: 'ERR_INVALID_REQUEST', message: /files\[0\]\.path must be an absolute path/ })
  const usage = await runCli(['preload', 'ftp://example.com/x', '--state-dir', agent.stateDir])
  assert.equal(usage.code, 2)
  assert.match(usage.stderr, /ftp URLs are not supported: canopy preload downloads http and https URLs/)
})

test('canopy preload --detach, then suspend, resume and cancel like any job; canopy job shows where each file went', async (t) => {
  const { dir, origin } = await originWithFile(t, 8 * MiB, 'f.bin', { rateLimit: MiB })
  await writeFile(join(dir, 'root', 'small.bin'), Buffer.alloc(100 * 1024, 7))
  const agent = await startAgentProcess(join(dir, 'a'))
  t.after(async () => await agent.kill())
  const cli = async (...args: string[]): Promise<string> => {
    const run = await runCli([...args, '--state-dir', agent.stateDir])
    assert.equal(run.code, 0, run.stderr)
    return run.stdout
  }

  const id = (await cli('preload', `${origin.url}/f.bin`, '--detach', '--priority', 'normal', '--name', 'warm f')).trim()
  assert.match(id, /^[0-9a-f-]{36}$/)
  for (let i = 0; i < 200 && (await agent.client.getJob(id)).bytes.transferred === 0; i++) await new Promise(resolve => setTimeout(resolve, 50))
  assert.match(await cli('suspend', id), /suspended/)
  await cli('resume', id)
  assert.ok(['queued', 'connecting', 'transferring'].includes((await agent.client.getJob(id)).state))
  await cli('cancel', id)
  const cancelled = await agent.client.getJob(id)
  assert.equal(cancelled.state, 'cancelled')
  assert.equal(cancelled.name, 'warm f')
  assert.deepEqual(await readdir(join(agent.stateDir, 'preload')), [], 'the cancelled job\'s staging directory is gone')
  assert.equal((await agent.client.cache()).entries.length, 0)

  const small = (await cli('preload', `${origin.url}/small.bin`, `${origin.url}/small.bin?again`, '--detach')).trim()
  const done = await agent.client.waitForJob(small, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
  assert.equal(done.name, 'preload small.bin and 1 more')
  const shown = await cli('job', small)
  assert.match(shown, /small\.bin\n {4}-> the peer cache\n/)
  assert.match(shown, /small\.bin\?again\n {4}-> the peer cache \(held already\)\n/)
  assert.match(shown, /^sources: +origin 100 KiB, peers 0 B/m)
})
