/** `canopy agent`: the agent daemon in the foreground. */
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ExitCode, UsageError } from '../errors.ts'
import { createStderrLogger, parseLogLevel } from '../logger.ts'
import { isIP } from 'node:net'
import { parseDuration, parseSize } from '@canopy/core'
import type { P2pOptions } from '@canopy/agent'
import { readApiToken, say, str } from '../verb.ts'
import type { Values, Verb } from '../verb.ts'
import { untilSignal } from './signals.ts'

/** Values from the configuration file, by option name (the flag without "--"), as text. */
type Config = Record<string, string>

/** Where a tuning option was set, for messages: the flag, its variable, or the config file. */
interface Sources { values: Values, config: Config, configPath: string }

/**
 * Reads a tuning option, by precedence: its flag, CANOPY_<NAME>, the config file;
 * undefined leaves the agent's default.
 */
function tuning (sources: Sources, name: string, parse: (text: string) => number, min: number): number | undefined {
  const env = `CANOPY_${name.toUpperCase().replaceAll('-', '_')}`
  const flagText = str(sources.values, name)
  const envText = process.env[env] === '' ? undefined : process.env[env]
  const text = flagText ?? envText ?? sources.config[name]
  if (text === undefined || text === '') return undefined
  const where = flagText !== undefined ? `--${name} ${text}` : envText !== undefined ? `--${name} ${text} (from ${env})` : `"${name}": ${text} in ${sources.configPath}`
  let value: number
  try {
    value = parse(text)
  } catch (err) {
    throw new UsageError(`${where}: ${(err as Error).message}`, 'agent')
  }
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`${where}: must be a whole number of at least ${min}`, 'agent')
  return value
}

const integer = (text: string): number => {
  if (!/^\d+$/.test(text.trim())) throw new Error('not a whole number')
  return Number(text)
}

type TuningKey = 'maxBackgroundJobs' | 'requestsInFlight' | 'requestSize' | 'hashThreads' | 'requestTimeoutMs' | 'retryMinMs' | 'retryMaxMs' |
  'notifyTimeoutMs' | 'notifyCommandTimeoutMs' | 'notifyRetryMinMs' | 'notifyRetryMaxMs' | 'notifyAttempts' | 'timeSliceMs' |
  'noProgressTimeoutMs' | 'maxDownloadTimeMs' | 'inactiveJobTimeoutMs' | 'retentionMs' | 'maxJobs' | 'maxFilesPerJob' | 'maxUrlLength' | 'maxNameLength'

/**
 * The agent's numeric options: the AgentOptions field, the flag (also the config
 * file's key and, upper-cased, the CANOPY_ variable), how the text is read, the
 * least value. Every MS option also takes a duration ("30s", "5m"); a plain number
 * stays milliseconds.
 */
const TUNING: ReadonlyArray<readonly [TuningKey, string, (text: string) => number, number]> = [
  ['maxBackgroundJobs', 'max-background-jobs', integer, 1],
  ['requestsInFlight', 'requests-in-flight', integer, 1],
  ['requestSize', 'request-size', parseSize, 1],
  ['hashThreads', 'hash-threads', integer, 0],
  ['requestTimeoutMs', 'request-timeout', parseDuration, 1],
  ['retryMinMs', 'retry-min', parseDuration, 1],
  ['retryMaxMs', 'retry-max', parseDuration, 1],
  ['notifyTimeoutMs', 'notify-timeout', parseDuration, 1],
  ['notifyCommandTimeoutMs', 'notify-command-timeout', parseDuration, 1],
  ['notifyRetryMinMs', 'notify-retry-min', parseDuration, 1],
  ['notifyRetryMaxMs', 'notify-retry-max', parseDuration, 1],
  ['notifyAttempts', 'notify-attempts', integer, 1],
  ['timeSliceMs', 'time-slice', parseDuration, 1],
  ['noProgressTimeoutMs', 'no-progress-timeout', parseDuration, 1],
  ['maxDownloadTimeMs', 'max-download-time', parseDuration, 0],
  ['inactiveJobTimeoutMs', 'inactive-job-timeout', parseDuration, 1],
  ['retentionMs', 'retention', parseDuration, 1],
  ['maxJobs', 'max-jobs', integer, 1],
  ['maxFilesPerJob', 'max-files-per-job', integer, 1],
  ['maxUrlLength', 'max-url-length', integer, 1],
  ['maxNameLength', 'max-name-length', integer, 1]
]

/** Keys a config file may hold: the numeric options above, and the peer node's port and cache size. */
const CONFIG_KEYS: readonly string[] = [...TUNING.map(([, name]) => name), 'p2p-port', 'p2p-host', 'cache-size', 'swarm-key', 'peer', 'metrics-listen']

function agentTuning (sources: Sources): Partial<Record<TuningKey, number>> {
  return Object.fromEntries(TUNING.map(([key, name, parse, min]) => [key, tuning(sources, name, parse, min)]))
}

/**
 * Reads the configuration file: `--config FILE` (or CANOPY_CONFIG), which must
 * exist, else `<state-dir>/config.json` when there is one. A JSON object whose keys
 * are option names without "--" and whose values are numbers or strings, read like
 * the flags ({"max-background-jobs": 4, "retention": "30d"}). An unknown key is an
 * error, so that a typo does not silently leave a default in place.
 */
async function readConfig (values: Values, stateDir: string): Promise<{ config: Config, configPath: string }> {
  const envPath = process.env.CANOPY_CONFIG === '' ? undefined : process.env.CANOPY_CONFIG
  const explicit = str(values, 'config') ?? envPath
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
    if (key === 'peer') {
      // The static peers: a list of multiaddrs (no multiaddr holds a comma).
      if (!Array.isArray(value) || !value.every(v => typeof v === 'string' && !v.includes(','))) {
        throw new UsageError(`the config file ${configPath}: "peer" must be a list of multiaddrs, e.g. ["/ip4/192.168.1.20/tcp/7373"]`, 'agent')
      }
      config.peer = value.join(',')
      continue
    }
    if (typeof value !== 'number' && typeof value !== 'string') throw new UsageError(`the config file ${configPath}: "${key}" must be a number or a string`, 'agent')
    config[key] = String(value)
  }
  return { config, configPath }
}

/** --api-listen and the token read from --api-token-file (flags, else CANOPY_API_LISTEN / CANOPY_API_TOKEN_FILE). */
async function apiListenOptions (values: Values): Promise<{ apiListen?: string, apiToken?: string }> {
  const listen = str(values, 'api-listen') ?? process.env.CANOPY_API_LISTEN
  const tokenFile = str(values, 'api-token-file') ?? process.env.CANOPY_API_TOKEN_FILE
  if (listen === undefined || listen === '') {
    if (tokenFile !== undefined && str(values, 'api-token-file') !== undefined) throw new UsageError('--api-token-file goes with --api-listen', 'agent')
    return {}
  }
  if (tokenFile === undefined) throw new UsageError('--api-listen needs --api-token-file: the TCP listener is never open without a token', 'agent')
  const token = await readApiToken(tokenFile, 'agent')
  return { apiListen: listen, apiToken: token }
}

/** --metrics-listen (flag, else CANOPY_METRICS_LISTEN, else the config file), checked before the agent starts. */
async function metricsListenOption (sources: Sources): Promise<{ metricsListen?: string }> {
  const { parseMetricsListen } = await import('@canopy/agent')
  const listen = str(sources.values, 'metrics-listen') ?? process.env.CANOPY_METRICS_LISTEN ?? sources.config['metrics-listen']
  if (listen === undefined || listen === '') return {}
  try {
    parseMetricsListen(listen)
  } catch (err) {
    throw new UsageError((err as Error).message, 'agent')
  }
  return { metricsListen: listen }
}

/** The peer node's options from flags, else CANOPY_* variables; undefined with --no-p2p. */
async function p2pOptions (sources: Sources): Promise<P2pOptions | undefined> {
  const { values, config } = sources
  if (values['no-p2p'] === true || process.env.CANOPY_P2P === '0') return undefined
  // Loaded here, not at the top: other verbs should not pay for libp2p's start-up.
  const { DEFAULT_P2P_PORT, parsePeerAddresses, readSwarmKey } = await import('@canopy/agent/peers')
  const port = tuning(sources, 'p2p-port', integer, 0) ?? DEFAULT_P2P_PORT
  if (port > 65535) throw new UsageError(`--p2p-port ${port}: a TCP port is at most 65535`, 'agent')
  const host = str(values, 'p2p-host') ?? process.env.CANOPY_P2P_HOST ?? config['p2p-host'] ?? '0.0.0.0'
  if (isIP(host) === 0) throw new UsageError(`--p2p-host ${host}: give an IP address`, 'agent')
  const flagPeers = values.peer as unknown as string[] | undefined
  // A flag wins over the environment, which wins over the config file.
  const peers = flagPeers ?? (process.env.CANOPY_PEERS ?? config.peer ?? '').split(',').map(p => p.trim()).filter(Boolean)
  const keyFile = str(values, 'swarm-key') ?? process.env.CANOPY_SWARM_KEY ?? config['swarm-key']
  let swarmKey: Uint8Array | undefined
  if (keyFile !== undefined && keyFile !== '') {
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
  const cacheSize = tuning(sources, 'cache-size', parseSize, 1)
  return {
    ...(cacheSize !== undefined ? { cacheSize } : {}),
    listen: [`/${isIP(host) === 6 ? 'ip6' : 'ip4'}/${host}/tcp/${port}`],
    mdns: values['no-mdns'] !== true && process.env.CANOPY_MDNS !== '0',
    peers,
    ...(swarmKey !== undefined ? { swarmKey } : {})
  }
}

export const agentVerb: Verb = {
  name: 'agent',
  summary: 'run the agent (job queue, verified transfers, control API) in the foreground',
  help: `Usage: canopy agent [--state-dir D] [--log-level debug|info|warn|error]

Runs the Canopy agent in the foreground: it keeps the job queue, transfers files
in verified blocks, and serves the control API on the Unix
socket agent.sock in its state directory (owner-only). Logs go to stderr.
SIGINT (Ctrl-C) or SIGTERM stop it cleanly; jobs resume at the next start.

Options:
  --state-dir D        where the agent keeps jobs, cache and its socket
                       (default: CANOPY_STATE_DIR, else $XDG_STATE_HOME/canopy,
                       else ~/.local/state/canopy; macOS ~/Library/Application
                       Support/Canopy; Windows %LOCALAPPDATA%\\Canopy)
  --log-level L        debug, info, warn or error (default: CANOPY_LOG_LEVEL, else info)
  --config FILE        a JSON file of options (default: <state-dir>/config.json when
                       it exists; CANOPY_CONFIG), keys as the flags without "--":
                       {"max-background-jobs": 4, "retention": "30d"}
  --max-background-jobs N   background jobs transferring at once (default 2;
                       foreground jobs always run)
  --requests-in-flight N    range requests in flight per file (default 4)
  --request-size SIZE  bytes per range request, whole blocks (default 4MiB)
  --hash-threads N     hashing worker threads; 0 = blocks inline (default 2,
                       1 on a machine with one CPU)
  --request-timeout MS ms without headers or body bytes before a request is
                       abandoned (default 30000)
  --retry-min MS       first retry delay after a transient error (default 2000)
  --retry-max MS       longest retry delay (default 600000)

Scheduling and job limits (DUR: 1500 = ms, or 30s, 5m, 2h, 14d; every MS option
above takes a DUR too; the retry and time limits are defaults: a job may set its
own, see canopy get --help):
  --time-slice DUR     a background job runs this long before a waiting job of
                       its priority takes its turn (default 5m)
  --no-progress-timeout DUR  a job trying this long without progress stops in
                       error, ERR_NO_PROGRESS (default 14d)
  --max-download-time DUR    total time a job may spend trying before it stops
                       in error, ERR_MAX_TIME (default 0: no limit)
  --inactive-job-timeout DUR a job not modified for this long is cancelled
                       (default 90d)
  --retention DUR      acknowledged and cancelled jobs stay listed this long,
                       then are removed (default 7d)
  --max-jobs N         unfinished jobs the agent holds at most (default 10000)
  --max-files-per-job N  (default 1000)
  --max-url-length N   characters of a file's URL (default 8192)
  --max-name-length N  characters of a job's name (default 256)

Notifications (set per job: canopy get --on-complete, --on-error, --notify-url):
  --notify-timeout MS  longest wait for a notify URL's answer (default 30000)
  --notify-command-timeout MS  longest run of a notification command before its
                       process group is killed (default 120000)
  --notify-retry-min MS  first delay before a failed notify-URL POST is tried
                       again; doubles each time (default 1000)
  --notify-retry-max MS  longest such delay (default 300000)
  --notify-attempts N  attempts of one notify-URL POST before it is given up
                       (default 10)

Remote administration (the Unix socket is always there, owner-only):
  --api-listen HOST:PORT  also serve the control API on TCP, e.g. 0.0.0.0:7380
  --api-token-file F   the bearer token it requires (required with --api-listen);
                       clients: CANOPY_AGENT_URL=http://HOST:PORT and
                       CANOPY_API_TOKEN_FILE=F; the web dashboard is at
                       http://HOST:PORT/dashboard/ (canopy dashboard prints its URL)

Metrics (Prometheus; docs/API.md lists them):
  --metrics-listen HOST:PORT  serve GET /metrics without a token, for Prometheus,
                       e.g. 0.0.0.0:9464; a bare PORT listens on 127.0.0.1
                       (default: off; the control API always serves /metrics,
                       behind its token on TCP)

Peers (the agent's libp2p node):
  --p2p-port N         TCP port of the peer node (default 7373; 0 picks one)
  --p2p-host IP        address it listens on (default 0.0.0.0)
  --no-mdns            do not discover peers by mDNS (multicast on the LAN)
  --peer MULTIADDR     a static peer, e.g. /ip4/192.168.1.20/tcp/7373 (repeatable;
                       CANOPY_PEERS takes a comma-separated list)
  --swarm-key FILE     accept only peers holding this key (canopy keygen)
  --cache-size SIZE    bytes of completed files kept for peers (default
                       min(10 GiB, 10% of the state directory's disk))
  --no-p2p             run no peer node

Each option can also be set in the environment as CANOPY_<OPTION>, e.g.
CANOPY_REQUESTS_IN_FLIGHT=8, and the numeric ones (and --p2p-port, --cache-size)
in the config file. A flag wins over the environment, which wins over the file.

Examples:
  canopy agent
  canopy agent --state-dir /var/lib/canopy --log-level debug --swarm-key /etc/canopy/org.key
  canopy agent --no-mdns --p2p-host 127.0.0.1 --p2p-port 7374 --peer /ip4/127.0.0.1/tcp/7373
`,
  options: {
    config: { type: 'string' },
    'log-level': { type: 'string' },
    'api-listen': { type: 'string' },
    'api-token-file': { type: 'string' },
    'metrics-listen': { type: 'string' },
    'max-background-jobs': { type: 'string' },
    'requests-in-flight': { type: 'string' },
    'request-size': { type: 'string' },
    'hash-threads': { type: 'string' },
    'request-timeout': { type: 'string' },
    'retry-min': { type: 'string' },
    'retry-max': { type: 'string' },
    'notify-timeout': { type: 'string' },
    'notify-command-timeout': { type: 'string' },
    'notify-retry-min': { type: 'string' },
    'notify-retry-max': { type: 'string' },
    'notify-attempts': { type: 'string' },
    'time-slice': { type: 'string' },
    'no-progress-timeout': { type: 'string' },
    'max-download-time': { type: 'string' },
    'inactive-job-timeout': { type: 'string' },
    retention: { type: 'string' },
    'max-jobs': { type: 'string' },
    'max-files-per-job': { type: 'string' },
    'max-url-length': { type: 'string' },
    'max-name-length': { type: 'string' },
    'p2p-port': { type: 'string' },
    'p2p-host': { type: 'string' },
    'no-mdns': { type: 'boolean' },
    peer: { type: 'string', multiple: true },
    'swarm-key': { type: 'string' },
    'cache-size': { type: 'string' },
    'no-p2p': { type: 'boolean' }
  },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    const logger = createStderrLogger(parseLogLevel(str(ctx.values, 'log-level')))
    const stopping = untilSignal('canopy agent')
    const { startAgent } = await import('@canopy/agent')
    const sources = { values: ctx.values, ...await readConfig(ctx.values, ctx.stateDir) }
    const options = { stateDir: ctx.stateDir, logger, ...agentTuning(sources), ...await apiListenOptions(ctx.values), ...await metricsListenOption(sources), p2p: await p2pOptions(sources) }
    // Only once every flag and file checked out: a usage error leaves no state dir behind.
    await mkdir(ctx.stateDir, { recursive: true, mode: 0o700 })
    const agent = await startAgent(options)
    say(`canopy agent: listening on ${agent.socketPath}`)
    const signal = await stopping
    say(`canopy agent: ${signal}: stopping`)
    await agent.stop()
    say('canopy agent: stopped')
    return ExitCode.Ok
  }
}
