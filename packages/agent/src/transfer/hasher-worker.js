// Worker thread of WholeFileHasher: reads a file front to back as the main thread
// reports its prefix complete, and hashes it, off the event loop that moves bytes.
// Plain JavaScript on purpose: a .ts worker would load Node's type stripper into
// its own isolate (~18 MiB more resident memory per worker).
// @ts-check
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { parentPort, workerData } from 'node:worker_threads'

const port = /** @type {import('node:worker_threads').MessagePort} */ (parentPort)
const { path } = /** @type {{ path: string }} */ (workerData)
const hash = createHash('sha256')
const buffer = Buffer.allocUnsafe(1024 * 1024)
let hashedUpTo = 0
let target = 0
let finishAt = -1
let busy = false

const handle = await open(path, 'r')

async function pump () {
  if (busy) return
  busy = true
  try {
    while (hashedUpTo < target) {
      const want = Math.min(buffer.length, target - hashedUpTo)
      const { bytesRead } = await handle.read(buffer, 0, want, hashedUpTo)
      if (bytesRead === 0) throw new Error(`file ended at ${hashedUpTo} bytes, expected ${target}`)
      hash.update(buffer.subarray(0, bytesRead))
      hashedUpTo += bytesRead
    }
    if (finishAt >= 0 && hashedUpTo === finishAt) {
      await handle.close()
      port.postMessage({ type: 'digest', hex: hash.digest('hex') })
    }
  } catch (err) {
    port.postMessage({ type: 'error', message: /** @type {Error} */ (err).message })
  } finally {
    busy = false
  }
}

port.on('message', (/** @type {{ type: 'advance' | 'finish', upTo?: number, size?: number }} */ msg) => {
  if (msg.type === 'advance') target = Math.max(target, msg.upTo ?? 0)
  else {
    finishAt = msg.size ?? 0
    target = Math.max(target, finishAt)
  }
  void pump()
})
