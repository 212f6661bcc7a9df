/**
 * @canopy/lab: the branch-office lab. One topology (topology.ts) built two ways:
 * Linux network namespaces (netns.ts) and Docker containers through docker-compose
 * (compose-lab.ts; docker-compose.yml for hand use, compose.ts); scenarios that drive real agents on it and
 * judge the result (scenarios.ts, run-scenario.ts); a chart of the swarm at work.
 */
export { ADDRESSES, CONTENT_PATH, LAB_DEFAULTS, MAX_AGENTS, ORIGIN_PORT, formatRate, parseRate, tbfArguments } from './topology.ts'
export { NetnsLab, cleanNamespaces, netnsSupport, NAMESPACE_PREFIX } from './netns.ts'
export type { LabHost, NetnsLabOptions, Support } from './netns.ts'
export { SCENARIOS, SCENARIO_SPECS, scenarioSpec } from './scenarios.ts'
export type { ScenarioName, ScenarioSpec } from './scenarios.ts'
export { countersAgree, runScenario } from './run-scenario.ts'
export type { HostReport, LabReport, ScenarioOptions } from './run-scenario.ts'
export { renderChart } from './chart.ts'
export { renderCompose, renderRunCompose } from './compose.ts'
export type { RunComposeOptions } from './compose.ts'
export { ComposeLab, cleanComposeLabs, composeSupport } from './compose-lab.ts'
export { ENGINES } from './engine.ts'
export type { EngineName, LabEngine, LabEngineOptions } from './engine.ts'
