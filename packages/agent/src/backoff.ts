/**
 * Exponential backoff with ±20% jitter: `min(maxMs, minMs * 2^(attempt-1)) * uniform(0.8, 1.2)`,
 * so that agents that failed together do not retry together (and receivers that come
 * back are not hit all at once).
 */
export function backoff (attempt: number, minMs: number, maxMs: number): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(base * (0.8 + Math.random() * 0.4))
}
