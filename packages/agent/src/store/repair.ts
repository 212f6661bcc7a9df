/**
 * A state store that does not open: what can be recovered is, and otherwise the
 * agent stops with the path, the cause and what to do (issue 13, item 11).
 */
import { cp } from 'node:fs/promises'
import { dirname } from 'node:path'
import { Level } from 'level'
import { CanopyError } from '@canopy/core'
import { isDiskFull } from './disk-full.ts'

/** `level` is classic-level in Node, whose static repair() its types do not declare. */
interface LevelRepair { repair: (location: string) => Promise<void> }

/** The innermost message of an error's cause chain (level's own "Database failed to open" says nothing). */
function rootCause (err: unknown): string {
  let e = err
  for (let depth = 0; depth < 8 && e instanceof Error && e.cause !== undefined; depth++) e = e.cause
  return e instanceof Error ? e.message : String(e)
}

/**
 * Repairs a database that failed to open with LevelDB's repairer, which keeps every
 * record it can still read. A copy of the damaged directory is kept first, next to
 * it (`db.damaged-<time>`), so nothing the repair drops is lost for good. Resolves
 * with the copy's path; throws the reason the store cannot be used when the failure
 * is not damage (a full disk, no permission) or the copy or the repair fail.
 */
export async function repairStore (location: string, err: unknown): Promise<string> {
  if (isDiskFull(err)) throw storeOpenError(location, err)
  if (/permission denied|EACCES|EPERM|read-only/i.test(rootCause(err))) throw storeOpenError(location, err)
  const copy = `${location}.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}`
  try {
    await cp(location, copy, { recursive: true, errorOnExist: true, force: false })
    await (Level as unknown as LevelRepair).repair(location)
  } catch (repairErr) {
    throw storeOpenError(location, err, undefined, repairErr)
  }
  return copy
}

/** The error that stops the agent: the store's path, the cause, and what to do. */
export function storeOpenError (location: string, err: unknown, copy?: string, repairErr?: unknown): CanopyError {
  const stateDir = dirname(location)
  if (isDiskFull(err)) {
    return new CanopyError('ERR_DISK_FULL', `The disk of the state directory ${stateDir} is full: free some space, then start the agent again`, { cause: err })
  }
  const tried = copy !== undefined ? ` A repair was tried (the damaged copy is kept in ${copy}).` : repairErr !== undefined ? ` It could not be repaired either (${rootCause(repairErr)}).` : ''
  return new CanopyError('ERR_STATE_CORRUPT',
    `The state store ${location} cannot be read: ${rootCause(err)}.${tried} Restore ${location} from a backup, or move it aside (the agent then starts with no jobs; their partial files stay where they are), then start the agent again`,
    { cause: err })
}
