/** `canopy watch`: the agent's live events, as lines or JSON lines. */
import type { AgentEvent } from '@canopy/core'
import { ExitCode } from '../errors.ts'
import { formatEvent } from '../format.ts'
import { flag, inform, interruptible, JSON_OPTION, jobId, out, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'

/** The exit code once the watched job is where it stays without a person, else undefined. */
function settled (event: AgentEvent): number | undefined {
  if (event.type === 'removed') return ExitCode.JobFailed
  switch (event.job.state) {
    case 'acknowledged': return ExitCode.Ok
    case 'cancelled': case 'error': return ExitCode.JobFailed
    default: return undefined
  }
}

export const watchVerb: Verb = {
  name: 'watch',
  summary: 'print the agent\'s live events: state changes and progress',
  help: `Usage: canopy watch [<id>] [--json] [--state-dir D]

Prints the agent's events as they happen: first each job as it is now (the job
<id>, or every job not yet finished), then state changes, progress (at most twice
a second per job), priority changes and removals. One line per event:

  12:04:05Z  3f2a9c1e  base.iso  -> transferring

With <id>, it exits when the job is acknowledged (exit 0), or cancelled or in
error (exit 1, with the reason on the line before); a job that is already there
exits at once. A job without auto-complete that waits in transferred for
\`canopy complete\` keeps it watching. Without <id>, it runs until Ctrl-C (exit 130), which never affects
the jobs. If the agent stops, watch exits 4.

Options:
  --json          one JSON object per line (AgentEvent: {"type":"state","job":{...}};
                  types snapshot, state, progress, updated, removed) on stdout
  --state-dir D   the agent's state directory

Examples:
  canopy watch
  canopy watch 3f2a9c1e && echo "installed"
  canopy watch --json | jq -c 'select(.type == "state") | [.job.id, .job.state]'
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: 1, name: '[<id>]' },
  async run (ctx) {
    const id = ctx.positionals[0] === undefined ? undefined : jobId(ctx.positionals[0], 'watch')
    const json = flag(ctx.values, 'json')
    return await withClient(ctx, async client => await interruptible(async signal => {
      const events = await client.watch({ ...(id !== undefined ? { jobId: id } : {}), signal })
      try {
        for await (const event of events) {
          out(json ? `${JSON.stringify(event)}\n` : `${formatEvent(event)}\n`)
          const code = id === undefined ? undefined : settled(event)
          if (code !== undefined) return code
        }
      } finally {
        await events.close()
      }
      return ExitCode.Ok
    }, () => { if (!json) inform('canopy: stopped watching') }))
  }
}
