/**
 * @canopy/agent/peers: the peer node and membership. A separate entry point, so
 * that loading the agent without peers does not load libp2p (~30 MiB resident).
 */
export { startPeerNode, parsePeerAddresses, DEFAULT_P2P_PORT } from './node.ts'
export type { PeerNode, PeerNodeOptions, PeerLibp2p } from './node.ts'
export { generateSwarmKey, parseSwarmKey, readSwarmKey, noisePrologue, SWARM_KEY_HEADER } from './swarm-key.ts'
export { loadOrCreatePeerKey, PEER_KEY_FILE } from './identity.ts'
export { isDialable, isLocalAddress } from './scope.ts'
export { ExchangeSession, PeerExchangeError, serveExchange } from './exchange.ts'
export type { BlockSource, SharedContent } from './exchange.ts'
export { PeerSharing } from './sharing.ts'
export { startSharing } from './start.ts'
export { decodeOffer, HostedCaches, HOSTED_CACHE_PROTOCOL, OfferError, sendOffer } from './offer.ts'
export type { Offer, OfferReply } from './offer.ts'
export { HostedCache, hostedCacheQuota } from './hosted-cache.ts'
