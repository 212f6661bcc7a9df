// The release artifacts as an admin installs them: the .deb unpacked into a temporary
// root (dpkg -x) and the tarball extracted, each run from there with a minimal
// environment (no Node.js on PATH, no checkout around it) to serve and download a file.
// The build takes about a minute on a busy machine; CI builds once (`npm run package`)
// and hands the artifacts over in CANOPY_PACKAGE_DIR.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { before, describe, test } from 'node:test'
import { artifactNames, buildPackages, PACKAGE_NAME, releaseVersion } from '../scripts/package.ts'
import { fileSha256, randomFile, tempDir } from './helpers.ts'

function commandExists (name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

const skip = process.platform !== 'linux'
  ? 'the packages are for Linux'
  : !commandExists('dpkg-deb') ? 'dpkg-deb is not installed (Debian\'s dpkg package)' : false
if (skip !== false) process.stdout.write(`package tests skipped: ${skip}\n`)

/** What the installed canopy runs with: no Node.js of ours on PATH, no CANOPY_* of the test runner. */
function installedEnv (home: string): Record<string, string> {
  return { PATH: '/usr/bin:/bin', HOME: home, LANG: 'C.UTF-8' }
}

interface Run { code: number | null, stdout: string, stderr: string }

async function run (command: string, args: string[], env: Record<string, string>, cwd?: string): Promise<Run> {
  const child = spawn(command, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
  const code = await new Promise<number | null>(resolve => child.on('close', c => resolve(c)))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

interface Daemon { child: ChildProcess, stderr: () => string, stop: () => Promise<number | null> }

/** Starts a daemon and waits until its stderr matches `ready` (or it exits: a failure). */
async function daemon (command: string, args: string[], env: Record<string, string>, ready: RegExp): Promise<Daemon> {
  const child = spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`not ready within 60 s: ${stderr}`)) }, 60_000)
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
      if (ready.test(stderr)) { clearTimeout(timer); resolve() }
    })
    void exited.then(code => { clearTimeout(timer); reject(new Error(`exited (${code}) before it was ready: ${stderr}`)) })
  })
  return {
    child,
    stderr: () => stderr,
    stop: async () => {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
      const code = await exited
      clearTimeout(timer)
      return code
    }
  }
}

describe('release artifacts', { skip }, () => {
  let debRoot: string
  let tarRoot: string
  let deb: string
  let tarball: string
  const version = releaseVersion()

  before(async () => {
    const names = artifactNames(version)
    const given = process.env.CANOPY_PACKAGE_DIR
    if (given !== undefined && given !== '') {
      deb = join(given, names.deb)
      tarball = join(given, names.tarball)
    } else {
      const built = buildPackages(await tempDir('canopy-package-'))
      deb = built.deb!
      tarball = built.tarball!
    }
    debRoot = await tempDir('canopy-deb-root-')
    execFileSync('dpkg-deb', ['-x', deb, debRoot])
    const tarDir = await tempDir('canopy-tar-root-')
    execFileSync('tar', ['-xzf', tarball, '-C', tarDir])
    tarRoot = join(tarDir, names.dir)
  })

  test('the .deb: its name, control fields, the canopy command, config files, units, docs', async () => {
    assert.equal(execFileSync('dpkg-deb', ['-f', deb, 'Package'], { encoding: 'utf8' }).trim(), PACKAGE_NAME)
    assert.equal(execFileSync('dpkg-deb', ['-f', deb, 'Version'], { encoding: 'utf8' }).trim(), version)
    const control = await tempDir('canopy-deb-control-')
    execFileSync('dpkg-deb', ['-e', deb, control])
    assert.deepEqual((await readFile(join(control, 'conffiles'), 'utf8')).trim().split('\n').sort(), ['/etc/canopy/agent.json', '/etc/canopy/origin.env'])
    for (const script of ['postinst', 'prerm', 'postrm']) {
      assert.ok(((await stat(join(control, script))).mode & 0o111) !== 0, `${script} is executable`)
      execFileSync('sh', ['-n', join(control, script)]) // parses
    }
    const postinst = await readFile(join(control, 'postinst'), 'utf8')
    assert.match(postinst, /adduser --system/)
    assert.match(postinst, /install -d -o canopy -g canopy -m 0700 \/var\/lib\/canopy/)
    for (const path of ['usr/bin/canopy', 'usr/lib/systemd/system/canopy-agent.service', 'usr/lib/systemd/system/canopy-origin.service',
      'etc/canopy/agent.json', 'etc/canopy/origin.env', 'usr/share/bash-completion/completions/canopy', 'usr/share/zsh/vendor-completions/_canopy',
      'usr/share/man/man1/canopy.1.gz', `usr/share/doc/${PACKAGE_NAME}/README.md`]) {
      assert.ok(existsSync(join(debRoot, path)), path)
    }
    // The shipped config is valid: the agent reads it (below it runs with it).
    JSON.parse(await readFile(join(debRoot, 'etc/canopy/agent.json'), 'utf8'))
  })

  test('production dependencies only: no dev tools, no tests, no lab', async () => {
    for (const root of [join(debRoot, 'usr/lib', PACKAGE_NAME), tarRoot]) {
      const modules = await readdir(join(root, 'node_modules'))
      for (const dev of ['typescript', 'eslint', 'node', 'typescript-eslint', 'ajv']) assert.ok(!modules.includes(dev), `${dev} in ${root}`)
      assert.ok(modules.includes('libp2p') && modules.includes('level') && modules.includes('undici'))
      assert.deepEqual((await readdir(join(root, 'packages'))).sort(), ['agent', 'cli', 'client', 'core', 'origin'])
      for (const name of await readdir(join(root, 'packages'))) assert.ok(!existsSync(join(root, 'packages', name, 'test')), name)
    }
  })

  test('the installed canopy runs on its own runtime: --version, version --json', async () => {
    const home = await tempDir()
    for (const canopy of [join(debRoot, 'usr/bin/canopy'), join(tarRoot, 'bin/canopy')]) {
      const r = await run(canopy, ['--version'], installedEnv(home))
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout, `canopy ${version}\n`)
      const json = JSON.parse((await run(canopy, ['version', '--json'], installedEnv(home))).stdout) as { version: string, node: string }
      assert.equal(json.version, version)
      assert.match(json.node, /^24\./)
    }
  })

  test('installed from the .deb and the tarball: an origin and agents serve and download a file', async () => {
    const work = await tempDir()
    const env = installedEnv(work)
    await mkdir(join(work, 'served'))
    await mkdir(join(work, 'out'))
    const { sha256 } = await randomFile(join(work, 'served', 'f.bin'), 3 * 1024 * 1024 + 17)
    const debCanopy = join(debRoot, 'usr/bin/canopy')
    const tarCanopy = join(tarRoot, 'bin/canopy')
    const origin = await daemon(debCanopy, ['origin', join(work, 'served'), '--port', '0', '--state-dir', join(work, 'origin-state')], env, /manifests ready/)
    try {
      const url = /serving .* at (http:\/\/\S+)/.exec(origin.stderr())?.[1] ?? assert.fail(origin.stderr())
      // Each installation runs an agent with the shipped config file and its peer node
      // (libp2p must load from the package), on loopback only.
      for (const [name, canopy] of [['deb', debCanopy], ['tarball', tarCanopy]] as const) {
        const stateDir = join(work, `agent-${name}`)
        const config = name === 'deb' ? join(debRoot, 'etc/canopy/agent.json') : join(tarRoot, 'share/etc/agent.json')
        const agent = await daemon(canopy, ['agent', '--state-dir', stateDir, '--config', config, '--no-mdns', '--p2p-host', '127.0.0.1', '--p2p-port', '0'], env,
          /canopy agent: listening on/)
        try {
          const got = await run(canopy, ['get', `${url}/f.bin`, '-o', join(work, 'out', `${name}.bin`), '--state-dir', stateDir], env)
          assert.equal(got.code, 0, `${got.stderr}\n${agent.stderr()}`)
          assert.equal(await fileSha256(join(work, 'out', `${name}.bin`)), sha256)
        } finally {
          assert.equal(await agent.stop(), 0, agent.stderr())
        }
      }
    } finally {
      assert.equal(await origin.stop(), 0, origin.stderr())
    }
  })

  test('systemd-analyze verify passes on the installed units', { skip: commandExists('systemd-analyze') ? false : 'systemd-analyze is not installed (Debian\'s systemd package)' }, async () => {
    // verify checks that ExecStart's program exists: point it at the unpacked package.
    // --man=no: the manual page is in the package, not yet in the host's man path.
    const dir = await tempDir()
    for (const unit of ['canopy-agent.service', 'canopy-origin.service']) {
      const text = await readFile(join(debRoot, 'usr/lib/systemd/system', unit), 'utf8')
      assert.match(text, /^ExecStart=\/usr\/bin\/canopy /m)
      await writeFile(join(dir, unit), text.replaceAll('/usr/bin/canopy', join(debRoot, 'usr/bin/canopy')))
    }
    const r = await run('systemd-analyze', ['verify', '--man=no', join(dir, 'canopy-agent.service'), join(dir, 'canopy-origin.service')], { PATH: '/usr/bin:/bin:/usr/sbin:/sbin' })
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.equal(r.stderr.trim(), '', r.stderr)
  })
})
