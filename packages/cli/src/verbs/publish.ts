/** `canopy publish`: static manifest sidecars for third-party origins. */
import { stat } from 'node:fs/promises'
import { formatBytes, SIDECAR_SUFFIX } from '@canopy/core'
import { ExitCode, UsageError } from '../errors.ts'
import { absolute, flag, out, printJson, say, str } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { originStateDir, parseBlockSize } from './options.ts'

export interface PublishedFile {
  file: string
  id: string
  size: number
  blocks: number
}

export const publishVerb: Verb = {
  name: 'publish',
  summary: 'write <file>.canopy manifest sidecars for files served by another server',
  help: `Usage: canopy publish <file>... [--block-size SIZE] [--state-dir D] [--json]

Computes each file's content manifest (block digests, whole-file SHA-256) and
writes it next to the file as <file>${SIDECAR_SUFFIX}. Upload the sidecar with the file to a
server that cannot compute manifests itself (nginx, S3, a CDN): agents then verify
every block and share the file with their peers. Per-content keys are derived
from the origin secret in the state directory (created when missing), so publish
with the same state directory as the \`canopy origin\` that serves the files, if any.

Options:
  --block-size SIZE   block size, a power of two from 64KiB to 16MiB (default 1MiB)
  --state-dir D       where the origin secret lives (default: <agent default state dir>/origin)
  --json              print [{ file, id, size, blocks }] as JSON on stdout

Examples:
  canopy publish dist/app-1.2.3.tar.gz
  canopy publish images/*.iso --block-size 4MiB --json
`,
  options: { 'block-size': { type: 'string' }, json: { type: 'boolean' } },
  positionals: { min: 1, max: Infinity, name: '<file>...' },
  async run (ctx) {
    const blockSize = parseBlockSize(str(ctx.values, 'block-size'), 'publish')
    const files = ctx.positionals.map(absolute)
    for (const file of files) {
      const info = await stat(file).catch(() => undefined)
      if (info === undefined) throw new UsageError(`${file}: no such file`, 'publish')
      if (!info.isFile()) throw new UsageError(`${file}: not a regular file`, 'publish')
      if (file.endsWith(SIDECAR_SUFFIX)) throw new UsageError(`${file} is itself a sidecar; publish the file it describes`, 'publish')
    }
    const stateDir = originStateDir(ctx)
    const controller = new AbortController()
    const onSigint = (): void => { controller.abort() }
    process.once('SIGINT', onSigint)
    try {
      const { loadOrCreateSecret, publishSidecar } = await import('@canopy/origin')
      const secret = await loadOrCreateSecret(stateDir)
      const results: PublishedFile[] = []
      for (const file of files) {
        if (controller.signal.aborted) break
        const manifest = await publishSidecar(file, { secret, blockSize, signal: controller.signal })
        const result = { file, id: manifest.id, size: manifest.size, blocks: manifest.blocks.length }
        results.push(result)
        if (!flag(ctx.values, 'json')) {
          out(`${file}: ${result.id}, ${formatBytes(result.size)}, ${result.blocks} blocks of ${formatBytes(manifest.blockSize)} -> ${file}${SIDECAR_SUFFIX}\n`)
        }
      }
      if (controller.signal.aborted) {
        say('canopy publish: interrupted')
        return ExitCode.Interrupted
      }
      if (flag(ctx.values, 'json')) printJson(results)
      return ExitCode.Ok
    } catch (err) {
      if (controller.signal.aborted) {
        say('canopy publish: interrupted')
        return ExitCode.Interrupted
      }
      throw err
    } finally {
      process.off('SIGINT', onSigint)
    }
  }
}
