import { readFileSync } from 'node:fs'

/** The version of canopy: the CLI package's own. */
export function version (): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}
