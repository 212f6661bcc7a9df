import { timingSafeEqual } from 'node:crypto'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import {
  CanopyError, decodeMessage, encodeFrameParts, encodeMessage, EXCHANGE_PROTOCOL, ExchangeStatus, MAX_FRAME_BODY, MAX_REQUEST_BODY,
  MessageType, readProof, RESPONSE_HEAD_BYTES
} from '@canopy/core'
import type { ExchangeMessage, Logger, PublishedManifest } from '@canopy/core'
import { FramedStream } from './framing.ts'
import type { PeerLibp2p } from './node.ts'

/** A serving stream that receives no request for this long is closed. */
const SERVER_IDLE_MS = 60_000
/** Requests of one stream being prepared or sent at once. */
const SERVER_PIPELINE = 8
/** How long a request may wait for its response. */
const RESPONSE_TIMEOUT_MS = 30_000

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

/**
 * Serves `/canopy/exchange/1.0.0`: a peer asks by discovery id only, with a proof
 * that it holds the content key; it gets the bitfield of blocks this agent can
 * serve, and blocks. A malformed, oversized or late request ends the stream (and is
 * logged against the peer); it never reaches the agent's other work.
 */
export async function serveExchange (libp2p: PeerLibp2p, source: BlockSource, logger: Logger): Promise<void> {
  await libp2p.handle(EXCHANGE_PROTOCOL, (stream: Stream, connection: Connection) => {
    void serveStream(stream, connection, libp2p.peerId, source, logger)
  })
}

async function serveStream (stream: Stream, connection: Connection, self: PeerId, source: BlockSource, logger: Logger): Promise<void> {
  const framed = new FramedStream(stream)
  const asker = peerBytes(connection.remotePeer)
  const server = peerBytes(self)
  // Requests are answered in order, but the next ones are read and prepared (disk
  // read, verification) while earlier answers are still being sent.
  const answers: Array<Promise<Uint8Array[]>> = []
  let readingDone = false
  let wakeWriter: (() => void) | undefined
  let wakeReader: (() => void) | undefined

  const answer = async (body: Uint8Array): Promise<Uint8Array[]> => {
    const request = decodeMessage(body)
    if (request.type !== MessageType.HaveRequest && request.type !== MessageType.BlockRequest) {
      throw new CanopyError('ERR_PROTOCOL', 'a response where a request belongs')
    }
    const content = source.lookup(request.discoveryId)
    let status: number = ExchangeStatus.Ok
    if (content === undefined) status = ExchangeStatus.Unknown
    else if (!sameBytes(readProof(content.key, asker, server), request.proof)) status = ExchangeStatus.Denied
    if (request.type === MessageType.HaveRequest) {
      return encodeFrameParts(status === ExchangeStatus.Ok
        ? { type: MessageType.HaveResponse, status, blockCount: content!.manifest.blocks.length, bitfield: bitfieldOf(content!, content!.has), fetching: bitfieldOf(content!, content!.fetching ?? (() => false)) }
        : { type: MessageType.HaveResponse, status, blockCount: 0, bitfield: new Uint8Array(0), fetching: new Uint8Array(0) })
    }
    let data: Uint8Array = new Uint8Array(0)
    if (status === ExchangeStatus.Ok) {
      if (request.index >= content!.manifest.blocks.length || !content!.has(request.index)) status = ExchangeStatus.Missing
      else {
        try {
          data = await content!.read(request.index)
          content!.served?.(connection.remotePeer, data.length)
        } catch (err) {
          // A file that moved or changed under us: say we lack the block, keep serving.
          logger.debug('could not read a block for a peer', { index: request.index, err: (err as Error).message })
          status = ExchangeStatus.Missing
        }
      }
    }
    return encodeFrameParts({ type: MessageType.BlockResponse, status, index: request.index, data })
  }

  const writer = async (): Promise<void> => {
    for (;;) {
      if (answers.length === 0) {
        if (readingDone) return
        await new Promise<void>(resolve => { wakeWriter = resolve })
        continue
      }
      const parts = await answers[0]
      answers.shift()
      wakeReader?.()
      await framed.write(...parts)
    }
  }
  const reader = async (): Promise<void> => {
    try {
      for (;;) {
        while (answers.length >= SERVER_PIPELINE && !readingDone) await new Promise<void>(resolve => { wakeReader = resolve })
        if (readingDone) return
        const body = await framed.read(MAX_REQUEST_BODY, SERVER_IDLE_MS)
        if (body === undefined) return
        const pending = answer(body)
        pending.catch(() => {}) // awaited by the writer, in order
        answers.push(pending)
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
    logger.warn('peer exchange stream ended with an error', { peer: connection.remotePeer.toString(), err: (err as Error).message })
    stream.abort(err as Error)
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
  private readonly pending: Array<{ resolve: (m: ExchangeMessage) => void, reject: (err: Error) => void, into?: Uint8Array }> = []
  private failure?: Error
  private reading = false
  readonly peer: PeerId

  private constructor (stream: Stream, peer: PeerId, discoveryId: Uint8Array, proof: Uint8Array) {
    this.framed = new FramedStream(stream)
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

  private check (status: number): void {
    if (status === ExchangeStatus.Ok) return
    if (status === ExchangeStatus.Unknown) throw new PeerExchangeError('ERR_PEER_UNKNOWN_CONTENT', 'the peer has nothing under this discovery id')
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
    const answer = new Promise<ExchangeMessage>((resolve, reject) => this.pending.push({ resolve, reject, into }))
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
        const length = await this.framed.readLength(MAX_FRAME_BODY, RESPONSE_TIMEOUT_MS)
        if (length === undefined) throw new PeerExchangeError('ERR_PEER_PROTOCOL', 'the peer closed the stream with requests unanswered')
        const { into } = this.pending[0]
        let response: ExchangeMessage
        if (into !== undefined && length === RESPONSE_HEAD_BYTES + into.length) {
          // Head and block apart: the block goes straight into the caller's memory.
          const head = Buffer.from(await this.framed.readBody(RESPONSE_HEAD_BYTES, RESPONSE_TIMEOUT_MS))
          response = decodeMessage(head)
          if (response.type !== MessageType.BlockResponse || response.status !== ExchangeStatus.Ok) throw this.broken('sent a block-sized frame that is not a block')
          await this.framed.readBody(into.length, RESPONSE_TIMEOUT_MS, into)
          response.data = into
        } else {
          response = decodeMessage(await this.framed.readBody(length, RESPONSE_TIMEOUT_MS))
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
