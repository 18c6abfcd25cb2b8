// Tessera's client protocol messages (proto/src/msg.rs; docs/protocol.md,
// section 3): their TypeScript shapes and their codecs.
//
// Every message is a discriminated union tagged by `type`, the Rust variant's
// name, with the Rust fields under their Rust names. u64 values (ids, nonces,
// ticks) are bigints; an Option is `T | null`. The variant index on the wire
// is the variant's position in the Rust declaration, so the lists below keep
// Rust's order: reordering them is a protocol change.

import { CodecError, Reader, Writer } from "./wire";

/** Largest control-stream frame payload, in both directions (frame.rs). */
export const MAX_CONTROL_FRAME = 16 * 1024;
/** Largest datagram payload the router sends (frame.rs). */
export const MAX_DATAGRAM = 1200;

/** A position or direction in metres. */
export type Vec3 = { x: number; y: number; z: number };
/** A square cell of the world grid. */
export type CellId = { x: number; z: number };
/** An entity (player or NPC), unique in the world. */
export type EntityId = bigint;
/** An account (one player character). */
export type PlayerId = bigint;
/** A shard process. */
export type ShardId = string;

const ENTITY_KINDS = ["Player", "Npc"] as const;
export type EntityKind = (typeof ENTITY_KINDS)[number];

const ERROR_CODES = [
  "VersionMismatch",
  "Malformed",
  "BadCredentials",
  "NameTaken",
  "InvalidName",
  "InvalidPassword",
  "RateLimited",
  "NotLoggedIn",
  "AlreadyLoggedIn",
  "TooLong",
  "Unavailable",
  "Internal",
  "Kicked",
  "Lagged",
  "Forbidden",
] as const;
/** Machine-readable error classes; the message says the rest. */
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Where a chat line was said. */
export type ChatKind =
  | { type: "Shout" }
  | { type: "Tell" }
  | { type: "Channel"; name: string }
  | { type: "System" };

/** Client -> router, on the control stream. (Rust's `Relay`, index 8, is
 * sent only by telnet gateways and is left out.) */
export type ClientMsg =
  | { type: "Hello"; version: number; client: string }
  | { type: "Create"; name: string; password: string }
  | { type: "Connect"; name: string; password: string }
  | { type: "Say"; text: string }
  | { type: "Command"; line: string }
  | { type: "Ping"; nonce: bigint }
  | { type: "Logout" }
  | { type: "Resume"; token: string }
  | { type: "GmcpModules"; modules: string[] };

/** Router -> client, on the control stream. */
export type ServerMsg =
  | { type: "Welcome"; version: number; server: string; world: string }
  | {
      type: "LoggedIn";
      player: PlayerId;
      entity: EntityId;
      name: string;
      token: string;
      pos: Vec3;
      cell: CellId;
      shard: ShardId;
      tick_hz: number;
    }
  | { type: "Error"; code: ErrorCode; message: string }
  | { type: "EntityAppeared"; entity: EntityId; slot: number; kind: EntityKind; name: string; pos: Vec3 }
  | { type: "EntityGone"; entity: EntityId }
  | { type: "Chat"; from: string; entity: EntityId | null; text: string; emote: boolean }
  | { type: "Text"; text: string }
  | { type: "ChatLine"; kind: ChatKind; from: string; to: string | null; text: string; at_unix_ms: bigint }
  | { type: "CellChanged"; cell: CellId; shard: ShardId }
  | { type: "Pong"; nonce: bigint }
  | { type: "Relaying" }
  | { type: "Notice"; text: string }
  | { type: "Gmcp"; package: string; data: string };

/** Movement intent, sent as a datagram many times a second. */
export type Input = { seq: number; move_x: number; move_z: number; yaw: number; jump: boolean };

/** Client -> router datagrams. */
export type ClientDatagram = { type: "Input"; input: Input };

/** Router -> client datagrams. `origin` is the receiving player's position
 * in centimetres; `entities` the packed updates (decodeSnapshotEntities). */
export type ServerDatagram = {
  type: "Snapshot";
  tick: bigint;
  ack_input: number;
  origin: [number, number, number];
  entities: Uint8Array;
};

// Variant indices (the Rust declaration order).
const CLIENT_MSG = {
  Hello: 0,
  Create: 1,
  Connect: 2,
  Say: 3,
  Command: 4,
  Ping: 5,
  Logout: 6,
  Resume: 7,
  // Relay: 8, gateways only.
  GmcpModules: 9,
} as const satisfies Record<ClientMsg["type"], number>;
const CLIENT_MSG_RELAY = 8;

const SERVER_MSG = {
  Welcome: 0,
  LoggedIn: 1,
  Error: 2,
  EntityAppeared: 3,
  EntityGone: 4,
  Chat: 5,
  Text: 6,
  ChatLine: 7,
  CellChanged: 8,
  Pong: 9,
  Relaying: 10,
  Notice: 11,
  Gmcp: 12,
} as const satisfies Record<ServerMsg["type"], number>;

const CHAT_KIND = { Shout: 0, Tell: 1, Channel: 2, System: 3 } as const satisfies Record<ChatKind["type"], number>;

/** Rust's unit-variant enums: the name at each index. */
function readNamed<T extends string>(r: Reader, names: readonly T[], what: string): T {
  const index = r.variant();
  const name = names[index];
  if (name === undefined) {
    throw new CodecError(`malformed message: unknown ${what} variant ${index}`);
  }
  return name;
}

function writeNamed<T extends string>(w: Writer, names: readonly T[], name: T, what: string): void {
  const index = names.indexOf(name);
  if (index < 0) {
    throw new CodecError(`cannot encode ${String(name)} as ${what}`);
  }
  w.variant(index);
}

function readVec3(r: Reader): Vec3 {
  return { x: r.f32(), y: r.f32(), z: r.f32() };
}

function writeVec3(w: Writer, v: Vec3): void {
  w.f32(v.x);
  w.f32(v.y);
  w.f32(v.z);
}

function readCell(r: Reader): CellId {
  return { x: r.i32(), z: r.i32() };
}

function writeCell(w: Writer, c: CellId): void {
  w.i32(c.x);
  w.i32(c.z);
}

function readChatKind(r: Reader): ChatKind {
  const index = r.variant();
  switch (index) {
    case CHAT_KIND.Shout:
      return { type: "Shout" };
    case CHAT_KIND.Tell:
      return { type: "Tell" };
    case CHAT_KIND.Channel:
      return { type: "Channel", name: r.string() };
    case CHAT_KIND.System:
      return { type: "System" };
    default:
      throw new CodecError(`malformed message: unknown ChatKind variant ${index}`);
  }
}

function writeChatKind(w: Writer, kind: ChatKind): void {
  const index: number | undefined = CHAT_KIND[kind.type];
  if (index === undefined) {
    throw new CodecError(`cannot encode ChatKind ${String(kind.type)}`);
  }
  w.variant(index);
  if (kind.type === "Channel") {
    w.string(kind.name);
  }
}

function readInput(r: Reader): Input {
  return { seq: r.u32(), move_x: r.f32(), move_z: r.f32(), yaw: r.f32(), jump: r.bool() };
}

function writeInput(w: Writer, i: Input): void {
  w.u32(i.seq);
  w.f32(i.move_x);
  w.f32(i.move_z);
  w.f32(i.yaw);
  w.bool(i.jump);
}

/** Refuses a payload over `limit` before reading it. */
function reader(bytes: Uint8Array, limit: number): Reader {
  if (!(bytes instanceof Uint8Array)) {
    throw new CodecError("malformed message: not a Uint8Array");
  }
  if (bytes.length > limit) {
    throw new CodecError(`message of ${bytes.length} bytes is over the limit of ${limit} bytes`);
  }
  return new Reader(bytes);
}

/** A ClientMsg's payload (no length prefix; see frameClientMsg). */
export function encodeClientMsg(msg: ClientMsg): Uint8Array {
  const w = new Writer();
  const index: number | undefined = CLIENT_MSG[msg.type];
  if (index === undefined) {
    throw new CodecError(`cannot encode ClientMsg ${String(msg.type)}`);
  }
  w.variant(index);
  switch (msg.type) {
    case "Hello":
      w.u32(msg.version);
      w.string(msg.client);
      break;
    case "Create":
    case "Connect":
      w.string(msg.name);
      w.string(msg.password);
      break;
    case "Say":
      w.string(msg.text);
      break;
    case "Command":
      w.string(msg.line);
      break;
    case "Ping":
      w.u64(msg.nonce);
      break;
    case "Logout":
      break;
    case "Resume":
      w.string(msg.token);
      break;
    case "GmcpModules":
      w.vec(msg.modules, (w, m) => w.string(m));
      break;
    default:
      return unreachable(msg);
  }
  return w.finish();
}

/** Decodes a ServerMsg payload (no length prefix; see FrameReader). */
export function decodeServerMsg(bytes: Uint8Array): ServerMsg {
  const r = reader(bytes, MAX_CONTROL_FRAME);
  const msg = readServerMsg(r);
  r.end();
  return msg;
}

function readServerMsg(r: Reader): ServerMsg {
  const index = r.variant();
  switch (index) {
    case SERVER_MSG.Welcome:
      return { type: "Welcome", version: r.u32(), server: r.string(), world: r.string() };
    case SERVER_MSG.LoggedIn:
      return {
        type: "LoggedIn",
        player: r.u64(),
        entity: r.u64(),
        name: r.string(),
        token: r.string(),
        pos: readVec3(r),
        cell: readCell(r),
        shard: r.string(),
        tick_hz: r.u32(),
      };
    case SERVER_MSG.Error:
      return { type: "Error", code: readNamed(r, ERROR_CODES, "ErrorCode"), message: r.string() };
    case SERVER_MSG.EntityAppeared:
      return {
        type: "EntityAppeared",
        entity: r.u64(),
        slot: r.u16(),
        kind: readNamed(r, ENTITY_KINDS, "EntityKind"),
        name: r.string(),
        pos: readVec3(r),
      };
    case SERVER_MSG.EntityGone:
      return { type: "EntityGone", entity: r.u64() };
    case SERVER_MSG.Chat:
      return {
        type: "Chat",
        from: r.string(),
        entity: r.option((r) => r.u64()),
        text: r.string(),
        emote: r.bool(),
      };
    case SERVER_MSG.Text:
      return { type: "Text", text: r.string() };
    case SERVER_MSG.ChatLine:
      return {
        type: "ChatLine",
        kind: readChatKind(r),
        from: r.string(),
        to: r.option((r) => r.string()),
        text: r.string(),
        at_unix_ms: r.u64(),
      };
    case SERVER_MSG.CellChanged:
      return { type: "CellChanged", cell: readCell(r), shard: r.string() };
    case SERVER_MSG.Pong:
      return { type: "Pong", nonce: r.u64() };
    case SERVER_MSG.Relaying:
      return { type: "Relaying" };
    case SERVER_MSG.Notice:
      return { type: "Notice", text: r.string() };
    case SERVER_MSG.Gmcp:
      return { type: "Gmcp", package: r.string(), data: r.string() };
    default:
      throw new CodecError(`malformed message: unknown ServerMsg variant ${index}`);
  }
}

/** A ClientDatagram::Input, ready to send as a datagram. */
export function encodeInput(input: Input): Uint8Array {
  const w = new Writer();
  w.variant(0);
  writeInput(w, input);
  return w.finish();
}

/** Decodes a datagram from the router. */
export function decodeServerDatagram(bytes: Uint8Array): ServerDatagram {
  const r = reader(bytes, MAX_DATAGRAM);
  const index = r.variant();
  if (index !== 0) {
    throw new CodecError(`malformed message: unknown ServerDatagram variant ${index}`);
  }
  const datagram: ServerDatagram = {
    type: "Snapshot",
    tick: r.u64(),
    ack_input: r.u32(),
    origin: [r.i32(), r.i32(), r.i32()],
    entities: r.byteBuf(),
  };
  r.end();
  return datagram;
}

// The other direction of each codec: what the router does. For tests and
// tooling (test/codec.test.ts checks both directions against Rust); the web
// client needs none of it.

/** Test/tooling use: a ServerMsg payload, as the router encodes it. */
export function encodeServerMsg(msg: ServerMsg): Uint8Array {
  const w = new Writer();
  const index: number | undefined = SERVER_MSG[msg.type];
  if (index === undefined) {
    throw new CodecError(`cannot encode ServerMsg ${String(msg.type)}`);
  }
  w.variant(index);
  switch (msg.type) {
    case "Welcome":
      w.u32(msg.version);
      w.string(msg.server);
      w.string(msg.world);
      break;
    case "LoggedIn":
      w.u64(msg.player);
      w.u64(msg.entity);
      w.string(msg.name);
      w.string(msg.token);
      writeVec3(w, msg.pos);
      writeCell(w, msg.cell);
      w.string(msg.shard);
      w.u32(msg.tick_hz);
      break;
    case "Error":
      writeNamed(w, ERROR_CODES, msg.code, "an ErrorCode");
      w.string(msg.message);
      break;
    case "EntityAppeared":
      w.u64(msg.entity);
      w.u16(msg.slot);
      writeNamed(w, ENTITY_KINDS, msg.kind, "an EntityKind");
      w.string(msg.name);
      writeVec3(w, msg.pos);
      break;
    case "EntityGone":
      w.u64(msg.entity);
      break;
    case "Chat":
      w.string(msg.from);
      w.option(msg.entity, (w, e) => w.u64(e));
      w.string(msg.text);
      w.bool(msg.emote);
      break;
    case "Text":
    case "Notice":
      w.string(msg.text);
      break;
    case "ChatLine":
      writeChatKind(w, msg.kind);
      w.string(msg.from);
      w.option(msg.to, (w, to) => w.string(to));
      w.string(msg.text);
      w.u64(msg.at_unix_ms);
      break;
    case "CellChanged":
      writeCell(w, msg.cell);
      w.string(msg.shard);
      break;
    case "Pong":
      w.u64(msg.nonce);
      break;
    case "Relaying":
      break;
    case "Gmcp":
      w.string(msg.package);
      w.string(msg.data);
      break;
    default:
      return unreachable(msg);
  }
  return w.finish();
}

/** Test/tooling use: decodes a ClientMsg payload, as the router does. A
 * gateway's `Relay` is refused: the web client's types have no place for it. */
export function decodeClientMsg(bytes: Uint8Array): ClientMsg {
  const r = reader(bytes, MAX_CONTROL_FRAME);
  const msg = readClientMsg(r);
  r.end();
  return msg;
}

function readClientMsg(r: Reader): ClientMsg {
  const index = r.variant();
  switch (index) {
    case CLIENT_MSG.Hello:
      return { type: "Hello", version: r.u32(), client: r.string() };
    case CLIENT_MSG.Create:
      return { type: "Create", name: r.string(), password: r.string() };
    case CLIENT_MSG.Connect:
      return { type: "Connect", name: r.string(), password: r.string() };
    case CLIENT_MSG.Say:
      return { type: "Say", text: r.string() };
    case CLIENT_MSG.Command:
      return { type: "Command", line: r.string() };
    case CLIENT_MSG.Ping:
      return { type: "Ping", nonce: r.u64() };
    case CLIENT_MSG.Logout:
      return { type: "Logout" };
    case CLIENT_MSG.Resume:
      return { type: "Resume", token: r.string() };
    case CLIENT_MSG_RELAY:
      throw new CodecError("ClientMsg::Relay is a cluster gateway's message, not a client's");
    case CLIENT_MSG.GmcpModules:
      return { type: "GmcpModules", modules: r.vec((r) => r.string()) };
    default:
      throw new CodecError(`malformed message: unknown ClientMsg variant ${index}`);
  }
}

/** Test/tooling use: decodes a datagram from a client, as the router does. */
export function decodeClientDatagram(bytes: Uint8Array): ClientDatagram {
  const r = reader(bytes, MAX_DATAGRAM);
  const index = r.variant();
  if (index !== 0) {
    throw new CodecError(`malformed message: unknown ClientDatagram variant ${index}`);
  }
  const datagram: ClientDatagram = { type: "Input", input: readInput(r) };
  r.end();
  return datagram;
}

/** Test/tooling use: a ServerDatagram, as the router encodes it. */
export function encodeServerDatagram(datagram: ServerDatagram): Uint8Array {
  if (datagram.type !== "Snapshot") {
    throw new CodecError(`cannot encode ServerDatagram ${String(datagram.type)}`);
  }
  if (!Array.isArray(datagram.origin) || datagram.origin.length !== 3) {
    throw new CodecError("cannot encode a snapshot origin that is not 3 numbers");
  }
  const w = new Writer();
  w.variant(0);
  w.u64(datagram.tick);
  w.u32(datagram.ack_input);
  for (const o of datagram.origin) {
    w.i32(o);
  }
  w.byteBuf(datagram.entities);
  return w.finish();
}

/** For a switch that covers every variant: a value the types say cannot
 * exist came from untyped code. */
function unreachable(value: never): never {
  throw new CodecError(`cannot encode ${JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))}`);
}
