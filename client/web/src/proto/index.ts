// Tessera's client protocol for the browser: one protocol, two codecs. This
// is the TypeScript one; proto/tests/web_codec.rs checks it against Rust's
// (tessera_proto) byte for byte, so a protocol change that breaks the web
// client fails CI. Reference: docs/protocol.md, sections 2 and 3.

export { CodecError } from "./wire";
export {
  PROTOCOL_VERSION,
  CLOSE_NORMAL,
  CLOSE_PROTOCOL,
  CLOSE_VERSION,
  CLOSE_FULL,
  CLOSE_RESTART,
  CLOSE_TOO_MANY,
} from "./session";
export {
  MAX_CONTROL_FRAME,
  MAX_DATAGRAM,
  encodeClientMsg,
  decodeServerMsg,
  encodeInput,
  decodeServerDatagram,
  // Test/tooling use: the router's side of each codec.
  encodeServerMsg,
  decodeClientMsg,
  decodeClientDatagram,
  encodeServerDatagram,
} from "./messages";
export type {
  Vec3,
  CellId,
  EntityId,
  PlayerId,
  ShardId,
  EntityKind,
  ErrorCode,
  ChatKind,
  ClientMsg,
  ServerMsg,
  Input,
  ClientDatagram,
  ServerDatagram,
} from "./messages";
export {
  frameClientMsg,
  FrameReader,
  // Test/tooling use.
  frameServerMsg,
} from "./framing";
export {
  MAX_SLOT,
  posFromCm,
  velFromCm,
  yawToRadians,
  decodeSnapshotEntities,
  // Test/tooling use.
  encodeSnapshotEntities,
} from "./snapshot";
export type { Centimetres, EntityUpdate } from "./snapshot";
