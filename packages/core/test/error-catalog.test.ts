// The error catalog lists every code the packages raise, once, and the helpers read it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CanopyError, codeInCauses, ERROR_CATALOG, httpStatusOf, isTransientCode } from '@canopy/core'

const packages = fileURLToPath(new URL('../../', import.meta.url))

test('every error code written in packages/*/src is in ERROR_CATALOG', async () => {
  const missing = new Set<string>()
  for (const pkg of await readdir(packages)) {
    const src = join(packages, pkg, 'src')
    const files = await readdir(src, { recursive: true }).catch(() => [])
    for (const file of files.filter(f => /\.(ts|js)$/.test(f))) {
      const text = await readFile(join(src, file), 'utf8')
      // Codes of Node itself are not ours: ERR_PARSE_ARGS_*, ERR_STREAM_*, and prefixes ending in "_" (ERR_TLS_).
      for (const [, code] of text.matchAll(/'(ERR_[A-Z0-9_]*[A-Z0-9])'/g)) {
        if (!code.startsWith('ERR_PARSE_ARGS_') && !code.startsWith('ERR_STREAM_') && !(code in ERROR_CATALOG)) missing.add(`${code} (${pkg}/src/${file})`)
      }
    }
  }
  assert.deepEqual([...missing], [], 'add these codes to packages/core/src/error-catalog.ts')
})

test('statuses and transience come from the catalog; unknown codes are 500 and not transient', () => {
  assert.equal(httpStatusOf('ERR_JOB_NOT_FOUND'), 404)
  assert.equal(httpStatusOf('ERR_DISK_FULL'), 507)
  assert.equal(httpStatusOf('ERR_NETWORK'), 500)
  assert.equal(httpStatusOf('ERR_NO_SUCH_CODE'), 500)
  assert.equal(isTransientCode('ERR_NETWORK'), true)
  assert.equal(isTransientCode('ERR_DIGEST_MISMATCH'), false)
  assert.equal(isTransientCode('ERR_NO_SUCH_CODE'), false)
})

test('codeInCauses walks the cause chain, at most `depth` links', () => {
  const inner = Object.assign(new Error('socket'), { code: 'ECONNRESET' })
  const outer = new Error('fetch failed', { cause: new Error('wrapped', { cause: inner }) })
  assert.equal(codeInCauses(outer, c => c.startsWith('E')), 'ECONNRESET')
  assert.equal(codeInCauses(outer, c => c.startsWith('E'), 2), undefined)
  assert.equal(codeInCauses('not an error', () => true), undefined)
})

test('error classes are named after themselves', () => {
  class SomeError extends CanopyError {}
  assert.equal(new CanopyError('ERR_UNKNOWN', 'x').name, 'CanopyError')
  assert.equal(new SomeError('ERR_UNKNOWN', 'x').name, 'SomeError')
})
