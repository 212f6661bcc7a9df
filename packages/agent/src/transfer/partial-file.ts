import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'

/**
 * Opens (creating if needed, never truncating by accident) the partial file of a
 * download and sets its length. Resizing is a sparse truncate: it reserves no
 * space, which is why the runner checks free space before it starts.
 */
export async function openPartial (path: string, size: number): Promise<FileHandle> {
  const handle = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644)
  try {
    const { size: current } = await handle.stat()
    if (size >= 0 && current !== size) await handle.truncate(size)
    return handle
  } catch (err) {
    await handle.close()
    throw err
  }
}

/** Writes all of `bytes` at `position` (a positional write may be short). */
export async function writeFully (handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done)
    done += bytesWritten
  }
}
