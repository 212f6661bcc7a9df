/**
 * Human formatting for the CLI: tables, the progress line, sizes, rates and
 * durations. Pure functions; nothing here prints.
 */
import { formatBytes, formatDuration as formatMs } from '@canopy/core'
import type { AgentEvent, AgentStatus, JobBytes, StoreRecovery, JobLimits, JobState, JobView } from '@canopy/core'

export { formatBytes }

/** 12.5 MiB/s; "-" when unknown. */
export function formatRate (bytesPerSecond: number | undefined): string {
  if (bytesPerSecond === undefined || !Number.isFinite(bytesPerSecond) || bytesPerSecond < 0) return '-'
  return `${formatBytes(Math.round(bytesPerSecond))}/s`
}

/** 42 s, 3m05s, 2h07m, 3d04h. */
export function formatDuration (seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-'
  const s = Math.round(seconds)
  if (s < 60) return `${s} s`
  const two = (n: number): string => String(n).padStart(2, '0')
  if (s < 3600) return `${Math.floor(s / 60)}m${two(s % 60)}s`
  if (s < 86400) return `${Math.floor(s / 3600)}h${two(Math.floor(s / 60) % 60)}m`
  return `${Math.floor(s / 86400)}d${two(Math.floor(s / 3600) % 24)}h`
}

/** "45%" (floored, so 100% means done); "" when the total is unknown. */
export function formatPercent (done: number, total: number): string {
  if (total < 0) return ''
  if (total === 0) return '100%'
  return `${Math.floor(Math.min(1, done / total) * 100)}%`
}

/** "12.0 MiB / 100 MiB 12%", or "12.0 MiB / ?" while the size is unknown. */
export function formatProgress (bytes: Pick<JobBytes, 'total' | 'transferred'>): string {
  if (bytes.total < 0) return `${formatBytes(bytes.transferred)} / ?`
  return `${formatBytes(bytes.transferred)} / ${formatBytes(bytes.total)} ${formatPercent(bytes.transferred, bytes.total)}`
}

/** "transient_error (retrying in 8 s: origin answered 503)". */
export function formatState (job: Pick<JobView, 'state' | 'reason'>): string {
  if (job.reason === undefined || job.reason === '') return job.state
  // Reasons that already name the state ("suspended: resume it to continue") stand alone.
  return job.reason.startsWith(job.state) ? job.reason : `${job.state} (${job.reason})`
}

/** Cuts a string to `width` characters, ending it with "…" when cut. */
export function truncate (text: string, width: number): string {
  if (width <= 0) return ''
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`
}

/** A left-aligned table with two spaces between columns; the last column is not padded. */
export function formatTable (headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()
  return [line(headers), ...rows.map(line)].join('\n') + '\n'
}

/** Cuts `text` to `width` at a word boundary (a word longer than the width is cut), ending it with "…" when cut. */
export function truncateWords (text: string, width: number): string {
  if (text.length <= width) return text
  const room = text.slice(0, Math.max(0, width - 1))
  const space = room.lastIndexOf(' ')
  return `${(space >= width / 2 ? room.slice(0, space) : room).replace(/[\s,;:(]+$/, '')}…`
}

/** Each id cut to its shortest prefix of at least 8 characters that no other id in the list shares. */
export function shortIds (ids: readonly string[]): string[] {
  return ids.map(id => {
    let n = 8
    while (n < id.length && ids.some(other => other !== id && other.startsWith(id.slice(0, n)))) n++
    return id.slice(0, n)
  })
}

export interface JobsTable {
  text: string
  /** Whether a name or reason was cut to fit (`canopy job <id>` or --wide show it whole). */
  cut: boolean
}

/**
 * The table of `canopy jobs`, fitted to `columns` (a terminal's width; undefined:
 * no limit, as for a pipe). Ids are short unique prefixes (every verb takes them).
 * The state and its reason come last and take the room left; names and reasons
 * are cut at a word, never mid-word unless one word is wider than the room.
 */
export function formatJobsTable (jobs: readonly JobView[], columns?: number): JobsTable {
  const headers = ['ID', 'NAME', 'PROGRESS', 'RATE', 'PRIORITY', 'STATE']
  const ids = shortIds(jobs.map(j => j.id))
  const rows = jobs.map((j, i) => [ids[i], j.type === 'download' ? j.name : `${j.name} (${j.type})`, formatProgress(j.bytes), j.rate === undefined ? '' : formatRate(j.rate), j.priority, formatState(j)])
  if (columns === undefined) return { text: formatTable(headers, rows), cut: false }
  const widthOf = (col: number): number => Math.max(headers[col].length, ...rows.map(r => r[col].length))
  const fixed = [0, 2, 3, 4].reduce((sum, col) => sum + widthOf(col), 0) + 2 * (headers.length - 1)
  // Name and state share the room left: a name gets up to 40 columns but gives way
  // down to 12 for the state, which gets the rest (at least 20: past the edge, the
  // terminal wraps rather than the reason being lost).
  const room = Math.max(0, columns - 1 - fixed)
  const nameWidth = Math.min(widthOf(1), 40, Math.max(12, room - widthOf(5)))
  const stateWidth = Math.max(20, room - nameWidth)
  let cut = false
  const fitted = rows.map(r => {
    const name = truncateWords(r[1], nameWidth)
    const state = truncateWords(r[5], stateWidth)
    if (name !== r[1] || state !== r[5]) cut = true
    return [r[0], name, r[2], r[3], r[4], state]
  })
  return { text: formatTable(headers, fitted), cut }
}

/** An ISO 8601 time to the second, in UTC (2026-03-01T12:04:05Z): one format everywhere, sortable, unambiguous. */
export function when (iso: string | undefined): string | undefined {
  if (iso === undefined) return undefined
  const t = Date.parse(iso)
  return Number.isNaN(t) ? iso : `${new Date(t).toISOString().slice(0, 19)}Z`
}

/** "42.0%" of the bytes that came from peers or a hosted cache rather than the origin; "-" before any byte. */
export function formatPeerShare (bytes: Pick<JobBytes, 'fromOrigin' | 'fromPeers' | 'fromCache'>): string {
  const total = bytes.fromOrigin + bytes.fromPeers + bytes.fromCache
  return total === 0 ? '-' : `${((bytes.fromPeers + bytes.fromCache) / total * 100).toFixed(1)}%`
}

function fields (pairs: ReadonlyArray<readonly [string, string | undefined]>): string {
  const present = pairs.filter((p): p is readonly [string, string] => p[1] !== undefined)
  const width = Math.max(...present.map(([k]) => k.length))
  return present.map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${v}`).join('\n') + '\n'
}

/** The details of `canopy job <id>`. */
export function formatJobDetails (job: JobView): string {
  const b = job.bytes
  let out = fields([
    ['id', job.id],
    ['name', job.name],
    ['type', job.type],
    ['priority', job.priority],
    ...(job.rateLimit !== undefined ? [['rate limit', job.rateLimit === 0 ? '0 (blocked)' : `${formatBytes(job.rateLimit)}/s`] as [string, string]] : []),
    ['state', formatState(job)],
    ['progress', `${formatProgress(b)}, files ${job.filesTransferred}/${job.filesTotal}`],
    ['sources', job.type !== 'download' && job.type !== 'preload' ? undefined : `origin ${formatBytes(b.fromOrigin)}, peers ${formatBytes(b.fromPeers)}, cache ${formatBytes(b.fromCache)}`],
    // Largest first; peer ids are long, so the first 12 and last 6 characters.
    ['by peer', b.byPeer === undefined
      ? undefined
      : Object.entries(b.byPeer).sort((x, y) => y[1] - x[1]).map(([peer, bytes]) => `${peer.length > 20 ? `${peer.slice(0, 12)}…${peer.slice(-6)}` : peer} ${formatBytes(bytes)}`).join(', ')],
    ['auto-complete', job.autoComplete ? 'yes' : 'no'],
    ['error', job.error === undefined
      ? undefined
      : `${job.error.code}: ${job.error.message}${job.error.transient ? ' (transient: retrying)' : ''}${job.error.url === undefined ? '' : ` [${job.error.url}]`} at ${when(job.error.at)}`],
    ['retry at', when(job.retryAt)],
    ['limits', formatLimits(job.limits)],
    ['upload url', job.upload?.uploadUrl],
    ['server sha256', job.upload?.serverSha256],
    ['reply', job.upload?.replyPath === undefined ? undefined : `${job.upload.replyPath}${job.upload.replyBytes === undefined ? '' : ` (${formatBytes(job.upload.replyBytes)})`}`],
    ['on complete', job.notify?.onComplete?.join(' ')],
    ['on error', job.notify?.onError?.join(' ')],
    ['notify url', job.notify?.url],
    ['created', when(job.createdAt)],
    ['modified', when(job.modifiedAt)],
    ['transferred', when(job.transferredAt)],
    ['completed', when(job.completedAt)]
  ])
  out += `files (${job.files.length}):\n`
  for (const f of job.files) {
    // An upload goes the other way: the local file to the server; a preload into the peer cache.
    out += job.type === 'download' ? `  ${f.url}\n    -> ${f.path}\n` : job.type === 'preload' ? `  ${f.url}\n    -> ${preloadOutcome(f)}\n` : `  ${f.path}\n    -> ${f.url}\n`
    out += `    ${formatProgress({ total: f.bytesTotal, transferred: f.bytesTransferred })}`
    if (f.manifestId !== undefined) out += `, manifest ${f.manifestId}`
    else if (job.type === 'download' || job.type === 'preload') out += ', no manifest (not shared with peers)'
    if (f.sha256 !== undefined) out += `, sha256 ${f.sha256}`
    out += '\n'
  }
  return out
}

/** Where a preload job's file stands: "the peer cache", "the peer cache (held already)", "not cached: <why>". */
function preloadOutcome (f: JobView['files'][number]): string {
  if (f.cached === false) return `not cached: ${f.notCachedReason ?? 'no reason given'}`
  return f.skipped === true ? 'the peer cache (held already)' : 'the peer cache'
}

/** A job's retry and time limits, in words ("retry 2 s to 10 min, no progress 14 d, max time none"); undefined from an agent that sends none. */
function formatLimits (limits: JobLimits | undefined): string | undefined {
  if (limits === undefined) return undefined
  const max = limits.maxDownloadTimeMs === 0 ? 'none' : formatMs(limits.maxDownloadTimeMs)
  return `retry ${formatMs(limits.retryMinMs)} to ${formatMs(limits.retryMaxMs)}, no progress ${formatMs(limits.noProgressTimeoutMs)}, max time ${max}`
}

/** The output of `canopy status`. */
export function formatStatus (status: AgentStatus, now = Date.now()): string {
  const counts = Object.entries(status.jobs ?? {})
    .filter(([, n]) => n > 0)
    .map(([state, n]) => `${n} ${state}`)
  const started = Date.parse(status.startedAt)
  return fields([
    ['agent', `running, pid ${status.pid}, version ${status.version}`],
    ['state dir', status.stateDir],
    ['up', Number.isNaN(started) ? status.startedAt : `${formatDuration((now - started) / 1000)} (since ${when(status.startedAt)})`],
    ['jobs', counts.length === 0 ? 'none' : counts.join(', ')],
    ...(status.bytes === undefined
      ? []
      : [
          ['received', `origin ${formatBytes(status.bytes.fromOrigin)}, peers ${formatBytes(status.bytes.fromPeers)}` +
            `${status.bytes.fromCache > 0 ? `, hosted cache ${formatBytes(status.bytes.fromCache)}` : ''} since start` +
            (status.bytes.fromOrigin + status.bytes.fromPeers + status.bytes.fromCache === 0 ? '' : ` (${formatPeerShare(status.bytes)} from peers)`)] as [string, string],
          ['served to peers', formatBytes(status.bytes.servedToPeers)] as [string, string]
        ]),
    ...(status.metricsListen === undefined ? [] : [['metrics', `http://${status.metricsListen}/metrics`] as [string, string]]),
    ['notifications', status.notifications === undefined || status.notifications.pending === 0 ? 'none pending' : `${status.notifications.pending} pending`],
    ...(status.storeRecovery === undefined ? [] : [['state store', storeRecoveryLine(status.storeRecovery)] as [string, string]]),
    ...(status.peer === undefined
      ? [['peers', 'no peer node (--no-p2p)'] as [string, string]]
      : [
          ['peer id', status.peer.peerId] as [string, string],
          ['listening', status.peer.addresses.join(', ') || 'nowhere'] as [string, string],
          ['peers', `${status.peer.connected} connected; ${status.peer.mdns ? 'mDNS on' : 'mDNS off'}; ${status.peer.swarmKey ? 'swarm key required' : 'NO swarm key: any keyless agent may connect'}`] as [string, string]
        ]),
    ...bandwidthFields(status)
  ])
}

/** What the agent recovered at start from a damaged state store. */
function storeRecoveryLine (r: StoreRecovery): string {
  const dropped = r.droppedJobs.length === 0 ? 'no job lost' : `${r.droppedJobs.length} job${r.droppedJobs.length === 1 ? '' : 's'} lost (${r.droppedJobs.join(', ')}), ${r.removedPartials.length} partial file${r.removedPartials.length === 1 ? '' : 's'} removed`
  return `damaged at start: ${dropped}${r.damagedCopy !== undefined ? `; repaired, the damaged copy is in ${r.damagedCopy}` : ''}`
}

/** What bandwidth control is in force: yielding (target delay), policy caps, and each WAN path's controller. */
function bandwidthFields (status: AgentStatus): Array<[string, string]> {
  const b = status.bandwidth
  if (b === undefined) return []
  const rows: Array<[string, string]> = [['background', b.targetDelayMs > 0 ? `yields to other traffic (target queue delay ${b.targetDelayMs} ms)` : 'does not yield (--target-delay 0)']]
  const p = b.policy.policy
  const cap = (v: unknown): string => typeof v === 'number' ? (v === 0 ? '0 (blocked)' : `${formatBytes(v)}/s`) : String(v)
  const caps = ['background', 'high', 'normal', 'low'].filter(k => p[k] !== undefined).map(k => `${k} ${cap(p[k])}`)
  const w = p.workHours as Record<string, unknown> | undefined
  const work = w === undefined ? '' : `; work hours ${String(w.days)} ${String(w.from)}-${String(w.to)}: ${['background', 'high', 'normal', 'low'].filter(k => w[k] !== undefined).map(k => `${k} ${cap(w[k])}`).join(', ')}${b.policy.workHoursNow ? ' (in force now)' : ''}`
  rows.push(['policy', `${caps.length === 0 ? 'no caps' : caps.join(', ')}${work}${p.peerServing !== undefined ? `; serving peers ${cap(p.peerServing)}` : ''}`])
  for (const path of b.paths) {
    rows.push([`wan ${path.host}`, `${path.transfers} background transfer${path.transfers === 1 ? '' : 's'}, ${formatBytes(path.rate)}/s allowed, ${path.state}${path.queueDelayMs !== undefined ? `, queue delay ${Math.round(path.queueDelayMs)} ms` : ''}`])
  }
  return rows
}

export interface ProgressLineOptions {
  /** Current rate in bytes per second, when known. */
  rate?: number
  /** Terminal width; the line is cut to fit. */
  columns?: number
  /** Now (ms since the epoch), to count down to a retry; default Date.now(). */
  now?: number
}

/**
 * Why a job in transient_error waits, counted down to its next retry from `now`
 * ("origin unreachable (ECONNREFUSED), next retry in 6 s"): the agent's reason
 * holds the wait as it was when the job changed state.
 */
export function retryReason (job: Pick<JobView, 'state' | 'reason' | 'error' | 'retryAt'>, now: number): string | undefined {
  const at = Date.parse(job.retryAt ?? '')
  if (job.state !== 'transient_error' || job.error === undefined || Number.isNaN(at)) return job.reason
  const wait = at - now
  return `${job.error.message}, ${wait > 0 ? `next retry in ${formatDuration(Math.ceil(wait / 1000))}` : 'retrying now'}`
}

const STATE_WORDS: Partial<Record<JobState, string>> = {
  transient_error: 'retrying'
}

/**
 * One line of progress: `[=====>     ]  45%  45.0 MiB / 100 MiB  12.3 MiB/s  ETA 4 s  transferring`.
 * Without a known total: bytes and rate only.
 */
export function formatProgressLine (job: Pick<JobView, 'state' | 'reason' | 'bytes' | 'error' | 'retryAt'>, opts: ProgressLineOptions = {}): string {
  const columns = opts.columns !== undefined && opts.columns > 0 ? Math.max(20, opts.columns) : 80
  const { total, transferred } = job.bytes
  const parts: string[] = []
  if (total >= 0) {
    const fraction = total === 0 ? 1 : Math.min(1, transferred / total)
    const width = columns >= 100 ? 30 : columns >= 70 ? 20 : 10
    const filled = Math.floor(fraction * width)
    parts.push(`[${'='.repeat(filled)}${filled < width ? '>' : ''}${' '.repeat(Math.max(0, width - filled - 1))}]`)
    parts.push(formatPercent(transferred, total).padStart(4))
    parts.push(`${formatBytes(transferred)} / ${formatBytes(total)}`)
  } else {
    parts.push(`${formatBytes(transferred)} / ?`)
  }
  if (job.state === 'transferring') {
    parts.push(formatRate(opts.rate))
    if (total >= 0 && opts.rate !== undefined && opts.rate > 0) {
      parts.push(`ETA ${formatDuration((total - transferred) / opts.rate)}`)
    }
  }
  const word = STATE_WORDS[job.state] ?? job.state
  const reason = retryReason(job, opts.now ?? Date.now())
  parts.push(reason === undefined || reason === '' ? word : `${word}: ${reason}`)
  return truncate(parts.join('  '), columns - 1)
}

/** `<path>: <size> in <secs> s (<rate>/s), from origin <x>, peers <y>[, cache <z>]`. */
export function formatSummary (path: string, bytes: JobBytes, seconds: number): string {
  const size = Math.max(0, bytes.total >= 0 ? bytes.total : bytes.transferred)
  const secs = Math.max(seconds, 0.001)
  let line = `${path}: ${formatBytes(size)} in ${seconds.toFixed(1)} s (${formatRate(size / secs)}), ` +
    `from origin ${formatBytes(bytes.fromOrigin)}, peers ${formatBytes(bytes.fromPeers)}`
  if (bytes.fromCache > 0) line += `, cache ${formatBytes(bytes.fromCache)}`
  return line
}

/**
 * The summary of a finished preload job: what it put in the cache, with the bytes
 * by source, then a line per file the cache already held or could not keep:
 * `preloaded 2 files (1.2 GiB) into the cache in 61.0 s (20 MiB/s), from origin 1.2 GiB, peers 0 B`.
 */
export function formatPreloadSummary (job: JobView, seconds: number): string {
  const size = Math.max(0, job.bytes.total)
  const secs = Math.max(seconds, 0.001)
  const cached = job.files.filter(f => f.cached === true).length
  const lines = [`preloaded ${cached} of ${job.files.length} file${job.files.length === 1 ? '' : 's'} (${formatBytes(size)}) into the cache in ${seconds.toFixed(1)} s ` +
    `(${formatRate(job.bytes.transferred / secs)}), from origin ${formatBytes(job.bytes.fromOrigin)}, peers ${formatBytes(job.bytes.fromPeers)}`]
  for (const f of job.files) {
    if (f.skipped === true) lines.push(`  ${f.url}: already in the cache`)
    else if (f.cached === false) lines.push(`  ${f.url}: not cached: ${f.notCachedReason ?? 'no reason given'}`)
  }
  return lines.join('\n')
}

/** The summary of a finished upload: `big.log -> http://origin/uploads/…: 256 MiB in 3.1 s (82 MiB/s), sha256 checked by the server[, reply in PATH]`. */
export function formatUploadSummary (job: JobView, seconds: number): string {
  const size = Math.max(0, job.bytes.total)
  const secs = Math.max(seconds, 0.001)
  const file = job.files[0]
  let line = `${file?.path ?? job.name} -> ${job.upload?.uploadUrl ?? file?.url ?? ''}: ${formatBytes(size)} in ${seconds.toFixed(1)} s (${formatRate(size / secs)})`
  if (job.upload?.serverSha256 !== undefined) line += `, sha256 ${job.upload.serverSha256.slice(0, 16)}… matches`
  if (job.upload?.replyPath !== undefined) line += `, reply (${formatBytes(job.upload.replyBytes ?? 0)}) in ${job.upload.replyPath}`
  return line
}

/**
 * One line of `canopy watch`: the UTC time, the job's short id and name, then what
 * happened: `12:04:05Z  3f2a9c1e  base.iso  now transferring, 12.0 MiB / 100 MiB 12%`.
 */
export function formatEvent (event: AgentEvent, at = new Date()): string {
  // ISO 8601 time of day in UTC, like every other time the CLI prints.
  const time = `${at.toISOString().slice(11, 19)}Z`
  if (event.type === 'removed') return `${time}  ${event.jobId.slice(0, 8)}  removed`
  const { job } = event
  const head = `${time}  ${job.id.slice(0, 8)}  ${truncate(job.name, 40)}  `
  switch (event.type) {
    case 'snapshot': return `${head}now ${formatState(job)}, ${formatProgress(job.bytes)}`
    case 'state': {
      const error = job.state === 'error' || job.state === 'transient_error' ? job.error?.code : undefined
      return `${head}-> ${formatState(job)}${error === undefined ? '' : ` [${error}]`}`
    }
    case 'progress': return `${head}${formatProgress(job.bytes)}`
    case 'updated': return `${head}priority ${job.priority}`
  }
}
