import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { noise } from '@chainsafe/libp2p-noise'
import { membershipCrypto, noiseCrypto } from './noise-crypto.ts'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import type { Ping } from '@libp2p/ping'
import { mdns } from '@libp2p/mdns'
import type { PrivateKey } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import { CanopyError } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { isDialable } from './scope.ts'
import { noisePrologue } from './swarm-key.ts'

/** Default TCP port of the peer node (documented in docs/CONFIGURATION.md). */
export const DEFAULT_P2P_PORT = 7373
/** Largest yamux window of one stream (bytes a peer may send ahead of our reading). */
export const STREAM_WINDOW_BYTES = 4 * 1024 * 1024
/** How often static peers that are not connected are dialled again. */
const REDIAL_MS = 5000

export interface PeerNodeOptions {
  privateKey: PrivateKey
  /** Listen addresses; default `/ip4/0.0.0.0/tcp/7373`. */
  listen?: string[]
  /** The organisation's swarm key; without one the node talks only to keyless agents. */
  swarmKey?: Uint8Array
  /** Discover peers by mDNS on the LAN. Default true; off in the root namespace of build machines. */
  mdns?: boolean
  /** Static peers (multiaddrs with /p2p/<peer id>, or without it). */
  peers?: string[]
  logger: Logger
}

export type PeerLibp2p = Libp2p<{ identify: Identify, ping: Ping }>

export interface PeerNode {
  libp2p: PeerLibp2p
  stop: () => Promise<void>
}

/** Parses static peer addresses; throws ERR_INVALID_PEER for anything but LAN TCP multiaddrs. */
export function parsePeerAddresses (peers: string[]): Multiaddr[] {
  return peers.map(text => {
    let ma: Multiaddr
    try {
      ma = multiaddr(text)
    } catch (err) {
      throw new CanopyError('ERR_INVALID_PEER', `"${text}" is not a multiaddr (e.g. /ip4/192.168.1.20/tcp/7373)`, { cause: err })
    }
    if (!isDialable(ma)) throw new CanopyError('ERR_INVALID_PEER', `${text} is not a LAN address: peers must be on loopback, private or link-local TCP addresses`)
    return ma
  })
}

/**
 * The agent's libp2p node: TCP, Noise (with the membership prologue), Yamux,
 * identify and ping; mDNS and static peers for discovery. Dials only LAN
 * addresses (see scope.ts).
 */
export async function startPeerNode (options: PeerNodeOptions): Promise<PeerNode> {
  const staticPeers = parsePeerAddresses(options.peers ?? [])
  const libp2p = await createLibp2p({
    privateKey: options.privateKey,
    addresses: { listen: options.listen ?? [`/ip4/0.0.0.0/tcp/${DEFAULT_P2P_PORT}`] },
    transports: [tcp()],
    connectionEncrypters: [noise({
      prologueBytes: noisePrologue(options.swarmKey),
      crypto: options.swarmKey === undefined ? noiseCrypto : membershipCrypto(options.swarmKey)
    })],
    streamMuxers: [yamux({
      streamOptions: {
        // A stream's window is what a peer may send after we pause it (see
        // framing.ts): at most what v3 holds for a paused stream before it resets
        // it (its read buffer). The default window (16 MiB) exceeds the default read
        // buffer (4 MiB): pausing would reset honest streams, not pausing let a
        // peer fill memory. 4 MiB is 4 GiB/s at 1 ms of round trip, beyond a LAN.
        maxStreamWindowSize: STREAM_WINDOW_BYTES,
        maxReadBufferLength: STREAM_WINDOW_BYTES + 64 * 1024
      }
    })],
    peerDiscovery: options.mdns === false ? [] : [mdns()],
    services: { identify: identify(), ping: ping() },
    connectionGater: {
      denyDialMultiaddr: (ma: Multiaddr) => !isDialable(ma)
    },
    connectionManager: {
      // The default (5 per second per host) resets the bursts of a LAN's agents
      // starting together (measured: docs/LIBP2P.md).
      inboundConnectionThreshold: 100
    },
    connectionMonitor: {
      // libp2p pings every connection every 10 s and aborts it when the answer takes
      // longer than an adaptive timeout of at least 5 s. A ping waits behind the
      // blocks queued on the same connection (megabytes, when a peer is busy serving),
      // and with 8 agents on 2 vCPUs answers took longer: connections between healthy
      // peers were cut mid-transfer, their peers looked stalled, and their chunks were
      // fetched from the origin again (patch day 1.2-1.6 × instead of ~1.0 ×). A LAN
      // peer that answers no ping for 30 s (the exchange's own response timeout) is gone.
      pingTimeout: { minTimeout: 30_000 }
    }
  })
  libp2p.addEventListener('peer:discovery', (event) => {
    const peer = event.detail
    libp2p.dial(peer.id).catch((err: unknown) => options.logger.debug('dial of a discovered peer failed', { peer: peer.id.toString(), err: String(err) }))
  })
  libp2p.addEventListener('peer:connect', (event) => options.logger.info('peer connected', { peer: event.detail.toString() }))
  libp2p.addEventListener('peer:disconnect', (event) => options.logger.info('peer disconnected', { peer: event.detail.toString() }))

  const dialStatic = async (): Promise<void> => {
    for (const ma of staticPeers) {
      const peerId = ma.getComponents().find(c => c.name === 'p2p')?.value
      if (peerId !== undefined && libp2p.getConnections().some(c => c.remotePeer.toString() === peerId)) continue
      if (peerId === undefined && libp2p.getConnections().some(c => c.remoteAddr.toString().startsWith(ma.toString()))) continue
      await libp2p.dial(ma).catch((err: unknown) => options.logger.debug('dial of a static peer failed', { peer: ma.toString(), err: String(err) }))
    }
  }
  void dialStatic()
  const timer = setInterval(() => { void dialStatic() }, REDIAL_MS)
  timer.unref()
  if (options.swarmKey === undefined) {
    options.logger.warn('no swarm key: this agent accepts any keyless Canopy agent as a peer; make one with `canopy keygen > org.key` and start agents with --swarm-key org.key')
  }
  return {
    libp2p,
    stop: async () => {
      clearInterval(timer)
      await libp2p.stop()
    }
  }
}
