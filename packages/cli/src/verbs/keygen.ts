/** `canopy keygen`: a new organisation swarm key. */
import { ExitCode } from '../errors.ts'
import { out } from '../verb.ts'
import type { Verb } from '../verb.ts'

export const keygenVerb: Verb = {
  name: 'keygen',
  summary: 'print a new organisation swarm key (peer membership)',
  help: `Usage: canopy keygen > org.key

Prints a new swarm key: 32 random bytes, hex, after the header line
/canopy/swarm-key/1.0.0. Agents that hold the same key accept each other as
peers; a node without it cannot complete a connection to them. Keep the file
owner-only (chmod 600) and distribute it like any other secret.

Examples:
  canopy keygen > org.key && chmod 600 org.key
`,
  options: {},
  positionals: { min: 0, max: 0, name: '' },
  async run () {
    const { generateSwarmKey } = await import('@canopy/agent/peers')
    out(generateSwarmKey())
    return ExitCode.Ok
  }
}
