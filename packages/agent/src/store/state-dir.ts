import { chmod, mkdir, stat } from 'node:fs/promises'
import { CanopyError } from '@canopy/core'

/**
 * Makes the state directory ready: created owner-only, or, when it exists, made
 * owner-only (it holds the control socket, the peer key and the store).
 *
 * An existing directory that is not ours and that others may enter, or that others
 * may write into (e.g. /tmp, a team share), is refused rather than chmodded:
 * narrowing a shared directory breaks whoever else uses it, and what another user
 * could have planted there beforehand (a socket, a link named `db`) is not ours to
 * trust. A subdirectory of it was the alternative, but then `--state-dir` would no
 * longer name where the agent's socket is, and every client given the same
 * `--state-dir` would miss it.
 */
export async function prepareStateDir (path: string): Promise<void> {
  const made = await mkdir(path, { recursive: true, mode: 0o700 })
  if (made !== undefined) return
  const info = await stat(path)
  if (!info.isDirectory()) {
    throw new CanopyError('ERR_INVALID_ARGUMENT', `The state directory ${path} is not a directory: pick another --state-dir`)
  }
  const ours = process.getuid === undefined || info.uid === process.getuid()
  const othersEnter = (info.mode & 0o077) !== 0
  const othersWrite = (info.mode & 0o022) !== 0
  if ((!ours && othersEnter) || othersWrite) {
    throw new CanopyError('ERR_INVALID_ARGUMENT',
      `The state directory ${path} is shared (mode ${(info.mode & 0o7777).toString(8)}, owner uid ${info.uid}): the agent keeps its socket and keys only in a directory of its own. Pick a new --state-dir (it is created owner-only), e.g. ${path.replace(/\/+$/, '')}/canopy`)
  }
  if ((info.mode & 0o777) !== 0o700) await chmod(path, 0o700)
}
