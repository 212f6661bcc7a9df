export { createAgentMetrics } from './agent-metrics.ts'
export type { AgentMetrics, AgentMetricsComponents, AgentMetricsInit, BanReason, ByteSource, ByteTotals, SharingMetrics } from './agent-metrics.ts'
export { parseMetricsListen, serveMetrics, startMetricsServer } from './metrics-server.ts'
export type { MetricsServer, MetricsServerComponents, MetricsServerInit } from './metrics-server.ts'
