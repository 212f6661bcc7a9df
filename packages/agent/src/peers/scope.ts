import type { Multiaddr } from '@multiformats/multiaddr'

/**
 * Peers are on the branch LAN: an agent dials only loopback, private (RFC 1918,
 * IPv6 ULA) and link-local addresses, whatever a peer advertises. This keeps a
 * misconfigured or hostile advertisement from sending traffic across the WAN.
 */
export function isLocalAddress (ip: string, family: 4 | 6): boolean {
  if (family === 4) {
    const parts = ip.split('.').map(Number)
    if (parts.length !== 4 || parts.some(p => !Number.isInteger(p) || p < 0 || p > 255)) return false
    const [a, b] = parts
    return a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254)
  }
  const lower = ip.toLowerCase()
  if (lower === '::1') return true
  const first = parseInt(lower.split(':')[0] || '0', 16)
  return (first & 0xfe00) === 0xfc00 || (first & 0xffc0) === 0xfe80
}

/** Whether the agent may dial `ma`: TCP to a local address only (no DNS names). */
export function isDialable (ma: Multiaddr): boolean {
  const components = ma.getComponents()
  const ip = components[0]
  const tcp = components[1]
  if (ip === undefined || tcp === undefined || tcp.name !== 'tcp') return false
  if (ip.name === 'ip4' && ip.value !== undefined) return isLocalAddress(ip.value, 4)
  if (ip.name === 'ip6' && ip.value !== undefined) return isLocalAddress(ip.value, 6)
  return false
}
