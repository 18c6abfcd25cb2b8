// The hand-packed entity updates inside a Snapshot datagram
// (proto/src/snapshot.rs; docs/protocol.md, section 3, "Snapshot encoding").
// Each update:
// - slot: 1 byte below 128, else 2 (little-endian base 128; a second byte
//   with its top bit set is an error);
// - flags: bit 0 = a velocity follows, bit 1 = wide position, others 0;
// - position relative to the snapshot's origin, centimetres per axis:
//   3 x i16 LE, or 3 x i32 LE when wide;
// - velocity, only with flag bit 0: 3 x i16 LE, centimetres per second;
// - yaw: u16 LE, a fraction of a full turn.
// The updates end where the bytes end; a truncated update, unknown flags or
// an over-long slot make the whole snapshot invalid (a CodecError).

import type { Vec3 } from "./messages";
import { checkInt, CodecError } from "./wire";

/** Largest slot a router hands out (two encoded bytes). */
export const MAX_SLOT = 0x3fff;

const FLAG_VEL = 1;
const FLAG_WIDE = 2;
const KNOWN_FLAGS = FLAG_VEL | FLAG_WIDE;
/** Centimetres per metre, as an f32. */
const CM = 100;
/** A full turn in radians, rounded to f32 as Rust's `TAU` is. */
const TAU_F32 = Math.fround(2 * Math.PI);

/** Whole centimetres (or centimetres per second) per axis. */
export type Centimetres = [number, number, number];

/** One entity's state in a snapshot, at the wire's resolution. */
export type EntityUpdate = {
  /** The entity's slot on this connection (EntityAppeared). */
  slot: number;
  /** Absolute position, centimetres (i32 per axis). */
  pos: Centimetres;
  /** Velocity, centimetres per second (i16 per axis); zero at rest. */
  vel: Centimetres;
  /** Heading, 0..65535 for a full turn clockwise from north. */
  yaw: number;
};

/** Centimetres to metres, computed in f32 exactly as Rust's
 * `snapshot::pos_from_cm` (and `EntityUpdate::vel`) compute it. */
export function posFromCm(cm: Centimetres): Vec3 {
  const m = (c: number) => Math.fround(Math.fround(c) / CM);
  return { x: m(cm[0]), y: m(cm[1]), z: m(cm[2]) };
}

/** A velocity in cm/s to metres per second (the same conversion). */
export function velFromCm(vel: Centimetres): Vec3 {
  return posFromCm(vel);
}

/** A 16-bit heading to radians in [0, 2π), as Rust's
 * `EntityUpdate::yaw` computes it (f32). */
export function yawToRadians(yaw16: number): number {
  return Math.fround(Math.fround(yaw16 / 65536) * TAU_F32);
}

/** Decodes a snapshot's `entities` relative to its `origin` (centimetres;
 * all zero gives positions relative to the origin). */
export function decodeSnapshotEntities(
  entities: Uint8Array,
  origin: Centimetres = [0, 0, 0],
): EntityUpdate[] {
  checkOrigin(origin);
  const view = new DataView(entities.buffer, entities.byteOffset, entities.byteLength);
  const out: EntityUpdate[] = [];
  let at = 0;
  const take = (n: number): number => {
    if (at + n > entities.length) {
      throw new CodecError(`malformed snapshot: updates end in the middle of an update (at byte ${at})`);
    }
    const start = at;
    at += n;
    return start;
  };
  while (at < entities.length) {
    const start = at;
    const b0 = view.getUint8(take(1));
    let slot = b0;
    if (b0 & 0x80) {
      const b1 = view.getUint8(take(1));
      if (b1 & 0x80) {
        throw new CodecError(`malformed snapshot: update at byte ${start} has a slot over the largest slot`);
      }
      slot = (b0 & 0x7f) | (b1 << 7);
    }
    const flags = view.getUint8(take(1));
    if (flags & ~KNOWN_FLAGS) {
      throw new CodecError(`malformed snapshot: update at byte ${start} has unknown flags 0x${flags.toString(16)}`);
    }
    const wide = (flags & FLAG_WIDE) !== 0;
    const delta = () => (wide ? view.getInt32(take(4), true) : view.getInt16(take(2), true));
    // Wrapping i32 addition, as Rust's `wrapping_add`.
    const pos: Centimetres = [(origin[0] + delta()) | 0, (origin[1] + delta()) | 0, (origin[2] + delta()) | 0];
    const vel: Centimetres = [0, 0, 0];
    if (flags & FLAG_VEL) {
      for (let k = 0; k < 3; k++) {
        vel[k] = view.getInt16(take(2), true);
      }
    }
    const yaw = view.getUint16(take(2), true);
    out.push({ slot, pos, vel, yaw });
  }
  return out;
}

/** Test/tooling use: packs updates relative to `origin` as the router does
 * (narrow positions where every axis fits an i16). */
export function encodeSnapshotEntities(
  updates: readonly EntityUpdate[],
  origin: Centimetres = [0, 0, 0],
): Uint8Array {
  checkOrigin(origin);
  const out: number[] = [];
  const i16 = (v: number) => out.push(v & 0xff, (v >> 8) & 0xff);
  const i32 = (v: number) => out.push(v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff);
  for (const u of updates) {
    checkInt(u.slot, 0, MAX_SLOT, `a slot (0..=${MAX_SLOT})`);
    u.pos.forEach((p) => checkInt(p, -0x8000_0000, 0x7fff_ffff, "an i32 position"));
    u.vel.forEach((v) => checkInt(v, -0x8000, 0x7fff, "an i16 velocity"));
    checkInt(u.yaw, 0, 0xffff, "a u16 yaw");
    if (u.slot < 0x80) {
      out.push(u.slot);
    } else {
      out.push(0x80 | (u.slot & 0x7f), u.slot >> 7);
    }
    const deltas = [0, 1, 2].map((k) => u.pos[k]! - origin[k]!);
    const narrow = deltas.every((d) => d >= -0x8000 && d <= 0x7fff);
    const moving = u.vel.some((v) => v !== 0);
    out.push((moving ? FLAG_VEL : 0) | (narrow ? 0 : FLAG_WIDE));
    // Wide deltas wrap as Rust's `wrapping_sub` does.
    deltas.forEach((d) => (narrow ? i16(d) : i32(d | 0)));
    if (moving) {
      u.vel.forEach(i16);
    }
    i16(u.yaw);
  }
  return Uint8Array.from(out);
}

function checkOrigin(origin: Centimetres): void {
  if (!Array.isArray(origin) || origin.length !== 3) {
    throw new CodecError("a snapshot origin is 3 whole centimetres");
  }
  origin.forEach((o) => checkInt(o, -0x8000_0000, 0x7fff_ffff, "an i32 origin"));
}
