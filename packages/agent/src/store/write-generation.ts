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
 * atomically (`<state-dir>/store-generation`). The file also keeps the last
 * RECENT_TRANSITIONS changes (generation, job id, state), so a start that finds the
 * store behind the file knows which jobs' states may be stale.
 *
 * The file is written after the store, within one fsync of it (JobStore says why it
 * is not waited for), so it never says a change was written that the store was not
 * given: a crash between the two leaves the file behind the store, which is not
 * reported. Its rename is not followed by an fsync of the directory: a crash may
 * bring back the previous file, which is behind, never ahead (no false alarm).
 */
import { open, readFile, rename } from 'node:fs/promises'
import type { JobState } from '@canopy/core'

/** Changes the file names, so a lost range up to this long names its jobs (a larger loss suspends every unfinished job). */
export const RECENT_TRANSITIONS = 256

/** The generation file's size bound: RECENT_TRANSITIONS entries of about 60 bytes; larger is refused, unread. */
const MAX_FILE_BYTES = 64 * 1024

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
  if (text === undefined || text.length > MAX_FILE_BYTES) return undefined
  try {
    const parsed = JSON.parse(text) as Partial<GenerationFile>
    if (!Number.isSafeInteger(parsed.generation) || !Array.isArray(parsed.recent)) return undefined
    const recent = parsed.recent.filter((t): t is Transition => typeof t === 'object' && t !== null && Number.isSafeInteger(t.g) && typeof t.id === 'string' && typeof t.state === 'string')
    return { generation: parsed.generation!, recent }
  } catch {
    return undefined
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

  /** Writes the file as it is now, after the write under way if any (the two would share the temporary file). */
  async write (): Promise<void> {
    if (this.next === undefined) {
      const next = this.writing.then(async () => {
        this.next = undefined
        await this.replace()
      })
      this.next = next
      this.writing = next.catch(() => {})
    }
    await this.next
  }

  private async replace (): Promise<void> {
    const tmp = `${this.path}.tmp`
    const handle = await open(tmp, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify(this.file))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(tmp, this.path)
  }
}
