/** What every verb of `canopy` is made of, and the helpers they share. */
import { readFile } from 'node:fs/promises'
import { isAbsolute, resolve } from 'node:path'
import type { ParseArgsOptionsConfig } from 'node:util'
import { CanopyClient } from '@canopy/client'
import { CanopyError, parseSize, PRIORITIES } from '@canopy/core'
import type { JobPriority } from '@canopy/core'
import { ExitCode, UsageError } from './errors.ts'

export type Values = Record<string, string | boolean | undefined>

export interface VerbContext {
  values: Values
  positionals: string[]
  /** `--state-dir` as given (after or before the verb), made absolute; undefined when absent. */
  stateDirFlag?: string
  /** The agent's state directory: `--state-dir`, else CANOPY_STATE_DIR, else the platform default. Absolute. */
  stateDir: string
}

export interface Verb {
  name: string
  /** One line for `canopy help`. */
  summary: string
  /** The full `--help` text: usage, description, options, examples (the exit-code footer is added). */
  help: string
  /** The verb's own flags; `--help` and `--state-dir` are added to every verb. */
  options: ParseArgsOptionsConfig
  positionals: { min: number, max: number, name: string }
  run: (ctx: VerbContext) => Promise<number>
}

/** Options every verb accepts (`canopy origin` has a --token-file of its own: the tokens it requires). */
export const COMMON_OPTIONS: ParseArgsOptionsConfig = {
  help: { type: 'boolean', short: 'h' },
  'state-dir': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  url: { type: 'string' },
  'token-file': { type: 'string' }
}

export const JSON_OPTION: ParseArgsOptionsConfig = { json: { type: 'boolean' } }

export function absolute (path: string): string {
  return isAbsolute(path) ? path : resolve(process.cwd(), path)
}

export function str (values: Values, name: string): string | undefined {
  const v = values[name]
  return typeof v === 'string' ? v : undefined
}

export function flag (values: Values, name: string): boolean {
  return values[name] === true
}

/** Writes data to stdout. */
export function out (text: string): void {
  process.stdout.write(text)
}

/** Writes a message line to stderr. */
export function say (line: string): void {
  process.stderr.write(line.endsWith('\n') ? line : `${line}\n`)
}

let quiet = false

/** `--quiet`: informational messages and progress are left out; errors and results are not. */
export function setQuiet (value: boolean): void {
  quiet = value
}

export function isQuiet (): boolean {
  return quiet
}

/** An informational message on stderr (a summary, a hint); `--quiet` leaves it out. */
export function inform (line: string): void {
  if (!quiet) say(line)
}

/** Exactly one JSON document on stdout. */
export function printJson (value: unknown): void {
  out(JSON.stringify(value, null, 2) + '\n')
}

/** A bearer token from a file (its first line), for the agent's TCP listener. */
export async function readApiToken (file: string, verb: string): Promise<string> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`API token file ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, verb)
  }
  const token = text.split(/\r?\n/)[0].trim()
  if (token === '' || !/^[\x21-\x7e]+$/.test(token)) throw new UsageError(`API token file ${file}: its first line must be the token (printable, no spaces)`, verb)
  return token
}

/** Where a remote agent is and its token, and which flag or variable named each (for messages). */
export interface RemoteAgent {
  url: string
  urlFrom: string
  token?: string
  tokenFrom?: string
}

/**
 * The agent's TCP listener to talk to: --url, else CANOPY_AGENT_URL, with the token of
 * --token-file, else CANOPY_API_TOKEN_FILE; undefined for the local agent (its socket).
 * Errors name the flag or variable the value came from.
 */
export async function remoteAgent (values: Values): Promise<RemoteAgent | undefined> {
  const flagUrl = str(values, 'url')
  const url = flagUrl ?? process.env.CANOPY_AGENT_URL
  const flagToken = str(values, 'token-file')
  const tokenFile = flagToken ?? process.env.CANOPY_API_TOKEN_FILE
  const tokenFrom = flagToken !== undefined ? '--token-file' : 'CANOPY_API_TOKEN_FILE'
  if (url === undefined || url === '') {
    if (flagToken !== undefined) throw new UsageError('--token-file goes with --url (or CANOPY_AGENT_URL): the local agent\'s socket needs no token')
    return undefined
  }
  const urlFrom = flagUrl !== undefined ? '--url' : 'CANOPY_AGENT_URL'
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
    throw new UsageError(`${urlFrom} ${url}: give the agent's TCP listener as http://HOST:PORT (canopy agent --api-listen)`)
  }
  if (tokenFile === undefined || tokenFile === '') return { url, urlFrom }
  let token: string
  try {
    token = await readApiToken(tokenFile, '')
  } catch (err) {
    throw new UsageError(`${tokenFrom} ${(err as Error).message.replace(/^API token file /, '')}`)
  }
  return { url, urlFrom, token, tokenFrom }
}

/**
 * Runs `fn` with a client of the agent, closing it afterwards: the agent of
 * `ctx.stateDir` through its Unix socket, or, with --url or CANOPY_AGENT_URL, an
 * agent's TCP listener with the token of --token-file or CANOPY_API_TOKEN_FILE
 * (remote administration). A refused token is explained in the client's terms.
 */
export async function withClient<T> (ctx: VerbContext, fn: (client: CanopyClient) => Promise<T>): Promise<T> {
  const remote = await remoteAgent(ctx.values)
  const client = remote !== undefined
    ? new CanopyClient({ url: remote.url, ...(remote.token !== undefined ? { token: remote.token } : {}) })
    : new CanopyClient({ stateDir: ctx.stateDir })
  try {
    return await fn(client)
  } catch (err) {
    if (remote !== undefined && (err as { code?: unknown }).code === 'ERR_UNAUTHORIZED') {
      throw new CanopyError('ERR_UNAUTHORIZED', remote.token === undefined
        ? `The agent at ${remote.url} (${remote.urlFrom}) needs its token: give the file that holds it with --token-file F or CANOPY_API_TOKEN_FILE=F`
        : `The agent at ${remote.url} (${remote.urlFrom}) refused the token of ${remote.tokenFrom}: give the file of the agent's --api-token-file`, { cause: err })
    }
    throw err
  } finally {
    await client.close().catch(() => {})
  }
}

/**
 * Runs `fn` with a signal that Ctrl-C (SIGINT) aborts. When it did, `fn`'s error is
 * dropped and `onInterrupt` says what goes on without us; resolves with exit code 130.
 */
export async function interruptible (fn: (signal: AbortSignal) => Promise<number>, onInterrupt: () => void): Promise<number> {
  const controller = new AbortController()
  const onSigint = (): void => { controller.abort() }
  process.on('SIGINT', onSigint)
  try {
    return await fn(controller.signal)
  } catch (err) {
    if (!controller.signal.aborted) throw err
    onInterrupt()
    return ExitCode.Interrupted
  } finally {
    process.off('SIGINT', onSigint)
  }
}

/** Whether `text` holds a control character (U+0000 to U+001F, U+007F). */
export function hasControlChar (text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 0x20 || c === 0x7f) return true
  }
  return false
}

/** `--priority P`: one of PRIORITIES, or undefined when not given. */
/** `--rate-limit RATE`: bytes per second ("2MiB/s", "512KiB", 1048576; 0 blocks); "none" (only where allowed) is null. */
export function rateLimitOption (values: Values, verb: string, allowNone = false): number | null | undefined {
  const text = str(values, 'rate-limit')
  if (text === undefined) return undefined
  if (allowNone && text.trim() === 'none') return null
  try {
    return parseSize(text.replace(/\/s\s*$/i, ''))
  } catch {
    throw new UsageError(`--rate-limit ${text}: not a rate; write bytes per second, e.g. 2MiB/s, 512KiB/s or 1048576 (0 blocks${allowNone ? ', none removes the limit' : ''})`, verb)
  }
}

export function priorityOption (values: Values, verb: string): JobPriority | undefined {
  const text = str(values, 'priority')
  if (text === undefined) return undefined
  if (!(PRIORITIES as readonly string[]).includes(text)) {
    throw new UsageError(`--priority ${text}: must be one of ${PRIORITIES.join(', ')}`, verb)
  }
  return text as JobPriority
}

/** A job id argument: non-empty, printable, bounded. */
export function jobId (text: string | undefined, verb: string): string {
  if (text === undefined || text.trim() === '' || text.length > 200 || /\s/.test(text) || hasControlChar(text)) {
    throw new UsageError(`"${text ?? ''}" is not a job id: list them with \`canopy jobs\``, verb)
  }
  if (text.length < 4) {
    throw new UsageError(`"${text}" is too short: give a job's id or a prefix of it of at least 4 characters that only it has (canopy jobs lists them)`, verb)
  }
  return text
}
