#!/usr/bin/env node
// A lying peer for the lab's bad-peer scenario: a member of the swarm (it holds the
// organisation key, and fetched the manifest and its key from the origin like any
// agent) that advertises every block of the content and serves garbage for each.
// It runs inside its own namespace, found by mDNS. Lab-only: the agent has no
// fault-injection switch, so production code cannot be made to lie.
//
//   node packages/lab/bin/liar.ts --url URL --swarm-key FILE --state-dir DIR
// Prints {"peerId": "..."} on stdout once it serves; stops on SIGTERM or SIGINT.
import { parseArgs } from 'node:util'
import { DISCOVERY_LABEL, MANIFEST_MEDIA_TYPE, decodeManifest, discoveryId } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { loadOrCreatePeerKey, readSwarmKey, serveExchange, startPeerNode } from '@canopy/agent/peers'

const { values } = parseArgs({ options: { url: { type: 'string' }, 'swarm-key': { type: 'string' }, 'state-dir': { type: 'string' } } })
if (values.url === undefined || values['swarm-key'] === undefined || values['state-dir'] === undefined) {
  process.stderr.write('usage: liar.ts --url URL --swarm-key FILE --state-dir DIR\n')
  process.exit(2)
}
const log = (level: string) => (message: string, fields?: Record<string, unknown>): void => {
  process.stderr.write(`${new Date().toISOString()} ${level} liar: ${message}${fields === undefined ? '' : ' ' + JSON.stringify(fields)}\n`)
}
const logger: Logger = { debug: () => {}, info: log('info'), warn: log('warn'), error: log('error') }

const res = await fetch(values.url, { headers: { accept: MANIFEST_MEDIA_TYPE } })
if (!res.ok) throw new Error(`the origin answered ${res.status} for the manifest`)
const manifest = decodeManifest(Buffer.from(await res.arrayBuffer()))
if (manifest.key === undefined) throw new Error('the origin sent no content key')
const key = Buffer.from(manifest.key, 'base64')
const id = discoveryId(key, DISCOVERY_LABEL)

const node = await startPeerNode({
  privateKey: await loadOrCreatePeerKey(values['state-dir']),
  swarmKey: await readSwarmKey(values['swarm-key']),
  mdns: true,
  logger
})
let served = 0
await serveExchange(node.libp2p, {
  lookup: asked => Buffer.compare(asked, id) !== 0
    ? undefined
    : {
        manifest,
        key,
        has: () => true,
        read: async (i: number) => {
          served++
          if (served % 10 === 1) logger.info('served a garbage block', { block: i, served })
          return Buffer.alloc(Math.min(manifest.blockSize, manifest.size - i * manifest.blockSize), 0x42)
        }
      }
}, logger)
process.stdout.write(JSON.stringify({ peerId: node.libp2p.peerId.toString() }) + '\n')
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    void node.stop().finally(() => process.exit(0))
  })
}
