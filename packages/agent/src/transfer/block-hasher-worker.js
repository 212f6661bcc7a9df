// Worker thread of BlockHasher: SHA-256 of blocks whose memory is transferred in and
// handed back, so that verification costs the transferring thread no hashing and no
// copy. Given a file, an offset and the expected digest, it also writes a block that
// matches, here, with synchronous writes: the event loop then spends one message per
// block instead of a hash round trip plus a thread-pool write. The same thread keeps
// the whole-file digests placed on it (digest-worker.js, imported below). Plain
// JavaScript on purpose: see digest-worker.js.
// @ts-check
import { createHash, timingSafeEqual } from 'node:crypto'
import { writeSync } from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'
import './digest-worker.js'

const port = /** @type {import('node:worker_threads').MessagePort} */ (parentPort)
const { writePiece } = /** @type {{ writePiece: number }} */ (workerData)

/**
 * @typedef {import('./hasher-protocol.ts').HasherRequest} HasherRequest
 * @typedef {import('./hasher-protocol.ts').BlockReply} BlockReply
 */

port.on('message', (/** @type {HasherRequest} */ msg) => {
  if ('type' in msg) return // a whole-file digest message: digest-worker.js
  const { id, buffer, length, write } = msg
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
  }
  const out = new Uint8Array(32)
  out.set(digest)
  /** @type {BlockReply} */
  const reply = { id, buffer, digest: out.buffer, written, error }
  port.postMessage(reply, [buffer, out.buffer])
})
