#!/usr/bin/env node
// The `canopy` command. Plain JavaScript so that an old Node.js gets a clear message
// instead of a syntax error: the sources are TypeScript run by Node 24's type stripping.
const major = Number(process.versions.node.split('.')[0])
const AGENT_GC_FLAG = '--single-threaded-gc'
if (major < 24) {
  process.stderr.write(
    `canopy needs Node.js 24 or newer (found v${process.versions.node}): run it through npm (\`npx canopy …\`), ` +
    'which uses the Node 24 that `npm ci` installs\n')
  process.exit(1)
} else if (process.argv[2] === 'agent' && !process.execArgv.includes(AGENT_GC_FLAG) && typeof process.execve === 'function') {
  // The agent is a background service that moves bytes on machines of a few cores:
  // V8's garbage collector on its helper threads (concurrent marking, parallel
  // scavenges) cost it more CPU than the collection itself saves. One GC thread was
  // measured at 15-25% less agent CPU per GiB (docs/ARCHITECTURE.md, section 11).
  // V8 takes the flag only at start, hence the exec (same process id, same files).
  process.execve(process.execPath, [process.execPath, ...process.execArgv, AGENT_GC_FLAG, ...process.argv.slice(1)])
} else {
  await import('../src/main.ts')
}
