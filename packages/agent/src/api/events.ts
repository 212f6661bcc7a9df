import type { ServerResponse } from 'node:http'
import { CanopyError, FINAL_STATES } from '@canopy/core'
import type { AgentControl, AgentEvent, JobView, Logger } from '@canopy/core'

/** A comment line this often, so that both ends can tell an idle stream from a dead one. */
export const HEARTBEAT_MS = 15_000
/**
 * Bytes written to one event client and not yet taken by it, beyond which the
 * client is disconnected: a client that does not read must not make the agent
 * buffer without bound. Progress events stop being written long before (at the
 * socket's high-water mark); only state events can get this far.
 */
export const MAX_UNSENT_BYTES = 8 * 1024 * 1024
/** Event streams open at once; each holds listeners on the agent (four: see serveEvents). */
export const MAX_EVENT_CLIENTS = 64

/** The open event streams of an API server. */
export class EventClients {
  readonly open = new Set<ServerResponse>()

  /**
   * Ends every stream cleanly (the agent is stopping), so that clients see an end,
   * not a broken connection; waits at most `waitMs` for the ends to be written.
   */
  async endAll (waitMs: number): Promise<void> {
    const ended = [...this.open].map(async res => await new Promise<void>(resolve => {
      res.once('close', resolve)
      res.end(resolve)
    }))
    let timer: NodeJS.Timeout | undefined
    await Promise.race([Promise.all(ended), new Promise<void>(resolve => { timer = setTimeout(resolve, waitMs) })])
    clearTimeout(timer)
  }
}

/**
 * Serves `GET /v1/events[?job=<id>]` as server-sent events. Listens to the agent
 * before it writes the headers, then writes a `snapshot` of the job (or of every
 * job not in a final state), so a client that has the headers misses nothing.
 *
 * Back-pressure: while the socket is above its high-water mark, progress events are
 * not written; the latest one per job is kept and written on `drain`, unless a state
 * event of that job went out meanwhile. State, updated and removed events are always
 * written; past MAX_UNSENT_BYTES the client is disconnected (it can reconnect and
 * gets a fresh snapshot). Closing the connection removes the listeners and timer.
 *
 * Throws (before anything is written) ERR_JOB_NOT_FOUND for an unknown job and
 * ERR_TOO_MANY_CLIENTS beyond MAX_EVENT_CLIENTS.
 */
export async function serveEvents (agent: AgentControl, clients: EventClients, res: ServerResponse, jobId: string | undefined, logger: Logger): Promise<void> {
  const snapshot = jobId !== undefined ? [await agent.getJob(jobId)] : (await agent.listJobs()).filter(j => !FINAL_STATES.includes(j.state))
  if (clients.open.size >= MAX_EVENT_CLIENTS) {
    throw new CanopyError('ERR_TOO_MANY_CLIENTS', `The agent serves at most ${MAX_EVENT_CLIENTS} event streams at once: close one (canopy watch) and try again`)
  }
  clients.open.add(res)
  const held = new Map<string, JobView>()
  const matches = (id: string): boolean => jobId === undefined || id === jobId
  const write = (event: AgentEvent): void => {
    if (res.destroyed) return
    res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`)
    if (res.writableLength > MAX_UNSENT_BYTES) {
      logger.warn('an event client does not keep up: disconnected', { unsentBytes: res.writableLength })
      res.destroy()
    }
  }
  const onState = (job: JobView): void => {
    if (!matches(job.id)) return
    held.delete(job.id)
    write({ type: 'state', job })
  }
  const onUpdated = (job: JobView): void => {
    if (matches(job.id)) write({ type: 'updated', job })
  }
  const onRemoved = (id: string): void => {
    if (!matches(id)) return
    held.delete(id)
    write({ type: 'removed', jobId: id })
  }
  const onProgress = (job: JobView): void => {
    if (!matches(job.id)) return
    if (res.writableNeedDrain) held.set(job.id, job)
    else write({ type: 'progress', job })
  }
  const onDrain = (): void => {
    const late = [...held.values()]
    held.clear()
    for (const job of late) onProgress(job)
  }
  const heartbeat = setInterval(() => { if (!res.destroyed) res.write(': heartbeat\n\n') }, HEARTBEAT_MS)
  agent.on('job:state', onState)
  agent.on('job:progress', onProgress)
  agent.on('job:updated', onUpdated)
  agent.on('job:removed', onRemoved)
  res.on('drain', onDrain)
  res.once('close', () => {
    clients.open.delete(res)
    clearInterval(heartbeat)
    agent.off('job:state', onState)
    agent.off('job:progress', onProgress)
    agent.off('job:updated', onUpdated)
    agent.off('job:removed', onRemoved)
    held.clear()
  })
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store' })
  res.flushHeaders()
  for (const job of snapshot) write({ type: 'snapshot', job })
}
