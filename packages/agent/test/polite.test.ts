// Polite transfers on a real agent and origin (loopback): a job's own cap of 0 and a
// policy cap of 0 leave it queued (no slot) with the reason; lifting the cap lets it finish;
// the status shows the policy and the WAN path; a policy that does not parse is
// refused and the previous one stays; a background job hashes on low-priority threads.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { startAgent } from '@canopy/agent'
import { validateRateLimit } from '../src/jobs/validate.ts'
import { startOrigin } from '@canopy/origin'
import type { CanopyAgent } from '@canopy/agent'
import type { JobView } from '@canopy/core'

async function until (agent: CanopyAgent, id: string, what: (job: JobView) => boolean): Promise<JobView> {
  for (;;) {
    const job = agent.getJob(id)
    if (what(job)) return job
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

async function setUp (t: { after: (fn: () => Promise<void>) => void }): Promise<{ dir: string, url: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-polite-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'f.bin'), randomBytes(3 * 1024 * 1024 + 5))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin') })
  t.after(async () => await origin.close())
  await origin.ready
  return { dir, url: `${origin.url}/f.bin` }
}

test('a job whose own rate limit is 0 waits in the queue and says why; removing the limit lets it finish', async (t) => {
  const { dir, url } = await setUp(t)
  const agent = await startAgent({ stateDir: join(dir, 'agent') })
  t.after(async () => await agent.stop())
  const job = await agent.createJob({ files: [{ url, path: join(dir, 'out.bin') }], priority: 'foreground', rateLimit: 0, autoComplete: true })
  assert.equal(job.rateLimit, 0)
  const blocked = await until(agent, job.id, j => j.reason !== undefined)
  assert.equal(blocked.state, 'queued')
  assert.equal(blocked.reason, 'blocked: this job\'s rate limit is 0')
  assert.equal(blocked.bytes.transferred, 0)
  const lifted = await agent.setRateLimit(job.id, null)
  assert.equal(lifted.rateLimit, undefined)
  assert.equal((await until(agent, job.id, j => j.state === 'acknowledged' || j.state === 'error')).state, 'acknowledged')
  // Checked at the API boundary (the agent's methods take typed arguments).
  assert.throws(() => validateRateLimit({ rateLimit: -1 }), /rateLimit must be/)
})

test('a policy cap of 0 on low jobs keeps them queued with the reason, not foreground ones; a bad policy is refused and the old one stays; lifted live, they start', async (t) => {
  const { dir, url } = await setUp(t)
  const agent = await startAgent({ stateDir: join(dir, 'agent'), bandwidthPolicy: { low: 0 }, maxBackgroundJobs: 1 })
  t.after(async () => await agent.stop())
  const low = await agent.createJob({ files: [{ url, path: join(dir, 'low.bin') }], priority: 'low', autoComplete: true })
  const fg = await agent.createJob({ files: [{ url, path: join(dir, 'fg.bin') }], priority: 'foreground', autoComplete: true })
  assert.equal((await until(agent, fg.id, j => j.state === 'acknowledged' || j.state === 'error')).state, 'acknowledged', 'foreground is never capped by policy')
  const blocked = agent.getJob(low.id)
  assert.equal(blocked.state, 'queued', 'waiting, not transferring: it holds no slot')
  assert.equal(blocked.reason, 'blocked by policy: low-priority jobs are capped at 0 (policy)')
  assert.equal(blocked.bytes.transferred, 0)
  // A normal job takes a slot meanwhile (the blocked one holds none, even with one slot).
  const normal = await agent.createJob({ files: [{ url, path: join(dir, 'normal.bin') }], priority: 'normal', autoComplete: true })
  assert.equal((await until(agent, normal.id, j => j.state === 'acknowledged' || j.state === 'error')).state, 'acknowledged')
  const status = agent.status()
  assert.deepEqual(status.bandwidth?.policy.policy, { low: 0, lanPeersExempt: true })
  assert.equal(status.bandwidth?.paths.length, 0, 'no transfer holds a WAN path')
  assert.throws(() => agent.setPolicy({ low: 'slow' }), /low: "slow" is not a rate/)
  assert.deepEqual(agent.policy().policy, { low: 0, lanPeersExempt: true }, 'the previous policy stays')
  agent.setPolicy({ low: '64MiB/s' })
  assert.equal((await until(agent, low.id, j => j.state === 'acknowledged' || j.state === 'error')).state, 'acknowledged')
  if (process.platform === 'linux') {
    // The low job hashed on threads at nice 10; the foreground one on the agent's own (nice 0).
    const nices = await Promise.all((await readdir('/proc/self/task')).map(async tid => {
      const stat = await readFile(`/proc/self/task/${tid}/stat`, 'utf8').catch(() => '')
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
    }))
    assert.ok(nices.includes(10), `thread nice values: ${nices.join(' ')}`)
  }
})

test('the agent refuses to start with a policy that does not parse', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-polite-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  await assert.rejects(startAgent({ stateDir: join(dir, 'agent'), bandwidthPolicy: { workHours: { from: '09:00', to: '09:00', low: 0 } } }), /workHours: the window 09:00-09:00 is empty/)
})

test('a background job\'s WAN path shows in the metrics: its controller\'s state, rate and queue delay, by origin host', async (t) => {
  const { dir, url } = await setUp(t)
  // A cap of 1 KiB/s holds the job on its path (transferring, leased) while the metrics are read.
  const agent = await startAgent({ stateDir: join(dir, 'agent'), bandwidthPolicy: { low: 1024 }, maxBackgroundJobs: 1 })
  t.after(async () => await agent.stop())
  const job = await agent.createJob({ files: [{ url, path: join(dir, 'low.bin') }], priority: 'low' })
  await until(agent, job.id, j => j.state === 'transferring' && j.reason !== undefined)
  const host = new URL(url).host
  const { text } = await agent.metrics.expose()
  const states = [...text.matchAll(/^canopy_agent_wan_path_state\{host="([^"]+)",state="(\w+)"\} (\d)$/gm)]
  assert.deepEqual(new Set(states.map(m => m[1])), new Set([host]), text)
  assert.equal(states.filter(m => m[3] === '1').length, 1, 'one state at a time')
  assert.match(text, new RegExp(`^canopy_agent_wan_path_rate_bytes_per_second\\{host="${host}"\\} \\d`, 'm'))
  await agent.cancel(job.id)
  const after = (await agent.metrics.expose()).text
  assert.doesNotMatch(after, /^canopy_agent_wan_path_state\{/m, 'a path no job holds is not shown')
})
