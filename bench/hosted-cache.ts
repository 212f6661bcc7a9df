// Hosted cache, by hand: `node bench/hosted-cache.ts [MiB]` (default 256). Agent A fetches
// a file from a local origin and offers it; the hosted cache pulls it from A (peers only);
// then agent B, whose only peer is the hosted cache, fetches it. Prints JSON: A's job time,
// the time from A's completion until the hosted cache holds the file, B's job time and
// where B's bytes came from. Real processes on loopback; numbers drift with machine load.
import { join } from 'node:path'
import { FINISHED, loopbackAddress, originContentBytes, originWithFile, startAgentProcess, swarmKeyFile } from '../test/helpers.ts'

const mib = Number(process.argv[2] ?? 256)
const size = mib * 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
const t = { after: (fn: () => Promise<void>) => { cleanups.push(fn) } }
try {
  const { dir, origin } = await originWithFile(t, size)
  const keyArgs = ['--swarm-key', await swarmKeyFile(dir)]
  const hosted = await startAgentProcess(join(dir, 'hosted'), [...keyArgs, '--hosted-cache'])
  cleanups.push(async () => await hosted.kill())
  const cacheAt = await loopbackAddress(hosted)
  const a = await startAgentProcess(join(dir, 'a'), [...keyArgs, '--hosted-cache-addr', cacheAt])
  cleanups.push(async () => await a.kill())
  const fetch = async (agent: typeof a, name: string) => {
    const started = performance.now()
    const job = await agent.client.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, name) }], autoComplete: true })
    const done = await agent.client.waitForJob(job.id, { intervalMs: 20, until: FINISHED })
    return { ms: Math.round(performance.now() - started), done }
  }
  await new Promise(resolve => setTimeout(resolve, 500))
  const first = await fetch(a, 'a.bin')
  const offeredAt = performance.now()
  while (!(await hosted.client.cache()).entries.some(e => e.manifestId === first.done.files[0].manifestId)) await new Promise(resolve => setTimeout(resolve, 20))
  const pullMs = Math.round(performance.now() - offeredAt)
  await a.kill()
  const originBefore = await originContentBytes(origin.url)
  const b = await startAgentProcess(join(dir, 'b'), [...keyArgs, '--hosted-cache-addr', cacheAt])
  cleanups.push(async () => await b.kill())
  await new Promise(resolve => setTimeout(resolve, 500))
  const second = await fetch(b, 'b.bin')
  console.log(JSON.stringify({
    mib,
    aFromOriginMs: first.ms,
    pullMs,
    pullMiBps: Math.round(mib / (pullMs / 1000)),
    bMs: second.ms,
    bMiBps: Math.round(mib / (second.ms / 1000)),
    bFromCache: second.done.bytes.fromCache,
    bFromOrigin: await originContentBytes(origin.url) - originBefore
  }))
} finally {
  for (const fn of cleanups.reverse()) await fn().catch(() => {})
}
