// One agent per state directory: a second one is refused with a message that says so,
// and exits (a failed start used to leave its hashing workers running: it never exited).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { LOOPBACK_P2P, runCli, startAgentProcess, tempDir } from './helpers.ts'

test('a second agent on the same state directory is refused (the store\'s lock, found down the cause chain) and exits', async (t) => {
  const stateDir = join(await tempDir(), 'agent')
  const first = await startAgentProcess(stateDir)
  t.after(async () => await first.kill())
  const second = await runCli(['agent', '--state-dir', stateDir, ...LOOPBACK_P2P], { timeoutMs: 60_000 })
  assert.equal(second.code, 4, `exit code ${second.code} (null: it did not exit by itself and was killed)`)
  assert.match(second.stderr, /Another Canopy agent is using this state directory/)
})
