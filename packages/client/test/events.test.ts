import assert from 'node:assert/strict'
import { test } from 'node:test'
import { readEvents, toAgentEvent } from '../src/events.ts'
import type { RawEvent } from '../src/events.ts'

const tooLarge = (): Error => new Error('too large')
const bad = (why: string): Error => new Error(why)

async function read (chunks: string[], max = 1024): Promise<RawEvent[]> {
  const out: RawEvent[] = []
  const body = (async function * () { for (const c of chunks) yield Buffer.from(c) })()
  for await (const e of readEvents(body, max, tooLarge)) out.push(e)
  return out
}

test('readEvents follows the event-stream format: LF, CRLF and CR (also split across chunks), comments, multi-line data', async () => {
  const events = await read([': heartbeat\n\nevent: state\ndata: {"a":1}\n\n', 'event: progress\r', '\ndata: x\r\ndata:y\r\r', 'data: z\n', '\n'])
  assert.deepEqual(events, [
    { event: 'state', data: '{"a":1}' },
    { event: 'progress', data: 'x\ny' },
    { event: 'message', data: 'z' }
  ])
})

test('readEvents refuses an event or a line longer than its limit', async () => {
  await assert.rejects(read(['data: ' + 'x'.repeat(100) + '\n'], 50), /too large/)
  await assert.rejects(read(['data: ' + 'x'.repeat(100)], 50), /too large/)
})

test('toAgentEvent checks the shape and skips types it does not know', () => {
  assert.deepEqual(toAgentEvent({ event: 'removed', data: '{"type":"removed","jobId":"j"}' }, bad), { type: 'removed', jobId: 'j' })
  assert.equal(toAgentEvent({ event: 'x', data: '{"type":"metrics"}' }, bad), undefined)
  assert.throws(() => toAgentEvent({ event: 'state', data: '{"type":"state"}' }, bad), /without a job/)
  assert.throws(() => toAgentEvent({ event: 'state', data: 'nope' }, bad), /not JSON/)
})
