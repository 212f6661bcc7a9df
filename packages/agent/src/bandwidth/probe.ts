import { request } from 'undici'
import type { Dispatcher } from 'undici'
import type { Probe } from './wan-paths.ts'

/**
 * A delay probe of a WAN path: one `HEAD` of the transfer's own URL (same
 * credentials, same connection pool) on a kept-alive connection. Its round trip
 * crosses the same bottleneck queue as the transfer's bytes, in the direction that
 * matters (the response toward the branch), and costs the origin a stat and ~300
 * bytes. Any answer times the path, an error status included (a URL signed for GET
 * only may refuse HEAD). Why not time the transfer's own range requests: a paced
 * transfer sends few requests (one 4 MiB range per 1.6 s per connection at
 * 20 Mbit/s, one per minutes at its floor), and a yielding transfer needs samples
 * most when it reads least.
 */
export function headProbe (dispatcher: Dispatcher, url: string, headers: Record<string, string>): Probe {
  return async (signal) => {
    const res = await request(url, { dispatcher, method: 'HEAD', headers, signal })
    await res.body.dump()
  }
}
