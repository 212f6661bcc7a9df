import type { AgentStatus, JobState } from '@canopy/core'
import type { JobRecord } from './jobs/job.ts'
import type { PeerNode } from './peers/node.ts'
import type { P2pOptions } from './options.ts'

const STATES: readonly JobState[] = ['queued', 'connecting', 'transferring', 'suspended', 'error', 'transient_error', 'transferred', 'acknowledged', 'cancelled']

/** `GET /v1/status`: the agent's own fields, jobs counted by state, and its peer node's identity and connections. */
export function agentStatus (own: Omit<AgentStatus, 'jobs' | 'peer'>, records: Iterable<JobRecord>, peer: PeerNode | undefined, p2p: P2pOptions | undefined): AgentStatus {
  const jobs = Object.fromEntries(STATES.map(s => [s, 0])) as Record<JobState, number>
  for (const job of records) jobs[job.state]++
  const status: AgentStatus = { ...own, jobs }
  if (peer !== undefined) {
    const { libp2p } = peer
    status.peer = {
      peerId: libp2p.peerId.toString(),
      addresses: libp2p.getMultiaddrs().map(ma => ma.toString()),
      connected: libp2p.getPeers().length,
      swarmKey: p2p?.swarmKey !== undefined,
      mdns: p2p?.mdns !== false,
      ...(p2p?.hostedCache === true ? { hostedCache: true as const } : {})
    }
  }
  return status
}
