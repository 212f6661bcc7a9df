import { statSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { CanopyError, PRIORITIES } from '@canopy/core'
import type { CreateJobRequest, JobNotify, JobPriority } from '@canopy/core'

/** Limits that protect the agent from oversized requests. */
export const JOB_LIMITS = {
  filesPerJob: 1000,
  urlLength: 8192,
  nameLength: 256,
  pathLength: 4096,
  /** Arguments of a notification command, the program included. */
  commandArgs: 256,
  /** Characters of one argument of a notification command. */
  commandArgLength: 8192
} as const

function bad (message: string): CanopyError {
  return new CanopyError('ERR_INVALID_REQUEST', message)
}

/** Checks a job request from the API; throws ERR_INVALID_REQUEST with what to fix. */
export function validateCreateJob (body: unknown): CreateJobRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('The request body must be a JSON object')
  const req = body as Record<string, unknown>
  if (req.type !== undefined && req.type !== 'download') throw bad(`Job type ${JSON.stringify(req.type)} is not supported: use "download"`)
  if (req.priority !== undefined && !PRIORITIES.includes(req.priority as never)) throw bad(`Priority must be one of ${PRIORITIES.join(', ')}`)
  if (req.name !== undefined && (typeof req.name !== 'string' || req.name.length > JOB_LIMITS.nameLength)) throw bad(`name must be a string of at most ${JOB_LIMITS.nameLength} characters`)
  for (const flag of ['autoComplete', 'start'] as const) {
    if (req[flag] !== undefined && typeof req[flag] !== 'boolean') throw bad(`${flag} must be true or false`)
  }
  if (!Array.isArray(req.files) || req.files.length === 0) throw bad('files must be a non-empty array of { url, path }')
  if (req.files.length > JOB_LIMITS.filesPerJob) throw bad(`A job holds at most ${JOB_LIMITS.filesPerJob} files`)
  const seen = new Set<string>()
  const files = req.files.map((f: unknown, i: number) => {
    if (typeof f !== 'object' || f === null) throw bad(`files[${i}] must be an object { url, path }`)
    const { url, path: rawPath, sha256 } = f as Record<string, unknown>
    if (typeof url !== 'string' || url.length > JOB_LIMITS.urlLength) throw bad(`files[${i}].url must be a URL of at most ${JOB_LIMITS.urlLength} characters`)
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      throw bad(`files[${i}].url "${url.slice(0, 200)}" is not a valid URL`)
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw bad(`files[${i}].url must be http or https, not ${parsed.protocol}`)
    if (typeof rawPath !== 'string' || !isAbsolute(rawPath) || rawPath.length > JOB_LIMITS.pathLength || rawPath.includes('\0')) {
      throw bad(`files[${i}].path must be an absolute path`)
    }
    // One spelling per file: /a//b and /a/./b are /a/b.
    const path = resolve(rawPath)
    if (seen.has(path)) throw bad(`files[${i}].path ${path} appears twice in the job`)
    seen.add(path)
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory() === true) throw bad(`${path} is a folder: give the path of the file to create`)
    let dir
    try {
      dir = statSync(dirname(path))
    } catch {
      throw bad(`The folder ${dirname(path)} does not exist: create it first`)
    }
    if (!dir.isDirectory()) throw bad(`${dirname(path)} is not a folder`)
    if (sha256 !== undefined && (typeof sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(sha256))) {
      throw bad(`files[${i}].sha256 must be 64 hex digits`)
    }
    return { url: parsed.toString(), path, ...(typeof sha256 === 'string' ? { sha256: sha256.toLowerCase() } : {}) }
  })
  const notify = req.notify === undefined ? undefined : validateNotify(req.notify)
  return {
    files,
    ...(notify !== undefined ? { notify } : {}),
    ...(req.name !== undefined ? { name: req.name as string } : {}),
    ...(req.priority !== undefined ? { priority: req.priority as CreateJobRequest['priority'] } : {}),
    ...(req.autoComplete !== undefined ? { autoComplete: req.autoComplete as boolean } : {}),
    ...(req.start !== undefined ? { start: req.start as boolean } : {})
  }
}

/** Checks `notify` of a job request: argument vectors without NUL, an http(s) URL. */
function validateNotify (value: unknown): JobNotify | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('notify must be an object { onComplete?, onError?, url? }')
  const { onComplete, onError, url } = value as Record<string, unknown>
  const command = (name: string, argv: unknown): string[] | undefined => {
    if (argv === undefined) return undefined
    if (!Array.isArray(argv) || argv.length === 0 || argv.length > JOB_LIMITS.commandArgs ||
      !argv.every(a => typeof a === 'string' && a.length <= JOB_LIMITS.commandArgLength && !a.includes('\0')) || argv[0] === '') {
      throw bad(`notify.${name} must be a command as an array of strings, the program first (at most ${JOB_LIMITS.commandArgs} of ${JOB_LIMITS.commandArgLength} characters, no NUL), e.g. ["/usr/local/bin/on-done", "--quiet"]`)
    }
    return argv as string[]
  }
  const notify: JobNotify = {}
  const complete = command('onComplete', onComplete)
  const error = command('onError', onError)
  if (complete !== undefined) notify.onComplete = complete
  if (error !== undefined) notify.onError = error
  if (url !== undefined) {
    let parsed: URL
    try {
      if (typeof url !== 'string' || url.length > JOB_LIMITS.urlLength) throw new Error('not a string')
      parsed = new URL(url)
    } catch {
      throw bad(`notify.url must be a URL of at most ${JOB_LIMITS.urlLength} characters`)
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw bad(`notify.url must be http or https, not ${parsed.protocol}`)
    notify.url = parsed.toString()
  }
  return Object.keys(notify).length === 0 ? undefined : notify
}

/** Checks the body of POST /v1/jobs/:id/priority. */
export function validatePriority (body: unknown): JobPriority {
  const priority = (body as { priority?: unknown } | null)?.priority
  if (!PRIORITIES.includes(priority as never)) throw bad(`The body must be { "priority": P } with P one of ${PRIORITIES.join(', ')}`)
  return priority as JobPriority
}
