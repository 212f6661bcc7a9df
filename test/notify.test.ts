// Notifications: commands on completion and on error, and the notify URL, with a
// real origin, real agent processes, a real receiving HTTP server and the real CLI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { isCanopyError } from '@canopy/core'
import type { JobState, JobView } from '@canopy/core'
import { originWithFile, runCli, startAgentProcess } from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

const MiB = 1024 * 1024
/** Quick retries, so that a receiver that fails first costs the test little. */
const FAST_RETRIES = ['--notify-retry-min', '20', '--notify-retry-max', '200']
const TRANSITIONS: JobState[] = ['queued', 'connecting', 'transferring', 'transferred', 'acknowledged']

/** Waits until the agent has no notification left to deliver. */
async function notificationsDelivered (agent: AgentProcess): Promise<void> {
  while ((await agent.client.status()).notifications.pending > 0) await new Promise(resolve => setTimeout(resolve, 50))
}

interface Delivery { id: string, state: JobState, job: JobView }

/** A notify-URL receiver on 127.0.0.1 port 0 that answers 503 while `failing()` says so. */
async function receiver (t: { after: (fn: () => Promise<void>) => void }, failing: (n: number) => boolean): Promise<{ url: string, delivered: Delivery[], requests: () => number }> {
  const delivered: Delivery[] = []
  let requests = 0
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      requests++
      if (failing(requests)) {
        res.writeHead(503).end()
        return
      }
      assert.equal(req.method, 'POST')
      assert.equal(req.headers['content-type'], 'application/json')
      const job = JSON.parse(Buffer.concat(chunks).toString('utf8')) as JobView
      delivered.push({ id: String(req.headers['x-canopy-delivery']), state: job.state, job })
      res.writeHead(204).end()
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?from=canopy`, delivered, requests: () => requests }
}

test('--on-complete runs once, with the job in its environment and never in its command line; --on-error does not run', async (t) => {
  const { dir, origin } = await originWithFile(t, 2 * MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const log = join(dir, 'complete.log')
  const pwned = join(dir, 'pwned')
  const dest = join(dir, 'out.bin')

  const r = await runCli(['get', `${origin.url}/f.bin`, '-o', dest, '--json', '--state-dir', agent.stateDir,
    // A name that a shell would run if job data ever reached one.
    '--name', `$(touch ${pwned})`,
    '--on-complete', `printf '%s|%s|%s|%s|%s|%s\\n' "$CANOPY_JOB_ID" "$CANOPY_JOB_STATE" "$CANOPY_JOB_NAME" "$CANOPY_JOB_PATH" "$CANOPY_NOTIFY_ID" "$CANOPY_STATE_DIR" >> ${log}`,
    '--on-error', `touch ${join(dir, 'error-ran')}`])
  assert.equal(r.code, 0, r.stderr)
  const job = JSON.parse(r.stdout) as JobView
  assert.deepEqual(job.notify?.onComplete?.slice(0, 2), ['/bin/sh', '-c'])
  await notificationsDelivered(agent)

  const lines = (await readFile(log, 'utf8')).trim().split('\n')
  assert.deepEqual(lines, [[job.id, 'acknowledged', `$(touch ${pwned})`, dest, `${job.id}:5`, agent.stateDir].join('|')])
  assert.equal(existsSync(pwned), false)
  assert.equal(existsSync(join(dir, 'error-ran')), false)
})

test('--on-error runs for a 404 with the error code; a failing command is logged and changes nothing', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const log = join(dir, 'error.log')

  const r = await runCli(['get', `${origin.url}/missing.bin`, '-o', join(dir, 'missing.bin'), '--state-dir', agent.stateDir,
    '--on-error', `echo "$CANOPY_JOB_STATE $CANOPY_JOB_ERROR_CODE" >> ${log}; echo 'something broke' >&2; exit 3`])
  assert.equal(r.code, 1, r.stderr)
  await notificationsDelivered(agent)

  assert.equal(await readFile(log, 'utf8'), 'error ERR_HTTP_NOT_FOUND\n')
  assert.match(agent.stderr(), /notification command failed .*reason="exit code 3; output: something broke"/)
  // The agent goes on as before.
  assert.equal((await agent.client.status()).jobs.error, 1)
})

test('the notify URL gets one POST per transition, in order, when the receiver fails first and recovers; a restart does not repeat them', async (t) => {
  const { dir, origin } = await originWithFile(t, 3 * MiB)
  const hook = await receiver(t, n => n <= 3)
  let agent = await startAgentProcess(join(dir, 'agent'), FAST_RETRIES)
  t.after(async () => await agent.kill())

  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true, notify: { url: hook.url } })
  await agent.client.waitForJob(job.id, { intervalMs: 50, until: ['acknowledged'] })
  await notificationsDelivered(agent)

  assert.deepEqual(hook.delivered.map(d => d.state), TRANSITIONS)
  assert.deepEqual(hook.delivered.map(d => d.id), TRANSITIONS.map((_, i) => `${job.id}:${i + 1}`))
  assert.equal(hook.requests(), TRANSITIONS.length + 3)
  const last = hook.delivered.at(-1)!.job
  assert.equal(last.id, job.id)
  assert.equal(last.bytes.transferred, 3 * MiB)
  assert.equal(last.notify, undefined, 'the job\'s notification settings are not sent to the receiver')

  // kill -9 once everything is delivered: the restarted agent owes nothing.
  await agent.kill('SIGKILL')
  agent = await startAgentProcess(join(dir, 'agent'), FAST_RETRIES)
  await notificationsDelivered(agent)
  assert.equal(hook.requests(), TRANSITIONS.length + 3)
})

test('notifications recorded while the receiver is down survive a restart and are delivered once each', async (t) => {
  const { dir, origin } = await originWithFile(t, 2 * MiB)
  let down = true
  const hook = await receiver(t, () => down)
  // Retries far apart, so that the notifications are still pending when the agent stops.
  let agent = await startAgentProcess(join(dir, 'agent'), ['--notify-retry-min', '3600000', '--notify-retry-max', '3600000'])
  t.after(async () => await agent.kill())

  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true, notify: { url: hook.url } })
  await agent.client.waitForJob(job.id, { intervalMs: 50, until: ['acknowledged'] })
  // Every transition was tried once (queued first; the others wait behind it, in order).
  assert.equal((await agent.client.status()).notifications.pending, TRANSITIONS.length)
  assert.equal(hook.delivered.length, 0)

  await agent.kill('SIGTERM')
  down = false
  agent = await startAgentProcess(join(dir, 'agent'), FAST_RETRIES)
  await notificationsDelivered(agent)
  assert.deepEqual(hook.delivered.map(d => d.state), TRANSITIONS)
  assert.deepEqual(hook.delivered.map(d => d.id), TRANSITIONS.map((_, i) => `${job.id}:${i + 1}`))
})

/** Whether a process is gone (or a zombie nobody reaped yet: it no longer runs). */
function gone (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return true
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') === true
  } catch {
    return true
  }
}

test('a hanging command is killed after its timeout, with the processes it started, and logged', { skip: process.platform === 'win32' }, async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--notify-command-timeout', '300'])
  t.after(async () => await agent.kill())
  const pidFile = join(dir, 'sleep.pid')

  const r = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'f.bin'), '--state-dir', agent.stateDir,
    '--on-complete', `sleep 600 & echo $! > ${pidFile}; wait`])
  assert.equal(r.code, 0, r.stderr)
  await notificationsDelivered(agent)
  assert.match(agent.stderr(), /notification command failed .*reason="still running after 300 ms: killed"/)
  const pid = Number(await readFile(pidFile, 'utf8'))
  // SIGTERM went to the command's whole process group; wait for it to land.
  while (!gone(pid)) await new Promise(resolve => setTimeout(resolve, 20))
})

test('bad notification settings are refused at creation: ERR_INVALID_REQUEST, and usage errors in the CLI', async (t) => {
  const { dir, origin } = await originWithFile(t, MiB)
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const files = [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }]
  for (const notify of [{ onComplete: 'touch /tmp/x' }, { onError: [] }, { onComplete: [''] }, { url: 'ftp://example.com/' }, { url: 'not a url' }, 'yes']) {
    await assert.rejects(agent.client.createJob({ files, notify: notify as never }), (err: unknown) => isCanopyError(err, 'ERR_INVALID_REQUEST'), JSON.stringify(notify))
  }
  assert.equal((await agent.client.listJobs()).length, 0)
  for (const args of [['--notify-url', 'ftp://example.com/'], ['--on-complete', ' ']]) {
    const r = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'f.bin'), '--state-dir', agent.stateDir, ...args])
    assert.equal(r.code, 2, args.join(' '))
  }
})
