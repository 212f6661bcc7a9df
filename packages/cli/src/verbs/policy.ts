/** `canopy policy`: the agent's bandwidth policy, shown and changed live. */
import { formatBytes } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { flag, JSON_OPTION, out, printJson, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'

const CAPS = ['background', 'high', 'normal', 'low']

function rate (value: unknown): string {
  return typeof value === 'number' ? (value === 0 ? '0 (blocked)' : `${formatBytes(value)}/s`) : String(value)
}

/**
 * Applies `key=value` changes to a policy in its written form: `low=2MiB/s`,
 * `workHours.from=08:00`, `key=none` removes a setting. Values stay text: the agent
 * parses them and names the key it cannot read.
 */
export function applyChanges (policy: Record<string, unknown>, changes: string[]): Record<string, unknown> {
  const next: Record<string, unknown> = structuredClone(policy)
  for (const change of changes) {
    const eq = change.indexOf('=')
    if (eq <= 0) throw new UsageError(`"${change}" is not KEY=VALUE, e.g. low=2MiB/s or workHours.from=08:00`, 'policy')
    const key = change.slice(0, eq).trim()
    const text = change.slice(eq + 1).trim()
    const value: unknown = text === 'true' ? true : text === 'false' ? false : text
    const path = key.split('.')
    if (path.length > 2 || (path.length === 2 && path[0] !== 'workHours')) throw new UsageError(`${key}: only workHours has settings of its own (workHours.days, .from, .to, .background, .high, .normal, .low)`, 'policy')
    let target = next
    if (path.length === 2) {
      if (typeof next.workHours !== 'object' || next.workHours === null) next.workHours = {}
      target = next.workHours as Record<string, unknown>
    }
    const leaf = path.at(-1)!
    if (text === 'none') delete target[leaf]
    else target[leaf] = value
  }
  return next
}

export const policyVerb: Verb = {
  name: 'policy',
  summary: 'show or change the bandwidth policy (caps, work hours)',
  help: `Usage: canopy policy [--json]
       canopy policy set KEY=VALUE [KEY=VALUE ...]
       canopy policy reset

Shows the bandwidth policy in force: caps on background jobs (all of them, and per
priority), the weekly work hours with their own caps, the cap on serving peers, and
whether LAN peer traffic is exempt from the WAN caps. Foreground jobs are never
capped. A cap of 0 blocks: the jobs it applies to wait, and say so.

\`set\` changes settings live (the agent keeps its previous policy when a value does
not parse, and names it); a change lasts until the agent stops: put the policy in
the config file ("policy": {...}) to keep it. \`reset\` removes every cap.

Keys: background, high, normal, low, peerServing (rates: 2MiB/s, 512KiB/s, 20mbit,
bytes/s; 0 blocks), lanPeersExempt (true/false), workHours.days (mon-fri,
sat,sun), workHours.from / workHours.to (HH:MM, local time), workHours.background,
workHours.high, workHours.normal, workHours.low. VALUE none removes a setting.

Options:
  --json          print { policy, workHoursNow } as JSON on stdout

Examples:
  canopy policy
  canopy policy set low=2MiB/s background=10MiB/s
  canopy policy set workHours.days=mon-fri workHours.from=08:00 workHours.to=17:00 workHours.low=0
  canopy policy set low=none
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: Infinity, name: 'set KEY=VALUE ...' },
  async run (ctx) {
    const [action, ...changes] = ctx.positionals
    if (action !== undefined && action !== 'set' && action !== 'reset') throw new UsageError(`unknown policy action "${action}": use set or reset`, 'policy')
    if (action === 'set' && changes.length === 0) throw new UsageError('policy set needs at least one KEY=VALUE', 'policy')
    if (action === 'reset' && changes.length > 0) throw new UsageError('policy reset takes no arguments', 'policy')
    const view = await withClient(ctx, async client => {
      if (action === undefined) return await client.policy()
      if (action === 'reset') return await client.setPolicy({})
      const next = applyChanges((await client.policy()).policy, changes)
      return await client.setPolicy(next)
    })
    if (flag(ctx.values, 'json')) {
      printJson(view)
      return ExitCode.Ok
    }
    const p = view.policy
    const caps = CAPS.filter(k => p[k] !== undefined).map(k => `${k} ${rate(p[k])}`)
    out(`caps: ${caps.length === 0 ? 'none' : caps.join(', ')}\n`)
    const w = p.workHours as Record<string, unknown> | undefined
    if (w !== undefined) {
      const wcaps = CAPS.filter(k => w[k] !== undefined).map(k => `${k} ${rate(w[k])}`)
      out(`work hours: ${String(w.days)} ${String(w.from)}-${String(w.to)}: ${wcaps.join(', ')}${view.workHoursNow ? ' (in force now)' : ''}\n`)
    }
    if (p.peerServing !== undefined) out(`serving peers: at most ${rate(p.peerServing)}\n`)
    out(`LAN peer traffic ${p.lanPeersExempt === false ? 'counts' : 'does not count'} against the WAN caps\n`)
    return ExitCode.Ok
  }
}
