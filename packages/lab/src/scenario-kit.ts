/**
 * What every scenario is made of: its spec, and the steps and verdicts scenarios
 * share (start agents, wait for the mesh, check the files, bound the origin's bytes).
 * Its own module (with the scenarios' names) so that the scenario modules
 * (scenarios.ts, hosted-scenarios.ts) do not import each other.
 */
import type { LabAgent, LabRun } from './harness.ts'

export const SCENARIOS = ['sequential', 'patch-day', 'churn', 'bad-peer', 'unauthorized', 'background', 'hosted-preload', 'laptops', 'hosted-restart'] as const
export type ScenarioName = typeof SCENARIOS[number]

export interface ScenarioSpec {
  name: ScenarioName
  summary: string
  expectation: string
  /** Fewest agent hosts it needs. */
  minAgents: number
  /** Extra LAN hosts it needs (besides agent-1..N). */
  extras: string[]
  /** Its agents and content size when the command line gives none (default: the lab's). */
  defaults?: { agents?: number, size?: number }
  /**
   * Whether the origin's byte count must agree with the WAN's. Not where downloads
   * are cut off on purpose: what the origin had queued for them never crosses.
   */
  countersMustAgree?: boolean
  /** Drives the scenario; returns the checks to judge, each a reason when it failed. */
  run: (run: LabRun, agents: number) => Promise<Judge>
}

/** Given the origin bytes of the run, the reasons the scenario failed (none: pass). */
export type Judge = (originBytes: number) => Promise<string[]>

/** Origin bytes allowed for one copy of the content: the copy, plus manifests and retries. */
export const SEQUENTIAL_BOUND = 1.05

export const agentName = (i: number): string => `agent-${i}`
export const ratio = (bytes: number, size: number): string => `${(bytes / size).toFixed(2)} ×`

/** Starts agent-`from` .. agent-`to` at once, each with `extraArgs`. */
export async function startAgents (run: LabRun, from: number, to: number, extraArgs: string[] = []): Promise<LabAgent[]> {
  const names: string[] = []
  for (let i = from; i <= to; i++) names.push(agentName(i))
  return await Promise.all(names.map(async name => await run.startAgent(name, { extraArgs })))
}

/** Waits until each of `agents` found `peers` peers by mDNS. */
export async function waitMesh (run: LabRun, agents: LabAgent[], peers: number): Promise<void> {
  await Promise.all(agents.map(async a => await run.waitConnected(a, peers)))
  run.mark('lan', `mDNS: every agent sees ${peers} peer${peers === 1 ? '' : 's'}`)
}

/** Reasons for agents whose job did not end acknowledged with the right bytes. */
export async function checkFiles (run: LabRun, agents: LabAgent[]): Promise<string[]> {
  const reasons: string[] = []
  for (const agent of agents) {
    const state = agent.last?.state
    if (state !== 'acknowledged') reasons.push(`${agent.host.name}: job ended ${state ?? 'unstarted'}${agent.last?.error !== undefined ? ` (${agent.last.error.code}: ${agent.last.error.message})` : ''}`)
    else if (!await run.fileCorrect(agent)) reasons.push(`${agent.host.name}: its file does not have the content's SHA-256`)
  }
  return reasons
}

/** The reason when the origin sent more than `bound` × the content (plus `allowance` bytes). */
export function originBound (run: LabRun, originBytes: number, bound: number, allowance = 0, why = ''): string[] {
  const limit = bound * run.size + allowance
  return originBytes <= limit ? [] : [`the origin sent ${ratio(originBytes, run.size)} the content, more than ${ratio(limit, run.size)}${why}`]
}
