// Browser code: tsconfig.json leaves it out (the project's types have no DOM); the
// headless-browser test (test/dashboard.test.ts) runs this page against a real agent.
/* global document, window, fetch, sessionStorage, history, location, URLSearchParams */
// The Canopy agent's web dashboard: plain JS, no build step. Data comes from the
// control API with the bearer token given in the URL's fragment (#token=...), kept
// in sessionStorage and taken out of the address bar. Jobs are live through the
// event stream (GET /v1/events, read with fetch: EventSource cannot send a token);
// status, peers and cache are polled every few seconds.

const POLL_MS = 3000
/** Points kept on the chart (at POLL_MS: 10 minutes). */
const CHART_POINTS = 200
const SOURCES = [
  { key: 'fromOrigin', label: 'origin', color: 'var(--origin)' },
  { key: 'fromPeers', label: 'peers', color: 'var(--peer)' },
  { key: 'fromCache', label: 'hosted cache', color: 'var(--cache)' }
]

const fragment = new URLSearchParams(location.hash.slice(1))
if (fragment.has('token')) {
  sessionStorage.setItem('canopy-token', fragment.get('token'))
  history.replaceState(null, '', location.pathname + location.search)
}
// A token pasted into the address bar of an open page: start again with it.
window.addEventListener('hashchange', () => location.reload())
const token = sessionStorage.getItem('canopy-token')
const headers = token === null ? {} : { authorization: `Bearer ${token}` }

const jobs = new Map()
const samples = []

function $ (id) { return document.getElementById(id) }

function el (tag, props = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v
    else if (k === 'title') node.title = v
    else node.setAttribute(k, v)
  }
  for (const c of children) node.append(c instanceof window.Node ? c : String(c))
  return node
}

function svg (tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v))
  return node
}

function bytes (n) {
  if (!(n >= 0)) return '?'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`
}

function share (b) {
  const total = b.fromOrigin + b.fromPeers + b.fromCache
  return total === 0 ? '–' : `${((b.fromPeers + b.fromCache) / total * 100).toFixed(1)} %`
}

async function api (path) {
  const res = await fetch(path, { headers, cache: 'no-store' })
  if (!res.ok) {
    const body = await res.json().catch(() => ({}))
    const err = new Error(body.error?.message ?? `${path}: HTTP ${res.status}`)
    err.status = res.status
    throw err
  }
  return await res.json()
}

function showError (err) {
  $('error').textContent = err === undefined ? '' : err.status === 401
    ? 'The agent wants its token: open the URL that `canopy dashboard` prints (…/dashboard/#token=…).'
    : String(err.message ?? err)
}

function renderStatus (status) {
  const peer = status.peer === undefined ? 'no peer node' : `peer ${status.peer.peerId.slice(0, 16)}…, ${status.peer.connected} connected`
  $('agent').textContent = `v${status.version} · pid ${status.pid} · started ${status.startedAt} · ${peer}`
  const b = status.bytes
  const dl = $('totals')
  dl.replaceChildren(...[
    ['from origin', bytes(b.fromOrigin), 'src-origin'],
    ['from peers', bytes(b.fromPeers), 'src-peer'],
    ['from hosted cache', bytes(b.fromCache), 'src-cache'],
    ['share from peers', share(b), ''],
    ['served to peers', bytes(b.servedToPeers), '']
  ].map(([term, value, cls]) => el('div', { 'data-total': term }, el('dt', {}, term), el('dd', { class: cls }, value))))
  samples.push({ at: Date.now(), ...b })
  if (samples.length > CHART_POINTS) samples.shift()
  renderChart()
}

/** Cumulative bytes by source since the page opened, one line per source. */
function renderChart () {
  const chart = $('chart')
  const W = 600; const H = 160; const PAD = 4
  const base = samples[0]
  const points = samples.map(s => Object.fromEntries(SOURCES.map(({ key }) => [key, s[key] - base[key]])))
  const top = Math.max(1, ...points.flatMap(p => SOURCES.map(({ key }) => p[key])))
  const x = i => PAD + (samples.length === 1 ? 0 : i * (W - 2 * PAD) / (samples.length - 1))
  const y = v => H - PAD - v * (H - 2 * PAD) / top
  const children = [svg('line', { x1: 0, y1: H - PAD, x2: W, y2: H - PAD, stroke: '#e5e7eb' })]
  for (const { key, color, label } of SOURCES) {
    const d = points.map((p, i) => `${i === 0 ? 'M' : 'L'}${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ')
    const path = svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 2, 'data-source': label })
    children.push(path)
  }
  const scale = svg('text', { x: W - PAD, y: 12, 'text-anchor': 'end', 'font-size': 11, fill: '#6b7280' })
  scale.textContent = bytes(top)
  children.push(scale)
  chart.replaceChildren(...children)
  $('legend').replaceChildren(...SOURCES.map(({ label, color }) => {
    const swatch = el('i')
    swatch.style.background = color
    return el('span', {}, swatch, label)
  }), el('span', {}, `since ${new Date(base.at).toISOString()}`))
}

function progressBar (job) {
  const bar = el('span', { class: 'bar', title: `${bytes(job.bytes.transferred)} of ${bytes(job.bytes.total)}` })
  const total = job.bytes.total > 0 ? job.bytes.total : 0
  let left = 0
  for (const [key, color] of [['fromOrigin', 'var(--origin)'], ['fromPeers', 'var(--peer)'], ['fromCache', 'var(--cache)']]) {
    const width = total === 0 ? 0 : job.bytes[key] / total * 100
    const part = el('span')
    part.style.left = `${left}%`
    part.style.width = `${width}%`
    part.style.background = color
    bar.append(part)
    left += width
  }
  return bar
}

function percent (job) {
  return job.bytes.total > 0 ? `${Math.floor(job.bytes.transferred / job.bytes.total * 100)} %` : '?'
}

function reasonOf (job) {
  if (job.reason !== undefined) return job.reason
  if (job.error !== undefined) return `${job.error.code}: ${job.error.message}`
  return ''
}

function renderJobs () {
  const list = [...jobs.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  $('no-jobs').hidden = list.length > 0
  $('jobs').tBodies[0].replaceChildren(...list.map(job => el('tr', { 'data-job': job.id },
    el('td', { class: 'id', title: job.id }, job.id.slice(0, 8)),
    el('td', {}, job.name),
    el('td', { class: `state state-${job.state}` }, job.state),
    el('td', { class: 'num' }, progressBar(job), ` ${percent(job)} · ${bytes(job.bytes.transferred)} / ${bytes(job.bytes.total)}`),
    el('td', { class: 'num' },
      el('span', { class: 'src-origin', 'data-source': 'origin' }, `origin ${bytes(job.bytes.fromOrigin)}`), ' · ',
      el('span', { class: 'src-peer', 'data-source': 'peers' }, `peers ${bytes(job.bytes.fromPeers)}`),
      ...(job.bytes.fromCache > 0 ? [' · ', el('span', { class: 'src-cache', 'data-source': 'cache' }, `cache ${bytes(job.bytes.fromCache)}`)] : [])),
    el('td', { class: 'num' }, job.rate === undefined ? '' : `${bytes(job.rate)}/s`),
    el('td', { class: 'reason' }, reasonOf(job))
  )))
}

function renderPeers (view) {
  $('peers').tBodies[0].replaceChildren(...view.peers.map(p => el('tr', { 'data-peer': p.peerId },
    el('td', { class: 'mono', title: p.peerId }, `${p.peerId.slice(0, 16)}…`),
    el('td', { class: 'mono' }, p.addresses.join(' ')),
    el('td', { class: 'num' }, bytes(p.bytesFromPeer)),
    el('td', { class: 'num' }, bytes(p.bytesToPeer)))))
  $('peers-note').textContent = view.bans.length === 0 ? '' : `Banned: ${view.bans.map(b => `${b.peerId.slice(0, 16)}… until ${b.until}`).join(', ')}`
}

function renderCache (view) {
  $('cache-summary').textContent = `${bytes(view.usedBytes)} of ${bytes(view.quotaBytes)} used, ${view.entries.length} file(s); ` +
    `peers' requests: ${view.hits} hit(s), ${view.misses} miss(es), ${bytes(view.bytesServed)} served`
  $('cache').tBodies[0].replaceChildren(...view.entries.map(e => el('tr', {},
    el('td', {}, e.name ?? '(unnamed)'),
    el('td', { class: 'num' }, bytes(e.size)),
    el('td', {}, e.usedAt),
    el('td', {}, e.addedAt),
    el('td', { class: 'mono' }, e.source ?? ''),
    el('td', { class: 'mono', title: e.manifestId }, `${e.manifestId.slice(0, 16)}…`))))
}

async function poll () {
  try {
    const status = await api('/v1/status')
    renderStatus(status)
    if (status.peer !== undefined) {
      renderPeers(await api('/v1/peers'))
      renderCache(await api('/v1/cache'))
    } else {
      $('peers-note').textContent = 'This agent runs no peer node (--no-p2p).'
    }
    showError()
  } catch (err) {
    showError(err)
  }
}

/** Reads the event stream with fetch (a token header) and parses its text/event-stream frames. */
async function follow () {
  for (;;) {
    try {
      // The whole list once: the stream's snapshot holds only unfinished jobs.
      for (const job of (await api('/v1/jobs')).jobs) jobs.set(job.id, job)
      renderJobs()
      const res = await fetch('/v1/events', { headers })
      if (!res.ok) throw Object.assign(new Error(`events: HTTP ${res.status}`), { status: res.status })
      $('live').className = 'live on'
      $('live').textContent = 'live'
      const reader = res.body.getReader()
      const decoder = new TextDecoder()
      let buffer = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        let end
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          const data = frame.split('\n').filter(l => l.startsWith('data: ')).map(l => l.slice(6)).join('\n')
          if (data !== '') onEvent(JSON.parse(data))
        }
      }
    } catch (err) {
      showError(err)
    }
    $('live').className = 'live off'
    $('live').textContent = 'reconnecting…'
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
  }
}

function onEvent (event) {
  if (event.type === 'removed') jobs.delete(event.jobId)
  else if (event.job !== undefined) jobs.set(event.job.id, event.job)
  renderJobs()
}

poll()
setInterval(poll, POLL_MS)
follow()
