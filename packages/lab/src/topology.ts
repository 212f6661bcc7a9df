/**
 * The one description of the lab, from which both the network-namespace lab and
 * docker-compose.yml are built: a datacenter host with the origin, a router whose
 * WAN side is rate-limited, and a branch LAN (a bridge) with the agent hosts.
 *
 *   [dc: origin 10.250.1.2] --WAN 10.250.1.0/24, tbf RATE-- [router .1.254 | .2.254] --br0 10.250.2.0/24-- agents .11, .12, ...
 *                                                                                       `-- extra hosts .201, ...
 */
import { CanopyError, ErrorCode } from '@canopy/core'

export const MiB = 1024 * 1024

export const LAB_DEFAULTS = {
  /** Agent hosts on the branch LAN. */
  agents: 4,
  /** WAN rate between the datacenter and the branch, bits per second (20 Mbit/s). */
  wanBitsPerSecond: 20_000_000,
  /** Size of the content the scenarios fetch. */
  size: 64 * MiB
} as const

/** Most agent hosts a lab builds (addresses .11 to .199 of the branch subnet). */
export const MAX_AGENTS = 64

export const ADDRESSES = {
  wanPrefix: 24,
  origin: '10.250.1.2',
  // .254, not .1: docker gives .1 of each network to the host's bridge.
  routerWan: '10.250.1.254',
  lanPrefix: 24,
  routerLan: '10.250.2.254',
  /** The i-th agent host (1-based). */
  agent: (i: number): string => `10.250.2.${10 + i}`,
  /** The i-th extra host on the LAN (a lying peer, an intruder; 1-based). */
  extra: (i: number): string => `10.250.2.${200 + i}`
} as const

export const ORIGIN_PORT = 8080
/** Agents use the default peer port; mDNS finds them (a hosted cache is also named by its address). */
export const PEER_PORT = 7373
export const CONTENT_PATH = '/content.bin'

/** "20mbit", "20Mbit/s", "512kbit", "1gbit", or plain bits per second. */
export function parseRate (text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(|bit|kbit|mbit|gbit)(?:\/s|ps)?\s*$/i.exec(text)
  if (match === null) throw new CanopyError(ErrorCode.InvalidArgument, `"${text}" is not a rate: write e.g. 20mbit, 512kbit or 1gbit`)
  const unit = { '': 1, bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 }[match[2].toLowerCase()] ?? 1
  const bits = Math.round(Number(match[1]) * unit)
  // tbf cannot shape below a few kbit/s usefully, nor does a lab need more than 10 Gbit/s.
  if (bits < 8_000 || bits > 10e9) throw new CanopyError(ErrorCode.InvalidArgument, `${text}: the WAN rate must be between 8kbit and 10gbit`)
  return bits
}

/** 20000000 → "20mbit" (the form tc takes). */
export function formatRate (bitsPerSecond: number): string {
  if (bitsPerSecond % 1e6 === 0) return `${bitsPerSecond / 1e6}mbit`
  if (bitsPerSecond % 1e3 === 0) return `${bitsPerSecond / 1e3}kbit`
  return `${bitsPerSecond}bit`
}

/**
 * The tc token-bucket filter that shapes one direction of the WAN. The bucket holds
 * 10 ms of traffic (at least 32 KiB so TSO-sized packets fit), and the queue at most
 * 50 ms: a shaped link, not a bufferbloated one.
 */
export function tbfArguments (bitsPerSecond: number, queueMs = 50): string[] {
  const burst = Math.max(32 * 1024, Math.ceil(bitsPerSecond / 8 / 100))
  return ['tbf', 'rate', formatRate(bitsPerSecond), 'burst', String(burst), 'latency', `${queueMs}ms`]
}
