// docs/openapi.json against the implementation: it lists exactly the routes the agent
// serves, and what a real agent answers (status codes and JSON bodies) matches the
// document's schemas, errors included.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Ajv2020 } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import { Client } from 'undici'
import { silentLogger } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import { startOrigin } from '@canopy/origin'
import { apiRoutes } from '../src/api/server.ts'
import { EventClients } from '../src/api/events.ts'

interface Operation { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }
type OpenApi = { paths: Record<string, Record<string, Operation>>, components: { schemas: Record<string, unknown> } }

const doc = JSON.parse(await readFile(new URL('../../../docs/openapi.json', import.meta.url), 'utf8')) as OpenApi
// OpenAPI 3.1 schemas are JSON Schema 2020-12: put them under $defs of one schema.
const ajv = new Ajv2020({ allErrors: true })
addFormats.default(ajv)
ajv.addSchema(JSON.parse(JSON.stringify({ $id: 'api', $defs: doc.components.schemas }).replaceAll('#/components/schemas/', 'api#/$defs/')))

/** Checks one live answer against the document: the status is documented, the body fits its schema. */
function conforms (method: string, path: string, status: number, body: unknown): void {
  const operation = doc.paths[path]?.[method.toLowerCase()]
  assert.ok(operation !== undefined, `${method} ${path} is not documented`)
  const response = operation.responses[String(status)]
  assert.ok(response !== undefined, `${method} ${path} answered ${status}, which is not documented`)
  const schema = response.content?.['application/json']?.schema
  if (schema === undefined) return
  const validate = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('#/components/schemas/', 'api#/$defs/')))
  assert.ok(validate(body), `${method} ${path} ${status}: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body)}`)
}

test('docs/openapi.json documents exactly the routes the agent serves, and the agent answers as it says', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-openapi-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'f.bin'), Buffer.alloc(3 * 1024 * 1024 + 7, 1))
  await mkdir(join(dir, 'incoming'))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin'), uploads: { dir: join(dir, 'incoming'), minFreeBytes: 0 } })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgent({ stateDir: join(dir, 'agent'), p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, peers: [] } })
  t.after(async () => await agent.stop())

  const served = apiRoutes(agent, new EventClients(), silentLogger, agent.options).map(r => `${r.method} ${r.path}`).sort()
  const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map(m => `${m.toUpperCase()} ${path}`)).sort()
  assert.deepEqual(documented, served)

  const http = new Client('http://agent', { socketPath: agent.socketPath })
  t.after(async () => await http.close())
  /** The fields of answers this test looks at. */
  type Answer = { id: string, state: string, jobs: unknown[], entries: unknown[] }
  const call = async (method: 'GET' | 'POST', path: string, route: string, body?: unknown): Promise<{ status: number, body: Answer }> => {
    const res = await http.request({ method, path, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } }) })
    const answer = { status: res.statusCode, body: await res.body.json() as Answer }
    conforms(method, route, answer.status, answer.body)
    return answer
  }

  assert.equal((await call('GET', '/v1/status', '/v1/status')).status, 200)
  assert.equal((await call('POST', '/v1/jobs', '/v1/jobs', { files: [] })).status, 400)
  assert.equal((await call('POST', '/v1/jobs', '/v1/jobs', '{not json')).status, 400)
  const created = await call('POST', '/v1/jobs', '/v1/jobs', { name: 'openapi', files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'out.bin') }], start: false })
  assert.equal(created.status, 201)
  const id = created.body.id
  const job = (action: string): string => `/v1/jobs/${id}/${action}`
  assert.equal((await call('GET', `/v1/jobs/${id}`, '/v1/jobs/{id}')).status, 200)
  assert.equal((await call('GET', '/v1/jobs/no-such-job', '/v1/jobs/{id}')).status, 404)
  assert.equal((await call('POST', job('priority'), '/v1/jobs/{id}/priority', { priority: 'high' })).status, 200)
  assert.equal((await call('POST', job('priority'), '/v1/jobs/{id}/priority', { priority: 'urgent' })).status, 400)
  assert.equal(((await call('POST', job('rate-limit'), '/v1/jobs/{id}/rate-limit', { rateLimit: 1048576 })).body as unknown as { rateLimit: number }).rateLimit, 1048576)
  assert.equal((await call('POST', job('rate-limit'), '/v1/jobs/{id}/rate-limit', { rateLimit: -1 })).status, 400)
  assert.equal(((await call('POST', job('rate-limit'), '/v1/jobs/{id}/rate-limit', { rateLimit: null })).body as unknown as { rateLimit?: number }).rateLimit, undefined)
  assert.equal((await call('POST', job('complete'), '/v1/jobs/{id}/complete')).status, 409, 'a suspended job cannot complete')
  assert.equal((await call('POST', job('resume'), '/v1/jobs/{id}/resume')).status, 200)
  for (let done = false; !done;) {
    const seen = await call('GET', `/v1/jobs/${id}`, '/v1/jobs/{id}')
    done = seen.body.state === 'transferred'
    assert.ok(['queued', 'connecting', 'transferring', 'transferred'].includes(seen.body.state), JSON.stringify(seen.body))
    if (!done) await new Promise(resolve => setTimeout(resolve, 20))
  }
  assert.equal((await call('POST', job('suspend'), '/v1/jobs/{id}/suspend')).status, 409, 'a transferred job cannot be suspended')
  assert.equal((await call('POST', job('complete'), '/v1/jobs/{id}/complete')).status, 200)
  assert.equal((await call('GET', '/v1/jobs', '/v1/jobs')).body.jobs.length, 1)
  assert.equal((await call('POST', job('cancel'), '/v1/jobs/{id}/cancel')).status, 409, 'an acknowledged job cannot be cancelled')
  const second = await call('POST', '/v1/jobs', '/v1/jobs', { files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'two.bin') }], start: false, notify: { onComplete: ['true'] }, limits: { retryMinMs: 2000 } })
  assert.equal((await call('POST', `/v1/jobs/${second.body.id}/files`, '/v1/jobs/{id}/files', { files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'three.bin') }] })).status, 200)
  assert.equal((await call('POST', job('files'), '/v1/jobs/{id}/files', { files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'four.bin') }] })).status, 409, 'only a suspended job takes files')
  assert.equal((await call('POST', `/v1/jobs/${second.body.id}/cancel`, '/v1/jobs/{id}/cancel')).status, 200)

  // An upload job, and its views while it runs and once acknowledged.
  const uploadFile = { url: origin.uploadUrl!, path: join(dir, 'root', 'f.bin') }
  assert.equal((await call('POST', '/v1/jobs', '/v1/jobs', { type: 'upload-reply', files: [uploadFile] })).status, 400, 'an upload-reply job needs its replyPath')
  /** Follows a job created with autoComplete (each view checked against the document) until it is acknowledged or in error. */
  const finished = async (created: { body: Answer }): Promise<Answer> => {
    let seen = created.body
    while (!['acknowledged', 'error'].includes(seen.state)) {
      await new Promise(resolve => setTimeout(resolve, 20))
      seen = (await call('GET', `/v1/jobs/${created.body.id}`, '/v1/jobs/{id}')).body
    }
    return seen
  }
  const upload = await call('POST', '/v1/jobs', '/v1/jobs', { type: 'upload', name: 'up.bin', files: [uploadFile], autoComplete: true })
  assert.equal(upload.status, 201)
  const uploaded = await finished(upload)
  assert.equal(uploaded.state, 'acknowledged', JSON.stringify(uploaded))

  assert.equal((await call('GET', '/v1/policy', '/v1/policy')).status, 200)
  const policy = { low: '2MiB/s', workHours: { days: 'mon-fri', from: '08:00', to: '17:00', low: 0 }, peerServing: 1048576 }
  assert.equal((await call('POST', '/v1/policy', '/v1/policy', policy)).status, 200)
  const refused = await call('POST', '/v1/policy', '/v1/policy', { low: '-3MiB/s' })
  assert.equal(refused.status, 400)
  assert.equal((await call('GET', '/v1/status', '/v1/status')).status, 200, 'the status with a policy in force')
  assert.equal(((await call('GET', '/v1/policy', '/v1/policy')).body as unknown as { policy: { low: number } }).policy.low, 2 * 1024 * 1024, 'a refused policy leaves the previous one')
  assert.equal((await call('GET', '/v1/peers', '/v1/peers')).status, 200)
  // A preload job: no destination, into the cache (the content is held already: nothing to fetch).
  assert.equal((await call('POST', '/v1/jobs', '/v1/jobs', { type: 'preload', files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'x.bin') }] })).status, 400, 'a preload job has no destination')
  const preload = await call('POST', '/v1/jobs', '/v1/jobs', { type: 'preload', files: [{ url: `${origin.url}/f.bin` }], autoComplete: true })
  assert.equal(preload.status, 201)
  const preloaded = await finished(preload)
  assert.equal(preloaded.state, 'acknowledged', JSON.stringify(preloaded))
  assert.equal((await call('GET', '/v1/cache', '/v1/cache')).body.entries.length, 1, 'the completed file is kept for peers')
  assert.equal((await call('POST', '/v1/cache/clear', '/v1/cache/clear')).body.entries.length, 0)
  assert.equal((await call('GET', `/v1/events?job=nope`, '/v1/events')).status, 404)

  const events = await http.request({ method: 'GET', path: `/v1/events?job=${id}` })
  assert.equal(events.statusCode, 200)
  assert.match(String(events.headers['content-type']), /^text\/event-stream/)
  assert.ok(doc.paths['/v1/events'].get.responses['200'].content?.['text/event-stream'] !== undefined)
  events.body.destroy()

  // Not documented, not served: a wrong method on a documented path, and an unknown path.
  const wrong = await http.request({ method: 'DELETE', path: `/v1/jobs/${id}` })
  assert.equal(wrong.statusCode, 405)
  await wrong.body.dump()
  const unknown = await http.request({ method: 'GET', path: '/v1/nothing' })
  assert.equal(unknown.statusCode, 404)
  await unknown.body.dump()
})
