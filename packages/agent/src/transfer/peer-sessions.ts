import type { PeerId } from '@libp2p/interface'
import type { ExchangeSession } from '../peers/exchange.ts'

/** What a transfer needs from the agent's peer node. */
export interface PeerSessions {
  /** Sessions to the connected peers (not banned) for one content; peers that fail to answer are left out. */
  open: (discoveryId: Uint8Array, key: Uint8Array, signal: AbortSignal) => Promise<ExchangeSession[]>
  /** Counts a block from `peer` that failed verification (the agent bans repeat offenders). */
  penalize: (peer: PeerId, reason: string) => void
  /** This agent's own peer id. */
  self: () => PeerId
  /** Whether `peer` is a hosted cache of the branch: its blocks are marked 'cache' (the job's fromCache). */
  isHostedCache?: (peer: PeerId) => boolean
  /** Counts verified bytes received from `peer`. */
  received: (peer: PeerId, bytes: number) => void
}
