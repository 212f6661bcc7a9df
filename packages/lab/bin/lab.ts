#!/usr/bin/env node
// npm run lab -- <scenario> [--engine netns|compose] [--agents N] [--size SIZE] [--wan RATE] [--out DIR] [--keep]
// npm run lab -- check | clean | compose
// Prints the scenario's JSON report on stdout (progress on stderr) and exits 0 when
// its verdict is a pass, 1 when not, 2 on bad usage, 3 when this machine cannot build
// the lab on the chosen engine, 130 when interrupted. The lab is torn down in every case.
import { parseArgs } from 'node:util'
import { parseSize } from '@canopy/core'
import { cleanComposeLabs, cleanNamespaces, composeSupport, ENGINES, netnsSupport, parseRate, renderCompose, runScenario, SCENARIO_SPECS, SCENARIOS } from '../src/index.ts'
import type { EngineName } from '../src/index.ts'

const USAGE = `Usage: npm run lab -- <scenario> [options]
       npm run lab -- check [--engine E]   can this machine build the lab?
       npm run lab -- clean      remove every lab (namespaces, containers, networks)
       npm run lab -- compose    print docker-compose.yml (built from the same topology)

Scenarios:
${SCENARIOS.map(s => `  ${s.padEnd(15)} ${SCENARIO_SPECS[s].summary}`).join('\n')}

Options:
  --engine E     netns (network namespaces, the default) or compose (Docker
                 containers through docker-compose; builds the lab image first)
  --agents N     agent hosts on the branch LAN (default 4)
  --size SIZE    content size, e.g. 32MiB (default 64MiB)
  --wan RATE     WAN rate, e.g. 20mbit (default 20mbit)
  --out DIR      where the JSON report and the SVG chart go (default lab-results)
  --keep         keep the work directory (content, agents' state and logs)

netns needs root and iproute2 (ip netns, veth, bridge, tc tbf); compose needs a
Docker engine and docker-compose. Examples:
  sudo npm run lab -- patch-day --agents 4 --size 64MiB --wan 20mbit
  npm run lab -- patch-day --engine compose
`

let parsed
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      engine: { type: 'string' },
      agents: { type: 'string' },
      size: { type: 'string' },
      wan: { type: 'string' },
      out: { type: 'string' },
      keep: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' }
    }
  })
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n\n${USAGE}`)
  process.exit(2)
}
const { values, positionals } = parsed
const command = positionals[0]
if (values.help === true || command === undefined || positionals.length > 1) {
  process.stdout.write(USAGE)
  process.exit(values.help === true ? 0 : 2)
}

if (command === 'compose') {
  process.stdout.write(renderCompose())
  process.exit(0)
}
if (command === 'clean') {
  const removed = await cleanNamespaces(true)
  process.stderr.write(removed.length === 0 ? 'no lab namespaces\n' : `removed ${removed.join(', ')}\n`)
  if ((await composeSupport()).ok) {
    const labs = await cleanComposeLabs(true)
    process.stderr.write(labs.length === 0 ? 'no compose labs\n' : `removed the containers and networks of the compose labs of process ${labs.join(', ')}\n`)
  }
  process.exit(0)
}
const engine = (values.engine ?? 'netns') as EngineName
if (!ENGINES.includes(engine)) {
  process.stderr.write(`--engine ${engine}: choose ${ENGINES.join(' or ')}\n`)
  process.exit(2)
}
const support = engine === 'compose' ? await composeSupport() : await netnsSupport()
if (command === 'check') {
  process.stdout.write(JSON.stringify(support) + '\n')
  process.exit(support.ok ? 0 : 3)
}
if (!(SCENARIOS as readonly string[]).includes(command)) {
  process.stderr.write(`no scenario or command "${command}"\n\n${USAGE}`)
  process.exit(2)
}
if (!support.ok) {
  process.stderr.write(`cannot build the ${engine} lab: ${support.reason}\n`)
  process.exit(3)
}

let options
try {
  options = {
    ...(values.agents !== undefined ? { agents: Number(values.agents) } : {}),
    ...(values.size !== undefined ? { size: parseSize(values.size) } : {}),
    ...(values.wan !== undefined ? { wanBitsPerSecond: parseRate(values.wan) } : {})
  }
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`)
  process.exit(2)
}

const interrupt = new AbortController()
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => interrupt.abort(new Error(`interrupted (${signal})`)))
try {
  const report = await runScenario(command, {
    ...options,
    engine,
    outDir: values.out ?? 'lab-results',
    keepWorkDir: values.keep === true,
    signal: interrupt.signal,
    log: line => process.stderr.write(`${line}\n`)
  })
  process.stdout.write(JSON.stringify(report, (key, value) => key === 'samples' ? undefined : value as unknown, 2) + '\n')
  process.stderr.write(report.pass ? `${command}: pass\n` : `${command}: FAIL\n${report.reasons.map(r => `  - ${r}\n`).join('')}`)
  if (report.files !== undefined) process.stderr.write(`report: ${report.files.json}\nchart:  ${report.files.svg}\n`)
  process.exit(report.pass ? 0 : 1)
} catch (err) {
  const code = (err as { code?: string }).code
  process.stdout.write(JSON.stringify({ scenario: command, pass: false, reasons: [(err as Error).message], ...(code !== undefined ? { code } : {}) }, null, 2) + '\n')
  process.stderr.write(`${command}: ${(err as Error).message}\n`)
  process.exit(interrupt.signal.aborted ? 130 : (code === 'ERR_INVALID_ARGUMENT' ? 2 : 1))
}
