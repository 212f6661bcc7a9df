import { Level } from 'level'
import type { PublishedManifest } from '@canopy/core'
import { CanopyError } from '@canopy/core'
import type { BlockSource, JobRecord } from '../jobs/job.ts'

const SOURCE_CODES: Record<BlockSource, string> = { origin: 'o', peer: 'p', cache: 'c' }
const CODE_SOURCES: Record<string, BlockSource> = { o: 'origin', p: 'peer', c: 'cache' }

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
 * - `manifests`: published manifests (with their content keys) by manifest id.
 */
export class JobStore {
  private readonly db: Level<string, string>
  private readonly jobs
  private readonly blocks
  private readonly manifests
  private readonly cache
  /** The batch of block marks that will be written when the current write ends. */
  private nextBatch?: { marks: Array<{ key: string, value: string }>, written: Promise<void> }
  private writing: Promise<void> = Promise.resolve()

  constructor (location: string) {
    this.db = new Level<string, string>(location)
    this.jobs = this.db.sublevel<string, JobRecord>('jobs', { valueEncoding: 'json' })
    this.blocks = this.db.sublevel<string, string>('blocks', { valueEncoding: 'utf8' })
    this.manifests = this.db.sublevel<string, PublishedManifest>('manifests', { valueEncoding: 'json' })
    this.cache = this.db.sublevel<string, CacheRecord>('cache', { valueEncoding: 'json' })
  }

  async open (): Promise<void> {
    try {
      await this.db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new CanopyError('ERR_AGENT_ALREADY_RUNNING', 'Another Canopy agent is using this state directory: stop it first, or pick another --state-dir', { cause: err })
      }
      throw err
    }
  }

  async close (): Promise<void> {
    await this.db.close()
  }

  async putJob (job: JobRecord): Promise<void> {
    await this.jobs.put(job.id, job)
  }

  async allJobs (): Promise<JobRecord[]> {
    return await this.jobs.values().all()
  }

  /**
   * Records a verified, written block. Marks that arrive while a write is under way
   * go out together in the next batch (group commit): one store write per batch
   * rather than per block. Resolves once this mark is written.
   */
  async markBlock (jobId: string, file: number, block: number, source: BlockSource): Promise<void> {
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
  async *markedBlocks (jobId: string, file: number): AsyncGenerator<{ block: number, source: BlockSource }> {
    const prefix = `${jobId}!${file.toString().padStart(5, '0')}!`
    for await (const [key, value] of this.blocks.iterator({ gte: prefix, lt: `${prefix}~` })) {
      yield { block: Number(key.slice(prefix.length)), source: CODE_SOURCES[value] ?? 'origin' }
    }
  }

  async clearBlocks (jobId: string, file?: number): Promise<void> {
    const prefix = file === undefined ? `${jobId}!` : `${jobId}!${file.toString().padStart(5, '0')}!`
    await this.blocks.clear({ gte: prefix, lt: `${prefix}~` })
  }

  async putManifest (manifest: PublishedManifest): Promise<void> {
    await this.manifests.put(manifest.id, manifest)
  }

  async getManifest (id: string): Promise<PublishedManifest | undefined> {
    return await this.manifests.get(id)
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

/** A file kept for peers in the cache directory, and the identity it had when it was verified. */
export interface CacheRecord {
  manifestId: string
  path: string
  size: number
  mtimeMs: number
  ino: number
  addedAt: string
}
