import { constants, type Stats } from 'node:fs'
import { lstat, open, rename } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { JobErrorCode, TransferError } from '../errors.ts'

/**
 * Never follow a link at the partial's name, and never block on a FIFO planted there.
 * Its folder is the destination folder, which other local users may write to.
 */
const PARTIAL_FLAGS = constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | (constants.O_NONBLOCK ?? 0)

/** Why `st` (of the path `path`) is not a partial file this agent may write, or undefined when it is. */
function notOurs (st: Stats, path: string): string | undefined {
  if (st.isSymbolicLink()) return `${path} is a symbolic link, not the download's partial file`
  if (!st.isFile()) return `${path} is not a regular file, so it is not the download's partial file`
  const uid = process.getuid?.()
  if (uid !== undefined && st.uid !== uid) return `${path} belongs to another user (uid ${st.uid}), so it is not the download's partial file`
  return undefined
}

function refused (why: string): TransferError {
  return new TransferError(JobErrorCode.Destination,
    `${why}: someone else put it there. Remove it (and check who can write to the destination folder), then resume the job`,
    { transient: false })
}

/**
 * Opens (creating if needed, never truncating by accident) the partial file of a
 * download and sets its length. Resizing is a sparse truncate: it reserves no
 * space, which is why the runner checks free space before it starts.
 *
 * A symbolic link planted at the partial's name made the agent write through it
 * (overwriting a file outside the destination folder) and later rename the link
 * into place (issue 13, item 10): the name is opened with O_NOFOLLOW, and what was
 * opened must be a regular file of this agent's user.
 */
export async function openPartial (path: string, size: number): Promise<FileHandle> {
  let handle: FileHandle
  try {
    handle = await open(path, PARTIAL_FLAGS, 0o644)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw refused(`${path} is a symbolic link, not the download's partial file`)
    throw err
  }
  try {
    const st = await handle.stat()
    const why = notOurs(st, path)
    if (why !== undefined) throw refused(why)
    if (size >= 0 && st.size !== size) await handle.truncate(size)
    return handle
  } catch (err) {
    await handle.close()
    throw err
  }
}

/**
 * Renames a finished partial file to its destination, after checking that the name
 * still holds a regular file of this agent's user (not a link or a file planted in
 * its place after the transfer).
 */
export async function renamePartialIntoPlace (partPath: string, path: string): Promise<void> {
  const why = notOurs(await lstat(partPath), partPath)
  if (why !== undefined) throw refused(why)
  await rename(partPath, path)
}

/**
 * Bytes per write call into a partial file. A 1 MiB write makes the kernel (Linux
 * 6.18, ext4) put it in large page-cache folios, which on the build machines' VMs come
 * from memory the host has to fault in again: measured with `dd` into a new 1 GiB file,
 * 2.7 CPU-s with bs=1M versus 0.9-1.7 with bs=64k (curl, which writes 8-16 KiB at a
 * time, 0.6). The copy into the page cache was half of the agent's CPU time.
 */
export const WRITE_PIECE = 64 * 1024

/** Writes all of `bytes` at `position`, WRITE_PIECE at a time (a positional write may also be short). */
export async function writeFully (handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, Math.min(WRITE_PIECE, bytes.length - done), position + done)
    done += bytesWritten
  }
}

/**
 * Flushes a partial file to disk in the background, every `every` bytes written,
 * so that the fdatasync that must come before a file counts as done finds little
 * left to write (measured: ~0.4 s per GiB when it all waited for the end).
 */
export class BackgroundFlusher {
  private readonly handle: FileHandle
  private readonly every: number
  private unflushed = 0
  private running?: Promise<void>

  constructor (handle: FileHandle, every: number) {
    this.handle = handle
    this.every = every
  }

  wrote (bytes: number): void {
    this.unflushed += bytes
    if (this.unflushed < this.every || this.running !== undefined) return
    this.unflushed = 0
    this.running = this.handle.datasync().catch(() => {}).finally(() => { this.running = undefined })
  }

  /** Waits for a flush under way (call before closing the file). */
  async settle (): Promise<void> {
    await this.running
  }
}
