// The daemons as an operator runs them: a second agent on a directory in use,
// reloading on SIGHUP, and JSON log lines.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { originWithFile, runCli, startAgentProcess, tempDir } from './helpers.ts'
import type { AgentProcess } from './helpers.ts'

test('a second agent on a state directory in use exits non-zero at once, naming the directory', async () => {
  const stateDir = await tempDir()
  const first = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    // Before the fix the second agent printed its error and then never exited: its
    // hashing threads kept it alive and its SIGTERM handler swallowed SIGTERM. runCli's
    // bound (SIGKILL after it) turns that hang into a failure instead of a stuck run.
    const second = await runCli(['agent', '--state-dir', stateDir, '--no-p2p'], { timeoutMs: 60_000 })
    assert.equal(second.signal, null, `the second agent did not exit by itself: ${second.stderr}`)
    assert.equal(second.code, 4, `exit code ${second.code}`)
    assert.match(second.stderr, /ERR_AGENT_ALREADY_RUNNING/)
    assert.ok(second.stderr.includes(stateDir), second.stderr)
    assert.match(second.stderr, /Another Canopy agent is using this state directory/)
    // The first one is unharmed.
    assert.equal((await first.client.status()).stateDir, stateDir)
  } finally {
    await first.kill()
  }
})

test('--log-format json: every line is a JSON object, and every line about a job has its id', async (t) => {
  const { origin } = await originWithFile(t, 3 * 1024 * 1024 + 5)
  const stateDir = await tempDir()
  const out = await tempDir()
  const agent = await startAgentProcess(stateDir, ['--log-format', 'json', '--log-level', 'debug'])
  let job
  try {
    job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(out, 'f.bin') }], autoComplete: true })
    job = await agent.client.waitForJob(job.id)
    assert.equal(job.state, 'acknowledged', JSON.stringify(job.error))
  } finally {
    await agent.kill()
  }
  const lines = agent.stderr().trimEnd().split('\n').map(line => {
    try {
      return JSON.parse(line) as Record<string, unknown>
    } catch {
      return assert.fail(`not a JSON line: ${line}`)
    }
  })
  for (const l of lines) {
    assert.equal(typeof l.time, 'string')
    assert.ok(['debug', 'info', 'warn', 'error'].includes(l.level as string), JSON.stringify(l))
    assert.equal(typeof l.msg, 'string')
  }
  assert.ok(lines.some(l => l.msg === 'agent started'))
  // A line is about the job when any of its values names the job, its file or its URL.
  const names = [job.id, join(out, 'f.bin'), `${origin.url}/f.bin`]
  const aboutTheJob = lines.filter(l => Object.values(l).some(v => typeof v === 'string' && names.some(n => v.includes(n))))
  assert.ok(aboutTheJob.length >= 2, `lines about the job: ${JSON.stringify(lines)}`)
  for (const l of aboutTheJob) assert.equal(l.jobId, job.id, JSON.stringify(l))
})

test('SIGHUP reloads the config file: the log level and format change at once; other changes wait for a restart', async () => {
  const stateDir = await tempDir()
  const config = join(await tempDir(), 'agent.json')
  // At warn, the reload's info line is written only if the new level applies first.
  await writeFile(config, JSON.stringify({ 'log-level': 'warn', 'log-format': 'logfmt' }))
  const agent = await startAgentProcess(stateDir, ['--no-p2p', '--config', config], { CANOPY_LOG_LEVEL: '', CANOPY_LOG_FORMAT: '' })
  try {
    assert.doesNotMatch(agent.stderr(), / info {2}agent started/, 'the config file\'s level applies at start')
    await writeFile(config, JSON.stringify({ 'log-level': 'debug', 'log-format': 'json', 'max-jobs': 5 }))
    agent.child.kill('SIGHUP')
    const reloaded = await waitForLine(agent, /"msg":"configuration reloaded"/)
    assert.equal(reloaded.logLevel, 'debug')
    assert.equal(reloaded.logFormat, 'json')
    assert.equal(reloaded.configPath, config)
    const waiting = await waitForLine(agent, /take effect at the next restart/)
    assert.equal(waiting.options, 'max-jobs')
    // A broken file keeps the running settings, and the agent.
    await writeFile(config, '{ not json')
    agent.child.kill('SIGHUP')
    const failed = await waitForLine(agent, /"msg":"reload failed/)
    assert.equal(failed.level, 'error')
    assert.equal((await agent.client.status()).stateDir, stateDir)
  } finally {
    await agent.kill()
  }
  assert.equal(agent.child.exitCode, 0, agent.stderr())
})

test('under systemd (NOTIFY_SOCKET) the agent reports READY=1 once its socket answers', { skip: notifySkip() }, async () => {
  const stateDir = await tempDir()
  const socket = join(await tempDir(), 'notify.sock')
  // A real datagram socket standing in for systemd's (Node.js has none for Unix datagrams).
  const receiver = spawn('python3', ['-c', `import socket,sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print('bound', flush=True)
while True:
    print(s.recv(4096).decode().replace('\\n', ' '), flush=True)`, socket], { stdio: ['ignore', 'pipe', 'inherit'] })
  let received = ''
  receiver.stdout.setEncoding('utf8').on('data', (d: string) => { received += d })
  try {
    while (!received.includes('bound')) await new Promise(resolve => setTimeout(resolve, 50))
    const agent = await startAgentProcess(stateDir, ['--no-p2p'], { NOTIFY_SOCKET: socket })
    try {
      while (!received.includes('READY=1')) {
        assert.equal(agent.child.exitCode, null, agent.stderr())
        await new Promise(resolve => setTimeout(resolve, 50))
      }
      assert.match(received, new RegExp(`READY=1 STATUS=listening on ${join(stateDir, 'agent.sock')}`))
    } finally {
      await agent.kill()
    }
  } finally {
    receiver.kill()
  }
})

function notifySkip (): string | false {
  for (const tool of ['python3', 'systemd-notify']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`
  }
  return false
}

/** Waits for a JSON log line of the agent that matches `pattern`; bounded by the test's timeout. */
async function waitForLine (agent: AgentProcess, pattern: RegExp): Promise<Record<string, unknown>> {
  for (;;) {
    const line = agent.stderr().split('\n').find(l => pattern.test(l))
    if (line !== undefined) return JSON.parse(line) as Record<string, unknown>
    assert.equal(agent.child.exitCode, null, agent.stderr())
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
