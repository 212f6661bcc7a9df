import type { AgentEvent } from '@canopy/core'

/** One server-sent event as read off the wire: its `event` field and its data lines joined. */
export interface RawEvent {
  event: string
  data: string
}

/**
 * Reads server-sent events (the text/event-stream format of the HTML standard):
 * lines end with CRLF, LF or CR; `:` starts a comment (the agent's heartbeats);
 * `event:` and `data:` fields, several data lines joined by LF; a blank line ends an
 * event. `id:` and `retry:` are ignored (the agent sends neither). An event, or a
 * line, longer than `maxBytes` characters throws, so a broken peer cannot make the
 * reader buffer without bound.
 */
export async function * readEvents (body: AsyncIterable<Uint8Array>, maxBytes: number, tooLarge: () => Error): AsyncGenerator<RawEvent> {
  const decoder = new TextDecoder()
  let buffer = ''
  let event = ''
  let data: string[] = []
  let size = 0
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true })
    let start = 0
    for (;;) {
      const lf = buffer.indexOf('\n', start)
      const cr = buffer.indexOf('\r', start)
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf)
      // A CR last in the buffer may be the first half of a CRLF: wait for more.
      if (end === -1 || (end === cr && cr === buffer.length - 1)) break
      const line = buffer.slice(start, end)
      start = end + (buffer.startsWith('\r\n', end) ? 2 : 1)
      if (line === '') {
        if (data.length > 0) yield { event: event === '' ? 'message' : event, data: data.join('\n') }
        event = ''
        data = []
        size = 0
        continue
      }
      if (line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon === -1 ? line : line.slice(0, colon)
      let value = colon === -1 ? '' : line.slice(colon + 1)
      if (value.startsWith(' ')) value = value.slice(1)
      if (field === 'event') event = value
      else if (field === 'data') {
        size += value.length + 1
        if (size > maxBytes) throw tooLarge()
        data.push(value)
      }
    }
    buffer = buffer.slice(start)
    if (buffer.length > maxBytes) throw tooLarge()
  }
}

/** The agent's events from raw ones: JSON objects with a known `type`; others are skipped (newer agents may add types). */
export function toAgentEvent (raw: RawEvent, bad: (why: string, cause?: unknown) => Error): AgentEvent | undefined {
  let value: unknown
  try {
    value = JSON.parse(raw.data)
  } catch (err) {
    throw bad(`an event that is not JSON: ${raw.data.slice(0, 100)}`, err)
  }
  if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string') {
    throw bad('an event without a type')
  }
  const event = value as AgentEvent
  switch (event.type) {
    case 'snapshot': case 'state': case 'progress': case 'updated':
      if (typeof event.job !== 'object' || event.job === null || typeof event.job.id !== 'string') throw bad(`a ${event.type} event without a job`)
      return event
    case 'removed':
      if (typeof event.jobId !== 'string') throw bad('a removed event without a jobId')
      return event
    default:
      return undefined
  }
}
