import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, describe, test } from 'node:test'
import { decodeManifest, SIDECAR_SUFFIX } from '@canopy/core'
import type { AgentStatus, JobView } from '@canopy/core'
import { DEFAULT_DAEMON_FLAGS } from '../bin/daemon-flags.js'

const BIN = fileURLToPath(new URL('../bin/canopy.js', import.meta.url))
const VERBS = ['get', 'jobs', 'job', 'watch', 'suspend', 'resume', 'cancel', 'complete', 'set', 'status', 'policy', 'agent', 'origin', 'publish']

let scratch: string
let env: NodeJS.ProcessEnv

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'canopy-cli-'))
  // Never touch the real state directory of whoever runs the tests.
  // Agents started by these tests: peer node on loopback, a free port, no mDNS
  // (multicast must not leave the root namespace of the build machines).
  env = { ...process.env, CANOPY_STATE_DIR: join(scratch, 'no-agent'), CANOPY_LOG_LEVEL: '', CANOPY_MDNS: '0', CANOPY_P2P_HOST: '127.0.0.1', CANOPY_P2P_PORT: '0' }
})

after(async () => {
  await rm(scratch, { recursive: true, force: true })
})

interface Run { code: number | null, stdout: string, stderr: string }

function canopy (args: string[], opts: { cwd?: string, timeoutMs?: number, env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...env, ...opts.env }, cwd: opts.cwd ?? scratch, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, opts.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', code => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

describe('help and usage', () => {
  test('--help exits 0, lists the verbs, shows examples and the exit codes', async () => {
    const r = await canopy(['--help'])
    assert.equal(r.code, 0, r.stderr)
    for (const verb of VERBS) assert.match(r.stdout, new RegExp(`^  ${verb} `, 'm'))
    assert.match(r.stdout, /Examples:\n {2}canopy /)
    assert.match(r.stdout, /Exit codes:/)
    assert.equal((await canopy(['help'])).stdout, r.stdout)
  })

  test('get --help exits 0 and shows an example', async () => {
    const r = await canopy(['get', '--help'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^Usage: canopy get <url>/)
    assert.match(r.stdout, /Examples:\n {2}canopy get https?:\/\//)
    assert.equal((await canopy(['help', 'get'])).stdout, r.stdout)
  })

  test('every verb has --help (and -h) with an example', async () => {
    for (const verb of VERBS) {
      const r = await canopy([verb, verb === 'get' ? '-h' : '--help'])
      assert.equal(r.code, 0, `${verb}: ${r.stderr}`)
      assert.match(r.stdout, new RegExp(`^Usage: canopy ${verb}`), verb)
      assert.match(r.stdout, new RegExp(`Examples:\\n {2}.*canopy ${verb}`), verb)
    }
  })

  test('--version prints the version', async () => {
    const r = await canopy(['--version'])
    assert.equal(r.code, 0)
    assert.match(r.stdout, /^canopy \d+\.\d+\.\d+\n$/)
  })

  test('an unknown flag is a usage error (exit 2)', async () => {
    const r = await canopy(['jobs', '--bogus'])
    assert.equal(r.code, 2)
    assert.equal(r.stdout, '')
    assert.match(r.stderr, /^canopy: unknown option --bogus/)
    assert.match(r.stderr, /canopy jobs --help/)
  })

  test('an unknown command, a missing or extra argument, no command at all: exit 2', async () => {
    assert.equal((await canopy(['frobnicate'])).code, 2)
    assert.equal((await canopy(['job'])).code, 2)
    assert.equal((await canopy(['jobs', 'extra'])).code, 2)
    assert.equal((await canopy(['--bogus', 'jobs'])).code, 2)
    assert.equal((await canopy([])).code, 2)
  })

  test('get with a bad URL is a usage error (exit 2)', async () => {
    for (const url of ['not a url', 'ftp://example.com/a.bin', 'file:///etc/passwd']) {
      const r = await canopy(['get', url])
      assert.equal(r.code, 2, `${url}: ${r.stderr}`)
      assert.match(r.stderr, /^canopy: /)
    }
  })

  test('get refuses URLs that name no file unless -o is given, and bad flag values', async () => {
    for (const args of [
      ['get', 'http://example.com/'],
      ['get', 'http://example.com/..'],
      ['get', 'http://example.com/a%2F..%2Fb'],
      ['get', 'http://example.com/a.bin', '--priority', 'urgent'],
      ['get', 'http://example.com/a.bin', '--sha256', 'abc'],
      ['get', 'http://example.com/a.bin', '-o', join(scratch, 'missing-dir', 'a.bin')]
    ]) {
      const r = await canopy(args)
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    }
  })
})

describe('without an agent', () => {
  test('jobs exits 3 and says how to start an agent', async () => {
    const dir = join(scratch, 'empty-state')
    const r = await canopy(['jobs', '--state-dir', dir])
    assert.equal(r.code, 3)
    assert.equal(r.stdout, '')
    assert.match(r.stderr, /No Canopy agent is running/)
    assert.match(r.stderr, /canopy agent/)
    assert.ok(r.stderr.includes(dir))
  })

  test('the global --state-dir and CANOPY_STATE_DIR choose the agent', async () => {
    const r = await canopy(['--state-dir', join(scratch, 'global'), 'status', '--json'])
    assert.equal(r.code, 3)
    assert.ok(r.stderr.includes(join(scratch, 'global')))
    const e = await canopy(['get', 'http://example.com/a.bin'])
    assert.equal(e.code, 3)
    assert.ok(e.stderr.includes(join(scratch, 'no-agent')))
  })
})

describe('publish', () => {
  test('writes a <file>.canopy sidecar that decodeManifest accepts', async () => {
    const dir = join(scratch, 'publish')
    await mkdir(dir, { recursive: true })
    const file = join(dir, 'data.bin')
    const content = randomBytes(200 * 1024 + 17)
    await writeFile(file, content)
    const r = await canopy(['publish', file, '--block-size', '64KiB', '--state-dir', join(scratch, 'origin-state')])
    assert.equal(r.code, 0, r.stderr)
    const manifest = decodeManifest(await readFile(file + SIDECAR_SUFFIX))
    assert.equal(manifest.size, content.length)
    assert.equal(manifest.blockSize, 64 * 1024)
    assert.equal(manifest.blocks.length, 4)
    assert.equal(manifest.sha256, createHash('sha256').update(content).digest('hex'))
    assert.ok(r.stdout.startsWith(`${file}: ${manifest.id}`), r.stdout)
  })

  test('--json prints [{ file, id, size, blocks }]', async () => {
    const file = join(scratch, 'publish', 'small.txt')
    await writeFile(file, 'hello canopy\n')
    const r = await canopy(['publish', '--json', file, '--state-dir', join(scratch, 'origin-state')], { cwd: join(scratch, 'publish') })
    assert.equal(r.code, 0, r.stderr)
    const [entry] = JSON.parse(r.stdout) as Array<{ file: string, id: string, size: number, blocks: number }>
    assert.deepEqual(entry, { file, id: decodeManifest(await readFile(file + SIDECAR_SUFFIX)).id, size: 13, blocks: 1 })
  })

  test('a missing file or a bad block size is a usage error', async () => {
    assert.equal((await canopy(['publish', join(scratch, 'nope.bin')])).code, 2)
    const file = join(scratch, 'publish', 'small.txt')
    assert.equal((await canopy(['publish', file, '--block-size', '3MiB'])).code, 2)
    assert.equal((await canopy(['publish'])).code, 2)
  })
})

describe('origin flags', () => {
  test('an empty token file, a bad port or a missing root is a usage error', async () => {
    const root = join(scratch, 'root')
    await mkdir(root, { recursive: true })
    const tokens = join(scratch, 'tokens')
    await writeFile(tokens, '# no tokens here\n\n   \n')
    const r = await canopy(['origin', root, '--token-file', tokens])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /no tokens/)
    assert.equal((await canopy(['origin', root, '--port', '70000'])).code, 2)
    assert.equal((await canopy(['origin', join(scratch, 'no-root')])).code, 2)
    assert.equal((await canopy(['origin', root, '--rate-limit', 'fast'])).code, 2)
    assert.equal((await canopy(['agent', '--log-level', 'loud'])).code, 2)
  })

  test('agent tuning flags and their CANOPY_* variables are checked before the agent starts', async () => {
    const stateDir = join(scratch, 'tuning-agent')
    const flag = await canopy(['agent', '--state-dir', stateDir, '--requests-in-flight', 'many'])
    assert.equal(flag.code, 2)
    assert.match(flag.stderr, /--requests-in-flight many/)
    assert.equal((await canopy(['agent', '--state-dir', stateDir, '--hash-threads', '-1'])).code, 2)
    const fromEnv = await canopy(['agent', '--state-dir', stateDir], { env: { CANOPY_REQUEST_SIZE: 'huge' } })
    assert.equal(fromEnv.code, 2)
    assert.match(fromEnv.stderr, /request-size huge/)
    assert.equal((await canopy(['agent', '--state-dir', stateDir, '--target-delay', 'soon'])).code, 2)
  })

  test('a bandwidth policy in the config file that does not parse is a usage error naming the key', async () => {
    const config = join(scratch, 'policy-config.json')
    await writeFile(config, JSON.stringify({ policy: { low: '2MiB/s', workHours: { from: '17:00', to: '08:00', low: 0 } } }))
    const r = await canopy(['agent', '--state-dir', join(scratch, 'policy-agent'), '--config', config])
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, /"policy": workHours: the window 17:00-08:00 ends before it starts/)
  })
})

describe('canopy policy', () => {
  test('shows the policy, changes it live, refuses bad values naming the key and keeps the old policy; status shows it', async () => {
    const stateDir = join(scratch, 'policy-live')
    const agent = await daemon(['agent', '--state-dir', stateDir, '--no-p2p'], /listening on/)
    try {
      const dir = ['--state-dir', stateDir]
      const set = await canopy(['policy', 'set', 'low=2MiB/s', 'workHours.days=mon-fri', 'workHours.low=0', ...dir])
      assert.equal(set.code, 0, set.stderr)
      assert.match(set.stdout, /caps: low 2\.0 MiB\/s/)
      assert.match(set.stdout, /work hours: mon,tue,wed,thu,fri 08:00-17:00: low 0 \(blocked\)/)
      const bad = await canopy(['policy', 'set', 'low=fast', ...dir])
      assert.equal(bad.code, 2, bad.stderr)
      assert.match(bad.stderr, /low: "fast" is not a rate/)
      const shown = JSON.parse((await canopy(['policy', '--json', ...dir])).stdout) as { policy: { low: number } }
      assert.equal(shown.policy.low, 2 * 1024 * 1024, 'the previous policy stays')
      const status = await canopy(['status', ...dir])
      assert.match(status.stdout, /background:\s+yields to other traffic \(target queue delay 60 ms\)/)
      assert.match(status.stdout, /policy:\s+low 2\.0 MiB\/s; work hours/)
      assert.equal((await canopy(['policy', 'reset', ...dir])).code, 0)
      assert.equal((await canopy(['policy', 'frobnicate', ...dir])).code, 2)
    } finally {
      await agent.stop()
    }
  })
})

// ---- With a real origin and a real agent, each in its own process. ----

interface Daemon { child: ChildProcess, match: RegExpMatchArray, stderr: () => string, stop: (signal?: NodeJS.Signals) => Promise<number | null> }

function daemon (args: string[], ready: RegExp, extraEnv: Record<string, string> = {}): Promise<Daemon> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...env, ...extraEnv }, cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    let done = false
    const exited = new Promise<number | null>(resolve => child.on('exit', code => { resolve(code) }))
    const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return await exited
    }
    const timer = setTimeout(() => {
      if (done) return
      done = true
      child.kill('SIGKILL')
      reject(new Error(`canopy ${args[0]} did not start: ${stderr}`))
    }, 30_000)
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
      const match = stderr.match(ready)
      if (match !== null && !done) {
        done = true
        clearTimeout(timer)
        resolve({ child, match, stderr: () => stderr, stop })
      }
    })
    child.stdout.resume()
    void exited.then(code => {
      if (done) return
      done = true
      clearTimeout(timer)
      reject(new Error(`canopy ${args[0]} exited with ${code}: ${stderr}`))
    })
  })
}

describe('with an origin and an agent', () => {
  let origin: Daemon
  let agent: Daemon
  let url: string
  let stateDir: string
  let content: Buffer
  let out: string

  before(async () => {
    const root = join(scratch, 'served')
    out = join(scratch, 'downloads')
    stateDir = join(scratch, 'agent-state')
    await mkdir(root, { recursive: true })
    await mkdir(out, { recursive: true })
    content = randomBytes(3 * 1024 * 1024 + 123)
    await writeFile(join(root, 'payload.bin'), content)
    origin = await daemon(['origin', root, '--port', '0', '--state-dir', join(scratch, 'origin-served-state')], /manifests ready/)
    url = /serving .* at (http:\/\/\S+)/.exec(origin.stderr())?.[1] ?? assert.fail(origin.stderr())
    agent = await daemon(['agent', '--state-dir', stateDir], /canopy agent: listening on (.+)\n/)
  })

  after(async () => {
    await agent?.stop('SIGKILL')
    await origin?.stop('SIGKILL')
  })

  test('agent prints its socket path; status answers', async () => {
    assert.equal(agent.match[1], join(stateDir, 'agent.sock'))
    const r = await canopy(['status', '--json', '--state-dir', stateDir])
    assert.equal(r.code, 0, r.stderr)
    const status = JSON.parse(r.stdout) as AgentStatus
    assert.equal(status.stateDir, stateDir)
    assert.equal(status.pid, agent.child.pid)
  })

  test('the daemons run with the flags of daemon-flags.js, in the process that was started; CANOPY_DAEMON_NODE_FLAGS replaces them', async () => {
    const commandLine = async (pid: number): Promise<string[]> => (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')
    for (const d of [agent, origin]) {
      const args = await commandLine(d.child.pid!)
      for (const flag of DEFAULT_DAEMON_FLAGS) assert.ok(args.includes(flag), `${flag} in ${args.join(' ')}`)
      assert.equal(args.filter(a => a === BIN).length, 1)
    }
    const plain = await daemon(['origin', join(scratch, 'served'), '--port', '0', '--state-dir', join(scratch, 'origin-plain-state')], /manifests ready/,
      { CANOPY_DAEMON_NODE_FLAGS: '' })
    try {
      const args = await commandLine(plain.child.pid!)
      assert.deepEqual(args.filter(a => a.startsWith('--')), ['--port', '--state-dir'])
    } finally {
      await plain.stop('SIGKILL')
    }
  })

  test('get downloads into the cwd, prints a summary and exits 0', async () => {
    const r = await canopy(['get', `${url}/payload.bin`, '--state-dir', stateDir], { cwd: out })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, '')
    assert.deepEqual(await readFile(join(out, 'payload.bin')), content)
    assert.match(r.stderr, new RegExp(`${join(out, 'payload.bin')}: 3\\.0 MiB in [\\d.]+ s \\([\\d.]+ \\w+/s\\), from origin 3\\.0 MiB, peers 0 B`))
  })

  test('get --json prints the acknowledged job; job and jobs show it', async () => {
    const dest = join(out, 'copy.bin')
    const r = await canopy(['get', `${url}/payload.bin`, '-o', dest, '--json', '--priority', 'low', '--name', 'copy', '--state-dir', stateDir])
    assert.equal(r.code, 0, r.stderr)
    const job = JSON.parse(r.stdout) as JobView
    assert.equal(job.state, 'acknowledged')
    assert.equal(job.name, 'copy')
    assert.equal(job.priority, 'low')
    assert.equal(job.files[0].path, dest)
    assert.deepEqual(await readFile(dest), content)

    const one = await canopy(['job', job.id, '--json', '--state-dir', stateDir])
    assert.equal(one.code, 0, one.stderr)
    assert.equal((JSON.parse(one.stdout) as JobView).id, job.id)
    const human = await canopy(['job', job.id, '--state-dir', stateDir])
    assert.match(human.stdout, /state: +acknowledged/)

    const all = await canopy(['jobs', '--json', '--state-dir', stateDir])
    assert.ok((JSON.parse(all.stdout) as JobView[]).some(j => j.id === job.id))
    const table = await canopy(['jobs', '--state-dir', stateDir])
    assert.match(table.stdout, /^ID +NAME +PROGRESS +RATE +PRIORITY +STATE\n/)
    assert.match(table.stdout, new RegExp(`^${job.id.slice(0, 8)} +copy +3\\.0 MiB / 3\\.0 MiB 100% +low +acknowledged$`, 'm'))
  })

  test('a missing file makes get exit 1 with the job\'s error', async () => {
    const r = await canopy(['get', `${url}/missing.bin`, '-o', join(out, 'missing.bin'), '--state-dir', stateDir])
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /canopy: job \S+ failed: ERR_\w+: /)
  })

  test('--detach prints the id alone; cancel cancels', async () => {
    const r = await canopy(['get', `${url}/payload.bin`, '-o', join(out, 'detached.bin'), '--priority', 'low', '--detach', '--state-dir', stateDir])
    assert.equal(r.code, 0, r.stderr)
    const id = r.stdout.trim()
    assert.match(r.stdout, /^\S+\n$/)
    const c = await canopy(['cancel', id, '--json', '--state-dir', stateDir])
    // The job may have finished already; then cancelling it is the agent's error to report.
    if (c.code === 0) assert.equal((JSON.parse(c.stdout) as JobView).state, 'cancelled')
    else assert.equal(c.code, 4, c.stderr)
  })

  test('an unknown job id is an API error (exit 4)', async () => {
    const r = await canopy(['job', 'no-such-job', '--state-dir', stateDir])
    assert.equal(r.code, 4)
    assert.match(r.stderr, /^canopy: /)
  })

  test('SIGTERM stops the agent cleanly (exit 0); then no agent runs (exit 3)', async () => {
    assert.equal(await agent.stop('SIGTERM'), 0)
    assert.match(agent.stderr(), /canopy agent: stopped/)
    assert.equal((await canopy(['jobs', '--state-dir', stateDir])).code, 3)
    assert.equal(await origin.stop('SIGINT'), 0)
  })
})

describe('keygen', () => {
  test('prints a swarm key that the agent parses, different every time', async () => {
    const { parseSwarmKey } = await import('@canopy/agent/peers')
    const first = await canopy(['keygen'])
    const second = await canopy(['keygen'])
    assert.equal(first.code, 0)
    assert.equal(parseSwarmKey(first.stdout).length, 32)
    assert.notEqual(first.stdout, second.stdout)
  })
})
