// Scheduling by priority (preemption, time slices), restarts in every waiting
// state, the retry and time limits, retention, files added to a suspended job, and
// the limits checked at creation: real agent processes, real origins, the real CLI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { startAgent } from '@canopy/agent'
import { isCanopyError } from '@canopy/core'
import type { AgentEvent, JobState, JobView } from '@canopy/core'
import { AgentApiError } from '@canopy/client'
import type { CanopyClient } from '@canopy/client'
import { fileSha256, originWithFile, randomFile, readUntil, refusingOrigin, runCli, stalledOrigin, startAgentProcess, tempDir } from './helpers.ts'
import { JobStore } from '../packages/agent/src/store/job-store.ts'
import type { AgentProcess } from './helpers.ts'

const KiB = 1024
const MiB = 1024 * KiB
/** Generous: a wait for a state on a loaded machine, never a timing assertion. */
const WAIT_MS = 60_000

const jobOf = (e: AgentEvent): JobView | undefined => e.type === 'removed' ? undefined : e.job
/** The state events of one job, in order. */
const statesOf = (events: AgentEvent[], id: string): JobView[] =>
  events.filter(e => e.type === 'state' && e.job.id === id).map(e => jobOf(e)!)

/** Polls a job until `ok` holds (every 50 ms, up to WAIT_MS). */
async function waitJob (client: CanopyClient, id: string, ok: (job: JobView) => boolean): Promise<JobView> {
  const deadline = Date.now() + WAIT_MS
  for (;;) {
    const job = await client.getJob(id)
    if (ok(job)) return job
    if (Date.now() > deadline) throw new Error(`job ${id} never got there; it is ${job.state} (${job.reason ?? ''})`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

const inState = (...states: JobState[]) => (job: JobView): boolean => states.includes(job.state)

/** An agent started with `args`, a URL on an origin that never answers and one on a port that refuses connections. */
async function brokenOrigins (t: { after: (fn: () => Promise<void>) => void }, args: string[]): Promise<{ dir: string, stuckUrl: string, refused: string, agent: AgentProcess }> {
  const dir = await tempDir()
  const stuckUrl = `${await stalledOrigin(t)}/stuck.bin`
  const refused = `${await refusingOrigin()}/gone.bin`
  const agent = await startAgentProcess(join(dir, 'agent'), args)
  t.after(async () => await agent.kill())
  return { dir, stuckUrl, refused, agent }
}

test('a high-priority job preempts the low job that started last when the background slots are full; the preempted job keeps its verified blocks', async (t) => {
  // A slow origin keeps the low jobs transferring; blocks of 64 KiB so they have verified some when the high job arrives.
  const slow = await originWithFile(t, 3 * MiB, 'slow.bin', { rateLimit: MiB, blockSize: 64 * KiB })
  const fast = await originWithFile(t, 2 * MiB, 'fast.bin')
  const agent = await startAgentProcess(join(slow.dir, 'agent'), ['--max-background-jobs', '2'])
  t.after(async () => await agent.kill())
  const events = await agent.client.watch()
  t.after(async () => await events.close())

  const low = async (name: string): Promise<JobView> => await agent.client.createJob({ name, priority: 'low', autoComplete: true, files: [{ url: `${slow.origin.url}/slow.bin`, path: join(slow.dir, name) }] })
  const first = await low('first.bin')
  const second = await low('second.bin')
  for (const job of [first, second]) await waitJob(agent.client, job.id, j => j.bytes.transferred > 0)
  const high = await agent.client.createJob({ priority: 'high', autoComplete: true, files: [{ url: `${fast.origin.url}/fast.bin`, path: join(slow.dir, 'high.bin') }] })

  const done = new Set<string>()
  const seen = await readUntil(events, e => {
    if (e.type === 'state' && e.job.state === 'acknowledged') done.add(e.job.id)
    return done.size === 3
  })

  // The second low job, started last, went back to the queue with the reason, holding what it had verified.
  const secondStates = statesOf(seen, second.id)
  // Index 0 is its creation (queued); the next queued is the preemption.
  const preempted = secondStates.findIndex((j, i) => i > 0 && j.state === 'queued')
  assert.ok(preempted > 0, JSON.stringify(secondStates.map(j => j.state)))
  assert.equal(secondStates[preempted].reason, 'waiting: preempted by a higher-priority job')
  const kept = secondStates[preempted].bytes.transferred
  assert.ok(kept > 0)
  const relaunched = secondStates.slice(preempted).find(j => j.state === 'connecting')
  assert.ok(relaunched !== undefined && relaunched.bytes.transferred >= kept, 'resumed from its block marks')
  // The first low job was never stopped; the high job started only once the slot was free.
  assert.deepEqual(statesOf(seen, first.id).map(j => j.state), ['queued', 'connecting', 'transferring', 'transferred', 'acknowledged'])
  const highStart = seen.findIndex(e => e.type === 'state' && e.job.id === high.id && e.job.state === 'connecting')
  assert.ok(seen.indexOf(seen.filter(e => e.type === 'state' && e.job.id === second.id)[preempted]) < highStart)
  for (const name of ['first.bin', 'second.bin']) assert.equal(await fileSha256(join(slow.dir, name)), slow.sha256)
  assert.equal(await fileSha256(join(slow.dir, 'high.bin')), fast.sha256)
})

test('canopy set --priority re-evaluates preemption: a waiting job raised above the running one takes its slot', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 2 * MiB)
  const stuckUrl = `${await stalledOrigin(t)}/stuck.bin`
  const agent = await startAgentProcess(join(dir, 'agent'), ['--max-background-jobs', '1', '--request-timeout', '3600000'])
  t.after(async () => await agent.kill())

  const stuck = await agent.client.createJob({ priority: 'normal', files: [{ url: stuckUrl, path: join(dir, 'stuck.bin') }] })
  await waitJob(agent.client, stuck.id, inState('connecting'))
  const waiting = await agent.client.createJob({ priority: 'low', autoComplete: true, files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }] })
  assert.equal((await agent.client.getJob(waiting.id)).reason, 'waiting: 1 higher-priority job')
  const events = await agent.client.watch()
  t.after(async () => await events.close())

  const r = await runCli(['set', waiting.id, '--priority', 'high', '--state-dir', agent.stateDir])
  assert.equal(r.code, 0, r.stderr)
  const seen = await readUntil(events, e => e.type === 'state' && e.job.id === stuck.id && e.job.state === 'connecting')
  const stuckQueued = statesOf(seen, stuck.id).find(j => j.state === 'queued')
  assert.equal(stuckQueued?.reason, 'waiting: preempted by a higher-priority job')
  assert.equal(statesOf(seen, waiting.id).at(-1)?.state, 'acknowledged')
  assert.equal(await fileSha256(join(dir, 'f.bin')), sha256)
})

test('background jobs of one priority take turns by time slices: neither waits for the other to finish', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 3 * MiB, 'f.bin', { rateLimit: MiB, blockSize: 64 * KiB })
  const agent = await startAgentProcess(join(dir, 'agent'), ['--max-background-jobs', '1', '--time-slice', '1s'])
  t.after(async () => await agent.kill())
  const events = await agent.client.watch()
  t.after(async () => await events.close())

  const create = async (name: string): Promise<JobView> => await agent.client.createJob({ autoComplete: true, files: [{ url: `${origin.url}/f.bin`, path: join(dir, name) }] })
  const a = await create('a.bin')
  const b = await create('b.bin')
  const done = new Set<string>()
  const seen = await readUntil(events, e => {
    if (e.type === 'state' && e.job.state === 'acknowledged') done.add(e.job.id)
    return done.size === 2
  })

  const aStates = statesOf(seen, a.id)
  // After its creation (queued), the next queued is the end of its slice.
  const yielded = aStates.slice(1).find(j => j.state === 'queued')
  assert.match(yielded?.reason ?? '', /^waiting: time slice over/, JSON.stringify(aStates.map(j => j.state)))
  // Each job resumes from the blocks it had when it yielded (at least one of them had some by then).
  let resumedWithBlocks = 0
  for (const states of [aStates, statesOf(seen, b.id)]) {
    states.forEach((j, i) => {
      if (i === 0 || j.state !== 'queued') return
      const next = states.slice(i).find(n => n.state === 'connecting')
      assert.ok(next === undefined || next.bytes.transferred >= j.bytes.transferred, 'a job lost verified blocks at a switch')
      if (j.bytes.transferred > 0) resumedWithBlocks++
    })
  }
  assert.ok(resumedWithBlocks > 0)
  const bStarted = seen.findIndex(e => e.type === 'state' && e.job.id === b.id && e.job.state === 'transferring')
  const aDone = seen.findIndex(e => e.type === 'state' && e.job.id === a.id && e.job.state === 'acknowledged')
  assert.ok(bStarted >= 0 && bStarted < aDone, 'b ran before a finished')
  for (const name of ['a.bin', 'b.bin']) assert.equal(await fileSha256(join(dir, name)), sha256)
})

test('an agent restarted in every waiting state keeps each job\'s state: queued, suspended, transient_error, transferred, error', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const stuckUrl = `${await stalledOrigin(t)}/stuck.bin`
  const refused = `${await refusingOrigin()}/gone.bin`
  const args = ['--max-background-jobs', '1', '--request-timeout', '1h', '--retry-min', '1h']
  const stateDir = join(dir, 'agent')
  let agent = await startAgentProcess(stateDir, args)
  t.after(async () => await agent.kill())
  const file = (name: string, url = `${origin.url}/f.bin`): Array<{ url: string, path: string }> => [{ url, path: join(dir, name) }]

  const stuck = await agent.client.createJob({ files: file('stuck.bin', stuckUrl) })
  await waitJob(agent.client, stuck.id, inState('connecting'))
  const jobs: Record<string, JobView> = {
    queued: await agent.client.createJob({ priority: 'low', files: file('queued.bin') }),
    suspended: await agent.client.createJob({ start: false, files: file('suspended.bin') }),
    transient_error: await agent.client.createJob({ priority: 'foreground', files: file('transient.bin', refused) }),
    transferred: await agent.client.createJob({ priority: 'foreground', files: file('transferred.bin') }),
    error: await agent.client.createJob({ priority: 'foreground', files: file('error.bin', `${origin.url}/missing.bin`) })
  }
  const before: Record<string, JobView> = {}
  for (const [state, job] of Object.entries(jobs)) before[state] = await waitJob(agent.client, job.id, inState(state as JobState))

  await agent.kill('SIGKILL')
  agent = await startAgentProcess(stateDir, args)
  for (const [state, job] of Object.entries(jobs)) {
    const after = await agent.client.getJob(job.id)
    assert.equal(after.state, state, `${state}: ${after.reason ?? ''}`)
    assert.equal(after.bytes.transferred, before[state].bytes.transferred)
  }
  assert.equal((await agent.client.getJob(jobs.queued.id)).reason, 'waiting: 1 higher-priority job')
  const transient = await agent.client.getJob(jobs.transient_error.id)
  assert.equal(transient.retryAt, before.transient_error.retryAt)
  assert.match(transient.reason ?? '', /^origin unreachable \(ECONNREFUSED\), next retry in [\d.]+ min$/)
  assert.equal((await agent.client.getJob(jobs.error.id)).error?.code, 'ERR_HTTP_NOT_FOUND')
  // A job that was moving when the agent died moves again.
  await waitJob(agent.client, stuck.id, inState('connecting'))
})

test('a due retry does not preempt: it waits for a free slot, and says so; canopy jobs shows the reasons', async (t) => {
  const { dir, stuckUrl, refused, agent } = await brokenOrigins(t, ['--max-background-jobs', '1', '--request-timeout', '1h', '--retry-min', '300', '--retry-max', '300'])

  const retrying = await agent.client.createJob({ priority: 'high', files: [{ url: refused, path: join(dir, 'gone.bin') }] })
  await waitJob(agent.client, retrying.id, inState('transient_error'))
  const stuck = await agent.client.createJob({ priority: 'low', files: [{ url: stuckUrl, path: join(dir, 'stuck.bin') }] })
  await waitJob(agent.client, stuck.id, inState('connecting'))
  const due = await waitJob(agent.client, retrying.id, j => j.state === 'transient_error' && j.reason?.endsWith('retry due: waiting for a free slot') === true)
  assert.equal(due.reason, 'origin unreachable (ECONNREFUSED), retry due: waiting for a free slot')
  // The low job keeps its slot (a time slice would hand it over after 5 minutes).
  assert.equal((await agent.client.getJob(stuck.id)).state, 'connecting')
  const waiting = await agent.client.createJob({ priority: 'low', files: [{ url: stuckUrl, path: join(dir, 'other.bin') }] })

  const r = await runCli(['jobs', '--state-dir', agent.stateDir])
  assert.equal(r.code, 0, r.stderr)
  const line = (id: string): string => r.stdout.split('\n').find(l => l.startsWith(id.slice(0, 8))) ?? ''
  assert.match(line(waiting.id), /queued \(waiting: 1 higher-priority job and 1 same-priority job ahead\)/)
  assert.match(line(retrying.id), /origin unreachable \(ECONNREFUSED\)/)
})

test('the no-progress timeout stops a stalled job and one that keeps failing, with ERR_NO_PROGRESS; per job, from the agent\'s default, and from canopy get', async (t) => {
  const { dir, stuckUrl, refused, agent } = await brokenOrigins(t, ['--no-progress-timeout', '2s', '--retry-min', '100', '--retry-max', '200', '--request-timeout', '3600000'])

  const stalled = await agent.client.createJob({ files: [{ url: stuckUrl, path: join(dir, 'stuck.bin') }] })
  assert.equal(stalled.limits.noProgressTimeoutMs, 2000)
  const failing = await agent.client.createJob({ files: [{ url: refused, path: join(dir, 'gone.bin') }], limits: { noProgressTimeoutMs: 1000 } })
  assert.deepEqual(failing.limits, { retryMinMs: 100, retryMaxMs: 200, noProgressTimeoutMs: 1000, maxDownloadTimeMs: 0 })

  const a = await waitJob(agent.client, stalled.id, inState('error', 'acknowledged', 'transferred'))
  assert.equal(a.error?.code, 'ERR_NO_PROGRESS')
  assert.equal(a.reason, 'No progress for 2 s: check the origin and the network, then resume the job')
  const b = await waitJob(agent.client, failing.id, inState('error', 'acknowledged', 'transferred'))
  assert.equal(b.error?.code, 'ERR_NO_PROGRESS')
  assert.match(b.error?.message ?? '', /^No progress for 1 s \(last error: origin unreachable \(ECONNREFUSED\)\)/)

  const r = await runCli(['get', stuckUrl, '-o', join(dir, 'cli.bin'), '--no-progress-timeout', '1s', '--state-dir', agent.stateDir])
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, /ERR_NO_PROGRESS: No progress for 1 s/)
  const bad = await runCli(['get', stuckUrl, '-o', join(dir, 'cli.bin'), '--no-progress-timeout', 'soon', '--state-dir', agent.stateDir])
  assert.equal(bad.code, 2)
})

test('the maximum download time stops a job that makes progress but takes too long, with ERR_MAX_TIME', async (t) => {
  const { dir, origin } = await originWithFile(t, 8 * MiB, 'f.bin', { rateLimit: 256 * KiB, blockSize: 64 * KiB })
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], limits: { maxDownloadTimeMs: 3000 } })
  const failed = await waitJob(agent.client, job.id, inState('error', 'transferred'))
  assert.equal(failed.error?.code, 'ERR_MAX_TIME')
  assert.match(failed.reason ?? '', /^The job did not finish within its maximum download time of 3 s/)
  assert.ok(failed.bytes.transferred > 0 && failed.bytes.transferred < 8 * MiB)
})

test('finished jobs are removed after the retention period (a removed event), and an inactive job is cancelled first', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--retention', '2s', '--inactive-job-timeout', '1s'])
  t.after(async () => await agent.kill())
  const events = await agent.client.watch()
  t.after(async () => await events.close())

  const done = await agent.client.createJob({ priority: 'foreground', autoComplete: true, files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }] })
  const idle = await agent.client.createJob({ start: false, files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'idle.bin') }] })
  const removed = new Set<string>()
  const seen = await readUntil(events, e => {
    if (e.type === 'removed') removed.add(e.jobId)
    return removed.size === 2
  })

  assert.deepEqual([...removed].sort(), [done.id, idle.id].sort())
  assert.equal(statesOf(seen, done.id).at(-1)?.state, 'acknowledged')
  const cancelled = statesOf(seen, idle.id).at(-1)
  assert.equal(cancelled?.state, 'cancelled')
  assert.equal(cancelled?.reason, 'cancelled: not modified for 1 s (the agent\'s inactivity limit)')
  assert.deepEqual(await agent.client.listJobs(), [])
  await assert.rejects(agent.client.getJob(done.id), (err: unknown) => isCanopyError(err, 'ERR_JOB_NOT_FOUND'))
  // Removal is not deletion of the downloaded file.
  assert.ok((await stat(join(dir, 'f.bin'))).isFile())
})

test('the agent\'s clock is injectable: the 90-day inactivity and 7-day retention defaults, without waiting', async (t) => {
  const dir = await tempDir()
  let clock = Date.parse('2026-01-01T00:00:00Z')
  const agent = await startAgent({ stateDir: join(dir, 'agent'), now: () => clock })
  t.after(async () => await agent.stop())
  const request = { start: false, files: [{ url: 'http://127.0.0.1:9/f.bin', path: join(dir, 'f.bin') }] }
  const DAY = 86_400_000

  const old = await agent.createJob(request)
  clock += 89 * DAY
  // Creating a job makes the scheduler look at the deadlines.
  await agent.createJob(request)
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(agent.getJob(old.id).state, 'suspended')
  clock += 2 * DAY
  const cancelled = new Promise(resolve => agent.on('job:state', job => { if (job.id === old.id) resolve(job.state) }))
  await agent.createJob(request)
  assert.equal(await cancelled, 'cancelled')
  assert.equal(agent.getJob(old.id).reason, 'cancelled: not modified for 90 d (the agent\'s inactivity limit)')

  clock += 7 * DAY + 1
  const removed = new Promise(resolve => agent.once('job:removed', resolve))
  await agent.createJob(request)
  assert.equal(await removed, old.id)
  assert.throws(() => agent.getJob(old.id), (err: unknown) => isCanopyError(err, 'ERR_JOB_NOT_FOUND'))
})

test('canopy add puts a second file into a suspended job; after resume both files appear together on complete', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 2 * MiB)
  const second = await randomFile(join(dir, 'root', 'g.bin'), 3 * MiB + 5)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ start: false, files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }] })

  const r = await runCli(['add', job.id, `${origin.url}/g.bin`, '-o', join(dir, 'g.bin'), '--json', '--state-dir', agent.stateDir])
  assert.equal(r.code, 0, r.stderr)
  const added = JSON.parse(r.stdout) as JobView
  assert.equal(added.filesTotal, 2)
  assert.equal(added.state, 'suspended')
  const twice = await runCli(['add', job.id, `${origin.url}/g.bin`, '-o', join(dir, 'g.bin'), '--state-dir', agent.stateDir])
  assert.equal(twice.code, 4)
  assert.match(twice.stderr, /appears twice/)

  await agent.client.resume(job.id)
  const transferred = await waitJob(agent.client, job.id, inState('transferred', 'error'))
  assert.equal(transferred.state, 'transferred', transferred.reason)
  assert.equal(transferred.filesTransferred, 2)
  // Nothing is visible before the job completes.
  for (const name of ['f.bin', 'g.bin']) await assert.rejects(stat(join(dir, name)), { code: 'ENOENT' })
  await agent.client.complete(job.id)
  assert.equal(await fileSha256(join(dir, 'f.bin')), sha256)
  assert.equal(await fileSha256(join(dir, 'g.bin')), second.sha256)

  const late = await runCli(['add', job.id, `${origin.url}/g.bin`, '-o', join(dir, 'h.bin'), '--state-dir', agent.stateDir])
  assert.equal(late.code, 4)
  assert.match(late.stderr, /ERR_INVALID_STATE/)
})

test('limits are checked at creation with stable codes: jobs per agent (409), files per job, URL and name length (400); usage errors in the CLI', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--max-jobs', '2', '--max-files-per-job', '2', '--max-url-length', '60', '--max-name-length', '8'])
  t.after(async () => await agent.kill())
  const url = `${origin.url}/f.bin`
  const file = (name: string, u = url): { url: string, path: string } => ({ url: u, path: join(dir, name) })
  const refused = async (request: Parameters<CanopyClient['createJob']>[0], code: string, status: number): Promise<void> => {
    await assert.rejects(agent.client.createJob(request), (err: unknown) => err instanceof AgentApiError && err.code === code && err.status === status, code)
  }

  await refused({ name: 'much too long', files: [file('a.bin')] }, 'ERR_NAME_TOO_LONG', 400)
  await refused({ files: [file('a.bin'), file('b.bin'), file('c.bin')] }, 'ERR_TOO_MANY_FILES', 400)
  await refused({ files: [file('a.bin', `${url}?${'x'.repeat(60)}`)] }, 'ERR_URL_TOO_LONG', 400)
  const one = await agent.client.createJob({ start: false, files: [file('a.bin'), file('b.bin')] })
  await assert.rejects(agent.client.addFiles(one.id, [file('c.bin')]), (err: unknown) => isCanopyError(err, 'ERR_TOO_MANY_FILES'))
  await agent.client.createJob({ start: false, files: [file('c.bin')] })
  await refused({ start: false, files: [file('d.bin')] }, 'ERR_TOO_MANY_JOBS', 409)
  assert.equal((await agent.client.listJobs()).length, 2)
  // Finished jobs do not count.
  await agent.client.cancel(one.id)
  await agent.client.createJob({ start: false, files: [file('d.bin')] })

  const long = await runCli(['get', `${url}?${'x'.repeat(60)}`, '-o', join(dir, 'e.bin'), '--detach', '--state-dir', agent.stateDir])
  assert.equal(long.code, 2)
  assert.match(long.stderr, /ERR_URL_TOO_LONG/)
  const name = await runCli(['get', url, '-o', join(dir, 'e.bin'), '--name', 'much too long', '--detach', '--state-dir', agent.stateDir])
  assert.equal(name.code, 2)
  assert.match(name.stderr, /ERR_NAME_TOO_LONG/)
})

test('a config file sets the agent\'s defaults (<state-dir>/config.json or --config FILE); a flag wins over it; an unknown key is a usage error', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const stateDir = join(dir, 'agent')
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  await writeFile(join(stateDir, 'config.json'), JSON.stringify({ 'max-jobs': 1, 'no-progress-timeout': '3d', 'max-background-jobs': 3 }))
  const request = (name: string): Parameters<CanopyClient['createJob']>[0] => ({ start: false, files: [{ url: `${origin.url}/f.bin`, path: join(dir, name) }] })

  let agent = await startAgentProcess(stateDir)
  t.after(async () => await agent.kill())
  const first = await agent.client.createJob(request('a.bin'))
  assert.equal(first.limits.noProgressTimeoutMs, 3 * 86_400_000)
  await assert.rejects(agent.client.createJob(request('b.bin')), (err: unknown) => isCanopyError(err, 'ERR_TOO_MANY_JOBS'))
  await agent.kill()

  agent = await startAgentProcess(stateDir, ['--max-jobs', '2'])
  await agent.client.createJob(request('b.bin'))
  assert.equal((await agent.client.getJob(first.id)).limits.noProgressTimeoutMs, 3 * 86_400_000)
  await agent.kill()

  const bad = join(dir, 'bad.json')
  await writeFile(bad, JSON.stringify({ 'max-jobz': 1 }))
  const r = await runCli(['agent', '--state-dir', stateDir, '--no-p2p', '--config', bad])
  assert.equal(r.code, 2)
  assert.match(r.stderr, /unknown option "max-jobz"/)
  await writeFile(bad, JSON.stringify({ retention: 'soon' }))
  const r2 = await runCli(['agent', '--state-dir', stateDir, '--no-p2p', '--config', bad])
  assert.equal(r2.code, 2)
  assert.match(r2.stderr, /"retention": soon in .*bad\.json: "soon" is not a duration/)
  const missing = await runCli(['agent', '--state-dir', stateDir, '--no-p2p', '--config', join(dir, 'none.json')])
  assert.equal(missing.code, 2)
  assert.match(missing.stderr, /cannot read the config file .*none\.json \(ENOENT\)/)
})

test('retention also forgets the manifests that no job and no cached file needs any more', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const run = async (name: string, args: string[]): Promise<{ stateDir: string, manifestId: string }> => {
    const agent = await startAgentProcess(join(dir, name), ['--retention', '1s', ...args])
    t.after(async () => await agent.kill())
    const job = await agent.client.createJob({ priority: 'foreground', autoComplete: true, files: [{ url: `${origin.url}/f.bin`, path: join(dir, `${name}.bin`) }] })
    const done = await agent.client.waitForJob(job.id, { intervalMs: 50, until: ['acknowledged', 'error'] })
    assert.equal(done.state, 'acknowledged', JSON.stringify(done.error))
    while ((await agent.client.listJobs()).length > 0) await new Promise(resolve => setTimeout(resolve, 100))
    await agent.kill()
    return { stateDir: agent.stateDir, manifestId: done.files[0].manifestId! }
  }
  const manifestIn = async (stateDir: string, id: string): Promise<boolean> => {
    const store = new JobStore(join(stateDir, 'db'))
    await store.open()
    try {
      return await store.getManifest(id) !== undefined
    } finally {
      await store.close()
    }
  }
  const plain = await run('no-peers', ['--no-p2p'])
  assert.equal(await manifestIn(plain.stateDir, plain.manifestId), false, 'nothing needs it: forgotten')
  const sharing = await run('sharing', [])
  assert.equal(await manifestIn(sharing.stateDir, sharing.manifestId), true, 'its file is cached for peers, which are served from it')
})
