/** The logger the CLI hands to the agent and the origin: one line per event on stderr. */
import type { Logger } from '@canopy/core'
import { UsageError } from './errors.ts'

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const
export type LogLevel = typeof LOG_LEVELS[number]

/** `logfmt` for people at a terminal, `json` (one object a line) for collectors. */
export const LOG_FORMATS = ['logfmt', 'json'] as const
export type LogFormat = typeof LOG_FORMATS[number]

/** The daemon's logger: its level and format can change while it runs (SIGHUP). */
export interface DaemonLogger extends Logger {
  level: LogLevel
  format: LogFormat
  /**
   * A line the daemon always writes, whatever the level ("canopy agent: listening on
   * …"): as it is in logfmt, as an info object in json so every line parses.
   */
  notice: (message: string, fields?: Record<string, unknown>) => void
}

/** Picks a setting: the flag, else the environment variable, else the config file's value, else the default. */
function choose<T extends string> (what: string, allowed: readonly T[], sources: Array<[string | undefined, string]>, fallback: T): T {
  for (const [value, where] of sources) {
    if (value === undefined || value === '') continue
    if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`${what} "${value}" is not one of ${allowed.join(', ')}${where}`)
    return value as T
  }
  return fallback
}

/** `--log-level`, else `CANOPY_LOG_LEVEL`, else the config file's "log-level", else info. */
export function parseLogLevel (flag: string | undefined, env: string | undefined = process.env.CANOPY_LOG_LEVEL, config?: { value: string | undefined, path: string }): LogLevel {
  return choose('log level', LOG_LEVELS, [[flag, ''], [env, ' (from CANOPY_LOG_LEVEL)'], [config?.value, ` (from ${config?.path ?? 'the config file'})`]], 'info')
}

/** `--log-format`, else `CANOPY_LOG_FORMAT`, else the config file's "log-format", else logfmt. */
export function parseLogFormat (flag: string | undefined, env: string | undefined = process.env.CANOPY_LOG_FORMAT, config?: { value: string | undefined, path: string }): LogFormat {
  return choose('log format', LOG_FORMATS, [[flag, ''], [env, ' (from CANOPY_LOG_FORMAT)'], [config?.value, ` (from ${config?.path ?? 'the config file'})`]], 'logfmt')
}

/** An error as one string: its code, if any, and its message. */
function errorText (value: Error): string {
  const code = (value as { code?: unknown }).code
  return typeof code === 'string' ? `${code}: ${value.message}` : value.message
}

function logfmtValue (value: unknown): string {
  if (value instanceof Error) return JSON.stringify(errorText(value))
  if (typeof value === 'string') return /^[\w./:@-]+$/.test(value) ? value : JSON.stringify(value)
  if (typeof value === 'bigint') return value.toString()
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/** A field's value as JSON can hold it: errors as text, bigints as decimal strings. */
function jsonValue (_key: string, value: unknown): unknown {
  if (value instanceof Error) return errorText(value)
  if (typeof value === 'bigint') return value.toString()
  return value
}

/** The keys every JSON line has; a field of the same name is written with a "field." prefix. */
const JSON_KEYS = new Set(['time', 'level', 'msg'])

function jsonLine (time: string, level: LogLevel, message: string, fields: Record<string, unknown>): string {
  const record: Record<string, unknown> = { time, level, msg: message }
  for (const [k, v] of Object.entries(fields)) {
    if (v !== undefined) record[JSON_KEYS.has(k) ? `field.${k}` : k] = v
  }
  try {
    return JSON.stringify(record, jsonValue)
  } catch (err) {
    // A field JSON cannot hold (a cycle): the line is still written, without the fields.
    return JSON.stringify({ time, level, msg: message, logError: (err as Error).message })
  }
}

/**
 * One line per event at `level` and above:
 * logfmt `2025-01-01T12:00:00.000Z info  message key=value key="two words"`, or
 * json `{"time":"2025-01-01T12:00:00.000Z","level":"info","msg":"message","key":"value"}`.
 */
export function createStderrLogger (level: LogLevel, write: (line: string) => void = line => { process.stderr.write(line) }, format: LogFormat = 'logfmt'): DaemonLogger {
  const make = (l: LogLevel) => (message: string, fields?: Record<string, unknown>): void => {
    if (LOG_LEVELS.indexOf(l) < LOG_LEVELS.indexOf(logger.level)) return
    const time = new Date().toISOString()
    if (logger.format === 'json') {
      write(jsonLine(time, l, message, fields ?? {}) + '\n')
      return
    }
    let line = `${time} ${l.padEnd(5)} ${message}`
    for (const [k, v] of Object.entries(fields ?? {})) {
      if (v !== undefined) line += ` ${k}=${logfmtValue(v)}`
    }
    write(line + '\n')
  }
  const notice = (message: string, fields?: Record<string, unknown>): void => {
    if (logger.format === 'json') write(jsonLine(new Date().toISOString(), 'info', message, fields ?? {}) + '\n')
    else write(message + '\n')
  }
  const logger: DaemonLogger = { level, format, debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error'), notice }
  return logger
}
