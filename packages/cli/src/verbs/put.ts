/** `canopy put`: upload a file through the agent to a tus server (`canopy origin --upload-dir`). */
import { stat } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { UsageError } from '../errors.ts'
import { absolute, flag, hasControlChar, priorityOption, rateLimitOption, str, withClient } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { detachOrWait, httpOptions, JOB_OPTIONS, jobLimitsOptions, notifyOptions, parseDownloadUrl } from './get.ts'

/** The local file to send: a regular file (not a folder, not missing). */
async function localFile (text: string): Promise<string> {
  const path = absolute(text)
  const info = await stat(path).catch(() => undefined)
  if (info === undefined) throw new UsageError(`${path}: no such file`, 'put')
  if (!info.isFile()) throw new UsageError(`${path} is not a regular file: canopy put sends one file`, 'put')
  return path
}

/** Where the reply goes: a path in an existing folder, not a folder itself. */
async function replyPath (text: string | undefined, file: string): Promise<string | undefined> {
  if (text === undefined) return undefined
  const path = absolute(text)
  if (path === file) throw new UsageError('--reply must not be the file being uploaded', 'put')
  if ((await stat(dirname(path)).catch(() => undefined))?.isDirectory() !== true) throw new UsageError(`--reply ${path}: folder ${dirname(path)} does not exist`, 'put')
  if ((await stat(path).catch(() => undefined))?.isDirectory() === true) throw new UsageError(`--reply ${path} is a folder: name the reply file`, 'put')
  return path
}

export const putVerb: Verb = {
  name: 'put',
  summary: 'upload a file through the agent to a tus server, resumable',
  help: `Usage: canopy put <file> <url> [--name NAME] [--reply PATH] [options]

Uploads <file> as a job of the agent to <url>, the creation endpoint of a tus 1.0
server (canopy origin --upload-dir serves one at /uploads/). The upload resumes
from the server's offset after a network loss, an agent restart or a server
restart; the server's SHA-256 of what it stored is checked against the file's
before the job completes. If the file changes while it is sent, the job stops in
error (ERR_LOCAL_FILE_CHANGED): start a new upload. Waits with a progress bar;
with --detach it prints the job id and returns.

Options:
  --name NAME         the name the server stores it under (default: the file's name)
  --reply PATH        an upload-reply job: once the upload is complete, the
                      server's reply (what its --on-upload handler printed) is
                      written to PATH (atomically; at most 16 MiB)
  --priority P        foreground, high, normal or low (default foreground; the
                      others yield to other traffic on the WAN path)
  --rate-limit RATE   the job's own cap in bytes/s, e.g. 2MiB/s (0 blocks it)
  --detach            print the job id on stdout and return
  --retry-min DUR, --retry-max DUR, --no-progress-timeout DUR,
  --max-download-time DUR, --retry-timeout DUR
                      the job's retry and time limits (as canopy get)
  --on-complete CMD, --on-error CMD, --notify-url URL
                      notifications (as canopy get)
  -H, --header 'N: V' a request header for the server (repeatable)
  --bearer-token-file F  send Authorization: Bearer <the file's first line>
                      (canopy origin: a token with upload rights)
  --basic-auth-file F, --proxy URL|direct, --ca-file F, --cert-file F --key-file F
                      as canopy get
  --json              print the final job (JobView) as JSON on stdout
  --state-dir D       the agent's state directory

Ctrl-C while waiting leaves the job running in the agent (exit 130).

Examples:
  canopy put /var/log/big.log http://origin.example.com:8080/uploads/
  canopy put crash.dmp https://origin.example.com/uploads/ --name "$(hostname)-crash.dmp" --priority low --detach
  canopy put inventory.json https://origin.example.com/uploads/ --reply ./ticket.txt --bearer-token-file ~/.canopy-upload-token
`,
  options: {
    name: { type: 'string' },
    reply: { type: 'string' },
    ...JOB_OPTIONS
  },
  positionals: { min: 2, max: 2, name: '<file> <url>' },
  async run (ctx) {
    const path = await localFile(ctx.positionals[0])
    const url = parseDownloadUrl(ctx.positionals[1], 'put')
    const name = str(ctx.values, 'name') ?? basename(path)
    if (name === '' || hasControlChar(name)) throw new UsageError('--name needs a file name without control characters', 'put')
    const reply = await replyPath(str(ctx.values, 'reply'), path)
    const priority = priorityOption(ctx.values, 'put') ?? 'foreground'
    const rateLimit = rateLimitOption(ctx.values, 'put')
    const notify = notifyOptions(ctx.values)
    const limits = jobLimitsOptions(ctx.values, 'put')
    const http = await httpOptions(ctx.values)
    const json = flag(ctx.values, 'json')
    const started = performance.now()

    return await withClient(ctx, async client => {
      const created = await client.createJob({
        name,
        type: reply === undefined ? 'upload' : 'upload-reply',
        priority,
        files: [{ url: url.href, path }],
        autoComplete: true,
        ...(reply !== undefined ? { replyPath: reply } : {}),
        ...(notify !== undefined ? { notify } : {}),
        ...(limits !== undefined ? { limits } : {}),
        ...(http !== undefined ? { http } : {}),
        ...(typeof rateLimit === 'number' ? { rateLimit } : {})
      })
      return await detachOrWait(client, created, { detach: flag(ctx.values, 'detach'), json, started, path, noun: 'upload' })
    })
  }
}
