// `window.tessera`: a small, read-only view of the client for tests. A
// headless browser waits on it instead of on pixels or wording, e.g.
//
//   await page.waitForFunction(() => window.tessera?.state === "playing");
//   const me = await page.evaluate(() => window.tessera.position);
//
// Every property is a getter that returns a fresh copy; writing to it
// changes nothing.
//
//   state       "login" | "connecting" | "playing" | "reconnecting"
//   world       the world's name (from /tessera.json), "" before it loaded
//   name        the own character's name, or null before logging in
//   position    {x, y, z}: where the own avatar is drawn (predicted), or null
//   cell        {x, z}: the own cell as the server last said, or null
//   shard       the shard simulating the own cell, or null
//   entities    [{id, name, kind, pos: {x, y, z}, on_screen}]: the other
//               entities in view (id as a decimal string, kind "Player" |
//               "Npc", pos as drawn this frame); on_screen: the middle of its
//               body, projected with the camera of the last drawn frame, is
//               inside the view and in front of the camera (something in
//               between may still hide it)
//   chat        the last 50 lines of the chat panel, oldest first
//   frames      frames drawn since the page loaded (the world draws behind
//               the login form too, so this grows from the start)
//   error       the message the login form shows, or null
//   handoffs    CellChanged messages received in this session
//   corrections prediction corrections over 1 cm in this session
//   ping_ms     the last Ping/Pong round trip in milliseconds, or null
//   bytes_in    payload bytes received in this session (control frames and
//               datagrams, without QUIC and HTTP/3 overhead: what F3 shows)
//   bytes_out   payload bytes sent in this session
//   perf        {frames, frame_ms, acks, ack_ms}, reset when a session enters
//               the world: frames drawn while playing and the newest (up to
//               PERF_SAMPLES) of their durations (ms between two animation
//               frames); inputs acknowledged and the newest of their
//               input-to-ack times (ms from sending input N to the first
//               snapshot with ack_input >= N, both as this page saw them)

import { Vector3, type Camera } from "three";
import { seqNewer } from "./predict";
import type { V3 } from "./vec";
import type { CellXZ } from "./world";

export type ClientState = "login" | "connecting" | "playing" | "reconnecting";

export interface EntityView {
  id: string;
  name: string;
  kind: "Player" | "Npc";
  pos: V3;
  on_screen: boolean;
}

/** What `perf` shows. */
export interface PerfView {
  frames: number;
  frame_ms: number[];
  acks: number;
  ack_ms: number[];
}

/** What the App exposes to the hook. */
export interface HookSource {
  state(): ClientState;
  world(): string;
  name(): string | null;
  position(): V3 | null;
  cell(): CellXZ | null;
  shard(): string | null;
  entities(): EntityView[];
  chat(): string[];
  frames(): number;
  error(): string | null;
  handoffs(): number;
  corrections(): number;
  pingMs(): number | null;
  bytesIn(): number;
  bytesOut(): number;
  perf(): PerfView;
}

export type TesseraHook = Readonly<{
  state: ClientState;
  world: string;
  name: string | null;
  position: V3 | null;
  cell: CellXZ | null;
  shard: string | null;
  entities: EntityView[];
  chat: string[];
  frames: number;
  error: string | null;
  handoffs: number;
  corrections: number;
  ping_ms: number | null;
  bytes_in: number;
  bytes_out: number;
  perf: PerfView;
}>;

declare global {
  interface Window {
    tessera?: TesseraHook;
  }
}

const copy = <T>(v: T): T => (v === null || typeof v !== "object" ? v : (JSON.parse(JSON.stringify(v)) as T));

export function installHook(src: HookSource): void {
  const hook = {};
  const getters: Record<string, () => unknown> = {
    state: () => src.state(),
    world: () => src.world(),
    name: () => src.name(),
    position: () => copy(src.position()),
    cell: () => copy(src.cell()),
    shard: () => src.shard(),
    entities: () => copy(src.entities()),
    chat: () => src.chat(),
    frames: () => src.frames(),
    error: () => src.error(),
    handoffs: () => src.handoffs(),
    corrections: () => src.corrections(),
    ping_ms: () => src.pingMs(),
    bytes_in: () => src.bytesIn(),
    bytes_out: () => src.bytesOut(),
    perf: () => src.perf(),
  };
  for (const [key, get] of Object.entries(getters)) {
    Object.defineProperty(hook, key, { get, enumerable: true });
  }
  Object.freeze(hook);
  Object.defineProperty(window, "tessera", { value: hook, writable: false, configurable: false, enumerable: true });
}

// ------------------------------------------------------------- on screen

/** Height of the middle of an avatar's body over its feet, metres. */
const BODY_MIDDLE = 0.9;
const projected = new Vector3();

/** Whether the middle of the body of an avatar standing at `pos` is inside
 * the view of `camera` (as of its last render) and in front of it. */
export function onScreen(camera: Camera, pos: V3): boolean {
  projected.set(pos.x, pos.y + BODY_MIDDLE, pos.z);
  // The camera looks down its own -Z axis.
  const depth = -projected.clone().applyMatrix4(camera.matrixWorldInverse).z;
  if (!(depth > 0)) return false;
  projected.project(camera);
  return Math.abs(projected.x) <= 1 && Math.abs(projected.y) <= 1 && projected.z >= -1 && projected.z <= 1;
}

// ------------------------------------------------------------ perf stats

/** How many of the newest frame times and input-to-ack times are kept. */
export const PERF_SAMPLES = 4096;
/** Inputs remembered until acknowledged (8.5 s of inputs at 30 Hz). */
const SENT_SLOTS = 256;

/** The newest `capacity` numbers added, and how many were added in all. */
class Samples {
  count = 0;
  private readonly buf: Float64Array;

  constructor(private readonly capacity: number) {
    this.buf = new Float64Array(capacity);
  }

  add(v: number): void {
    this.buf[this.count % this.capacity] = v;
    this.count += 1;
  }

  /** Oldest first. */
  newest(): number[] {
    const n = Math.min(this.count, this.capacity);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = this.buf[(this.count - n + i) % this.capacity];
    return out;
  }
}

/** Frame times and input-to-ack times for tests and measurements
 * (docs/performance.md). Cheap: a few array writes per frame, input and
 * snapshot. Times are milliseconds on one clock (performance.now()). */
export class PerfRecorder {
  private readonly frames = new Samples(PERF_SAMPLES);
  private readonly acks = new Samples(PERF_SAMPLES);
  private readonly sentSeq = new Uint32Array(SENT_SLOTS);
  private readonly sentAt = new Float64Array(SENT_SLOTS);
  private acked = 0;

  frame(ms: number): void {
    this.frames.add(ms);
  }

  inputSent(seq: number, now: number): void {
    const slot = seq % SENT_SLOTS;
    this.sentSeq[slot] = seq;
    this.sentAt[slot] = now;
  }

  /** A snapshot arrived at `now` saying the shard applied inputs up to
   * `ack`: every input from the previous ack up to it is acknowledged. */
  snapshotAck(ack: number, now: number): void {
    if (ack === 0 || (this.acked !== 0 && !seqNewer(ack, this.acked))) return;
    let seq = ack;
    for (let i = 0; i < SENT_SLOTS && seq !== this.acked; i++) {
      const slot = seq % SENT_SLOTS;
      if (this.sentSeq[slot] === seq) {
        this.acks.add(now - this.sentAt[slot]);
        this.sentSeq[slot] = 0;
      }
      seq = (seq - 1) >>> 0 || 0xffff_ffff; // 0 is never a seq
    }
    this.acked = ack;
  }

  view(): PerfView {
    return {
      frames: this.frames.count,
      frame_ms: this.frames.newest(),
      acks: this.acks.count,
      ack_ms: this.acks.newest(),
    };
  }
}
