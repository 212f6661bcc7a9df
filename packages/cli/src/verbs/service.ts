/**
 * The daemons under a service manager: readiness for systemd's Type=notify, and
 * SIGHUP to reload what can change while running.
 */
import { spawn } from 'node:child_process'
import type { Logger } from '@canopy/core'

/** How long systemd-notify may take; it waits until systemd has read the message, which is quick. */
const NOTIFY_TIMEOUT_MS = 10_000

/**
 * Tells systemd the daemon is ready (Type=notify), when it started us with
 * NOTIFY_SOCKET. The protocol is one datagram on a Unix socket, and Node.js has no
 * Unix datagram sockets, so `systemd-notify --ready` sends it: the unit says
 * NotifyAccess=all so that systemd takes it from a child, and systemd-notify waits
 * (a barrier) until systemd has read it, so it cannot be dropped because the sender
 * already exited. Resolves once it is sent or failed (a failure is logged: systemd
 * then stops the service at its start timeout, which says more than a hang).
 */
export async function notifyReady (status: string, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (env.NOTIFY_SOCKET === undefined || env.NOTIFY_SOCKET === '') return
  await new Promise<void>(resolve => {
    const child = spawn('systemd-notify', ['--ready', `--status=${status}`], { stdio: ['ignore', 'ignore', 'pipe'], env, timeout: NOTIFY_TIMEOUT_MS })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 2000) stderr += d })
    child.once('error', err => {
      logger.error('could not tell systemd the service is ready: systemd-notify did not start', { err })
      resolve()
    })
    child.once('close', (code, signal) => {
      if (code !== 0) logger.error('could not tell systemd the service is ready', { exit: code ?? signal, stderr: stderr.trim() })
      resolve()
    })
  })
}

/**
 * Calls `reload` on every SIGHUP, one at a time (a SIGHUP during a reload runs it once
 * more afterwards). Without a handler SIGHUP would end the process. `dispose` stops.
 */
export function onReload (reload: () => Promise<void>, logger: Logger): { dispose: () => void } {
  let running: Promise<void> | undefined
  let again = false
  const start = (): void => {
    running = reload()
      .catch((err: unknown) => { logger.error('reload failed: the running settings are kept', { err }) })
      .finally(() => {
        running = undefined
        if (again) {
          again = false
          start()
        }
      })
  }
  const onHup = (): void => {
    if (running !== undefined) again = true
    else start()
  }
  process.on('SIGHUP', onHup)
  return { dispose: () => { process.off('SIGHUP', onHup) } }
}
