import type { Dispatcher } from 'undici'
import { DEFAULT_BLOCK_SIZE } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { WanPaths } from '../bandwidth/wan-paths.ts'
import { CpuPriority } from '../bandwidth/cpu-priority.ts'
import { parsePolicy } from '../bandwidth/policy.ts'
import { blocksBuffered } from '../options.ts'
import type { ResolvedAgentOptions } from '../options.ts'
import { BlockHasher } from '../transfer/block-hasher.ts'
import { BufferPool } from '../transfer/buffer-pool.ts'
import { createDispatcher } from '../transfer/http.ts'
import { RangeClient } from '../transfer/range-client.ts'

/** Linux nice value of the hashing threads of background jobs (the lowest priority is 19). */
const BACKGROUND_NICE = 10

/** Connections and timeouts of an HTTP pool: two jobs may fetch from one origin at once. */
export function poolOptions (options: Pick<ResolvedAgentOptions, 'requestsInFlight' | 'requestTimeoutMs'>): { connections: number, timeoutMs: number } {
  return { connections: options.requestsInFlight * 2, timeoutMs: options.requestTimeoutMs }
}

/**
 * What every transfer of the agent shares, opened with the agent and closed with it:
 * the HTTP pool and the direct range client, the hashing threads (a second set at a
 * low CPU priority for background jobs, started when first needed), the block
 * buffers, and the WAN paths that pace background jobs.
 */
export class TransferServices {
  readonly dispatcher: Dispatcher
  readonly rangeClient: RangeClient
  readonly blockHasher: BlockHasher
  readonly blockBuffers: BufferPool
  readonly wanPaths: WanPaths
  /** The agent's own threads at BACKGROUND_NICE while no foreground job runs. */
  readonly cpu: CpuPriority
  private background?: BlockHasher
  private readonly hashThreads: number

  constructor (components: { logger: Logger, now: () => number }, options: ResolvedAgentOptions) {
    const pool = poolOptions(options)
    this.dispatcher = createDispatcher(pool)
    this.rangeClient = new RangeClient({ maxPerOrigin: pool.connections, timeoutMs: pool.timeoutMs })
    this.hashThreads = options.hashThreads
    this.blockHasher = new BlockHasher(options.hashThreads)
    // As much as one transfer holds at most with the default block size.
    this.blockBuffers = new BufferPool(blocksBuffered(options, DEFAULT_BLOCK_SIZE) * DEFAULT_BLOCK_SIZE)
    this.wanPaths = new WanPaths({ logger: components.logger, clock: components.now }, { enabled: options.targetDelayMs > 0, targetDelayMs: options.targetDelayMs })
    this.wanPaths.setPolicy(parsePolicy(options.bandwidthPolicy ?? {}))
    this.cpu = new CpuPriority(components, { backgroundNice: BACKGROUND_NICE })
  }

  /** Hashing for background jobs, at nice BACKGROUND_NICE, so that it does not slow what the user runs. */
  backgroundHasher (): BlockHasher {
    return (this.background ??= new BlockHasher(this.hashThreads, { nice: BACKGROUND_NICE }))
  }

  /** Closes connections, paths and hashing threads (their ports would keep the process alive). */
  async close (): Promise<void> {
    this.cpu.set(false)
    this.rangeClient.close()
    this.wanPaths.close()
    await this.dispatcher.close()
    await this.blockHasher.close()
    await this.background?.close()
  }
}
