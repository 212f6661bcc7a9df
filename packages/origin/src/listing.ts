import { constants } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { isInside, openInside, type Jail } from './paths.ts'

export interface ListingEntry {
  name: string
  type: 'file' | 'directory' | 'symlink' | 'other'
}

/**
 * Entries of a directory, minus origin state, sorted by name; undefined when what
 * is at `abs` now is not a directory inside the jail. On Linux the directory is
 * read through the descriptor openInside checked (/proc/self/fd/N), so a directory
 * swapped for a link after the check cannot list another one.
 */
export async function listDirectory (jail: Jail, abs: string): Promise<ListingEntry[] | undefined> {
  const dir = await openInside(jail, abs, constants.O_RDONLY | constants.O_DIRECTORY)
  if (dir === undefined) return undefined
  let entries
  try {
    entries = await readdir(`/proc/self/fd/${dir.fd}`, { withFileTypes: true }).catch(async () => await readdir(abs, { withFileTypes: true }))
  } finally {
    await dir.close()
  }
  return entries
    .filter(e => !jail.excluded.some(ex => isInside(ex, join(abs, e.name))))
    .map((e): ListingEntry => ({
      name: e.name,
      type: e.isFile() ? 'file' : e.isDirectory() ? 'directory' : e.isSymbolicLink() ? 'symlink' : 'other'
    }))
    .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
}

const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c)

/** `base` is the directory's URL path ending in `/`. */
export function listingHtml (base: string, entries: ListingEntry[]): string {
  const items = entries.map(e => {
    const href = base + encodeURIComponent(e.name) + (e.type === 'directory' ? '/' : '')
    return `<li><a href="${escapeHtml(href)}">${escapeHtml(e.name)}${e.type === 'directory' ? '/' : ''}</a></li>`
  })
  const title = escapeHtml(decodeURIComponent(base))
  return `<!doctype html>\n<meta charset="utf-8">\n<title>${title}</title>\n<h1>${title}</h1>\n<ul>\n${items.join('\n')}\n</ul>\n`
}
