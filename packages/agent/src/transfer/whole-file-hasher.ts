import { Worker } from 'node:worker_threads'

/**
 * Computes a file's SHA-256 while it is being written, off the main thread: the
 * caller reports how far the file is complete from its start (`advance`), a worker
 * reads and hashes up to there (from the page cache), and `finish` returns the
 * digest of the whole file. Blocks may complete in any order; only the contiguous
 * prefix is hashed, so memory stays flat. After a restart, hashing starts over from
 * byte 0 of the partial file, which is what lets the final check catch bytes that
 * did not survive a crash.
 */
export class WholeFileHasher {
  private readonly worker: Worker
  private result?: Promise<string>
  private resolve?: (hex: string) => void
  private reject?: (err: Error) => void
  private failure?: Error

  constructor (path: string) {
    this.worker = new Worker(new URL('./hasher-worker.js', import.meta.url), { workerData: { path } })
    this.worker.unref()
    this.worker.on('message', (msg: { type: string, hex?: string, message?: string }) => {
      if (msg.type === 'digest') this.resolve?.(msg.hex!)
      else if (msg.type === 'error') this.fail(new Error(`hashing the partial file failed: ${msg.message}`))
    })
    this.worker.on('error', (err) => this.fail(err))
  }

  private fail (err: Error): void {
    this.failure = err
    this.reject?.(err)
  }

  /** The first `upTo` bytes of the file are final. */
  advance (upTo: number): void {
    this.worker.postMessage({ type: 'advance', upTo })
  }

  /** Resolves with the hex SHA-256 of the first `size` bytes once they are all hashed. */
  async finish (size: number): Promise<string> {
    if (this.failure !== undefined) throw this.failure
    this.result ??= new Promise<string>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
      this.worker.postMessage({ type: 'finish', size })
    })
    try {
      return await this.result
    } finally {
      await this.close()
    }
  }

  async close (): Promise<void> {
    await this.worker.terminate()
  }
}
