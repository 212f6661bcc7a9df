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
