/** Parsing of the flag values the server verbs share. */
import { join } from 'node:path'
import { defaultStateDir } from '@canopy/client'
import { assertBlockSize, parseSize } from '@canopy/core'
import { UsageError } from '../errors.ts'
import { absolute } from '../verb.ts'
import type { VerbContext } from '../verb.ts'

/** `--block-size`: a size that is a power of two from 64 KiB to 16 MiB. */
export function parseBlockSize (text: string | undefined, verb: string): number | undefined {
  if (text === undefined) return undefined
  try {
    const size = parseSize(text)
    assertBlockSize(size)
    return size
  } catch (err) {
    throw new UsageError(`--block-size ${text}: ${(err as Error).message}`, verb)
  }
}

/** `--rate-limit`: bytes per second, as a size ("10MiB", "10MiB/s", "500k"); more than 0. */
export function parseRate (text: string | undefined, verb: string): number | undefined {
  if (text === undefined) return undefined
  let rate: number
  try {
    rate = parseSize(text.replace(/\s*\/\s*s(ec)?$/i, ''))
  } catch (err) {
    throw new UsageError(`--rate-limit ${text}: ${(err as Error).message} (bytes per second)`, verb)
  }
  if (rate <= 0) throw new UsageError(`--rate-limit ${text}: must be more than 0 bytes per second (leave it out for no limit)`, verb)
  return rate
}

/** The origin's state directory (its secret, manifest cache): `--state-dir`, else `<default state dir>/origin`. */
export function originStateDir (ctx: VerbContext): string {
  return ctx.stateDirFlag ?? absolute(join(defaultStateDir(), 'origin'))
}
