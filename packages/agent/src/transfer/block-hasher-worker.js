// Worker thread of BlockHasher: SHA-256 of blocks whose memory is transferred in and
// handed back, so that verification costs the transferring thread no hashing and no
// copy. Plain JavaScript on purpose: see hasher-worker.js.
// @ts-check
import { createHash } from 'node:crypto'
import { parentPort } from 'node:worker_threads'

const port = /** @type {import('node:worker_threads').MessagePort} */ (parentPort)

port.on('message', (/** @type {{ id: number, buffer: ArrayBuffer, length: number }} */ { id, buffer, length }) => {
  const digest = createHash('sha256').update(new Uint8Array(buffer, 0, length)).digest()
  const out = new Uint8Array(32)
  out.set(digest)
  port.postMessage({ id, buffer, digest: out.buffer }, [buffer, out.buffer])
})
