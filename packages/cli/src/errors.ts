/** Exit codes of `canopy`: scripts may rely on them. */
export const ExitCode = {
  /** Success. */
  Ok: 0,
  /** The job failed (error state) or was cancelled; the reason is printed. */
  JobFailed: 1,
  /** Usage error: bad flags or arguments. */
  Usage: 2,
  /** No agent is running for the state directory. */
  NoAgent: 3,
  /** Any other error: the agent's API, the network, files. */
  Error: 4,
  /** Interrupted by Ctrl-C (`canopy get` leaves its job running in the agent). */
  Interrupted: 130
} as const
export type ExitCodeValue = typeof ExitCode[keyof typeof ExitCode]

/** Bad flags or arguments: exit code 2, with a pointer to the verb's help. */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE'
  /** The verb whose help to point at, when there is one. */
  verb?: string

  constructor (message: string, verb?: string) {
    super(message)
    this.name = 'UsageError'
    this.verb = verb
  }
}
