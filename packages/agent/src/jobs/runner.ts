/**
 * The job runner (the executor): transfers one job's files in order, each on the
 * job's network, by blocks (with a manifest) or plain; records progress and
 * failures with their retry; hands transferred jobs to completion. Also recovery at
 * start: jobs that were moving move again, from their block marks.
 */
import { rm, stat, statfs } from 'node:fs/promises'
import { dirname } from 'node:path'
import { request } from 'undici'
import type { Dispatcher } from 'undici'
import { FINAL_STATES, formatBytes, withFields } from '@canopy/core'
import type { ControlEvents, Logger, PublishedManifest } from '@canopy/core'
import { backoff } from '../backoff.ts'
import { JobErrorCode, REMOTE_CHANGED, SchedulerYield, TransferError, classifyError } from '../errors.ts'
import type { ResolvedAgentOptions } from '../options.ts'
import type { PeerSharing } from '../peers/sharing.ts'
import { limitsOf } from '../scheduler/policy.ts'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import { transferBlocks } from '../transfer/block-transfer.ts'
import type { BufferPool } from '../transfer/buffer-pool.ts'
import { createDispatcher, discard, discoverManifest, usesProxy } from '../transfer/http.ts'
import type { PeerSessions } from '../transfer/peer-sessions.ts'
import { transferPlain } from '../transfer/plain-transfer.ts'
import type { PlainProgress } from '../transfer/plain-transfer.ts'
import type { RangeClient } from '../transfer/range-client.ts'
import { fileDigest } from './completion.ts'
import type { Completion } from './completion.ts'
import { readTls, requestHeaders } from './http-options.ts'
import { ACTIVE_STATES, FileProgress } from './job.ts'
import type { FileRecord } from './job.ts'
import type { JobEntry, JobTable } from './job-table.ts'
import type { JobViews } from './views.ts'
import { poolOptions } from './transfer-services.ts'
import { sendUpload } from './upload.ts'
import { admitPreloaded, preparePreload } from './preload.ts'
import { headProbe } from '../bandwidth/probe.ts'
import type { PathLease, WanPaths } from '../bandwidth/wan-paths.ts'
import type { AgentMetrics } from '../metrics/index.ts'

/** How often progress counters are written while a job transfers (block marks are written per block). */
const PROGRESS_PERSIST_MS = 1000

/** How a transfer reaches its origin: a pool (undici) and, for plain http without a proxy, the direct range client. */
interface Network {
  dispatcher: Dispatcher
  rangeClient?: RangeClient
}

export interface JobRunnerComponents {
  table: JobTable
  views: JobViews
  completion: Completion
  store: JobStore
  logger: Logger
  now: () => number
  blockHasher: BlockHasher
  /** Hashing for background jobs, on worker threads at a lower CPU priority (made when first needed). */
  backgroundHasher: () => BlockHasher
  /** Background jobs' delay controllers and caps, one path per origin host. */
  wanPaths: WanPaths
  /** The agent's metrics (made once the jobs are loaded). */
  metrics: () => AgentMetrics
  /** Block buffers, reused across transfers (see BufferPool). */
  blockBuffers: BufferPool
  /** The agent's shared pool and direct range client. */
  dispatcher: Dispatcher
  rangeClient: RangeClient
  /** The peer sharing, when the agent runs a peer node. */
  sharing: () => PeerSharing | undefined
  emit: <K extends keyof ControlEvents>(event: K, ...args: ControlEvents[K]) => void
}

export class JobRunner {
  private readonly c: JobRunnerComponents
  private readonly options: ResolvedAgentOptions

  constructor (components: JobRunnerComponents, options: ResolvedAgentOptions) {
    this.c = components
    this.options = options
  }

  /** Transfers a job until it ends (transferred, and completed when it auto-completes; error; a retry), or the signal aborts. */
  async run (entry: JobEntry, signal: AbortSignal): Promise<void> {
    const { table, logger, now } = this.c
    const job = entry.record
    // A cancel, suspend or stop; the scheduler's yields are not: a job whose files are all done goes on to completion.
    const stoppedByUser = (): boolean => signal.aborted && !(signal.reason instanceof SchedulerYield)
    try {
      await table.setState(entry, 'connecting')
      if (job.upload !== undefined) {
        if (!job.files[0].done) await this.upload(entry, signal)
      } else {
        for (let i = 0; i < job.files.length; i++) {
          if (!job.files[i].done) await this.transferFile(entry, i, signal, 0)
        }
      }
      if (stoppedByUser()) throw signal.reason
      job.transferredAt = new Date(now()).toISOString()
      job.retryCount = 0
      job.error = undefined
      await table.setState(entry, 'transferred')
      // A cancel or suspend that arrived meanwhile wins over completing.
      if (job.autoComplete && !stoppedByUser()) await this.c.completion.completeJob(entry)
    } catch (err) {
      if (signal.aborted) {
        // Preempted, or its time slice is over: back to the queue; it resumes from its block marks.
        const reason: unknown = signal.reason
        if (reason instanceof SchedulerYield && (job.state === 'connecting' || job.state === 'transferring')) {
          job.waitReason = reason.why
          // After a time slice it queues behind its equals; a preempted job keeps its place.
          if (reason.why === 'slice') job.queuedAt = now()
          await table.setState(entry, 'queued')
        }
        // suspend, cancel, stop and deadlines set the job's state themselves
        return
      }
      const failure = classifyError(err)
      if (failure.code === JobErrorCode.Internal) logger.error('unexpected transfer failure', { jobId: job.id, err: String((err as Error)?.stack ?? err) })
      job.error = {
        code: failure.code,
        message: failure.message,
        transient: failure.transient,
        at: new Date(now()).toISOString(),
        ...(failure.url !== undefined ? { url: failure.url } : {})
      }
      if (failure.transient) {
        job.retryCount++
        const limits = limitsOf(job, this.options)
        const delay = backoff(job.retryCount, limits.retryMinMs, limits.retryMaxMs)
        const retryAt = now() + delay
        job.retryAt = new Date(retryAt).toISOString()
        // When the retry is due it queues behind the jobs that were waiting before then.
        job.queuedAt = retryAt
        logger.warn('transient failure; will retry', { jobId: job.id, code: failure.code, reason: failure.message, retryInMs: delay })
        await table.setState(entry, 'transient_error')
      } else {
        logger.warn('job failed', { jobId: job.id, code: failure.code, reason: failure.message })
        await table.setState(entry, 'error')
      }
    }
  }

  /**
   * Recovery at start, for a job just read from the store: one that was moving when
   * the agent went down moves again, a cancel cut short finishes removing its files,
   * and the progress of unfinished files is loaded from their block marks.
   */
  async recover (entry: JobEntry): Promise<void> {
    const { table, now } = this.c
    const job = entry.record
    // A job that was moving when the agent went down moves again (a state change
    // like any other: notified).
    // Its active time ends when it was last recorded, not now: the agent was down in between.
    if (job.state === 'connecting' || job.state === 'transferring') await table.setState(entry, 'queued', Date.parse(job.modifiedAt))
    // A cancel that was cut short after it was recorded: finish removing its files.
    if (job.state === 'cancelled') await this.c.completion.removePartials(entry)
    // A record from before the time limits: its clocks start now.
    if (ACTIVE_STATES.includes(job.state) && job.activeSince === undefined) job.activeSince = job.progressAt = now()
    if (FINAL_STATES.includes(job.state)) return
    for (let i = 0; i < job.files.length; i++) {
      const file = job.files[i]
      if (file.mode === 'blocks' && !file.done && file.manifestId !== undefined) {
        const manifest = await this.c.store.getManifest(file.manifestId)
        if (manifest !== undefined) await this.blockProgress(entry, i, manifest)
      } else if (file.mode === 'plain' && !file.done) {
        this.plainProgress(entry, i)
      }
    }
  }

  /**
   * How one transfer of the job reaches its origin: the agent's shared pool and its
   * direct range client, or, for a job with its own proxy or TLS settings, a pool of
   * its own (closed after the transfer). Through a proxy, the direct range client
   * (plain TCP to the origin) is not used.
   */
  private async networkFor (entry: JobEntry): Promise<Network & { close: () => Promise<void> }> {
    const { http } = entry.record
    const own = http?.proxy !== undefined || http?.tls !== undefined
    const options = { proxy: http?.proxy, tls: await readTls(http?.tls) }
    const rangeClient = usesProxy(options) ? undefined : this.c.rangeClient
    if (!own) return { dispatcher: this.c.dispatcher, ...(rangeClient !== undefined ? { rangeClient } : {}), close: async () => {} }
    const dispatcher = createDispatcher({ ...poolOptions(this.options), ...options })
    return { dispatcher, ...(rangeClient !== undefined ? { rangeClient } : {}), close: async () => await dispatcher.close() }
  }

  /** Sends an upload job's file on the job's network (jobs/upload.ts). */
  private async upload (entry: JobEntry, signal: AbortSignal): Promise<void> {
    const net = await this.jobNetwork(entry)
    try {
      const { table, wanPaths, logger } = this.c
      await sendUpload({ table, wanPaths, logger, dispatcher: net.dispatcher, progress: this.plainProgress(entry, 0), onProgress: () => this.onProgress(entry) }, entry, signal)
    } finally {
      await net.close()
    }
  }

  private async jobNetwork (entry: JobEntry): Promise<Network & { close: () => Promise<void> }> {
    return await this.networkFor(entry).catch((err: unknown) => {
      throw new TransferError(JobErrorCode.Internal, `cannot read the job's TLS files: ${(err as Error).message}`, { transient: false })
    })
  }

  private async transferFile (entry: JobEntry, index: number, signal: AbortSignal, restarts: number): Promise<void> {
    const net = await this.jobNetwork(entry)
    try {
      await this.transferFileWith(entry, index, signal, restarts, net)
    } finally {
      await net.close()
    }
  }

  private async transferFileWith (entry: JobEntry, index: number, signal: AbortSignal, restarts: number, net: Network): Promise<void> {
    const { table, store, logger } = this.c
    const job = entry.record
    const file = job.files[index]
    const headers = requestHeaders(job.http)
    if (file.mode === undefined) {
      const manifest = await discoverManifest(net.dispatcher, file.url, headers, signal)
      if (manifest !== undefined) {
        if (file.expectedSha256 !== undefined && file.expectedSha256 !== manifest.sha256) {
          throw new TransferError(JobErrorCode.DigestMismatch,
            `The origin publishes SHA-256 ${manifest.sha256} for this file, not the ${file.expectedSha256} you gave: check the digest or the URL`,
            { transient: false, url: file.url })
        }
        // The id first: dropUnusedManifests must see the manifest as used before it exists.
        file.manifestId = manifest.id
        await store.putManifest(manifest)
        file.size = manifest.size
        file.mode = 'blocks'
      } else {
        file.mode = 'plain'
      }
      await table.persist(entry)
    }
    if (job.type === 'preload') {
      const manifest = file.manifestId === undefined ? undefined : await store.getManifest(file.manifestId)
      if (await preparePreload(file, manifest, this.c.sharing())) {
        logger.info('preload: the cache already holds this content', { jobId: job.id, url: file.url })
        await table.persist(entry)
        return
      }
    }
    if (job.ifNewer === true && await this.upToDate(file, net.dispatcher, headers, signal)) {
      logger.info('skipped: the destination is up to date', { jobId: job.id, path: file.path })
      this.c.sharing()?.stopSharingPartial(file.partPath)
      await rm(file.partPath, { force: true })
      await store.clearBlocks(job.id, index)
      // In place already: completing the job leaves it alone, cancelling does not remove it.
      Object.assign(file, { done: true, skipped: true, visible: true, bytesByPeer: undefined })
      await table.persist(entry)
      return
    }
    await checkDestination(file)
    // Its share of the WAN path to the origin: paced while the job is background.
    const lease = this.c.wanPaths.lease(file.url, () => job.priority, headProbe(net.dispatcher, file.url, headers), () => job.rateLimit)
    entry.lease = lease
    try {
      await this.transferFileData(entry, index, signal, restarts, net, headers, lease)
    } finally {
      lease.release()
      if (entry.lease === lease) entry.lease = undefined
    }
    // A preload file goes into the cache now, not when the job completes: the job's
    // next files and the branch's peers find it there at once.
    if (job.type === 'preload') await admitPreloaded(file, file.manifestId === undefined ? undefined : await store.getManifest(file.manifestId), this.c.sharing())
    file.done = true
    await table.persist(entry)
    if (job.type === 'preload') await rm(file.partPath, { force: true })
  }

  /** Moves the bytes of one file (plain or in verified blocks), through the job's lease of its WAN path. */
  private async transferFileData (entry: JobEntry, index: number, signal: AbortSignal, restarts: number, net: Network,
    headers: Record<string, string>, lease: PathLease): Promise<void> {
    const { table, store, logger } = this.c
    const job = entry.record
    const file = job.files[index]
    const hasher = this.hasherFor(job)
    if (job.state !== 'transferring') await table.setState(entry, 'transferring')

    if (file.mode === 'plain') {
      const progress = this.plainProgress(entry, index)
      file.sha256 = await transferPlain({
        file,
        progress,
        dispatcher: net.dispatcher,
        headers,
        fileDigest: (path) => hasher.fileDigest(path),
        persist: async () => await table.persist(entry),
        onProgress: () => this.onProgress(entry),
        pacer: lease.pacer,
        logger: withFields(logger, { jobId: entry.id }),
        signal
      })
    } else {
      const manifest = await store.getManifest(file.manifestId!)
      if (manifest === undefined) throw new TransferError(JobErrorCode.Internal, 'the manifest of this file is missing from the store', { transient: true })
      const progress = await this.blockProgress(entry, index, manifest)
      const inFlight = new Set<number>()
      const sharing = this.c.sharing()
      sharing?.sharePartial(manifest, file.partPath, progress, inFlight)
      try {
        file.sha256 = await transferBlocks(
          { store, blockHasher: hasher, buffers: this.c.blockBuffers, logger },
          this.options,
          { jobId: job.id, fileIndex: index, url: file.url, partPath: file.partPath, manifest, progress, inFlight, headers },
          {
            dispatcher: net.dispatcher,
            ...(net.rangeClient !== undefined ? { rangeClient: net.rangeClient } : {}),
            ...(sharing !== undefined ? { peers: peerSessions(sharing, file) } : {}),
            refreshManifest: async (s) => await discoverManifest(net.dispatcher, file.url, headers, s),
            onBlock: () => this.onProgress(entry),
            onBadBlock: (source) => this.c.metrics().verificationFailed(source),
            pacer: lease.pacer,
            signal
          })
      } catch (err) {
        if (!(err instanceof TransferError) || err.code !== REMOTE_CHANGED || restarts >= 2) throw err
        logger.info('remote file changed; restarting it', { jobId: job.id, url: file.url })
        await this.resetFile(entry, index)
        // From the start: the manifest is discovered again (a lease of its own; this one is released after).
        return await this.transferFileWith(entry, index, signal, restarts + 1, net)
      }
    }
  }

  /** Background jobs hash at a lower CPU priority, so that they do not slow what the user runs; foreground jobs at full speed. */
  private hasherFor (job: { priority: string }): BlockHasher {
    return job.priority === 'foreground' ? this.c.blockHasher : this.c.backgroundHasher()
  }

  /**
   * Whether the file's destination is already what the origin has (ifNewer): with
   * a manifest, the local file has its size and SHA-256; without, the server answers
   * 304 to If-Modified-Since the local file's modification time.
   */
  private async upToDate (file: FileRecord, dispatcher: Dispatcher, headers: Record<string, string>, signal: AbortSignal): Promise<boolean> {
    const local = await stat(file.path).catch(() => undefined)
    if (local === undefined || !local.isFile()) return false
    if (file.mode === 'blocks') {
      const manifest = await this.c.store.getManifest(file.manifestId!)
      if (manifest === undefined || manifest.size !== local.size) return false
      const current = await fileDigest(this.c.blockHasher, file.path, local.size, signal) === manifest.sha256
      if (current) file.sha256 = manifest.sha256
      return current
    }
    const res = await request(file.url, {
      dispatcher,
      method: 'GET',
      headers: { ...headers, range: 'bytes=0-0', 'if-modified-since': local.mtime.toUTCString() },
      signal
    })
    discard(res.body)
    return res.statusCode === 304
  }

  /** Forgets a file's progress and manifest (its remote copy changed). */
  private async resetFile (entry: JobEntry, index: number): Promise<void> {
    const file = entry.record.files[index]
    await this.c.store.clearBlocks(entry.id, index)
    this.c.sharing()?.stopSharingPartial(file.partPath)
    await rm(file.partPath, { force: true })
    file.mode = undefined
    file.manifestId = undefined
    file.size = -1
    file.plainBytes = undefined
    file.bytesByPeer = undefined
    entry.progress[index] = undefined
    await this.c.table.persist(entry)
  }

  private async blockProgress (entry: JobEntry, index: number, manifest: PublishedManifest): Promise<FileProgress> {
    const existing = entry.progress[index]
    if (existing instanceof FileProgress && existing.size === manifest.size) return existing
    const progress = new FileProgress(manifest.size, manifest.blockSize)
    for await (const { block, source } of this.c.store.markedBlocks(entry.id, index)) {
      if (block < progress.blocks.length) progress.mark(block, source)
    }
    entry.progress[index] = progress
    return progress
  }

  private plainProgress (entry: JobEntry, index: number): PlainProgress {
    const existing = entry.progress[index]
    if (existing !== undefined && !(existing instanceof FileProgress)) return existing
    const bytes = entry.record.files[index].plainBytes ?? 0
    // An upload's bytes were sent, not received: no source counts them (metrics count received bytes by source).
    const progress: PlainProgress = { bytesDone: bytes, fromOrigin: entry.record.upload === undefined ? bytes : 0, fromPeers: 0, fromCache: 0 }
    entry.progress[index] = progress
    return progress
  }

  private onProgress (entry: JobEntry): void {
    const { now, views, table, logger } = this.c
    const job = entry.record
    const at = now()
    if (job.retryCount > 0) job.retryCount = 0
    // Restarts the no-progress clock (persisted with the record, at most every second).
    job.progressAt = at
    if (at - entry.lastProgressEvent >= 500) {
      entry.lastProgressEvent = at
      views.sampleRate(entry, at)
      this.c.emit('job:progress', views.view(entry))
    }
    if (at - entry.lastPersist >= PROGRESS_PERSIST_MS) {
      entry.lastPersist = at
      job.modifiedAt = new Date(at).toISOString()
      table.persist(entry).catch((err: unknown) => logger.error('could not persist job progress', { jobId: job.id, err: String(err) }))
    }
  }
}

/** The agent's peer sessions for one file's transfer, also counting each peer's bytes in the file's record. */
function peerSessions (sharing: PeerSharing, file: FileRecord): PeerSessions {
  return {
    open: async (id, key, signal) => {
      const sessions = await sharing.open(id, key, signal)
      // The hosted cache's part: asked first, or unreachable (then peers and the origin serve).
      const use = sharing.hostedCaches?.use(sessions.map(s => s.peer))
      if (use !== undefined && file.hostedCache?.state !== 'served') file.hostedCache = use
      return sessions
    },
    penalize: (peer, reason) => sharing.penalize(peer, reason),
    self: () => sharing.self(),
    isHostedCache: (peer) => sharing.isHostedCache(peer),
    received: (peer, bytes) => {
      sharing.received(peer, bytes)
      if (sharing.isHostedCache(peer)) file.hostedCache = { state: 'served' }
      const byPeer = file.bytesByPeer ??= {}
      byPeer[peer.toString()] = (byPeer[peer.toString()] ?? 0) + bytes
    }
  }
}

/** Fails early, in plain words, when the destination folder is gone or the disk cannot hold the rest. */
async function checkDestination (file: FileRecord): Promise<void> {
  const dir = dirname(file.path)
  try {
    await stat(dir)
  } catch {
    throw new TransferError(JobErrorCode.Destination, `The destination folder ${dir} does not exist: create it, then resume the job`, { transient: false, url: file.url })
  }
  if (file.size < 0) return
  const { bavail, bsize } = await statfs(dir)
  const free = bavail * bsize
  const partSize = await stat(file.partPath).then(s => s.blocks * 512, () => 0)
  const needed = file.size - partSize
  if (needed > free) {
    throw new TransferError(JobErrorCode.DiskFull,
      `Not enough disk space for ${file.path}: ${formatBytes(needed)} more needed, ${formatBytes(free)} free. Free some space, then resume the job`,
      { transient: false, url: file.url })
  }
}
