import { statSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { CanopyError, JOB_TYPES, PRIORITIES } from '@canopy/core'
import type { CatalogCode, CreateJobFile, CreateJobRequest, JobLimits, JobNotify, JobPriority, JobType } from '@canopy/core'
import type { RequestLimits } from '../options.ts'
import { validateHttpOptions } from './http-options.ts'

/**
 * Fixed limits of job requests. The limits an operator may want to change (files
 * per job, URL and name length, jobs per agent) are agent options (RequestLimits).
 */
export const JOB_LIMITS = {
  pathLength: 4096,
  /** Arguments of a notification command, the program included. */
  commandArgs: 256,
  /** Characters of one argument of a notification command. */
  commandArgLength: 8192,
  /** Characters of a notify URL. */
  notifyUrlLength: 8192
} as const

/** Stable codes of the limits a request can exceed (besides ERR_INVALID_REQUEST for a malformed one). */
export const LimitCode = {
  TooManyJobs: 'ERR_TOO_MANY_JOBS',
  TooManyFiles: 'ERR_TOO_MANY_FILES',
  UrlTooLong: 'ERR_URL_TOO_LONG',
  NameTooLong: 'ERR_NAME_TOO_LONG'
} as const satisfies Record<string, CatalogCode>

function bad (message: string): CanopyError {
  return new CanopyError('ERR_INVALID_REQUEST', message)
}

/** Checks a job request from the API; throws ERR_INVALID_REQUEST (or a limit's code) with what to fix. */
export function validateCreateJob (body: unknown, limits: RequestLimits): CreateJobRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('The request body must be a JSON object')
  const req = body as Record<string, unknown>
  if (req.type !== undefined && !JOB_TYPES.includes(req.type as never)) throw bad(`Job type ${JSON.stringify(req.type)} is not supported: use one of ${JOB_TYPES.join(', ')}`)
  if (req.priority !== undefined && !PRIORITIES.includes(req.priority as never)) throw bad(`Priority must be one of ${PRIORITIES.join(', ')}`)
  if (req.name !== undefined && typeof req.name !== 'string') throw bad('name must be a string')
  if (typeof req.name === 'string' && req.name.length > limits.maxNameLength) {
    throw new CanopyError(LimitCode.NameTooLong, `The job's name has ${req.name.length} characters; this agent allows at most ${limits.maxNameLength} (--max-name-length)`)
  }
  for (const flag of ['autoComplete', 'start', 'ifNewer'] as const) {
    if (req[flag] !== undefined && typeof req[flag] !== 'boolean') throw bad(`${flag} must be true or false`)
  }
  if (req.rateLimit !== undefined) validateRateLimit(req)
  const type = (req.type ?? 'download') as JobType
  const files = validateFiles(req.files, limits, [], type === 'preload')
  const replyPath = type === 'download' ? checkNotUpload(req) : type === 'preload' ? checkPreload(req) : validateUpload(req, type, files)
  const notify = req.notify === undefined ? undefined : validateNotify(req.notify)
  const jobLimits = req.limits === undefined ? undefined : validateJobLimits(req.limits)
  const http = req.http === undefined ? undefined : validateHttpOptions(req.http)
  return {
    ...(http !== undefined ? { http } : {}),
    ...(req.ifNewer === true ? { ifNewer: true } : {}),
    files,
    ...(notify !== undefined ? { notify } : {}),
    ...(jobLimits !== undefined ? { limits: jobLimits } : {}),
    ...(req.name !== undefined ? { name: req.name as string } : {}),
    ...(req.priority !== undefined ? { priority: req.priority as CreateJobRequest['priority'] } : {}),
    ...(req.autoComplete !== undefined ? { autoComplete: req.autoComplete as boolean } : {}),
    ...(req.start !== undefined ? { start: req.start as boolean } : {}),
    ...(typeof req.rateLimit === 'number' ? { rateLimit: req.rateLimit } : {}),
    ...(type !== 'download' ? { type } : {}),
    ...(replyPath !== undefined ? { replyPath } : {})
  }
}

/** A preload request carries neither an upload field nor ifNewer (it has no destination to compare). */
function checkPreload (req: Record<string, unknown>): undefined {
  if (req.ifNewer !== undefined) throw bad('ifNewer is for downloads: a preload job has no destination (content the cache already holds is not fetched again)')
  return checkNotUpload(req)
}

/** A download request carries no upload field. */
function checkNotUpload (req: Record<string, unknown>): undefined {
  if (req.replyPath !== undefined) throw bad('replyPath is for upload-reply jobs: set type "upload-reply"')
  return undefined
}

/**
 * The upload-specific checks of a request already checked as files: one file, a
 * regular file to send (its `path`), to a tus endpoint (its `url`); nothing that
 * only downloads have; the reply's path for upload-reply jobs. Returns the reply's
 * path, resolved.
 */
function validateUpload (req: Record<string, unknown>, type: JobType, files: CreateJobFile[]): string | undefined {
  if (files.length !== 1) throw bad(`An ${type} job sends one file, not ${files.length}: create one job per file`)
  if (files[0].sha256 !== undefined || req.ifNewer !== undefined) throw bad(`sha256 and ifNewer are for downloads: an ${type} job checks the server's SHA-256 of what it stored by itself`)
  const localPath = files[0].path!
  const local = statSync(localPath, { throwIfNoEntry: false })
  if (local === undefined || !local.isFile()) throw bad(`${localPath} is not a file: give the path of the file to upload`)
  if (type === 'upload') {
    if (req.replyPath !== undefined) throw bad('replyPath is for upload-reply jobs: set type "upload-reply"')
    return undefined
  }
  const raw = req.replyPath
  if (typeof raw !== 'string' || !isAbsolute(raw) || raw.length > JOB_LIMITS.pathLength || raw.includes('\0')) {
    throw bad('replyPath must be the absolute path where the server\'s reply is written')
  }
  const replyPath = resolve(raw)
  if (replyPath === localPath) throw bad('replyPath must not be the file being uploaded')
  if (statSync(replyPath, { throwIfNoEntry: false })?.isDirectory() === true) throw bad(`${replyPath} is a folder: give the path of the reply file to create`)
  if (statSync(dirname(replyPath), { throwIfNoEntry: false })?.isDirectory() !== true) throw bad(`The folder ${dirname(replyPath)} does not exist: create it first`)
  return replyPath
}

/** Checks the body of POST /v1/jobs/:id/files against the job's current destinations. */
export function validateAddFiles (body: unknown, limits: RequestLimits, existing: readonly string[]): CreateJobFile[] {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('The request body must be a JSON object { files: [{ url, path }] }')
  return validateFiles((body as Record<string, unknown>).files, limits, existing)
}

/**
 * Checks that checked `files` still fit a job whose destinations are now `existing`
 * (the API server checked them against the job as it was; the agent checks again
 * under the job's lock): the count within the limit and no destination twice.
 */
export function checkFilesFit (files: readonly CreateJobFile[], limits: Pick<RequestLimits, 'maxFilesPerJob'>, existing: readonly string[], type: JobType = 'download'): void {
  if (type === 'preload') throw bad('A preload job\'s URLs are given when it is created: preload the others with another job')
  if (type !== 'download') throw bad(`An ${type} job sends one file: create another job to send another`)
  if (existing.length + files.length > limits.maxFilesPerJob) {
    throw new CanopyError(LimitCode.TooManyFiles,
      `The job has ${existing.length} files; with ${files.length} more it would exceed this agent's ${limits.maxFilesPerJob} (--max-files-per-job): create another job`)
  }
  const seen = new Set<string>(existing)
  files.forEach((f, i) => {
    const path = f.path!
    if (seen.has(path)) throw bad(`files[${i}].path ${path} appears twice in the job`)
    seen.add(path)
  })
}

/**
 * Checks a list of files to add to a job that already has `existing` destinations
 * (none for a new job): the count within the limit, each URL and path, and no
 * destination twice. A preload job's files have no path (`preload`): the agent
 * stages them itself.
 */
function validateFiles (value: unknown, limits: RequestLimits, existing: readonly string[], preload = false): CreateJobFile[] {
  if (!Array.isArray(value) || value.length === 0) throw bad('files must be a non-empty array of { url, path }')
  if (existing.length + value.length > limits.maxFilesPerJob) {
    throw new CanopyError(LimitCode.TooManyFiles, existing.length === 0
      ? `A job holds at most ${limits.maxFilesPerJob} files on this agent (--max-files-per-job), not ${value.length}: split it into several jobs`
      : `The job has ${existing.length} files; with ${value.length} more it would exceed this agent's ${limits.maxFilesPerJob} (--max-files-per-job): create another job`)
  }
  const seen = new Set<string>(existing)
  return value.map((f: unknown, i: number) => {
    if (typeof f !== 'object' || f === null) throw bad(`files[${i}] must be an object { url, path }`)
    const { url, path: rawPath, sha256 } = f as Record<string, unknown>
    if (typeof url !== 'string') throw bad(`files[${i}].url must be a URL`)
    if (url.length > limits.maxUrlLength) {
      throw new CanopyError(LimitCode.UrlTooLong, `files[${i}].url has ${url.length} characters; this agent allows at most ${limits.maxUrlLength} (--max-url-length)`)
    }
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      throw bad(`files[${i}].url "${url.slice(0, 200)}" is not a valid URL`)
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw bad(`files[${i}].url must be http or https, not ${parsed.protocol}`)
    const digest = validateSha256(sha256, i)
    if (preload) {
      if (rawPath !== undefined) throw bad(`files[${i}].path: a preload job has no destination (the file goes into the agent's peer cache); leave path out`)
      return { url: parsed.toString(), ...digest }
    }
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
    return { url: parsed.toString(), path, ...digest }
  })
}

/** Checks a file's expected SHA-256: 64 hex digits, or none. */
function validateSha256 (sha256: unknown, i: number): { sha256?: string } {
  if (sha256 === undefined) return {}
  if (typeof sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(sha256)) throw bad(`files[${i}].sha256 must be 64 hex digits`)
  return { sha256: sha256.toLowerCase() }
}

/** The least each limit may be: delays and timeouts at least 1 ms; a maximum download time of 0 means none. */
const JOB_LIMIT_MINIMUM: Record<keyof JobLimits, number> = { retryMinMs: 1, retryMaxMs: 1, noProgressTimeoutMs: 1, maxDownloadTimeMs: 0 }

/** Checks `limits` of a job request: known keys, whole milliseconds. */
function validateJobLimits (value: unknown): Partial<JobLimits> | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('limits must be an object { retryMinMs?, retryMaxMs?, noProgressTimeoutMs?, maxDownloadTimeMs? }')
  const limits: Partial<JobLimits> = {}
  for (const [key, v] of Object.entries(value)) {
    // Own keys only: `limits.toString` must not find Object.prototype's function.
    const min = Object.hasOwn(JOB_LIMIT_MINIMUM, key) ? JOB_LIMIT_MINIMUM[key as keyof JobLimits] : undefined
    if (min === undefined) throw bad(`limits.${key} is not a job limit: use ${Object.keys(JOB_LIMIT_MINIMUM).join(', ')}`)
    if (!Number.isSafeInteger(v) || (v as number) < min) throw bad(`limits.${key} must be a whole number of milliseconds, at least ${min}`)
    limits[key as keyof JobLimits] = v as number
  }
  if (limits.retryMinMs !== undefined && limits.retryMaxMs !== undefined && limits.retryMaxMs < limits.retryMinMs) {
    throw bad('limits.retryMaxMs must not be less than limits.retryMinMs')
  }
  return Object.keys(limits).length === 0 ? undefined : limits
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
      if (typeof url !== 'string' || url.length > JOB_LIMITS.notifyUrlLength) throw new Error('not a string')
      parsed = new URL(url)
    } catch {
      throw bad(`notify.url must be a URL of at most ${JOB_LIMITS.notifyUrlLength} characters`)
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw bad(`notify.url must be http or https, not ${parsed.protocol}`)
    notify.url = parsed.toString()
  }
  return Object.keys(notify).length === 0 ? undefined : notify
}

/** Checks `rateLimit` of a job request or of POST /v1/jobs/:id/rate-limit: bytes/s, 0 or more, or null (none). */
export function validateRateLimit (body: unknown): number | undefined {
  const rateLimit = (body as { rateLimit?: unknown } | null)?.rateLimit
  if (rateLimit === null) return undefined
  if (typeof rateLimit !== 'number' || !Number.isSafeInteger(rateLimit) || rateLimit < 0) {
    throw bad('rateLimit must be a whole number of bytes per second, 0 (blocked) or more, or null (no limit)')
  }
  return rateLimit
}

/** Checks the body of POST /v1/jobs/:id/priority. */
export function validatePriority (body: unknown): JobPriority {
  const priority = (body as { priority?: unknown } | null)?.priority
  if (!PRIORITIES.includes(priority as never)) throw bad(`The body must be { "priority": P } with P one of ${PRIORITIES.join(', ')}`)
  return priority as JobPriority
}
