// Fails (exit 1) when modules of packages/ import each other in a circle, directly or
// through others; part of `npm run lint`. Type-only imports count: a circle of types
// is still two modules that cannot be read or changed one without the other.
//
// Why a script of our own and not madge: the TypeScript compiler (already a dev
// dependency) lists a file's imports, `import type` and `.ts` specifiers included,
// and the graph is a hundred files: a Tarjan pass over it is forty lines and runs in
// well under a second, where madge would add a hundred packages to the install.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const packagesDir = join(root, 'packages')

/** Workspace package name (and subpath exports) -> the file it resolves to. */
const packageEntries = new Map<string, string>()
for (const name of readdirSync(packagesDir)) {
  const manifest = JSON.parse(readFileSync(join(packagesDir, name, 'package.json'), 'utf8')) as { name: string, exports?: Record<string, string> | string }
  const exports = typeof manifest.exports === 'string' ? { '.': manifest.exports } : manifest.exports ?? {}
  for (const [subpath, target] of Object.entries(exports)) {
    packageEntries.set(subpath === '.' ? manifest.name : `${manifest.name}/${subpath.slice(2)}`, join(packagesDir, name, target))
  }
}

function sourceFiles (dir: string): string[] {
  return readdirSync(dir).flatMap(entry => {
    const path = join(dir, entry)
    if (entry === 'node_modules') return []
    if (statSync(path).isDirectory()) return sourceFiles(path)
    return /\.(ts|js)$/.test(entry) ? [path] : []
  })
}

/** The modules of packages/ a file imports (relative paths and workspace packages; others are leaves). */
function importsOf (file: string): string[] {
  const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true)
  return importedFiles.flatMap(({ fileName }) => {
    if (fileName.startsWith('.')) return [resolve(dirname(file), fileName)]
    const entry = packageEntries.get(fileName)
    return entry === undefined ? [] : [entry]
  })
}

const files = readdirSync(packagesDir).flatMap(name => ['src', 'bin'].map(d => join(packagesDir, name, d)))
  .filter(dir => statSync(dir, { throwIfNoEntry: false })?.isDirectory() === true)
  .flatMap(sourceFiles)
const graph = new Map(files.map(f => [f, importsOf(f).filter(i => i !== f)]))

// Tarjan's strongly connected components: every component of more than one module is a circle.
const index = new Map<string, number>()
const low = new Map<string, number>()
const stack: string[] = []
const onStack = new Set<string>()
const circles: string[][] = []
let next = 0
function visit (v: string): void {
  index.set(v, next)
  low.set(v, next++)
  stack.push(v)
  onStack.add(v)
  for (const w of graph.get(v) ?? []) {
    if (!graph.has(w)) continue
    if (!index.has(w)) {
      visit(w)
      low.set(v, Math.min(low.get(v)!, low.get(w)!))
    } else if (onStack.has(w)) {
      low.set(v, Math.min(low.get(v)!, index.get(w)!))
    }
  }
  if (low.get(v) === index.get(v)) {
    const component: string[] = []
    let w: string
    do {
      w = stack.pop()!
      onStack.delete(w)
      component.push(w)
    } while (w !== v)
    if (component.length > 1) circles.push(component)
  }
}
for (const file of graph.keys()) if (!index.has(file)) visit(file)

if (circles.length > 0) {
  for (const circle of circles) {
    console.error(`import circle: ${circle.map(f => relative(root, f)).sort().join(' <-> ')}`)
  }
  console.error('Break each circle: move what both sides need into a module of its own (types into a types-only module).')
  process.exit(1)
}
console.log(`no import circles among ${graph.size} modules of packages/`)
