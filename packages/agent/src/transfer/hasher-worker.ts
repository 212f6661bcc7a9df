// Worker thread of WholeFileHasher: reads a file front to back as the main thread
// reports its prefix complete, and hashes it. Runs off the event loop that moves bytes.
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { parentPort, workerData } from 'node:worker_threads'

interface Advance { type: 'advance', upTo: number }
interface Finish { type: 'finish', size: number }

const { path } = workerData as { path: string }
const hash = createHash('sha256')
const buffer = Buffer.allocUnsafe(4 * 1024 * 1024)
let hashedUpTo = 0
let target = 0
let finishAt = -1
let busy = false

const handle = await open(path, 'r')

async function pump (): Promise<void> {
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
      parentPort!.postMessage({ type: 'digest', hex: hash.digest('hex') })
    }
  } catch (err) {
    parentPort!.postMessage({ type: 'error', message: (err as Error).message })
  } finally {
    busy = false
  }
}

parentPort!.on('message', (msg: Advance | Finish) => {
  if (msg.type === 'advance') target = Math.max(target, msg.upTo)
  else {
    finishAt = msg.size
    target = Math.max(target, msg.size)
  }
  void pump()
})
parentPort!.postMessage({ type: 'ready' })
