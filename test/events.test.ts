// The live event stream (GET /v1/events) through the client and `canopy watch`,
// and live priority changes: a real origin, real agent processes, the real CLI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import { isCanopyError } from '@canopy/core'
import type { AgentEvent, JobState, JobView } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import { CanopyClient } from '@canopy/client'
import { CLI, originWithFile, readUntil, runCli, stalledOrigin, startAgentProcess, tempDir } from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

const MiB = 1024 * 1024

const jobOf = (e: AgentEvent): JobView | undefined => e.type === 'removed' ? undefined : e.job
const statesOf = (events: AgentEvent[], id: string): JobState[] =>
  events.filter(e => e.type === 'state' && e.job.id === id).map(e => jobOf(e)!.state)

test('the event stream delivers a job\'s transitions in order, and progress never goes back', async (t) => {
  const { dir, origin } = await originWithFile(t, 6 * MiB + 17)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())

  const events = await agent.client.watch()
  t.after(async () => await events.close())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  const seen = await readUntil(events, e => jobOf(e)?.id === job.id && jobOf(e)?.state === 'acknowledged')

  assert.deepEqual(statesOf(seen, job.id), ['queued', 'connecting', 'transferring', 'transferred', 'acknowledged'])
  // The job was created after the stream opened: no snapshot of it.
  assert.equal(seen.filter(e => e.type === 'snapshot').length, 0)
  const bytes = seen.filter(e => jobOf(e)?.id === job.id).map(e => jobOf(e)!.bytes.transferred)
  assert.deepEqual(bytes, [...bytes].sort((a, b) => a - b))
  const last = jobOf(seen.at(-1)!)!
  assert.equal(last.bytes.transferred, 6 * MiB + 17)
})

test('a stream filtered to one job carries only that job, starting with its snapshot; an unknown job is ERR_JOB_NOT_FOUND', async (t) => {
  const { dir, origin } = await originWithFile(t, 2 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())

  const watched = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'a.bin') }], autoComplete: true, start: false })
  const events = await agent.client.watch({ jobId: watched.id })
  t.after(async () => await events.close())
  // Another job runs from start to end while the stream is open, before the watched one moves.
  const other = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'b.bin') }], autoComplete: true })
  assert.equal((await agent.client.waitForJob(other.id, { intervalMs: 50, until: ['acknowledged'] })).state, 'acknowledged')
  await agent.client.resume(watched.id)
  const seen = await readUntil(events, e => jobOf(e)?.state === 'acknowledged')

  assert.equal(seen[0].type, 'snapshot')
  assert.equal(jobOf(seen[0])?.state, 'suspended')
  assert.deepEqual(seen.filter(e => jobOf(e)?.id !== watched.id), [])
  assert.deepEqual(statesOf(seen, watched.id), ['queued', 'connecting', 'transferring', 'transferred', 'acknowledged'])

  await assert.rejects(agent.client.watch({ jobId: 'no-such-job' }), (err: unknown) => isCanopyError(err, 'ERR_JOB_NOT_FOUND'))
})

test('closing an event stream releases the agent\'s listeners; stopping the agent ends streams with ERR_EVENTS_ENDED', async (t) => {
  const dir = await tempDir()
  const agent = await startAgent({ stateDir: join(dir, 'agent') })
  let stopped = false
  t.after(async () => { if (!stopped) await agent.stop() })
  const client = new CanopyClient({ stateDir: join(dir, 'agent') })
  t.after(async () => await client.close())

  // The agent's own listeners (its metrics count bytes from job events) are not the streams'.
  const own = agent.listenerCount('job:state')
  const first = await client.watch()
  const second = await client.watch()
  assert.equal(agent.listenerCount('job:state'), own + 2)
  await first.close()
  // The agent learns of the close when the socket closes; wait for it, without a deadline of our own.
  while (agent.listenerCount('job:state') !== own + 1) await new Promise(resolve => setImmediate(resolve))
  assert.equal(agent.listenerCount('job:progress'), own + 1)

  const ended = assert.rejects(readUntil(second, () => false), (err: unknown) => isCanopyError(err, 'ERR_EVENTS_ENDED'))
  stopped = true
  await agent.stop()
  await ended
  assert.equal(agent.listenerCount('job:state'), 0)
})

test('canopy watch <id> prints the job\'s transitions and exits 0 when it completes; --json exits 1 on a 404', async (t) => {
  const { dir, origin } = await originWithFile(t, 3 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true, start: false })

  // Resume only once watch has the snapshot, so that it sees every transition.
  const watch = await watchProcess(t, agent, [job.id], 'now suspended')
  await agent.client.resume(job.id)
  assert.equal(await watch.exited, 0, watch.stderr())
  const lines = watch.stdout().trim().split('\n')
  assert.match(lines[0], new RegExp(`^\\d\\d:\\d\\d:\\d\\dZ  ${job.id.slice(0, 8)}  f\\.bin  now suspended`))
  const transitions = lines.filter(l => l.includes(' -> ')).map(l => l.split(' -> ')[1].split(' ')[0])
  assert.deepEqual(transitions, ['queued', 'connecting', 'transferring', 'transferred', 'acknowledged'])

  const missing = await agent.client.createJob({ files: [{ url: `${origin.url}/missing.bin`, path: join(dir, 'm.bin') }], autoComplete: true })
  const r = await runCli(['watch', missing.id, '--json', '--state-dir', agent.stateDir])
  assert.equal(r.code, 1, r.stderr)
  const events = r.stdout.trim().split('\n').map(l => JSON.parse(l) as AgentEvent)
  const last = events.at(-1)!
  assert.ok(last.type === 'state' || last.type === 'snapshot')
  assert.equal(last.job.state, 'error')
  assert.equal(last.job.error?.code, 'ERR_HTTP_NOT_FOUND')
})

/** Spawns `canopy watch ...args` and resolves once its stdout shows `ready` (so it is connected). */
async function watchProcess (t: { after: (fn: () => void) => void }, agent: AgentProcess, args: string[], ready: string): Promise<{ exited: Promise<number | null>, stdout: () => string, stderr: () => string, child: ReturnType<typeof spawn> }> {
  const child = spawn(process.execPath, [CLI, 'watch', ...args, '--state-dir', agent.stateDir], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => { child.kill('SIGKILL') })
  let stdout = ''
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const exited = new Promise<number | null>(resolve => child.on('close', resolve))
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
      if (stdout.includes(ready)) resolve()
    })
    void exited.then(code => reject(new Error(`watch exited ${code} before "${ready}": ${stderr}`)))
  })
  return { exited, stdout: () => stdout, stderr: () => stderr, child }
}

test('canopy watch without an id runs until Ctrl-C (exit 130) and leaves the jobs alone', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], start: false })
  const watch = await watchProcess(t, agent, [], 'now suspended')
  watch.child.kill('SIGINT')
  assert.equal(await watch.exited, 130, watch.stderr())
  assert.equal((await agent.client.getJob(job.id)).state, 'suspended')
})

/** A raw event-stream connection that reads nothing until told to. */
async function rawEvents (socketPath: string): Promise<{ socket: Socket, text: () => string, closed: Promise<void> }> {
  const socket = connect(socketPath)
  let text = ''
  socket.setEncoding('utf8')
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  await new Promise<void>(resolve => {
    socket.on('data', (d: string) => {
      text += d
      if (text.includes('\r\n\r\n')) resolve()
    })
    socket.write('GET /v1/events HTTP/1.1\r\nHost: agent\r\n\r\n')
  })
  socket.pause()
  return { socket, text: () => text, closed }
}

test('a client that does not read loses progress events, never state events, and is cut off before the agent buffers without bound', async (t) => {
  const dir = await tempDir()
  const agent = await startAgent({ stateDir: join(dir, 'agent') })
  t.after(async () => await agent.stop())
  const job = await agent.createJob({ files: [{ url: 'http://127.0.0.1:9/f.bin', path: join(dir, 'f.bin') }], start: false })
  const view = agent.getJob(job.id)
  // The agent's own listeners (its metrics) are not the streams'.
  const own = agent.listenerCount('job:state')

  // Slow: 20,000 progress events (about 12 MB) while it reads nothing.
  const slow = await rawEvents(agent.socketPath)
  for (let i = 0; i < 20_000; i++) agent.emit('job:progress', { ...view, bytes: { ...view.bytes, transferred: i } })
  slow.socket.resume()
  // The latest progress, held back, goes out once the client reads again.
  while (!slow.text().includes('"transferred":19999')) await new Promise(resolve => setImmediate(resolve))
  const progress = slow.text().match(/event: progress\n/g)?.length ?? 0
  assert.ok(progress < 20_000, `${progress} progress events`)
  slow.socket.pause()
  for (const state of ['queued', 'connecting', 'transferring'] as const) agent.emit('job:state', { ...view, state })
  slow.socket.resume()
  while (!slow.text().includes('"state":"transferring"')) await new Promise(resolve => setImmediate(resolve))
  assert.deepEqual([...slow.text().matchAll(/event: state\ndata: .*?"state":"(\w+)"/g)].map(m => m[1]), ['queued', 'connecting', 'transferring'])
  slow.socket.destroy()

  // Stuck: state events only, past the 8 MiB the agent keeps for one client: cut off, listeners gone.
  const stuck = await rawEvents(agent.socketPath)
  for (let i = 0; i < 20_000; i++) agent.emit('job:state', { ...view, name: `${i}` })
  stuck.socket.resume()
  await stuck.closed
  while (agent.listenerCount('job:state') !== own) await new Promise(resolve => setImmediate(resolve))
})

test('canopy set --priority changes a queued job\'s priority live: raised to foreground, it starts at once', async (t) => {
  const { dir, origin } = await originWithFile(t, 2 * MiB)
  // An origin that accepts connections and never answers: the job on it holds the one background slot.
  const stuckUrl = `${await stalledOrigin(t)}/stuck.bin`
  const agent = await startAgentProcess(join(dir, 'agent'), ['--max-background-jobs', '1', '--request-timeout', '3600000'])
  t.after(async () => await agent.kill())

  const stuck = await agent.client.createJob({ files: [{ url: stuckUrl, path: join(dir, 'stuck.bin') }], priority: 'high', autoComplete: true })
  await agent.client.waitForJob(stuck.id, { intervalMs: 50, until: ['connecting'] })
  const waiting = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], priority: 'low', autoComplete: true })
  const events = await agent.client.watch({ jobId: waiting.id })
  t.after(async () => await events.close())
  const queued = await agent.client.getJob(waiting.id)
  assert.equal(queued.state, 'queued')
  assert.equal(queued.reason, 'waiting: 1 higher-priority job')

  const r = await runCli(['set', waiting.id, '--priority', 'foreground', '--json', '--state-dir', agent.stateDir])
  assert.equal(r.code, 0, r.stderr)
  assert.equal((JSON.parse(r.stdout) as JobView).priority, 'foreground')
  const seen = await readUntil(events, e => jobOf(e)?.state === 'acknowledged')
  const updated = seen.find(e => e.type === 'updated')
  assert.equal(updated?.type === 'updated' ? updated.job.priority : undefined, 'foreground')
  assert.deepEqual(statesOf(seen, waiting.id), ['connecting', 'transferring', 'transferred', 'acknowledged'])
  // The stuck job still holds its slot: the low job could only have run as foreground.
  assert.equal((await agent.client.getJob(stuck.id)).state, 'connecting')
  await agent.client.cancel(stuck.id)

  const bad = await runCli(['set', waiting.id, '--state-dir', agent.stateDir])
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /give --priority/)
  const final = await runCli(['set', waiting.id, '--priority', 'low', '--state-dir', agent.stateDir])
  assert.equal(final.code, 4)
  assert.match(final.stderr, /ERR_INVALID_STATE/)
})
