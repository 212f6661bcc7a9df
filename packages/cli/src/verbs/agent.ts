/** `canopy agent`: the agent daemon in the foreground. */
import { mkdir } from 'node:fs/promises'
import { ExitCode } from '../errors.ts'
import { createStderrLogger, parseLogLevel } from '../logger.ts'
import { say, str } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { untilSignal } from './signals.ts'

export const agentVerb: Verb = {
  name: 'agent',
  summary: 'run the agent (job queue, transfers, peer cache) in the foreground',
  help: `Usage: canopy agent [--state-dir D] [--log-level debug|info|warn|error]

Runs the Canopy agent in the foreground: it keeps the job queue, transfers files,
shares verified blocks with peers, and serves the control API on the Unix
socket agent.sock in its state directory (owner-only). Logs go to stderr.
SIGINT (Ctrl-C) or SIGTERM stop it cleanly; jobs resume at the next start.

Options:
  --state-dir D        where the agent keeps jobs, cache and its socket
                       (default: CANOPY_STATE_DIR, else $XDG_STATE_HOME/canopy,
                       else ~/.local/state/canopy; macOS ~/Library/Application
                       Support/Canopy; Windows %LOCALAPPDATA%\\Canopy)
  --log-level L        debug, info, warn or error (default: CANOPY_LOG_LEVEL, else info)

Examples:
  canopy agent
  canopy agent --state-dir /var/lib/canopy --log-level debug
`,
  options: { 'log-level': { type: 'string' } },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const logger = createStderrLogger(parseLogLevel(str(ctx.values, 'log-level')))
    const stopping = untilSignal('canopy agent')
    const { startAgent } = await import('@canopy/agent')
    await mkdir(ctx.stateDir, { recursive: true, mode: 0o700 })
    const agent = await startAgent({ stateDir: ctx.stateDir, logger })
    say(`canopy agent: listening on ${agent.socketPath}`)
    const signal = await stopping
    say(`canopy agent: ${signal}: stopping`)
    await agent.stop()
    say('canopy agent: stopped')
    return ExitCode.Ok
  }
}
