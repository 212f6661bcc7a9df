import { CanopyError, codeInCauses } from '@canopy/core'

/**
 * Whether an error is a full disk or quota. Node's fs errors carry ENOSPC/EDQUOT as
 * their code; the store's (LevelDB's) carry LEVEL_IO_ERROR with the system's message.
 */
export function isDiskFull (err: unknown): boolean {
  if (codeInCauses(err, code => code === 'ENOSPC' || code === 'EDQUOT') !== undefined) return true
  let e = err
  for (let depth = 0; depth < 8 && e instanceof Error; depth++, e = e.cause) {
    if (/No space left on device|Disk quota exceeded/i.test(e.message)) return true
  }
  return false
}

/** The error the control API answers when the state store's disk is full. */
export function stateDiskFull (err: unknown): CanopyError {
  return new CanopyError('ERR_DISK_FULL', 'The disk of the agent\'s state directory is full: free some space, then try again', { cause: err })
}
