/**
 * The lab's picture: one panel per agent, bytes received over time, stacked by
 * source (origin below, peers above, a hosted cache on top), with the scenario's events (jobs starting,
 * an agent leaving) as ticks. Plain SVG, no dependencies; opens in any browser.
 */
import type { LabReport } from './report.ts'

const WIDTH = 760
const LEFT = 110
const RIGHT = 20
const PANEL = 90
const GAP = 22
const TOP = 56
const COLORS = { origin: '#d9822b', peers: '#2b8a3e', cache: '#1971c2', axis: '#555', event: '#888' }

function escape (text: string): string {
  return text.replace(/[&<>"]/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!)
}

export function renderChart (report: LabReport): string {
  const end = Math.max(1, ...report.hosts.flatMap(h => h.samples.map(s => s.t)), ...report.timeline.map(e => e.t))
  const plotWidth = WIDTH - LEFT - RIGHT
  const x = (t: number): number => LEFT + (t / end) * plotWidth
  const height = TOP + report.hosts.length * (PANEL + GAP) + 30
  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" font-family="sans-serif" font-size="11">`)
  parts.push(`<rect width="100%" height="100%" fill="white"/>`)
  const verdict = report.pass ? 'pass' : `FAIL: ${report.reasons.join('; ')}`
  parts.push(`<text x="10" y="18" font-size="14" font-weight="bold">${escape(`${report.scenario}: ${report.agents} agents, ${(report.size / 1048576).toFixed(0)} MiB, WAN ${report.wan.bitsPerSecond / 1e6} Mbit/s; origin sent ${report.origin.ratio} × the content`)}</text>`)
  parts.push(`<text x="10" y="34" fill="${report.pass ? COLORS.peers : '#c00'}">${escape(verdict)}</text>`)
  parts.push(`<rect x="${LEFT}" y="40" width="10" height="10" fill="${COLORS.origin}"/><text x="${LEFT + 14}" y="49">from the origin (over the WAN)</text>`)
  parts.push(`<rect x="${LEFT + 200}" y="40" width="10" height="10" fill="${COLORS.peers}"/><text x="${LEFT + 214}" y="49">from peers (on the LAN)</text>`)
  parts.push(`<rect x="${LEFT + 360}" y="40" width="10" height="10" fill="${COLORS.cache}"/><text x="${LEFT + 374}" y="49">from the hosted cache (on the LAN)</text>`)

  report.hosts.forEach((host, i) => {
    const top = TOP + i * (PANEL + GAP) + GAP
    const y = (bytes: number): number => top + PANEL - (bytes / report.size) * PANEL
    parts.push(`<text x="10" y="${top + PANEL / 2}">${escape(host.host)}${host.member ? '' : ' (no key)'}</text>`)
    parts.push(`<text x="10" y="${top + PANEL / 2 + 14}" fill="${COLORS.axis}">${escape(host.left === true ? 'left' : host.state)}${host.seconds !== undefined ? ` ${host.seconds} s` : ''}</text>`)
    parts.push(`<rect x="${LEFT}" y="${top}" width="${plotWidth}" height="${PANEL}" fill="none" stroke="${COLORS.axis}" stroke-width="0.5"/>`)
    if (host.samples.length > 0) {
      const s = host.samples
      const originLine = s.map(p => `${x(p.t).toFixed(1)},${y(p.fromOrigin).toFixed(1)}`)
      const peersLine = s.map(p => `${x(p.t).toFixed(1)},${y(p.fromOrigin + p.fromPeers).toFixed(1)}`)
      const totalLine = s.map(p => `${x(p.t).toFixed(1)},${y(p.fromOrigin + p.fromPeers + p.fromCache).toFixed(1)}`)
      const base = `${x(s.at(-1)!.t).toFixed(1)},${y(0)} ${x(s[0].t).toFixed(1)},${y(0)}`
      parts.push(`<polygon points="${originLine.join(' ')} ${base}" fill="${COLORS.origin}"/>`)
      parts.push(`<polygon points="${peersLine.join(' ')} ${[...originLine].reverse().join(' ')}" fill="${COLORS.peers}"/>`)
      parts.push(`<polygon points="${totalLine.join(' ')} ${[...peersLine].reverse().join(' ')}" fill="${COLORS.cache}"/>`)
    }
    for (const event of report.timeline.filter(e => e.host === host.host && e.what !== 'agent started')) {
      parts.push(`<line x1="${x(event.t).toFixed(1)}" x2="${x(event.t).toFixed(1)}" y1="${top}" y2="${top + PANEL}" stroke="${COLORS.event}" stroke-dasharray="3,2"/>`)
      // Labels near the right edge end at their tick instead of starting there.
      const anchor = x(event.t) > LEFT + plotWidth * 0.75 ? 'end' : 'start'
      parts.push(`<text x="${(x(event.t) + (anchor === 'end' ? -2 : 2)).toFixed(1)}" y="${top - 3}" text-anchor="${anchor}" fill="${COLORS.event}">${escape(event.what)}</text>`)
    }
  })
  const axisY = TOP + report.hosts.length * (PANEL + GAP) + 16
  for (let k = 0; k <= 4; k++) {
    const t = (end * k) / 4
    parts.push(`<text x="${x(t).toFixed(1)}" y="${axisY}" text-anchor="middle" fill="${COLORS.axis}">${t.toFixed(1)} s</text>`)
  }
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}
