import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { API_SOCKET_NAME, isCanopyError } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { AgentApiError, CanopyClient, defaultStateDir, MAX_RESPONSE_BYTES } from '@canopy/client'

function job (id: string, state: JobView['state'], transferred = 0): JobView {
  return {
    id,
    name: 'a.bin',
    type: 'download',
    priority: 'foreground',
    state,
    files: [{ url: 'http://127.0.0.1:1/a.bin', path: '/tmp/a.bin', bytesTotal: 10, bytesTransferred: transferred }],
    bytes: { total: 10, transferred, fromOrigin: transferred, fromPeers: 0, fromCache: 0 },
    filesTransferred: state === 'acknowledged' ? 1 : 0,
    filesTotal: 1,
    autoComplete: true,
    createdAt: new Date().toISOString(),
    modifiedAt: new Date().toISOString(),
    limits: { retryMinMs: 2000, retryMaxMs: 600_000, noProgressTimeoutMs: 1_209_600_000, maxDownloadTimeMs: 0 }
  }
}

describe('defaultStateDir', () => {
  test('honours CANOPY_STATE_DIR first', () => {
    assert.equal(defaultStateDir({ CANOPY_STATE_DIR: '/srv/canopy', XDG_STATE_HOME: '/x' }, 'linux'), '/srv/canopy')
  })

  test('then $XDG_STATE_HOME/canopy (absolute values only)', () => {
    assert.equal(defaultStateDir({ XDG_STATE_HOME: '/x/state' }, 'linux'), '/x/state/canopy')
    assert.equal(defaultStateDir({ XDG_STATE_HOME: 'relative' }, 'linux'), join(homedir(), '.local', 'state', 'canopy'))
  })

  test('then the platform default', () => {
    assert.equal(defaultStateDir({}, 'linux'), join(homedir(), '.local', 'state', 'canopy'))
    assert.equal(defaultStateDir({}, 'darwin'), join(homedir(), 'Library', 'Application Support', 'Canopy'))
    assert.equal(defaultStateDir({ LOCALAPPDATA: '/appdata' }, 'win32'), join('/appdata', 'Canopy'))
  })

  test('reads the process environment by default', () => {
    const before = process.env.CANOPY_STATE_DIR
    process.env.CANOPY_STATE_DIR = '/from/env'
    try {
      assert.equal(defaultStateDir(), '/from/env')
      assert.equal(new CanopyClient().socketPath, join('/from/env', API_SOCKET_NAME))
    } finally {
      if (before === undefined) delete process.env.CANOPY_STATE_DIR
      else process.env.CANOPY_STATE_DIR = before
    }
  })
})

describe('no agent', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'canopy-client-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  test('a missing socket is ERR_AGENT_NOT_RUNNING, saying how to start one', async () => {
    const client = new CanopyClient({ stateDir: dir })
    try {
      await assert.rejects(client.listJobs(), (err: unknown) => {
        assert.ok(isCanopyError(err, 'ERR_AGENT_NOT_RUNNING'), String(err))
        assert.match(err.message, /canopy agent --state-dir/)
        assert.ok(err.message.includes(dir))
        return true
      })
    } finally {
      await client.close()
    }
  })

  test('a stale socket file nobody listens on is ERR_AGENT_NOT_RUNNING too', async () => {
    const stale = join(dir, 'stale')
    await writeFile(join(dir, 'stale.sock'), '')
    const client = new CanopyClient({ stateDir: stale, socketPath: join(dir, 'stale.sock') })
    try {
      await assert.rejects(client.status(), (err: unknown) => isCanopyError(err, 'ERR_AGENT_NOT_RUNNING'))
    } finally {
      await client.close()
    }
  })
})

describe('against an HTTP server on a Unix socket', () => {
  let dir: string
  let server: Server
  let client: CanopyClient
  const requests: Array<{ method: string, url: string, body: string, type?: string }> = []
  let polls = 0

  const send = (res: ServerResponse, status: number, body: unknown): void => {
    const text = typeof body === 'string' ? body : JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }

  const handle = (req: IncomingMessage, res: ServerResponse, body: string): void => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', body, type: req.headers['content-type'] })
    const url = req.url ?? ''
    if (req.method === 'GET' && url === '/v1/status') {
      send(res, 200, { version: '0.0.0', pid: 1, stateDir: dir, startedAt: new Date().toISOString(), jobs: {} })
    } else if (req.method === 'POST' && url === '/v1/jobs') {
      send(res, 201, job('j1', 'queued'))
    } else if (req.method === 'GET' && url.startsWith('/v1/jobs?')) {
      // An agent that does not page answers the whole list, without `next`: the client stops there.
      send(res, 200, { jobs: [job('j1', 'queued'), job('j2', 'error')] })
    } else if (req.method === 'GET' && url === '/v1/jobs/slow') {
      polls++
      send(res, 200, job('slow', polls >= 3 ? 'acknowledged' : 'transferring', polls))
    } else if (req.method === 'GET' && url === '/v1/jobs/forever') {
      send(res, 200, job('forever', 'transferring'))
    } else if (req.method === 'POST' && url === '/v1/jobs/j1/suspend') {
      send(res, 200, job('j1', 'suspended'))
    } else if (url === '/v1/jobs/crash') {
      res.writeHead(500, { 'content-type': 'text/plain' })
      res.end('internal trouble')
    } else if (url === '/v1/jobs/huge') {
      res.writeHead(200, { 'content-type': 'application/json' })
      const chunk = Buffer.alloc(1024 * 1024, 0x20)
      let sent = 0
      const more = (): void => {
        while (sent <= MAX_RESPONSE_BYTES + chunk.length) {
          sent += chunk.length
          if (!res.write(chunk)) {
            res.once('drain', more)
            return
          }
        }
        res.end()
      }
      res.on('error', () => {})
      more()
    } else if (url === '/v1/jobs/garbled') {
      send(res, 200, 'this is not json')
    } else {
      send(res, 404, { error: { code: 'ERR_JOB_NOT_FOUND', message: `No job ${url}` } })
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'canopy-client-'))
    server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => { handle(req, res, Buffer.concat(chunks).toString('utf8')) })
    })
    await new Promise<void>(resolve => server.listen(join(dir, API_SOCKET_NAME), resolve))
    client = new CanopyClient({ stateDir: dir })
  })

  after(async () => {
    await client.close()
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
    await rm(dir, { recursive: true, force: true })
  })

  test('status, listJobs and suspend speak the v1 routes', async () => {
    assert.equal((await client.status()).stateDir, dir)
    assert.deepEqual((await client.listJobs()).map(j => j.id), ['j1', 'j2'])
    assert.equal(requests.at(-1)?.url, '/v1/jobs?limit=500', 'the client asks for a page')
    assert.equal((await client.suspend('j1')).state, 'suspended')
    assert.deepEqual(requests.at(-1), { method: 'POST', url: '/v1/jobs/j1/suspend', body: '', type: undefined })
  })

  test('createJob posts the request as JSON', async () => {
    const req = { files: [{ url: 'http://h/a.bin', path: '/tmp/a.bin' }], autoComplete: true }
    const created = await client.createJob(req)
    assert.equal(created.id, 'j1')
    const seen = requests.at(-1)
    assert.equal(seen?.type, 'application/json')
    assert.deepEqual(JSON.parse(seen?.body ?? ''), req)
  })

  test('a 404 with an ApiErrorBody becomes AgentApiError with its code, message and status', async () => {
    await assert.rejects(client.getJob('nope/../x'), (err: unknown) => {
      assert.ok(err instanceof AgentApiError)
      assert.equal(err.status, 404)
      assert.equal(err.code, 'ERR_JOB_NOT_FOUND')
      assert.match(err.message, /^No job \/v1\/jobs\/nope%2F\.\.%2Fx$/)
      return true
    })
  })

  test('an error without an ApiErrorBody is ERR_AGENT_HTTP_<status>', async () => {
    await assert.rejects(client.getJob('crash'), (err: unknown) => {
      assert.ok(err instanceof AgentApiError)
      assert.equal(err.status, 500)
      assert.equal(err.code, 'ERR_AGENT_HTTP_500')
      assert.match(err.message, /internal trouble/)
      return true
    })
  })

  test('a 2xx answer that is not JSON is ERR_AGENT_BAD_RESPONSE', async () => {
    await assert.rejects(client.getJob('garbled'), (err: unknown) => isCanopyError(err, 'ERR_AGENT_BAD_RESPONSE'))
  })

  test('an answer larger than MAX_RESPONSE_BYTES is refused', async () => {
    await assert.rejects(client.getJob('huge'), (err: unknown) => isCanopyError(err, 'ERR_AGENT_RESPONSE_TOO_LARGE'))
    // The client still works afterwards (the connection is replaced).
    assert.equal((await client.status()).pid, 1)
  })

  test('waitForJob polls until a final state and reports each view', async () => {
    const seen: string[] = []
    const done = await client.waitForJob('slow', { intervalMs: 10, onProgress: j => seen.push(j.state) })
    assert.equal(done.state, 'acknowledged')
    assert.deepEqual(seen, ['transferring', 'transferring', 'acknowledged'])
  })

  test('waitForJob stops with ERR_ABORTED when its signal aborts', async () => {
    const controller = new AbortController()
    setTimeout(() => { controller.abort() }, 50)
    await assert.rejects(
      client.waitForJob('forever', { intervalMs: 10, signal: controller.signal }),
      (err: unknown) => isCanopyError(err, 'ERR_ABORTED')
    )
  })

  test('the client-wide signal aborts calls too', async () => {
    const controller = new AbortController()
    const scoped = new CanopyClient({ stateDir: dir, signal: controller.signal })
    try {
      controller.abort()
      await assert.rejects(scoped.status(), (err: unknown) => isCanopyError(err, 'ERR_ABORTED'))
    } finally {
      await scoped.close()
    }
  })
})
