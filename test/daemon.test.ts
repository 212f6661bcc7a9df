// The daemons as an operator runs them: a second agent on a directory in use,
// reloading on SIGHUP, and JSON log lines.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

test('a second agent on a state directory in use exits non-zero at once, naming the directory', async () => {
  const stateDir = await tempDir()
  const first = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    // Before the fix the second agent printed its error and then never exited: its
    // hashing threads kept it alive and its SIGTERM handler swallowed SIGTERM. runCli's
    // bound (SIGKILL after it) turns that hang into a failure instead of a stuck run.
    const second = await runCli(['agent', '--state-dir', stateDir, '--no-p2p'], { timeoutMs: 60_000 })
    assert.equal(second.signal, null, `the second agent did not exit by itself: ${second.stderr}`)
    assert.notEqual(second.code, 0)
    assert.match(second.stderr, /ERR_AGENT_ALREADY_RUNNING/)
    assert.ok(second.stderr.includes(stateDir), second.stderr)
    // The first one is unharmed.
    assert.equal((await first.client.status()).stateDir, stateDir)
  } finally {
    await first.kill()
  }
})
