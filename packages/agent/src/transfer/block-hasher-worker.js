// Worker thread of BlockHasher: SHA-256 of blocks whose memory is transferred in and
// handed back, so that verification costs the transferring thread no hashing and no
// copy. Given a file, an offset and the expected digest, it also writes a block that
// matches, here, with synchronous writes: the event loop then spends one message per
// block instead of a hash round trip plus a thread-pool write.
//
// It also keeps the whole-file digests of the files being written (FileDigest
// sessions): a block written at the point the file is hashed up to is hashed from
// memory, right after its write; whatever the main thread reports complete beyond
// that point (blocks that came out of order, blocks present from before a restart)
// is read back from the file. Plain JavaScript on purpose: a .ts worker would load
// Node's type stripper into its own isolate (~18 MiB more resident memory).
// @ts-check
import { createHash, timingSafeEqual } from 'node:crypto'
import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'

const port = /** @type {import('node:worker_threads').MessagePort} */ (parentPort)
const { writePiece } = /** @type {{ writePiece: number }} */ (workerData)

/**
 * @typedef {{ fd: number, position: number, expected: Uint8Array, session?: number }} WriteOrder
 * @typedef {{ id: number, buffer: ArrayBuffer, length: number, write?: WriteOrder }} BlockRequest
 * @typedef {{ type: 'open', session: number, path: string }
 *   | { type: 'advance', session: number, upTo: number }
 *   | { type: 'finish', session: number, size: number }
 *   | { type: 'close', session: number }} SessionRequest
 * @typedef {{ fd: number, hash: import('node:crypto').Hash, hashedUpTo: number, target: number, finishAt: number }} Session
 */

/** @type {Map<number, Session>} */
const sessions = new Map()
/** Where bytes read back from files land to be hashed; one per worker. */
const readBuffer = Buffer.allocUnsafe(1024 * 1024)

port.on('message', (/** @type {BlockRequest | SessionRequest} */ msg) => {
  if ('type' in msg) onSession(msg)
  else onBlock(msg)
})

/** @param {BlockRequest} request */
function onBlock ({ id, buffer, length, write }) {
  const bytes = new Uint8Array(buffer, 0, length)
  const digest = createHash('sha256').update(bytes).digest()
  let written = false
  /** @type {{ code?: string, message: string } | undefined} */
  let error
  if (write !== undefined && write.expected.length === digest.length && timingSafeEqual(digest, write.expected)) {
    try {
      // In pieces: see WRITE_PIECE in partial-file.ts.
      for (let done = 0; done < length;) {
        done += writeSync(write.fd, bytes, done, Math.min(writePiece, length - done), write.position + done)
      }
      written = true
    } catch (err) {
      const e = /** @type {NodeJS.ErrnoException} */ (err)
      error = { code: e.code, message: e.message }
    }
    const session = write.session === undefined ? undefined : sessions.get(write.session)
    if (written && session !== undefined && session.hashedUpTo === write.position) {
      // The next bytes of the file, still in memory: no read back.
      session.hash.update(bytes)
      session.hashedUpTo += length
    }
  }
  const out = new Uint8Array(32)
  out.set(digest)
  port.postMessage({ id, buffer, digest: out.buffer, written, error }, [buffer, out.buffer])
}

/** @param {SessionRequest} msg */
function onSession (msg) {
  if (msg.type === 'open') {
    try {
      sessions.set(msg.session, { fd: openSync(msg.path, 'r'), hash: createHash('sha256'), hashedUpTo: 0, target: 0, finishAt: -1 })
    } catch (err) {
      fail(msg.session, err)
    }
    return
  }
  const session = sessions.get(msg.session)
  if (session === undefined) return // failed or closed already
  if (msg.type === 'close') {
    end(msg.session, session)
    return
  }
  if (msg.type === 'advance') session.target = Math.max(session.target, msg.upTo)
  else {
    session.finishAt = msg.size
    session.target = Math.max(session.target, msg.size)
  }
  try {
    catchUp(session)
  } catch (err) {
    fail(msg.session, err)
    return
  }
  if (session.finishAt >= 0 && session.hashedUpTo >= session.finishAt) {
    end(msg.session, session)
    port.postMessage({ type: 'digest', session: msg.session, hex: session.hash.digest('hex') })
  }
}

/** Reads and hashes the file from where it is hashed up to, to the complete prefix. */
function catchUp (/** @type {Session} */ session) {
  while (session.hashedUpTo < session.target) {
    const want = Math.min(readBuffer.length, session.target - session.hashedUpTo)
    const got = readSync(session.fd, readBuffer, 0, want, session.hashedUpTo)
    if (got === 0) throw new Error(`the file ended at ${session.hashedUpTo} bytes, expected ${session.target}`)
    session.hash.update(readBuffer.subarray(0, got))
    session.hashedUpTo += got
  }
}

function end (/** @type {number} */ id, /** @type {Session} */ session) {
  sessions.delete(id)
  try {
    closeSync(session.fd)
  } catch {
    // Closing a read-only descriptor can only fail if it is already closed.
  }
}

function fail (/** @type {number} */ id, /** @type {unknown} */ err) {
  const session = sessions.get(id)
  if (session !== undefined) end(id, session)
  port.postMessage({ type: 'fileError', session: id, message: /** @type {Error} */ (err).message })
}
