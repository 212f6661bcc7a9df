import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { parseContentRange } from '@canopy/core'
import { JobErrorCode, TransferError } from '../errors.ts'
import type { ReadPacer } from '../bandwidth/pacer.ts'

/**
 * The fast path for the one request that moves almost all the bytes: an HTTP/1.1
 * `GET` with `Range` over plain TCP, whose response body the kernel reads straight
 * into the caller's block buffers (`net.Socket`'s `onread`), with keep-alive.
 *
 * Why not undici for this: every socket read through a stream allocates a new
 * 64 KiB buffer that is then copied into the block; at hundreds of MiB/s the
 * garbage alone cost the agent ~0.9 ms of garbage-collector CPU per MiB on the build
 * machines, and an onread socket measured ~30% faster than undici's `request` for
 * the same ranges. Everything that is not a plain
 * `206` with a `Content-Length` (a redirect, an error, a server that ignores Range,
 * chunked encoding, https) is answered `'fallback'`, and the caller repeats the
 * request through undici, which handles the general case. Bytes are verified by
 * digest afterwards either way, so a parsing mistake here cannot reach a file.
 * (The measurements are in the commit that introduced this file.)
 */
export class RangeClient {
  private readonly idle = new Map<string, Connection[]>()
  private readonly open = new Map<string, number>()
  private readonly waiting = new Map<string, Array<() => void>>()
  private readonly maxPerOrigin: number
  private readonly timeoutMs: number
  private closed = false

  constructor (options: { maxPerOrigin: number, timeoutMs: number }) {
    this.maxPerOrigin = options.maxPerOrigin
    this.timeoutMs = options.timeoutMs
  }

  /**
   * Fetches bytes [offset, offset + total length of `buffers`) of `url` into
   * `buffers`, in order, calling `onFilled(k)` as soon as `buffers[k]` is full.
   * Resolves 'done' when all are filled, or 'fallback' (before filling any) when
   * the response is not one this path handles. With a `pacer`, body reads are
   * paced: the socket stops reading while the pacer says wait (see ReadPacer).
   */
  async get (url: URL, offset: number, buffers: Buffer[], headers: Record<string, string>,
    signal: AbortSignal, onFilled: (k: number) => void, expectedTotal?: number, pacer?: ReadPacer): Promise<'done' | 'fallback'> {
    if (url.protocol !== 'http:' || this.closed) return 'fallback'
    const window = pacer?.window
    const length = buffers.reduce((sum, b) => sum + b.length, 0)
    if (window === undefined || window.requestSize() >= length) {
      const release = await window?.acquire(length, signal)
      try {
        return await this.getOnce(url, offset, buffers, headers, signal, onFilled, expectedTotal, pacer)
      } finally {
        release?.()
      }
    }
    // Windowed (a background transfer): the span goes as several smaller requests, each
    // sent only when it fits in the path's window of bytes requested and not yet
    // received. What the origin may have in flight toward us is then bounded by the
    // window whatever TCP's windows are, and so is the queue it can build.
    let at = 0
    let k = 0
    let inK = 0
    while (at < length) {
      const size = Math.min(length - at, Math.max(1, window.requestSize()))
      const slices: Array<{ view: Buffer, k: number, ends: boolean }> = []
      for (let left = size; left > 0;) {
        const take = Math.min(left, buffers[k].length - inK)
        slices.push({ view: buffers[k].subarray(inK, inK + take), k, ends: inK + take === buffers[k].length })
        left -= take
        inK += take
        if (inK === buffers[k].length) {
          k++
          inK = 0
        }
      }
      const release = await window.acquire(size, signal)
      try {
        const result = await this.getOnce(url, offset + at, slices.map(x => x.view), headers, signal, j => { if (slices[j].ends) onFilled(slices[j].k) }, expectedTotal, pacer)
        if (result === 'fallback') {
          if (at === 0) return 'fallback'
          throw new TransferError(JobErrorCode.ProtocolViolation, 'the origin stopped answering range requests mid-transfer', { transient: true, url: url.toString() })
        }
      } finally {
        release()
      }
      at += size
    }
    return 'done'
  }

  private async getOnce (url: URL, offset: number, buffers: Buffer[], headers: Record<string, string>,
    signal: AbortSignal, onFilled: (k: number) => void, expectedTotal?: number, pacer?: ReadPacer): Promise<'done' | 'fallback'> {
    const length = buffers.reduce((sum, b) => sum + b.length, 0)
    const head = requestHead(url, offset, length, headers)
    for (let attempt = 0; ; attempt++) {
      const { conn, reused } = await this.checkout(url, signal)
      let reusable = false
      try {
        const outcome = await conn.request(head, offset, length, buffers, onFilled, signal, expectedTotal, pacer)
        reusable = outcome.reusable
        return outcome.result
      } catch (err) {
        // A kept-alive connection the server closed just as we reused it: say
        // nothing was lost and try once more on a fresh one, as HTTP clients do.
        if (reused && attempt === 0 && conn.unanswered && !signal.aborted) continue
        throw err
      } finally {
        this.checkin(url.host, conn, reusable)
      }
    }
  }

  close (): void {
    this.closed = true
    for (const list of this.idle.values()) for (const conn of list) conn.destroy()
    this.idle.clear()
  }

  private async checkout (url: URL, signal: AbortSignal): Promise<{ conn: Connection, reused: boolean }> {
    const key = url.host
    for (;;) {
      signal.throwIfAborted()
      const list = this.idle.get(key)
      while (list !== undefined && list.length > 0) {
        const conn = list.pop()!
        if (conn.alive) return { conn, reused: true }
        this.open.set(key, (this.open.get(key) ?? 1) - 1)
      }
      if ((this.open.get(key) ?? 0) < this.maxPerOrigin) {
        this.open.set(key, (this.open.get(key) ?? 0) + 1)
        try {
          return { conn: await Connection.open(url, this.timeoutMs, signal), reused: false }
        } catch (err) {
          this.open.set(key, (this.open.get(key) ?? 1) - 1)
          // The slot is free again: let a waiter try.
          this.waiting.get(key)?.shift()?.()
          throw err
        }
      }
      await new Promise<void>((resolve, reject) => {
        const queue = this.waiting.get(key) ?? []
        const wake = (): void => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        }
        const onAbort = (): void => {
          queue.splice(queue.indexOf(wake), 1)
          reject(signal.reason)
        }
        signal.addEventListener('abort', onAbort, { once: true })
        queue.push(wake)
        this.waiting.set(key, queue)
      })
    }
  }

  private checkin (key: string, conn: Connection, reusable: boolean): void {
    if (reusable && conn.alive && !this.closed) {
      const list = this.idle.get(key) ?? []
      list.push(conn)
      this.idle.set(key, list)
    } else {
      conn.destroy()
      this.open.set(key, (this.open.get(key) ?? 1) - 1)
    }
    this.waiting.get(key)?.shift()?.()
  }
}

function requestHead (url: URL, offset: number, length: number, headers: Record<string, string>): string {
  let head = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
    `Range: bytes=${offset}-${offset + length - 1}\r\nAccept-Encoding: identity\r\nUser-Agent: canopy-agent\r\n`
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new TransferError(JobErrorCode.ProtocolViolation, `header ${name} holds a line break`, { transient: false })
    head += `${name}: ${value}\r\n`
  }
  return head + '\r\n'
}

const MAX_HEAD = 16 * 1024

interface Exchange {
  offset: number
  length: number
  /** The file's size the caller expects (Content-Range's complete length); another is a changed file. */
  expectedTotal?: number
  buffers: Buffer[]
  onFilled: (k: number) => void
  pacer?: ReadPacer
  /** Index of the buffer being filled, and bytes in it. */
  k: number
  filled: number
  /** Response head bytes so far (in the connection's head buffer). */
  headBytes: number
  inBody: boolean
  finish: (outcome: { result: 'done' | 'fallback', reusable: boolean }) => void
  fail: (err: Error) => void
}

/** One keep-alive TCP connection whose reads land where the current exchange says. */
class Connection {
  private readonly socket: Socket
  private readonly head: Buffer
  private exchange?: Exchange
  alive = true
  /** True while the current request has had no byte of response. */
  unanswered = false
  private readonly url: URL
  private keepAlive = true
  /** Set while the pacer holds reading (the socket is paused). */
  private resumeTimer?: NodeJS.Timeout

  private constructor (url: URL, socket: Socket, head: Buffer) {
    this.url = url
    this.socket = socket
    this.head = head
  }

  static async open (url: URL, timeoutMs: number, signal: AbortSignal): Promise<Connection> {
    // The socket asks for its first buffer while it is being built, before the
    // connection object exists: hence the holder.
    const ref: { conn?: Connection } = {}
    const head = Buffer.allocUnsafeSlow(MAX_HEAD)
    const socket = connect({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port === '' ? 80 : url.port),
      noDelay: true,
      onread: {
        // Asked after every read (and once at the start): where the next bytes go.
        buffer: () => ref.conn?.target() ?? head,
        callback: (bytes: number, buffer: Uint8Array): boolean => {
          ref.conn?.onBytes(bytes, buffer)
          return true
        }
      }
    })
    const c = new Connection(url, socket, head)
    ref.conn = c
    socket.setTimeout(timeoutMs)
    socket.on('timeout', () => c.abort(new TransferError(JobErrorCode.Network, `no data from the origin for ${timeoutMs} ms`, { transient: true, url: url.toString() })))
    socket.on('error', (err) => c.abort(err))
    socket.on('close', () => c.abort(new TransferError(JobErrorCode.Network, 'the origin closed the connection', { transient: true, url: url.toString() })))
    await new Promise<void>((resolve, reject) => {
      const done = (err?: unknown): void => {
        signal.removeEventListener('abort', onAbort)
        socket.off('connect', onConnect)
        socket.off('error', done)
        socket.off('close', onClose)
        if (err === undefined) resolve()
        else {
          socket.destroy()
          reject(err)
        }
      }
      const onAbort = (): void => done(signal.reason)
      const onConnect = (): void => done()
      // A connect that never completes ends in the idle timeout, which only closes.
      const onClose = (): void => done(new TransferError(JobErrorCode.Network, `origin unreachable (no connection within ${timeoutMs} ms)`, { transient: true, url: url.toString() }))
      signal.addEventListener('abort', onAbort, { once: true })
      socket.once('connect', onConnect)
      socket.once('error', done)
      socket.once('close', onClose)
    })
    return c
  }

  async request (head: string, offset: number, length: number, buffers: Buffer[], onFilled: (k: number) => void,
    signal: AbortSignal, expectedTotal?: number, pacer?: ReadPacer): Promise<{ result: 'done' | 'fallback', reusable: boolean }> {
    return await new Promise((resolve, reject) => {
      const onAbort = (): void => this.abort(signal.reason as Error)
      const settle = (): void => {
        signal.removeEventListener('abort', onAbort)
        this.exchange = undefined
      }
      this.exchange = {
        offset,
        length,
        expectedTotal,
        buffers,
        onFilled,
        ...(pacer !== undefined ? { pacer } : {}),
        k: 0,
        filled: 0,
        headBytes: 0,
        inBody: false,
        finish: (outcome) => {
          settle()
          resolve(outcome)
        },
        fail: (err) => {
          settle()
          reject(err)
        }
      }
      this.unanswered = true
      signal.addEventListener('abort', onAbort, { once: true })
      if (signal.aborted) onAbort()
      else this.socket.write(head)
    })
  }

  /** The memory the next read goes to. */
  private target (): Uint8Array {
    const x = this.exchange
    if (x === undefined || !x.inBody) return this.head.subarray(x?.headBytes ?? 0)
    const buffer = x.buffers[x.k]
    // Paced: one read takes at most what the pacer allows now (small reads, small bursts).
    return x.pacer === undefined ? buffer.subarray(x.filled) : buffer.subarray(x.filled, x.filled + Math.max(1, x.pacer.readSize()))
  }

  /** Body bytes were read: the pacer may stop reading for a while. */
  private paced (x: Exchange, bytes: number): void {
    if (x.pacer === undefined || bytes === 0) return
    const wait = x.pacer.consumed(bytes)
    if (wait <= 0 || this.resumeTimer !== undefined) return
    this.socket.pause()
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = undefined
      if (this.alive) this.socket.resume()
    }, wait)
  }

  private onBytes (bytes: number, buffer: Uint8Array): void {
    const x = this.exchange
    if (x === undefined) {
      // Bytes nobody asked for: the stream is out of step; never reuse it.
      this.abort(new TransferError(JobErrorCode.ProtocolViolation, 'the origin sent bytes outside a response', { transient: true, url: this.url.toString() }))
      return
    }
    this.unanswered = false
    if (x.inBody) {
      x.filled += bytes
      this.paced(x, bytes)
      this.advance(x)
      return
    }
    if (buffer.buffer !== this.head.buffer) {
      this.abort(new Error('read landed outside the head buffer'))
      return
    }
    x.headBytes += bytes
    const end = this.head.subarray(0, x.headBytes).indexOf('\r\n\r\n')
    if (end < 0) {
      if (x.headBytes >= MAX_HEAD) this.abort(new TransferError(JobErrorCode.ProtocolViolation, 'response head too large', { transient: true, url: this.url.toString() }))
      return
    }
    const verdict = this.checkHead(this.head.toString('latin1', 0, end), x)
    if (verdict !== 'ok') {
      // Not ours to read: give the request back to the general client.
      x.finish({ result: 'fallback', reusable: false })
      this.destroy()
      return
    }
    x.inBody = true
    // Body bytes that came in with the head.
    let extra = this.head.subarray(end + 4, x.headBytes)
    this.paced(x, Math.min(extra.length, x.length))
    if (extra.length > x.length) {
      this.abort(new TransferError(JobErrorCode.ProtocolViolation, 'the origin sent more bytes than asked for', { transient: true, url: this.url.toString() }))
      return
    }
    while (extra.length > 0) {
      const room = x.buffers[x.k].length - x.filled
      const take = Math.min(room, extra.length)
      x.buffers[x.k].set(extra.subarray(0, take), x.filled)
      x.filled += take
      extra = extra.subarray(take)
      if (!this.advance(x)) return
    }
    if (x.length === 0) x.finish({ result: 'done', reusable: true })
  }

  /** Hands on full buffers; false once the exchange is over. */
  private advance (x: Exchange): boolean {
    while (x.filled === x.buffers[x.k].length) {
      x.onFilled(x.k)
      x.k++
      x.filled = 0
      if (x.k === x.buffers.length) {
        x.finish({ result: 'done', reusable: this.keepAlive })
        return false
      }
    }
    return true
  }

  private checkHead (head: string, x: Exchange): 'ok' | 'other' {
    const lines = head.split('\r\n')
    const status = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0])
    if (status === null || status[2] !== '206') return 'other'
    const fields = new Map<string, string>()
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':')
      if (colon > 0) fields.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim())
    }
    if (fields.has('transfer-encoding')) return 'other'
    if (Number(fields.get('content-length')) !== x.length) return 'other'
    const range = parseContentRange(fields.get('content-range'))
    if (range === undefined || range.first !== x.offset || range.last !== x.offset + x.length - 1) return 'other'
    if (x.expectedTotal !== undefined && range.total !== undefined && range.total !== x.expectedTotal) return 'other'
    const connection = (fields.get('connection') ?? '').toLowerCase()
    this.keepAlive = status[1] === '1' ? connection !== 'close' : connection === 'keep-alive'
    return 'ok'
  }

  private abort (err: Error): void {
    this.alive = false
    clearTimeout(this.resumeTimer)
    this.socket.destroy()
    this.exchange?.fail(err)
  }

  destroy (): void {
    this.alive = false
    clearTimeout(this.resumeTimer)
    this.socket.destroy()
  }
}
