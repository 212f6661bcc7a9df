import { CanopyError, ErrorCode } from './errors.ts'

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4
}

/** Parses "1048576", "64k", "64KiB", "1.5 GB" into bytes. `k`/`m`/`g` alone are binary units. */
export function parseSize (text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text)
  const unit = match === null ? undefined : UNITS[match[2].toLowerCase()]
  if (match === null || unit === undefined) {
    throw new CanopyError(ErrorCode.InvalidArgument, `"${text}" is not a size: write e.g. 1048576, 64KiB, 1MiB or 2GB`)
  }
  const bytes = Math.round(Number(match[1]) * unit)
  if (!Number.isSafeInteger(bytes)) {
    throw new CanopyError(ErrorCode.InvalidArgument, `"${text}" is too large`)
  }
  return bytes
}

/** 1536 → "1.5 KiB". */
export function formatBytes (bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let i = 0
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024
    i++
  }
  return i === 0 ? `${bytes} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[i]}`
}
