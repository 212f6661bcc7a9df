// The origin never serves a file outside its root, even when the path under root
// changes between the origin's check and its open (issue 13, item 9).
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startOrigin } from '../src/index.ts'

const tempDirs: string[] = []
after(async () => {
  for (const dir of tempDirs.splice(0)) await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
})

function get (port: number, path: string, method = 'GET'): Promise<{ status: number, body: Buffer, length: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), length: res.headers['content-length'] }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/**
 * Swaps root/pub (a real directory) with a symlink to the origin's state directory
 * and back, as fast as it can, until killed: the attack of issue 13, item 9. A
 * separate process, so the swaps interleave with the origin's system calls.
 */
const SWAPPER = `
const { renameSync } = require('node:fs')
const [root] = process.argv.slice(1)
const p = n => root + '/' + n
const stopAt = Date.now() + Number(process.argv[2])
while (Date.now() < stopAt) {
  renameSync(p('pub'), p('pub.real'))
  renameSync(p('pub.link'), p('pub'))
  renameSync(p('pub'), p('pub.link'))
  renameSync(p('pub.real'), p('pub'))
}
`

test('a directory swapped for a symlink during requests never serves the origin secret', async t => {
  const base = await mkdtemp(join(tmpdir(), 'canopy-jail-'))
  tempDirs.push(base)
  const root = join(base, 'root')
  const stateDir = join(base, 'state')
  await mkdir(join(root, 'pub'), { recursive: true })
  // A public file with the secret's name, so the same URL names either.
  const publicBytes = Buffer.alloc(32, 'P')
  await writeFile(join(root, 'pub', 'origin.secret'), publicBytes)
  const origin = await startOrigin({ root, stateDir, scan: false })
  t.after(() => origin.close())
  const secret = await readFile(join(stateDir, 'origin.secret'))
  await symlink(stateDir, join(root, 'pub.link'))

  // Bounded: the swapper stops by itself after 4 s, the requests after 1,500.
  const swapper = spawn(process.execPath, ['-e', SWAPPER, root, '4000'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let swapperErr = ''
  swapper.stderr.on('data', (d: Buffer) => { swapperErr += d.toString() })
  const swapperDone = new Promise<number | null>(resolve => swapper.on('exit', code => resolve(code)))
  t.after(() => { if (swapper.exitCode === null) swapper.kill('SIGKILL') })

  let served = 0
  let leaked = 0
  let requests = 0
  let running = true
  void swapperDone.then(() => { running = false })
  const worker = async (): Promise<void> => {
    while (running && requests < 1500) {
      requests++
      const method = requests % 5 === 0 ? 'HEAD' : 'GET'
      const res = await get(origin.port, '/pub/origin.secret', method)
      if (res.status !== 200) continue
      served++
      if (method !== 'GET') continue
      if (res.body.equals(secret)) leaked++
      else assert.ok(res.body.equals(publicBytes), 'a 200 carries the public file')
    }
  }
  await Promise.all(Array.from({ length: 6 }, worker))
  swapper.kill('SIGKILL')
  await swapperDone
  assert.equal(swapperErr, '', 'the swapper ran')
  assert.equal(leaked, 0, `the origin served its secret ${leaked} times in ${requests} requests`)
  assert.ok(served > 0, 'some requests found the public file')
})

test('a directory swapped for a symlink during listings never lists the origin state', async t => {
  const base = await mkdtemp(join(tmpdir(), 'canopy-jail-'))
  tempDirs.push(base)
  const root = join(base, 'root')
  const stateDir = join(base, 'state')
  await mkdir(join(root, 'pub'), { recursive: true })
  await writeFile(join(root, 'pub', 'public.txt'), 'public')
  const origin = await startOrigin({ root, stateDir, scan: false, listDirectories: true })
  t.after(() => origin.close())
  await symlink(stateDir, join(root, 'pub.link'))
  const swapper = spawn(process.execPath, ['-e', SWAPPER, root, '3000'], { stdio: 'ignore' })
  const swapperDone = new Promise<void>(resolve => swapper.on('exit', () => resolve()))
  t.after(() => { if (swapper.exitCode === null) swapper.kill('SIGKILL') })
  let running = true
  void swapperDone.then(() => { running = false })
  let listed = 0
  let leaked = 0
  let requests = 0
  const worker = async (): Promise<void> => {
    while (running && requests < 1000) {
      requests++
      const res = await get(origin.port, '/pub/')
      if (res.status !== 200) continue
      listed++
      if (/origin\.secret|manifests/.test(res.body.toString())) leaked++
    }
  }
  await Promise.all(Array.from({ length: 6 }, worker))
  swapper.kill('SIGKILL')
  await swapperDone
  assert.equal(leaked, 0, `${leaked} of ${requests} listings showed the state directory`)
  assert.ok(listed > 0)
})

test('a file replaced by a symlink to a file outside root is not served', async t => {
  const base = await mkdtemp(join(tmpdir(), 'canopy-jail-'))
  tempDirs.push(base)
  const root = join(base, 'root')
  await mkdir(root)
  await writeFile(join(base, 'outside'), 'outside')
  await symlink(join(base, 'outside'), join(root, 'link'))
  await writeFile(join(root, 'inside'), 'inside')
  await symlink(join(root, 'inside'), join(root, 'good-link'))
  const origin = await startOrigin({ root, stateDir: join(base, 'state'), scan: false })
  t.after(() => origin.close())
  assert.equal((await get(origin.port, '/link')).status, 404)
  // Links that stay inside root still work.
  const good = await get(origin.port, '/good-link')
  assert.equal(good.status, 200)
  assert.equal(good.body.toString(), 'inside')
})
