/** The read and control verbs: jobs, job, suspend, resume, cancel, complete, status. */
import type { CanopyClient } from '@canopy/client'
import { formatBytes } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { formatJobDetails, formatJobsTable, formatState, formatStatus } from '../format.ts'
import { flag, inform, JSON_OPTION, jobId, out, printJson, priorityOption, rateLimitOption, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'

export const jobsVerb: Verb = {
  name: 'jobs',
  summary: 'list the agent\'s jobs',
  help: `Usage: canopy jobs [--json] [--state-dir D]

Lists the agent's jobs: ID (a unique prefix, which every verb takes), NAME,
PROGRESS (bytes transferred / total and percent), RATE, PRIORITY and STATE with
its reason. On a terminal the table fits its width: long names and reasons are
cut at a word and a note says so; \`canopy job <id>\` or --wide shows them whole.

Options:
  --wide          do not fit the terminal: whole names and reasons
  --json          print the jobs as one JSON array (of JobView) on stdout
  --state-dir D   the agent's state directory (default: CANOPY_STATE_DIR, else the platform default)

Examples:
  canopy jobs
  canopy jobs --json | jq -r '.[] | select(.state == "error") | .id'
`,
  options: { ...JSON_OPTION, wide: { type: 'boolean' } },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const jobs = await withClient(ctx, client => client.listJobs())
    if (flag(ctx.values, 'json')) printJson(jobs)
    else if (jobs.length === 0) inform('canopy: no jobs')
    else {
      const columns = process.stdout.isTTY === true && !flag(ctx.values, 'wide') ? process.stdout.columns : undefined
      const table = formatJobsTable(jobs, columns)
      out(table.text)
      if (table.cut) inform('(cut to fit: `canopy job <id>` shows a job whole, `canopy jobs --wide` every line)')
    }
    return ExitCode.Ok
  }
}

export const jobVerb: Verb = {
  name: 'job',
  summary: 'show one job in detail',
  help: `Usage: canopy job <id> [--json] [--state-dir D]

Shows one job: state and reason, progress, bytes by source (origin, peers,
cache), the last error, timestamps and its files.

Options:
  --json          print the job (JobView) as JSON on stdout
  --state-dir D   the agent's state directory

Examples:
  canopy job 3f2a9c1e
  canopy job 3f2a9c1e --json | jq .bytes
`,
  options: { ...JSON_OPTION },
  positionals: { min: 1, max: 1, name: '<id>' },
  async run (ctx) {
    const id = jobId(ctx.positionals[0], 'job')
    const job = await withClient(ctx, client => client.getJob(id))
    if (flag(ctx.values, 'json')) printJson(job)
    else out(formatJobDetails(job))
    return ExitCode.Ok
  }
}

type Action = 'suspend' | 'resume' | 'cancel' | 'complete'

const ACTIONS: Record<Action, { summary: string, text: string }> = {
  suspend: {
    summary: 'pause a job (it keeps its progress)',
    text: 'Suspends a job: it stops transferring and keeps what it has. `canopy resume` continues it.'
  },
  resume: {
    summary: 'continue a suspended job, or retry one in error',
    text: 'Resumes a suspended job, or retries a job in error once its cause is fixed.'
  },
  cancel: {
    summary: 'cancel a job and remove its partial files',
    text: 'Cancels a job: it stops for good and its partial files are removed.'
  },
  complete: {
    summary: 'make a transferred job\'s files appear at their destinations',
    text: 'Completes a transferred job: its files are moved into place (atomically) and the\n' +
      'job is acknowledged. Jobs created by `canopy get` complete by themselves.'
  }
}

function actionVerb (action: Action): Verb {
  return {
    name: action,
    summary: ACTIONS[action].summary,
    help: `Usage: canopy ${action} <id> [--json] [--state-dir D]

${ACTIONS[action].text}
Prints the job's new state.

Options:
  --json          print the job (JobView) as JSON on stdout
  --state-dir D   the agent's state directory

Examples:
  canopy ${action} 3f2a9c1e
  canopy jobs --json | jq -r '.[].id' | xargs -n1 canopy ${action}
`,
    options: { ...JSON_OPTION },
    positionals: { min: 1, max: 1, name: '<id>' },
    async run (ctx) {
      const id = jobId(ctx.positionals[0], action)
      const job = await withClient(ctx, (client: CanopyClient): Promise<JobView> => client[action](id))
      if (flag(ctx.values, 'json')) printJson(job)
      else out(`${job.id}: ${formatState(job)}\n`)
      return ExitCode.Ok
    }
  }
}

export const suspendVerb = actionVerb('suspend')
export const resumeVerb = actionVerb('resume')
export const cancelVerb = actionVerb('cancel')
export const completeVerb = actionVerb('complete')

export const setVerb: Verb = {
  name: 'set',
  summary: 'change a job\'s priority or rate limit while it waits or runs',
  help: `Usage: canopy set <id> [--priority P] [--rate-limit RATE] [--json] [--state-dir D]

Changes a job's priority at once; the agent decides again what runs. A job set to
foreground starts now, whatever else runs. A background job raised above a running
one takes its slot when the slots are full (the other goes back to the queue,
keeping its progress); a running job lowered below a waiting one gives its slot
up. Prints the job's priority and state.

Options:
  --priority P    foreground, high, normal or low
  --rate-limit RATE  the job's own cap in bytes/s, e.g. 2MiB/s (0 blocks it;
                  none removes it); a running job follows it at once
  --json          print the job (JobView) as JSON on stdout
  --state-dir D   the agent's state directory

Examples:
  canopy set 3f2a9c1e --priority foreground
  canopy set 3f2a9c1e --rate-limit 1MiB/s
  canopy jobs --json | jq -r '.[] | select(.priority == "low") | .id' | xargs -I{} canopy set {} --priority normal
`,
  options: { ...JSON_OPTION, priority: { type: 'string' }, 'rate-limit': { type: 'string' } },
  positionals: { min: 1, max: 1, name: '<id>' },
  async run (ctx) {
    const id = jobId(ctx.positionals[0], 'set')
    const priority = priorityOption(ctx.values, 'set')
    const rateLimit = rateLimitOption(ctx.values, 'set', true)
    if (priority === undefined && rateLimit === undefined) throw new UsageError('nothing to set: give --priority P or --rate-limit RATE', 'set')
    const job = await withClient(ctx, async client => {
      let view = priority === undefined ? undefined : await client.setPriority(id, priority)
      if (rateLimit !== undefined) view = await client.setRateLimit(id, rateLimit)
      return view!
    })
    if (flag(ctx.values, 'json')) printJson(job)
    else out(`${job.id}: priority ${job.priority}${job.rateLimit !== undefined ? `, rate limit ${formatBytes(job.rateLimit)}/s` : ''}, ${formatState(job)}\n`)
    return ExitCode.Ok
  }
}

export const statusVerb: Verb = {
  name: 'status',
  summary: 'show whether the agent runs, and its job counts',
  help: `Usage: canopy status [--json] [--state-dir D]

Shows the agent's pid, version, state directory, uptime, how many jobs are in
each state, and the bytes its jobs received since it started by source (origin,
peers, a hosted cache) with the share that did not cross the WAN (from peers),
and the bytes it served to peers. Exits 3 when no agent runs for the state directory.

Options:
  --json          print the status (AgentStatus) as JSON on stdout
  --state-dir D   the agent's state directory

Examples:
  canopy status
  canopy status --json | jq .jobs
  canopy status --json | jq '.bytes | (.fromPeers + .fromCache) / (.fromOrigin + .fromPeers + .fromCache)'
  if ! canopy status >/dev/null 2>&1; then canopy agent & fi
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const status = await withClient(ctx, client => client.status())
    if (flag(ctx.values, 'json')) printJson(status)
    else out(formatStatus(status))
    return ExitCode.Ok
  }
}
