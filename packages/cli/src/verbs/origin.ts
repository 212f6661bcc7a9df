/** `canopy origin`: the compact server in the foreground. */
import { readFile, stat } from 'node:fs/promises'
import { isIP } from 'node:net'
import { ExitCode, UsageError } from '../errors.ts'
import { createStderrLogger, parseLogLevel } from '../logger.ts'
import { absolute, flag, say, str } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { originStateDir, parseBlockSize, parseRate } from './options.ts'
import { untilSignal } from './signals.ts'

/** Tokens from a token file: one per line; blank lines and `#` comments are ignored. */
export async function readTokenFile (file: string): Promise<string[]> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`--token-file ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, 'origin')
  }
  const tokens = text.split(/\r?\n/).map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
  if (tokens.length === 0) {
    throw new UsageError(`--token-file ${file} holds no tokens: write one token per line (blank lines and # comments are ignored)`, 'origin')
  }
  return tokens
}

function parsePort (text: string | undefined): number {
  if (text === undefined) return 8080
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`--port ${text}: must be a number from 0 to 65535 (0 picks a free port)`, 'origin')
  }
  return Number(text)
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
  --token-file F       require a bearer token: one per line; blank lines and
                       # comments ignored (default: no authentication)
  --block-size SIZE    manifest block size, a power of two from 64KiB to 16MiB
                       (default 1MiB)
  --rate-limit RATE    cap the total upload rate, bytes per second: 10MiB, 500k
                       (default: no limit)
  --list-directories   answer GET on a directory with a listing (default: off)
  --log-level L        debug, info, warn or error (default: CANOPY_LOG_LEVEL, else info)

Examples:
  canopy origin ./public
  canopy origin /srv/files --host 0.0.0.0 --port 8443 --token-file /etc/canopy/tokens --rate-limit 50MiB
`,
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'token-file': { type: 'string' },
    'block-size': { type: 'string' },
    'rate-limit': { type: 'string' },
    'list-directories': { type: 'boolean' },
    'log-level': { type: 'string' }
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
    const logger = createStderrLogger(parseLogLevel(str(ctx.values, 'log-level')))
    const stateDir = originStateDir(ctx)

    if (tokenFile !== undefined && process.platform !== 'win32') {
      const mode = (await stat(absolute(tokenFile))).mode
      if ((mode & 0o077) !== 0) say(`canopy origin: warning: ${tokenFile} is readable by other users; chmod 600 it`)
    }
    if (tokens === undefined && !isLoopback(host)) {
      say(`canopy origin: warning: no --token-file: anyone who can reach ${host} can read ${root}`)
    }

    const stopping = untilSignal('canopy origin')
    const { startOrigin } = await import('@canopy/origin')
    const origin = await startOrigin({ root, stateDir, host, port, tokens, blockSize, rateLimit, listDirectories: flag(ctx.values, 'list-directories'), logger })
    say(`canopy origin: serving ${root} at ${origin.url}`)
    type Outcome = { kind: 'signal' } | { kind: 'failed', err: unknown }
    const signalled = stopping.then((): Outcome => ({ kind: 'signal' }))
    const failed = origin.ready.then(
      () => { say('canopy origin: manifests ready'); return signalled },
      (err: unknown): Outcome => ({ kind: 'failed', err })
    )
    const outcome = await Promise.race([signalled, failed])
    say(outcome.kind === 'signal' ? 'canopy origin: stopping' : 'canopy origin: computing manifests failed: stopping')
    await origin.close()
    if (outcome.kind === 'failed') throw outcome.err
    say('canopy origin: stopped')
    return ExitCode.Ok
  }
}
