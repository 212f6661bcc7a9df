/** `canopy get`: download a URL through the agent. */
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, join, sep } from 'node:path'
import { CanopyError, isCanopyError, parseDuration } from '@canopy/core'
import type { CanopyClient } from '@canopy/client'
import type { JobHttpOptions, JobLimits, JobNotify, JobView } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { formatPreloadSummary, formatSummary, formatUploadSummary } from '../format.ts'
import { ProgressReporter } from '../progress.ts'
import { absolute, flag, hasControlChar, inform, interruptible, isQuiet, jobId, out, printJson, priorityOption, rateLimitOption, say, str, withClient } from '../verb.ts'
import type { Values, Verb } from '../verb.ts'

/** Parses the URL argument: http or https only. */
export function parseDownloadUrl (text: string, verb = 'get'): URL {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new UsageError(`"${text}" is not a URL: write e.g. https://example.com/file.iso`, verb)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`${url.protocol.slice(0, -1)} URLs are not supported: canopy ${verb} downloads http and https URLs`, verb)
  }
  return url
}

/** The file name a URL names: its last path segment, decoded; refuses names that are no file name. */
export function fileNameFromUrl (url: URL, verb = 'get'): string {
  const segment = url.pathname.slice(url.pathname.lastIndexOf('/') + 1)
  let name: string
  try {
    name = decodeURIComponent(segment)
  } catch {
    name = segment
  }
  if (name === '' || name === '.' || name === '..' || /[/\\]/.test(name) || hasControlChar(name) || name.length > 255) {
    throw new UsageError(`cannot take a file name from ${url.origin}${url.pathname}: name the destination with -o PATH`, verb)
  }
  return name
}

/** The absolute destination: `-o` against the cwd (into it when it names a directory), else the URL's file name in the cwd. */
export async function destinationPath (url: URL, output: string | undefined, verb = 'get'): Promise<string> {
  if (output === '-') throw new UsageError(`canopy ${verb} writes files, not stdout: name a file with -o PATH`, verb)
  if (output === '') throw new UsageError('-o needs a path', verb)
  let path: string
  if (output === undefined) {
    path = absolute(fileNameFromUrl(url, verb))
  } else {
    const target = absolute(output)
    const info = await stat(target).catch(() => undefined)
    const isDir = info?.isDirectory() === true || output.endsWith('/') || output.endsWith(sep)
    path = isDir ? join(target, fileNameFromUrl(url, verb)) : target
  }
  const parent = await stat(dirname(path)).catch(() => undefined)
  if (parent === undefined || !parent.isDirectory()) {
    throw new UsageError(`cannot write ${path}: directory ${dirname(path)} does not exist`, verb)
  }
  if ((await stat(path).catch(() => undefined))?.isDirectory() === true) {
    throw new UsageError(`cannot write ${path}: it is a directory`, verb)
  }
  return path
}

/**
 * The job's notifications from --on-complete, --on-error and --notify-url. A
 * command is one string run by the system shell (`/bin/sh -c CMD`; on Windows
 * `cmd.exe /d /s /c CMD`): the user's own words may use the shell, while the job's
 * data only ever reaches it through environment variables, never the command line.
 */
export function notifyOptions (values: Values, platform: NodeJS.Platform = process.platform): JobNotify | undefined {
  const shell = (flagName: string): string[] | undefined => {
    const cmd = str(values, flagName)
    if (cmd === undefined) return undefined
    if (cmd.trim() === '' || cmd.includes('\0')) throw new UsageError(`--${flagName} needs a command`, 'get')
    return platform === 'win32' ? [process.env.ComSpec ?? 'cmd.exe', '/d', '/s', '/c', cmd] : ['/bin/sh', '-c', cmd]
  }
  const notify: JobNotify = {}
  const onComplete = shell('on-complete')
  const onError = shell('on-error')
  const url = str(values, 'notify-url')
  if (onComplete !== undefined) notify.onComplete = onComplete
  if (onError !== undefined) notify.onError = onError
  if (url !== undefined) {
    const parsed = URL.parse(url)
    if (parsed === null || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) throw new UsageError(`--notify-url ${url}: give an http or https URL`, 'get')
    notify.url = parsed.href
  }
  return Object.keys(notify).length === 0 ? undefined : notify
}

function parseSha256 (text: string | undefined, verb = 'get'): string | undefined {
  if (text === undefined) return undefined
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new UsageError(`--sha256 ${text}: must be 64 hex digits`, verb)
  return text.toLowerCase()
}

/** The flags of a job's own retry and time limits, and the JobLimits field each sets (the least value it takes). */
/** The options of a job that `get` and `put` share: notifications, HTTP, rate and the retry and time limits. */
export const JOB_OPTIONS = {
  priority: { type: 'string' },
  'rate-limit': { type: 'string' },
  detach: { type: 'boolean' },
  json: { type: 'boolean' },
  'on-complete': { type: 'string' },
  'on-error': { type: 'string' },
  'notify-url': { type: 'string' },
  header: { type: 'string', short: 'H', multiple: true },
  'bearer-token-file': { type: 'string' },
  'basic-auth-file': { type: 'string' },
  proxy: { type: 'string' },
  'ca-file': { type: 'string' },
  'cert-file': { type: 'string' },
  'key-file': { type: 'string' },
  'retry-timeout': { type: 'string' },
  'retry-min': { type: 'string' },
  'retry-max': { type: 'string' },
  'no-progress-timeout': { type: 'string' },
  'max-download-time': { type: 'string' }
} as const

const LIMIT_FLAGS: ReadonlyArray<[string, keyof JobLimits, number]> = [
  ['retry-min', 'retryMinMs', 1],
  ['retry-max', 'retryMaxMs', 1],
  ['no-progress-timeout', 'noProgressTimeoutMs', 1],
  ['max-download-time', 'maxDownloadTimeMs', 0],
  // For scripts: give up soon when the origin stays unreachable (curl's --retry-max-time).
  ['retry-timeout', 'noProgressTimeoutMs', 1]
]

/** The job's own limits from --retry-min, --retry-max, --no-progress-timeout, --max-download-time (durations). */
export function jobLimitsOptions (values: Values, verb = 'get'): Partial<JobLimits> | undefined {
  const limits: Partial<JobLimits> = {}
  if (str(values, 'retry-timeout') !== undefined && str(values, 'no-progress-timeout') !== undefined) {
    throw new UsageError('--retry-timeout sets the job\'s no-progress timeout: give it or --no-progress-timeout, not both', verb)
  }
  for (const [flagName, key, min] of LIMIT_FLAGS) {
    const text = str(values, flagName)
    if (text === undefined) continue
    let ms: number
    try {
      ms = parseDuration(text)
    } catch (err) {
      throw new UsageError(`--${flagName} ${text}: ${(err as Error).message}`, verb)
    }
    if (ms < min) throw new UsageError(`--${flagName} ${text}: must be at least ${min} ms`, verb)
    limits[key] = ms
  }
  return Object.keys(limits).length === 0 ? undefined : limits
}

/**
 * The job's HTTP options from -H/--header (repeatable), --bearer-token-file and
 * --basic-auth-file. Secrets come from files, not arguments, so that they never
 * show in the process list or the shell's history.
 */
export async function httpOptions (values: Values): Promise<JobHttpOptions | undefined> {
  const http: JobHttpOptions = {}
  for (const header of (values.header as unknown as string[] | undefined) ?? []) {
    const colon = header.indexOf(':')
    if (colon <= 0) throw new UsageError(`--header ${header.slice(0, 80)}: write it as 'Name: value'`, 'get')
    http.headers ??= {}
    http.headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim()
  }
  const secret = async (flagName: string): Promise<string | undefined> => {
    const file = str(values, flagName)
    if (file === undefined) return undefined
    try {
      return (await readFile(file, 'utf8')).replace(/\r?\n$/, '')
    } catch (err) {
      throw new UsageError(`--${flagName} ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, 'get')
    }
  }
  const token = await secret('bearer-token-file')
  const basic = await secret('basic-auth-file')
  if (token !== undefined && basic !== undefined) throw new UsageError('--bearer-token-file and --basic-auth-file: give one of them', 'get')
  if (token !== undefined) http.credentials = { scheme: 'bearer', token }
  if (basic !== undefined) {
    const colon = basic.indexOf(':')
    if (colon <= 0) throw new UsageError('--basic-auth-file: the file must hold user:password on one line', 'get')
    http.credentials = { scheme: 'basic', username: basic.slice(0, colon), password: basic.slice(colon + 1) }
  }
  const proxy = str(values, 'proxy')
  if (proxy !== undefined) http.proxy = proxy
  const tls: NonNullable<JobHttpOptions['tls']> = {}
  for (const [flagName, key] of [['ca-file', 'caFile'], ['cert-file', 'certFile'], ['key-file', 'keyFile']] as const) {
    const file = str(values, flagName)
    if (file !== undefined) tls[key] = absolute(file)
  }
  if (Object.keys(tls).length > 0) http.tls = tls
  return Object.keys(http).length === 0 ? undefined : http
}

const WAIT_UNTIL: readonly string[] = ['acknowledged', 'cancelled', 'error']

/**
 * What to do about a job that failed. A job's credentials cannot be changed (they
 * are write-only and fixed at creation), so a refused one is started again with
 * the right flag rather than resumed.
 */
export function nextStep (job: Pick<JobView, 'id' | 'error' | 'http'>): string {
  if (job.error?.code === 'ERR_HTTP_FORBIDDEN') {
    const had = job.http?.credentials === undefined ? 'no credentials' : `its ${job.http.credentials} credentials`
    return `canopy: the origin refused the job's access (it was created with ${had}): resuming cannot change that. ` +
      `Drop it with \`canopy cancel ${job.id}\` and run canopy get again with --bearer-token-file F, --basic-auth-file F or -H 'Authorization: ...'`
  }
  return `canopy: fix the cause and run \`canopy resume ${job.id}\`, or drop the job with \`canopy cancel ${job.id}\``
}

/**
 * Waits for a job with a progress bar (on stderr), following its events; prints
 * the job as JSON with `json`, else a summary when it is acknowledged. Returns the
 * exit code when the wait is over (interrupted, acknowledged, cancelled), or the
 * failed job for the caller to explain. Shared by `canopy get` and `canopy put`.
 */
export async function waitForJob (client: CanopyClient, created: JobView, started: number, json: boolean, path: string): Promise<number | JobView> {
  const progress = new ProgressReporter(process.stderr)
  let job: JobView = created
  const interrupted = await interruptible(async signal => {
    // The job's own events (its snapshot first), not polling: each state and at most 2 progress updates a second.
    const events = await client.watch({ jobId: created.id, signal })
    try {
      for await (const event of events) {
        if (event.type === 'removed') throw new CanopyError('ERR_JOB_NOT_FOUND', `job ${created.id} was removed from the agent`)
        job = event.job
        if (!isQuiet()) progress.update(job)
        if (WAIT_UNTIL.includes(job.state)) return ExitCode.Ok
      }
    } catch (err) {
      progress.clear()
      if (isCanopyError(err, 'ERR_AGENT_NOT_RUNNING') || isCanopyError(err, 'ERR_EVENTS_ENDED')) {
        say(`canopy: lost the agent while waiting; job ${created.id} resumes when it starts again`)
      }
      throw err
    } finally {
      await events.close()
    }
    return ExitCode.Ok
  }, () => {
    progress.clear()
    inform(`job ${created.id} continues in the background; follow it with canopy watch ${created.id}`)
  })
  if (interrupted !== ExitCode.Ok) return interrupted
  progress.clear()

  const seconds = (performance.now() - started) / 1000
  if (json) printJson(job)
  if (job.state === 'acknowledged') {
    inform(job.type === 'download'
      ? formatSummary(job.files[0]?.path ?? path, job.bytes, seconds)
      : job.type === 'preload' ? formatPreloadSummary(job, seconds) : formatUploadSummary(job, seconds))
    return ExitCode.Ok
  }
  if (job.state === 'cancelled') {
    say(`canopy: job ${job.id} was cancelled`)
    return ExitCode.JobFailed
  }
  return job
}

/**
 * What `get`, `put` and `preload` do once their job is created: with `detach`, print
 * its id (the job with --json) and return; else wait for it (waitForJob) and explain
 * a failure ("canopy: <noun> <id> failed: CODE: message", then what to do).
 */
export async function detachOrWait (client: CanopyClient, created: JobView, options: { detach: boolean, json: boolean, started: number, path: string, noun: string }): Promise<number> {
  if (options.detach) {
    if (options.json) printJson(created)
    else out(`${created.id}\n`)
    return ExitCode.Ok
  }
  const waited = await waitForJob(client, created, options.started, options.json, options.path)
  if (typeof waited === 'number') return waited
  const e = waited.error
  say(`canopy: ${options.noun} ${waited.id} failed: ${e?.code ?? 'ERR_UNKNOWN'}: ${e?.message ?? waited.reason ?? 'no reason given'}`)
  say(nextStep(waited))
  return ExitCode.JobFailed
}

export const getVerb: Verb = {
  name: 'get',
  summary: 'download a URL through the agent, block-verified and resumable',
  help: `Usage: canopy get <url> [-o PATH] [options]

Downloads <url> as a job of the agent: blocks come from the origin (HTTP range
requests); each is verified against the origin's manifest before it is written, and
the file appears at its destination only once complete (atomic rename). Waits
with a progress bar (on a terminal) and prints a summary; with --detach it
returns at once and the agent finishes the job in the background.

Options:
  -o, --output PATH   destination file, or a directory to put it in
                      (default: the URL's last path segment, in the current directory)
  --priority P        foreground, high, normal or low (default foreground; the
                      others only use bandwidth nobody else is using: they
                      yield to other traffic, see canopy agent --target-delay)
  --rate-limit RATE   the job's own cap in bytes/s, e.g. 2MiB/s (0 blocks it);
                      change it later with canopy set ID --rate-limit
  --sha256 HEX        expected SHA-256 of the file: it is refused if it differs
  --name N            the job's display name (default: the file name)
  --detach            print the job id on stdout and return; follow it with
                      \`canopy watch <id>\` or \`canopy job <id>\`
  --suspended         create the job suspended and print its id (implies
                      --detach): add files with \`canopy add\`, then \`canopy resume\`
  --retry-min DUR     this job's first retry delay after a transient error; it
                      doubles up to --retry-max DUR (defaults: the agent's, 2s
                      and 10m). DUR: 1500 (ms), 30s, 5m, 2h, 14d
  --no-progress-timeout DUR  stop in error (ERR_NO_PROGRESS) after trying this
                      long without progress (default: the agent's, 14d)
  --max-download-time DUR    stop in error (ERR_MAX_TIME) after trying this long
                      in all (default: the agent's, no limit)
  --retry-timeout DUR fail fast, for scripts: when the job makes no progress for
                      DUR (the origin is down, say), it stops in error and
                      canopy get exits 1 with the last cause (sets the job's
                      no-progress timeout; the job stays, to resume or cancel)
  --on-complete CMD   run CMD once the file is in place, and --on-error CMD when
                      the job fails (ends in error), even with --detach. CMD is run
                      by /bin/sh -c; the job's data is in its environment, never on
                      its command line: CANOPY_JOB_ID, CANOPY_JOB_NAME,
                      CANOPY_JOB_STATE, CANOPY_JOB_PATH, CANOPY_JOB_ERROR_CODE,
                      CANOPY_JOB_ERROR_MESSAGE, CANOPY_NOTIFY_ID, CANOPY_STATE_DIR.
                      A failing or hanging command is logged by the agent, and
                      killed after the agent's --notify-command-timeout
  --on-error CMD      (see --on-complete)
  -H, --header 'N: V' a request header for the origin (repeatable); values are
                      write-only: views list header names only
  --bearer-token-file F  send Authorization: Bearer <the file's first line>
  --basic-auth-file F    send basic credentials: the file holds user:password
                      (never on the command line; never sent to peers, nor to
                      another host after a redirect)
  --proxy URL|direct  the HTTP proxy for this job (default: the agent's
                      HTTP_PROXY / HTTPS_PROXY / NO_PROXY); direct: none
  --ca-file F         also trust the CA certificates in this PEM file (https)
  --cert-file F --key-file F
                      present this client certificate to the origin (https)
  --if-newer          skip the download when the destination is already current
                      (same SHA-256 as the origin's manifest, or unchanged since
                      its modification time): "skipped: up to date"
  --notify-url URL    POST the job (JobView JSON) to URL on every state change;
                      retried with backoff when the receiver fails
  --json              print the final job (JobView) as JSON on stdout
  --state-dir D       the agent's state directory

Ctrl-C while waiting leaves the job running in the agent (exit 130); cancel it
with \`canopy cancel <id>\`.

Examples:
  canopy get https://downloads.example.com/tools/app-1.2.3.tar.gz
  canopy get https://origin.example.com/images/base.iso -o /var/cache/images/ --priority low --detach
  canopy get https://example.com/a.bin --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --json
  canopy get https://origin.example.com/patch.msu --detach --on-complete 'logger "canopy: $CANOPY_JOB_PATH is ready"'
  canopy get https://origin.example.com/private/tool.zip --bearer-token-file ~/.canopy-token --if-newer
`,
  options: {
    output: { type: 'string', short: 'o' },
    sha256: { type: 'string' },
    name: { type: 'string' },
    ...JOB_OPTIONS,
    'if-newer': { type: 'boolean' },
    suspended: { type: 'boolean' }
  },
  positionals: { min: 1, max: 1, name: '<url>' },
  async run (ctx) {
    const url = parseDownloadUrl(ctx.positionals[0])
    const priority = priorityOption(ctx.values, 'get') ?? 'foreground'
    const rateLimit = rateLimitOption(ctx.values, 'get')
    const notify = notifyOptions(ctx.values)
    const sha256 = parseSha256(str(ctx.values, 'sha256'))
    const limits = jobLimitsOptions(ctx.values)
    const http = await httpOptions(ctx.values)
    const suspended = flag(ctx.values, 'suspended')
    const path = await destinationPath(url, str(ctx.values, 'output'))
    const name = str(ctx.values, 'name') ?? basename(path)
    const json = flag(ctx.values, 'json')
    const started = performance.now()

    return await withClient(ctx, async client => {
      const created = await client.createJob({
        name,
        type: 'download',
        priority,
        files: [sha256 === undefined ? { url: url.href, path } : { url: url.href, path, sha256 }],
        autoComplete: true,
        ...(suspended ? { start: false } : {}),
        ...(notify !== undefined ? { notify } : {}),
        ...(limits !== undefined ? { limits } : {}),
        ...(http !== undefined ? { http } : {}),
        ...(flag(ctx.values, 'if-newer') ? { ifNewer: true } : {}),
        ...(typeof rateLimit === 'number' ? { rateLimit } : {})
      })
      return await detachOrWait(client, created, { detach: flag(ctx.values, 'detach') || suspended, json, started, path, noun: 'job' })
    })
  }
}

export const addVerb: Verb = {
  name: 'add',
  summary: 'add a file to a suspended job',
  help: `Usage: canopy add <id> <url> [-o PATH] [--sha256 HEX] [--json]

Adds <url> to the job <id>, which must be suspended (create one with
\`canopy get <url> --suspended\`, or suspend it with \`canopy suspend\`). A job's
files are fetched in order and appear together, when the job completes.
\`canopy resume <id>\` starts it.

Options:
  -o, --output PATH   destination file, or a directory to put it in
                      (default: the URL's last path segment, in the current directory)
  --sha256 HEX        expected SHA-256 of the file: it is refused if it differs
  --json              print the job (JobView) as JSON on stdout
  --state-dir D       the agent's state directory

Examples:
  id=$(canopy get https://origin.example.com/app/part1.bin --suspended)
  canopy add "$id" https://origin.example.com/app/part2.bin -o /srv/app/
  canopy resume "$id"
`,
  options: {
    output: { type: 'string', short: 'o' },
    sha256: { type: 'string' },
    json: { type: 'boolean' }
  },
  positionals: { min: 2, max: 2, name: '<id> <url>' },
  async run (ctx) {
    const id = jobId(ctx.positionals[0], 'add')
    const url = parseDownloadUrl(ctx.positionals[1], 'add')
    const sha256 = parseSha256(str(ctx.values, 'sha256'), 'add')
    const path = await destinationPath(url, str(ctx.values, 'output'), 'add')
    const job = await withClient(ctx, client => client.addFiles(id, [sha256 === undefined ? { url: url.href, path } : { url: url.href, path, sha256 }]))
    if (flag(ctx.values, 'json')) printJson(job)
    else out(`${job.id}: ${job.filesTotal} file${job.filesTotal === 1 ? '' : 's'}, ${job.state}\n`)
    return ExitCode.Ok
  }
}
