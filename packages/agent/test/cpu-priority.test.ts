// The agent's own threads follow the work: at the background nice value while no
// foreground job runs, at the agent's own while one does (a real agent and origin on
// loopback; Linux, and a process that may raise a thread's priority again).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { getPriority } from 'node:os'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { silentLogger } from '@canopy/core'
import type { JobView } from '@canopy/core'
import { startAgent } from '@canopy/agent'
import type { CanopyAgent } from '@canopy/agent'
import { startOrigin } from '@canopy/origin'
import { CpuPriority, mayRaisePriority } from '../src/bandwidth/cpu-priority.ts'

const supported = process.platform === 'linux' && mayRaisePriority(getPriority(0))

/** The nice value of the main thread, as the kernel has it. */
async function mainNice (): Promise<number> {
  const stat = await readFile(`/proc/self/task/${process.pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
}

/** Waits until the main thread's nice value is `nice` (the test's timeout bounds it). */
async function niceBecomes (nice: number): Promise<void> {
  while (await mainNice() !== nice) await new Promise(resolve => setTimeout(resolve, 20))
}

async function until (agent: CanopyAgent, id: string, what: (job: JobView) => boolean): Promise<JobView> {
  for (;;) {
    const job = agent.getJob(id)
    if (what(job)) return job
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

test('CpuPriority lowers the agent\'s threads and raises them back', { skip: !supported && 'needs Linux and CAP_SYS_NICE' }, async () => {
  const base = await mainNice()
  const cpu = new CpuPriority({ logger: silentLogger }, { backgroundNice: 10 })
  assert.equal(cpu.active, base < 10)
  cpu.set(true)
  assert.equal(await mainNice(), Math.max(base, 10))
  cpu.set(false)
  assert.equal(await mainNice(), base)
})

test('an agent runs at nice 10 while no foreground job runs, and at its own priority while one does', { skip: !supported && 'needs Linux and CAP_SYS_NICE' }, async (t) => {
  const base = await mainNice()
  const dir = await mkdtemp(join(tmpdir(), 'canopy-cpu-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'root'))
  await writeFile(join(dir, 'root', 'f.bin'), randomBytes(1024 * 1024))
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin') })
  t.after(async () => await origin.close())
  await origin.ready
  const agent = await startAgent({ stateDir: join(dir, 'agent') })
  t.after(async () => await agent.stop())
  // Started, idle: its first decision found no foreground job.
  await niceBecomes(10)
  // A foreground job held at 1 KiB/s by its own limit keeps running while we look.
  const job = await agent.createJob({ files: [{ url: `${origin.url}/f.bin`, path: join(dir, 'out.bin') }], priority: 'foreground', rateLimit: 1024 })
  await until(agent, job.id, j => j.state === 'transferring')
  assert.equal(await mainNice(), base, 'a foreground job runs at full priority')
  await agent.cancel(job.id)
  // Its runner's end is the next decision.
  await niceBecomes(10)
  await agent.stop()
  assert.equal(await mainNice(), base, 'a stopped agent leaves its process as it found it')
})
