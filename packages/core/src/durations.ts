import { CanopyError, ErrorCode } from './errors.ts'

const DURATION_UNITS: Record<string, number> = {
  '': 1, ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000
}

/**
 * Parses a duration into milliseconds: "1500" (a plain number is milliseconds, as
 * every `... MS` flag always took), "1500ms", "30s", "5m", "2h", "14d"; fractions
 * allowed ("1.5h").
 */
export function parseDuration (text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text)
  const unit = match === null ? undefined : DURATION_UNITS[match[2].toLowerCase()]
  if (match === null || unit === undefined) {
    throw new CanopyError(ErrorCode.InvalidArgument, `"${text}" is not a duration: write e.g. 1500 (ms), 30s, 5m, 2h or 14d`)
  }
  const ms = Math.round(Number(match[1]) * unit)
  if (!Number.isSafeInteger(ms)) throw new CanopyError(ErrorCode.InvalidArgument, `"${text}" is too long`)
  return ms
}

/** 1_209_600_000 → "14 d", 90_000 → "90 s", 5_400_000 → "90 min", 1500 → "1.5 s", 2_879_000 → "48 min": for messages people read. */
export function formatDuration (ms: number): string {
  const steps: Array<[number, string]> = [[86_400_000, 'd'], [3_600_000, 'h'], [60_000, 'min'], [1000, 's']]
  for (const [size, unit] of steps) {
    // Whole seconds up to two minutes read better than "1.5 min".
    if (ms >= size * (unit === 's' ? 1 : 2)) {
      const value = ms / size
      // One decimal below 10 ("1.5 s"), whole numbers above ("48 min").
      return `${value >= 10 ? Math.round(value) : Math.round(value * 10) / 10} ${unit}`
    }
  }
  return `${ms} ms`
}
