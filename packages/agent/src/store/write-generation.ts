/**
 * How a start tells that the state store lost its last writes (issue 13, item 11).
 *
 * LevelDB appends writes to a log it does not fsync, and cannot tell a log cut short
 * (a crash before the page cache reached the disk, a copy of a running store, a
 * restored backup, a failing disk) from the log's end: the store opens fine, and a
 * job comes back in the state it had before the lost writes (a suspend lost: it runs
 * again). So every job state change gets a number, the store's write generation,
 * written in the same batch as the job's record (`meta!generation`), and, once that
 * batch is written, in a small file beside the store that is fsynced and replaced
 * whole (`<state-dir>/store-generation`). The file also keeps the last
 * RECENT_TRANSITIONS changes (generation, job id, state), so a start that finds the
 * store behind the file knows which jobs' states may be stale.
 *
 * The file is written after the store, within one fsync of it (JobStore says why it
 * is not waited for), so it never says a change was written that the store was not
 * given: a crash between the two leaves the file behind the store, which is not
 * reported. It is created at start and then overwritten in place, at a fixed size,
 * with a checksum: a write to a temporary name and a rename would create a directory
 * entry at every change, after the change was acknowledged (a test's `rm -r` of a
 * running agent's state directory raced with it), and a torn write reads as no file (nothing
 * is told then, nothing falsely reported).
 */
import { createHash } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'
import type { JobState } from '@canopy/core'

/** Changes the file names, so a lost range up to this long names its jobs (a larger loss suspends every unfinished job). */
export const RECENT_TRANSITIONS = 256

/**
 * The generation file's size, always: RECENT_TRANSITIONS changes of about 70 bytes
 * (a job id is 36), the checksum and padding. The oldest changes give way if they do
 * not fit; a larger file is refused, unread.
 */
export const GENERATION_FILE_BYTES = 32 * 1024

export type RecordedState = JobState | 'deleted'

/** One job state change: its generation, the job, the state it entered ('deleted' when its record was removed). */
export interface Transition { g: number, id: string, state: RecordedState }

export interface GenerationFile {
  generation: number
  /** The last changes, oldest first. */
  recent: Transition[]
}

/** What a start found: the store is behind the generation file. */
export interface LostWrites {
  /** The generation the file says was acknowledged. */
  expected: number
  /** The generation the store holds. */
  found: number
  /** The lost changes, oldest first; undefined when they are more than the file keeps (any unfinished job may be stale). */
  transitions?: Transition[]
}

/** Reads the generation file; undefined when there is none or it does not parse (then it only cannot help). */
export async function readGenerationFile (path: string): Promise<GenerationFile | undefined> {
  const text = await readFile(path, 'utf8').catch(() => undefined)
  if (text === undefined || text.length > GENERATION_FILE_BYTES) return undefined
  // The JSON, a newline, its SHA-256 in hex, a newline, padding.
  const [json, sum] = text.split('\n', 2)
  if (sum === undefined || sha256(json) !== sum) return undefined
  try {
    const parsed = JSON.parse(json) as Partial<GenerationFile>
    if (!Number.isSafeInteger(parsed.generation) || !Array.isArray(parsed.recent)) return undefined
    const recent = parsed.recent.filter((t): t is Transition => typeof t === 'object' && t !== null && Number.isSafeInteger(t.g) && typeof t.id === 'string' && typeof t.state === 'string')
    return { generation: parsed.generation!, recent }
  } catch {
    return undefined
  }
}

function sha256 (text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/** The file's content at its fixed size, the oldest changes dropped if they do not fit. */
export function encodeGenerationFile (file: GenerationFile): Buffer {
  for (let drop = 0; ; drop = Math.max(1, drop * 2)) {
    const json = JSON.stringify({ generation: file.generation, recent: file.recent.slice(drop) })
    const text = `${json}\n${sha256(json)}\n`
    if (Buffer.byteLength(text) <= GENERATION_FILE_BYTES) return Buffer.concat([Buffer.from(text), Buffer.alloc(GENERATION_FILE_BYTES - Buffer.byteLength(text), ' ')])
  }
}

/** Compares the store's generation with the file's: the writes the store lost, if it lost any. */
export function lostWrites (storeGeneration: number, file: GenerationFile | undefined): LostWrites | undefined {
  if (file === undefined || file.generation <= storeGeneration) return undefined
  const lost = file.recent.filter(t => t.g > storeGeneration)
  // Known only when the file still holds the first lost change.
  const known = lost.length > 0 && lost[0].g === storeGeneration + 1
  return { expected: file.generation, found: storeGeneration, ...(known ? { transitions: lost } : {}) }
}

/**
 * Writes the generation file after store writes. Writes that are asked for while one
 * is under way go out together in the next one (group commit), so a burst of state
 * changes costs one or two file writes, not one each.
 */
export class GenerationWriter {
  private readonly path: string
  private readonly file: GenerationFile
  private next?: Promise<void>
  private writing: Promise<void> = Promise.resolve()

  constructor (path: string, start: GenerationFile) {
    this.path = path
    this.file = { generation: start.generation, recent: start.recent.slice(-RECENT_TRANSITIONS) }
  }

  /** Records a change the store has written; resolves once a file that says so is on disk. */
  async commit (transition: Transition): Promise<void> {
    this.file.generation = Math.max(this.file.generation, transition.g)
    this.file.recent.push(transition)
    if (this.file.recent.length > RECENT_TRANSITIONS) this.file.recent.splice(0, this.file.recent.length - RECENT_TRANSITIONS)
    await this.write()
  }

  /** Writes the file as it is now, after the write under way if any; only `create` (at start) makes a missing file. */
  async write (create = false): Promise<void> {
    if (create) {
      await this.writing
      await this.overwrite('w')
      return
    }
    if (this.next === undefined) {
      const next = this.writing.then(async () => {
        this.next = undefined
        await this.overwrite('r+')
      })
      this.next = next
      this.writing = next.catch(() => {})
    }
    await this.next
  }

  private async overwrite (flags: 'w' | 'r+'): Promise<void> {
    const content = encodeGenerationFile(this.file)
    const handle = await open(this.path, flags, 0o600)
    try {
      await handle.write(content, 0, content.length, 0)
      await handle.sync()
    } finally {
      await handle.close()
    }
  }
}
