/**
 * `canopy agent`: the agent daemon in the foreground. Its options, their config-file
 * keys, environment variables, checks and help all come from the agent's option
 * table (AGENT_OPTION_TABLE in @canopy/agent/options): an option is named once.
 */
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isIP } from 'node:net'
import type { ParseArgsOptionsConfig } from 'node:util'
import { formatBytes, formatDuration, parseDuration, parseSize } from '@canopy/core'
import { AGENT_DEFAULTS, AGENT_OPTION_TABLE, optionEnv } from '@canopy/agent/options'
import type { AgentOptions, AgentOptionSpec, OptionSection, P2pOptions } from '@canopy/agent/options'
import { ExitCode, UsageError } from '../errors.ts'
import { createStderrLogger, parseLogFormat, parseLogLevel } from '../logger.ts'
import type { DaemonLogger } from '../logger.ts'
import { readApiToken, str } from '../verb.ts'
import type { Values, Verb } from '../verb.ts'
import { notifyReady, onReload } from './service.ts'
import { untilSignal } from './signals.ts'

/** Values from the configuration file, by option name (the flag without "--"), as text (a list: comma-joined). */
type Config = Record<string, string>

/** Where options come from, for reading and for messages. */
interface Sources { values: Values, config: Config, configPath: string }

const FLAGGED = AGENT_OPTION_TABLE.filter((o): o is AgentOptionSpec & { name: string } => o.name !== undefined)
const byName = new Map(FLAGGED.map(o => [o.name, o]))
const spec = (name: string): AgentOptionSpec & { name: string } => byName.get(name)!

/** Keys a config file may hold: every option but --config itself. */
const CONFIG_KEYS: readonly string[] = [...FLAGGED.filter(o => o.flagOnly !== true).map(o => o.name), 'policy']

/**
 * An option's text and where it came from, by precedence: its flag, its variable
 * (CANOPY_<NAME>), the config file; undefined when none sets it.
 */
function textOf (sources: Sources, o: AgentOptionSpec & { name: string }): { text: string, where: string } | undefined {
  const env = optionEnv(o)
  const raw = sources.values[o.name] as string | string[] | boolean | undefined
  const flagText = Array.isArray(raw) ? raw.join(',') : typeof raw === 'string' ? raw : raw === true ? 'true' : undefined
  const envText = process.env[env] === '' ? undefined : process.env[env]
  if (flagText !== undefined) return { text: flagText, where: `--${o.name} ${flagText}` }
  if (envText !== undefined) return { text: envText, where: `--${o.name} ${envText} (from ${env})` }
  const fileText = o.flagOnly === true ? undefined : sources.config[o.name]
  if (fileText === undefined || fileText === '') return undefined
  return { text: fileText, where: `"${o.name}": ${fileText} in ${sources.configPath}` }
}

const integer = (text: string): number => {
  if (!/^\d+$/.test(text.trim())) throw new Error('not a whole number')
  return Number(text)
}
const PARSERS: Record<'count' | 'size' | 'duration', (text: string) => number> = { count: integer, size: parseSize, duration: parseDuration }

/** A numeric option (count, size or duration: "30s", "5m"; a plain number stays milliseconds), checked against its bounds. */
function numberOf (sources: Sources, name: string): number | undefined {
  const o = spec(name)
  const found = textOf(sources, o)
  if (found === undefined) return undefined
  let value: number
  try {
    value = PARSERS[o.kind as keyof typeof PARSERS](found.text)
  } catch (err) {
    throw new UsageError(`${found.where}: ${(err as Error).message}`, 'agent')
  }
  const min = o.min ?? 0
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`${found.where}: must be a whole number of at least ${min}`, 'agent')
  if (o.max !== undefined && value > o.max) throw new UsageError(`${found.where}: must be at most ${o.max}`, 'agent')
  return value
}

function textOption (sources: Sources, name: string): string | undefined {
  return textOf(sources, spec(name))?.text
}

/** Config keys a running agent applies again on SIGHUP; the others take effect at its next start. */
const LIVE_CONFIG_KEYS = ['log-level', 'log-format']

/** The log settings: flag, else CANOPY_LOG_LEVEL / CANOPY_LOG_FORMAT, else the config file. */
function logSettings (sources: Sources): Pick<DaemonLogger, 'level' | 'format'> {
  return {
    level: parseLogLevel(str(sources.values, 'log-level'), undefined, { value: sources.config['log-level'], path: sources.configPath }),
    format: parseLogFormat(str(sources.values, 'log-format'), undefined, { value: sources.config['log-format'], path: sources.configPath })
  }
}

/**
 * SIGHUP: reads the config file again and applies what can change while the agent
 * runs (the log level and format); says which other changed keys wait for a restart.
 * A bad file is logged and the running settings are kept.
 */
async function reloadConfig (ctx: { values: Values, stateDir: string }, logger: DaemonLogger, previous: Config): Promise<Config> {
  const next = await readConfig(ctx.values, ctx.stateDir)
  const settings = logSettings({ values: ctx.values, ...next })
  Object.assign(logger, settings)
  const keys = new Set([...Object.keys(previous), ...Object.keys(next.config)])
  const waiting = [...keys].filter(k => !LIVE_CONFIG_KEYS.includes(k) && previous[k] !== next.config[k])
  logger.info('configuration reloaded', { configPath: next.configPath, logLevel: settings.level, logFormat: settings.format })
  if (waiting.length > 0) logger.warn('changed options take effect at the next restart', { options: waiting.join(',') })
  return next.config
}

/** A switch: on by its flag, by its variable set to its `envOn` value, or by `true` in the config file. */
function switchOn (sources: Sources, name: string): boolean {
  const o = spec(name)
  if (sources.values[name] === true) return true
  const env = process.env[optionEnv(o)]
  if (env !== undefined && env !== '') return env === o.envOn
  return sources.config[name] === 'true'
}

/** The numeric AgentOptions fields from their flags, variables or the config file (undefined leaves the agent's default). */
function agentTuning (sources: Sources): Partial<AgentOptions> {
  const numeric = FLAGGED.filter(o => o.field !== undefined && (o.kind === 'count' || o.kind === 'size' || o.kind === 'duration'))
  return Object.fromEntries(numeric.map(o => [o.field, numberOf(sources, o.name)]))
}

/**
 * Reads the configuration file: `--config FILE` (or CANOPY_CONFIG), which must
 * exist, else `<state-dir>/config.json` when there is one. A JSON object whose keys
 * are option names without "--", read like the flags: numbers or strings, true or
 * false for switches, a list of strings for lists ({"max-background-jobs": 4,
 * "retention": "30d", "no-mdns": true, "peer": ["/ip4/192.168.1.20/tcp/7373"]}). An
 * unknown key is an error, so that a typo does not silently leave a default in place.
 */
async function readConfig (values: Values, stateDir: string): Promise<{ config: Config, configPath: string }> {
  const envPath = process.env.CANOPY_CONFIG === '' ? undefined : process.env.CANOPY_CONFIG
  const explicit = (typeof values.config === 'string' ? values.config : undefined) ?? envPath
  const configPath = explicit ?? join(stateDir, 'config.json')
  let text: string
  try {
    text = await readFile(configPath, 'utf8')
  } catch (err) {
    const code = (err as { code?: string }).code
    if (explicit === undefined && code === 'ENOENT') return { config: {}, configPath }
    throw new UsageError(`cannot read the config file ${configPath} (${code ?? String(err)})`, 'agent')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new UsageError(`the config file ${configPath} is not valid JSON: ${(err as Error).message}`, 'agent')
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new UsageError(`the config file ${configPath} must hold a JSON object, e.g. {"max-background-jobs": 4, "retention": "30d"}`, 'agent')
  }
  const config: Config = {}
  for (const [key, value] of Object.entries(parsed)) {
    if (!CONFIG_KEYS.includes(key)) throw new UsageError(`the config file ${configPath} has an unknown option "${key}"; it may set: ${CONFIG_KEYS.join(', ')}`, 'agent')
    if (key === 'policy') {
      // The bandwidth policy: an object, checked when the agent reads it (agentPolicy).
      config.policy = JSON.stringify(value)
      continue
    }
    const o = spec(key)
    if (o.kind === 'list') {
      // A list of strings, none holding a comma (no multiaddr does).
      if (!Array.isArray(value) || !value.every(v => typeof v === 'string' && !v.includes(','))) {
        throw new UsageError(`the config file ${configPath}: "${key}" must be a list of ${o.arg ?? 'value'}s, e.g. ["/ip4/192.168.1.20/tcp/7373"]`, 'agent')
      }
      config[key] = value.join(',')
    } else if (o.kind === 'switch') {
      if (typeof value !== 'boolean') throw new UsageError(`the config file ${configPath}: "${key}" must be true or false`, 'agent')
      config[key] = String(value)
    } else {
      if (typeof value !== 'number' && typeof value !== 'string') throw new UsageError(`the config file ${configPath}: "${key}" must be a number or a string`, 'agent')
      config[key] = String(value)
    }
  }
  return { config, configPath }
}

/** The config file's "policy", checked here so that a bad one is a usage error naming the key. */
async function agentPolicy (sources: Sources): Promise<{ bandwidthPolicy?: unknown }> {
  if (sources.config.policy === undefined) return {}
  const bandwidthPolicy: unknown = JSON.parse(sources.config.policy)
  const { parsePolicy, PolicyError } = await import('@canopy/agent')
  try {
    parsePolicy(bandwidthPolicy)
  } catch (err) {
    if (err instanceof PolicyError) throw new UsageError(`the config file ${sources.configPath}: "policy": ${err.message}`, 'agent')
    throw err
  }
  return { bandwidthPolicy }
}

/** --api-listen and the token read from --api-token-file (flags, variables or the config file). */
async function apiListenOptions (sources: Sources): Promise<{ apiListen?: string, apiToken?: string }> {
  const listen = textOption(sources, 'api-listen')
  const tokenFile = textOption(sources, 'api-token-file')
  if (listen === undefined) {
    if (typeof sources.values['api-token-file'] === 'string') throw new UsageError('--api-token-file goes with --api-listen', 'agent')
    return {}
  }
  if (tokenFile === undefined) throw new UsageError('--api-listen needs --api-token-file: the TCP listener is never open without a token', 'agent')
  const token = await readApiToken(tokenFile, 'agent')
  return { apiListen: listen, apiToken: token }
}

/** --metrics-listen (flag, variable or config file), checked before the agent starts. */
async function metricsListenOption (sources: Sources): Promise<{ metricsListen?: string }> {
  const { parseMetricsListen } = await import('@canopy/agent')
  const listen = textOption(sources, 'metrics-listen')
  if (listen === undefined || listen === '') return {}
  try {
    parseMetricsListen(listen)
  } catch (err) {
    throw new UsageError((err as Error).message, 'agent')
  }
  return { metricsListen: listen }
}

/** The peer node's options; undefined with --no-p2p. */
async function p2pOptions (sources: Sources): Promise<P2pOptions | undefined> {
  if (switchOn(sources, 'no-p2p')) return undefined
  // Loaded here, not at the top: other verbs should not pay for libp2p's start-up.
  const { DEFAULT_P2P_PORT, parsePeerAddresses, readSwarmKey } = await import('@canopy/agent/peers')
  const port = numberOf(sources, 'p2p-port') ?? DEFAULT_P2P_PORT
  const host = textOption(sources, 'p2p-host') ?? '0.0.0.0'
  if (isIP(host) === 0) throw new UsageError(`--p2p-host ${host}: give an IP address`, 'agent')
  const peers = (textOption(sources, 'peer') ?? '').split(',').map(p => p.trim()).filter(Boolean)
  const keyFile = textOption(sources, 'swarm-key')
  let swarmKey: Uint8Array | undefined
  if (keyFile !== undefined) {
    try {
      swarmKey = await readSwarmKey(keyFile)
    } catch (err) {
      throw new UsageError((err as Error).message, 'agent')
    }
  }
  try {
    parsePeerAddresses(peers)
  } catch (err) {
    throw new UsageError(`--peer: ${(err as Error).message}`, 'agent')
  }
  const hostedCacheAddrs = (textOption(sources, 'hosted-cache-addr') ?? '').split(',').map(p => p.trim()).filter(Boolean)
  try {
    parsePeerAddresses(hostedCacheAddrs)
  } catch (err) {
    throw new UsageError(`--hosted-cache-addr: ${(err as Error).message}`, 'agent')
  }
  const cacheSize = numberOf(sources, 'cache-size')
  return {
    ...(cacheSize !== undefined ? { cacheSize } : {}),
    listen: [`/${isIP(host) === 6 ? 'ip6' : 'ip4'}/${host}/tcp/${port}`],
    mdns: !switchOn(sources, 'no-mdns'),
    peers,
    ...(switchOn(sources, 'hosted-cache') ? { hostedCache: true } : {}),
    ...(hostedCacheAddrs.length > 0 ? { hostedCacheAddrs } : {}),
    ...(swarmKey !== undefined ? { swarmKey } : {})
  }
}

// ---- help, from the table ----------------------------------------------------

const SECTION_TITLES: Record<OptionSection, string> = {
  general: 'Options:\n  --state-dir D        where the agent keeps jobs, cache and its socket\n' +
    '                       (default: CANOPY_STATE_DIR, else $XDG_STATE_HOME/canopy,\n' +
    '                       else ~/.local/state/canopy; macOS ~/Library/Application\n' +
    '                       Support/Canopy; Windows %LOCALAPPDATA%\\Canopy)',
  scheduling: 'Scheduling and job limits (DUR: 1500 = ms, or 30s, 5m, 2h, 14d; the retry and\ntime limits are defaults: a job may set its own, see canopy get --help):',
  notifications: 'Notifications (set per job: canopy get --on-complete, --on-error, --notify-url):',
  remote: 'Remote administration (the Unix socket is always there, owner-only):',
  peers: 'Peers (the agent\'s libp2p node):'
}

function defaultOf (o: AgentOptionSpec): string | undefined {
  if (o.defaultText !== undefined) return o.defaultText
  const value = o.field === undefined ? undefined : (AGENT_DEFAULTS as Record<string, unknown>)[o.field]
  if (typeof value !== 'number') return undefined
  return o.kind === 'size' ? formatBytes(value).replace(' ', '').replace('.0', '') : o.kind === 'duration' ? formatDuration(value).replace(' ', '') : String(value)
}

/** `  --flag ARG` then the help, wrapped at 79 columns under column 23. */
function helpLine (o: AgentOptionSpec & { name: string }): string {
  const head = `  --${o.name}${o.arg !== undefined ? ` ${o.arg}` : ''}`
  const def = defaultOf(o)
  const words = `${o.help}${def !== undefined ? ` (default ${def})` : ''}`.split(' ')
  const lines: string[] = []
  let line = head.length <= 21 ? head.padEnd(23) : `${head} `
  for (const word of words) {
    if (line.length + word.length > 79 && line.trim() !== '') {
      lines.push(line.trimEnd())
      line = ' '.repeat(23)
    }
    line += `${word} `
  }
  lines.push(line.trimEnd())
  return lines.join('\n')
}

function optionsHelp (): string {
  return (Object.keys(SECTION_TITLES) as OptionSection[]).map(section =>
    [SECTION_TITLES[section], ...FLAGGED.filter(o => o.section === section).map(helpLine)].join('\n')).join('\n\n')
}

/** parseArgs' view of the table: switches are booleans, lists repeat, the rest take a value. */
const OPTIONS: ParseArgsOptionsConfig = Object.fromEntries(FLAGGED.map(o =>
  [o.name, o.kind === 'switch' ? { type: 'boolean' } : o.kind === 'list' ? { type: 'string', multiple: true } : { type: 'string' }]))

export const agentVerb: Verb = {
  name: 'agent',
  summary: 'run the agent (job queue, verified transfers, control API) in the foreground',
  help: `Usage: canopy agent [--state-dir D] [--log-level debug|info|warn|error]

Runs the Canopy agent in the foreground: it keeps the job queue, transfers files
in verified blocks, and serves the control API on the Unix
socket agent.sock in its state directory (owner-only). Logs go to stderr.
SIGINT (Ctrl-C) or SIGTERM stop it cleanly; jobs resume at the next start.

${optionsHelp()}

Each option can also be set in the environment as CANOPY_<OPTION>, e.g.
CANOPY_REQUESTS_IN_FLIGHT=8 (CANOPY_PEERS takes a comma-separated list;
CANOPY_MDNS=0 and CANOPY_P2P=0 are --no-mdns and --no-p2p), and every option but
--config in the config file. A flag wins over the environment, which wins over
the file.

Examples:
  canopy agent
  canopy agent --state-dir /var/lib/canopy --log-level debug --swarm-key /etc/canopy/org.key
  canopy agent --no-mdns --p2p-host 127.0.0.1 --p2p-port 7374 --peer /ip4/127.0.0.1/tcp/7373
`,
  options: OPTIONS,
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const stopping = untilSignal('canopy agent')
    let logger: DaemonLogger | undefined
    let agent
    let config: Config
    try {
      const { startAgent } = await import('@canopy/agent')
      const sources = { values: ctx.values, ...await readConfig(ctx.values, ctx.stateDir) }
      config = sources.config
      const { level, format } = logSettings(sources)
      logger = createStderrLogger(level, undefined, format)
      const options = { stateDir: ctx.stateDir, logger, ...agentTuning(sources), ...await apiListenOptions(sources), p2p: await p2pOptions(sources), ...await agentPolicy(sources), ...await metricsListenOption(sources) }
      // Only once every flag and file checked out: a usage error leaves no state dir behind.
      await mkdir(ctx.stateDir, { recursive: true, mode: 0o700 })
      agent = await startAgent(options)
    } catch (err) {
      // Without this, a signal handler outlived the failed start, and SIGTERM was ignored.
      stopping.dispose()
      throw err
    }
    const log = logger
    const reloading = onReload(async () => { config = await reloadConfig(ctx, log, config) }, log)
    log.notice(`canopy agent: listening on ${agent.socketPath}`)
    await notifyReady(`listening on ${agent.socketPath}`, log)
    const signal = await stopping
    reloading.dispose()
    log.notice(`canopy agent: ${signal}: stopping`)
    await agent.stop()
    log.notice('canopy agent: stopped')
    return ExitCode.Ok
  }
}
