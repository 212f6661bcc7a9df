import type { Logger } from '@canopy/core'
import type { P2pOptions } from '../options.ts'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import type { SharingMetrics } from '../metrics/agent-metrics.ts'
import { loadOrCreatePeerKey } from './identity.ts'
import { startPeerNode } from './node.ts'
import type { PeerNode } from './node.ts'
import { PeerSharing } from './sharing.ts'
import type { BlockSource } from './exchange.ts'

/** The agent's peer node with its persistent identity, and the sharing of blocks on it (started). */
export async function startSharing (components: { store: JobStore, blockHasher: BlockHasher, metrics: SharingMetrics, servingGate?: BlockSource['servingGate'], logger: Logger },
  init: { stateDir: string, p2p: P2pOptions }): Promise<{ peer: PeerNode, sharing: PeerSharing }> {
  const { store, blockHasher, metrics, logger } = components
  const peer = await startPeerNode({ privateKey: await loadOrCreatePeerKey(init.stateDir), ...init.p2p, logger })
  try {
    const sharing = new PeerSharing(peer.libp2p, store, init.stateDir, blockHasher, logger, init.p2p.cacheSize)
    sharing.metrics = metrics
    sharing.servingGate = components.servingGate
    await sharing.start()
    return { peer, sharing }
  } catch (err) {
    await peer.stop()
    throw err
  }
}
