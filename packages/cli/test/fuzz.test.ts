// Property-based fuzzing of the files the CLI reads (issue 13): the agent's config
// file (every option it may set, with sizes, durations, counts, lists, switches and
// the bandwidth policy) and the origin's token file. Any content reads as options or
// is refused with a usage error that names the file: never another error, never a
// value outside the option's bounds. Fixed seed and bounded runs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { AGENT_OPTION_TABLE } from '@canopy/agent/options'
import { UsageError } from '../src/errors.ts'
import { configuredOptions } from '../src/verbs/agent.ts'
import { readTokenFile } from '../src/verbs/origin.ts'

const SEED = 13
const RUNS = { seed: SEED, numRuns: 200 }

const named = AGENT_OPTION_TABLE.filter(o => o.name !== undefined && o.flagOnly !== true)
/** Options that read another file (keys, tokens) or a peer address: their own tests. */
const READS_FILES = new Set(['swarm-key', 'peer-key', 'api-token-file', 'api-listen', 'peer', 'listen'])
const keys = [...named.map(o => o.name!).filter(n => !READS_FILES.has(n)), 'policy', 'no-such-option']

const valueish = fc.oneof(
  fc.constantFrom('30s', '5m', '1h', '2d', '0', '-1', '1.5', '1e3', '64KiB', '1MiB', '16 MiB', '9'.repeat(20), 'true', '', 'info', 'json', 'x'),
  fc.integer({ min: -10, max: 10 ** 7 }), fc.double(), fc.boolean(), fc.constant(null),
  fc.array(fc.constantFrom('/ip4/127.0.0.1/tcp/1', 'a,b', ''), { maxLength: 2 }),
  fc.record({ low: fc.constantFrom('1MiB/s', 'x', -1, 0), workHours: fc.constantFrom({ days: 'mon-fri', from: '08:00', to: '17:00', low: '1MiB' }, { from: '25:00' }, 'x') }, { requiredKeys: [] }),
  fc.jsonValue({ maxDepth: 2 })
)
const configs = fc.oneof(
  fc.dictionary(fc.constantFrom(...keys), valueish, { maxKeys: 4 }).map(v => JSON.stringify(v)),
  fc.jsonValue({ maxDepth: 2 }).map(v => JSON.stringify(v)),
  fc.string({ maxLength: 40 })
)

test('fuzz: agent config files read as bounded options or are refused with a usage error naming the file', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-fuzz-config-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'config.json')
  const byField = new Map<string, (typeof named)[number]>(named.filter(o => o.field !== undefined).map(o => [o.field!, o]))
  let accepted = 0
  await fc.assert(fc.asyncProperty(configs, async text => {
    await writeFile(file, text)
    let options
    try {
      options = await configuredOptions({ config: file }, dir)
    } catch (err) {
      assert.ok(err instanceof UsageError, `threw ${String(err)}`)
      assert.ok(err.message.includes(file) || err.message.includes('--'), err.message)
      return
    }
    accepted++
    for (const [field, value] of Object.entries(options)) {
      const o = byField.get(field)
      if (o === undefined || typeof value !== 'number') continue
      assert.ok(Number.isSafeInteger(value) && value >= (o.min ?? 0) && (o.max === undefined || value <= o.max), `${field} = ${value}`)
    }
  }), RUNS)
  assert.ok(accepted > 0, 'some generated files were valid')
})

test('fuzz: origin token files read as tokens with rights, or are refused with a usage error', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'canopy-fuzz-tokens-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'tokens')
  const line = fc.oneof(
    fc.tuple(fc.stringMatching(/^[!-~]{1,12}$/), fc.constantFrom('', ' download', ' upload', ' download,upload', ' admin', ' download,', '\tupload', ' upload extra')).map(([t, r]) => `${t}${r}`),
    fc.constantFrom('', '# comment', '   ', '\r'), fc.string({ maxLength: 20 })
  )
  await fc.assert(fc.asyncProperty(fc.array(line, { maxLength: 5 }), async lines => {
    await writeFile(file, lines.join('\n'))
    let grants
    try {
      grants = await readTokenFile(file)
    } catch (err) {
      assert.ok(err instanceof UsageError, `threw ${String(err)}`)
      return
    }
    assert.ok(grants.length >= 1)
    for (const g of grants) {
      const token = typeof g === 'string' ? g : g.token
      // docs/CONFIGURATION.md: a token is printable ASCII without spaces.
      assert.match(token, /^[!-~]+$/, JSON.stringify(g))
      if (typeof g !== 'string') assert.ok(g.rights.length > 0 && g.rights.every(r => r === 'download' || r === 'upload'), JSON.stringify(g))
    }
  }), RUNS)
})
