// `npm run package`: the release artifacts, which install on a Linux machine without a
// Node.js toolchain. Each carries the Node.js 24 runtime that `npm ci` installed (the
// registry's `node` package) and the production dependencies only:
//   dist/canopy-branch_<version>_<deb-arch>.deb         for Debian and Ubuntu
//   dist/canopy-branch-<version>-linux-<arch>.tar.gz    for any other distribution
// The package is named canopy-branch: "canopy" is taken in the npm registry (a parser
// generator), so the name stays clear of it in Debian's archive too.
//
// Layout (the .deb puts the application directory at /usr/lib/canopy-branch):
//   bin/canopy       a shell wrapper that runs the CLI with the runtime beside it
//   bin/node         the runtime
//   packages/<name>  the workspaces, TypeScript as in the repository (Node 24 strips the
//                    types; it refuses to do so under node_modules, so the workspaces
//                    stay out of it and node_modules/@canopy/<name> links to them, as
//                    npm's workspaces do)
//   node_modules/    the third-party packages the lock file does not mark "dev"
//   share/           the systemd units and example configuration (tarball only; the
//                    .deb puts them where systemd and dpkg look)
//
// Usage: node scripts/package.ts [--out DIR] [--no-deb] [--no-tarball]
// Needs dpkg-deb for the .deb (Debian's dpkg package) and tar with gzip.
import { execFileSync } from 'node:child_process'
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

export const PACKAGE_NAME = 'canopy-branch'
/** The workspaces a release carries: not the lab (a test bench), and no tests. */
const SHIPPED_WORKSPACES = ['core', 'client', 'origin', 'agent', 'cli']
/** What a shipped workspace is made of. */
const WORKSPACE_PARTS = ['package.json', 'src', 'bin']
const DEB_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf' }

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')

interface LockEntry { dev?: boolean, link?: boolean, optional?: boolean }

function run (cmd: string, args: string[], cwd?: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
}

function readJson<T> (path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T
}

/** The version `canopy --version` prints. */
export function releaseVersion (): string {
  return readJson<{ version: string }>(join(repo, 'packages/cli/package.json')).version
}

/** Artifact names of a version for this machine's architecture. */
export function artifactNames (version = releaseVersion(), arch = process.arch): { deb: string, tarball: string, dir: string } {
  const debArch = DEB_ARCH[arch]
  if (debArch === undefined) throw new Error(`no Debian architecture is known for ${arch}`)
  const dir = `${PACKAGE_NAME}-${version}-linux-${arch}`
  return { deb: `${PACKAGE_NAME}_${version}_${debArch}.deb`, tarball: `${dir}.tar.gz`, dir }
}

/**
 * The runtime: the real binary of the registry's `node` package (node_modules/.bin/node
 * links to it). It must be Node 24, the version the sources are written for.
 */
function nodeRuntime (): string {
  const binary = join(repo, 'node_modules/node/bin/node')
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run \`npm ci\` first (it installs Node 24 from the registry's node package)`)
  const version = run(binary, ['--version']).trim()
  if (!version.startsWith('v24.')) throw new Error(`${binary} is ${version}, not Node 24`)
  return binary
}

/** Copies the third-party packages the lock file does not mark "dev" (workspaces are linked, not copied). */
function copyProductionModules (app: string): void {
  const lock = readJson<{ packages: Record<string, LockEntry> }>(join(repo, 'package-lock.json'))
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (!key.startsWith('node_modules/') || entry.dev === true || entry.link === true) continue
    // Nested copies (node_modules/a/node_modules/b) come with their top-level package.
    if (key.slice('node_modules/'.length).includes('/node_modules/')) continue
    const from = join(repo, key)
    if (!existsSync(from)) {
      if (entry.optional === true) continue // another platform's optional package
      throw new Error(`${key} is in package-lock.json but not installed: run \`npm ci\` first`)
    }
    cpSync(from, join(app, key), { recursive: true, verbatimSymlinks: true })
  }
  for (const name of SHIPPED_WORKSPACES) {
    const link = join(app, 'node_modules/@canopy', name)
    mkdirSync(dirname(link), { recursive: true })
    symlinkSync(relative(dirname(link), join(app, 'packages', name)), link)
  }
  // classic-level (the level store) loads a prebuilt binding for the platform; the other
  // platforms' builds and the LevelDB sources are dead weight here.
  const classic = join(app, 'node_modules/classic-level')
  if (existsSync(classic)) {
    rmSync(join(classic, 'deps'), { recursive: true, force: true })
    const prebuilds = join(classic, 'prebuilds')
    for (const dir of existsSync(prebuilds) ? readdirSync(prebuilds) : []) {
      if (dir !== `linux-${process.arch}`) rmSync(join(prebuilds, dir), { recursive: true })
    }
  }
}

const WRAPPER = `#!/bin/sh
# canopy: runs the Canopy CLI with the Node.js runtime shipped beside this script
# (${PACKAGE_NAME}). exec keeps the process id, so systemd sees the daemon itself.
app=$(dirname "$(dirname "$(readlink -f "$0")")")
exec "$app/bin/node" "$app/packages/cli/bin/canopy.js" "$@"
`

/** The application directory: runtime, workspaces, production node_modules, wrapper. */
function stageApp (app: string, version: string): void {
  mkdirSync(join(app, 'bin'), { recursive: true })
  cpSync(nodeRuntime(), join(app, 'bin/node'))
  writeFileSync(join(app, 'bin/canopy'), WRAPPER, { mode: 0o755 })
  chmodSync(join(app, 'bin/canopy'), 0o755)
  for (const name of SHIPPED_WORKSPACES) {
    for (const part of WORKSPACE_PARTS) {
      const from = join(repo, 'packages', name, part)
      if (existsSync(from)) cpSync(from, join(app, 'packages', name, part), { recursive: true })
    }
  }
  const root = readJson<Record<string, unknown>>(join(repo, 'package.json'))
  writeFileSync(join(app, 'package.json'), JSON.stringify({
    name: PACKAGE_NAME,
    version,
    private: true,
    description: root.description,
    type: 'module',
    license: root.license,
    workspaces: SHIPPED_WORKSPACES.map(n => `packages/${n}`)
  }, null, 2) + '\n')
  copyProductionModules(app)
}

/** Files for systemd and /etc, shared by the tarball (under share/) and the .deb. */
function deployFiles (): Array<{ from: string, debPath: string, tarPath: string, mode: number }> {
  return [
    { from: 'deploy/systemd/canopy-agent.service', debPath: 'usr/lib/systemd/system/canopy-agent.service', tarPath: 'share/systemd/canopy-agent.service', mode: 0o644 },
    { from: 'deploy/systemd/canopy-origin.service', debPath: 'usr/lib/systemd/system/canopy-origin.service', tarPath: 'share/systemd/canopy-origin.service', mode: 0o644 },
    { from: 'deploy/etc/agent.json', debPath: 'etc/canopy/agent.json', tarPath: 'share/etc/agent.json', mode: 0o640 },
    { from: 'deploy/etc/origin.env', debPath: 'etc/canopy/origin.env', tarPath: 'share/etc/origin.env', mode: 0o640 },
    { from: 'README.md', debPath: `usr/share/doc/${PACKAGE_NAME}/README.md`, tarPath: 'README.md', mode: 0o644 }
  ]
}

function copyFile (from: string, to: string, mode: number): void {
  mkdirSync(dirname(to), { recursive: true })
  cpSync(from, to)
  chmodSync(to, mode)
}

/** Shell completions and the manual page, made by the staged `canopy` itself (so they match what ships). */
function generatedDocs (app: string): Array<{ text: string, debPath: string, tarPath: string }> {
  const canopy = (args: string[]): string => run(join(app, 'bin/canopy'), args)
  return [
    { text: canopy(['completion', 'bash']), debPath: 'usr/share/bash-completion/completions/canopy', tarPath: 'share/completions/canopy.bash' },
    { text: canopy(['completion', 'zsh']), debPath: 'usr/share/zsh/vendor-completions/_canopy', tarPath: 'share/completions/_canopy' },
    { text: canopy(['help', '--man']), debPath: 'usr/share/man/man1/canopy.1', tarPath: 'share/man/man1/canopy.1' }
  ]
}

function duKiB (dir: string): number {
  return Number(run('du', ['-sk', dir]).split('\t')[0])
}

function buildTarball (stage: string, dirName: string, out: string, docs: ReturnType<typeof generatedDocs>): void {
  const app = join(stage, dirName)
  for (const f of deployFiles()) copyFile(join(repo, f.from), join(app, f.tarPath), f.mode)
  for (const d of docs) {
    mkdirSync(dirname(join(app, d.tarPath)), { recursive: true })
    writeFileSync(join(app, d.tarPath), d.text)
  }
  run('tar', ['--owner=0', '--group=0', '--numeric-owner', '-czf', out, '-C', stage, dirName])
}

function maintainerScripts (): Record<string, string> {
  const dir = join(repo, 'deploy/debian')
  return Object.fromEntries(['postinst', 'prerm', 'postrm'].map(name => [name, readFileSync(join(dir, name), 'utf8')]))
}

function buildDeb (stage: string, appDir: string, version: string, out: string, docs: ReturnType<typeof generatedDocs>): void {
  const root = join(stage, 'deb')
  rmSync(root, { recursive: true, force: true })
  const libDir = join(root, 'usr/lib', PACKAGE_NAME)
  mkdirSync(dirname(libDir), { recursive: true })
  // Hard links: the same files as the tarball's, without a second copy on disk.
  run('cp', ['-al', appDir, libDir])
  rmSync(join(libDir, 'share'), { recursive: true, force: true })
  rmSync(join(libDir, 'README.md'), { force: true })
  mkdirSync(join(root, 'usr/bin'), { recursive: true })
  symlinkSync(`../lib/${PACKAGE_NAME}/bin/canopy`, join(root, 'usr/bin/canopy'))
  for (const f of deployFiles()) copyFile(join(repo, f.from), join(root, f.debPath), f.mode)
  for (const d of docs) {
    mkdirSync(dirname(join(root, d.debPath)), { recursive: true })
    writeFileSync(join(root, d.debPath), d.text)
  }
  run('gzip', ['-9n', join(root, 'usr/share/man/man1/canopy.1')])
  const control = join(root, 'DEBIAN')
  mkdirSync(control)
  const debArch = DEB_ARCH[process.arch]
  writeFileSync(join(control, 'control'), `Package: ${PACKAGE_NAME}
Version: ${version}
Architecture: ${debArch}
Maintainer: Canopy developers <canopy@localhost>
Installed-Size: ${duKiB(root)}
Section: net
Priority: optional
Depends: procps
Recommends: systemd
Homepage: https://github.com/canopy-branch/canopy
Description: background transfers with peer caching for branch offices
 Canopy moves files in the background: an agent runs persistent, resumable download
 jobs and verifies every block against the manifest its origin publishes; agents of
 a branch office share verified blocks, so the WAN carries each byte about once.
 This package carries its own Node.js runtime and installs the canopy command, the
 canopy-agent and canopy-origin systemd units, and a canopy system user.
`)
  writeFileSync(join(control, 'conffiles'), deployFiles().filter(f => f.debPath.startsWith('etc/')).map(f => `/${f.debPath}\n`).join(''))
  for (const [name, text] of Object.entries(maintainerScripts())) writeFileSync(join(control, name), text, { mode: 0o755 })
  // gzip: every dpkg reads it, and it packs the ~120 MB runtime in seconds where xz takes minutes.
  run('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', root, out])
}

export interface Artifacts { deb?: string, tarball?: string }

/** Builds the artifacts into `outDir`; resolves with their paths. */
export function buildPackages (outDir: string, options: { deb?: boolean, tarball?: boolean } = {}): Artifacts {
  const version = releaseVersion()
  const names = artifactNames(version)
  const stage = join(outDir, 'stage')
  rmSync(stage, { recursive: true, force: true })
  const app = join(stage, names.dir)
  stageApp(app, version)
  const docs = generatedDocs(app)
  const artifacts: Artifacts = {}
  if (options.tarball !== false) {
    artifacts.tarball = join(outDir, names.tarball)
    buildTarball(stage, names.dir, artifacts.tarball, docs)
  }
  if (options.deb !== false) {
    artifacts.deb = join(outDir, names.deb)
    buildDeb(stage, app, version, artifacts.deb, docs)
  }
  rmSync(stage, { recursive: true, force: true })
  return artifacts
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { out: { type: 'string' }, 'no-deb': { type: 'boolean' }, 'no-tarball': { type: 'boolean' } } })
  const outDir = resolve(values.out ?? join(repo, 'dist'))
  mkdirSync(outDir, { recursive: true })
  const started = Date.now()
  const artifacts = buildPackages(outDir, { deb: values['no-deb'] !== true, tarball: values['no-tarball'] !== true })
  for (const file of Object.values(artifacts)) {
    process.stdout.write(`${relative(process.cwd(), file)}  ${(statSync(file).size / 2 ** 20).toFixed(1)} MiB\n`)
  }
  process.stdout.write(`built in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
}
