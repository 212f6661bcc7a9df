/** `canopy preload`: fetch URLs into the agent's peer cache, with no destination file. */
import { flag, priorityOption, rateLimitOption, str, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { JOB_OPTIONS, detachOrWait, httpOptions, jobLimitsOptions, notifyOptions, parseDownloadUrl } from './get.ts'


export const preloadVerb: Verb = {
  name: 'preload',
  summary: 'fetch URLs into the agent\'s peer cache (warm a branch), with no destination file',
  help: `Usage: canopy preload <url>... [options]

Fetches each <url> into the agent's cache for its peers, with no destination file:
an administrator warms a branch (typically its hosted cache) before patch day. One
job for all the URLs, with the usual lifecycle (suspend, resume, cancel, retries,
bandwidth policy); blocks come from peers first and the origin for the rest, each
verified against the origin's manifest, so content the branch already holds costs
no WAN bytes, and content this agent's cache holds is not fetched at all. Waits
with a progress bar and completes by itself, like canopy get; --detach returns at
once. \`canopy cache\` then lists what is held.

A URL whose origin publishes no manifest is downloaded and verified as far as it
can be, then dropped: peers could not verify it, so it is never shared (the job
completes and says so for that file). Content larger than the cache quota stops
the job in error (ERR_CACHE_FULL) before it is fetched.

Options:
  --priority P        foreground, high, normal or low (default low: a warm-up
                      yields to every job somebody waits for, and as a background
                      job it only uses bandwidth nobody else is using)
  --rate-limit RATE   the job's own cap in bytes/s, e.g. 2MiB/s (0 blocks it)
  --name N            the job's display name (default: "preload <file name>")
  --detach            print the job id on stdout and return; follow it with
                      \`canopy watch <id>\`
  --json              print the final job (JobView) as JSON on stdout
  -H, --header, --bearer-token-file, --basic-auth-file, --proxy, --ca-file,
  --cert-file, --key-file, --retry-min, --retry-max, --retry-timeout,
  --no-progress-timeout, --max-download-time, --on-complete, --on-error,
  --notify-url        as for canopy get
  --state-dir D       the agent's state directory

Examples:
  canopy preload https://origin.example.com/patches/2026-12/kb5030211.msu
  canopy preload https://origin.example.com/images/base.iso https://origin.example.com/images/tools.iso --detach
  canopy --state-dir /var/lib/canopy preload https://origin.example.com/app/app-2.0.pkg --priority normal --json
`,
  options: {
    name: { type: 'string' },
    ...JOB_OPTIONS
  },
  positionals: { min: 1, max: Infinity, name: '<url>...' },
  async run (ctx) {
    const urls = ctx.positionals.map(text => parseDownloadUrl(text, 'preload').href)
    // Left out: the agent's default for preload jobs, low (see newJobRecord).
    const priority = priorityOption(ctx.values, 'preload')
    const rateLimit = rateLimitOption(ctx.values, 'preload')
    const notify = notifyOptions(ctx.values)
    const limits = jobLimitsOptions(ctx.values, 'preload')
    const http = await httpOptions(ctx.values)
    const name = str(ctx.values, 'name')
    const json = flag(ctx.values, 'json')
    const started = performance.now()
    return await withClient(ctx, async client => {
      const created = await client.createJob({
        ...(name !== undefined ? { name } : {}),
        type: 'preload',
        ...(priority !== undefined ? { priority } : {}),
        files: urls.map(url => ({ url })),
        autoComplete: true,
        ...(notify !== undefined ? { notify } : {}),
        ...(limits !== undefined ? { limits } : {}),
        ...(http !== undefined ? { http } : {}),
        ...(typeof rateLimit === 'number' ? { rateLimit } : {})
      })
      return await detachOrWait(client, created, { detach: flag(ctx.values, 'detach'), json, started, path: created.name, noun: 'preload' })
    })
  }
}
