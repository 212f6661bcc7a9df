/** Waiting for SIGINT/SIGTERM in the foreground servers (agent, origin). */

/** The first stop signal; `dispose` stops listening (when start-up failed, so that a signal is not swallowed). */
export type StopSignal = Promise<NodeJS.Signals> & { dispose: () => void }

/**
 * Resolves with the first SIGINT or SIGTERM. A second one while the server is
 * stopping exits at once (code 130), so a stuck shutdown never traps the user.
 */
export function untilSignal (label: string): StopSignal {
  let first!: (signal: NodeJS.Signals) => void
  const promise = new Promise<NodeJS.Signals>(resolve => {
    first = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', first)
      process.off('SIGTERM', first)
      const again = (): void => {
        process.stderr.write(`${label}: stopping again: exiting now\n`)
        process.exit(130)
      }
      process.once('SIGINT', again)
      process.once('SIGTERM', again)
      resolve(signal)
    }
    process.on('SIGINT', first)
    process.on('SIGTERM', first)
  })
  return Object.assign(promise, {
    dispose: (): void => {
      process.off('SIGINT', first)
      process.off('SIGTERM', first)
    }
  })
}
