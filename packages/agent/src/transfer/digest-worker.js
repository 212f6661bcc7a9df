// Whole-file digests on a worker thread (FileDigests): the SHA-256 of files being
// written, one session per file. Loaded by block-hasher-worker.js (the hashing
// workers also keep digests), or alone (when blocks are hashed inline). The main
// thread reports how far each file is complete from its start; the worker reads that
// prefix back (normally from the page cache) and hashes it, off the event loop that
// moves bytes. Plain JavaScript on purpose: a .ts worker would load Node's type
// stripper into its own isolate (~18 MiB more resident memory).
// @ts-check
import { createHash } from 'node:crypto'
import { closeSync, openSync, readlinkSync, readSync } from 'node:fs'
import { setPriority } from 'node:os'
import { parentPort, workerData } from 'node:worker_threads'

const port = /** @type {import('node:worker_threads').MessagePort} */ (parentPort)

// Background work at a lower CPU priority: on Linux a thread has its own nice value,
// set through its thread id (/proc/thread-self names it). Ignored where unsupported.
const nice = /** @type {{ nice?: number } | undefined} */ (workerData)?.nice ?? 0
if (nice !== 0 && process.platform === 'linux') {
  try {
    setPriority(Number(readlinkSync('/proc/thread-self').split('/').pop()), nice)
  } catch {
    // Not fatal: the work runs at the agent's priority.
  }
}

/**
 * @typedef {import('./hasher-protocol.ts').HasherRequest} HasherRequest
 * @typedef {import('./hasher-protocol.ts').DigestReply} DigestReply
 * @typedef {{ fd: number, hash: import('node:crypto').Hash, hashedUpTo: number, target: number, finishAt: number }} Session
 */

/** @type {Map<number, Session>} */
const sessions = new Map()
/** Where the bytes read back land to be hashed, shared by the sessions. */
const readBuffer = Buffer.allocUnsafe(1024 * 1024)
/** Sessions with bytes to hash, served a read at a time in turn. */
const ready = new Set()
let scheduled = false

port.on('message', (/** @type {HasherRequest} */ msg) => {
  if (!('type' in msg)) return // a block for block-hasher-worker.js
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
  ready.add(msg.session)
  schedule()
})

/**
 * Hashes in 1 MiB steps, one step per session in turn, going back to the message
 * queue between rounds: an `advance` or `close` is seen while a long prefix (a
 * resumed file of gigabytes) is being hashed, and no file waits for another.
 */
function schedule () {
  if (scheduled) return
  scheduled = true
  setImmediate(() => {
    scheduled = false
    for (const id of ready) {
      const session = sessions.get(id)
      if (session === undefined || !step(id, session)) ready.delete(id)
    }
    if (ready.size > 0) schedule()
  })
}

/** One read and hash; false when the session has nothing more to do for now. */
function step (/** @type {number} */ id, /** @type {Session} */ session) {
  try {
    if (session.hashedUpTo < session.target) {
      const want = Math.min(readBuffer.length, session.target - session.hashedUpTo)
      const got = readSync(session.fd, readBuffer, 0, want, session.hashedUpTo)
      if (got === 0) throw new Error(`the file ended at ${session.hashedUpTo} bytes, expected ${session.target}`)
      session.hash.update(readBuffer.subarray(0, got))
      session.hashedUpTo += got
    }
  } catch (err) {
    fail(id, err)
    return false
  }
  if (session.finishAt >= 0 && session.hashedUpTo >= session.finishAt) {
    end(id, session)
    port.postMessage(/** @type {DigestReply} */ ({ type: 'digest', session: id, hex: session.hash.digest('hex') }))
    return false
  }
  return session.hashedUpTo < session.target
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
  port.postMessage(/** @type {DigestReply} */ ({ type: 'error', session: id, message: /** @type {Error} */ (err).message }))
}
