/**
 * The hosted cache's scenarios (issue 18): an always-on branch agent started with
 * `canopy agent --hosted-cache` on the LAN host `hosted-cache`, and agents pointed at
 * it with `--hosted-cache-addr`. They judge what the branch costs the origin once
 * the hosted cache holds the content: after a preload (`hosted-preload`), after the
 * agent that fetched it left (`laptops`), and after the hosted cache was killed and
 * restarted (`hosted-restart`). The origin's bytes are measured at the origin (its
 * /metrics) around each phase, as for every scenario.
 */
import type { JobBytes } from '@canopy/core'
import type { LabAgent, LabRun } from './harness.ts'
import { SEQUENTIAL_BOUND, checkFiles, originBound, ratio, startAgents } from './scenario-kit.ts'
import type { ScenarioSpec } from './scenario-kit.ts'

/** The LAN host of the hosted cache (an extra host: 10.250.2.201). */
const HOSTED = 'hosted-cache'
/**
 * `hosted-preload`: origin bytes while the agents download, once the content is
 * preloaded: 0.00 × to two decimals (manifests are a few KiB; the content none).
 */
const PRELOADED_BOUND = 0.005
/** `laptops`, `hosted-restart`: origin bytes for agents that come once the hosted cache holds the content. */
const IN_BRANCH_BOUND = 0.01
/** Share of what an agent did not take from the origin that must come from the hosted cache. */
const FROM_HOSTED_CACHE = 0.98

/**
 * How long the hosted cache may take to hold the content: set-up, plus `wanCopies`
 * copies of the content over the WAN (a preload crosses it; a pull from an agent
 * crosses only the LAN, so one copy's time is generous).
 */
function cacheTimeoutMs (run: LabRun, wanCopies: number): number {
  return Math.round((60 + wanCopies * run.size * 8 / run.lab.wanBitsPerSecond) * 1000)
}

/**
 * Bytes `agent`'s job took from the hosted cache: the job's verified bytes from the
 * hosted cache's peer id (`byPeer`, saved about once a second), or those it counts as
 * from a hosted cache (`fromCache`: the lab has one), whichever is larger.
 */
export function fromHostedCache (bytes: JobBytes | undefined, hostedPeerId: string): number {
  if (bytes === undefined) return 0
  return Math.max(bytes.byPeer?.[hostedPeerId] ?? 0, bytes.fromCache)
}

/** What each agent's job says of the hosted cache's part (JobFileView.hostedCache.state), when it says. */
function hostedCacheUse (agents: LabAgent[]): Record<string, string> {
  const use: Record<string, string> = {}
  for (const a of agents) {
    const state = a.last?.files[0]?.hostedCache?.state
    if (state !== undefined) use[a.host.name] = state
  }
  return use
}

/** Reasons for agents that took less than FROM_HOSTED_CACHE of their non-origin bytes from the hosted cache. */
function checkFromHostedCache (run: LabRun, agents: LabAgent[], hosted: LabAgent): string[] {
  return agents.flatMap(a => {
    const fromHosted = fromHostedCache(a.last?.bytes, hosted.peerId)
    const rest = run.size - (a.last?.bytes.fromOrigin ?? 0)
    return fromHosted >= FROM_HOSTED_CACHE * rest
      ? []
      : [`${a.host.name} took ${ratio(fromHosted, run.size)} the content from the hosted cache, less than ${FROM_HOSTED_CACHE * 100}% of the ${ratio(rest, run.size)} it did not take from the origin (from other peers: ${ratio((a.last?.bytes.fromPeers ?? 0) + (a.last?.bytes.fromCache ?? 0) - fromHosted, run.size)})`]
  })
}

function seconds (x: number): number {
  return Math.round(x * 1000) / 1000
}

/** Records the hosted cache's own account (`canopy cache --json`, the real command) in the report. */
async function recordCacheView (run: LabRun, hosted: LabAgent): Promise<void> {
  try {
    const view = JSON.parse(await run.canopy(hosted, ['cache', '--json'])) as Record<string, unknown>
    for (const key of ['usedBytes', 'hits', 'misses', 'bytesServed'] as const) {
      if (typeof view[key] === 'number') run.figures[`hostedCache.${key}`] = view[key]
    }
    const entries = Array.isArray(view.entries) ? view.entries as Array<Record<string, unknown>> : []
    run.figures['hostedCache.entries'] = JSON.stringify(entries.map(e => ({ name: e.name, size: e.size, source: e.source })))
  } catch (err) {
    run.figures['hostedCache.cacheJsonError'] = (err as Error).message.slice(0, 500)
  }
}

const hostedPreload: ScenarioSpec = {
  name: 'hosted-preload',
  summary: 'the hosted cache preloads the content (canopy preload); then the agents start the download together',
  expectation: `the hosted cache lists the content; while the agents download, origin bytes < ${PRELOADED_BOUND} × the content (0.00 ×); every file correct; the download time is reported next to one copy's time over the WAN`,
  minAgents: 1,
  extras: [HOSTED],
  defaults: { agents: 8 },
  async run (run, n) {
    const hosted = await run.startHostedCache(HOSTED)
    const beforePreload = await run.counters()
    // The agents start while the preload runs: idle machines of the branch.
    const [agents] = await Promise.all([
      startAgents(run, 1, n, run.hostedCacheArgs(hosted)),
      (async () => {
        await run.startPreload(hosted)
        const cachedAt = await run.waitCached(hosted, cacheTimeoutMs(run, 4))
        if (cachedAt !== undefined) run.figures.preloadSeconds = seconds(cachedAt - hosted.startedAt!)
      })()
    ])
    const preloaded = run.figures.preloadSeconds !== undefined
    const beforeDownload = await run.counters()
    run.figures.preloadOriginRatio = seconds((beforeDownload.originBytes - beforePreload.originBytes) / run.size)
    // Every agent is connected to the hosted cache (what the verdict is about). Not the
    // whole mDNS mesh of nine: on two loaded cores (load average 27) one agent still saw
    // 7 of 8 peers after 60 s, and the agents find each other while they download.
    await waitHostedCache(run, agents, hosted)
    await Promise.all(agents.map(async a => await run.startJob(a)))
    await run.waitDone(agents)
    const afterDownload = await run.counters()
    const downloadOrigin = afterDownload.originBytes - beforeDownload.originBytes
    const first = Math.min(...agents.map(a => a.startedAt!))
    const last = Math.max(...agents.map(a => a.finishedAt!))
    Object.assign(run.figures, {
      downloadOriginBytes: downloadOrigin,
      downloadOriginContentBytes: afterDownload.originContentBytes - beforeDownload.originContentBytes,
      downloadOriginRatio: seconds(downloadOrigin / run.size),
      downloadSeconds: seconds(last - first),
      oneCopyOverWanSeconds: seconds(run.size * 8 / run.lab.wanBitsPerSecond),
      fromHostedCache: Object.fromEntries(agents.map(a => [a.host.name, fromHostedCache(a.last?.bytes, hosted.peerId)])),
      hostedCacheUse: hostedCacheUse(agents)
    })
    await recordCacheView(run, hosted)
    return async () => [
      ...(preloaded ? [] : [`the hosted cache did not list the content within ${cacheTimeoutMs(run, 4) / 1000} s of canopy preload (its preload job: ${hosted.last?.state ?? 'unknown'}${hosted.last?.error !== undefined ? `, ${hosted.last.error.code}: ${hosted.last.error.message}` : ''})`]),
      ...await checkFiles(run, agents),
      ...(downloadOrigin < PRELOADED_BOUND * run.size ? [] : [`while the agents downloaded, the origin sent ${downloadOrigin} bytes (${ratio(downloadOrigin, run.size)} the content), not 0.00 ×`])
    ]
  }
}

/** Waits until each of `agents` is connected to the hosted cache. */
async function waitHostedCache (run: LabRun, agents: LabAgent[], hosted: LabAgent): Promise<void> {
  await Promise.all(agents.map(async a => await run.waitPeer(a, hosted.peerId)))
  run.mark('lan', 'every agent is connected to the hosted cache')
}

/**
 * Runs `agent`'s download to its end with the hosted cache holding nothing yet, waits
 * until the hosted cache lists the content (it pulls it from the agent), and records
 * how long after the download's end that was. Whether it did, and the origin's bytes
 * for the fetch and the pull.
 */
async function fetchAndWaitForPull (run: LabRun, agent: LabAgent, hosted: LabAgent): Promise<{ pulled: boolean, originBytes: number }> {
  const before = await run.counters()
  await run.startJob(agent)
  await run.waitDone([agent])
  const cachedAt = await run.waitCached(hosted, cacheTimeoutMs(run, 1))
  const originBytes = (await run.counters()).originBytes - before.originBytes
  run.figures.firstFetchOriginRatio = seconds(originBytes / run.size)
  if (cachedAt !== undefined) run.figures.pulledSecondsAfterFetch = seconds(cachedAt - agent.finishedAt!)
  return { pulled: cachedAt !== undefined, originBytes }
}

const laptops: ScenarioSpec = {
  name: 'laptops',
  summary: 'agent A fetches the content and the hosted cache pulls it; A leaves (SIGKILL); later agents B and C fetch it one after the other',
  expectation: `A's fetch and the hosted cache's pull take ≤ ${SEQUENTIAL_BOUND} × the content from the origin; B and C together ≤ ${IN_BRANCH_BOUND} ×, each taking ≥ ${FROM_HOSTED_CACHE * 100}% of the rest from the hosted cache; every file correct`,
  minAgents: 3,
  extras: [HOSTED],
  defaults: { agents: 3 },
  async run (run, n) {
    const hosted = await run.startHostedCache(HOSTED)
    const [a] = await startAgents(run, 1, 1, run.hostedCacheArgs(hosted))
    await waitHostedCache(run, [a], hosted)
    const { pulled, originBytes: originA } = await fetchAndWaitForPull(run, a, hosted)
    await run.leave(a)
    const afterA = await run.counters()
    const later = await startAgents(run, 2, n, run.hostedCacheArgs(hosted))
    await waitHostedCache(run, later, hosted)
    for (const agent of later) {
      await run.startJob(agent)
      await run.waitDone([agent])
    }
    const afterLater = await run.counters()
    const originLater = afterLater.originBytes - afterA.originBytes
    Object.assign(run.figures, {
      laterOriginBytes: originLater,
      laterOriginRatio: seconds(originLater / run.size),
      fromHostedCache: Object.fromEntries(later.map(agent => [agent.host.name, fromHostedCache(agent.last?.bytes, hosted.peerId)])),
      hostedCacheUse: hostedCacheUse(later)
    })
    await recordCacheView(run, hosted)
    return async () => [
      ...await checkFiles(run, [a, ...later]),
      ...(pulled ? [] : [`the hosted cache did not list the content within ${cacheTimeoutMs(run, 1) / 1000} s of A's fetch`]),
      ...originBound(run, originA, SEQUENTIAL_BOUND, 0, ' for A\'s fetch and the hosted cache\'s pull'),
      ...originBound(run, originLater, IN_BRANCH_BOUND, 0, ` for the later agents (${later.map(l => l.host.name).join(', ')}), after A left`),
      ...checkFromHostedCache(run, later, hosted)
    ]
  }
}

const hostedRestart: ScenarioSpec = {
  name: 'hosted-restart',
  summary: 'agent 1 fetches the content, the hosted cache pulls it, agent 1 leaves; the hosted cache is killed (SIGKILL) and restarted; agent 2 fetches it',
  expectation: `the first fetch and the pull take ≤ ${SEQUENTIAL_BOUND} × the content from the origin; the restarted hosted cache still lists the content; agent 2 takes ≤ ${IN_BRANCH_BOUND} × the content from the origin and ≥ ${FROM_HOSTED_CACHE * 100}% of the rest from the hosted cache; every file correct`,
  minAgents: 2,
  extras: [HOSTED],
  defaults: { agents: 2 },
  async run (run) {
    let hosted = await run.startHostedCache(HOSTED)
    const [first] = await startAgents(run, 1, 1, run.hostedCacheArgs(hosted))
    await waitHostedCache(run, [first], hosted)
    const { pulled, originBytes: originFirst } = await fetchAndWaitForPull(run, first, hosted)
    // Agent 1 leaves so that only the hosted cache can serve the second fetch.
    await run.leave(first)
    hosted = await run.restart(hosted)
    const keptAfterRestart = await run.cachesContent(hosted).catch(() => false)
    run.figures.listedAfterRestart = keptAfterRestart
    const [second] = await startAgents(run, 2, 2, run.hostedCacheArgs(hosted))
    await waitHostedCache(run, [second], hosted)
    const before = await run.counters()
    await run.startJob(second)
    await run.waitDone([second])
    const after = await run.counters()
    const originSecond = after.originBytes - before.originBytes
    Object.assign(run.figures, {
      secondFetchOriginBytes: originSecond,
      secondFetchOriginRatio: seconds(originSecond / run.size),
      fromHostedCache: { [second.host.name]: fromHostedCache(second.last?.bytes, hosted.peerId) },
      hostedCacheUse: hostedCacheUse([second])
    })
    await recordCacheView(run, hosted)
    return async () => [
      ...await checkFiles(run, [first, second]),
      ...(pulled ? [] : [`the hosted cache did not list the content within ${cacheTimeoutMs(run, 1) / 1000} s of the first fetch`]),
      ...originBound(run, originFirst, SEQUENTIAL_BOUND, 0, ' for the first fetch and the hosted cache\'s pull'),
      ...(keptAfterRestart ? [] : ['the restarted hosted cache does not list the content']),
      ...originBound(run, originSecond, IN_BRANCH_BOUND, 0, ` for ${second.host.name}'s fetch, after the hosted cache's restart`),
      ...checkFromHostedCache(run, [second], hosted)
    ]
  }
}

export const HOSTED_SCENARIOS = {
  'hosted-preload': hostedPreload,
  laptops,
  'hosted-restart': hostedRestart
} as const
