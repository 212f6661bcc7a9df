// Malformed requests to the control API get clear 4xx answers (issue 13, item 12).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { startAgentProcess, tempDir } from './helpers.ts'

function call (options: { socketPath?: string, host?: string, port?: number }, path: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...options, path, headers, agent: false }, res => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

async function agentWithTcp (t: { after: (fn: () => Promise<void>) => void }): Promise<{ tcp: { host: string, port: number }, socket: { socketPath: string } }> {
  const dir = await tempDir()
  const tokenFile = join(dir, 'api.token')
  await writeFile(tokenFile, 'tok-3b1f9a\n', { mode: 0o600 })
  const agent = await startAgentProcess(join(dir, 'state'), ['--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile])
  t.after(async () => await agent.kill())
  const [host, port] = (await agent.client.status()).apiTcp!.split(':')
  const tcp = { host, port: Number(port) }
  const socket = { socketPath: join(dir, 'state', 'agent.sock') }
  return { tcp, socket }
}

test('a malformed %-escape in an API path is a 400 with a reason', async t => {
  const { socket } = await agentWithTcp(t)

  for (const path of ['/v1/jobs/%E0%A4%A', '/v1/jobs/%zz/suspend', '/v1/jobs/100%']) {
    const res = await call(socket, path)
    assert.equal(res.status, 400, `${path}: ${res.body}`)
    const body = JSON.parse(res.body) as { error: { code: string, message: string } }
    assert.equal(body.error.code, 'ERR_INVALID_REQUEST')
    assert.match(body.error.message, /malformed %-escape/)
    assert.doesNotMatch(res.body, /\bat .*\.ts:\d+/, 'no stack trace')
  }
  assert.equal((await call(socket, '/v1/jobs/%61bc')).status, 404, 'a well-formed escape still reaches the route')
})

test('the TCP API takes the bearer scheme in any case (RFC 9110), the token exactly', async t => {
  const { tcp } = await agentWithTcp(t)

  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
    assert.equal((await call(tcp, '/v1/status', { authorization: `${scheme} tok-3b1f9a` })).status, 200, scheme)
  }
  for (const authorization of ['bearer tok-3b1f9A', 'bearer', 'tok-3b1f9a', 'Basic tok-3b1f9a', 'bearer tok-3b1f9a extra']) {
    assert.equal((await call(tcp, '/v1/status', { authorization })).status, 401, authorization)
  }
})
