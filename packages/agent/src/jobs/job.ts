import { statSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import type { CreateJobFile, CreateJobRequest, HostedCacheUse, JobError, JobHttpOptions, JobLimits, JobNotify, JobPriority, JobState, JobType, JobView, PublishedManifest } from '@canopy/core'
import { CanopyError, blockCount, blockSpan } from '@canopy/core'
import { httpView } from './http-options.ts'
import type { LocalFileIdentity } from '../transfer/tus-upload.ts'

/** One file of a job, as persisted. */
export interface FileRecord {
  url: string
  /** Absolute destination. */
  path: string
  /** The partial file next to the destination (same filesystem, so completing is an atomic rename). */
  partPath: string
  /** Whole-file SHA-256 the caller expects (hex), if any. */
  expectedSha256?: string
  /** Size in bytes, -1 until known. */
  size: number
  /** Id of the manifest (kept in the manifest store) once fetched; absent for plain downloads. */
  manifestId?: string
  /** 'blocks' when a manifest drives the transfer, 'plain' without one; unset until discovered. */
  mode?: 'blocks' | 'plain'
  /** Plain mode: validators of the remote file, for resuming with If-Range. */
  etag?: string
  lastModified?: string
  /** Plain mode: bytes at the start of the partial file known to be written. */
  plainBytes?: number
  /** True once the file was renamed to its destination. */
  visible?: boolean
  /** Bytes by source, kept when the job completes (its block marks are deleted then). */
  bytesBySource?: { origin: number, peers: number, cache: number }
  /**
   * Verified bytes received from each peer (peer id -> bytes), counted as blocks
   * arrive and saved with the record. After a crash they may lag the block marks
   * (which fromPeers is counted from) by the last second of progress.
   */
  bytesByPeer?: Record<string, number>
  /** How the branch's hosted caches took part in its transfer (set when the agent knows one). */
  hostedCache?: HostedCacheUse
  /** Verified whole-file SHA-256 (hex), set when the file is complete. */
  sha256?: string
  done: boolean
  /** The destination was already current (ifNewer): not transferred, left as it was. Preload: the cache already held it. */
  skipped?: boolean
  /** Preload jobs, once the file is finished: whether it went into the peer cache, and if not why (see jobs/preload.ts). */
  cached?: boolean
  notCachedReason?: string
}

/** A job as persisted in the job store. Progress by block lives beside it (see JobStore). */
export interface JobRecord {
  id: string
  name: string
  type: JobType
  priority: JobPriority
  /** The job's own cap, bytes/s (0: blocked). */
  rateLimit?: number
  state: JobState
  files: FileRecord[]
  autoComplete: boolean
  error?: JobError
  /** Consecutive transient failures, for backoff. */
  retryCount: number
  retryAt?: string
  createdAt: string
  modifiedAt: string
  transferredAt?: string
  completedAt?: string
  /** Commands and URL to notify on state changes (see notify/notifier.ts). */
  notify?: JobNotify
  /** Custom headers and credentials for the origin (write-only: see http-options.ts). */
  http?: JobHttpOptions
  /** Skip files whose destination is already current. */
  ifNewer?: boolean
  /**
   * State changes recorded so far (absent in records older than notifications: 0).
   * Numbers the transitions, so that a notification is known by (job id, number)
   * across restarts.
   */
  transitions?: number
  /** The limits the job was created with (the agent's defaults fill in the others when they are read). */
  limits?: Partial<JobLimits>
  /**
   * Its place in the queue among jobs of its priority (ms since the epoch; absent in
   * older records: its creation time). Set at creation, on resume, at the end of a
   * time slice (behind its equals) and at a retry time; kept by a preemption.
   */
  queuedAt?: number
  /** Why a queued job waits, when it was running before: stopped for a higher priority, or its time slice ended. */
  waitReason?: 'preempted' | 'slice'
  /** When the job last entered connecting, transferring or transient_error (while it stays in them). */
  activeSince?: number
  /** Time spent in those states before activeSince, for the maximum download time. */
  activeMs?: number
  /** Last progress (a block verified, plain bytes written), or when the job became active: the no-progress clock. */
  progressAt?: number
  /** Why the agent cancelled the job by itself (inactivity), shown as its reason. */
  cancelReason?: string
  /** Upload and upload-reply jobs: the upload's state (see jobs/upload.ts). */
  upload?: UploadRecord
}

/** An upload job's own state, as persisted; its one file is { url: tus endpoint, path: local file }. */
export interface UploadRecord {
  /** The local file when the job was created: a different size, mtime or inode later is ERR_LOCAL_FILE_CHANGED. */
  file: LocalFileIdentity
  /** The upload's URL on the server, persisted before the first byte is sent (resumption). */
  uploadUrl?: string
  serverSha256?: string
  /** upload-reply: where the reply goes, its URL on the server, and its size once downloaded. */
  replyPath?: string
  replyUrl?: string
  replyBytes?: number
}

/** States in which a job is trying to transfer: the no-progress and maximum-time clocks run only in these. */
export const ACTIVE_STATES: readonly JobState[] = ['connecting', 'transferring', 'transient_error']

/** Where a verified block came from (stored as the value of its progress mark). */
export type BlockProvenance = 'origin' | 'peer' | 'cache'

/** In-memory progress of one file, rebuilt from the store on load. */
export class FileProgress {
  /** One byte per block: 0 missing, else the source code (1 origin, 2 peer, 3 cache). */
  readonly blocks: Uint8Array
  bytesDone = 0
  fromOrigin = 0
  fromPeers = 0
  fromCache = 0
  /** Length of the contiguous completed prefix, in blocks. */
  prefixBlocks = 0
  readonly size: number
  readonly blockSize: number

  constructor (size: number, blockSize: number) {
    this.size = size
    this.blockSize = blockSize
    this.blocks = new Uint8Array(size >= 0 && blockSize > 0 ? blockCount(size, blockSize) : 0)
  }

  has (index: number): boolean {
    return this.blocks[index] !== 0
  }

  mark (index: number, source: BlockProvenance): void {
    if (this.blocks[index] !== 0) return
    this.blocks[index] = source === 'origin' ? 1 : source === 'peer' ? 2 : 3
    const { length } = blockSpan(index, this.size, this.blockSize)
    this.bytesDone += length
    if (source === 'origin') this.fromOrigin += length
    else if (source === 'peer') this.fromPeers += length
    else this.fromCache += length
    while (this.prefixBlocks < this.blocks.length && this.blocks[this.prefixBlocks] !== 0) this.prefixBlocks++
  }

  unmark (index: number): void {
    const code = this.blocks[index]
    if (code === 0) return
    this.blocks[index] = 0
    const { length } = blockSpan(index, this.size, this.blockSize)
    this.bytesDone -= length
    if (code === 1) this.fromOrigin -= length
    else if (code === 2) this.fromPeers -= length
    else this.fromCache -= length
    if (index < this.prefixBlocks) this.prefixBlocks = index
  }

  /** Bytes of the contiguous completed prefix. */
  get prefixBytes (): number {
    return Math.min(this.prefixBlocks * this.blockSize, this.size)
  }

  get complete (): boolean {
    return this.prefixBlocks === this.blocks.length
  }
}

/** Live, derived numbers of a job that the view needs besides the record. */
export interface JobLive {
  progress: Array<{ bytesDone: number, fromOrigin: number, fromPeers: number, fromCache: number } | undefined>
  reason?: string
  /** The limits in force (the job's own, else the agent's defaults). */
  limits: JobLimits
  /** Recent transfer rate, bytes per second, while transferring. */
  rate?: number
}

export function toView (job: JobRecord, live: JobLive): JobView {
  let total = 0
  let transferred = 0
  let fromOrigin = 0
  let fromPeers = 0
  let fromCache = 0
  let byPeer: Record<string, number> | undefined
  let unknown = false
  const files = job.files.map((f, i) => {
    const p = live.progress[i]
    const done = f.done ? Math.max(f.size, 0) : p?.bytesDone ?? 0
    if (f.size < 0) unknown = true
    total += Math.max(f.size, 0)
    transferred += done
    fromOrigin += p?.fromOrigin ?? 0
    fromPeers += p?.fromPeers ?? 0
    fromCache += p?.fromCache ?? 0
    for (const [peer, bytes] of Object.entries(f.bytesByPeer ?? {})) {
      byPeer ??= {}
      byPeer[peer] = (byPeer[peer] ?? 0) + bytes
    }
    return {
      url: f.url,
      path: f.path,
      bytesTotal: f.size,
      bytesTransferred: done,
      ...(f.manifestId !== undefined ? { manifestId: f.manifestId } : {}),
      ...(f.sha256 !== undefined ? { sha256: f.sha256 } : {}),
      ...(f.bytesByPeer !== undefined ? { bytesByPeer: { ...f.bytesByPeer } } : {}),
      ...(f.skipped === true ? { skipped: true } : {}),
      ...(f.cached !== undefined ? { cached: f.cached } : {}),
      ...(f.notCachedReason !== undefined ? { notCachedReason: f.notCachedReason } : {}),
      ...(f.hostedCache !== undefined ? { hostedCache: { ...f.hostedCache } } : {})
    }
  })
  return {
    id: job.id,
    name: job.name,
    type: job.type,
    priority: job.priority,
    state: job.state,
    ...(live.reason !== undefined ? { reason: live.reason } : {}),
    files,
    bytes: { total: unknown ? -1 : total, transferred, fromOrigin, fromPeers, fromCache, ...(byPeer !== undefined ? { byPeer } : {}) },
    filesTransferred: job.files.filter(f => f.done).length,
    filesTotal: job.files.length,
    ...(job.error !== undefined ? { error: job.error } : {}),
    autoComplete: job.autoComplete,
    ...(job.retryAt !== undefined ? { retryAt: job.retryAt } : {}),
    createdAt: job.createdAt,
    modifiedAt: job.modifiedAt,
    ...(job.transferredAt !== undefined ? { transferredAt: job.transferredAt } : {}),
    ...(job.completedAt !== undefined ? { completedAt: job.completedAt } : {}),
    ...(job.notify !== undefined ? { notify: job.notify } : {}),
    limits: live.limits,
    ...(live.rate !== undefined ? { rate: live.rate } : {}),
    ...(job.rateLimit !== undefined ? { rateLimit: job.rateLimit } : {}),
    ...(job.http !== undefined ? { http: httpView(job.http) } : {}),
    ...(job.ifNewer === true ? { ifNewer: true } : {}),
    ...(job.upload !== undefined ? { upload: uploadView(job.upload) } : {})
  }
}

function uploadView (u: UploadRecord): NonNullable<JobView['upload']> {
  return {
    ...(u.uploadUrl !== undefined ? { uploadUrl: u.uploadUrl } : {}),
    ...(u.serverSha256 !== undefined ? { serverSha256: u.serverSha256 } : {}),
    ...(u.replyPath !== undefined ? { replyPath: u.replyPath } : {}),
    ...(u.replyBytes !== undefined ? { replyBytes: u.replyBytes } : {})
  }
}

export type { PublishedManifest }

/**
 * The record of a new job, from a checked request, created at `at` (ms since the
 * epoch). A preload job's files are staged in `<preloadDir>/<job id>/` (see
 * jobs/preload.ts).
 */
export function newJobRecord (id: string, req: CreateJobRequest, at: number, preloadDir = ''): JobRecord {
  const now = new Date(at).toISOString()
  const type = req.type ?? 'download'
  const upload = type === 'download' || type === 'preload' ? undefined : uploadRecord(req)
  // Checked requests: every file but a preload job's has its path.
  const files = req.files.map((f, i) => ({ ...f, path: type === 'preload' ? join(preloadDir, id, String(i)) : f.path! }))
  return {
    id,
    name: req.name ?? (type === 'preload' ? preloadName(req.files.map(f => f.url)) : basename(files[0].path)),
    type,
    ...(upload !== undefined ? { upload } : {}),
    // A preload is speculative (nobody waits for it yet): at low it yields the slots to
    // every job somebody asked for and, as a background job, uses only the WAN bandwidth
    // nobody else is using, so an overnight warm-up never competes with the branch's work.
    priority: req.priority ?? (type === 'preload' ? 'low' : 'normal'),
    state: req.start === false ? 'suspended' : 'queued',
    // An upload's bytes are counted as a plain download's are (plainBytes: the server's offset), so that recovery restores them.
    files: files.map(f => upload === undefined ? fileRecord(id, f) : { ...fileRecord(id, f), mode: 'plain' as const }),
    autoComplete: req.autoComplete ?? false,
    retryCount: 0,
    createdAt: now,
    modifiedAt: now,
    queuedAt: at,
    ...(req.notify !== undefined ? { notify: req.notify } : {}),
    ...(req.limits !== undefined ? { limits: req.limits } : {}),
    ...(req.rateLimit !== undefined ? { rateLimit: req.rateLimit } : {}),
    ...(req.http !== undefined ? { http: req.http } : {}),
    ...(req.ifNewer === true ? { ifNewer: true } : {}),
    // Creation is the job's first state change, and notified like the others.
    transitions: 1
  }
}

/** An upload's record at creation: the local file's identity now (the API checked that it is a regular file). */
function uploadRecord (req: CreateJobRequest): UploadRecord {
  const st = statSync(req.files[0].path!, { throwIfNoEntry: false })
  if (st === undefined) throw new CanopyError('ERR_INVALID_REQUEST', `${req.files[0].path} is gone: give the path of the file to upload`)
  return {
    file: { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, dev: st.dev },
    ...(req.replyPath !== undefined ? { replyPath: req.replyPath } : {})
  }
}

/** The record of a new file of job `id`; its partial file lies next to the destination, so that completing is a rename within one filesystem. */
export function fileRecord (id: string, f: CreateJobFile & { path: string }): FileRecord {
  return {
    url: f.url,
    path: f.path,
    partPath: join(dirname(f.path), `.${basename(f.path)}.${id.slice(0, 8)}.canopy-part`),
    ...(f.sha256 !== undefined ? { expectedSha256: f.sha256 } : {}),
    size: -1,
    done: false
  }
}

/** The file name a URL names (its last path segment, decoded), or its host when it names none. */
export function urlFileName (url: string): string {
  const parsed = new URL(url)
  const segment = parsed.pathname.slice(parsed.pathname.lastIndexOf('/') + 1)
  let name: string
  try {
    name = decodeURIComponent(segment)
  } catch {
    name = segment
  }
  // A name for people: no path separators nor control characters, and not too long.
  name = [...name].map(c => c === '/' || c === '\\' || c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f ? '_' : c).join('').slice(0, 255)
  return name === '' || name === '.' || name === '..' ? parsed.host : name
}

/** A preload job's default name: "preload app.iso", "preload app.iso and 2 more". */
function preloadName (urls: readonly string[]): string {
  return `preload ${urlFileName(urls[0])}${urls.length > 1 ? ` and ${urls.length - 1} more` : ''}`
}
