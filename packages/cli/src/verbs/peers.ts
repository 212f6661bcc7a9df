/** `canopy peers` and `canopy cache`: the agent's peers and its cache for them. */
import { formatBytes } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { flag, JSON_OPTION, out, printJson, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'

export const peersVerb: Verb = {
  name: 'peers',
  summary: 'list the connected peers, bytes exchanged and bans',
  help: `Usage: canopy peers [--json]

Lists the peers the agent is connected to (same swarm key), with their addresses
and the verified bytes received from and sent to each since the agent started, and
the peers banned for sending bad blocks.

Options:
  --json          print { peers, bans } as JSON on stdout

Examples:
  canopy peers
  canopy peers --json
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const view = await withClient(ctx, async client => await client.peers())
    if (flag(ctx.values, 'json')) printJson(view)
    else {
      if (view.peers.length === 0) out('no connected peers\n')
      for (const p of view.peers) out(`${p.peerId}  from ${formatBytes(p.bytesFromPeer)}  to ${formatBytes(p.bytesToPeer)}  ${p.addresses.join(' ')}\n`)
      for (const b of view.bans) out(`banned ${b.peerId} until ${b.until}\n`)
    }
    return ExitCode.Ok
  }
}

export const cacheVerb: Verb = {
  name: 'cache',
  summary: 'show (or clear) the files kept for peers',
  help: `Usage: canopy cache [clear] [--json]

Shows the completed files the agent keeps for its peers (hard links under
<state-dir>/cache), their use of the quota, and when each was last served.
\`canopy cache clear\` empties it; files being downloaded stay shared.

Options:
  --json          print the cache (CacheView) as JSON on stdout

Examples:
  canopy cache
  canopy cache clear
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: 1, name: 'clear' },
  async run (ctx) {
    const clear = ctx.positionals[0] === 'clear'
    if (ctx.positionals.length === 1 && !clear) {
      throw new UsageError(`unknown cache action "${ctx.positionals[0]}": the only one is clear`, 'cache')
    }
    const view = await withClient(ctx, async client => clear ? await client.clearCache() : await client.cache())
    if (flag(ctx.values, 'json')) printJson(view)
    else {
      out(`${formatBytes(view.usedBytes)} of ${formatBytes(view.quotaBytes)} used, ${view.entries.length} file${view.entries.length === 1 ? '' : 's'}\n`)
      for (const e of view.entries) out(`${e.manifestId}  ${formatBytes(e.size)}  last used ${e.usedAt}\n`)
    }
    return ExitCode.Ok
  }
}
