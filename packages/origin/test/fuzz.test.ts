// Property-based fuzzing of the origin's parsers of client input: request paths,
// Range, and the conditional headers, alone and through a real server. Fixed seed and
// bounded runs (see packages/core/test/fuzz.test.ts).
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { MalformedPathError, urlPathSegments } from '../src/paths.ts'
import { parseRange } from '../src/ranges.ts'
import { evaluatePreconditions, fileEtag, httpDate, ifRangeAllows } from '../src/validators.ts'
import { startOrigin } from '../src/index.ts'

const SEED = 13
const RUNS = { seed: SEED, numRuns: 400 }

const tempDirs: string[] = []
after(async () => { for (const dir of tempDirs.splice(0)) await rm(dir, { recursive: true, force: true }) })

/** Range-like header text: mostly near the grammar, sometimes anything. */
const rangeHeaders = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.tuple(
    fc.constantFrom('bytes', 'Bytes', ' bytes ', 'items', ''),
    fc.array(fc.tuple(fc.oneof(fc.constant(''), fc.bigInt({ min: 0n, max: 10n ** 25n }).map(String)),
      fc.oneof(fc.constant(''), fc.bigInt({ min: 0n, max: 10n ** 25n }).map(String)), fc.constantFrom('-', '--', ' - ', '')),
    { minLength: 0, maxLength: 3 })
  ).map(([unit, specs]) => `${unit}=${specs.map(([a, b, dash]) => `${a}${dash}${b}`).join(',')}`)
)

test('fuzz: parseRange answers none, unsatisfiable or a range inside the file', () => {
  fc.assert(fc.property(rangeHeaders, fc.nat({ max: 2 ** 42 }), (header, size) => {
    const r = parseRange(header, size)
    if (r.kind !== 'range') return
    assert.ok(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end), JSON.stringify(r))
    assert.ok(r.start >= 0 && r.start <= r.end && r.end < size, `${header} on ${size} bytes: ${JSON.stringify(r)}`)
  }), RUNS)
  fc.assert(fc.property(fc.nat({ max: 2 ** 40 }), fc.nat({ max: 2 ** 40 }), fc.nat({ max: 2 ** 40 }), (a, b, size) => {
    const [start, end] = a <= b ? [a, b] : [b, a]
    const r = parseRange(`bytes=${start}-${end}`, size)
    if (start >= size) assert.deepEqual(r, { kind: 'unsatisfiable' })
    else assert.deepEqual(r, { kind: 'range', start, end: Math.min(end, size - 1) })
  }), RUNS)
})

test('fuzz: request paths yield clean segments or a MalformedPathError', () => {
  const pathish = fc.oneof(
    fc.string({ maxLength: 60 }),
    fc.array(fc.constantFrom('/', '.', '..', '%2e', '%2E', '%2f', '%5c', '%00', '%', '%zz', '%e0%a4', 'a', 'é', '?', '#', '\\', 'http://h'), { maxLength: 12 }).map(p => p.join(''))
  )
  fc.assert(fc.property(pathish, target => {
    let result
    try {
      result = urlPathSegments(target)
    } catch (err) {
      assert.ok(err instanceof MalformedPathError, `${JSON.stringify(target)} threw ${String(err)}`)
      return
    }
    for (const segment of result.segments) {
      assert.ok(segment !== '' && segment !== '.' && segment !== '..' && !segment.includes('/') && !segment.includes('\0'),
        `${JSON.stringify(target)} gave segment ${JSON.stringify(segment)}`)
    }
  }), RUNS)
})

test('fuzz: conditional headers never throw and answer 200, 304 or 412', () => {
  const validators = { etag: fileEtag({ size: 1234, mtimeMs: 1_700_000_000_123.456, ino: 42 }), mtimeMs: 1_700_000_000_123.456 }
  const value = fc.oneof(
    fc.string({ maxLength: 50 }),
    fc.constantFrom(validators.etag, `W/${validators.etag}`, '*', httpDate(validators.mtimeMs), 'Thu, 01 Jan 1970 00:00:00 GMT', '"', 'W/'),
    fc.array(fc.constantFrom(validators.etag, '"x"', 'W/"y"', ',', ' ', '*'), { maxLength: 5 }).map(parts => parts.join(''))
  )
  const headers = fc.record({
    'if-match': value, 'if-none-match': value, 'if-modified-since': value, 'if-unmodified-since': value, 'if-range': value
  }, { requiredKeys: [] })
  fc.assert(fc.property(headers, fc.boolean(), (h, withDate) => {
    const v = withDate ? validators : { etag: validators.etag }
    assert.ok([200, 304, 412].includes(evaluatePreconditions(h, v)))
    assert.equal(typeof ifRangeAllows(h, v), 'boolean')
  }), RUNS)
})

test('fuzz: a real origin answers any Range and conditional headers with 200, 206, 304, 412 or 416 and the right bytes', async t => {
  const root = await mkdtemp(join(tmpdir(), 'canopy-fuzz-'))
  tempDirs.push(root)
  const data = randomBytes(100_000)
  await writeFile(join(root, 'f.bin'), data)
  const origin = await startOrigin({ root, stateDir: join(root, '.state'), scan: false })
  t.after(() => origin.close())
  const get = (headers: Record<string, string>): Promise<{ status: number, headers: Record<string, unknown>, body: Buffer }> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: origin.port, path: '/f.bin', headers, agent: false }, res => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      })
      req.on('error', reject)
      req.end()
    })
  // Header values Node would refuse to send (control characters) are not a server's input.
  const sendable = (s: string): boolean => /^[\x20-\x7e]*$/.test(s)
  await fc.assert(fc.asyncProperty(rangeHeaders.filter(sendable), fc.constantFrom(undefined, '*', '"nope"', 'Thu, 01 Jan 2099 00:00:00 GMT'), async (range, condition) => {
    const headers: Record<string, string> = { range }
    if (condition !== undefined) headers[condition.startsWith('T') ? 'if-modified-since' : 'if-none-match'] = condition
    const res = await get(headers)
    assert.ok([200, 206, 304, 412, 416].includes(res.status), `${range}: ${res.status}`)
    if (res.status === 200) assert.ok(res.body.equals(data))
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/100000$/.exec(String(res.headers['content-range']))
      assert.ok(m !== null, String(res.headers['content-range']))
      assert.ok(res.body.equals(data.subarray(Number(m[1]), Number(m[2]) + 1)))
    }
  }), { seed: SEED, numRuns: 150 })
})
