// The world definition as /tessera.json carries it: proto/src/world.rs's
// WorldDef rendered by serde_json. Pure data and geometry helpers, no three.js.
//
// serde_json renders non-finite numbers as null: the default wilds zone's
// bounds (±infinity) arrive as null, which `zoneAt` treats as unbounded.

import type { V3 } from "./vec";

export interface CellXZ {
  x: number;
  z: number;
}

export interface ZoneDef {
  name: string;
  description: string;
  min_x: number | null;
  min_z: number | null;
  max_x: number | null;
  max_z: number | null;
}

export interface LandmarkDef {
  name: string;
  description: string;
  pos: V3;
}

export interface BoxDef {
  name: string | null;
  center: V3;
  half_extents: V3;
  yaw_deg: number;
}

export interface RampDef extends BoxDef {
  pitch_deg: number;
}

/** serde's externally tagged enum. */
export type StaticShapeDef = { Box: BoxDef } | { Ramp: RampDef };

export interface NpcDefJson {
  name: string;
  description: string;
  pos: V3;
  script: string;
  count: number;
  scatter: number;
}

export interface WorldDef {
  name: string;
  cell_size: number;
  extent: { min: CellXZ; max: CellXZ };
  spawn: V3;
  zones: ZoneDef[];
  wilds: ZoneDef;
  landmarks: LandmarkDef[];
  statics: StaticShapeDef[];
  npcs: NpcDefJson[];
  scripts?: Record<string, string>;
}

/** A static shape, flattened for drawing. */
export interface Shape {
  kind: "box" | "ramp";
  name: string | null;
  center: V3;
  halfExtents: V3;
  /** Degrees, counter-clockwise seen from above (world-format convention). */
  yawDeg: number;
  /** Degrees around the shape's own X axis (0 for a box). */
  pitchDeg: number;
}

export function shapeOf(s: StaticShapeDef): Shape {
  if ("Box" in s) {
    const b = s.Box;
    return { kind: "box", name: b.name, center: b.center, halfExtents: b.half_extents, yawDeg: b.yaw_deg, pitchDeg: 0 };
  }
  const r = s.Ramp;
  return { kind: "ramp", name: r.name, center: r.center, halfExtents: r.half_extents, yawDeg: r.yaw_deg, pitchDeg: r.pitch_deg };
}

/** The cell containing `pos` (docs/protocol.md: floor(x / size), floor(z / size)). */
export function cellOf(cellSize: number, pos: { x: number; z: number }): CellXZ {
  return { x: Math.floor(pos.x / cellSize), z: Math.floor(pos.z / cellSize) };
}

/** `(min_x, min_z, max_x, max_z)` of a cell. */
export function cellBounds(cellSize: number, c: CellXZ): [number, number, number, number] {
  return [c.x * cellSize, c.z * cellSize, (c.x + 1) * cellSize, (c.z + 1) * cellSize];
}

/** The world's outer bounds in metres: `(min_x, min_z, max_x, max_z)`. */
export function worldBounds(w: WorldDef): [number, number, number, number] {
  const lo = cellBounds(w.cell_size, w.extent.min);
  const hi = cellBounds(w.cell_size, w.extent.max);
  return [lo[0], lo[1], hi[2], hi[3]];
}

export function zoneContains(z: ZoneDef, pos: { x: number; z: number }): boolean {
  return (
    pos.x >= (z.min_x ?? -Infinity) &&
    pos.x <= (z.max_x ?? Infinity) &&
    pos.z >= (z.min_z ?? -Infinity) &&
    pos.z <= (z.max_z ?? Infinity)
  );
}

/** The first zone containing `pos`, or the wilds. */
export function zoneAt(w: WorldDef, pos: { x: number; z: number }): ZoneDef {
  return w.zones.find((z) => zoneContains(z, pos)) ?? w.wilds;
}

export function formatCell(c: CellXZ | null): string {
  return c ? `${c.x},${c.z}` : "-";
}

/** Checks the shape of a WorldDef from the network enough that drawing it
 * cannot throw; returns a message saying what is wrong, or null. */
export function checkWorld(w: unknown): string | null {
  if (typeof w !== "object" || w === null) return "the world is missing";
  const d = w as Partial<WorldDef>;
  if (typeof d.cell_size !== "number" || !(d.cell_size > 0)) return "the world has no valid cell_size";
  if (!d.extent || typeof d.extent.min?.x !== "number" || typeof d.extent.max?.z !== "number")
    return "the world has no valid extent";
  if (!d.spawn || typeof d.spawn.x !== "number") return "the world has no spawn";
  if (!Array.isArray(d.zones) || !Array.isArray(d.landmarks) || !Array.isArray(d.statics))
    return "the world lacks zones, landmarks or statics";
  if (!d.wilds || typeof d.wilds.name !== "string") return "the world has no wilds zone";
  return null;
}
