import { dirname } from 'node:path'
import { Level } from 'level'
import type { JobView, PublishedManifest, StoreRecovery } from '@canopy/core'
import { CanopyError, codeInCauses } from '@canopy/core'
import type { BlockProvenance, JobRecord } from '../jobs/job.ts'
import { repairStore, storeOpenError } from './repair.ts'
import { upgradeSchema } from './schema.ts'

const SOURCE_CODES: Record<BlockProvenance, string> = { origin: 'o', peer: 'p', cache: 'c' }
const CODE_SOURCES: Record<string, BlockProvenance> = { o: 'origin', p: 'peer', c: 'cache' }

/**
 * Content keys kept per manifest id: one per origin that published the content. A
 * bound, since each origin (or a hostile one) can mint keys; the oldest goes first.
 */
export const MAX_KEYS_PER_MANIFEST = 8

function blockKey (jobId: string, file: number, block: number): string {
  // Fixed-width numbers keep a job's marks in order under one prefix.
  return `${jobId}!${file.toString().padStart(5, '0')}!${block.toString().padStart(8, '0')}`
}

/**
 * The agent's persistent state in one `level` database:
 * - `jobs`: JobRecord by job id (small; rewritten on state changes);
 * - `blocks`: one mark per verified block written to a partial file, valued by
 *   its source. Marks are written after the block's bytes are written, so after
 *   a crash a job refetches at most the blocks that were in flight;
 * - `manifests`: published manifests (with their content keys) by manifest id;
 * - `meta`: the store's schema version (see schema.ts);
 * - `manifest-keys`: every content key a manifest id was published with (one per
 *   origin: the key derives from the origin's secret), at most MAX_KEYS_PER_MANIFEST,
 *   so that peers holding any of them are served;
 * - `notify`: the notification outbox: one record per notification a state change
 *   owes and that is not yet delivered, written in the same batch as the state
 *   change itself (see notify/notifier.ts).
 */
export class JobStore {
  private db!: Level<string, string>
  private jobs!: ReturnType<typeof sublevels>['jobs']
  private blocks!: ReturnType<typeof sublevels>['blocks']
  private manifests!: ReturnType<typeof sublevels>['manifests']
  private manifestKeys!: ReturnType<typeof sublevels>['manifestKeys']
  /** putManifest reads, then writes the keys of an id: one at a time. */
  private keysWritten: Promise<void> = Promise.resolve()
  private cache!: ReturnType<typeof sublevels>['cache']
  private notify!: ReturnType<typeof sublevels>['notify']
  /** The batch of block marks that will be written when the current write ends. */
  private nextBatch?: { marks: Array<{ key: string, value: string }>, written: Promise<void> }
  private writing: Promise<void> = Promise.resolve()

  /** The database's directory (`<state-dir>/db`). */
  private readonly location: string
  /** Where the copy of a damaged database was kept before it was repaired at open. */
  repaired?: string
  /** What the start recovered from a damaged store (see recovery.ts), when it was damaged. */
  recovery?: StoreRecovery

  constructor (location: string) {
    this.location = location
    this.bind()
  }

  /** A new handle on the database (a handle whose open failed cannot be opened again). */
  private bind (): void {
    this.db = new Level<string, string>(this.location)
    Object.assign(this, sublevels(this.db))
  }

  /**
   * Opens the database. One that is damaged is repaired once (after a copy of it is
   * kept, see repairStore); `repaired` then says where that copy is.
   */
  async open (): Promise<void> {
    try {
      await this.db.open()
    } catch (err) {
      if (codeInCauses(err, code => code === 'LEVEL_LOCKED') !== undefined) {
        throw new CanopyError('ERR_AGENT_ALREADY_RUNNING', `Another Canopy agent is using this state directory, ${dirname(this.location)}: stop it first, or pick another --state-dir`, { cause: err })
      }
      this.repaired = await repairStore(this.location, err)
      this.bind()
      await this.db.open().catch((again: unknown) => { throw storeOpenError(this.location, again, this.repaired) })
    }
    try {
      // What an older agent wrote is migrated; what a newer one wrote is refused.
      await upgradeSchema(this.db, dirname(this.location))
    } catch (err) {
      await this.db.close()
      throw err
    }
  }

  async close (): Promise<void> {
    await this.db.close()
  }

  /** The error for a store that opened but cannot be read (a damaged table): its path, the cause, what to do. */
  unreadable (err: unknown): Error {
    return storeOpenError(this.location, err)
  }

  /**
   * Writes a job record, and with it, atomically, the notifications its latest state
   * change owes: a crash cannot keep the one without the other.
   */
  async putJob (job: JobRecord, notifications: readonly NotificationRecord[] = []): Promise<void> {
    if (notifications.length === 0) {
      await this.jobs.put(job.id, job)
      return
    }
    const batch = this.db.batch().put(job.id, job, { sublevel: this.jobs })
    for (const n of notifications) batch.put(notificationKey(n), n, { sublevel: this.notify })
    await batch.write()
  }

  async putNotification (record: NotificationRecord): Promise<void> {
    await this.notify.put(notificationKey(record), record)
  }

  async deleteNotification (record: NotificationRecord): Promise<void> {
    await this.notify.del(notificationKey(record))
  }

  /** The outbox, in key order: by job, then by transition. */
  async notifications (): Promise<NotificationRecord[]> {
    return await this.notify.values().all()
  }

  /** Removes a job and its block marks in one batch (retention). */
  async deleteJob (jobId: string): Promise<void> {
    const batch = this.db.batch().del(jobId, { sublevel: this.jobs })
    for await (const key of this.blocks.keys({ gte: `${jobId}!`, lt: `${jobId}!~` })) batch.del(key, { sublevel: this.blocks })
    await batch.write()
  }

  /**
   * The job ids that have block marks, each once (one seek per id, not a read of
   * every mark): with allJobs, how a start finds jobs whose record was lost.
   */
  async jobIdsWithMarks (): Promise<string[]> {
    const ids: string[] = []
    let from: string | undefined
    for (;;) {
      const [key] = await this.blocks.keys({ ...(from !== undefined ? { gt: from } : {}), limit: 1 }).all()
      if (key === undefined) return ids
      const id = key.slice(0, key.indexOf('!'))
      ids.push(id)
      from = `${id}!~`
    }
  }

  async allJobs (): Promise<JobRecord[]> {
    return await this.jobs.values().all()
  }

  /**
   * Records a verified, written block. Marks that arrive while a write is under way
   * go out together in the next batch (group commit): one store write per batch
   * rather than per block. Resolves once this mark is written.
   */
  async markBlock (jobId: string, file: number, block: number, source: BlockProvenance): Promise<void> {
    const mark = { key: blockKey(jobId, file, block), value: SOURCE_CODES[source] }
    if (this.nextBatch === undefined) {
      const batch = { marks: [mark], written: this.writing.then(async () => {
        this.nextBatch = undefined
        await this.blocks.batch(batch.marks.map(m => ({ type: 'put' as const, key: m.key, value: m.value })))
      }) }
      this.nextBatch = batch
      this.writing = batch.written.catch(() => {})
      await batch.written
    } else {
      this.nextBatch.marks.push(mark)
      await this.nextBatch.written
    }
  }

  async unmarkBlock (jobId: string, file: number, block: number): Promise<void> {
    await this.blocks.del(blockKey(jobId, file, block))
  }

  /** The verified blocks of one file of a job, with their sources. */
  async *markedBlocks (jobId: string, file: number): AsyncGenerator<{ block: number, source: BlockProvenance }> {
    const prefix = `${jobId}!${file.toString().padStart(5, '0')}!`
    for await (const [key, value] of this.blocks.iterator({ gte: prefix, lt: `${prefix}~` })) {
      yield { block: Number(key.slice(prefix.length)), source: CODE_SOURCES[value] ?? 'origin' }
    }
  }

  async clearBlocks (jobId: string, file?: number): Promise<void> {
    const prefix = file === undefined ? `${jobId}!` : `${jobId}!${file.toString().padStart(5, '0')}!`
    await this.blocks.clear({ gte: prefix, lt: `${prefix}~` })
  }

  /**
   * Stores the manifest (the newest key in it), and adds its key to the id's keys:
   * the same content fetched from a second origin comes with a second key, and the
   * peers that got the first one must still be served.
   */
  async putManifest (manifest: PublishedManifest): Promise<void> {
    const write = this.keysWritten.then(async () => {
      const keys = (await this.manifestKeys.get(manifest.id)) ?? []
      const next = manifest.key === undefined ? keys : [...keys.filter(k => k !== manifest.key), manifest.key].slice(-MAX_KEYS_PER_MANIFEST)
      await this.db.batch().put(manifest.id, manifest, { sublevel: this.manifests }).put(manifest.id, next, { sublevel: this.manifestKeys }).write()
    })
    this.keysWritten = write.catch(() => {})
    await write
  }

  async getManifest (id: string): Promise<PublishedManifest | undefined> {
    return await this.manifests.get(id)
  }

  /** Every content key (base64) the manifest id was stored with, oldest first; the manifest's own key last. */
  async keysOf (id: string): Promise<string[]> {
    const keys = (await this.manifestKeys.get(id)) ?? []
    const current = (await this.manifests.get(id))?.key
    return current === undefined ? keys : [...keys.filter(k => k !== current), current]
  }

  async deleteManifest (id: string): Promise<void> {
    await this.db.batch().del(id, { sublevel: this.manifests }).del(id, { sublevel: this.manifestKeys }).write()
  }

  async manifestIds (): Promise<string[]> {
    return await this.manifests.keys().all()
  }

  async putCacheRecord (record: CacheRecord): Promise<void> {
    await this.cache.put(record.manifestId, record)
  }

  async deleteCacheRecord (manifestId: string): Promise<void> {
    await this.cache.del(manifestId)
  }

  async cacheRecords (): Promise<CacheRecord[]> {
    return await this.cache.values().all()
  }
}

function sublevels (db: Level<string, string>) {
  return {
    jobs: db.sublevel<string, JobRecord>('jobs', { valueEncoding: 'json' }),
    blocks: db.sublevel<string, string>('blocks', { valueEncoding: 'utf8' }),
    manifests: db.sublevel<string, PublishedManifest>('manifests', { valueEncoding: 'json' }),
    manifestKeys: db.sublevel<string, string[]>('manifest-keys', { valueEncoding: 'json' }),
    cache: db.sublevel<string, CacheRecord>('cache', { valueEncoding: 'json' }),
    notify: db.sublevel<string, NotificationRecord>('notify', { valueEncoding: 'json' })
  }
}

/** A file kept for peers in the cache directory, and the identity it had when it was verified. */
export interface CacheRecord {
  manifestId: string
  path: string
  size: number
  mtimeMs: number
  ino: number
  addedAt: string
  /** The completed file's name (not its path), for people; records from before it lack it. */
  name?: string
  /** Where it came from (its URL, or "offered by <peer id>"); records from before it lack it. */
  source?: string
  /** When peers last read it (saved when its file closes, so that least-recently-used survives a restart). */
  usedAt?: string
}

export type NotificationChannel = 'url' | 'onComplete' | 'onError'

/** A notification that a job's state change owes and that is not yet delivered. */
export interface NotificationRecord {
  /** `<job id>:<transition number>`: the same for every attempt, across restarts (receivers may deduplicate on it). */
  id: string
  jobId: string
  /** The job's transition number (JobRecord.transitions after the change). */
  transition: number
  channel: NotificationChannel
  /** The job as it was when it entered the state. */
  job: JobView
  /** Attempts that failed so far (URL deliveries only; a command runs once). */
  attempts: number
}

function notificationKey (n: NotificationRecord): string {
  // Fixed width keeps one job's records in transition order.
  return `${n.jobId}!${n.transition.toString().padStart(10, '0')}!${n.channel}`
}
