// Plain 3-vectors (metres) and the few operations prediction, interpolation
// and the scene need. Immutable: every operation returns a new value.

export interface V3 {
  x: number;
  y: number;
  z: number;
}

export const ZERO: V3 = Object.freeze({ x: 0, y: 0, z: 0 });

export function v3(x: number, y: number, z: number): V3 {
  return { x, y, z };
}

export function add(a: V3, b: V3): V3 {
  return { x: a.x + b.x, y: a.y + b.y, z: a.z + b.z };
}

export function sub(a: V3, b: V3): V3 {
  return { x: a.x - b.x, y: a.y - b.y, z: a.z - b.z };
}

export function scale(a: V3, f: number): V3 {
  return { x: a.x * f, y: a.y * f, z: a.z * f };
}

export function length(a: V3): number {
  return Math.hypot(a.x, a.y, a.z);
}

export function lengthXZ(a: V3): number {
  return Math.hypot(a.x, a.z);
}

export function distance(a: V3, b: V3): number {
  return length(sub(a, b));
}

export function distanceXZ(a: V3, b: V3): number {
  return Math.hypot(a.x - b.x, a.z - b.z);
}

export function isFiniteV3(a: V3): boolean {
  return Number.isFinite(a.x) && Number.isFinite(a.y) && Number.isFinite(a.z);
}

export function lerp(a: V3, b: V3, f: number): V3 {
  return add(a, scale(sub(b, a), f));
}

/** Facing (radians, 0 = north = -Z, clockwise seen from above) as a
 * direction on the ground (docs/protocol.md, "Coordinates and units"). */
export function forward(yaw: number): V3 {
  return { x: Math.sin(yaw), y: 0, z: -Math.cos(yaw) };
}

/** `a mod b` that is never negative (Rust's `rem_euclid`). */
export function remEuclid(a: number, b: number): number {
  const r = a % b;
  return r < 0 ? r + Math.abs(b) : r;
}
