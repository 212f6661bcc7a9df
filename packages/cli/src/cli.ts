/** `canopy`: global options, verb dispatch, and the mapping of errors to exit codes. */
import { parseArgs } from 'node:util'
import { defaultStateDir } from '@canopy/client'
import { isCanopyError } from '@canopy/core'
import { ExitCode, UsageError } from './errors.ts'
import { absolute, COMMON_OPTIONS, out, say, setQuiet } from './verb.ts'
import type { Values, Verb } from './verb.ts'
import { agentVerb } from './verbs/agent.ts'
import { addVerb, getVerb } from './verbs/get.ts'
import { putVerb } from './verbs/put.ts'
import { preloadVerb } from './verbs/preload.ts'
import { cancelVerb, completeVerb, jobsVerb, jobVerb, resumeVerb, setVerb, statusVerb, suspendVerb } from './verbs/jobs.ts'
import { watchVerb } from './verbs/watch.ts'
import { originVerb } from './verbs/origin.ts'
import { publishVerb } from './verbs/publish.ts'
import { keygenVerb } from './verbs/keygen.ts'
import { cacheVerb, peersVerb } from './verbs/peers.ts'
import { completionVerb, versionVerb } from './verbs/meta.ts'
import { version } from './version.ts'
import { policyVerb } from './verbs/policy.ts'
import { dashboardVerb } from './verbs/dashboard.ts'

export const VERBS: readonly Verb[] = [
  getVerb, addVerb, putVerb, jobsVerb, jobVerb, watchVerb, suspendVerb, resumeVerb, cancelVerb, completeVerb, setVerb, statusVerb,
  peersVerb, preloadVerb, cacheVerb, policyVerb, dashboardVerb, agentVerb, originVerb, publishVerb, keygenVerb, versionVerb, completionVerb(() => VERBS)
]

export const EXIT_CODES_HELP = `Exit codes:
  ${ExitCode.Ok}    success
  ${ExitCode.JobFailed}    the job failed or was cancelled (the reason is printed)
  ${ExitCode.Usage}    usage error: bad flags or arguments
  ${ExitCode.NoAgent}    no agent is running for the state directory (start one with \`canopy agent\`)
  ${ExitCode.Error}    any other error: the agent's API, the network, files
  ${ExitCode.Interrupted}  interrupted by Ctrl-C (\`canopy get\` and \`canopy watch\` leave the job running)
`

const SHORT_EXIT_CODES = `Exit codes: ${ExitCode.Ok} ok, ${ExitCode.JobFailed} job failed or cancelled, ${ExitCode.Usage} usage error, ` +
  `${ExitCode.NoAgent} no agent running, ${ExitCode.Error} other error, ${ExitCode.Interrupted} interrupted.\n`

export function mainHelp (): string {
  const width = Math.max(...VERBS.map(v => v.name.length))
  return `Usage: canopy [--state-dir D] <command> [options]

Canopy moves files in the background: the agent runs persistent, resumable
download jobs and verifies every block against the manifest the origin publishes.
Agents of a branch office share verified blocks with each other (libp2p, a swarm
key), so the WAN carries each byte about once.

Commands:
${VERBS.map(v => `  ${v.name.padEnd(width)}  ${v.summary}`).join('\n')}
  ${'help'.padEnd(width)}  show this help, or a command's: canopy help get
  ${''.padEnd(width)}  (canopy help --man prints all of it as a manual page)

Global options:
  --state-dir D   the agent's state directory (holds its control socket agent.sock)
  -h, --help      show help; \`canopy <command> --help\` shows a command's
  --version       print the version
  -q, --quiet     print no progress, summaries or hints, only results and errors
                  (also after the command)

Environment:
  CANOPY_STATE_DIR   the agent's state directory when --state-dir is not given
                     (else $XDG_STATE_HOME/canopy, else ~/.local/state/canopy; macOS
                     ~/Library/Application Support/Canopy; Windows %LOCALAPPDATA%\\Canopy)
  CANOPY_LOG_LEVEL   log level of \`canopy agent\` and \`canopy origin\` (default info)
  CANOPY_AGENT_URL   talk to an agent's TCP listener (canopy agent --api-listen)
                     instead of the local socket, with the bearer token in the
                     file named by CANOPY_API_TOKEN_FILE (or, after the command:
                     --url URL --token-file F)

Examples:
  canopy agent &
  canopy get https://origin.example.com/images/base.iso
  canopy get https://origin.example.com/big.tar --priority low --detach
  canopy jobs

${EXIT_CODES_HELP}`
}

function verbHelp (verb: Verb): string {
  return `${verb.help}\n${SHORT_EXIT_CODES}`
}

function findVerb (name: string): Verb | undefined {
  return VERBS.find(v => v.name === name)
}

/** Whether `-h`/`--help` appears among the arguments (before a `--`). */
function asksForHelp (args: readonly string[]): boolean {
  for (const a of args) {
    if (a === '--') return false
    if (a === '-h' || a === '--help') return true
  }
  return false
}

interface Global {
  stateDir?: string
  help: boolean
  version: boolean
  quiet: boolean
  rest: string[]
}

/** Reads the options before the command: --state-dir, --help, --version. */
function parseGlobal (argv: readonly string[]): Global {
  const g: Global = { help: false, version: false, quiet: false, rest: [] }
  let i = 0
  for (; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--state-dir') {
      const value = argv[i + 1]
      if (value === undefined || value.startsWith('-')) throw new UsageError('--state-dir needs a directory')
      g.stateDir = value
      i++
    } else if (a.startsWith('--state-dir=')) {
      g.stateDir = a.slice('--state-dir='.length)
    } else if (a === '-h' || a === '--help') {
      g.help = true
    } else if (a === '--version' || a === '-V') {
      g.version = true
    } else if (a === '--quiet' || a === '-q') {
      g.quiet = true
    } else if (a.startsWith('-')) {
      throw new UsageError(`unknown option ${a} (before the command)`)
    } else {
      break
    }
  }
  g.rest = argv.slice(i)
  if (g.stateDir === '') throw new UsageError('--state-dir needs a directory')
  return g
}

function isParseArgsError (err: unknown): err is Error & { code: string } {
  const code = (err as { code?: unknown } | null)?.code
  return err instanceof TypeError && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_')
}

/** parseArgs' messages, made short: "unknown option --x". */
function parseArgsMessage (err: Error & { code: string }): string {
  const option = /'(-[^' ]*)/.exec(err.message)?.[1]
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option !== undefined) {
    return `unknown option ${option} (to pass an argument that starts with "-", put it after --)`
  }
  return err.message
}

const ERRNO_HINTS: Record<string, string> = {
  EADDRINUSE: 'the port is taken: pick another with --port',
  EACCES: 'permission denied',
  ENOSPC: 'the disk is full',
  EADDRNOTAVAIL: 'the address is not one of this machine\'s: check --host'
}

/** Codes of the agent's request limits: the CLI reports them as usage errors (exit code 2). */
const AGENT_USAGE_CODES = new Set(['ERR_TOO_MANY_FILES', 'ERR_URL_TOO_LONG', 'ERR_NAME_TOO_LONG', 'ERR_INVALID_POLICY'])

/** Prints an error as `canopy: <message>` and returns its exit code. */
export function reportError (err: unknown): number {
  if (err instanceof UsageError) {
    say(`canopy: ${err.message}`)
    say(err.verb === undefined ? 'Run `canopy --help` for usage.' : `Run \`canopy ${err.verb} --help\` for usage.`)
    return ExitCode.Usage
  }
  if (isCanopyError(err) && AGENT_USAGE_CODES.has(err.code)) {
    // The agent refused a request over one of its limits: the user's input was too big.
    say(`canopy: ${err.message} (${err.code})`)
    return ExitCode.Usage
  }
  if (isCanopyError(err, 'ERR_AGENT_NOT_RUNNING')) {
    say(`canopy: ${err.message}`)
    return ExitCode.NoAgent
  }
  if (isCanopyError(err)) {
    say(`canopy: ${err.message} (${err.code})`)
    return ExitCode.Error
  }
  const code = (err as { code?: unknown } | null)?.code
  const message = err instanceof Error ? err.message : String(err)
  const hint = typeof code === 'string' ? ERRNO_HINTS[code] : undefined
  say(`canopy: ${message}${hint === undefined ? '' : ` (${hint})`}`)
  if (process.env.CANOPY_DEBUG === '1' && err instanceof Error && err.stack !== undefined) say(err.stack)
  return ExitCode.Error
}

/** Runs `canopy` with the arguments after the program name; resolves with the exit code. */
export async function run (argv: readonly string[]): Promise<number> {
  let verbName: string | undefined
  try {
    const global = parseGlobal(argv)
    setQuiet(global.quiet)
    if (global.version) {
      out(`canopy ${version()}\n`)
      return ExitCode.Ok
    }
    const [name, ...args] = global.rest
    if (name === undefined) {
      if (global.help) {
        out(mainHelp())
        return ExitCode.Ok
      }
      say(mainHelp())
      return ExitCode.Usage
    }
    if (name === 'help') {
      const topic = args[0]
      if (topic === '--man') {
        const { manPage } = await import('./completion.ts')
        out(manPage(version(), mainHelp(), VERBS.map(v => ({ ...v, help: verbHelp(v) }))))
        return ExitCode.Ok
      }
      if (topic === undefined) {
        out(mainHelp())
        return ExitCode.Ok
      }
      const verb = findVerb(topic)
      if (verb === undefined) throw new UsageError(`unknown command "${topic}"`)
      out(verbHelp(verb))
      return ExitCode.Ok
    }
    const verb = findVerb(name)
    if (verb === undefined) throw new UsageError(`unknown command "${name}"`)
    verbName = verb.name
    if (global.help || asksForHelp(args)) {
      out(verbHelp(verb))
      return ExitCode.Ok
    }

    const parsed = parseArgs({
      args: [...args],
      options: { ...COMMON_OPTIONS, ...verb.options },
      allowPositionals: true,
      strict: true
    })
    const values = parsed.values as Values
    if (values.quiet === true) setQuiet(true)
    const { positionals } = parsed
    const { min, max, name: what } = verb.positionals
    if (positionals.length < min) throw new UsageError(`missing ${what}`, verb.name)
    if (positionals.length > max) {
      throw new UsageError(`unexpected argument "${positionals[max]}"${max === 0 ? ': this command takes none' : ''}`, verb.name)
    }
    const flagDir = typeof values['state-dir'] === 'string' ? values['state-dir'] : global.stateDir
    if (flagDir === '') throw new UsageError('--state-dir needs a directory', verb.name)
    const stateDirFlag = flagDir === undefined ? undefined : absolute(flagDir)
    return await verb.run({ values, positionals, stateDirFlag, stateDir: stateDirFlag ?? absolute(defaultStateDir()) })
  } catch (err) {
    if (isParseArgsError(err)) return reportError(new UsageError(parseArgsMessage(err), verbName))
    return reportError(err)
  }
}
