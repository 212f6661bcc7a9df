// The agent's web dashboard in a real headless browser (Debian's chromium, driven by
// playwright-core) against real agents and a real origin: on the agent's TCP
// listener with its token, and through `canopy dashboard`'s local bridge.
// Skipped, with the reason printed, where no chromium is installed
// (apt-get install -y chromium; CHROMIUM_PATH names another binary).
// CANOPY_UPDATE_SCREENSHOT=1 also writes docs/dashboard.png.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import type { Browser, Page } from 'playwright-core'
import { CLI, FINISHED, loopbackAddress, originWithFile, refusingOrigin, startAgentProcess, swarmKeyFile, waitConnected } from './helpers.ts'

/** The little of the DOM that the functions run in the page use (the project's types have no DOM library). */
interface DomNode {
  textContent: string | null
  querySelector: (selector: string) => DomNode | null
  querySelectorAll: (selector: string) => Iterable<DomNode>
}
declare const document: DomNode & { getElementById: (id: string) => DomNode | null }

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const SKIP = existsSync(CHROMIUM) ? false : `no chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`
if (SKIP !== false) process.stderr.write(`dashboard tests skipped: ${SKIP}\n`)
const SCREENSHOT = fileURLToPath(new URL('../docs/dashboard.png', import.meta.url))

async function launch (t: { after: (fn: () => Promise<void>) => void }): Promise<Browser> {
  // --no-sandbox: the tests run as root in CI containers, where chromium's sandbox cannot start.
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] })
  t.after(async () => await browser.close())
  return browser
}

/** The text of the job's row once `check` holds for it (the page updates live). */
async function jobRow (page: Page, jobId: string, check: (row: Record<string, string>) => boolean, what: string): Promise<Record<string, string>> {
  const deadline = Date.now() + 60_000
  let row: Record<string, string> | undefined
  while (Date.now() < deadline) {
    row = await page.evaluate((id) => {
      const tr = document.querySelector(`tr[data-job="${id}"]`)
      if (tr === null) return undefined
      const cells = [...tr.querySelectorAll('td')].map(td => td.textContent ?? '')
      const source = (name: string): string => tr.querySelector(`[data-source="${name}"]`)?.textContent ?? ''
      return { id: cells[0], name: cells[1], state: cells[2], progress: cells[3], origin: source('origin'), peers: source('peers'), reason: cells[6] }
    }, jobId)
    if (row !== undefined && check(row)) return row
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.fail(`the page never showed ${what} for job ${jobId}; last row: ${JSON.stringify(row)}`)
}

test('the dashboard on the TCP listener shows jobs live with their sources, state and reason; peers; cache; totals', { skip: SKIP }, async (t) => {
  const size = 6 * 1024 * 1024 + 99
  const { dir, origin } = await originWithFile(t, size)
  const slow = await originWithFile(t, 64 * 1024 * 1024, 'big.bin', { rateLimit: 1024 * 1024 })
  const keyArgs = ['--swarm-key', await swarmKeyFile(dir)]
  const tokenFile = join(dir, 'api.token')
  const token = 'dashboard-test-token-9f1e'
  await writeFile(tokenFile, `${token}\n`, { mode: 0o600 })
  const a = await startAgentProcess(join(dir, 'a'), keyArgs)
  t.after(async () => await a.kill())
  const b = await startAgentProcess(join(dir, 'b'), [...keyArgs, '--peer', await loopbackAddress(a), '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile, '--retry-min', '30s'])
  t.after(async () => await b.kill())
  assert.equal(await waitConnected(b, 1), 1)
  const first = await a.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'a.bin') }], autoComplete: true })
  assert.equal((await a.client.waitForJob(first.id, { intervalMs: 50, until: FINISHED })).state, 'acknowledged')

  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } })
  const errors: string[] = []
  page.on('pageerror', err => errors.push(String(err)))
  const base = `http://${(await b.client.status()).apiTcp!}`

  // Without the token: the page loads (it holds no data) and says what to do.
  await page.goto(`${base}/dashboard/`)
  await page.waitForFunction(() => (document.getElementById('error')?.textContent ?? '').includes('token'))

  await page.goto(`${base}/dashboard/#token=${token}`)
  await page.waitForFunction(() => document.querySelector('#live.on') !== null)
  // The token left the address bar.
  assert.equal(new URL(page.url()).hash, '')

  // Jobs made after the page loaded arrive through the event stream.
  const fromPeer = await b.client.createJob({ name: 'from-a-peer', files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'b.bin') }], autoComplete: true })
  const refused = await b.client.createJob({ name: 'dead-origin', files: [{ url: `${await refusingOrigin()}/x.bin`, path: join(dir, 'x.bin') }], autoComplete: true })
  const big = await b.client.createJob({ name: 'big-and-slow', priority: 'low', files: [{ url: `${slow.origin.url}/big.bin`, path: join(dir, 'big.bin') }], autoComplete: true })
  const done = await b.client.waitForJob(fromPeer.id, { intervalMs: 50, until: FINISHED })
  assert.equal(done.state, 'acknowledged')
  assert.ok(done.bytes.fromPeers > 0)

  const row = await jobRow(page, fromPeer.id, r => r.state === 'acknowledged', 'acknowledged')
  assert.equal(row.name, 'from-a-peer')
  assert.equal(row.id, fromPeer.id.slice(0, 8))
  assert.match(row.peers, /^peers \d/)
  assert.notEqual(row.peers, 'peers 0 B')
  assert.match(row.progress, /100 %/)
  const failing = await jobRow(page, refused.id, r => r.state === 'transient_error', 'transient_error')
  assert.match(failing.reason, /retry/i)
  await jobRow(page, big.id, r => r.state === 'transferring' && !r.progress.startsWith(' 0 %'), 'transferring')

  // Totals, peers and cache (polled).
  await page.waitForFunction(() => /[1-9]/.test(document.querySelector('[data-total="from peers"] dd')?.textContent ?? ''))
  const peerA = (await a.client.status()).peer!.peerId
  await page.waitForSelector(`tr[data-peer="${peerA}"]`)
  await page.waitForFunction(() => (document.getElementById('cache-summary')?.textContent ?? '').includes('1 file'))
  assert.match(await page.locator('#cache-summary').textContent() ?? '', /peers' requests: \d+ hit\(s\), \d+ miss\(es\), .* served$/)
  assert.match(await page.locator('#cache tbody td.mono').first().textContent() ?? '', /^http:\/\/127\.0\.0\.1:\d+\//, 'the cached file\'s source')
  // The chart has a line per source.
  assert.equal(await page.locator('#chart path[data-source]').count(), 3)

  await new Promise(resolve => setTimeout(resolve, 4000)) // a few chart points for the picture
  const png = await page.screenshot({ fullPage: true })
  assert.ok(png.length > 10_000)
  if (process.env.CANOPY_UPDATE_SCREENSHOT === '1') await writeFile(SCREENSHOT, png)
  assert.deepEqual(errors, [])
})

test('canopy dashboard serves the local agent\'s dashboard through a read-only bridge until Ctrl-C', { skip: SKIP }, async (t) => {
  const { dir, origin } = await originWithFile(t, 1024 * 1024)
  const agent = await startAgentProcess(join(dir, 'agent'), ['--no-p2p'])
  t.after(async () => await agent.kill())
  const job = await agent.client.createJob({ name: 'local-one', files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'f.bin') }], autoComplete: true })
  await agent.client.waitForJob(job.id, { intervalMs: 50, until: FINISHED })

  const child = spawn(process.execPath, [CLI, 'dashboard', '--state-dir', agent.stateDir], { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  t.after(() => { child.kill('SIGKILL') })
  const url = await new Promise<string>((resolve, reject) => {
    let text = ''
    child.stdout.on('data', (d: Buffer) => {
      text += d.toString()
      if (text.includes('\n')) resolve(text.trim())
    })
    child.once('exit', code => reject(new Error(`canopy dashboard exited (${code}) before printing a URL`)))
  })
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/dashboard\/#token=[\w-]+$/)
  const { origin: bridge } = new URL(url)
  const bridgeToken = new URL(url).hash.slice('#token='.length)
  // Read-only, and only with its token.
  assert.equal((await fetch(`${bridge}/v1/jobs`)).status, 401)
  assert.equal((await fetch(`${bridge}/v1/jobs/${job.id}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${bridgeToken}` } })).status, 405)

  const browser = await launch(t)
  const page = await browser.newPage()
  await page.goto(url)
  const row = await jobRow(page, job.id, r => r.state === 'acknowledged', 'acknowledged')
  assert.equal(row.name, 'local-one')
  assert.match(row.origin, /^origin 1\.0 MiB$/)
  await page.waitForFunction(() => (document.getElementById('peers-note')?.textContent ?? '').includes('no peer node'))

  child.kill('SIGINT')
  assert.equal(await exited, 0)
})
