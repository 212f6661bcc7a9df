// Benchmark of the peer transport alone: one libp2p stream (TCP, Noise with the
// agent's crypto, Yamux) between two processes on loopback, no Canopy protocol, no
// hashing, no disk. It is the ceiling for `bench:peers`. Each configuration runs the
// sender and the receiver with V8's default flags and with the flags the daemons run
// with (packages/cli/bin/daemon-flags.js). Prints one JSON document.
// Env: BENCH_SIZE (default 256MiB), BENCH_ROUNDS (default 2).
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { cpus } from 'node:os'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { parseSize } from '@canopy/core'
import { noiseCrypto } from '../packages/agent/src/peers/noise-crypto.ts'
import { DEFAULT_DAEMON_FLAGS } from '../packages/cli/bin/daemon-flags.js'
import { threadCpu } from '../scripts/lib/bench.ts'

const SIZE = parseSize(process.env.BENCH_SIZE ?? '256MiB')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const CHUNK = 1024 * 1024
const PROTOCOL = '/canopy-bench/transport/1.0.0'
const SELF = new URL(import.meta.url).pathname

type Report = { threads: Record<string, number> }

/** CPU seconds per GiB of this process's threads since `before`, by thread name. */
async function cpuSince (before: Map<string, number>): Promise<Record<string, number>> {
  const after = await threadCpu(process.pid)
  return Object.fromEntries([...after]
    .map(([name, s]) => [name, Number(((s - (before.get(name) ?? 0)) / (SIZE / 1024 ** 3)).toFixed(2))] as const)
    .filter(([, v]) => v > 0))
}

async function node (listen: string[]): Promise<Awaited<ReturnType<typeof createLibp2p>>> {
  return await createLibp2p({ addresses: { listen }, transports: [tcp()], connectionEncrypters: [noise({ crypto: noiseCrypto })], streamMuxers: [yamux()] })
}

async function sender (): Promise<void> {
  const libp2p = await node(['/ip4/127.0.0.1/tcp/0'])
  await libp2p.handle(PROTOCOL, async (stream) => {
    const before = await threadCpu(process.pid)
    const chunk = Buffer.alloc(CHUNK, 0x5a)
    for (let sent = 0; sent < SIZE; sent += CHUNK) {
      if (!stream.send(chunk)) await once(stream, 'drain')
    }
    await stream.close()
    process.send!({ threads: await cpuSince(before) } satisfies Report)
  })
  process.send!({ address: libp2p.getMultiaddrs()[0].toString() })
}

async function receiver (address: string): Promise<void> {
  const libp2p = await node([])
  const stream = await libp2p.dialProtocol(multiaddr(address), PROTOCOL)
  const before = await threadCpu(process.pid)
  const started = performance.now()
  let received = 0
  for await (const chunk of stream) received += chunk.byteLength
  const seconds = (performance.now() - started) / 1000
  if (received !== SIZE) throw new Error(`received ${received} of ${SIZE} bytes`)
  process.send!({ MiBps: Math.round(SIZE / 1024 ** 2 / seconds), threads: await cpuSince(before) })
  await libp2p.stop()
}

async function message<T> (child: ChildProcess): Promise<T> {
  const [value] = await once(child, 'message') as [T]
  return value
}

async function round (flags: string[]): Promise<{ MiBps: number, sender: Record<string, number>, receiver: Record<string, number> }> {
  const send = fork(SELF, ['sender'], { execArgv: [...flags, ...process.execArgv] })
  try {
    const { address } = await message<{ address: string }>(send)
    const senderReport = message<Report>(send)
    const receive = fork(SELF, ['receiver', address], { execArgv: [...flags, ...process.execArgv] })
    const result = await message<{ MiBps: number, threads: Record<string, number> }>(receive)
    await once(receive, 'exit')
    return { MiBps: result.MiBps, sender: (await senderReport).threads, receiver: result.threads }
  } finally {
    send.kill()
  }
}

const role = process.argv[2]
if (role === 'sender') await sender()
else if (role === 'receiver') await receiver(process.argv[3])
else {
  const configurations = { v8Defaults: [], daemonFlags: DEFAULT_DAEMON_FLAGS }
  const results: Record<string, unknown> = {}
  const rounds: Record<string, Array<Awaited<ReturnType<typeof round>>>> = { v8Defaults: [], daemonFlags: [] }
  // Interleaved, so that drift on the machine hits both alike.
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, flags] of Object.entries(configurations)) rounds[name].push(await round(flags))
  }
  for (const [name, list] of Object.entries(rounds)) {
    results[name] = { flags: configurations[name as keyof typeof configurations], MiBps: list.map(r => r.MiBps), cpuSecondsPerGiBLastRound: { sender: list.at(-1)!.sender, receiver: list.at(-1)!.receiver } }
  }
  console.log(JSON.stringify({
    bench: 'transport',
    what: 'one libp2p stream (TCP + Noise + Yamux) between two processes on loopback, 1 MiB sends; no hashing, no disk',
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    sizeBytes: SIZE,
    ...results
  }, null, 2))
}
