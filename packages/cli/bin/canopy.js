#!/usr/bin/env node
// The `canopy` command. Plain JavaScript so that an old Node.js gets a clear message
// instead of a syntax error: the sources are TypeScript run by Node 24's type stripping.
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(
    `canopy needs Node.js 24 or newer (found v${process.versions.node}): run it through npm (\`npx canopy …\`), ` +
    'which uses the Node 24 that `npm ci` installs\n')
  process.exit(1)
} else {
  await import('../src/main.ts')
}
