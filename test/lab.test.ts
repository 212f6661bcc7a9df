// The branch-office lab on real network namespaces: small patch-day and bad-peer
// runs (3 agents, 32 MiB, 20 Mbit/s WAN) judged by their own verdicts, and the lab's
// clean-up on success, on interrupt, and after its process was killed. Needs root and
// iproute2 (CI runs as root); elsewhere these tests are skipped with the reason.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { access, readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { cleanNamespaces, netnsSupport, runScenario } from '@canopy/lab'
import { tempDir } from './helpers.ts'

const LAB = new URL('../packages/lab/bin/lab.ts', import.meta.url).pathname
const COMPOSE_FILE = new URL('../docker-compose.yml', import.meta.url).pathname
const MiB = 1024 * 1024
const support = await netnsSupport()
const skipNetns = support.ok ? false : `the namespace lab cannot run here: ${support.reason}`

async function labNamespaces (pid?: number): Promise<string[]> {
  const { stdout } = await promisify(execFile)('ip', ['netns', 'list'])
  return stdout.split('\n').map(l => l.split(' ')[0]).filter(n => n.startsWith(pid === undefined ? 'canopy-lab-' : `canopy-lab-${pid}-`))
}

async function composeCheck (): Promise<string | false> {
  try {
    await promisify(execFile)('docker-compose', ['version'])
    return false
  } catch {
    return 'docker-compose is not installed (.ci/run installs it: apt-get install docker-compose)'
  }
}

test('docker-compose.yml is a valid compose file (docker-compose config)', { skip: await composeCheck() }, async () => {
  const { stderr } = await promisify(execFile)('docker-compose', ['-f', COMPOSE_FILE, '--profile', 'bad-peer', '--profile', 'unauthorized', 'config', '-q'])
  assert.equal(stderr.trim(), '')
})

for (const scenario of ['patch-day', 'bad-peer'] as const) {
  test(`lab: ${scenario} with 3 agents passes its own verdict, and leaves nothing behind`, { skip: skipNetns }, async (t) => {
    const out = await tempDir()
    const report = await runScenario(scenario, { agents: 3, size: 32 * MiB, outDir: out, log: line => t.diagnostic(line) })
    t.diagnostic(`origin sent ${report.origin.ratio} × the content; all done in ${report.wan.allDoneSeconds} s (one copy over the WAN: ${report.wan.oneCopySeconds} s)`)
    assert.equal(report.pass, true, report.reasons.join('; '))
    const members = report.hosts.filter(h => h.member)
    assert.equal(members.length, 3)
    for (const host of members) {
      assert.equal(host.fileCorrect, true, host.host)
      assert.equal(host.fromOrigin + host.fromPeers, 32 * MiB, host.host)
    }
    assert.equal(report.origin.countersAgree, true)
    assert.ok(report.origin.bytesSent >= 32 * MiB)
    await access(report.files!.svg)
    assert.equal((JSON.parse(await readFile(report.files!.json, 'utf8')) as { pass: boolean }).pass, true)
    assert.deepEqual(await labNamespaces(process.pid), [])
  })
}

/** Starts `npm run lab -- <args>` as a process and waits until its progress shows `until`. */
async function startLab (args: string[], until: string): Promise<{ child: ChildProcess, stderr: () => string }> {
  // TMPDIR: the lab's work dir goes inside a test dir, so that it is removed even
  // when the test kills the lab before it can remove it itself.
  const child = spawn(process.execPath, [LAB, ...args, '--out', await tempDir()],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TMPDIR: await tempDir() } })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  while (!stderr.includes(until)) {
    assert.equal(child.exitCode, null, stderr)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return { child, stderr: () => stderr }
}

test('lab: an interrupted run (SIGINT) stops its processes, removes its namespaces and exits 130', { skip: skipNetns }, async () => {
  const { child, stderr } = await startLab(['patch-day', '--agents', '2', '--size', '64MiB'], 'job started')
  assert.ok((await labNamespaces(child.pid)).length > 0)
  child.kill('SIGINT')
  const [code] = await once(child, 'exit') as [number]
  assert.equal(code, 130, stderr())
  assert.deepEqual(await labNamespaces(child.pid), [])
})

test('lab: the namespaces of a lab whose process was killed are removed by the next one', { skip: skipNetns }, async () => {
  const { child } = await startLab(['sequential', '--agents', '2', '--size', '8MiB'], 'agent started')
  child.kill('SIGKILL')
  await once(child, 'exit')
  const left = await labNamespaces(child.pid)
  assert.ok(left.length > 0, 'SIGKILL leaves the namespaces behind')
  const orphans: number[] = []
  for (const ns of left) {
    const { stdout } = await promisify(execFile)('ip', ['netns', 'pids', ns])
    orphans.push(...stdout.split('\n').map(Number).filter(pid => pid > 0))
  }
  assert.ok(orphans.length > 0, 'and the origin and agents running in them')
  const removed = await cleanNamespaces()
  for (const ns of left) assert.ok(removed.includes(ns), ns)
  assert.deepEqual(await labNamespaces(child.pid), [])
  // Gone, or dead and waiting for init to reap it (a zombie runs nothing).
  const running = async (pid: number): Promise<boolean> => {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
    return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  }
  for (const pid of orphans) {
    for (let tries = 0; await running(pid) && tries < 50; tries++) await new Promise(resolve => setTimeout(resolve, 100))
    assert.equal(await running(pid), false, `process ${pid} of the killed lab still runs`)
  }
})
