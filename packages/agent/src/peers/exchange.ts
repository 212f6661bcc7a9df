import { timingSafeEqual } from 'node:crypto'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import {
  blockSpan, CanopyError, decodeMessage, encodeFrameParts, encodeMessage, EXCHANGE_PROTOCOL, ExchangeStatus, MAX_FRAME_BODY, MAX_REQUEST_BODY,
  MessageType, readProof, RESPONSE_HEAD_BYTES
} from '@canopy/core'
import type { ExchangeMessage, Logger, PublishedManifest } from '@canopy/core'
import { FramedStream } from './framing.ts'
import { Allowance, Counter, RateCounter, remoteAddress } from './serve-limits.ts'
import type { ServeLimits } from './serve-limits.ts'

export { Allowance, remoteAddress } from './serve-limits.ts'
export type { ServeLimits } from './serve-limits.ts'
import type { PeerLibp2p } from './node.ts'

/**
 * A serving stream that receives no whole request for this long is closed, even if
 * bytes trickle in (a request is at most 69 bytes: a peer that sends one byte now and
 * then must not hold a stream).
 */
const SERVER_IDLE_MS = 60_000
/** Requests of one stream being prepared or sent at once. */
const SERVER_PIPELINE = 8
/** How long a request may wait for its response. */
const RESPONSE_TIMEOUT_MS = 30_000
/**
 * The whole of one answer (head and body), from when it is the next one due: a peer
 * that sends a byte now and then no longer holds a transfer (issue 13: a frame header,
 * then a byte every 20 s, held a download at 0 B for as long as the peer stayed).
 * A have answer is a few KiB at most (one bit per block); a block is at most 16 MiB,
 * which 30 s allows at 0.53 MiB/s, far below any LAN.
 */
export const HAVE_ANSWER_DEADLINE_MS = 10_000
export const BLOCK_ANSWER_DEADLINE_MS = RESPONSE_TIMEOUT_MS

export const DEFAULT_SERVE_LIMITS: ServeLimits = {
  streamsPerPeer: 8,
  streamOpensPerSecond: 32,
  streamsPerAddress: 32,
  streams: 128,
  requestsPerPeer: 16,
  budgetBytes: 64 * 1024 * 1024,
  requestBufferBytes: 16 * 1024,
  writeTimeoutMs: RESPONSE_TIMEOUT_MS,
  requestTimeoutMs: SERVER_IDLE_MS
}

/**
 * Bytes a session buffers before pausing its stream (a frame being read may always be
 * buffered whole): eight 1 MiB answers, the pipeline of one transfer, arrive without
 * pausing, and a peer that pushes what was not asked for holds at most this (or one
 * frame) plus the stream's window.
 */
const SESSION_BUFFER_BYTES = 8 * 1024 * 1024

/** Content this agent can serve to peers, found by discovery id. */
export interface SharedContent {
  manifest: PublishedManifest
  /** The content key K (from the origin, with the manifest). */
  key: Uint8Array
  has: (index: number) => boolean
  /** Whether the agent is fetching the block from the origin right now (a claim peers respect). */
  fetching?: (index: number) => boolean
  /** The block's bytes, verified against the manifest (never unverified bytes). */
  read: (index: number) => Promise<Uint8Array>
  /** Called after a block was sent to `peer` (counters, cache recency). */
  served?: (peer: PeerId, bytes: number) => void
}

export interface BlockSource {
  lookup: (discoveryId: Uint8Array) => SharedContent | undefined
  /** Whether to serve this connection at all (false for a banned peer id or address). */
  admits?: (connection: Connection) => boolean
  /**
   * A strike against a peer that broke the protocol on a serving stream (a frame that
   * is not a request); repeated strikes ban it (sharing.ts), which closes its connections.
   */
  penalize?: (peer: PeerId, reason: string) => void
  /** The bandwidth policy's hold on serving (bandwidth/peer-serving.ts); none: serve at full speed. */
  servingGate?: {
    /** Whether to offer blocks to the peer at this IP address now (false: have answers offer none). */
    open: (address: string) => boolean
    /** Waits until a block of `bytes` may be sent; false: answer "Missing". */
    admit: (bytes: number, address: string, signal: AbortSignal) => Promise<boolean>
  }
}

function peerBytes (peer: PeerId): Uint8Array {
  return peer.toMultihash().bytes
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}

function bitfieldOf (content: SharedContent, test: (index: number) => boolean): Uint8Array {
  const count = content.manifest.blocks.length
  const bits = new Uint8Array(Math.ceil(count / 8))
  for (let i = 0; i < count; i++) if (test(i)) bits[i >> 3] |= 0x80 >> (i & 7)
  return bits
}

/** A proof that matches no key, compared when a discovery id is unknown (same work either way). */
const NO_KEY = new Uint8Array(32)

/**
 * Serves `/canopy/exchange/1.0.0`: a peer asks by discovery id only, with a proof
 * that it holds the content key; it gets the bitfield of blocks this agent can
 * serve, and blocks. A malformed, oversized or late request ends the stream (and is
 * logged against the peer); it never reaches the agent's other work. What serving
 * costs is bounded by `limits` (see ServeLimits); a peer that asks for content it
 * cannot prove it may read gets the same answer whether or not this agent holds it.
 */
export async function serveExchange (libp2p: PeerLibp2p, source: BlockSource, logger: Logger, limits: Partial<ServeLimits> = {}): Promise<void> {
  const server = new ExchangeServer(libp2p.peerId, source, logger, { ...DEFAULT_SERVE_LIMITS, ...limits })
  await libp2p.handle(EXCHANGE_PROTOCOL, (stream: Stream, connection: Connection) => {
    void server.serve(stream, connection)
  }, {
    // Further streams of one connection are reset by libp2p before they reach us.
    maxInboundStreams: server.limits.streamsPerPeer
  })
}

type ServedRequest = Extract<ExchangeMessage, { discoveryId: Uint8Array }>

interface Answer {
  parts: Promise<Uint8Array[]>
  /** Returns what the answer held (budget, the peer's request slot); once. */
  release: () => void
}

class ExchangeServer {
  readonly limits: ServeLimits
  private readonly self: Uint8Array
  private readonly source: BlockSource
  private readonly logger: Logger
  private readonly budget: Allowance
  private readonly requests = new Map<string, Allowance>()
  private readonly streamsByPeer = new Counter()
  private readonly opensByPeer = new RateCounter()
  private readonly streamsByAddress = new Counter()
  private streams = 0

  constructor (self: PeerId, source: BlockSource, logger: Logger, limits: ServeLimits) {
    this.self = peerBytes(self)
    this.source = source
    this.logger = logger
    this.limits = limits
    this.budget = new Allowance(limits.budgetBytes)
  }

  async serve (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    const address = remoteAddress(connection)
    let refusal: string | undefined
    const opens = this.opensByPeer.hit(peer)
    if (this.source.admits?.(connection) === false) refusal = 'banned'
    else if (opens > this.limits.streamOpensPerSecond) {
      refusal = 'too many streams opened in one second'
      // One strike per second over the rate (not one per stream refused).
      if (opens === this.limits.streamOpensPerSecond + 1) this.source.penalize?.(connection.remotePeer, `opened more than ${this.limits.streamOpensPerSecond} exchange streams in one second`)
    }
    else if (this.streamsByPeer.count(peer) >= this.limits.streamsPerPeer) refusal = 'too many streams from this peer'
    else if (this.streamsByAddress.count(address) >= this.limits.streamsPerAddress) refusal = 'too many streams from this address'
    else if (this.streams >= this.limits.streams) refusal = 'too many streams in all'
    if (refusal !== undefined) {
      this.logger.debug('exchange stream refused', { peer, address, why: refusal })
      stream.abort(new CanopyError('ERR_PEER_REFUSED', `exchange stream refused: ${refusal}`))
      return
    }
    this.streams++
    this.streamsByPeer.add(peer, 1)
    this.streamsByAddress.add(address, 1)
    let requests = this.requests.get(peer)
    if (requests === undefined) {
      requests = new Allowance(this.limits.requestsPerPeer)
      this.requests.set(peer, requests)
    }
    try {
      await this.serveStream(stream, connection, requests)
    } finally {
      this.streams--
      this.streamsByPeer.add(peer, -1)
      this.streamsByAddress.add(address, -1)
      if (requests.idle && this.streamsByPeer.count(peer) === 0) this.requests.delete(peer)
    }
  }

  /** The answer to one request: the parts of its frame, and what it holds until sent. */
  private async answer (request: ServedRequest, connection: Connection, asker: Uint8Array, signal: AbortSignal, holding: (units: number) => void): Promise<Uint8Array[]> {
    const content = this.source.lookup(request.discoveryId)
    // Not an oracle: a proof is checked (the same work) whether or not the content is
    // held, and a wrong proof is answered like unknown content. Only a member that
    // holds the content key learns that this agent holds the content.
    const proven = sameBytes(readProof(content?.key ?? NO_KEY, asker, this.self), request.proof)
    if (content === undefined || !proven) {
      return request.type === MessageType.HaveRequest
        ? encodeFrameParts({ type: MessageType.HaveResponse, status: ExchangeStatus.Unknown, blockCount: 0, bitfield: new Uint8Array(0), fetching: new Uint8Array(0) })
        : encodeFrameParts({ type: MessageType.BlockResponse, status: ExchangeStatus.Unknown, index: request.index, data: new Uint8Array(0) })
    }
    const count = content.manifest.blocks.length
    const gate = this.source.servingGate
    if (request.type === MessageType.HaveRequest) {
      const bytes = 2 * Math.ceil(count / 8)
      await this.budget.take(bytes, signal)
      holding(bytes)
      // Serving blocked by policy: offer nothing (a claim then answered "Missing" counts against us).
      const offering = gate?.open(remoteAddress(connection)) !== false
      const none = (): boolean => false
      return encodeFrameParts({ type: MessageType.HaveResponse, status: ExchangeStatus.Ok, blockCount: count, bitfield: bitfieldOf(content, offering ? content.has : none), fetching: bitfieldOf(content, offering ? content.fetching ?? none : none) })
    }
    const { index } = request
    const bytes = index < count ? blockSpan(index, content.manifest.size, content.manifest.blockSize).length : 0
    // The serving caps, before the block holds any budget.
    if (index >= count || !content.has(index) || (gate !== undefined && !await gate.admit(bytes, remoteAddress(connection), signal))) {
      return encodeFrameParts({ type: MessageType.BlockResponse, status: ExchangeStatus.Missing, index, data: new Uint8Array(0) })
    }
    await this.budget.take(bytes, signal)
    holding(bytes)
    try {
      const data = await content.read(index)
      content.served?.(connection.remotePeer, data.length)
      return encodeFrameParts({ type: MessageType.BlockResponse, status: ExchangeStatus.Ok, index, data })
    } catch (err) {
      // A file that moved or changed under us: say we lack the block, keep serving.
      this.logger.debug('could not read a block for a peer', { index, err: (err as Error).message })
      return encodeFrameParts({ type: MessageType.BlockResponse, status: ExchangeStatus.Missing, index, data: new Uint8Array(0) })
    }
  }

  /**
   * The next request of a serving stream, or undefined at its clean end. A frame
   * that is not a request (too long, empty, malformed, an answer nobody asked for)
   * fails the stream at once, at its length header for an oversized one, and is a
   * strike against the peer: a member that pushes 1 MiB answers on stream after
   * stream otherwise makes the agent decrypt and drop each new stream's first window
   * (256 KiB) at ~450 streams/s, ~140 MiB/s of garbage that took its RSS +185..+335 MiB
   * (test/hostile-peers.test.ts, with CANOPY_DEBUG-style memoryUsage() logging:
   * arrayBuffers swung 60..200 MiB while heapUsed stayed ~45 MiB).
   */
  private async readRequest (framed: FramedStream, connection: Connection): Promise<ServedRequest | undefined> {
    let request: ServedRequest
    try {
      const body = await framed.read(MAX_REQUEST_BODY, SERVER_IDLE_MS, this.limits.requestTimeoutMs)
      if (body === undefined) return undefined
      const message = decodeMessage(body)
      if (message.type !== MessageType.HaveRequest && message.type !== MessageType.BlockRequest) {
        throw new CanopyError('ERR_PROTOCOL', 'a response where a request belongs')
      }
      request = message
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_PROTOCOL') this.source.penalize?.(connection.remotePeer, `broke the exchange protocol: ${(err as Error).message}`)
      throw err
    }
    return request
  }

  private async serveStream (stream: Stream, connection: Connection, requests: Allowance): Promise<void> {
    const framed = new FramedStream(stream, { maxBuffered: this.limits.requestBufferBytes, writeTimeoutMs: this.limits.writeTimeoutMs })
    const asker = peerBytes(connection.remotePeer)
    const ending = new AbortController()
    // Requests are answered in order, but the next ones are read and prepared (disk
    // read, verification) while earlier answers are still being sent.
    const answers: Answer[] = []
    let readingDone = false
    let wakeWriter: (() => void) | undefined
    let wakeReader: (() => void) | undefined

    const writer = async (): Promise<void> => {
      for (;;) {
        if (answers.length === 0) {
          if (readingDone) return
          await new Promise<void>(resolve => { wakeWriter = resolve })
          continue
        }
        const answer = answers[0]
        try {
          const parts = await answer.parts
          await framed.write(...parts)
        } finally {
          answers.shift()
          answer.release()
          wakeReader?.()
        }
      }
    }
    const reader = async (): Promise<void> => {
      try {
        for (;;) {
          while (answers.length >= SERVER_PIPELINE && !readingDone) await new Promise<void>(resolve => { wakeReader = resolve })
          if (readingDone) return
          const request = await this.readRequest(framed, connection)
          if (request === undefined) return
          // The peer's requests in flight, over all its streams: past the cap, this
          // stream reads no more (and, its buffer full, is paused).
          await requests.take(1, ending.signal)
          let held = 0
          let released = false
          const release = (): void => {
            if (released) return
            released = true
            requests.give(1)
            if (held > 0) this.budget.give(held)
          }
          const parts = this.answer(request, connection, asker, ending.signal, (units) => { held += units })
          parts.catch(() => {}) // awaited by the writer, in order
          answers.push({ parts, release })
          wakeWriter?.()
        }
      } finally {
        readingDone = true
        wakeWriter?.()
      }
    }
    // Whichever side fails first ends the stream, and wakes the other.
    const failOn = async (side: () => Promise<void>): Promise<void> => {
      try {
        await side()
      } catch (err) {
        readingDone = true
        ending.abort(err)
        stream.abort(err as Error)
        wakeReader?.()
        wakeWriter?.()
        throw err
      }
    }
    try {
      await Promise.all([failOn(reader), failOn(writer)])
      await stream.close()
    } catch (err) {
      this.logger.warn('peer exchange stream ended with an error', { peer: connection.remotePeer.toString(), err: (err as Error).message })
      stream.abort(err as Error)
    } finally {
      ending.abort(new CanopyError('ERR_PROTOCOL', 'the stream ended'))
      // Answers never sent (the stream failed): what they hold goes back, after
      // their preparation settled (a block read under way still holds its budget).
      const unsent = answers.splice(0)
      await Promise.allSettled(unsent.map(async answer => await answer.parts))
      for (const answer of unsent) answer.release()
    }
  }
}

/** Thrown when a peer refuses us or breaks the protocol; counts against that peer. */
export class PeerExchangeError extends CanopyError {}

/**
 * One stream to one peer for one content: `have()` and `block(i)` requests are
 * pipelined and answered in order. Only what was asked for can arrive, so memory is
 * bounded by the requests in flight.
 */
export class ExchangeSession {
  private readonly framed: FramedStream
  private readonly discoveryId: Uint8Array
  private readonly proof: Uint8Array
  private readonly pending: Array<{ resolve: (m: ExchangeMessage) => void, reject: (err: Error) => void, into?: Uint8Array, deadlineMs: number }> = []
  private failure?: Error
  private reading = false
  readonly peer: PeerId

  private constructor (stream: Stream, peer: PeerId, discoveryId: Uint8Array, proof: Uint8Array) {
    this.framed = new FramedStream(stream, { maxBuffered: SESSION_BUFFER_BYTES, writeTimeoutMs: RESPONSE_TIMEOUT_MS })
    this.peer = peer
    this.discoveryId = discoveryId
    this.proof = proof
  }

  static async open (libp2p: PeerLibp2p, peer: PeerId, discoveryId: Uint8Array, key: Uint8Array, signal?: AbortSignal): Promise<ExchangeSession> {
    const stream = await libp2p.dialProtocol(peer, EXCHANGE_PROTOCOL, { signal })
    return new ExchangeSession(stream, peer, discoveryId, readProof(key, peerBytes(libp2p.peerId), peerBytes(peer)))
  }

  /**
   * Which blocks the peer can serve now, and which it is fetching from the origin:
   * one bit per block, high bit first.
   */
  async have (): Promise<{ have: Uint8Array, fetching: Uint8Array }> {
    const response = await this.request({ type: MessageType.HaveRequest, discoveryId: this.discoveryId, proof: this.proof })
    if (response.type !== MessageType.HaveResponse) throw this.broken('answered a have request with something else')
    this.check(response.status)
    return { have: response.bitfield, fetching: response.fetching }
  }

  /**
   * Block `index` as the peer sent it (the caller verifies it), or undefined if the
   * peer lacks it. Given `into`, a block of exactly its length is received there
   * (and `into` is what resolves), in one copy from the stream.
   */
  async block (index: number, into?: Uint8Array): Promise<Uint8Array | undefined> {
    const response = await this.request({ type: MessageType.BlockRequest, discoveryId: this.discoveryId, proof: this.proof, index }, into)
    if (response.type !== MessageType.BlockResponse || response.index !== index) throw this.broken('answered out of order')
    if (response.status === ExchangeStatus.Missing) return undefined
    this.check(response.status)
    return response.data
  }

  async close (): Promise<void> {
    await this.framed.stream.close().catch(() => {})
  }

  /** Ends the session at once (a peer that is too slow or lies): requests under way fail with `reason`. */
  abort (reason: Error): void {
    this.fail(reason)
  }

  private check (status: number): void {
    if (status === ExchangeStatus.Ok) return
    if (status === ExchangeStatus.Unknown) throw new PeerExchangeError('ERR_PEER_UNKNOWN_CONTENT', 'the peer has nothing under this discovery id that our proof of the content key opens')
    if (status === ExchangeStatus.Denied) throw new PeerExchangeError('ERR_PEER_DENIED', 'the peer refused our proof of the content key')
    throw this.broken(`unknown status ${status}`)
  }

  private broken (why: string): PeerExchangeError {
    const err = new PeerExchangeError('ERR_PEER_PROTOCOL', `peer ${this.peer.toString()} ${why}`)
    this.fail(err)
    return err
  }

  private fail (err: Error): void {
    this.failure ??= err
    for (const p of this.pending.splice(0)) p.reject(err)
    this.framed.stream.abort(err)
  }

  private async request (message: ExchangeMessage, into?: Uint8Array): Promise<ExchangeMessage> {
    if (this.failure !== undefined) throw this.failure
    const deadlineMs = message.type === MessageType.HaveRequest ? HAVE_ANSWER_DEADLINE_MS : BLOCK_ANSWER_DEADLINE_MS
    const answer = new Promise<ExchangeMessage>((resolve, reject) => this.pending.push({ resolve, reject, into, deadlineMs }))
    // If sending fails, the caller gets that error and `answer` is rejected by
    // fail() with nobody waiting on it: it must not count as unhandled (it crashed
    // the agent when a peer died mid-transfer).
    answer.catch(() => {})
    try {
      await this.framed.write(encodeMessage(message))
    } catch (err) {
      this.fail(err as Error)
      throw err
    }
    void this.readLoop()
    return await answer
  }

  private async readLoop (): Promise<void> {
    if (this.reading) return
    this.reading = true
    try {
      while (this.pending.length > 0) {
        const { into, deadlineMs } = this.pending[0]
        const deadline = performance.now() + deadlineMs
        const length = await this.framed.readLength(MAX_FRAME_BODY, RESPONSE_TIMEOUT_MS, deadline)
        if (length === undefined) throw new PeerExchangeError('ERR_PEER_PROTOCOL', 'the peer closed the stream with requests unanswered')
        let response: ExchangeMessage
        if (into !== undefined && length === RESPONSE_HEAD_BYTES + into.length) {
          // Head and block apart: the block goes straight into the caller's memory.
          const head = Buffer.from(await this.framed.readBody(RESPONSE_HEAD_BYTES, RESPONSE_TIMEOUT_MS, undefined, deadline))
          response = decodeMessage(head)
          if (response.type !== MessageType.BlockResponse || response.status !== ExchangeStatus.Ok) throw this.broken('sent a block-sized frame that is not a block')
          await this.framed.readBody(into.length, RESPONSE_TIMEOUT_MS, into, deadline)
          response.data = into
        } else {
          response = decodeMessage(await this.framed.readBody(length, RESPONSE_TIMEOUT_MS, undefined, deadline))
        }
        this.pending.shift()!.resolve(response)
      }
    } catch (err) {
      this.fail(err as Error)
    } finally {
      this.reading = false
    }
  }
}
