/** `canopy origin`: the compact server in the foreground. */
import { readFile, stat } from 'node:fs/promises'
import { isIP } from 'node:net'
import { parseDuration, parseSize } from '@canopy/core'
import type { TokenGrant, TokenRight, UploadOptions } from '@canopy/origin'
import { ExitCode, UsageError } from '../errors.ts'
import { createStderrLogger, parseLogFormat, parseLogLevel } from '../logger.ts'
import { absolute, flag, str } from '../verb.ts'
import type { Verb, VerbContext } from '../verb.ts'
import { originStateDir, parseBlockSize, parseRate } from './options.ts'
import { notifyReady, onReload } from './service.ts'
import { untilSignal } from './signals.ts'

/**
 * Tokens from a token file: one per line, `TOKEN` or `TOKEN RIGHTS` where RIGHTS is a
 * comma-separated list of `download` and `upload`; a bare token (every file written
 * before uploads existed) has download rights only. Blank lines and `#` comments are ignored.
 */
export async function readTokenFile (file: string): Promise<TokenGrant[]> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`--token-file ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, 'origin')
  }
  const lines = text.split(/\r?\n/).map((l, i) => ({ line: l.trim(), number: i + 1 })).filter(l => l.line !== '' && !l.line.startsWith('#'))
  if (lines.length === 0) {
    throw new UsageError(`--token-file ${file} holds no tokens: write one token per line (blank lines and # comments are ignored)`, 'origin')
  }
  return lines.map(({ line, number }) => {
    const [token, rights, ...extra] = line.split(/\s+/)
    if (rights === undefined) return token
    const list = rights.split(',')
    if (extra.length > 0 || list.some(r => !(TOKEN_RIGHTS as readonly string[]).includes(r))) {
      throw new UsageError(`--token-file ${file} line ${number}: write "TOKEN" or "TOKEN RIGHTS" with RIGHTS a comma-separated list of ${TOKEN_RIGHTS.join(', ')} (e.g. "s3cret download,upload")`, 'origin')
    }
    return { token, rights: list as TokenRight[] }
  })
}

/** The origin package is loaded only when the origin starts: the CLI's other verbs start faster without it. */
const TOKEN_RIGHTS: readonly TokenRight[] = ['download', 'upload']

function parsePort (text: string | undefined): number {
  if (text === undefined) return 8080
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`--port ${text}: must be a number from 0 to 65535 (0 picks a free port)`, 'origin')
  }
  return Number(text)
}

function sizeFlag (values: VerbContext['values'], name: string): number | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  try {
    return parseSize(text)
  } catch (err) {
    throw new UsageError(`--${name} ${text}: ${(err as Error).message}`, 'origin')
  }
}

function durationFlag (values: VerbContext['values'], name: string): number | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  try {
    return parseDuration(text)
  } catch (err) {
    throw new UsageError(`--${name} ${text}: ${(err as Error).message}`, 'origin')
  }
}

/** A connection cap flag: a whole number from 1 to 9999999, or undefined when not given. */
function connectionsFlag (values: VerbContext['values'], name: string): number | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  if (!/^[1-9]\d{0,6}$/.test(text)) throw new UsageError(`--${name} ${text}: must be a whole number from 1 to 9999999`, 'origin')
  return Number(text)
}

/** The upload options from the flags, or undefined without --upload-dir. */
async function uploadOptions (values: VerbContext['values']): Promise<UploadOptions | undefined> {
  const dirFlag = str(values, 'upload-dir')
  const uploadFlags = ['upload-path', 'upload-max-size', 'upload-max-sessions', 'upload-expiry', 'upload-min-free', 'upload-overwrite', 'on-upload', 'on-upload-timeout', 'on-upload-max-reply']
  if (dirFlag === undefined) {
    const stray = uploadFlags.find(f => values[f] !== undefined)
    if (stray !== undefined) throw new UsageError(`--${stray} needs --upload-dir`, 'origin')
    return undefined
  }
  const dir = absolute(dirFlag)
  const info = await stat(dir).catch(() => undefined)
  if (info === undefined || !info.isDirectory()) throw new UsageError(`--upload-dir ${dir} is not a directory`, 'origin')
  const sessionsText = str(values, 'upload-max-sessions')
  if (sessionsText !== undefined && !/^[1-9]\d{0,6}$/.test(sessionsText)) {
    throw new UsageError(`--upload-max-sessions ${sessionsText}: must be a whole number from 1 to 9999999`, 'origin')
  }
  const handler = str(values, 'on-upload')
  if (handler === '') throw new UsageError('--on-upload must not be empty', 'origin')
  const options: UploadOptions = {
    dir,
    path: str(values, 'upload-path'),
    maxSize: sizeFlag(values, 'upload-max-size'),
    maxSessions: sessionsText === undefined ? undefined : Number(sessionsText),
    expiryMs: durationFlag(values, 'upload-expiry'),
    minFreeBytes: sizeFlag(values, 'upload-min-free'),
    overwrite: flag(values, 'upload-overwrite'),
    handler: handler === undefined
      ? undefined
      : {
          command: process.platform === 'win32' ? ['cmd.exe', '/d', '/s', '/c', handler] : ['/bin/sh', '-c', handler],
          timeoutMs: durationFlag(values, 'on-upload-timeout'),
          maxReplyBytes: sizeFlag(values, 'on-upload-max-reply')
        }
  }
  if (options.maxSize === 0) throw new UsageError('--upload-max-size must be more than 0', 'origin')
  if (options.handler === undefined && (values['on-upload-timeout'] !== undefined || values['on-upload-max-reply'] !== undefined)) {
    throw new UsageError('--on-upload-timeout and --on-upload-max-reply need --on-upload', 'origin')
  }
  return options
}

function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'))
}

export const originVerb: Verb = {
  name: 'origin',
  summary: 'serve a directory over HTTP with content manifests (the compact server)',
  help: `Usage: canopy origin <root-dir> [options]

Serves the files under <root-dir> over HTTP: GET/HEAD with Range and validators,
and each file's content manifest (block digests) so agents verify every block and
share it with their peers. Manifests are computed at startup and kept up to date.
GET /metrics serves Prometheus metrics (canopy_origin_*, listed in docs/API.md;
behind the token too when --token-file is given; a file named "metrics" at the
top of <root-dir> is therefore not served). SIGINT (Ctrl-C) or SIGTERM stop it.

Options:
  --host H             address to listen on (default 127.0.0.1)
  --port P             port to listen on (default 8080; 0 picks a free one)
  --state-dir D        where the origin keeps its secret and manifest cache
                       (default: <agent default state dir>/origin)
  --token-file F       require a bearer token: one per line, "TOKEN" (download
                       only) or "TOKEN download,upload"; blank lines and
                       # comments ignored (default: no authentication)
  --block-size SIZE    manifest block size, a power of two from 64KiB to 16MiB
                       (default 1MiB)
  --rate-limit RATE    cap the total upload rate, bytes per second: 10MiB, 500k
                       (default: no limit)
  --list-directories   answer GET on a directory with a listing (default: off)
  --max-connections N  connections served at once; more get a 503 (default: half
                       the open-file limit less 64, from 16 to 1024)
  --max-connections-per-address N  connections from one client address (default:
                       a quarter of --max-connections, at least 64); a branch
                       behind NAT is one address: allow ~8 per agent there
  --upload-dir D       accept tus 1.0 resumable uploads into D (default: off);
                       each appears under its tus "filename" once complete
  --upload-path P      URL path of the tus endpoint (default /uploads/)
  --upload-max-size S  largest upload accepted (default 64GiB)
  --upload-max-sessions N  most unfinished uploads at once (default 100)
  --upload-expiry T    delete an unfinished upload idle this long (default 14d)
  --upload-min-free S  free space kept on the upload disk (default 256MiB)
  --upload-overwrite   let an upload replace a file of the same name (default: 409)
  --on-upload CMD      run CMD (sh -c) for each completed upload; its stdout is
                       the reply the uploader can fetch (default: none)
  --on-upload-timeout T    kill the handler after T (default 60s)
  --on-upload-max-reply S  longest reply (default 1MiB)
  --log-level L        debug, info, warn or error (default: CANOPY_LOG_LEVEL, else info)
  --log-format F       logfmt or json (one object a line) (default: CANOPY_LOG_FORMAT,
                       else logfmt)

Examples:
  canopy origin ./public
  canopy origin /srv/files --host 0.0.0.0 --port 8443 --token-file /etc/canopy/tokens --rate-limit 50MiB
  canopy origin /srv/files --upload-dir /srv/incoming --token-file /etc/canopy/tokens --on-upload 'sha256sum "$CANOPY_UPLOAD_PATH"'
`,
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'token-file': { type: 'string' },
    'block-size': { type: 'string' },
    'rate-limit': { type: 'string' },
    'list-directories': { type: 'boolean' },
    'max-connections': { type: 'string' },
    'max-connections-per-address': { type: 'string' },
    'upload-dir': { type: 'string' },
    'upload-path': { type: 'string' },
    'upload-max-size': { type: 'string' },
    'upload-max-sessions': { type: 'string' },
    'upload-expiry': { type: 'string' },
    'upload-min-free': { type: 'string' },
    'upload-overwrite': { type: 'boolean' },
    'on-upload': { type: 'string' },
    'on-upload-timeout': { type: 'string' },
    'on-upload-max-reply': { type: 'string' },
    'log-level': { type: 'string' },
    'log-format': { type: 'string' }
  },
  positionals: { min: 1, max: 1, name: '<root-dir>' },
  async run (ctx) {
    const root = absolute(ctx.positionals[0])
    const info = await stat(root).catch(() => undefined)
    if (info === undefined || !info.isDirectory()) throw new UsageError(`${root} is not a directory`, 'origin')
    const host = str(ctx.values, 'host') ?? '127.0.0.1'
    if (host === '') throw new UsageError('--host must not be empty', 'origin')
    const port = parsePort(str(ctx.values, 'port'))
    const tokenFile = str(ctx.values, 'token-file')
    const tokens = tokenFile === undefined ? undefined : await readTokenFile(absolute(tokenFile))
    const blockSize = parseBlockSize(str(ctx.values, 'block-size'), 'origin')
    const rateLimit = parseRate(str(ctx.values, 'rate-limit'), 'origin')
    const logger = createStderrLogger(parseLogLevel(str(ctx.values, 'log-level')), undefined, parseLogFormat(str(ctx.values, 'log-format')))
    const stateDir = originStateDir(ctx)
    const uploads = await uploadOptions(ctx.values)
    const maxConnections = connectionsFlag(ctx.values, 'max-connections')
    const maxConnectionsPerAddress = connectionsFlag(ctx.values, 'max-connections-per-address')

    if (tokenFile !== undefined && process.platform !== 'win32') {
      const mode = (await stat(absolute(tokenFile))).mode
      if ((mode & 0o077) !== 0) logger.notice(`canopy origin: warning: ${tokenFile} is readable by other users; chmod 600 it`)
    }
    if (tokens === undefined && !isLoopback(host)) {
      logger.notice(`canopy origin: warning: no --token-file: anyone who can reach ${host} can read ${root}`)
    }
    if (uploads !== undefined && !isLoopback(host) && !(tokens ?? []).some(t => typeof t !== 'string' && t.rights.includes('upload'))) {
      // Anonymous writes from the network fill a disk far faster than anonymous reads hurt.
      throw new UsageError(`--upload-dir on --host ${host} needs a --token-file with a token that has upload rights ("TOKEN upload")`, 'origin')
    }

    const stopping = untilSignal('canopy origin')
    const { startOrigin } = await import('@canopy/origin')
    const origin = await startOrigin({ root, stateDir, host, port, tokens, blockSize, rateLimit, listDirectories: flag(ctx.values, 'list-directories'), uploads, logger, maxConnections, maxConnectionsPerAddress })
      .catch((err: unknown) => { stopping.dispose(); throw err })
    logger.notice(`canopy origin: serving ${root} at ${origin.url}`)
    if (origin.uploadUrl !== undefined) logger.notice(`canopy origin: accepting uploads into ${uploads?.dir ?? ''} at ${origin.uploadUrl}`)
    // Its flags are all it has, and they cannot change: SIGHUP (systemctl reload) only
    // must not end it, as SIGHUP's default action would.
    const reloading = onReload(async () => { logger.info('SIGHUP: the origin has nothing to reload; restart it to apply changed flags') }, logger)
    await notifyReady(`serving ${root} at ${origin.url}`, logger)
    type Outcome = { kind: 'signal' } | { kind: 'failed', err: unknown }
    const signalled = stopping.then((): Outcome => ({ kind: 'signal' }))
    const failed = origin.ready.then(
      () => { logger.notice('canopy origin: manifests ready'); return signalled },
      (err: unknown): Outcome => ({ kind: 'failed', err })
    )
    const outcome = await Promise.race([signalled, failed])
    reloading.dispose()
    logger.notice(outcome.kind === 'signal' ? 'canopy origin: stopping' : 'canopy origin: computing manifests failed: stopping')
    await origin.close()
    if (outcome.kind === 'failed') throw outcome.err
    logger.notice('canopy origin: stopped')
    return ExitCode.Ok
  }
}
