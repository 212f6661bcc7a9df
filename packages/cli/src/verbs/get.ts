/** `canopy get`: download a URL through the agent. */
import { stat } from 'node:fs/promises'
import { basename, dirname, join, sep } from 'node:path'
import { isCanopyError, PRIORITIES } from '@canopy/core'
import type { JobPriority, JobView } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { formatSummary } from '../format.ts'
import { ProgressReporter } from '../progress.ts'
import { absolute, flag, hasControlChar, out, printJson, say, str, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'

/** Parses the URL argument: http or https only. */
export function parseDownloadUrl (text: string): URL {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new UsageError(`"${text}" is not a URL: write e.g. https://example.com/file.iso`, 'get')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`${url.protocol.slice(0, -1)} URLs are not supported: canopy get downloads http and https URLs`, 'get')
  }
  return url
}

/** The file name a URL names: its last path segment, decoded; refuses names that are no file name. */
export function fileNameFromUrl (url: URL): string {
  const segment = url.pathname.slice(url.pathname.lastIndexOf('/') + 1)
  let name: string
  try {
    name = decodeURIComponent(segment)
  } catch {
    name = segment
  }
  if (name === '' || name === '.' || name === '..' || /[/\\]/.test(name) || hasControlChar(name) || name.length > 255) {
    throw new UsageError(`cannot take a file name from ${url.origin}${url.pathname}: name the destination with -o PATH`, 'get')
  }
  return name
}

/** The absolute destination: `-o` against the cwd (into it when it names a directory), else the URL's file name in the cwd. */
export async function destinationPath (url: URL, output: string | undefined): Promise<string> {
  if (output === '-') throw new UsageError('canopy get writes files, not stdout: name a file with -o PATH', 'get')
  if (output === '') throw new UsageError('-o needs a path', 'get')
  let path: string
  if (output === undefined) {
    path = absolute(fileNameFromUrl(url))
  } else {
    const target = absolute(output)
    const info = await stat(target).catch(() => undefined)
    const isDir = info?.isDirectory() === true || output.endsWith('/') || output.endsWith(sep)
    path = isDir ? join(target, fileNameFromUrl(url)) : target
  }
  const parent = await stat(dirname(path)).catch(() => undefined)
  if (parent === undefined || !parent.isDirectory()) {
    throw new UsageError(`cannot write ${path}: directory ${dirname(path)} does not exist`, 'get')
  }
  if ((await stat(path).catch(() => undefined))?.isDirectory() === true) {
    throw new UsageError(`cannot write ${path}: it is a directory`, 'get')
  }
  return path
}

function parsePriority (text: string | undefined): JobPriority {
  if (text === undefined) return 'foreground'
  if (!(PRIORITIES as readonly string[]).includes(text)) {
    throw new UsageError(`--priority ${text}: must be one of ${PRIORITIES.join(', ')}`, 'get')
  }
  return text as JobPriority
}

function parseSha256 (text: string | undefined): string | undefined {
  if (text === undefined) return undefined
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new UsageError(`--sha256 ${text}: must be 64 hex digits`, 'get')
  return text.toLowerCase()
}

const WAIT_UNTIL = ['acknowledged', 'cancelled', 'error'] as const

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
                      others only use bandwidth nobody else is using)
  --sha256 HEX        expected SHA-256 of the file: it is refused if it differs
  --name N            the job's display name (default: the file name)
  --detach            print the job id on stdout and return; follow it with \`canopy job <id>\`
  --json              print the final job (JobView) as JSON on stdout
  --state-dir D       the agent's state directory

Ctrl-C while waiting leaves the job running in the agent (exit 130); cancel it
with \`canopy cancel <id>\`.

Examples:
  canopy get https://downloads.example.com/tools/app-1.2.3.tar.gz
  canopy get https://origin.example.com/images/base.iso -o /var/cache/images/ --priority low --detach
  canopy get https://example.com/a.bin --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --json
`,
  options: {
    output: { type: 'string', short: 'o' },
    priority: { type: 'string' },
    sha256: { type: 'string' },
    name: { type: 'string' },
    detach: { type: 'boolean' },
    json: { type: 'boolean' }
  },
  positionals: { min: 1, max: 1, name: '<url>' },
  async run (ctx) {
    const url = parseDownloadUrl(ctx.positionals[0])
    const priority = parsePriority(str(ctx.values, 'priority'))
    const sha256 = parseSha256(str(ctx.values, 'sha256'))
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
        autoComplete: true
      })
      if (flag(ctx.values, 'detach')) {
        if (json) printJson(created)
        else out(`${created.id}\n`)
        return ExitCode.Ok
      }

      const progress = new ProgressReporter(process.stderr)
      const controller = new AbortController()
      const onSigint = (): void => { controller.abort() }
      process.on('SIGINT', onSigint)
      let job: JobView
      try {
        progress.update(created)
        job = await client.waitForJob(created.id, {
          signal: controller.signal,
          until: WAIT_UNTIL,
          onProgress: j => { progress.update(j) }
        })
      } catch (err) {
        progress.clear()
        if (controller.signal.aborted) {
          say(`job ${created.id} continues in the background; follow it with canopy job ${created.id}`)
          return ExitCode.Interrupted
        }
        if (isCanopyError(err, 'ERR_AGENT_NOT_RUNNING')) {
          say(`canopy: lost the agent while waiting; job ${created.id} resumes when it starts again`)
        }
        throw err
      } finally {
        process.off('SIGINT', onSigint)
      }
      progress.clear()

      const seconds = (performance.now() - started) / 1000
      if (json) printJson(job)
      if (job.state === 'acknowledged') {
        say(formatSummary(job.files[0]?.path ?? path, job.bytes, seconds))
        return ExitCode.Ok
      }
      if (job.state === 'cancelled') {
        say(`canopy: job ${job.id} was cancelled`)
        return ExitCode.JobFailed
      }
      const e = job.error
      say(`canopy: job ${job.id} failed: ${e?.code ?? 'ERR_UNKNOWN'}: ${e?.message ?? job.reason ?? 'no reason given'}`)
      say(`canopy: fix the cause and run \`canopy resume ${job.id}\`, or drop the job with \`canopy cancel ${job.id}\``)
      return ExitCode.JobFailed
    })
  }
}
