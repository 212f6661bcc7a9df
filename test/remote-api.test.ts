// The control API's optional TCP listener (remote administration): a bearer token on
// every request, the CLI and the client reaching an agent through it, and no
// listener without a token.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { CanopyClient } from '@canopy/client'
import { fileSha256, originWithFile, runCli, startAgentProcess, tempDir } from './helpers.ts'

test('the TCP listener needs the bearer token; with it, the CLI and the client work remotely', async (t) => {
  const { dir, origin, sha256 } = await originWithFile(t, 2 * 1024 * 1024 + 9)
  const tokenFile = join(dir, 'api.token')
  await writeFile(tokenFile, 'remote-admin-7d1c9e2b4a\n', { mode: 0o600 })
  const agent = await startAgentProcess(join(dir, 'agent'), ['--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile])
  t.after(async () => await agent.kill())
  const address = (await agent.client.status()).apiTcp
  assert.match(address ?? '', /^127\.0\.0\.1:\d+$/)
  const url = `http://${address!}`

  for (const authorization of [undefined, 'Bearer wrong', 'Basic cmVtb3RlOmFkbWlu']) {
    const res = await request(`${url}/v1/jobs`, { headers: authorization === undefined ? {} : { authorization } })
    assert.equal(res.statusCode, 401)
    assert.equal(((await res.body.json()) as { error: { code: string } }).error.code, 'ERR_UNAUTHORIZED')
  }

  // The CLI, pointed at the listener (its --state-dir names nothing that exists).
  const env = { CANOPY_AGENT_URL: url, CANOPY_API_TOKEN_FILE: tokenFile }
  const got = await runCli(['get', `${origin.url}/f.bin`, '-o', join(dir, 'remote.bin'), '--json', '--state-dir', join(dir, 'nowhere')], { env })
  assert.equal(got.code, 0, got.stderr)
  assert.equal(await fileSha256(join(dir, 'remote.bin')), sha256)
  const listed = await runCli(['jobs', '--json', '--state-dir', join(dir, 'nowhere')], { env })
  assert.equal((JSON.parse(listed.stdout) as unknown[]).length, 1)
  const denied = await runCli(['jobs', '--state-dir', join(dir, 'nowhere')], { env: { CANOPY_AGENT_URL: url } })
  assert.notEqual(denied.code, 0)
  assert.match(denied.stderr, /ERR_UNAUTHORIZED|token/)

  // The client's live events over TCP.
  const client = new CanopyClient({ url, token: 'remote-admin-7d1c9e2b4a' })
  t.after(async () => await client.close())
  const events = await client.watch()
  t.after(async () => await events.close())
  const job = await client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'events.bin') }], autoComplete: true })
  for await (const event of events) {
    if (event.type === 'state' && event.job.id === job.id && event.job.state === 'acknowledged') break
  }
  assert.equal(await fileSha256(join(dir, 'events.bin')), sha256)
})

test('an agent refuses to open the TCP listener without a token, and leaves no state dir behind', async () => {
  const stateDir = join(await tempDir(), 'never-started')
  const run = await runCli(['agent', '--state-dir', stateDir, '--api-listen', '127.0.0.1:0', '--no-p2p'])
  assert.equal(run.code, 2, run.stderr)
  assert.match(run.stderr, /--api-token-file/)
  assert.equal(existsSync(stateDir), false)
})
