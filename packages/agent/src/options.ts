import { availableParallelism } from 'node:os'
import { CanopyError, silentLogger } from '@canopy/core'
import type { Logger } from '@canopy/core'

/** Options of an agent. Every default is documented here and in docs/CONFIGURATION.md. */
export interface AgentOptions {
  /** Directory of the agent's database and control socket (created 0700). Required. */
  stateDir: string
  /** Default: silent. */
  logger?: Logger
  /**
   * Also serve the control API on TCP (host:port) for remote administration; every
   * request must then carry `Authorization: Bearer <apiToken>`. Default: none (the
   * Unix socket only).
   */
  apiListen?: string
  /** The bearer token of the TCP listener (required with apiListen). */
  apiToken?: string
  /**
   * HOST:PORT (or PORT, for 127.0.0.1) of a listener that serves Prometheus metrics at
   * GET /metrics without a token. Default: none (the control API serves /metrics too).
   */
  metricsListen?: string
  /** Background (non-foreground) jobs transferring at once. Default 2. Foreground jobs always run. */
  maxBackgroundJobs?: number
  /** Range requests in flight per file being fetched from an origin. Default 4. */
  requestsInFlight?: number
  /** Bytes asked for in one range request (whole blocks, at least one). Default 4 MiB. */
  requestSize?: number
  /**
   * Worker threads that verify block digests and write blocks, and hash whole files,
   * off the event loop; 0 verifies blocks inline (files are then hashed on a thread of
   * their own). Default 2 (the second one hashes the whole files, in parallel with
   * block verification), 1 on a machine with one CPU.
   */
  hashThreads?: number
  /** Milliseconds without response headers or body bytes before a request is abandoned. Default 30 000. */
  requestTimeoutMs?: number
  /** Fetches of one block that fail verification before the job stops in error. Default 3. */
  maxBlockAttempts?: number
  /** First retry delay after a transient error, in ms; doubles each time (with ±20% jitter). Default 2 000. */
  retryMinMs?: number
  /** Longest retry delay, in ms. Default 600 000 (10 minutes). */
  retryMaxMs?: number
  /** Longest wait, in ms, for a job's notify URL to answer a POST. Default 30 000. */
  notifyTimeoutMs?: number
  /** Longest run, in ms, of an on-complete / on-error command before its process group is killed. Default 120 000. */
  notifyCommandTimeoutMs?: number
  /** First delay before a failed notify-URL POST is tried again, in ms; doubles (±20% jitter). Default 1 000. */
  notifyRetryMinMs?: number
  /** Longest delay between notify-URL attempts, in ms. Default 300 000 (5 minutes). */
  notifyRetryMaxMs?: number
  /** Attempts of one notify-URL POST before it is given up (and logged). Default 10. */
  notifyAttempts?: number
  /**
   * How long a background job runs before it gives its slot to a waiting job of the
   * same (or higher) priority, in ms; it goes back to the queue and resumes from its
   * block marks later. Default 300 000 (5 minutes).
   */
  timeSliceMs?: number
  /**
   * Default of a job's no-progress timeout, in ms: a job that spends this long in
   * connecting, transferring or transient_error without a byte of progress stops in
   * error (ERR_NO_PROGRESS). Default 1 209 600 000 (14 days, as BITS).
   */
  noProgressTimeoutMs?: number
  /**
   * Default of a job's maximum download time, in ms: its total time in connecting,
   * transferring and transient_error, then error (ERR_MAX_TIME). Default 0: no limit.
   */
  maxDownloadTimeMs?: number
  /** A job not modified for this long, in ms, in any state but a final one, is cancelled. Default 7 776 000 000 (90 days, as BITS). */
  inactiveJobTimeoutMs?: number
  /** How long an acknowledged or cancelled job stays listable, in ms, before it is removed. Default 604 800 000 (7 days). */
  retentionMs?: number
  /** Jobs not in a final state the agent holds at most; a new one beyond is refused (ERR_TOO_MANY_JOBS). Default 10 000. */
  maxJobs?: number
  /** Files in one job at most (ERR_TOO_MANY_FILES). Default 1000. */
  maxFilesPerJob?: number
  /** Characters of a file's URL at most (ERR_URL_TOO_LONG). Default 8192. */
  maxUrlLength?: number
  /** Characters of a job's name at most (ERR_NAME_TOO_LONG). Default 256. */
  maxNameLength?: number
  /**
   * Queueing delay, in ms, that background (high, normal, low) jobs keep their
   * traffic under on the WAN path to each origin: they read only as fast as the path
   * stays within it, and so yield to other traffic (a LEDBAT-style controller, see
   * docs/ARCHITECTURE.md, "Polite transfers"). 0 turns yielding off. Foreground jobs
   * never yield. Default 60 (as LEDBAT++).
   */
  targetDelayMs?: number
  /**
   * The bandwidth policy at start, in its written form (the config file's "policy"):
   * caps for background jobs, per priority, work hours, peer serving. Changed live
   * with `setPolicy` (POST /v1/policy); a change lasts until the agent stops.
   * Default: no caps. See docs/CONFIGURATION.md.
   */
  bandwidthPolicy?: unknown
  /**
   * The clock, in ms since the epoch, that every scheduling decision and deadline
   * reads (time slices, retries, timeouts, retention). Default `Date.now`; tests and
   * simulations pass their own. Timers still run in real time: after moving the
   * clock, any call that schedules (a job created, a command) makes the agent look
   * at the deadlines again.
   */
  now?: () => number
  /**
   * The peer node. Default: none (a library user opts in; `canopy agent` runs one
   * unless given --no-p2p).
   */
  p2p?: P2pOptions
}

export interface P2pOptions {
  /** Listen multiaddrs. Default `/ip4/0.0.0.0/tcp/7373`. */
  listen?: string[]
  /** mDNS discovery on the LAN. Default true. */
  mdns?: boolean
  /** Static peers (multiaddrs on LAN addresses). */
  peers?: string[]
  /** The organisation's swarm key (32 bytes); without it a loud warning. */
  swarmKey?: Uint8Array
  /** Bytes of completed files kept for peers. Default min(10 GiB, 10% of the state directory's disk); with hostedCache min(1 TiB, 50%). */
  cacheSize?: number
  /**
   * Run as the branch's hosted cache: an always-on agent that takes the content
   * members offer, pulls and verifies it from peers (never from an origin), and
   * serves it like any peer. Default false.
   */
  hostedCache?: boolean
  /** Hosted caches to use (multiaddrs on LAN addresses): dialled and kept connected like static peers, asked first, offered completed files. */
  hostedCacheAddrs?: string[]
}

const DAY_MS = 86_400_000

export const AGENT_DEFAULTS = {
  maxBackgroundJobs: 2,
  requestsInFlight: 4,
  requestSize: 4 * 1024 * 1024,
  // Two even on two CPUs shared with other work: block verification and whole-file
  // digests then take turns on the cores instead of queueing on one thread
  // (bench:download, 1 GiB: median 382 MiB/s over 20 rounds against 328 over 30; peak
  // RSS 216-225 MiB with the agent-wide buffer pool). See docs/ARCHITECTURE.md, section 11.
  hashThreads: availableParallelism() >= 2 ? 2 : 1,
  requestTimeoutMs: 30_000,
  maxBlockAttempts: 3,
  retryMinMs: 2_000,
  retryMaxMs: 600_000,
  notifyTimeoutMs: 30_000,
  notifyCommandTimeoutMs: 120_000,
  notifyRetryMinMs: 1_000,
  notifyRetryMaxMs: 300_000,
  notifyAttempts: 10,
  timeSliceMs: 5 * 60_000,
  noProgressTimeoutMs: 14 * DAY_MS,
  maxDownloadTimeMs: 0,
  inactiveJobTimeoutMs: 90 * DAY_MS,
  retentionMs: 7 * DAY_MS,
  maxJobs: 10_000,
  maxFilesPerJob: 1000,
  maxUrlLength: 8192,
  maxNameLength: 256,
  targetDelayMs: 60,
  now: Date.now
} as const

export type ResolvedAgentOptions = Required<Omit<AgentOptions, 'p2p' | 'apiListen' | 'apiToken' | 'bandwidthPolicy' | 'metricsListen'>> & Pick<AgentOptions, 'p2p' | 'apiListen' | 'apiToken' | 'bandwidthPolicy' | 'metricsListen'>

/** The limits a job request is checked against (a subset of the agent's options). */
export type RequestLimits = Pick<ResolvedAgentOptions, 'maxFilesPerJob' | 'maxUrlLength' | 'maxNameLength'>

/**
 * Blocks one file transfer holds in memory at most: each request's blocks are
 * reserved before it is sent and released once written and marked, and every
 * request in flight may have its previous blocks still being verified and written.
 */
export function blocksBuffered (options: Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestSize'>, blockSize: number): number {
  return 2 * options.requestsInFlight * Math.max(1, Math.floor(options.requestSize / blockSize))
}

/**
 * Most blocks of one file that a crash can cost: those asked for or received but
 * not yet written and marked, which are exactly the blocks held in memory.
 */
export function blocksAtRisk (options: Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestSize'>, blockSize: number): number {
  return blocksBuffered(options, blockSize)
}

/** How an option's text is read (flags, CANOPY_* variables and the config file give text; the file may also give numbers, booleans, lists). */
export type OptionKind = 'count' | 'size' | 'duration' | 'text' | 'switch' | 'list'

/** Where `canopy agent --help` lists an option. */
export type OptionSection = 'general' | 'scheduling' | 'notifications' | 'remote' | 'peers'

/**
 * One option of the agent, named once: its flag (`--name`, also the config file's
 * key, and `CANOPY_<NAME>` in the environment unless `env` says otherwise), the
 * AgentOptions or P2pOptions field it sets, how its text is read and checked, and
 * its help. The CLI derives its flags, config keys, parsing and help from this
 * table; `resolveAgentOptions` checks the numeric fields against it; the defaults are
 * AGENT_DEFAULTS (named by `field`).
 */
export interface AgentOptionSpec {
  /** The flag without "--"; absent for options only a library user sets. */
  name?: string
  /** The AgentOptions field it sets (numeric ones are checked by resolveAgentOptions). */
  field?: Exclude<keyof AgentOptions, 'p2p'>
  /** The P2pOptions field it sets. */
  p2pField?: keyof P2pOptions
  kind: OptionKind
  /** Least and greatest value of a number. */
  min?: number
  max?: number
  /** The value's name in help ("N", "SIZE", "DUR", "MS"). */
  arg?: string
  help: string
  /** Help's default when AGENT_DEFAULTS cannot show it (it depends on the machine, or lives elsewhere). */
  defaultText?: string
  section: OptionSection
  /** The environment variable, when not CANOPY_<NAME>; for a switch, the value of it that turns the switch on. */
  env?: string
  envOn?: string
  /** Not in the config file (the config file's own path). */
  flagOnly?: true
}

export const AGENT_OPTION_TABLE: readonly AgentOptionSpec[] = [
  { name: 'config', kind: 'text', arg: 'FILE', section: 'general', flagOnly: true, defaultText: '<state-dir>/config.json when it exists', help: 'a JSON file of options, keys as the flags without "--": {"max-background-jobs": 4, "retention": "30d", "no-mdns": true}' },
  { name: 'log-level', kind: 'text', arg: 'L', section: 'general', defaultText: 'info', help: 'debug, info, warn or error (changes on SIGHUP)' },
  { name: 'log-format', kind: 'text', arg: 'F', section: 'general', defaultText: 'logfmt', help: 'logfmt (for terminals) or json (one object a line, for log collectors) (changes on SIGHUP)' },
  { name: 'max-background-jobs', field: 'maxBackgroundJobs', kind: 'count', min: 1, arg: 'N', section: 'general', help: 'background jobs transferring at once (foreground jobs always run)' },
  { name: 'requests-in-flight', field: 'requestsInFlight', kind: 'count', min: 1, arg: 'N', section: 'general', help: 'range requests in flight per file' },
  { name: 'request-size', field: 'requestSize', kind: 'size', min: 1, arg: 'SIZE', section: 'general', help: 'bytes per range request, whole blocks' },
  { name: 'hash-threads', field: 'hashThreads', kind: 'count', min: 0, arg: 'N', section: 'general', defaultText: '2, 1 on a machine with one CPU', help: 'hashing worker threads; 0 = blocks inline' },
  { name: 'request-timeout', field: 'requestTimeoutMs', kind: 'duration', min: 1, arg: 'DUR', section: 'general', help: 'time without headers or body bytes before a request is abandoned' },
  { name: 'retry-min', field: 'retryMinMs', kind: 'duration', min: 1, arg: 'DUR', section: 'general', help: 'first retry delay after a transient error' },
  { name: 'retry-max', field: 'retryMaxMs', kind: 'duration', min: 1, arg: 'DUR', section: 'general', help: 'longest retry delay' },
  { name: 'target-delay', field: 'targetDelayMs', kind: 'duration', min: 0, arg: 'DUR', section: 'general', help: 'queueing delay background jobs keep their traffic under on the WAN path to each origin: they yield to other traffic (0 = background jobs do not yield)' },
  { field: 'maxBlockAttempts', kind: 'count', min: 1, section: 'general', help: 'fetches of one block that fail verification before the job stops in error' },
  { name: 'time-slice', field: 'timeSliceMs', kind: 'duration', min: 1, arg: 'DUR', section: 'scheduling', help: 'a background job runs this long before a waiting job of its priority takes its turn' },
  { name: 'no-progress-timeout', field: 'noProgressTimeoutMs', kind: 'duration', min: 1, arg: 'DUR', section: 'scheduling', help: 'a job trying this long without progress stops in error, ERR_NO_PROGRESS' },
  { name: 'max-download-time', field: 'maxDownloadTimeMs', kind: 'duration', min: 0, arg: 'DUR', section: 'scheduling', defaultText: '0: no limit', help: 'total time a job may spend trying before it stops in error, ERR_MAX_TIME' },
  { name: 'inactive-job-timeout', field: 'inactiveJobTimeoutMs', kind: 'duration', min: 1, arg: 'DUR', section: 'scheduling', help: 'a job not modified for this long is cancelled' },
  { name: 'retention', field: 'retentionMs', kind: 'duration', min: 1, arg: 'DUR', section: 'scheduling', help: 'acknowledged and cancelled jobs stay listed this long, then are removed' },
  { name: 'max-jobs', field: 'maxJobs', kind: 'count', min: 1, arg: 'N', section: 'scheduling', help: 'unfinished jobs the agent holds at most' },
  { name: 'max-files-per-job', field: 'maxFilesPerJob', kind: 'count', min: 1, arg: 'N', section: 'scheduling', help: 'files in one job at most' },
  { name: 'max-url-length', field: 'maxUrlLength', kind: 'count', min: 1, arg: 'N', section: 'scheduling', help: 'characters of a file\'s URL' },
  { name: 'max-name-length', field: 'maxNameLength', kind: 'count', min: 1, arg: 'N', section: 'scheduling', help: 'characters of a job\'s name' },
  { name: 'notify-timeout', field: 'notifyTimeoutMs', kind: 'duration', min: 1, arg: 'DUR', section: 'notifications', help: 'longest wait for a notify URL\'s answer' },
  { name: 'notify-command-timeout', field: 'notifyCommandTimeoutMs', kind: 'duration', min: 1, arg: 'DUR', section: 'notifications', help: 'longest run of a notification command before its process group is killed' },
  { name: 'notify-retry-min', field: 'notifyRetryMinMs', kind: 'duration', min: 1, arg: 'DUR', section: 'notifications', help: 'first delay before a failed notify-URL POST is tried again; doubles each time' },
  { name: 'notify-retry-max', field: 'notifyRetryMaxMs', kind: 'duration', min: 1, arg: 'DUR', section: 'notifications', help: 'longest such delay' },
  { name: 'notify-attempts', field: 'notifyAttempts', kind: 'count', min: 1, arg: 'N', section: 'notifications', help: 'attempts of one notify-URL POST before it is given up' },
  { name: 'api-listen', field: 'apiListen', kind: 'text', arg: 'HOST:PORT', section: 'remote', defaultText: 'none', help: 'also serve the control API on TCP, e.g. 0.0.0.0:7380' },
  { name: 'metrics-listen', field: 'metricsListen', kind: 'text', arg: 'HOST:PORT', section: 'remote', defaultText: 'off', help: 'serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT means 127.0.0.1); they are on the TCP control API too, behind its token' },
  { name: 'api-token-file', kind: 'text', arg: 'F', section: 'remote', help: 'the bearer token the TCP listener requires (required with --api-listen); clients: CANOPY_AGENT_URL=http://HOST:PORT and CANOPY_API_TOKEN_FILE=F' },
  { name: 'p2p-port', kind: 'count', min: 0, max: 65535, arg: 'N', section: 'peers', defaultText: '7373; 0 picks one', help: 'TCP port of the peer node' },
  { name: 'p2p-host', kind: 'text', arg: 'IP', section: 'peers', defaultText: '0.0.0.0', help: 'address the peer node listens on' },
  { name: 'no-mdns', p2pField: 'mdns', kind: 'switch', section: 'peers', env: 'CANOPY_MDNS', envOn: '0', help: 'do not discover peers by mDNS (multicast on the LAN)' },
  { name: 'peer', p2pField: 'peers', kind: 'list', arg: 'MULTIADDR', section: 'peers', env: 'CANOPY_PEERS', help: 'a static peer, e.g. /ip4/192.168.1.20/tcp/7373 (repeatable; CANOPY_PEERS and the config file take a list)' },
  { name: 'swarm-key', p2pField: 'swarmKey', kind: 'text', arg: 'FILE', section: 'peers', help: 'accept only peers holding this key (canopy keygen)' },
  { name: 'cache-size', p2pField: 'cacheSize', kind: 'size', min: 1, arg: 'SIZE', section: 'peers', defaultText: 'min(10 GiB, 10% of the state directory\'s disk)', help: 'bytes of completed files kept for peers' },
  { name: 'hosted-cache', p2pField: 'hostedCache', kind: 'switch', section: 'peers', envOn: '1', help: 'run as the branch\'s hosted cache: keep what members offer (pulled from peers and verified, never from an origin) and serve it to members that prove the content key; the cache quota becomes min(1 TiB, 50% of the disk) unless --cache-size is given (CANOPY_HOSTED_CACHE=1)' },
  { name: 'hosted-cache-addr', p2pField: 'hostedCacheAddrs', kind: 'list', arg: 'MULTIADDR', section: 'peers', env: 'CANOPY_HOSTED_CACHE_ADDRS', help: 'a hosted cache to use: kept connected, asked first, offered what this agent fetched from the origin (repeatable; CANOPY_HOSTED_CACHE_ADDRS and the config file take a list)' },
  { name: 'no-p2p', kind: 'switch', section: 'peers', env: 'CANOPY_P2P', envOn: '0', help: 'run no peer node' }
]

/** The environment variable of an option: `env`, else CANOPY_ and the flag upper-cased with "_". */
export function optionEnv (spec: AgentOptionSpec): string {
  return spec.env ?? `CANOPY_${(spec.name ?? '').toUpperCase().replaceAll('-', '_')}`
}

/** The options with their defaults filled in, checked against AGENT_OPTION_TABLE; throws ERR_INVALID_ARGUMENT with what to fix. */
export function resolveAgentOptions (options: AgentOptions): ResolvedAgentOptions {
  if (typeof options.stateDir !== 'string' || options.stateDir === '') {
    throw new CanopyError('ERR_INVALID_ARGUMENT', 'The agent needs a state directory (--state-dir or CANOPY_STATE_DIR)')
  }
  const resolved: ResolvedAgentOptions = { ...AGENT_DEFAULTS, logger: silentLogger, ...withoutUndefined(options), stateDir: options.stateDir, p2p: options.p2p }
  for (const { field, kind, min = 0 } of AGENT_OPTION_TABLE) {
    if (field === undefined || kind === 'text' || kind === 'switch' || kind === 'list') continue
    const value = resolved[field] as number
    if (min >= 1 && (!Number.isSafeInteger(value) || value < min)) throw new CanopyError('ERR_INVALID_ARGUMENT', `${field} must be a positive integer, not ${value}`)
    if (min === 0 && (!Number.isSafeInteger(value) || value < 0)) throw new CanopyError('ERR_INVALID_ARGUMENT', `${field} must be 0 or more`)
  }
  if (typeof resolved.now !== 'function') throw new CanopyError('ERR_INVALID_ARGUMENT', 'now must be a function returning ms since the epoch')
  return resolved
}

function withoutUndefined<T extends object> (value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}
