// Checks of the TypeScript protocol codec (src/proto). test/run.mjs bundles
// this file and calls:
// - selfCheck(): round trips in TypeScript, the byte-level examples of
//   docs/protocol.md, and garbage that must be a CodecError (`npm test`);
// - crossCheck(cases): the cases proto/tests/web_codec.rs wrote from Rust's
//   codec. Each Rust-encoded message must decode to the expected value and
//   encode back to the same bytes; the client messages' TypeScript
//   encodings go back to Rust (`fromTs`), which decodes them.
// Both return failures as lines of text, an empty list when all is well.

import {
  CodecError,
  decodeClientDatagram,
  decodeClientMsg,
  decodeServerDatagram,
  decodeServerMsg,
  decodeSnapshotEntities,
  encodeClientMsg,
  encodeInput,
  encodeServerDatagram,
  encodeServerMsg,
  encodeSnapshotEntities,
  frameClientMsg,
  frameServerMsg,
  FrameReader,
  MAX_CONTROL_FRAME,
  MAX_DATAGRAM,
  MAX_SLOT,
  posFromCm,
  velFromCm,
  yawToRadians,
} from "../src/proto/index";
import type { Centimetres, ClientMsg, EntityUpdate, ErrorCode, Input, ServerMsg } from "../src/proto/index";

/** The cases file proto/tests/web_codec.rs writes. Values are in the
 * TypeScript representation, with bigints as decimal strings and byte
 * arrays as hex. */
export type Cases = {
  server_msgs: { name: string; value: unknown; bytes: string; frame: string }[];
  server_datagrams: {
    name: string;
    value: unknown;
    bytes: string;
    updates: { update: unknown; pos_m: unknown; vel_m: unknown; yaw_rad: number }[];
  }[];
  client_msgs: { name: string; value: unknown; bytes: string; frame: string }[];
  client_datagrams: { name: string; value: unknown; bytes: string }[];
  garbage: { name: string; kind: GarbageKind; bytes: string; origin?: Centimetres }[];
};

/** Where garbage is fed: a decoder, or a FrameReader. */
export type GarbageKind = "ServerMsg" | "ServerDatagram" | "SnapshotEntities" | "Frame";

/** What goes back to Rust: the TypeScript encodings, as hex, by case name. */
export type FromTs = { client_msgs: Record<string, string>; client_datagrams: Record<string, string> };

export type Outcome = { checked: number; failures: string[] };

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(hex)) {
    throw new Error(`not hex: ${hex.slice(0, 40)}`);
  }
  return Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** A decoded value in the cases file's representation. */
function plain(value: unknown): unknown {
  if (typeof value === "bigint") {
    return value.toString();
  }
  if (value instanceof Uint8Array) {
    return toHex(value);
  }
  if (Array.isArray(value)) {
    return value.map(plain);
  }
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Where `got` and `want` differ (numbers by Object.is, so -0 is not 0), or
 * null when they are equal. */
function difference(got: unknown, want: unknown, path = "$"): string | null {
  if (Array.isArray(want)) {
    if (!Array.isArray(got) || got.length !== want.length) {
      return `${path}: got ${show(got)}, want ${show(want)}`;
    }
    for (let k = 0; k < want.length; k++) {
      const d = difference(got[k], want[k], `${path}[${k}]`);
      if (d) return d;
    }
    return null;
  }
  if (want !== null && typeof want === "object") {
    if (got === null || typeof got !== "object" || Array.isArray(got)) {
      return `${path}: got ${show(got)}, want ${show(want)}`;
    }
    const keys = new Set([...Object.keys(got), ...Object.keys(want)]);
    for (const key of keys) {
      const d = difference((got as Record<string, unknown>)[key], (want as Record<string, unknown>)[key], `${path}.${key}`);
      if (d) return d;
    }
    return null;
  }
  return Object.is(got, want) ? null : `${path}: got ${show(got)}, want ${show(want)}`;
}

function show(v: unknown): string {
  if (Object.is(v, -0)) return "-0";
  return JSON.stringify(plain(v)) ?? String(v);
}

/** Collects failures; each check names its case. */
class Checks {
  readonly failures: string[] = [];
  checked = 0;

  /** Runs `body`; an exception is a failure of `name`. */
  run(name: string, body: () => void): void {
    this.checked++;
    try {
      body();
    } catch (e) {
      this.failures.push(`${name}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    }
  }

  equal(name: string, got: unknown, want: unknown): void {
    const d = difference(plain(got), plain(want));
    if (d) this.failures.push(`${name}: ${d}`);
  }

  bytes(name: string, got: Uint8Array, want: Uint8Array): void {
    if (toHex(got) !== toHex(want)) {
      this.failures.push(`${name}: bytes differ\n  got  ${toHex(got)}\n  want ${toHex(want)}`);
    }
  }

  /** `body` must throw a CodecError. */
  rejects(name: string, body: () => unknown): void {
    this.checked++;
    try {
      const got = body();
      this.failures.push(`${name}: accepted, decoded ${show(got)}`);
    } catch (e) {
      if (!(e instanceof CodecError)) {
        this.failures.push(`${name}: threw ${String(e)}, not a CodecError`);
      }
    }
  }

  outcome(): Outcome {
    return { checked: this.checked, failures: this.failures };
  }
}

/** Feeds `frame` to a FrameReader in chunks of `chunk` bytes and returns
 * every message it yields. */
function readFrames(frame: Uint8Array, chunk: number): ServerMsg[] {
  const reader = new FrameReader();
  const out: ServerMsg[] = [];
  for (let at = 0; at < frame.length; at += chunk) {
    reader.push(frame.subarray(at, at + chunk));
    for (let msg = reader.next(); msg !== null; msg = reader.next()) {
      out.push(msg);
    }
  }
  return out;
}

function feedGarbage(kind: GarbageKind, bytes: Uint8Array, origin?: Centimetres): unknown {
  switch (kind) {
    case "ServerMsg":
      return decodeServerMsg(bytes);
    case "ServerDatagram":
      return decodeServerDatagram(bytes);
    case "SnapshotEntities":
      return decodeSnapshotEntities(bytes, origin);
    case "Frame": {
      const reader = new FrameReader();
      reader.push(bytes);
      const msg = reader.next();
      if (msg === null) {
        throw new Error("the reader waits for more bytes (a frame must be complete or oversized)");
      }
      return msg;
    }
  }
}

/** A client message from the cases file's representation. */
function clientMsgFromPlain(value: unknown): ClientMsg {
  const msg = value as ClientMsg | { type: "Ping"; nonce: string };
  return msg.type === "Ping" ? { type: "Ping", nonce: BigInt(msg.nonce) } : (msg as ClientMsg);
}

export function crossCheck(cases: Cases): { outcome: Outcome; fromTs: FromTs } {
  const c = new Checks();
  const fromTs: FromTs = { client_msgs: {}, client_datagrams: {} };
  for (const k of cases.server_msgs) {
    c.run(`ServerMsg ${k.name}`, () => {
      const bytes = fromHex(k.bytes);
      const msg = decodeServerMsg(bytes);
      c.equal(`ServerMsg ${k.name}: decoded`, msg, k.value);
      c.bytes(`ServerMsg ${k.name}: encoded again`, encodeServerMsg(msg), bytes);
      c.bytes(`ServerMsg ${k.name}: framed again`, frameServerMsg(msg), fromHex(k.frame));
      for (const chunk of [1, 3, 1000]) {
        c.equal(`ServerMsg ${k.name}: FrameReader in ${chunk}-byte chunks`, readFrames(fromHex(k.frame), chunk), [k.value]);
      }
    });
  }
  for (const k of cases.server_datagrams) {
    c.run(`ServerDatagram ${k.name}`, () => {
      const bytes = fromHex(k.bytes);
      const datagram = decodeServerDatagram(bytes);
      c.equal(`ServerDatagram ${k.name}: decoded`, datagram, k.value);
      c.bytes(`ServerDatagram ${k.name}: encoded again`, encodeServerDatagram(datagram), bytes);
      const updates = decodeSnapshotEntities(datagram.entities, datagram.origin);
      c.equal(`ServerDatagram ${k.name}: updates`, updates, k.updates.map((u) => u.update));
      c.bytes(`ServerDatagram ${k.name}: updates encoded again`, encodeSnapshotEntities(updates, datagram.origin), datagram.entities);
      updates.forEach((u, i) => {
        const want = k.updates[i]!;
        const name = `ServerDatagram ${k.name}: update ${i}`;
        c.equal(`${name}: posFromCm`, posFromCm(u.pos), want.pos_m);
        c.equal(`${name}: velFromCm`, velFromCm(u.vel), want.vel_m);
        c.equal(`${name}: yawToRadians`, yawToRadians(u.yaw), want.yaw_rad);
      });
    });
  }
  for (const k of cases.client_msgs) {
    c.run(`ClientMsg ${k.name}`, () => {
      const msg = clientMsgFromPlain(k.value);
      const bytes = encodeClientMsg(msg);
      fromTs.client_msgs[k.name] = toHex(bytes);
      c.bytes(`ClientMsg ${k.name}: encoded`, bytes, fromHex(k.bytes));
      c.bytes(`ClientMsg ${k.name}: framed`, frameClientMsg(msg), fromHex(k.frame));
      c.equal(`ClientMsg ${k.name}: decoded`, decodeClientMsg(fromHex(k.bytes)), k.value);
    });
  }
  for (const k of cases.client_datagrams) {
    c.run(`ClientDatagram ${k.name}`, () => {
      const datagram = k.value as { type: "Input"; input: Input };
      const bytes = encodeInput(datagram.input);
      fromTs.client_datagrams[k.name] = toHex(bytes);
      c.bytes(`ClientDatagram ${k.name}: encoded`, bytes, fromHex(k.bytes));
      c.equal(`ClientDatagram ${k.name}: decoded`, decodeClientDatagram(fromHex(k.bytes)), k.value);
    });
  }
  for (const k of cases.garbage) {
    c.rejects(`garbage ${k.kind} ${k.name}`, () => feedGarbage(k.kind, fromHex(k.bytes), k.origin));
  }
  return { outcome: c.outcome(), fromTs };
}

// ---- Self-checks: no Rust needed. ----

/** f32 values, so that a round trip through the wire keeps them. */
const f = Math.fround;
const BIG = 2n ** 53n + 1n;
const U64_MAX = 2n ** 64n - 1n;

/** At least one sample of every variant: a variant added to the type
 * without one does not type-check. */
const CLIENT_SAMPLES: { [T in ClientMsg["type"]]: Extract<ClientMsg, { type: T }>[] } = {
  Hello: [
    { type: "Hello", version: 2, client: "tessera-web" },
    { type: "Hello", version: 0xffff_ffff, client: "" },
  ],
  Create: [{ type: "Create", name: "Ann", password: "pässwörd ✓" }],
  Connect: [{ type: "Connect", name: "", password: "" }],
  Say: [
    { type: "Say", text: "héllo ✓ 🙂" },
    { type: "Say", text: "x".repeat(300) },
  ],
  Command: [{ type: "Command", line: "who" }],
  Ping: [
    { type: "Ping", nonce: 0n },
    { type: "Ping", nonce: 300n },
    { type: "Ping", nonce: BIG },
    { type: "Ping", nonce: U64_MAX },
  ],
  Logout: [{ type: "Logout" }],
  Resume: [{ type: "Resume", token: "tok" }],
  GmcpModules: [
    { type: "GmcpModules", modules: [] },
    { type: "GmcpModules", modules: ["Char", "Room", "Comm.Channel", "é"] },
  ],
};

const ERROR_CODES: { [C in ErrorCode]: null } = {
  VersionMismatch: null,
  Malformed: null,
  BadCredentials: null,
  NameTaken: null,
  InvalidName: null,
  InvalidPassword: null,
  RateLimited: null,
  NotLoggedIn: null,
  AlreadyLoggedIn: null,
  TooLong: null,
  Unavailable: null,
  Internal: null,
  Kicked: null,
  Lagged: null,
  Forbidden: null,
};

const SERVER_SAMPLES: { [T in ServerMsg["type"]]: Extract<ServerMsg, { type: T }>[] } = {
  Welcome: [{ type: "Welcome", version: 2, server: "tessera 0.1.0", world: "héllo ✓" }],
  LoggedIn: [
    {
      type: "LoggedIn",
      player: U64_MAX,
      entity: BIG,
      name: "Ann",
      token: "tok",
      pos: { x: f(0.1), y: -0, z: f(-12345.678) },
      cell: { x: -0x8000_0000, z: 0x7fff_ffff },
      shard: "shard-1",
      tick_hz: 30,
    },
  ],
  Error: (Object.keys(ERROR_CODES) as ErrorCode[]).map((code) => ({ type: "Error", code, message: code })),
  EntityAppeared: [
    { type: "EntityAppeared", entity: 9n, slot: 0, kind: "Player", name: "", pos: { x: 1, y: 2, z: 3 } },
    { type: "EntityAppeared", entity: BIG, slot: 0xffff, kind: "Npc", name: "Mira", pos: { x: -0, y: f(3.4e38), z: f(1e-45) } },
  ],
  EntityGone: [{ type: "EntityGone", entity: U64_MAX }],
  Chat: [
    { type: "Chat", from: "Ann", entity: 42n, text: "hi", emote: false },
    { type: "Chat", from: "", entity: null, text: "waves ✓", emote: true },
  ],
  Text: [{ type: "Text", text: "" }],
  ChatLine: [
    { type: "ChatLine", kind: { type: "Shout" }, from: "Ann", to: null, text: "hi", at_unix_ms: 1_700_000_000_000n },
    { type: "ChatLine", kind: { type: "Tell" }, from: "Ann", to: "Bob", text: "psst", at_unix_ms: 0n },
    { type: "ChatLine", kind: { type: "Channel", name: "trade" }, from: "Ann", to: "", text: "rope", at_unix_ms: BIG },
    { type: "ChatLine", kind: { type: "System" }, from: "", to: null, text: "notice", at_unix_ms: U64_MAX },
  ],
  CellChanged: [{ type: "CellChanged", cell: { x: -1, z: 2 }, shard: "s1" }],
  Pong: [
    { type: "Pong", nonce: 250n },
    { type: "Pong", nonce: 251n },
    { type: "Pong", nonce: 65536n },
    { type: "Pong", nonce: 2n ** 32n },
  ],
  Relaying: [{ type: "Relaying" }],
  Notice: [{ type: "Notice", text: "[The world is saved.]" }],
  Gmcp: [{ type: "Gmcp", package: "Char.Vitals", data: '{"hp":10}' }],
};

function allSamples<T>(samples: Record<string, T[]>): T[] {
  return Object.values(samples).flat();
}

const u = (slot: number, pos: Centimetres, vel: Centimetres, yaw: number): EntityUpdate => ({ slot, pos, vel, yaw });

/** Snapshot updates and the origin they are packed against. */
const SNAPSHOTS: { name: string; origin: Centimetres; updates: EntityUpdate[] }[] = [
  { name: "empty", origin: [0, 0, 0], updates: [] },
  {
    name: "at rest and moving",
    origin: [-500, 0, 1200],
    updates: [u(0, [-500, 0, 1200], [0, 0, 0], 0), u(1, [-300, 10, 1150], [150, 0, -32768], 65535)],
  },
  {
    name: "wide and two-byte slots",
    origin: [0, 0, 0],
    updates: [u(128, [40_000, -50_000, 32_768], [0, 0, 0], 1), u(MAX_SLOT, [32_767, -32_768, 0], [32_767, 1, -1], 16384)],
  },
  {
    name: "wrapping around i32",
    origin: [0x7fff_ffff, 0, -0x8000_0000],
    updates: [u(200, [-0x8000_0000, 5, 0x7fff_ffff], [0, 0, 0], 2)],
  },
];

export function selfCheck(): Outcome {
  const c = new Checks();
  const enc = new TextEncoder();
  const cat = (...parts: (number[] | Uint8Array)[]) => Uint8Array.from(parts.flatMap((p) => Array.from(p)));

  for (const msg of allSamples<ClientMsg>(CLIENT_SAMPLES)) {
    c.run(`ClientMsg ${msg.type} round trip`, () => {
      c.equal(`ClientMsg ${msg.type} round trip`, decodeClientMsg(encodeClientMsg(msg)), msg);
      const frame = frameClientMsg(msg);
      c.bytes(`ClientMsg ${msg.type} frame`, frame.subarray(4), encodeClientMsg(msg));
      c.equal(`ClientMsg ${msg.type} frame length`, new DataView(frame.buffer).getUint32(0), frame.length - 4);
    });
  }
  const serverMsgs = allSamples<ServerMsg>(SERVER_SAMPLES);
  for (const msg of serverMsgs) {
    c.run(`ServerMsg ${msg.type} round trip`, () => {
      const bytes = encodeServerMsg(msg);
      c.equal(`ServerMsg ${msg.type} round trip`, decodeServerMsg(bytes), msg);
      for (let cut = 0; cut < bytes.length; cut++) {
        c.rejects(`ServerMsg ${msg.type} cut to ${cut} bytes`, () => decodeServerMsg(bytes.subarray(0, cut)));
      }
      c.rejects(`ServerMsg ${msg.type} with a trailing byte`, () => decodeServerMsg(cat(bytes, [0])));
    });
  }
  c.run("FrameReader, all frames in one byte at a time", () => {
    const all = cat(...serverMsgs.map(frameServerMsg));
    c.equal("FrameReader, all frames in one byte at a time", readFrames(all, 1), serverMsgs);
    c.equal("FrameReader, all frames at once", readFrames(all, all.length), serverMsgs);
    const reader = new FrameReader();
    c.equal("FrameReader, nothing yet", reader.next(), null);
    reader.push(Uint8Array.of(0, 0, 0));
    c.equal("FrameReader, part of a prefix", reader.next(), null);
  });
  for (const input of [
    { seq: 1, move_x: 0, move_z: -1, yaw: 0, jump: false },
    { seq: 0xffff_ffff, move_x: f(0.1), move_z: -0, yaw: f(Math.PI), jump: true },
  ]) {
    c.run(`Input ${input.seq}`, () => {
      c.equal(`Input ${input.seq} round trip`, decodeClientDatagram(encodeInput(input)), { type: "Input", input });
    });
  }
  for (const s of SNAPSHOTS) {
    c.run(`snapshot ${s.name}`, () => {
      const entities = encodeSnapshotEntities(s.updates, s.origin);
      c.equal(`snapshot ${s.name} updates`, decodeSnapshotEntities(entities, s.origin), s.updates);
      const datagram = { type: "Snapshot", tick: BIG, ack_input: 0xffff_ffff, origin: s.origin, entities } as const;
      c.equal(`snapshot ${s.name} datagram`, decodeServerDatagram(encodeServerDatagram(datagram)), datagram);
      for (let cut = 1; cut < entities.length; cut++) {
        const updates = (() => {
          try {
            return decodeSnapshotEntities(entities.subarray(0, cut), s.origin);
          } catch (e) {
            return e;
          }
        })();
        // A cut between two updates leaves the first ones; any other cut
        // is an error.
        if (!(updates instanceof CodecError || Array.isArray(updates))) {
          c.failures.push(`snapshot ${s.name} cut to ${cut}: ${String(updates)}`);
        }
      }
    });
  }

  // The byte-level examples of docs/protocol.md, section 3.
  c.run("docs: Hello frame", () =>
    c.bytes("docs: Hello frame", frameClientMsg({ type: "Hello", version: 1, client: "bot" }), fromHex("00000006000103626f74")),
  );
  c.run("docs: Ping frame", () =>
    c.bytes("docs: Ping frame", frameClientMsg({ type: "Ping", nonce: 300n }), fromHex("0000000405fb2c01")),
  );
  c.run("docs: Welcome frame", () =>
    c.equal(
      "docs: Welcome frame",
      readFrames(cat(fromHex("0000001d00010d"), enc.encode("tessera 0.1.0"), [12], enc.encode("Tessera Vale")), 5),
      [{ type: "Welcome", version: 1, server: "tessera 0.1.0", world: "Tessera Vale" }],
    ),
  );
  // CellChanged is variant 8 (ChatLine, declared before it, is 7).
  c.run("docs: CellChanged frame", () =>
    c.equal("docs: CellChanged frame", readFrames(fromHex("0000000608010402" + "7331"), 2), [
      { type: "CellChanged", cell: { x: -1, z: 2 }, shard: "s1" },
    ]),
  );
  c.run("docs: Input datagram", () =>
    c.bytes(
      "docs: Input datagram",
      encodeInput({ seq: 1, move_x: 0, move_z: -1, yaw: 0, jump: false }),
      fromHex("000100000000000080bf0000000000"),
    ),
  );
  c.run("docs: Snapshot datagram", () => {
    const datagram = decodeServerDatagram(
      fromHex("00fbe8032ac800fb8f011a" + "00000000000000000000" + "0101c80000000000960000000000" + "0040"),
    );
    c.equal("docs: Snapshot datagram", datagram, {
      type: "Snapshot",
      tick: 1000n,
      ack_input: 42,
      origin: [100, 0, -200],
      entities: datagram.entities,
    });
    const updates = decodeSnapshotEntities(datagram.entities, datagram.origin);
    c.equal("docs: Snapshot updates", updates, [u(0, [100, 0, -200], [0, 0, 0], 0), u(1, [300, 0, -200], [150, 0, 0], 16384)]);
    c.equal("docs: Snapshot position", posFromCm(updates[1]!.pos), { x: 3, y: 0, z: -2 });
    c.equal("docs: Snapshot velocity", velFromCm(updates[1]!.vel), { x: 1.5, y: 0, z: 0 });
    c.equal("docs: Snapshot yaw", yawToRadians(updates[1]!.yaw), f(Math.PI / 2));
  });

  // Garbage.
  const utf8 = (bytes: number[]) => cat([6, bytes.length], bytes);
  const garbage: [string, () => unknown][] = [
    ["empty ServerMsg", () => decodeServerMsg(new Uint8Array(0))],
    ["ServerMsg variant 13", () => decodeServerMsg(Uint8Array.of(13))],
    ["ServerMsg variant 256", () => decodeServerMsg(Uint8Array.of(0xfb, 0, 1))],
    ["ErrorCode 15", () => decodeServerMsg(Uint8Array.of(2, 15, 0))],
    ["EntityKind 2", () => decodeServerMsg(Uint8Array.of(3, 1, 0, 2, 0, ...new Array<number>(12).fill(0)))],
    ["ChatKind 4", () => decodeServerMsg(Uint8Array.of(7, 4, 0, 0, 0, 0))],
    ["bool 2", () => decodeServerMsg(Uint8Array.of(5, 0, 0, 0, 2))],
    ["Option tag 2", () => decodeServerMsg(Uint8Array.of(5, 0, 2, 0, 0, 0))],
    ["invalid UTF-8", () => decodeServerMsg(utf8([0xc3, 0x28]))],
    ["UTF-8 of a surrogate", () => decodeServerMsg(utf8([0xed, 0xa0, 0x80]))],
    ["overlong UTF-8", () => decodeServerMsg(utf8([0xc0, 0x80]))],
    ["a string longer than the message", () => decodeServerMsg(Uint8Array.of(6, 5, 0x61))],
    ["a string of 2^64-1 bytes", () => decodeServerMsg(Uint8Array.of(6, 0xfd, ...new Array<number>(8).fill(0xff)))],
    ["a u32 with a u64 marker", () => decodeServerMsg(Uint8Array.of(0, 0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0))],
    ["a u64 with a u128 marker", () => decodeServerMsg(Uint8Array.of(9, 0xfe, ...new Array<number>(16).fill(0)))],
    ["a reserved varint marker", () => decodeServerMsg(Uint8Array.of(9, 0xff))],
    ["a u16 with a u32 marker", () => decodeServerMsg(Uint8Array.of(3, 1, 0xfc, 0, 0, 1, 0))],
    ["a ServerMsg over the frame limit", () => decodeServerMsg(cat([6, 0xfb, 0, 0x40], new Uint8Array(MAX_CONTROL_FRAME)))],
    ["a datagram over MAX_DATAGRAM", () => decodeServerDatagram(cat([0, 0, 0, 0, 0, 0, 0xfb, 0xb0, 0x04], new Uint8Array(1200)))],
    ["ServerDatagram variant 1", () => decodeServerDatagram(Uint8Array.of(1, 0, 0, 0, 0, 0, 0))],
    ["Snapshot with a trailing byte", () => decodeServerDatagram(Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0))],
    ["ClientMsg Relay", () => decodeClientMsg(Uint8Array.of(8, 0))],
    ["snapshot flags 0x80", () => decodeSnapshotEntities(Uint8Array.of(1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0))],
    ["snapshot flags 0x04", () => decodeSnapshotEntities(Uint8Array.of(1, 0x04, 0, 0, 0, 0, 0, 0, 0, 0))],
    ["snapshot slot of 3 bytes", () => decodeSnapshotEntities(Uint8Array.of(0x81, 0x81, 0))],
    ["snapshot cut after a slot", () => decodeSnapshotEntities(Uint8Array.of(0x81))],
    ["frame over MAX_CONTROL_FRAME", () => feedGarbage("Frame", Uint8Array.of(0, 0, 0x40, 1))],
    ["frame of 2^32-1 bytes", () => feedGarbage("Frame", Uint8Array.of(0xff, 0xff, 0xff, 0xff))],
    ["frame of a malformed message", () => feedGarbage("Frame", Uint8Array.of(0, 0, 0, 3, 6, 5, 0x61))],
    ["encoding a ClientMsg over MAX_CONTROL_FRAME", () => frameClientMsg({ type: "Say", text: "x".repeat(MAX_CONTROL_FRAME) })],
    ["encoding a u32 of 2^32", () => encodeInput({ seq: 2 ** 32, move_x: 0, move_z: 0, yaw: 0, jump: false })],
    ["encoding a fractional u32", () => encodeClientMsg({ type: "Hello", version: 1.5, client: "" })],
    ["encoding a u64 of 2^64", () => encodeClientMsg({ type: "Ping", nonce: 2n ** 64n })],
    ["encoding a negative u64", () => encodeClientMsg({ type: "Ping", nonce: -1n })],
    ["encoding a slot over MAX_SLOT", () => encodeSnapshotEntities([u(MAX_SLOT + 1, [0, 0, 0], [0, 0, 0], 0)])],
    ["encoding a lone surrogate", () => encodeClientMsg({ type: "Say", text: "a\ud800b" })],
    ["encoding an unknown variant", () => encodeClientMsg({ type: "Relay" } as unknown as ClientMsg)],
  ];
  for (const [name, body] of garbage) {
    c.rejects(name, body);
  }
  c.run("a frame at exactly MAX_CONTROL_FRAME", () => {
    const text = "y".repeat(MAX_CONTROL_FRAME - 4);
    const frame = frameServerMsg({ type: "Text", text });
    c.equal("a frame at exactly MAX_CONTROL_FRAME", frame.length, 4 + MAX_CONTROL_FRAME);
    c.equal("a frame at exactly MAX_CONTROL_FRAME decodes", readFrames(frame, 4096), [{ type: "Text", text }]);
  });
  c.run("a datagram at exactly MAX_DATAGRAM", () => {
    const datagram = decodeServerDatagram(cat([0, 0, 0, 0, 0, 0, 0xfb, 0xa7, 0x04], new Uint8Array(MAX_DATAGRAM - 9)));
    c.equal("a datagram at exactly MAX_DATAGRAM", datagram.entities.length, MAX_DATAGRAM - 9);
  });

  // Random bytes: every decoder returns a value or throws a CodecError.
  let seed = 0x9e3779b9;
  const random = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 2 ** 32;
  };
  const decoders: [string, (b: Uint8Array) => unknown][] = [
    ["decodeServerMsg", decodeServerMsg],
    ["decodeServerDatagram", decodeServerDatagram],
    ["decodeSnapshotEntities", (b) => decodeSnapshotEntities(b, [1, -1, 0x7fff_ffff])],
    ["decodeClientMsg", decodeClientMsg],
    ["decodeClientDatagram", decodeClientDatagram],
    ["FrameReader", (b) => readFrames(b, 7)],
  ];
  for (let n = 0; n < 3000; n++) {
    const bytes = Uint8Array.from({ length: Math.floor(random() * 64) }, () => {
      // Mostly small values and varint markers, where the decoders branch.
      const r = random();
      return r < 0.5 ? Math.floor(random() * 16) : r < 0.6 ? 0xfb + Math.floor(random() * 5) : Math.floor(random() * 256);
    });
    for (const [name, decode] of decoders) {
      c.checked++;
      try {
        decode(bytes);
      } catch (e) {
        if (!(e instanceof CodecError)) {
          c.failures.push(`${name} of random bytes ${toHex(bytes)}: threw ${String(e)}, not a CodecError`);
        }
      }
    }
  }
  return c.outcome();
}
