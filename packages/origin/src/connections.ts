import { readFileSync } from 'node:fs'
import type { Socket } from 'node:net'

/** The least default cap per client address, whatever the total. */
const MIN_DEFAULT_PER_ADDRESS = 64
/** The share of the total cap one client address may take by default (1 / this). */
const ADDRESS_SHARE = 4
/** When the file-descriptor limit cannot be read. */
const FALLBACK_MAX_CONNECTIONS = 1000
/** Descriptors kept for everything else (listener, manifest cache, scanning, watching). */
const RESERVED_FDS = 64

/** Default total cap whatever the descriptor limit: a stalled response holds up to ~2 MiB until the send timeout drops it (docs/SECURITY.md). */
const MAX_DEFAULT_CONNECTIONS = 1024

/**
 * Connections the origin accepts in total, by default: each one being served holds
 * two descriptors (the socket and the file), so half of what the process may open,
 * less a reserve, and at most MAX_DEFAULT_CONNECTIONS. Above the descriptor bound,
 * accepting more made legitimate requests fail with EMFILE (issue 13, item 8: 400
 * clients that never read held 824 descriptors; 1,100 took RSS from 111 to 981 MiB).
 */
export function defaultMaxConnections (limitsFile = '/proc/self/limits'): number {
  try {
    const line = readFileSync(limitsFile, 'utf8').split('\n').find(l => l.startsWith('Max open files'))
    const soft = Number(line?.split(/\s{2,}/)[1])
    if (Number.isSafeInteger(soft) && soft > 0) return Math.max(16, Math.min(MAX_DEFAULT_CONNECTIONS, Math.floor((soft - RESERVED_FDS) / 2)))
  } catch {
    // No /proc (not Linux): the fallback below.
  }
  return FALLBACK_MAX_CONNECTIONS
}

/**
 * Connections from one client address, by default: a quarter of the total cap, at
 * least 64. A branch office behind NAT is one address for all its machines, and an
 * agent opens up to 8 connections to an origin (2 × requestsInFlight), so a fixed 64
 * refused a branch of more than 8 busy agents; a quarter of the default 1,024 admits
 * 32 of them, while three other addresses can always get in (issue 13, item 8).
 */
export function defaultMaxConnectionsPerAddress (maxConnections: number): number {
  return Math.max(MIN_DEFAULT_PER_ADDRESS, Math.floor(maxConnections / ADDRESS_SHARE))
}

export interface ConnectionLimitsInit {
  maxConnections: number
  maxConnectionsPerAddress: number
  /** Called for each connection refused (for metrics and logs). */
  onRefused?: (reason: 'total' | 'address', address: string) => void
}

/**
 * Caps connections in total and per client address. A connection over a cap gets a
 * complete 503 at once and is closed as soon as the kernel took it, so a flood of
 * connections costs the origin neither descriptors nor memory; the client reads the
 * reason and Retry-After whenever it reads.
 */
export class ConnectionLimits {
  readonly #init: ConnectionLimitsInit
  readonly #byAddress = new Map<string, number>()
  readonly #refused = new WeakSet<Socket>()
  #total = 0

  constructor (init: ConnectionLimitsInit) {
    for (const [name, value] of Object.entries({ maxConnections: init.maxConnections, maxConnectionsPerAddress: init.maxConnectionsPerAddress })) {
      if (!(Number.isSafeInteger(value) && value > 0)) throw new RangeError(`${name} must be a positive integer, not ${value}`)
    }
    this.#init = init
  }

  get total (): number {
    return this.#total
  }

  /** Admits or refuses a new connection; call first on 'connection'. */
  admit (socket: Socket): void {
    const address = socket.remoteAddress ?? ''
    const fromAddress = this.#byAddress.get(address) ?? 0
    const reason = this.#total >= this.#init.maxConnections
      ? 'total'
      : fromAddress >= this.#init.maxConnectionsPerAddress ? 'address' : undefined
    if (reason !== undefined) {
      this.#refused.add(socket)
      this.#init.onRefused?.(reason, address)
      const message = reason === 'total'
        ? 'The origin is serving as many connections as it can; try again shortly.\n'
        : 'Too many connections from your address; close some, or try again shortly.\n'
      socket.on('error', () => {})
      socket.end(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(message)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n${message}`)
      // Closed once the kernel has the answer, whether or not the client ever reads it or closes its side.
      socket.destroySoon()
      return
    }
    this.#total++
    this.#byAddress.set(address, fromAddress + 1)
    socket.once('close', () => {
      this.#total--
      const left = (this.#byAddress.get(address) ?? 1) - 1
      if (left === 0) this.#byAddress.delete(address)
      else this.#byAddress.set(address, left)
    })
  }

  /** Whether a request arrived on a connection that was refused (the HTTP parser still sees it): answer nothing. */
  refused (socket: Socket): boolean {
    return this.#refused.has(socket)
  }
}
