import type { Logger } from '@canopy/core'
import type { P2pOptions } from '../options.ts'
import type { JobStore } from '../store/job-store.ts'
import type { BlockHasher } from '../transfer/block-hasher.ts'
import type { SharingMetrics } from '../metrics/agent-metrics.ts'
import { loadOrCreatePeerKey } from './identity.ts'
import { parsePeerAddresses, startPeerNode } from './node.ts'
import type { PeerNode } from './node.ts'
import { PeerSharing } from './sharing.ts'
import { HostedCaches } from './offer.ts'
import { HostedCache, hostedCacheQuota } from './hosted-cache.ts'

/**
 * The agent's peer node with its persistent identity, and the sharing of blocks on it
 * (started); with `hostedCache`, the hosted-cache role too (stopped with the node).
 */
export async function startSharing (components: { store: JobStore, blockHasher: BlockHasher, backgroundHasher?: () => BlockHasher, metrics: SharingMetrics, logger: Logger },
  init: { stateDir: string, p2p: P2pOptions }): Promise<{ peer: PeerNode, sharing: PeerSharing }> {
  const { store, blockHasher, metrics, logger } = components
  const { hostedCache: role = false, hostedCacheAddrs = [], ...nodeOptions } = init.p2p
  // Hosted caches are dialled and kept connected like static peers.
  const node = await startPeerNode({ privateKey: await loadOrCreatePeerKey(init.stateDir), ...nodeOptions, peers: [...nodeOptions.peers ?? [], ...hostedCacheAddrs], logger })
  let hosted: HostedCache | undefined
  const peer: PeerNode = {
    libp2p: node.libp2p,
    stop: async () => {
      await hosted?.stop()
      await node.stop()
    }
  }
  try {
    const quota = init.p2p.cacheSize ?? (role ? await hostedCacheQuota(init.stateDir) : undefined)
    const sharing = new PeerSharing(node.libp2p, store, init.stateDir, blockHasher, logger, quota)
    sharing.metrics = metrics
    sharing.hostedCaches = new HostedCaches({ libp2p: node.libp2p, logger }, { addresses: parsePeerAddresses(hostedCacheAddrs) })
    await sharing.start()
    if (role) {
      // Pulls are background work: their blocks are verified on the low-priority hashing threads.
      hosted = new HostedCache({ libp2p: node.libp2p, sharing, store, blockHasher: components.backgroundHasher?.() ?? blockHasher, logger }, { stateDir: init.stateDir })
      await hosted.start()
      logger.info('hosted cache role on', { quota: sharing.quota })
    }
    return { peer, sharing }
  } catch (err) {
    await peer.stop()
    throw err
  }
}
