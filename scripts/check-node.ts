// Guard of the npm scripts: Canopy needs Node.js 24 (libp2p 3, undici 8, type stripping).
// `npm ci` installs it as a dev dependency and npm scripts put it first on PATH.
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  console.error(`Canopy needs Node.js 24; this is ${process.version}. Run 'npm ci' first: it installs Node 24 into node_modules/.bin, which npm scripts use.`)
  process.exit(1)
}
