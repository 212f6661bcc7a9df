// What a new user ran into with the CLI, each fixed and checked with real processes:
// a real agent, real origins, the real `canopy` binary.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { startOrigin } from '@canopy/origin'
import { FINISHED, originWithFile, randomFile, refusingOrigin, runCli, startAgentProcess, tempDir } from './helpers.ts'

test('get against a dead origin says why it waits, and --retry-timeout makes it fail fast with the cause', async (t) => {
  const dir = await tempDir()
  const agent = await startAgentProcess(join(dir, 'agent'), ['--no-p2p'])
  t.after(async () => await agent.kill())
  const got = await runCli(['get', `${await refusingOrigin()}/x.bin`, '-o', join(dir, 'x.bin'), '--retry-timeout', '3s', '--retry-min', '500ms', '--state-dir', agent.stateDir])
  assert.equal(got.code, 1, got.stderr)
  // Not a terminal: one line per cause of waiting, with the state and the next retry.
  assert.match(got.stderr, /canopy: job \S+: transient_error \(origin unreachable \(ECONNREFUSED\), next retry in /)
  assert.match(got.stderr, /failed: ERR_NO_PROGRESS: No progress for 3 s \(last error: origin unreachable \(ECONNREFUSED\)\)/)
  const both = await runCli(['get', 'http://127.0.0.1:9/x', '--retry-timeout', '3s', '--no-progress-timeout', '1m', '--state-dir', agent.stateDir])
  assert.equal(both.code, 2)
  assert.match(both.stderr, /not both/)
})

test('an origin that refuses the credentials: get says to create the job again with them, not to resume', async (t) => {
  const dir = await tempDir()
  await mkdir(join(dir, 'root'))
  await randomFile(join(dir, 'root', 'f.bin'), 4096)
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin-state'), tokens: ['right-token'] })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgentProcess(join(dir, 'agent'), ['--no-p2p'])
  t.after(async () => await agent.kill())
  const got = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'f.bin'), '--state-dir', agent.stateDir])
  assert.equal(got.code, 1, got.stderr)
  assert.match(got.stderr, /ERR_HTTP_FORBIDDEN/)
  assert.match(got.stderr, /created with no credentials\): resuming cannot change that/)
  assert.match(got.stderr, /canopy cancel \S+` and run canopy get again with --bearer-token-file F/)
  assert.doesNotMatch(got.stderr, /canopy resume/)
  await writeFile(join(dir, 'token'), 'right-token\n')
  const again = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'f.bin'), '--bearer-token-file', join(dir, 'token'), '--state-dir', agent.stateDir])
  assert.equal(again.code, 0, again.stderr)
})

test('remote admin with --url and --token-file; errors name the client\'s flag or variable', async (t) => {
  const dir = await tempDir()
  const tokenFile = join(dir, 'api.token')
  await writeFile(tokenFile, 'friction-remote-token\n', { mode: 0o600 })
  await writeFile(join(dir, 'wrong.token'), 'not-the-token\n')
  const agent = await startAgentProcess(join(dir, 'agent'), ['--no-p2p', '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile])
  t.after(async () => await agent.kill())
  const url = `http://${(await agent.client.status()).apiTcp!}`
  const elsewhere = join(dir, 'nowhere')

  const ok = await runCli(['status', '--json', '--url', url, '--token-file', tokenFile, '--state-dir', elsewhere])
  assert.equal(ok.code, 0, ok.stderr)
  const noFile = await runCli(['jobs', '--url', url, '--token-file', join(dir, 'missing'), '--state-dir', elsewhere])
  assert.equal(noFile.code, 2)
  assert.match(noFile.stderr, /--token-file .*missing: no such file/)
  assert.doesNotMatch(noFile.stderr, /canopy agent --help/)
  const wrong = await runCli(['jobs', '--url', url, '--token-file', join(dir, 'wrong.token'), '--state-dir', elsewhere])
  assert.equal(wrong.code, 4)
  assert.match(wrong.stderr, /refused the token of --token-file/)
  const wrongEnv = await runCli(['jobs', '--state-dir', elsewhere], { env: { CANOPY_AGENT_URL: url, CANOPY_API_TOKEN_FILE: join(dir, 'wrong.token') } })
  assert.match(wrongEnv.stderr, /\(CANOPY_AGENT_URL\) refused the token of CANOPY_API_TOKEN_FILE/)
  const none = await runCli(['jobs', '--url', url, '--state-dir', elsewhere])
  assert.match(none.stderr, /needs its token: give the file that holds it with --token-file F/)
  const badUrl = await runCli(['jobs', '--url', 'ftp://x', '--state-dir', elsewhere])
  assert.equal(badUrl.code, 2)
  assert.match(badUrl.stderr, /--url ftp:\/\/x: give the agent's TCP listener as http:\/\/HOST:PORT/)
  const tokenAlone = await runCli(['jobs', '--token-file', tokenFile, '--state-dir', elsewhere])
  assert.equal(tokenAlone.code, 2)
  assert.match(tokenAlone.stderr, /--token-file goes with --url/)

  // canopy dashboard for a remote agent: the URL with its token after "#".
  const dashboard = await runCli(['dashboard', '--url', url, '--token-file', tokenFile])
  assert.equal(dashboard.code, 0, dashboard.stderr)
  assert.equal(dashboard.stdout, `${url}/dashboard/#token=friction-remote-token\n`)
  const page = await fetch(`${url}/dashboard/`)
  assert.equal(page.status, 200)
  assert.match(await page.text(), /<title>Canopy agent<\/title>/)
})

test('the cache lists names, sizes, last use and source; cache clear lists what it removed; short ids name the minimum', async (t) => {
  const size = 2 * 1024 * 1024 + 5
  const { dir, origin } = await originWithFile(t, size, 'tools-1.2.bin')
  const agent = await startAgentProcess(join(dir, 'agent'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `${origin.url}/tools-1.2.bin`, path: join(dir, 'mine.bin') }], autoComplete: true })
  assert.equal((await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })).state, 'acknowledged')

  const cache = await runCli(['cache', '--state-dir', agent.stateDir])
  assert.equal(cache.code, 0, cache.stderr)
  assert.match(cache.stdout, /^NAME +SIZE +LAST USED +ADDED +SOURCE$/m)
  assert.match(cache.stdout, new RegExp(`^mine\\.bin +2\\.0 MiB +\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ +\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ +${origin.url}/tools-1\\.2\\.bin$`, 'm'))
  const cleared = await runCli(['cache', 'clear', '--state-dir', agent.stateDir])
  assert.equal(cleared.code, 0, cleared.stderr)
  assert.match(cleared.stdout, /^mine\.bin +2\.0 MiB +bag\w+$/m)
  assert.match(cleared.stdout, /^freed 2\.0 MiB; 0 B of /m)
  assert.match((await runCli(['cache', 'clear', '--state-dir', agent.stateDir])).stdout, /nothing removed/)

  const short = await runCli(['job', job.id.slice(0, 3), '--state-dir', agent.stateDir])
  assert.equal(short.code, 2)
  assert.match(short.stderr, /at least 4 characters/)
  // Through the API too.
  await assert.rejects(agent.client.getJob(job.id.slice(0, 3)), /at least 4 characters/)
})

test('origin --help and publish --help describe what exists: peer sharing, /metrics', async () => {
  const origin = await runCli(['origin', '--help'])
  const publish = await runCli(['publish', '--help'])
  for (const help of [origin.stdout, publish.stdout]) assert.doesNotMatch(help, /once peer caching lands/)
  assert.match(origin.stdout, /GET \/metrics serves Prometheus metrics/)
})
