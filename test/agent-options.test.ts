// The agent's options come from one table (AGENT_OPTION_TABLE): every flag, the
// switches, the log level and the API listener included, can be set in the config
// file, and is checked there as on the command line.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { AGENT_OPTION_TABLE } from '@canopy/agent/options'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

test('every option of the table is a flag of canopy agent and, but --config, a key of its config file', async () => {
  const help = (await runCli(['agent', '--help'])).stdout
  const keys: Record<string, unknown> = {}
  for (const o of AGENT_OPTION_TABLE) {
    if (o.name === undefined) continue
    assert.ok(help.includes(`--${o.name}`), `--${o.name} is in the help`)
    if (o.flagOnly !== true) keys[o.name] = o.kind === 'switch' ? false : o.kind === 'list' ? [] : '1'
  }
  // Keys are read in order and the first unknown one is refused: every key before it was taken.
  const dir = await tempDir()
  const file = join(dir, 'all.json')
  await writeFile(file, JSON.stringify({ ...keys, 'no-such-option': 1 }))
  const r = await runCli(['agent', '--state-dir', join(dir, 'state'), '--config', file])
  assert.equal(r.code, 2, r.stderr)
  assert.match(r.stderr, /unknown option "no-such-option"/)
  await writeFile(file, JSON.stringify({ config: 'x.json' }))
  assert.match((await runCli(['agent', '--state-dir', join(dir, 'state'), '--config', file])).stderr, /unknown option "config"/)
})

test('the config file sets the switches, the log level and the API listener; bad values are usage errors', async (t) => {
  const dir = await tempDir()
  const stateDir = join(dir, 'agent')
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  await writeFile(join(dir, 'token'), 'sekrit-token-of-the-test\n', { mode: 0o600 })
  await writeFile(join(stateDir, 'config.json'), JSON.stringify({
    'no-mdns': true,
    'log-level': 'warn',
    'api-listen': '127.0.0.1:0',
    'api-token-file': join(dir, 'token')
  }))
  // The helper turns mDNS off through CANOPY_MDNS; unset here, the file must do it.
  const agent = await startAgentProcess(stateDir, [], { CANOPY_MDNS: '' })
  t.after(async () => await agent.kill())
  const status = await agent.client.status()
  assert.equal(status.peer?.mdns, false)
  assert.match(status.apiTcp ?? '', /^127\.0\.0\.1:\d+$/)
  // At warn, the agent's info lines are not written.
  assert.doesNotMatch(agent.stderr(), / info /)

  const bad = join(dir, 'bad.json')
  for (const [config, message] of [
    [{ 'no-mdns': 'yes' }, /"no-mdns" must be true or false/],
    [{ 'log-level': 'loud' }, /log level "loud" is not one of debug, info, warn, error \(from .*bad\.json\)/],
    [{ 'p2p-port': 70000 }, /"p2p-port": 70000 in .*bad\.json: must be at most 65535/],
    [{ 'api-listen': '127.0.0.1:0' }, /--api-listen needs --api-token-file/]
  ] as const) {
    await writeFile(bad, JSON.stringify(config))
    const r = await runCli(['agent', '--state-dir', join(dir, 'other'), '--config', bad])
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, message)
  }
})
