/** A logger is passed in; libraries never print. Fields are structured, messages are plain. */
export interface Logger {
  debug: (message: string, fields?: Record<string, unknown>) => void
  info: (message: string, fields?: Record<string, unknown>) => void
  warn: (message: string, fields?: Record<string, unknown>) => void
  error: (message: string, fields?: Record<string, unknown>) => void
}

const noop = (): void => {}
/** The default logger of every library entry point: silent. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop }

/**
 * A logger that adds `fields` to every line: a transfer given
 * `withFields(logger, { jobId })` cannot log a line about its job without the job id.
 */
export function withFields (logger: Logger, fields: Record<string, unknown>): Logger {
  const make = (log: Logger['info']) => (message: string, more?: Record<string, unknown>): void => { log(message, { ...fields, ...more }) }
  return { debug: make(logger.debug), info: make(logger.info), warn: make(logger.warn), error: make(logger.error) }
}
