// Shared by the demo and the benchmarks: real `canopy` processes on this machine,
// a generated sample file, and clean shutdown.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { join } from 'node:path'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { CanopyClient } from '@canopy/client'
import { DAEMON_VERBS } from '../../packages/cli/bin/daemon-flags.js'

export const CLI = fileURLToPath(new URL('../../packages/cli/bin/canopy.js', import.meta.url))
const MiB = 1024 * 1024

/** Writes `size` random bytes to `path`, a MiB at a time. */
export async function writeRandomFile (path: string, size: number): Promise<void> {
  const out = createWriteStream(path)
  for (let left = size; left > 0; left -= MiB) {
    if (!out.write(randomBytes(Math.min(left, MiB)))) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
}

/** Runs `fn` with a client of the agent of `stateDir`, closing it afterwards. */
export async function withClient<T> (stateDir: string, fn: (client: CanopyClient) => Promise<T>): Promise<T> {
  const client = new CanopyClient({ stateDir })
  try {
    return await fn(client)
  } finally {
    await client.close()
  }
}

/** Starts `canopy` processes and stops them all at the end. */
export class Processes {
  private readonly children: ChildProcess[] = []

  /** `canopy <args>` with stdout and stderr piped; `cpus` pins it with taskset (e.g. "1"). */
  start (args: string[], cpus?: string): ChildProcess {
    // CANOPY_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the daemons (written when they exit);
    // short commands (keygen, whose stdout is read) run without them.
    const nodeArgs = DAEMON_VERBS.has(args[0]) ? (process.env.CANOPY_NODE_ARGS ?? '').split(' ').filter(Boolean) : []
    const command = [process.execPath, ...nodeArgs, CLI, ...args]
    // taskset execs the command: the child's pid is the canopy process's own.
    const child = cpus === undefined
      ? spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('taskset', ['-c', cpus, ...command], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.children.push(child)
    // CANOPY_PROCESS_LOGS=DIR keeps every process's stderr, for post-mortems.
    const logs = process.env.CANOPY_PROCESS_LOGS
    if (logs !== undefined && logs !== '') {
      child.stderr!.pipe(createWriteStream(join(logs, `${args[0]}-${child.pid}.log`)))
      // An agent's stdout is silent; node flags such as --trace-gc write there.
      if (args[0] === 'agent') child.stdout!.pipe(createWriteStream(join(logs, `${args[0]}-${child.pid}.out`)))
    }
    return child
  }

  /** Starts `canopy origin` on a free port; resolves with its URL and pid once its manifests are computed. */
  async origin (root: string, stateDir: string, cpus?: string): Promise<{ url: string, pid: number }> {
    const origin = this.start(['origin', root, '--port', '0', '--state-dir', stateDir], cpus)
    const url = await new Promise<string>((resolve, reject) => {
      let text = ''
      origin.stderr!.on('data', (d: Buffer) => {
        text += d.toString()
        const match = / at (http:\/\/\S+)/.exec(text)
        if (match !== null && text.includes('manifests ready')) resolve(match[1])
      })
      origin.once('exit', code => reject(new Error(`the origin exited (${code}): ${text}`)))
    })
    return { url, pid: origin.pid! }
  }

  /**
   * Starts `canopy agent` and waits until its control API answers. Its peer node
   * listens on loopback with mDNS off: on this one machine, static peers replace
   * multicast discovery (which must not leave the root namespace).
   */
  async agent (stateDir: string, extraArgs: string[] = [], cpus?: string): Promise<ChildProcess> {
    const child = this.start(['agent', '--state-dir', stateDir, '--no-mdns', '--p2p-host', '127.0.0.1', '--p2p-port', '0', ...extraArgs], cpus)
    const client = new CanopyClient({ stateDir })
    try {
      for (let tries = 0; ; tries++) {
        try {
          await client.status()
          return child
        } catch (err) {
          if (tries > 300 || child.exitCode !== null) throw err
          await new Promise(resolve => setTimeout(resolve, 100))
        }
      }
    } finally {
      await client.close()
    }
  }

  /** Runs `canopy <args>` to its end. */
  async run (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
    const child = this.start(args)
    let stdout = ''
    let stderr = ''
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
    const [code] = await once(child, 'close') as [number | null]
    return { code, stdout, stderr }
  }

  /** SIGTERM to every process still running, and wait for them to exit. */
  async stopAll (): Promise<void> {
    for (const child of this.children) if (child.exitCode === null) child.kill('SIGTERM')
    await Promise.all(this.children.map(async c => c.exitCode === null && c.signalCode === null ? await once(c, 'exit') : undefined))
  }
}
