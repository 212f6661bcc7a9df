/**
 * What the control API shows of jobs: views with progress, recent rate, limits in
 * force and the plain-language reason of their state.
 */
import type { JobView } from '@canopy/core'
import { blockedReason, limitsOf } from '../scheduler/policy.ts'
import type { CapsInput, RunView, SchedulerLimits } from '../scheduler/policy.ts'
import { competition, reasonFor } from '../scheduler/waiting.ts'
import type { Competition } from '../scheduler/waiting.ts'
import { toView } from './job.ts'
import type { JobEntry, JobTable } from './job-table.ts'

export interface JobViewsComponents {
  table: JobTable
  now: () => number
  limits: SchedulerLimits
  /** The bandwidth policy's caps in force now: a job a cap of 0 blocks says so. */
  caps?: () => CapsInput
}

export class JobViews {
  private readonly components: JobViewsComponents

  constructor (components: JobViewsComponents) {
    this.components = components
  }

  /** Every job, oldest first. */
  list (): JobView[] {
    // One snapshot of who competes for the slots serves every waiting job's reason.
    const snapshot = this.competition()
    return [...this.components.table.values()].sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt)).map(e => this.view(e, snapshot))
  }

  view (entry: JobEntry, snapshot?: Competition): JobView {
    const job = entry.record
    const progress = entry.progress.map((p, i) => {
      const f = job.files[i]
      if (f.bytesBySource !== undefined) {
        return { bytesDone: Math.max(f.size, 0), fromOrigin: f.bytesBySource.origin, fromPeers: f.bytesBySource.peers, fromCache: f.bytesBySource.cache }
      }
      return p
    })
    const rate = this.rateOf(entry)
    const reason = job.state === 'transferring' ? entry.lease?.why() : reasonFor(job, entry.run, this.components.now(), () => snapshot ?? this.competition(), blockedReason(job, this.components.caps?.()))
    return toView(job, { progress, reason, limits: limitsOf(job, this.components.limits), ...(rate !== undefined ? { rate } : {}) })
  }

  /** Updates the job's recent rate (bytes/s, smoothed over about two samples of 0.5 s or more). */
  sampleRate (entry: JobEntry, now: number): void {
    const bytes = entry.progress.reduce((sum, p) => sum + (p?.bytesDone ?? 0), 0)
    const last = entry.rate
    if (last === undefined || now <= last.at || bytes < last.bytes) {
      entry.rate = { at: now, bytes, ...(last?.rate !== undefined ? { rate: last.rate } : {}) }
      return
    }
    const instant = (bytes - last.bytes) * 1000 / (now - last.at)
    entry.rate = { at: now, bytes, rate: last.rate === undefined ? instant : (last.rate + instant) / 2 }
  }

  /** The job's recent rate while it transfers and has moved bytes in the last 3 s. */
  private rateOf (entry: JobEntry): number | undefined {
    const sample = entry.rate
    if (entry.record.state !== 'transferring' || sample?.rate === undefined || this.components.now() - sample.at > 3000) return undefined
    return Math.round(sample.rate)
  }

  private competition (): Competition {
    const { table, now } = this.components
    return competition(table.records(), runs(table), now())
  }
}

/** The runs of the table's jobs, by job id. */
export function runs (table: JobTable): Map<string, RunView> {
  const map = new Map<string, RunView>()
  for (const entry of table.values()) if (entry.run !== undefined) map.set(entry.id, entry.run)
  return map
}
