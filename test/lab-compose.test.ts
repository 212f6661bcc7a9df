// The branch-office lab on Docker containers (docker-compose): patch-day with 4 agents
// judged by its own verdict and by issue 17's bound (origin bytes ≤ 1.05 × the
// content), and the lab's clean-up after its process was killed. Needs a Docker engine
// and docker-compose (.ci/run installs them from Debian's packages and starts dockerd);
// elsewhere these tests are skipped with the reason. The first run builds the lab
// image (scripts/docker-images.sh; .ci/run builds it before the tests).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { access, readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { cleanComposeLabs, composeSupport, runScenario } from '@canopy/lab'
import { tempDir } from './helpers.ts'

const LAB = new URL('../packages/lab/bin/lab.ts', import.meta.url).pathname
const MiB = 1024 * 1024
const support = await composeSupport()
const skip = support.ok ? false : `the compose lab cannot run here: ${support.reason}`
if (skip !== false) process.stdout.write(`# ${skip}\n`)

/** Containers and networks that carry the label of the lab of process `pid`. */
async function labObjects (pid: number): Promise<string[]> {
  const run = promisify(execFile)
  const containers = (await run('docker', ['ps', '-aq', '--filter', `label=canopy-lab=${pid}`])).stdout
  const networks = (await run('docker', ['network', 'ls', '-q', '--filter', `label=canopy-lab=${pid}`])).stdout
  return [...containers.split('\n'), ...networks.split('\n')].filter(Boolean)
}

test('compose lab: patch-day with 4 agents passes, the origin sends ≤ 1.05 × the content, and nothing is left', { skip }, async (t) => {
  const out = await tempDir()
  const report = await runScenario('patch-day', { engine: 'compose', agents: 4, size: 32 * MiB, outDir: out, log: line => t.diagnostic(line) })
  t.diagnostic(`origin sent ${report.origin.ratio} × the content; all done in ${report.wan.allDoneSeconds} s (one copy over the WAN: ${report.wan.oneCopySeconds} s)`)
  assert.equal(report.backend, 'compose')
  assert.equal(report.pass, true, report.reasons.join('; '))
  assert.equal(report.hosts.length, 4)
  for (const host of report.hosts) {
    assert.equal(host.fileCorrect, true, host.host)
    assert.equal(host.fromOrigin + host.fromPeers, 32 * MiB, host.host)
  }
  assert.ok(report.origin.bytesSent >= 32 * MiB)
  assert.ok(report.origin.bytesSent <= 1.05 * 32 * MiB, `the origin sent ${report.origin.ratio} × the content`)
  assert.equal(report.origin.countersAgree, true)
  // The WAN was shaped: 4 copies at 20 Mbit/s would take 4 × one copy; the link never
  // carried more than the content and its headers.
  assert.ok(report.wan.bytesTowardBranch < 1.1 * 32 * MiB, `the WAN carried ${report.wan.bytesTowardBranch} bytes`)
  await access(report.files!.svg)
  assert.equal((JSON.parse(await readFile(report.files!.json, 'utf8')) as { backend: string }).backend, 'compose')
  assert.deepEqual(await labObjects(process.pid), [])
})

test('compose lab: the containers and networks of a lab whose process was killed are removed by the next one', { skip }, async () => {
  // TMPDIR: the lab's work dir goes inside a test dir, removed even though the lab is killed.
  const child = spawn(process.execPath, [LAB, 'sequential', '--engine', 'compose', '--agents', '2', '--size', '8MiB', '--out', await tempDir()],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TMPDIR: await tempDir() } })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  while (!stderr.includes('agent started')) {
    assert.equal(child.exitCode, null, stderr)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  child.kill('SIGKILL')
  await once(child, 'exit')
  assert.ok((await labObjects(child.pid!)).length > 0, 'SIGKILL leaves the containers and networks behind')
  const removed = await cleanComposeLabs()
  assert.ok(removed.includes(child.pid!), `removed the labs of ${removed.join(', ')}`)
  assert.deepEqual(await labObjects(child.pid!), [])
})
