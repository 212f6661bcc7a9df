// The conventions of a Unix command: version, shell completion and a manual page made
// from the same help text as --help, and --quiet for scripts.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { VERBS } from '../packages/cli/src/cli.ts'
import { runCli, startAgentProcess, tempDir } from './helpers.ts'

function has (tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0
}

test('canopy version, --version and version --json agree', async () => {
  const plain = await runCli(['--version'])
  assert.equal(plain.code, 0)
  assert.equal((await runCli(['version'])).stdout, plain.stdout)
  const json = JSON.parse((await runCli(['version', '--json'])).stdout) as Record<string, string>
  assert.equal(`canopy ${json.version}\n`, plain.stdout)
  assert.equal(json.node, process.versions.node)
  assert.equal(json.arch, process.arch)
})

/** What bash completes for the words of a command line (the last one being typed). */
async function bashComplete (script: string, words: string[]): Promise<string[]> {
  const r = spawnSync('bash', ['-c', `source "$1"; COMP_WORDS=(${words.map(w => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _canopy; printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', script], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  return r.stdout.split('\n').filter(Boolean)
}

test('canopy completion bash completes commands and each command\'s flags', { skip: has('bash') ? false : 'bash is not installed' }, async () => {
  const r = await runCli(['completion', 'bash'])
  assert.equal(r.code, 0, r.stderr)
  const script = join(await tempDir(), 'canopy.bash')
  await writeFile(script, r.stdout)
  assert.deepEqual(await bashComplete(script, ['canopy', 'ge']), ['get'])
  assert.deepEqual((await bashComplete(script, ['canopy', '']))?.sort(), [...VERBS.map(v => v.name), 'help', '--state-dir', '--help', '--version', '--quiet'].sort())
  assert.deepEqual(await bashComplete(script, ['canopy', '--state-dir', '/tmp', 'get', '--det']), ['--detach'])
  assert.ok((await bashComplete(script, ['canopy', 'agent', '--log-']))?.includes('--log-format'))
  assert.deepEqual(await bashComplete(script, ['canopy', 'completion', 'z']), ['zsh'])
  assert.deepEqual(await bashComplete(script, ['canopy', 'help', 'orig']), ['origin'])
})

test('canopy completion zsh is a zsh script for every command', async () => {
  const r = await runCli(['completion', 'zsh'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^#compdef canopy\n/)
  for (const verb of VERBS) assert.match(r.stdout, new RegExp(`^ {4}${verb.name}\\) _arguments `, 'm'))
  if (has('zsh')) {
    const file = join(await tempDir(), '_canopy')
    await writeFile(file, r.stdout)
    const check = spawnSync('zsh', ['-n', file], { encoding: 'utf8' })
    assert.equal(check.status, 0, check.stderr)
  } else {
    process.stdout.write('zsh is not installed: the zsh script was not parsed by zsh\n')
  }
  assert.equal((await runCli(['completion', 'fish'])).code, 2)
})

test('canopy help --man is a manual page with every command\'s help', async () => {
  const r = await runCli(['help', '--man'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^\.TH CANOPY 1 /)
  for (const verb of VERBS) {
    assert.match(r.stdout, new RegExp(`^\\.SS ${verb.name}$`, 'm'))
    const usage = verb.help.split('\n')[0]
    assert.ok(r.stdout.includes(usage), usage)
  }
  if (has('groff')) {
    const rendered = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z'], { input: r.stdout, encoding: 'utf8' })
    assert.equal(rendered.status, 0)
    assert.equal(rendered.stderr, '', 'groff has no warnings')
  }
})

test('--quiet leaves out messages and hints, not results or errors', async () => {
  const stateDir = await tempDir()
  const agent = await startAgentProcess(stateDir, ['--no-p2p'])
  try {
    const chatty = await runCli(['jobs', '--state-dir', stateDir])
    assert.equal(chatty.code, 0)
    assert.match(chatty.stderr, /no jobs/)
    for (const args of [['-q', 'jobs'], ['--quiet', 'jobs'], ['jobs', '--quiet'], ['jobs', '-q']]) {
      const quiet = await runCli([...args, '--state-dir', stateDir])
      assert.equal(quiet.code, 0, args.join(' '))
      assert.equal(quiet.stderr, '', args.join(' '))
    }
    const json = await runCli(['jobs', '--json', '--quiet', '--state-dir', stateDir])
    assert.equal(json.stdout.trim(), '[]')
    const error = await runCli(['job', 'no-such-job', '--quiet', '--state-dir', stateDir])
    assert.notEqual(error.code, 0)
    assert.match(error.stderr, /^canopy: /)
  } finally {
    await agent.kill()
  }
})
