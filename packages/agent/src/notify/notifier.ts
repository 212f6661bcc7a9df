import { spawn } from 'node:child_process'
import { Agent, request } from 'undici'
import type { JobView, Logger } from '@canopy/core'
import { backoff } from '../backoff.ts'
import type { JobRecord } from '../jobs/job.ts'
import type { JobStore, NotificationChannel, NotificationRecord } from '../store/job-store.ts'

/** Most notifications recorded and not yet delivered; beyond it new ones are dropped (and logged). */
export const MAX_PENDING_NOTIFICATIONS = 10_000
/** Deliveries under way at once, by kind: commands are processes, so fewer. */
const MAX_ACTIVE = { url: 8, command: 4 } as const
/** After a command's timeout: SIGTERM to its process group, then SIGKILL this much later. */
const KILL_GRACE_MS = 5_000
/** Characters of a command's output kept for the log. */
const OUTPUT_KEPT = 2_048

export interface NotifierOptions {
  store: JobStore
  logger: Logger
  /** Given to commands as CANOPY_STATE_DIR, so that they can ask the agent (`canopy job $CANOPY_JOB_ID`). */
  stateDir: string
  /** Longest wait for a notify URL's answer. */
  timeoutMs: number
  /** Longest run of a command before its process group is killed. */
  commandTimeoutMs: number
  /** First delay before a failed URL delivery is tried again; doubles up to retryMaxMs (±20% jitter). */
  retryMinMs: number
  retryMaxMs: number
  /** Attempts of one URL delivery before it is given up. */
  attempts: number
  /** Agent version, for the User-Agent. */
  version: string
}

type Kind = keyof typeof MAX_ACTIVE

interface Queue {
  kind: Kind
  records: NotificationRecord[]
  busy: boolean
  timer?: NodeJS.Timeout
}

/**
 * Delivers the notifications that job state changes owe, from an outbox in the
 * store. The agent writes a change's records in the same batch as the change
 * (`owe`, then JobStore.putJob), then hands them here (`enqueue`); a record is
 * deleted once delivered or given up. So a recorded change is never lost, and one
 * is delivered again only if the agent stops between a delivery and the deletion
 * of its record (at least once; the delivery id lets receivers drop repeats).
 *
 * Per job, URL deliveries go out one at a time in transition order (a receiver sees
 * the states in the order they happened); commands have their own queue per job so
 * that a slow command does not hold back the URL. Nothing here blocks the scheduler:
 * deliveries run on their own, a bounded number at a time.
 */
export class Notifier {
  readonly #o: NotifierOptions
  readonly #queues = new Map<string, Queue>()
  /** Queues with work that wait for a free delivery slot of their kind. */
  readonly #ready: Record<Kind, Set<string>> = { url: new Set(), command: new Set() }
  readonly #active: Record<Kind, number> = { url: 0, command: 0 }
  readonly #deliveries = new Set<Promise<void>>()
  readonly #stop = new AbortController()
  readonly #http: Agent
  #pending = 0
  #stopping = false

  constructor (options: NotifierOptions) {
    this.#o = options
    this.#http = new Agent({ headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs, connections: MAX_ACTIVE.url })
  }

  /** Notifications recorded and not yet delivered or given up. */
  get pending (): number {
    return this.#pending
  }

  /**
   * The notifications the job's latest state change owes (its `transitions` count
   * numbers it); counted as pending at once. Write them with the change, then
   * `enqueue` them, or `forget` them if the write failed.
   */
  owe (job: JobRecord, view: JobView): NotificationRecord[] {
    const n = job.notify
    if (n === undefined) return []
    const channels: NotificationChannel[] = []
    if (n.url !== undefined) channels.push('url')
    if (n.onComplete !== undefined && job.state === 'acknowledged') channels.push('onComplete')
    if (n.onError !== undefined && job.state === 'error') channels.push('onError')
    if (channels.length === 0) return []
    if (this.#pending + channels.length > MAX_PENDING_NOTIFICATIONS) {
      this.#o.logger.warn('too many notifications pending: this one is dropped', { jobId: job.id, state: job.state, pending: this.#pending })
      return []
    }
    this.#pending += channels.length
    const transition = job.transitions ?? 0
    return channels.map(channel => ({ id: `${job.id}:${transition}`, jobId: job.id, transition, channel, job: view, attempts: 0 }))
  }

  forget (records: readonly NotificationRecord[]): void {
    this.#pending -= records.length
  }

  /** Starts delivering records already written to the store (by `owe` + putJob, or found at start). */
  enqueue (records: readonly NotificationRecord[]): void {
    for (const record of records) {
      const kind: Kind = record.channel === 'url' ? 'url' : 'command'
      const key = `${record.jobId}!${kind}`
      let queue = this.#queues.get(key)
      if (queue === undefined) {
        queue = { kind, records: [], busy: false }
        this.#queues.set(key, queue)
      }
      queue.records.push(record)
      this.#wake(key)
    }
  }

  /** Picks up the outbox left by a previous run (records in job, then transition order). */
  async load (): Promise<void> {
    const records = await this.#o.store.notifications()
    this.#pending += records.length
    if (records.length > 0) this.#o.logger.info('resuming notifications left from the last run', { pending: records.length })
    this.enqueue(records)
  }

  /**
   * Lets deliveries under way finish for up to `graceMs`, then cuts them off (a cut
   * delivery keeps its record: it is made again at the next start). Starts no more.
   */
  async stop (graceMs: number): Promise<void> {
    this.#stopping = true
    for (const q of this.#queues.values()) clearTimeout(q.timer)
    this.#ready.url.clear()
    this.#ready.command.clear()
    const all = Promise.all(this.#deliveries)
    let timer: NodeJS.Timeout | undefined
    await Promise.race([all, new Promise<void>(resolve => { timer = setTimeout(resolve, graceMs) })])
    clearTimeout(timer)
    this.#stop.abort()
    await all
    await this.#http.close()
  }

  #wake (key: string): void {
    const queue = this.#queues.get(key)
    if (queue === undefined || queue.busy || queue.timer !== undefined || this.#stopping) return
    if (queue.records.length === 0) {
      this.#queues.delete(key)
      return
    }
    if (this.#active[queue.kind] >= MAX_ACTIVE[queue.kind]) {
      this.#ready[queue.kind].add(key)
      return
    }
    queue.busy = true
    this.#active[queue.kind]++
    const delivery = this.#deliverHead(queue).catch((err: unknown) => {
      // Only the store can fail here; the record stays and is tried at the next start.
      this.#o.logger.error('could not record a notification', { jobId: key.slice(0, key.lastIndexOf('!')), kind: queue.kind, err: String(err) })
    }).finally(() => {
      this.#deliveries.delete(delivery)
      queue.busy = false
      this.#active[queue.kind]--
      this.#wake(key)
      const next = this.#ready[queue.kind].values().next()
      if (!next.done) {
        this.#ready[queue.kind].delete(next.value)
        this.#wake(next.value)
      }
    })
    this.#deliveries.add(delivery)
  }

  async #deliverHead (queue: Queue): Promise<void> {
    const record = queue.records[0]
    if (record.channel === 'url') {
      const failure = await this.#post(record)
      if (this.#stop.signal.aborted) return
      if (failure !== undefined) {
        record.attempts++
        if (record.attempts < this.#o.attempts) {
          const delay = backoff(record.attempts, this.#o.retryMinMs, this.#o.retryMaxMs)
          this.#o.logger.warn('notify URL failed; will retry', { jobId: record.jobId, state: record.job.state, url: record.job.notify?.url, reason: failure, attempt: record.attempts, retryInMs: delay })
          // The timer first: if the store fails below, the retry still waits its turn.
          queue.timer = setTimeout(() => {
            queue.timer = undefined
            this.#wake(`${record.jobId}!url`)
          }, delay)
          // Counted across restarts, so that a receiver that never recovers costs a bounded number of attempts.
          await this.#o.store.putNotification(record)
          return
        }
        this.#o.logger.warn('notify URL failed too often: notification given up', { jobId: record.jobId, state: record.job.state, url: record.job.notify?.url, reason: failure, attempts: record.attempts })
      }
    } else {
      await this.#runCommand(record)
      if (this.#stop.signal.aborted) return
    }
    // Done in memory first: if the store fails to forget it, the record is delivered
    // again at the next start (at least once), not again and again now.
    queue.records.shift()
    this.#pending--
    await this.#o.store.deleteNotification(record)
  }

  /** POSTs the job; resolves with why it failed, or undefined on a 2xx. */
  async #post (record: NotificationRecord): Promise<string | undefined> {
    const { notify, ...job } = record.job
    try {
      const res = await request(notify!.url!, {
        method: 'POST',
        dispatcher: this.#http,
        headers: {
          'content-type': 'application/json',
          'user-agent': `canopy-agent/${this.#o.version}`,
          'x-canopy-event': 'state',
          // The same for every attempt, across restarts: receivers can drop repeats.
          'x-canopy-delivery': record.id
        },
        body: JSON.stringify(job),
        signal: AbortSignal.any([this.#stop.signal, AbortSignal.timeout(this.#o.timeoutMs)])
      })
      await res.body.dump()
      return res.statusCode >= 200 && res.statusCode < 300 ? undefined : `HTTP ${res.statusCode}`
    } catch (err) {
      const code = (err as { code?: unknown }).code
      return typeof code === 'string' ? code : String(err)
    }
  }

  /** Runs a command once, bounded by the timeout; its failure is logged, never raised. */
  async #runCommand (record: NotificationRecord): Promise<void> {
    const argv = (record.channel === 'onComplete' ? record.job.notify?.onComplete : record.job.notify?.onError) ?? []
    const fields = { jobId: record.jobId, state: record.job.state, command: argv[0] }
    const group = process.platform !== 'win32'
    const outcome = await new Promise<string | undefined>(resolve => {
      let output = ''
      const keep = (chunk: Buffer): void => { output = (output + chunk.toString('utf8')).slice(-OUTPUT_KEPT) }
      const child = spawn(argv[0], argv.slice(1), {
        env: commandEnv(record, this.#o.stateDir),
        stdio: ['ignore', 'pipe', 'pipe'],
        // Its own process group, so that a timeout ends the command's children too.
        detached: group,
        windowsHide: true
      })
      child.stdout.on('data', keep)
      child.stderr.on('data', keep)
      let killTimer: NodeJS.Timeout | undefined
      let why: string | undefined
      const kill = (reason: string): void => {
        why ??= reason
        signalGroup(child.pid, group, 'SIGTERM')
        killTimer ??= setTimeout(() => signalGroup(child.pid, group, 'SIGKILL'), KILL_GRACE_MS)
      }
      const timer = setTimeout(() => kill(`still running after ${this.#o.commandTimeoutMs} ms: killed`), this.#o.commandTimeoutMs)
      const onStop = (): void => kill('the agent is stopping: killed (it runs again at the next start)')
      this.#stop.signal.addEventListener('abort', onStop, { once: true })
      const done = (result: string | undefined): void => {
        clearTimeout(timer)
        clearTimeout(killTimer)
        this.#stop.signal.removeEventListener('abort', onStop)
        // A child of the command may still hold the pipes: the command itself is what we wait for.
        child.stdout.destroy()
        child.stderr.destroy()
        const tail = output.trim()
        resolve(result === undefined ? undefined : tail === '' ? result : `${result}; output: ${tail}`)
      }
      child.once('error', err => done(`could not start: ${(err as NodeJS.ErrnoException).code ?? String(err)}`))
      child.once('exit', (code, signal) => done(why ?? (code === 0 ? undefined : signal !== null ? `ended by ${signal}` : `exit code ${code}`)))
    })
    if (outcome === undefined) this.#o.logger.info('notification command ran', fields)
    else this.#o.logger.warn('notification command failed', { ...fields, reason: outcome })
  }
}

/** The command's environment: the agent's, plus the job's data (never on the command line). */
function commandEnv (record: NotificationRecord, stateDir: string): NodeJS.ProcessEnv {
  const { job } = record
  const vars: Record<string, string | undefined> = {
    CANOPY_JOB_ID: job.id,
    CANOPY_JOB_NAME: job.name,
    CANOPY_JOB_STATE: job.state,
    CANOPY_JOB_PRIORITY: job.priority,
    CANOPY_JOB_PATH: job.files[0]?.path,
    CANOPY_JOB_FILES: String(job.filesTotal),
    CANOPY_JOB_ERROR_CODE: job.state === 'error' ? job.error?.code : undefined,
    CANOPY_JOB_ERROR_MESSAGE: job.state === 'error' ? job.error?.message : undefined,
    CANOPY_NOTIFY_ID: record.id,
    CANOPY_STATE_DIR: stateDir
  }
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const [name, value] of Object.entries(vars)) {
    // A NUL cannot travel in the environment (spawn would refuse the whole command).
    if (value !== undefined) env[name] = value.replaceAll('\0', '')
    else delete env[name]
  }
  return env
}

function signalGroup (pid: number | undefined, group: boolean, signal: NodeJS.Signals): void {
  if (pid === undefined) return
  try {
    process.kill(group ? -pid : pid, signal)
  } catch {
    // already gone
  }
}
