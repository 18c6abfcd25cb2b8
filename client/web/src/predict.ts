// Client-side prediction of the player's own avatar, with server
// reconciliation: a port of client/src/predict.rs with the same rules and
// constants (docs/client.md, "Prediction and reconciliation"). Pure logic,
// no clock: the caller passes durations in.
//
// The shard moves a player by the newest input it holds, every tick: the
// direction clamped to length 1, times the player speed. The client sends
// one input per tick (at most one per frame) and remembers for each how long
// it was the newest one. The predicted position is the server's position
// from the newest snapshot plus the moves of every input the server had not
// yet applied (seq > ack_input), replayed on top. A disagreement is not
// snapped: it becomes a visual offset that decays with time constant
// SMOOTHING_TAU; only an error over SNAP_DISTANCE (a teleport) snaps.

import type { Input } from "./proto/index";
import { add, distance, lengthXZ, scale, sub, isFiniteV3, ZERO, type V3 } from "./vec";

/** The shard's default player speed, m/s. */
export const PLAYER_SPEED = 6.0;
/** Time constant of the exponential decay of a correction, seconds. */
export const SMOOTHING_TAU = 0.1;
/** A disagreement larger than this (metres) is a teleport: snap to it. */
export const SNAP_DISTANCE = 4.0;
/** At most this many unacknowledged inputs are kept (4 s at 30 Hz). */
export const MAX_PENDING = 120;

const U32_MAX = 0xffff_ffff;

/** `a` is newer than `b`, with wrap-around (as the shard compares seqs). */
export function seqNewer(a: number, b: number): boolean {
  return a !== b && ((a - b) >>> 0) < Math.floor(U32_MAX / 2);
}

/** The input as the shard applies it (`Input::sanitized`): non-finite
 * directions become 0, a direction longer than 1 is scaled to 1. */
export function sanitize(i: Input): Input {
  let { move_x, move_z, yaw } = i;
  if (!Number.isFinite(move_x) || !Number.isFinite(move_z)) {
    move_x = 0;
    move_z = 0;
  }
  if (!Number.isFinite(yaw)) yaw = 0;
  const len = Math.hypot(move_x, move_z);
  if (len > 1) {
    move_x /= len;
    move_z /= len;
  }
  return { ...i, move_x, move_z, yaw };
}

interface Pending {
  seq: number;
  velX: number;
  velZ: number;
  /** How long the input was the newest one, seconds. */
  duration: number;
}

/** What one reconciliation found. */
export interface Correction {
  /** Distance between the old and the new prediction, metres. */
  error: number;
  /** The error was over SNAP_DISTANCE and was not smoothed. */
  snapped: boolean;
}

/** Counters for the debug overlay and tests. */
export interface PredictionStats {
  reconciliations: number;
  /** Reconciliations whose error was over 1 cm. */
  corrections: number;
  snaps: number;
  maxError: number;
  sumError: number;
}

function step(p: V3, i: Pending): V3 {
  return { x: p.x + i.velX * i.duration, y: p.y, z: p.z + i.velZ * i.duration };
}

export class Predictor {
  private serverPosition: V3;
  private acked = 0;
  private readonly queue: Pending[] = [];
  /** Visual offset still to be smoothed away (drawn = predicted + offset). */
  private offsetV: V3 = ZERO;
  readonly stats: PredictionStats = {
    reconciliations: 0,
    corrections: 0,
    snaps: 0,
    maxError: 0,
    sumError: 0,
  };

  /** Starts at `pos` (the LoggedIn position). */
  constructor(pos: V3, private readonly speed = PLAYER_SPEED) {
    this.serverPosition = pos;
  }

  /** Records an input that was just sent; the previous one stops being
   * the newest now. */
  pushInput(input: Input): void {
    const i = sanitize(input);
    this.queue.push({ seq: i.seq, velX: i.move_x * this.speed, velZ: i.move_z * this.speed, duration: 0 });
    while (this.queue.length > MAX_PENDING) {
      // The server is not acknowledging: keep the move, forget the input.
      const old = this.queue.shift();
      if (old) this.serverPosition = step(this.serverPosition, old);
    }
  }

  /** Time passes: the newest input stays in effect a little longer, and
   * the correction offset decays. */
  advance(dt: number): void {
    if (!(dt > 0) || !Number.isFinite(dt)) return;
    const last = this.queue[this.queue.length - 1];
    if (last) last.duration += dt;
    this.offsetV = scale(this.offsetV, Math.exp(-dt / SMOOTHING_TAU));
    if (lengthXZ(this.offsetV) < 1e-4 && Math.abs(this.offsetV.y) < 1e-4) this.offsetV = ZERO;
  }

  /** A snapshot carried the own entity at `serverPos`, the server having
   * applied inputs up to `ack`. Older or repeated acks change nothing. */
  reconcile(serverPos: V3, ack: number): Correction {
    if (!isFiniteV3(serverPos)) return { error: 0, snapped: false };
    const before = this.predicted();
    if (ack !== 0 && (this.acked === 0 || !seqNewer(this.acked, ack))) {
      this.acked = ack;
      while (this.queue.length > 0 && !seqNewer(this.queue[0]!.seq, ack)) this.queue.shift();
    }
    this.serverPosition = serverPos;
    const after = this.predicted();
    const diff = sub(before, after);
    const error = distance(diff, ZERO);
    const snapped = error > SNAP_DISTANCE;
    if (snapped) {
      this.offsetV = ZERO;
      this.stats.snaps += 1;
    } else {
      // Keep what is drawn where it was; the offset decays in advance().
      this.offsetV = add(this.offsetV, diff);
    }
    this.stats.reconciliations += 1;
    if (error > 0.01) this.stats.corrections += 1;
    this.stats.maxError = Math.max(this.stats.maxError, error);
    this.stats.sumError += error;
    return { error, snapped };
  }

  /** Where the avatar is predicted to be now (no smoothing). */
  predicted(): V3 {
    return this.queue.reduce(step, this.serverPosition);
  }

  /** Where to draw the avatar: the prediction plus the decaying offset. */
  position(): V3 {
    return add(this.predicted(), this.offsetV);
  }

  /** The correction still being smoothed out, metres. */
  offset(): number {
    return distance(this.offsetV, ZERO);
  }

  /** Inputs sent but not yet acknowledged. */
  pending(): number {
    return this.queue.length;
  }

  /** The newest acknowledged input. */
  ack(): number {
    return this.acked;
  }

  /** The newest authoritative position. */
  serverPos(): V3 {
    return this.serverPosition;
  }
}
