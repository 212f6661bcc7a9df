/** The logger the CLI hands to the agent and the origin: one line per event on stderr. */
import type { Logger } from '@canopy/core'
import { UsageError } from './errors.ts'

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const
export type LogLevel = typeof LOG_LEVELS[number]

/** `--log-level`, else `CANOPY_LOG_LEVEL`, else info. */
export function parseLogLevel (flag: string | undefined, env: string | undefined = process.env.CANOPY_LOG_LEVEL): LogLevel {
  const value = flag ?? (env === '' ? undefined : env) ?? 'info'
  if (!(LOG_LEVELS as readonly string[]).includes(value)) {
    throw new UsageError(`log level "${value}" is not one of ${LOG_LEVELS.join(', ')}${flag === undefined ? ' (from CANOPY_LOG_LEVEL)' : ''}`)
  }
  return value as LogLevel
}

function formatValue (value: unknown): string {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code
    return JSON.stringify(typeof code === 'string' ? `${code}: ${value.message}` : value.message)
  }
  if (typeof value === 'string') return /^[\w./:@-]+$/.test(value) ? value : JSON.stringify(value)
  if (typeof value === 'bigint') return value.toString()
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/** `2025-01-01T12:00:00.000Z info  message key=value key="two words"`, at `level` and above. */
export function createStderrLogger (level: LogLevel, write: (line: string) => void = line => { process.stderr.write(line) }): Logger {
  const min = LOG_LEVELS.indexOf(level)
  const make = (l: LogLevel) => (message: string, fields?: Record<string, unknown>): void => {
    if (LOG_LEVELS.indexOf(l) < min) return
    let line = `${new Date().toISOString()} ${l.padEnd(5)} ${message}`
    for (const [k, v] of Object.entries(fields ?? {})) {
      if (v !== undefined) line += ` ${k}=${formatValue(v)}`
    }
    write(line + '\n')
  }
  return { debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error') }
}
