/** `canopy peers` and `canopy cache`: the agent's peers and its cache for them. */
import { formatBytes } from '@canopy/core'
import { formatTable, when } from '../format.ts'
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
      for (const p of view.peers) out(`${p.peerId}${p.hostedCache === true ? ' (hosted cache)' : ''}  from ${formatBytes(p.bytesFromPeer)}  to ${formatBytes(p.bytesToPeer)}  ${p.addresses.join(' ')}\n`)
      for (const b of view.bans) out(`banned ${b.peerId} until ${when(b.until)}\n`)
    }
    return ExitCode.Ok
  }
}

export const cacheVerb: Verb = {
  name: 'cache',
  summary: 'show (or clear) the files kept for peers',
  help: `Usage: canopy cache [clear] [--json]

Shows the completed files the agent keeps for its peers (hard links under
<state-dir>/cache), their use of the quota, and for each its name, size, where it
came from (the URL it was downloaded or preloaded from, or "offered by <peer>" for
content a hosted cache pulled), when it was last used and when it was added
(times in ISO 8601, UTC); then peers' requests since the agent started: hits (for
content it held), misses, and the bytes it served them. The least recently used
file goes first when a new one does not fit the quota (never one peers are reading
at that moment). Fill it with \`canopy preload URL...\`.
\`canopy cache clear\` empties it and lists what it removed; files being
downloaded stay shared.

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
    const [before, view] = await withClient(ctx, async client => {
      const before = clear ? await client.cache() : undefined
      return [before, clear ? await client.clearCache() : await client.cache()] as const
    })
    if (flag(ctx.values, 'json')) printJson(view)
    else if (before !== undefined) {
      const kept = new Set(view.entries.map(e => e.manifestId))
      const removed = before.entries.filter(e => !kept.has(e.manifestId))
      out(removed.length === 0 ? 'the cache was empty: nothing removed\n' : formatTable(['REMOVED', 'SIZE', 'MANIFEST'], removed.map(e => [e.name ?? '(unnamed)', formatBytes(e.size), e.manifestId])))
      out(`freed ${formatBytes(removed.reduce((n, e) => n + e.size, 0))}; ${formatBytes(view.usedBytes)} of ${formatBytes(view.quotaBytes)} used\n`)
    } else {
      out(`${formatBytes(view.usedBytes)} of ${formatBytes(view.quotaBytes)} used, ${view.entries.length} file${view.entries.length === 1 ? '' : 's'}; ` +
        `peers' requests: ${view.hits} hit${view.hits === 1 ? '' : 's'}, ${view.misses} miss${view.misses === 1 ? '' : 'es'}, ${formatBytes(view.bytesServed)} served\n`)
      if (view.entries.length > 0) {
        // Most recently used first: the ones least likely to be evicted next.
        const rows = [...view.entries].sort((x, y) => y.usedAt.localeCompare(x.usedAt))
          .map(e => [e.name ?? '(unnamed)', formatBytes(e.size), when(e.usedAt) ?? '', when(e.addedAt) ?? '', e.source ?? '(unknown)'])
        // The source last: a URL is long, and the last column is not padded.
        out(formatTable(['NAME', 'SIZE', 'LAST USED', 'ADDED', 'SOURCE'], rows))
      }
    }
    return ExitCode.Ok
  }
}
