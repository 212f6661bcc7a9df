// Fixtures of the upload-job tests: a real origin with a tus upload endpoint, and
// what the origin and an agent count of the bytes an upload moved.
import type { TestContext } from 'node:test'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { startOrigin } from '@canopy/origin'
import type { Origin, OriginOptions, UploadOptions } from '@canopy/origin'
import type { JobView } from '@canopy/core'
import type { CanopyClient } from '@canopy/client'
import { tempDir } from './helpers.ts'

export const MiB = 1024 * 1024
/** The agent's tus fragment (DEFAULT_FRAGMENT_SIZE): at most this much is sent again after an interruption. */
export const FRAGMENT = 8 * MiB

export interface UploadFixture { dir: string, origin: Origin, uploadDir: string, endpoint: string }

/**
 * A real origin accepting uploads into `<dir>/incoming` (or `uploadDir`, which must
 * exist), no free space kept unless `uploads` says otherwise.
 */
export async function uploadOrigin (t: TestContext, uploads: Partial<UploadOptions> = {}, options: Partial<OriginOptions> & { dir?: string } = {}): Promise<UploadFixture> {
  const { dir: givenDir, ...originOptions } = options
  const dir = givenDir ?? await tempDir('canopy-upload-')
  const uploadDir = uploads.dir ?? join(dir, 'incoming')
  await mkdir(join(dir, 'root'), { recursive: true })
  await mkdir(uploadDir, { recursive: true })
  const origin = await startOrigin({ root: join(dir, 'root'), stateDir: join(dir, 'origin'), scan: false, ...originOptions, uploads: { minFreeBytes: 0, ...uploads, dir: uploadDir } })
  t.after(async () => await origin.close())
  await origin.ready
  return { dir, origin, uploadDir, endpoint: origin.uploadUrl! }
}

/** The value of an unlabelled Prometheus counter (or the sum of its series), 0 when absent. */
export async function counter (url: string, name: string, token?: string): Promise<number> {
  const res = await fetch(url, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`)
  return (await res.text()).split('\n')
    .filter(l => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0)
}

/** Upload bytes the origin stored, from its Prometheus counter. */
export async function bytesReceived (origin: Origin, token?: string): Promise<number> {
  return await counter(`${origin.url}/metrics`, 'canopy_origin_upload_bytes_received_total', token)
}

/** Polls the job until `done` holds of it. */
export async function until (client: CanopyClient, id: string, done: (job: JobView) => boolean): Promise<JobView> {
  for (;;) {
    const job = await client.getJob(id)
    if (done(job)) return job
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
