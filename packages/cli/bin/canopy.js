#!/usr/bin/env node
// The `canopy` command. Plain JavaScript so that an old Node.js gets a clear message
// instead of a syntax error: the sources are TypeScript run by Node 24's type stripping.
import { fileURLToPath } from 'node:url'
import { DAEMON_VERBS, daemonFlags } from './daemon-flags.js'

const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(
    `canopy needs Node.js 24 or newer (found v${process.versions.node}): run it through npm (\`npx canopy …\`), ` +
    'which uses the Node 24 that `npm ci` installs\n')
  process.exit(1)
}

// The daemons (`canopy agent`, `canopy origin`) run with V8 flags tuned for moving
// bytes, measured on the 2-vCPU build machines (docs/ARCHITECTURE.md, "Garbage
// collection"): every buffer counts as external memory, and at hundreds of MiB/s V8's
// default runs a full collection every few dozen MiB, with helper threads that cost
// 3-4 CPU seconds per GiB on each side of a peer transfer.
// - --single-threaded-gc: collect on the main thread only, without helper threads
//   (a background service should not take cores from the machine's users either);
// - --external-memory-accounted-in-global-limit: weigh external memory in the heap's
//   global limit, which grows with the heap, instead of a full collection every 64 MiB;
// - --max-semi-space-size=2: a 2 MiB young generation (the default grows to 16 MiB ×3),
//   which kept the agent's peak RSS under 256 MiB and was also faster;
// - --heap-growing-percent=50: the old generation may grow by half its live size before
//   the next full collection (V8's dynamic factor let ~35 MiB of live objects reach
//   ~180 MiB while 1,000 jobs were listed over and over: agent RSS 302 → 203 MiB).
// Flags can only be given at start, so the process replaces itself (execve keeps its
// pid, stdio and signals). CANOPY_DAEMON_NODE_FLAGS replaces the list ("" for V8's defaults).
const EXECED = 'CANOPY_DAEMON_EXECED'
if (process.env[EXECED] !== undefined) {
  delete process.env[EXECED] // not for the commands the agent runs
} else if (DAEMON_VERBS.has(process.argv[2]) && typeof process.execve === 'function') {
  const flags = daemonFlags()
  if (flags.length > 0) {
    process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)],
      { ...process.env, [EXECED]: '1' })
  }
}

await import('../src/main.ts')
