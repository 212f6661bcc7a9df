/** @canopy/cli: the `canopy` command, callable in-process for embedding and tests. */
export { mainHelp, run, VERBS } from './cli.ts'
export { ExitCode, UsageError } from './errors.ts'
export type { ExitCodeValue } from './errors.ts'
