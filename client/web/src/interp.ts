// Interpolation of other entities between snapshots: a port of
// client/src/interp.rs with the same rules and constants (docs/client.md,
// "Interpolation"). Pure logic: times are seconds on the caller's clock.
//
// Updates are stamped with server time (tick / tick_hz), not arrival time.
// ServerClock takes, over a 3 s window, the smallest `arrival - server time`
// (the fastest packet) and the spread above it (the jitter); entities are
// drawn at `server now - delay`, delay = spread + 100 ms clamped to
// 50..400 ms. The render clock slews by at most 5% and snaps only after a
// jump over 0.5 s. Between samples the position is linear and the yaw takes
// the shorter way; past the newest sample it extrapolates for at most
// 250 ms. An entity at rest that starts to move gets a "still here" sample
// at distance / speed before the new one.

import { add, distanceXZ, isFiniteV3, lengthXZ, lerp, remEuclid, scale, type V3 } from "./vec";

/** How far past the newest sample a position is extrapolated, seconds. */
export const MAX_EXTRAPOLATION = 0.25;
/** Interpolation delay bounds, seconds. */
export const MIN_DELAY = 0.05;
export const MAX_DELAY = 0.4;
/** Added to the measured jitter: two snapshot periods at 20 Hz. */
export const DELAY_MARGIN = 0.1;
/** The clock window, seconds. */
export const CLOCK_WINDOW = 3.0;
/** How fast the render clock may drift from real time while it adjusts. */
export const MAX_SLEW = 0.05;
/** A jump between samples larger than this (metres) is a teleport. */
export const TELEPORT_DISTANCE = 10.0;
/** Samples kept per entity. */
const MAX_SAMPLES = 64;
/** Below this speed (m/s) an entity is at rest. */
const REST_SPEED = 0.05;

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

/** Maps local time to the server's tick clock. */
export class ServerClock {
  private readonly tickHz: number;
  /** [local arrival, arrival - server time] */
  private readonly window: Array<[number, number]> = [];
  private lastTick: number | null = null;
  /** `local - render time` in use (offset + delay), slewed. */
  private lag: number | null = null;
  private lastLocal = 0;

  constructor(tickHz: number) {
    this.tickHz = Math.max(1, Math.floor(tickHz) || 1);
  }

  /** Server time of `tick`, seconds. */
  serverTime(tick: number): number {
    return tick / this.tickHz;
  }

  /** A snapshot of server tick `tick` arrived at local time `local`. */
  observe(tick: number, local: number): void {
    if (this.lastTick === tick) return;
    if (this.lastTick !== null && tick + this.tickHz < this.lastTick) {
      // The ticks went back by more than a second: a new server.
      this.window.length = 0;
      this.lag = null;
    }
    this.lastTick = tick;
    this.window.push([local, local - this.serverTime(tick)]);
    while (this.window.length > 0 && this.window[0]![0] < local - CLOCK_WINDOW) this.window.shift();
  }

  private offsetAndSpread(): [number, number] | null {
    if (this.window.length === 0) return null;
    let min = Infinity;
    let max = -Infinity;
    for (const [, o] of this.window) {
      min = Math.min(min, o);
      max = Math.max(max, o);
    }
    return [min, max - min];
  }

  /** The interpolation delay the window asks for, seconds. */
  targetDelay(): number {
    const os = this.offsetAndSpread();
    return os ? clamp(os[1] + DELAY_MARGIN, MIN_DELAY, MAX_DELAY) : DELAY_MARGIN;
  }

  /** The delay in use now, seconds. */
  delay(): number {
    const os = this.offsetAndSpread();
    return this.lag !== null && os ? this.lag - os[0] : this.targetDelay();
  }

  /** Server time to draw at, for local time `local` (once a frame, with
   * non-decreasing times); null before the first snapshot. */
  renderTime(local: number): number | null {
    const os = this.offsetAndSpread();
    if (!os) return null;
    const target = os[0] + this.targetDelay();
    const dt = Math.max(0, local - this.lastLocal);
    this.lastLocal = local;
    let lag: number;
    if (this.lag !== null && Math.abs(target - this.lag) <= 0.5) {
      const step = MAX_SLEW * dt;
      lag = this.lag + clamp(target - this.lag, -step, step);
    } else {
      lag = target;
    }
    this.lag = lag;
    return local - lag;
  }
}

interface Sample {
  t: number;
  pos: V3;
  vel: V3;
  yaw: number;
}

/** Where to draw an entity. */
export interface Pose {
  pos: V3;
  yaw: number;
  /** Past the newest sample (the entity's updates are late). */
  extrapolated: boolean;
}

class Track {
  readonly samples: Sample[] = [];

  push(s: Sample): void {
    const last = this.samples[this.samples.length - 1];
    if (last) {
      if (s.t <= last.t) {
        if (s.t + 1 < last.t) {
          this.samples.length = 0; // the server's clock went back: start over
        } else {
          return; // a duplicate or a reordered, older update
        }
      } else if (distanceXZ(s.pos, last.pos) > TELEPORT_DISTANCE) {
        this.samples.length = 0;
      } else if (lengthXZ(last.vel) < REST_SPEED) {
        // It was at rest, so the router skipped it until it moved: it left
        // `last.pos` at (distance / speed) before `s`.
        const speed = lengthXZ(s.vel);
        const gap = s.t - last.t;
        const movingFor = speed > REST_SPEED ? distanceXZ(s.pos, last.pos) / speed : 0.05;
        const start = s.t - Math.min(movingFor, gap);
        if (start > last.t + 1e-6) this.samples.push({ ...last, t: start });
      }
    }
    this.samples.push(s);
    while (this.samples.length > MAX_SAMPLES) this.samples.shift();
  }

  pose(t: number): Pose | null {
    // Keep one sample at or before t, for interpolation.
    while (this.samples.length > 2 && this.samples[1]!.t <= t) this.samples.shift();
    const first = this.samples[0];
    if (!first) return null;
    if (t <= first.t) return { pos: first.pos, yaw: first.yaw, extrapolated: false };
    const b = this.samples[1];
    if (b && t <= b.t) {
      const f = (t - first.t) / (b.t - first.t);
      return { pos: lerp(first.pos, b.pos, f), yaw: lerpAngle(first.yaw, b.yaw, f), extrapolated: false };
    }
    const last = this.samples[this.samples.length - 1]!;
    const ahead = Math.min(t - last.t, MAX_EXTRAPOLATION);
    return {
      pos: add(last.pos, scale({ x: last.vel.x, y: 0, z: last.vel.z }, ahead)),
      yaw: last.yaw,
      extrapolated: t - last.t > 1e-3,
    };
  }
}

/** Interpolates between two angles (radians) the shorter way round. */
export function lerpAngle(a: number, b: number, f: number): number {
  const tau = Math.PI * 2;
  let d = remEuclid(b - a, tau);
  if (d > Math.PI) d -= tau;
  return a + d * f;
}

/** The interpolated view of every other entity, keyed by entity id. */
export class Interpolator {
  readonly clock: ServerClock;
  private readonly tracks = new Map<string, Track>();
  private now: number | null = null;

  constructor(tickHz: number) {
    this.clock = new ServerClock(tickHz);
  }

  /** An update of `id` from the snapshot of server tick `tick`, which
   * arrived at local time `arrived` (seconds). */
  push(id: string, tick: number, arrived: number, pos: V3, vel: V3, yaw: number): void {
    if (!isFiniteV3(pos) || !isFiniteV3(vel) || !Number.isFinite(yaw)) return;
    this.clock.observe(tick, arrived);
    const t = this.clock.serverTime(tick);
    let track = this.tracks.get(id);
    if (!track) {
      track = new Track();
      this.tracks.set(id, track);
    }
    track.push({ t, pos, vel, yaw });
  }

  remove(id: string): void {
    this.tracks.delete(id);
  }

  /** Keeps only the entities `keep` accepts. */
  retain(keep: (id: string) => boolean): void {
    for (const id of [...this.tracks.keys()]) if (!keep(id)) this.tracks.delete(id);
  }

  /** Fixes the render time for this frame (local time `local`). */
  beginFrame(local: number): number | null {
    this.now = this.clock.renderTime(local);
    return this.now;
  }

  /** Where to draw `id` this frame. */
  pose(id: string): Pose | null {
    if (this.now === null) return null;
    return this.tracks.get(id)?.pose(this.now) ?? null;
  }

  get size(): number {
    return this.tracks.size;
  }
}
