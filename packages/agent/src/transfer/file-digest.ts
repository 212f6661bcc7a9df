import type { Worker } from 'node:worker_threads'
import type { DigestReply, DigestRequest } from './hasher-protocol.ts'

/**
 * The SHA-256 of a file being written: the caller reports how far the file is
 * complete from its start (`advance`) and asks for the digest of the whole
 * (`finish`). Blocks may complete in any order; only the contiguous prefix is
 * hashed, so memory stays flat. Hashing always starts from byte 0 of the file, so
 * after a restart what was already there is read back and checked too: that is
 * what lets the final check catch bytes that did not survive a crash.
 */
export interface FileDigest {
  /** The first `upTo` bytes of the file are final. */
  advance: (upTo: number) => void
  /** Resolves with the hex SHA-256 of the first `size` bytes once they are all hashed. */
  finish: (size: number) => Promise<string>
  /** Ends the session (after finish, or to abandon it). */
  close: () => Promise<void>
}


class Session implements FileDigest {
  private readonly owner: FileDigests
  readonly id: number
  readonly worker: Worker
  private result?: { resolve: (hex: string) => void, reject: (err: Error) => void }
  private failure?: Error
  private closed = false

  constructor (owner: FileDigests, id: number, worker: Worker, path: string) {
    this.owner = owner
    this.id = id
    this.worker = worker
    send(worker, { type: 'open', session: id, path })
  }

  advance (upTo: number): void {
    if (!this.closed && this.failure === undefined) send(this.worker, { type: 'advance', session: this.id, upTo })
  }

  async finish (size: number): Promise<string> {
    if (this.failure !== undefined) throw this.failure
    if (this.closed) throw new Error('the file digest was closed')
    return await new Promise<string>((resolve, reject) => {
      this.result = { resolve, reject }
      send(this.worker, { type: 'finish', session: this.id, size })
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.owner.forget(this)
    send(this.worker, { type: 'close', session: this.id })
  }

  settle (reply: DigestReply): void {
    if (reply.type === 'digest') this.result?.resolve(reply.hex)
    else this.fail(new Error(`hashing the partial file failed: ${reply.message}`))
  }

  fail (err: Error): void {
    this.failure ??= err
    this.result?.reject(err)
  }
}

/**
 * The whole-file digest sessions of a BlockHasher: each runs on the worker thread
 * `pickWorker` gives when it opens (see BlockHasher.fileDigest), which answers
 * through `settle`. A worker that dies fails its sessions (`failWorker`).
 */
export class FileDigests {
  private readonly sessions = new Map<number, Session>()
  private readonly pickWorker: () => Worker
  private nextSession = 0

  constructor (pickWorker: () => Worker) {
    this.pickWorker = pickWorker
  }

  open (path: string): FileDigest {
    const session = new Session(this, this.nextSession++, this.pickWorker(), path)
    this.sessions.set(session.id, session)
    return session
  }

  /** A reply from a worker (a message with a `type`). */
  settle (reply: DigestReply): void {
    this.sessions.get(reply.session)?.settle(reply)
  }

  failWorker (worker: Worker, err: Error): void {
    for (const session of this.sessions.values()) if (session.worker === worker) session.fail(err)
  }

  /** @internal A session that ended. */
  forget (session: Session): void {
    this.sessions.delete(session.id)
  }
}

function send (worker: Worker, message: DigestRequest): void {
  worker.postMessage(message)
}
