// `canopy jobs` within the default limits, however many jobs (issue 13, item 12): the
// listing of jobs the default request limits allow outgrows the client's 16 MiB per
// answer, so GET /v1/jobs comes in pages.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import { startAgent } from '@canopy/agent'
import { CanopyClient, MAX_RESPONSE_BYTES } from '@canopy/client'
import { runCli, tempDir } from './helpers.ts'

test('a job listing larger than a client answer is read whole, in pages (client and `canopy jobs --json`)', async () => {
  const stateDir = await tempDir()
  const out = await tempDir()
  const agent = await startAgent({ stateDir, p2p: undefined })
  const client = new CanopyClient({ stateDir })
  try {
    // Jobs created suspended, each just under the 1 MiB request body: 110 URLs of
    // 8,000 characters (the default --max-url-length is 8192).
    const url = (j: number, i: number): string => `http://127.0.0.1:9/${j}-${i}-${'u'.repeat(7_980)}`
    const ids: string[] = []
    for (let j = 0; j < 22; j++) {
      const files = Array.from({ length: 110 }, (_, i) => ({ url: url(j, i), path: join(out, `${j}-${i}.bin`) }))
      ids.push((await client.createJob({ start: false, files })).id)
    }
    const whole = Buffer.byteLength(JSON.stringify(agent.listJobs()))
    assert.ok(whole > MAX_RESPONSE_BYTES, `the listing is ${whole} bytes`)
    const listed = await client.listJobs()
    assert.deepEqual(listed.map(j => j.id).sort(), [...ids].sort())
    assert.ok(listed.every(j => j.files.length === 110))
    const cli = await runCli(['jobs', '--json', '--state-dir', stateDir], { timeoutMs: 120_000 })
    assert.equal(cli.code, 0, cli.stderr)
    assert.equal((JSON.parse(cli.stdout) as unknown[]).length, ids.length)
  } finally {
    await client.close()
    await agent.stop()
  }
})
