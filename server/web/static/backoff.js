// How long the page waits before its next reconnect: exponential backoff with "full jitter"
// (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015). Attempt n
// waits a random time between 0 and min(cap, base * 2^n), so pages that lost the server
// together do not come back together.

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;

/** Milliseconds to wait before reconnect attempt `attempt` (0 for the first); `random`
 * returns a number in [0, 1). */
export function reconnectDelay(attempt, random = Math.random) {
  return random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}
