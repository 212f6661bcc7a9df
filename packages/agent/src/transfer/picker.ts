import type { FileProgress } from '../jobs/job.ts'

/** What the picker needs to know of the peers (exchangeWithPeers provides it). */
export interface PeerView {
  /** Whether some peer can serve the block now. */
  has: (index: number) => boolean
  /** Whether some peer is fetching the block from the origin (and not for too long). */
  fetching: (index: number) => boolean
  /**
   * Whether this agent should fetch the chunk from the origin now. With peers that
   * fetch the same content, chunks are shared out among them (see
   * exchangeWithPeers); a chunk of another agent becomes ours only when it stalls.
   */
  mine: (chunk: number) => boolean
  /**
   * Whether another origin request may start, given how many this picker handed out
   * so far. With peers, only the first starts before the peers' claims are known (see
   * exchangeWithPeers); without, every request may.
   */
  mayIssue: (issued: number) => boolean
}

/** No peers: every block and chunk is the origin's. */
const NO_PEERS: PeerView = { has: () => false, fetching: () => false, mine: () => true, mayIssue: () => true }

/**
 * Chooses what the origin is asked for next: runs of consecutive missing blocks
 * (one range request each), chunk by chunk. Blocks this agent is already fetching
 * (`inFlight`), and blocks a peer has or is fetching from the origin right now, are
 * left out: they come from peers. Chunks are visited in order, so that a file is
 * complete from its start as early as possible and its whole-file digest is computed
 * while the transfer runs. With peers (`spreadOut`), in a random order instead, so
 * that agents that start together begin in different places and split the origin
 * work instead of all fetching the same blocks.
 */
export class BlockPicker {
  private readonly progress: FileProgress
  private readonly inFlight: Set<number>
  private readonly perRequest: number
  private readonly order: number[]
  /** What the peers have and do (see PeerView); none until usePeers. */
  private peers: PeerView = NO_PEERS
  private issued = 0

  constructor (progress: FileProgress, inFlight: Set<number>, perRequest: number) {
    this.progress = progress
    this.inFlight = inFlight
    this.perRequest = perRequest
    const chunks = Math.ceil(progress.blocks.length / perRequest)
    this.order = Array.from({ length: chunks }, (_, i) => i)
  }

  /** Takes the peers into account from now on; undefined: no peers any more (they are gone). */
  usePeers (view: PeerView | undefined): void {
    this.peers = view ?? NO_PEERS
  }

  /**
   * Visits chunks in a random order from now on: called when peers answer for the
   * content. Only then: a random order completes the file's start last, so its
   * whole-file digest, which needs the bytes in order, waits for the end of the
   * transfer (measured with a peer node but no peers, one hashing worker: 0.8-0.9 s
   * of hashing after the last block of 1 GiB, against 0.2-0.7 s in order).
   */
  spreadOut (): void {
    for (let i = this.order.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1))
      ;[this.order[i], this.order[j]] = [this.order[j], this.order[i]]
    }
  }

  private available (i: number): boolean {
    return !this.progress.has(i) && !this.inFlight.has(i) && !this.peers.has(i) && !this.peers.fetching(i)
  }

  /** The next run of blocks to ask the origin for; 'wait' when the missing ones are all in someone's hands. */
  next (): number[] | 'wait' | 'done' {
    if (this.progress.complete) return 'done'
    if (!this.peers.mayIssue(this.issued)) return 'wait'
    const count = this.progress.blocks.length
    for (const chunk of this.order) {
      if (!this.peers.mine(chunk)) continue
      const end = Math.min(count, (chunk + 1) * this.perRequest)
      for (let i = chunk * this.perRequest; i < end; i++) {
        if (!this.available(i)) continue
        const run = [i]
        while (run.length < this.perRequest && i + run.length < end && this.available(i + run.length)) run.push(i + run.length)
        this.issued++
        return run
      }
    }
    return 'wait'
  }
}
