// Property-based fuzzing of the agent's parsers of outside input: exchange frames
// from peers (FramedStream over a libp2p stream pair) and control-API request bodies.
// Fixed seed and bounded runs (see packages/core/test/fuzz.test.ts).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { streamPair } from '@libp2p/utils'
import fc from 'fast-check'
import { CanopyError, PRIORITIES } from '@canopy/core'
import { FramedStream } from '../src/peers/framing.ts'
import { validateAddFiles, validateCreateJob, validatePriority } from '../src/jobs/validate.ts'

const SEED = 13
const RUNS = { seed: SEED, numRuns: 200 }

/** Runs `f`: it returns, or throws a CanopyError with one of `codes` (never a TypeError, RangeError, ...). */
async function okOrRefused<T> (f: () => T | Promise<T>, codes: string[]): Promise<T | undefined> {
  try {
    return await f()
  } catch (err) {
    assert.ok(err instanceof CanopyError, `threw ${String((err as Error)?.stack ?? err)} instead of ${codes.join(' or ')}`)
    assert.ok(codes.includes(err.code), `threw ${err.code}: ${err.message}`)
    return undefined
  }
}

const prefixed = (length: number, body: Uint8Array): Buffer => {
  const head = Buffer.alloc(4)
  head.writeUInt32BE(length >>> 0, 0)
  return Buffer.concat([head, body])
}

/** `bytes` cut at `cuts` (fractions of its length), as a peer's writes would arrive. */
function chunked (bytes: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map(c => Math.floor(c * bytes.length)))].filter(i => i > 0 && i < bytes.length).sort((a, b) => a - b)
  const chunks: Buffer[] = []
  let from = 0
  for (const i of [...at, bytes.length]) {
    chunks.push(bytes.subarray(from, i))
    from = i
  }
  return chunks.filter(c => c.length > 0)
}

/** Sends `chunks` on one end of a fresh stream pair and closes it; reads frames of at most `maxBody` on the other. */
async function readFrames (chunks: Buffer[], maxBody: number): Promise<Uint8Array[]> {
  const [outbound, inbound] = await streamPair()
  const framed = new FramedStream(inbound, { maxBuffered: 1 << 20, writeTimeoutMs: 5000 })
  const sending = (async () => {
    for (const chunk of chunks) {
      if (!outbound.send(chunk)) await new Promise(resolve => outbound.addEventListener('drain', resolve, { once: true }))
    }
    await outbound.close()
  })()
  const frames: Uint8Array[] = []
  try {
    for (;;) {
      const frame = await framed.read(maxBody, 5000)
      if (frame === undefined) break
      frames.push(Uint8Array.from(frame))
    }
  } finally {
    await sending.catch(() => {})
    inbound.abort(new Error('test done'))
  }
  return frames
}

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 })

test('fuzz: frames arrive whole and in order however the stream cuts them', async () => {
  await fc.assert(fc.asyncProperty(fc.array(fc.uint8Array({ minLength: 1, maxLength: 300 }), { maxLength: 6 }), cuts, async (bodies, cutAt) => {
    const frames = await readFrames(chunked(Buffer.concat(bodies.map(b => prefixed(b.length, b))), cutAt), 300)
    assert.deepEqual(frames.map(f => Buffer.from(f).toString('hex')), bodies.map(b => Buffer.from(b).toString('hex')))
  }), { seed: SEED, numRuns: 60 })
})

test('fuzz: frames that lie about their length, are too large or end early are protocol errors', async () => {
  // Declared lengths from 1 up, bodies shorter, longer or as long as declared.
  const frame = fc.tuple(fc.integer({ min: 1, max: 2 ** 32 - 1 }).map(n => n % 5 === 0 ? n : (n % 400) + 1), fc.uint8Array({ maxLength: 400 }))
  await fc.assert(fc.asyncProperty(fc.array(frame, { minLength: 1, maxLength: 4 }), cuts, async (frames, cutAt) => {
    const wire = Buffer.concat(frames.map(([length, body]) => prefixed(length, body)))
    await okOrRefused(async () => await readFrames(chunked(wire, cutAt), 256), ['ERR_PROTOCOL'])
  }), { seed: SEED, numRuns: 60 })
})

// A zero-length frame, and any bytes at all (which include zero-length frames): a
// zero-length frame last on the stream threw a TypeError (issue 13, item 12); now
// it is a protocol error like any other malformed frame.
test('fuzz: zero-length frames and arbitrary bytes are frames or protocol errors', async () => {
  await okOrRefused(async () => await readFrames([prefixed(0, new Uint8Array())], 256), ['ERR_PROTOCOL'])
  await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), cuts, async (bytes, cutAt) => {
    await okOrRefused(async () => await readFrames(chunked(Buffer.from(bytes), cutAt), 256), ['ERR_PROTOCOL'])
  }), { seed: SEED, numRuns: 60 })
})

const LIMITS = { maxFilesPerJob: 5, maxUrlLength: 200, maxNameLength: 20 }
const REQUEST_CODES = ['ERR_INVALID_REQUEST', 'ERR_TOO_MANY_FILES', 'ERR_URL_TOO_LONG', 'ERR_NAME_TOO_LONG']
const dir = tmpdir()

/** Values near what the API expects, and anything JSON can hold. */
const junk = fc.jsonValue({ maxDepth: 2 })
const fileEntry = fc.record({
  url: fc.oneof(fc.constantFrom('http://origin/f', 'https://o.example/a?b#c', 'ftp://x/y', 'http://[::1', '', 'http://h/' + 'x'.repeat(300)), fc.webUrl(), junk),
  path: fc.oneof(fc.constantFrom(join(dir, 'a.bin'), join(dir, 'b.bin'), dir, 'relative', '/no/such/dir/f', `${dir}/x\0y`, join(dir, '.', 'a.bin')), junk),
  sha256: fc.oneof(fc.constant(undefined), fc.stringMatching(/^[0-9a-fA-F]{64}$/), junk)
}, { requiredKeys: [] })
/** Key names that are also Object.prototype's, which a lookup table must not mistake for its own. */
const keyish = fc.constantFrom('retryMinMs', 'retryMaxMs', 'noProgressTimeoutMs', 'maxDownloadTimeMs', 'toString', 'constructor', '__proto__', 'valueOf', 'other')
/** Bodies the API should accept, so the property also checks what passes. */
const validJobs = fc.record({
  name: fc.string({ maxLength: 20 }),
  priority: fc.constantFrom(...PRIORITIES),
  files: fc.subarray([join(dir, 'a.bin'), join(dir, 'b.bin'), join(dir, 'c.bin')], { minLength: 1 })
    .chain(paths => fc.tuple(...paths.map(path => fc.record({ url: fc.webUrl(), path: fc.constant(path) })))),
  autoComplete: fc.boolean(),
  limits: fc.record({ retryMinMs: fc.integer({ min: 1, max: 1000 }), noProgressTimeoutMs: fc.integer({ min: 1, max: 10 ** 6 }) }, { requiredKeys: [] })
}, { requiredKeys: ['files'] })
const jobBodies = fc.oneof(junk, validJobs, fc.record({
  name: fc.oneof(fc.string({ maxLength: 30 }), junk),
  type: fc.oneof(fc.constantFrom('download', 'preload'), junk),
  priority: fc.oneof(fc.constantFrom(...PRIORITIES), junk),
  files: fc.oneof(fc.array(fileEntry, { maxLength: 7 }), junk),
  autoComplete: fc.oneof(fc.boolean(), junk),
  start: fc.oneof(fc.boolean(), junk),
  notify: fc.oneof(fc.record({ onComplete: fc.oneof(fc.array(fc.string(), { maxLength: 3 }), junk), url: fc.oneof(fc.webUrl(), junk) }, { requiredKeys: [] }), junk),
  limits: fc.oneof(fc.dictionary(keyish, fc.oneof(fc.integer({ min: -5, max: 10 ** 6 }), junk), { maxKeys: 4 }), junk)
}, { requiredKeys: [] }))

/** What a body that passed validation must look like. */
function checkJob (job: NonNullable<ReturnType<typeof validateCreateJob>>): void {
  assert.ok(job.files.length >= 1 && job.files.length <= LIMITS.maxFilesPerJob)
  for (const f of job.files) {
    assert.match(f.url, /^https?:\/\//)
    if (job.type === 'preload') assert.equal(f.path, undefined, 'a preload job has no destination')
    else assert.ok(f.path !== undefined && f.path.startsWith('/') && !f.path.includes('\0'))
  }
  if (job.priority !== undefined) assert.ok(PRIORITIES.includes(job.priority))
  for (const [key, value] of Object.entries(job.limits ?? {})) {
    assert.ok(['retryMinMs', 'retryMaxMs', 'noProgressTimeoutMs', 'maxDownloadTimeMs'].includes(key), `unknown limit ${key} accepted`)
    assert.ok(Number.isSafeInteger(value) && value >= 0)
  }
}

test('fuzz: job request bodies are validated into well-formed jobs or refused with a request error', async () => {
  let accepted = 0
  await fc.assert(fc.asyncProperty(jobBodies.filter(b => !JSON.stringify(b).includes('"limits"') || !/toString|constructor|valueOf/.test(JSON.stringify(b))), async body => {
    // Through JSON, as the API receives it.
    const parsed = JSON.parse(JSON.stringify(body ?? null)) as unknown
    const job = await okOrRefused(() => validateCreateJob(parsed, LIMITS), REQUEST_CODES)
    if (job !== undefined) {
      checkJob(job)
      accepted++
    }
    await okOrRefused(() => validateAddFiles(parsed, LIMITS, [join(dir, 'a.bin')]), REQUEST_CODES)
    const priority = await okOrRefused(() => validatePriority(parsed), REQUEST_CODES)
    if (priority !== undefined) assert.ok(PRIORITIES.includes(priority))
  }), RUNS)
  assert.ok(accepted > 0, 'some generated bodies were valid jobs')
})

// Job limits named like Object.prototype's members (toString, constructor, valueOf)
// were accepted: the table of minimums in validate.ts is a plain object, so the
// lookup found the inherited function. The lookup now takes own keys only.
test('fuzz: job limits named like Object.prototype members are refused', async () => {
  await fc.assert(fc.asyncProperty(fc.dictionary(keyish, fc.integer({ min: 1, max: 10 ** 6 }), { minKeys: 1, maxKeys: 3 }), async limits => {
    const body = JSON.parse(JSON.stringify({ files: [{ url: 'http://origin/f', path: join(dir, 'a.bin') }], limits })) as unknown
    const job = await okOrRefused(() => validateCreateJob(body, LIMITS), REQUEST_CODES)
    if (job !== undefined) checkJob(job)
  }), RUNS)
})
