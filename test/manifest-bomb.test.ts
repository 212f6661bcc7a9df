// A hostile origin serving a manifest bomb cannot blow up an agent: the job ends in
// error with the reason, the agent's memory stays bounded, and a restart does not
// crash on the job (issue 13, item 7).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { MANIFEST_MEDIA_TYPE } from '@canopy/core'
import { startAgentProcess, tempDir } from './helpers.ts'

async function rssMiB (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) / 1024
}

test('a manifest bomb ends the job in error with the reason; agent RSS stays bounded; a restart does not crash', async t => {
  // 20 MB: plausible header fields, then an unknown field of 10 M nested arrays, which
  // JSON.parse turns into ~1 GiB of objects before anything looks at the shape.
  const depth = 10_000_000
  const bomb = Buffer.from(`{"version":1,"size":4,"blockSize":1048576,"sha256":"${'0'.repeat(64)}","junk":${'['.repeat(depth)}${']'.repeat(depth)}}`)
  let manifestRequests = 0
  const server = createServer((req, res) => {
    if ((req.headers.accept ?? '').startsWith(MANIFEST_MEDIA_TYPE)) {
      manifestRequests++
      res.writeHead(200, { 'content-type': MANIFEST_MEDIA_TYPE, 'content-length': bomb.length })
      res.end(bomb)
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 4 })
    res.end('data')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.closeAllConnections(); server.close() })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/f.bin`

  const dir = await tempDir()
  const stateDir = join(dir, 'state')
  const first = await startAgentProcess(stateDir)
  t.after(async () => await first.kill())
  const pid = first.child.pid!
  const baseRss = await rssMiB(pid)
  const created = await first.client.createJob({ files: [{ url, path: join(dir, 'f.bin') }], autoComplete: true })

  let maxRss = baseRss
  let job = created
  for (let i = 0; i < 1200 && !['error', 'acknowledged', 'cancelled', 'transient_error'].includes(job.state); i++) {
    maxRss = Math.max(maxRss, await rssMiB(pid))
    await new Promise(resolve => setTimeout(resolve, 50))
    job = await first.client.getJob(created.id)
  }
  maxRss = Math.max(maxRss, await rssMiB(pid))
  t.diagnostic(JSON.stringify({ baseRssMiB: Math.round(baseRss), maxRssMiB: Math.round(maxRss), manifestRequests }))
  assert.equal(job.state, 'error', `the job ended ${job.state}: ${JSON.stringify(job.error)}`)
  assert.equal(job.error?.code, 'ERR_INVALID_MANIFEST')
  assert.match(job.error?.message ?? '', /Invalid manifest: field junk must not be an object or an array/)
  // The bomb itself is 20 MB; reading it costs that twice (chunks, then one buffer).
  assert.ok(maxRss - baseRss < 96, `agent RSS grew from ${baseRss.toFixed(0)} to ${maxRss.toFixed(0)} MiB`)

  // A restart finds the job in error and does not crash on it; resuming it fails the same way.
  await first.kill()
  const second = await startAgentProcess(stateDir)
  t.after(async () => await second.kill())
  const again = await second.client.getJob(created.id)
  assert.equal(again.state, 'error')
  await second.client.resume(created.id)
  const resumed = await second.client.waitForJob(created.id, { until: ['error', 'acknowledged'], intervalMs: 100 })
  assert.equal(resumed.error?.code, 'ERR_INVALID_MANIFEST')
  assert.equal(second.child.exitCode, null, 'the agent is still running')
  assert.ok((await second.client.status()) !== undefined)
})

test('a manifest response longer than its own header allows is cut off early, and the job fails with the reason', async t => {
  // A one-block manifest followed by (up to) 64 MiB of block ids: the agent must stop
  // reading once the response passes what a manifest of one block can take.
  const header = Buffer.from(`{"version":1,"size":4,"blockSize":1048576,"sha256":"${'0'.repeat(64)}","blocks":[`)
  const filler = Buffer.from(`"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",`.repeat(1024))
  let written = 0
  const server = createServer((req, res) => {
    if (!(req.headers.accept ?? '').startsWith(MANIFEST_MEDIA_TYPE)) {
      res.writeHead(200, { 'content-length': 4 }).end('data')
      return
    }
    res.writeHead(200, { 'content-type': MANIFEST_MEDIA_TYPE })
    res.write(header)
    const more = (): void => {
      while (written < 64 * 1024 * 1024 && !res.destroyed) {
        written += filler.length
        if (!res.write(filler)) {
          res.once('drain', more)
          return
        }
      }
      res.end(']}')
    }
    more()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.closeAllConnections(); server.close() })
  const dir = await tempDir()
  const agent = await startAgentProcess(join(dir, 'state'))
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ files: [{ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/f.bin`, path: join(dir, 'f.bin') }] })
  const done = await agent.client.waitForJob(job.id, { until: ['error', 'transferred', 'transient_error'], intervalMs: 100 })
  assert.equal(done.error?.code, 'ERR_INVALID_MANIFEST', JSON.stringify(done.error))
  assert.match(done.error?.message ?? '', /more than the \d+ bytes a manifest of its size and block size can take/)
  // What the server could write: the agent's reads plus the loopback socket buffers.
  t.diagnostic(`the server wrote ${(written / 1024 / 1024).toFixed(1)} MiB before the agent stopped reading`)
  assert.ok(written < 16 * 1024 * 1024, `the server wrote ${written} bytes`)
})
