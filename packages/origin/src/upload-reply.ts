import { spawn } from 'node:child_process'

/** The `--on-upload` handler: a command run once per completed upload; its stdout is the reply. */
export interface UploadHandlerOptions {
  /** argv of the command (the CLI passes `['/bin/sh', '-c', CMD]`). */
  command: string[]
  /** Killed (with its process group) after this long; default 60 000 ms. */
  timeoutMs?: number
  /** A reply longer than this fails the handler; default 1 MiB. */
  maxReplyBytes?: number
}

export const DEFAULT_HANDLER_TIMEOUT_MS = 60_000
export const DEFAULT_MAX_REPLY_BYTES = 1024 * 1024
/** Between SIGTERM and SIGKILL. */
const KILL_GRACE_MS = 2_000
/** stderr kept for the failure reason. */
const STDERR_KEPT = 2_048

export type HandlerOutcome = { ok: true, reply: Buffer } | { ok: false, reason: string }

/**
 * Runs the handler with the upload's facts in its environment (never on its command
 * line: metadata is client input). Never rejects: a handler that cannot start, exits
 * non-zero, runs too long or says too much is a failed outcome with a plain reason.
 */
export async function runUploadHandler (options: UploadHandlerOptions, env: Record<string, string>, signal: AbortSignal): Promise<HandlerOutcome> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_HANDLER_TIMEOUT_MS
  const maxReply = options.maxReplyBytes ?? DEFAULT_MAX_REPLY_BYTES
  const group = process.platform !== 'win32'
  return await new Promise<HandlerOutcome>(resolve => {
    const stdout: Buffer[] = []
    let stdoutBytes = 0
    let stderr = ''
    const child = spawn(options.command[0], options.command.slice(1), {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so that a timeout ends the handler's children too.
      detached: group,
      windowsHide: true
    })
    let why: string | undefined
    let killTimer: NodeJS.Timeout | undefined
    const kill = (reason: string): void => {
      why ??= reason
      signalGroup(child.pid, group, 'SIGTERM')
      killTimer ??= setTimeout(() => signalGroup(child.pid, group, 'SIGKILL'), KILL_GRACE_MS)
    }
    child.stdout.on('data', (chunk: Buffer) => {
      stdoutBytes += chunk.length
      if (stdoutBytes > maxReply) kill(`its reply is longer than ${maxReply} bytes: killed`)
      else stdout.push(chunk)
    })
    child.stderr.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_KEPT) })
    const timer = setTimeout(() => kill(`still running after ${timeoutMs} ms: killed`), timeoutMs)
    const onAbort = (): void => kill('the origin is stopping: killed')
    signal.addEventListener('abort', onAbort, { once: true })
    let settled = false
    const done = (failure: string | undefined): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      clearTimeout(killTimer)
      signal.removeEventListener('abort', onAbort)
      // A child of the handler may still hold the pipes: the handler itself is what we wait for.
      child.stdout.destroy()
      child.stderr.destroy()
      const tail = stderr.trim()
      if (failure === undefined) resolve({ ok: true, reply: Buffer.concat(stdout) })
      else resolve({ ok: false, reason: tail === '' ? failure : `${failure}; stderr: ${tail}` })
    }
    child.once('error', err => done(`the upload handler could not start: ${(err as NodeJS.ErrnoException).code ?? String(err)}`))
    // A grandchild that escaped the process group may keep the pipes open: do not wait for it forever.
    child.once('exit', () => setTimeout(() => done(why ?? 'the upload handler exited but its output stayed open'), KILL_GRACE_MS).unref())
    child.once('close', (code, sig) => done(why ?? (code === 0 ? undefined : sig !== null ? `the upload handler was ended by ${sig}` : `the upload handler exited with code ${code}`)))
  })
}

function signalGroup (pid: number | undefined, group: boolean, signal: NodeJS.Signals): void {
  if (pid === undefined) return
  try {
    process.kill(group ? -pid : pid, signal)
  } catch {
    // already gone
  }
}
