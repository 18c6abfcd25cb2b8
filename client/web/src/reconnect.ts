// When to try again after the connection went away. Pure: the caller
// passes the clock in (milliseconds).
//
// The native viewer (client/src/lib.rs, Client::reconnect) retries every
// 250 ms for up to 60 s, each attempt limited to 2 s, and stops at once
// when the token is refused. The browser keeps those bounds but backs off:
// 250 ms after the first failure, then 1.5 times longer each time up to 2 s,
// with up to 20% random spread, so a router restart that drops thousands
// of players does not bring them all back in the same millisecond.

/** How long a session is tried again before the player is asked to log in. */
export const RESUME_WITHIN_MS = 60_000;
/** First wait, and the longest one. */
export const FIRST_DELAY_MS = 250;
export const MAX_DELAY_MS = 2_000;
/** How long one attempt (fetch the config, connect, Hello, Resume) may take. */
export const ATTEMPT_TIMEOUT_MS = 4_000;

export class Backoff {
  private failures = 0;

  constructor(
    private readonly startedAt: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** How long to wait before the next attempt, or null when it is time to
   * give up (the window has passed). */
  nextDelay(now: number): number | null {
    if (now - this.startedAt >= RESUME_WITHIN_MS) return null;
    const base = Math.min(FIRST_DELAY_MS * Math.pow(1.5, this.failures), MAX_DELAY_MS);
    this.failures += 1;
    return Math.round(base * (1 + 0.2 * this.random()));
  }

  get attempts(): number {
    return this.failures;
  }
}
