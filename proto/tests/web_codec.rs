//! One protocol, two codecs (issue 18, item 3): the browser client's TypeScript codec
//! (`client/web/src/proto`) checked against this crate's, so a protocol change that breaks
//! the web client fails CI.
//!
//! The test writes sample messages to a temporary directory (`cases.json`): each with the
//! bytes this crate encodes and the value the TypeScript codec must decode them to, in its
//! representation (variants tagged by `type`, u64 as decimal strings, bytes as hex). It then
//! runs `node client/web/test/run.mjs <dir>`, which decodes every case with the TypeScript
//! codec, compares, encodes the value again and compares the bytes; rejects garbage this
//! crate rejects; and writes its encodings of the client's messages to `from_ts.json`,
//! which this test decodes with `tessera_proto` and compares to the values it sent.
//!
//! Needs Node.js and client/web's packages (`cd client/web && npm ci`); without them it
//! fails, saying so.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tessera_proto::frame::{self, FrameBuffer, MAX_CONTROL_FRAME, MAX_DATAGRAM};
use tessera_proto::msg::{
    ChatKind, ClientDatagram, ClientMsg, EntityKind, ErrorCode, Input, ServerDatagram, ServerMsg,
};
use tessera_proto::snapshot::{self, EntityUpdate, MAX_SLOT};
use tessera_proto::{CellId, EntityId, PlayerId, ShardId, Vec3, PROTOCOL_VERSION};

/// Above 2^53: a JavaScript number would lose it.
const BIG: u64 = (1 << 53) + 1;
/// An NPC's id: the top bit set.
const NPC: u64 = 0x8000_0000_0000_0011;

// ---- The TypeScript representation, built by hand. ----
//
// Each `match` names every variant, with no wildcard on purpose: a new variant stops
// compiling here until it has a representation, and `every_variant_has_a_sample` then
// fails until it has a sample.

fn big(n: u64) -> Value {
    Value::String(n.to_string())
}

/// An f32 as the f64 it is, so JavaScript parses the same number (0.1f32 is not 0.1).
fn f(x: f32) -> Value {
    json!(f64::from(x))
}

fn vec3(v: Vec3) -> Value {
    json!({ "x": f(v.x), "y": f(v.y), "z": f(v.z) })
}

fn cell(c: CellId) -> Value {
    json!({ "x": c.x, "z": c.z })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(s.get(k..k + 2)?, 16).ok())
        .collect()
}

fn entity_kind_json(kind: EntityKind) -> Value {
    json!(match kind {
        EntityKind::Player => "Player",
        EntityKind::Npc => "Npc",
    })
}

fn error_code_json(code: ErrorCode) -> Value {
    json!(match code {
        ErrorCode::VersionMismatch => "VersionMismatch",
        ErrorCode::Malformed => "Malformed",
        ErrorCode::BadCredentials => "BadCredentials",
        ErrorCode::NameTaken => "NameTaken",
        ErrorCode::InvalidName => "InvalidName",
        ErrorCode::InvalidPassword => "InvalidPassword",
        ErrorCode::RateLimited => "RateLimited",
        ErrorCode::NotLoggedIn => "NotLoggedIn",
        ErrorCode::AlreadyLoggedIn => "AlreadyLoggedIn",
        ErrorCode::TooLong => "TooLong",
        ErrorCode::Unavailable => "Unavailable",
        ErrorCode::Internal => "Internal",
        ErrorCode::Kicked => "Kicked",
        ErrorCode::Lagged => "Lagged",
        ErrorCode::Forbidden => "Forbidden",
    })
}

fn chat_kind_json(kind: &ChatKind) -> Value {
    match kind {
        ChatKind::Shout => json!({ "type": "Shout" }),
        ChatKind::Tell => json!({ "type": "Tell" }),
        ChatKind::Channel(name) => json!({ "type": "Channel", "name": name }),
        ChatKind::System => json!({ "type": "System" }),
    }
}

fn server_msg_json(msg: &ServerMsg) -> Value {
    match msg {
        ServerMsg::Welcome {
            version,
            server,
            world,
        } => json!({ "type": "Welcome", "version": version, "server": server, "world": world }),
        ServerMsg::LoggedIn {
            player,
            entity,
            name,
            token,
            pos,
            cell: c,
            shard,
            tick_hz,
        } => json!({
            "type": "LoggedIn",
            "player": big(player.0),
            "entity": big(entity.0),
            "name": name,
            "token": token,
            "pos": vec3(*pos),
            "cell": cell(*c),
            "shard": shard.0,
            "tick_hz": tick_hz,
        }),
        ServerMsg::Error { code, message } => {
            json!({ "type": "Error", "code": error_code_json(*code), "message": message })
        }
        ServerMsg::EntityAppeared {
            entity,
            slot,
            kind,
            name,
            pos,
        } => json!({
            "type": "EntityAppeared",
            "entity": big(entity.0),
            "slot": slot,
            "kind": entity_kind_json(*kind),
            "name": name,
            "pos": vec3(*pos),
        }),
        ServerMsg::EntityGone { entity } => {
            json!({ "type": "EntityGone", "entity": big(entity.0) })
        }
        ServerMsg::Chat {
            from,
            entity,
            text,
            emote,
        } => json!({
            "type": "Chat",
            "from": from,
            "entity": entity.map(|e| big(e.0)),
            "text": text,
            "emote": emote,
        }),
        ServerMsg::Text { text } => json!({ "type": "Text", "text": text }),
        ServerMsg::ChatLine {
            kind,
            from,
            to,
            text,
            at_unix_ms,
        } => json!({
            "type": "ChatLine",
            "kind": chat_kind_json(kind),
            "from": from,
            "to": to,
            "text": text,
            "at_unix_ms": big(*at_unix_ms),
        }),
        ServerMsg::CellChanged { cell: c, shard } => {
            json!({ "type": "CellChanged", "cell": cell(*c), "shard": shard.0 })
        }
        ServerMsg::Pong { nonce } => json!({ "type": "Pong", "nonce": big(*nonce) }),
        ServerMsg::Relaying => json!({ "type": "Relaying" }),
        ServerMsg::Notice { text } => json!({ "type": "Notice", "text": text }),
        ServerMsg::Gmcp { package, data } => {
            json!({ "type": "Gmcp", "package": package, "data": data })
        }
    }
}

/// `None` for `Relay`: only cluster gateways send it, so the web client's type leaves it out.
fn client_msg_json(msg: &ClientMsg) -> Option<Value> {
    Some(match msg {
        ClientMsg::Hello { version, client } => {
            json!({ "type": "Hello", "version": version, "client": client })
        }
        ClientMsg::Create { name, password } => {
            json!({ "type": "Create", "name": name, "password": password })
        }
        ClientMsg::Connect { name, password } => {
            json!({ "type": "Connect", "name": name, "password": password })
        }
        ClientMsg::Say { text } => json!({ "type": "Say", "text": text }),
        ClientMsg::Command { line } => json!({ "type": "Command", "line": line }),
        ClientMsg::Ping { nonce } => json!({ "type": "Ping", "nonce": big(*nonce) }),
        ClientMsg::Logout => json!({ "type": "Logout" }),
        ClientMsg::Resume { token } => json!({ "type": "Resume", "token": token }),
        ClientMsg::Relay { .. } => return None,
        ClientMsg::GmcpModules { modules } => {
            json!({ "type": "GmcpModules", "modules": modules })
        }
    })
}

fn input_json(i: &Input) -> Value {
    json!({
        "seq": i.seq,
        "move_x": f(i.move_x),
        "move_z": f(i.move_z),
        "yaw": f(i.yaw),
        "jump": i.jump,
    })
}

fn client_datagram_json(datagram: &ClientDatagram) -> Value {
    match datagram {
        ClientDatagram::Input(input) => json!({ "type": "Input", "input": input_json(input) }),
    }
}

fn server_datagram_json(datagram: &ServerDatagram) -> Value {
    match datagram {
        ServerDatagram::Snapshot {
            tick,
            ack_input,
            origin,
            entities,
        } => json!({
            "type": "Snapshot",
            "tick": big(*tick),
            "ack_input": ack_input,
            "origin": origin,
            "entities": hex(entities),
        }),
    }
}

/// An update as decoded, and what the client's helpers make of it in metres and radians.
fn update_json(u: &EntityUpdate) -> Value {
    json!({
        "update": { "slot": u.slot, "pos": u.pos, "vel": u.vel, "yaw": u.yaw },
        "pos_m": vec3(u.pos()),
        "vel_m": vec3(u.vel()),
        "yaw_rad": f(u.yaw()),
    })
}

fn type_of_str(value: &Value) -> &str {
    value["type"].as_str().expect("a tagged value")
}

// ---- Samples. ----

fn logged_in(
    player: u64,
    entity: u64,
    name: &str,
    pos: Vec3,
    c: CellId,
    tick_hz: u32,
) -> ServerMsg {
    ServerMsg::LoggedIn {
        player: PlayerId(player),
        entity: EntityId(entity),
        name: name.into(),
        token: "tok-🙂".into(),
        pos,
        cell: c,
        shard: ShardId::new(name.to_lowercase()),
        tick_hz,
    }
}

fn chat_line(kind: ChatKind, to: Option<&str>, at_unix_ms: u64) -> ServerMsg {
    ServerMsg::ChatLine {
        kind,
        from: "Ann".into(),
        to: to.map(String::from),
        text: "héllo ✓".into(),
        at_unix_ms,
    }
}

fn server_msgs() -> Vec<ServerMsg> {
    let error_codes = [
        ErrorCode::VersionMismatch,
        ErrorCode::Malformed,
        ErrorCode::BadCredentials,
        ErrorCode::NameTaken,
        ErrorCode::InvalidName,
        ErrorCode::InvalidPassword,
        ErrorCode::RateLimited,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::TooLong,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Kicked,
        ErrorCode::Lagged,
        ErrorCode::Forbidden,
    ];
    let mut msgs = vec![
        ServerMsg::Welcome {
            version: PROTOCOL_VERSION,
            server: "tessera 0.1.0".into(),
            world: "Tessera Vale".into(),
        },
        ServerMsg::Welcome {
            version: u32::MAX,
            server: String::new(),
            world: "héllo ✓".into(),
        },
        logged_in(
            7,
            7,
            "Ann",
            Vec3::new(1.0, 2.0, 3.0),
            CellId::new(0, -1),
            30,
        ),
        logged_in(
            u64::MAX,
            BIG,
            "",
            Vec3::new(0.1, -0.0, -12_345.678),
            CellId::new(i32::MIN, i32::MAX),
            251,
        ),
        ServerMsg::EntityAppeared {
            entity: EntityId(9),
            slot: 0,
            kind: EntityKind::Player,
            name: "Ann".into(),
            pos: Vec3::new(-0.5, 0.0, 1000.25),
        },
        ServerMsg::EntityAppeared {
            entity: EntityId(NPC),
            slot: u16::MAX,
            kind: EntityKind::Npc,
            name: "Mira ✓".into(),
            pos: Vec3::new(f32::MAX, f32::MIN_POSITIVE, -1e-45),
        },
        ServerMsg::EntityGone {
            entity: EntityId(250),
        },
        ServerMsg::EntityGone {
            entity: EntityId(u64::MAX),
        },
        ServerMsg::Chat {
            from: "Mira".into(),
            entity: Some(EntityId(NPC)),
            text: "waves.".into(),
            emote: true,
        },
        ServerMsg::Chat {
            from: String::new(),
            entity: None,
            text: "héllo ✓".into(),
            emote: false,
        },
        ServerMsg::Text {
            text: String::new(),
        },
        ServerMsg::Text {
            // 300 bytes: a two-byte length.
            text: "é".repeat(150),
        },
        chat_line(ChatKind::Shout, None, 1_700_000_000_000),
        chat_line(ChatKind::Tell, Some("Bob"), 0),
        chat_line(ChatKind::Channel("trade".into()), Some(""), BIG),
        chat_line(ChatKind::Channel(String::new()), None, 65_536),
        chat_line(ChatKind::System, None, u64::MAX),
        ServerMsg::CellChanged {
            cell: CellId::new(-1, 2),
            shard: ShardId::new("s1"),
        },
        ServerMsg::Relaying,
        ServerMsg::Notice {
            text: "[The world is saved.]".into(),
        },
        ServerMsg::Gmcp {
            package: "Char.Vitals".into(),
            data: r#"{"hp":10,"name":"Ann ✓"}"#.into(),
        },
    ];
    // Every width of varint.
    for nonce in [
        0,
        250,
        251,
        65_535,
        65_536,
        u64::from(u32::MAX),
        1 << 32,
        BIG,
    ] {
        msgs.push(ServerMsg::Pong { nonce });
    }
    for code in error_codes {
        msgs.push(ServerMsg::Error {
            code,
            message: format!("{code:?}: héllo ✓"),
        });
    }
    msgs
}

fn client_msgs() -> Vec<ClientMsg> {
    vec![
        ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            client: "tessera-web 0.1.0".into(),
        },
        ClientMsg::Hello {
            version: u32::MAX,
            client: String::new(),
        },
        ClientMsg::Create {
            name: "Ann".into(),
            password: "pässwörd ✓".into(),
        },
        ClientMsg::Connect {
            name: String::new(),
            password: String::new(),
        },
        ClientMsg::Say {
            text: "héllo ✓".into(),
        },
        ClientMsg::Say {
            text: "x".repeat(500),
        },
        ClientMsg::Command { line: "who".into() },
        ClientMsg::Ping { nonce: 0 },
        ClientMsg::Ping { nonce: 300 },
        ClientMsg::Ping { nonce: BIG },
        ClientMsg::Ping { nonce: u64::MAX },
        ClientMsg::Logout,
        ClientMsg::Resume {
            token: "tok-🙂".into(),
        },
        ClientMsg::GmcpModules { modules: vec![] },
        ClientMsg::GmcpModules {
            modules: vec!["Char".into(), "Room".into(), String::new(), "é".into()],
        },
    ]
}

fn inputs() -> Vec<ClientDatagram> {
    [
        Input {
            seq: 1,
            move_x: 0.0,
            move_z: -1.0,
            yaw: 0.0,
            jump: false,
        },
        Input {
            seq: u32::MAX,
            move_x: 0.1,
            move_z: -0.0,
            yaw: std::f32::consts::PI,
            jump: true,
        },
        Input {
            seq: 300,
            move_x: -1e-45,
            move_z: f32::MIN,
            yaw: -7.25,
            jump: false,
        },
    ]
    .into_iter()
    .map(ClientDatagram::Input)
    .collect()
}

fn update(slot: u16, pos: [i32; 3], vel: [i16; 3], yaw: u16) -> EntityUpdate {
    EntityUpdate {
        slot,
        pos,
        vel,
        yaw,
    }
}

/// Snapshots and the updates packed in them.
fn snapshots() -> Vec<(ServerDatagram, Vec<EntityUpdate>)> {
    let me = Vec3::new(1.0, 0.0, -2.0);
    let documented = [
        EntityUpdate::quantize(0, me, Vec3::ZERO, 0.0),
        EntityUpdate::quantize(
            1,
            Vec3::new(3.0, 0.0, -2.0),
            Vec3::new(1.5, 0.0, 0.0),
            std::f32::consts::FRAC_PI_2,
        ),
    ];
    let crowd: Vec<EntityUpdate> = (0..70)
        .map(|k| {
            EntityUpdate::quantize(
                k * 3,
                Vec3::new(-40.0 + k as f32 * 1.01, 0.5, 12.0 - k as f32 * 0.37),
                Vec3::new(k as f32 * 0.1 - 3.0, 0.0, 0.25),
                k as f32 * 0.09,
            )
        })
        .collect();
    let lists: Vec<(u64, u32, [i32; 3], Vec<EntityUpdate>)> = vec![
        (1000, 42, snapshot::quantize_pos(me), documented.to_vec()),
        (0, 0, [0; 3], vec![]),
        (
            BIG,
            u32::MAX,
            [-50_000, -120, 3_000_000],
            vec![
                // At rest, narrow, on the origin and off it.
                update(0, [-50_000, -120, 3_000_000], [0; 3], 0),
                update(
                    1,
                    [-50_000 - 32_768, 32_647, 3_000_000 + 32_767],
                    [0; 3],
                    65_535,
                ),
                // Moving.
                update(
                    127,
                    [-49_000, -120, 2_999_000],
                    [i16::MIN, 0, i16::MAX],
                    16_384,
                ),
                update(5, [-50_001, -121, 2_999_999], [-1, 1, 0], 1),
            ],
        ),
        (
            7,
            3,
            [0; 3],
            vec![
                // Beyond ±327 m: wide positions, with two-byte slots.
                update(128, [32_768, 0, 0], [0; 3], 2),
                update(MAX_SLOT, [-40_000, 50_000, -32_769], [300, 0, -300], 40_000),
                update(200, [i32::MIN, i32::MAX, 0], [0; 3], 0),
            ],
        ),
        (
            8,
            4,
            [i32::MAX, 0, i32::MIN],
            // Wide and wrapping around i32.
            vec![update(16_000, [i32::MIN, 5, i32::MAX], [1, 2, 3], 9)],
        ),
        (u64::MAX, 251, snapshot::quantize_pos(me), crowd),
    ];
    lists
        .into_iter()
        .map(|(tick, ack_input, origin, updates)| {
            let datagram = ServerDatagram::Snapshot {
                tick,
                ack_input,
                origin,
                entities: snapshot::encode_updates(origin, &updates),
            };
            (datagram, updates)
        })
        .collect()
}

/// Names samples by their type and a counter: `Pong#3`.
fn named<T>(items: Vec<T>, json: impl Fn(&T) -> Value) -> Vec<(String, T, Value)> {
    let mut seen = HashMap::<String, usize>::new();
    items
        .into_iter()
        .map(|item| {
            let value = json(&item);
            let ty = type_of_str(&value).to_string();
            let k = seen.entry(ty.clone()).or_default();
            *k += 1;
            (format!("{ty}#{k}"), item, value)
        })
        .collect()
}

// ---- Garbage. ----

/// Where the TypeScript side feeds a garbage case.
#[derive(Clone, Copy)]
enum Feed {
    /// `decodeServerMsg`.
    Message,
    /// `decodeServerDatagram`.
    Datagram,
    /// `decodeSnapshotEntities`, with this origin.
    Updates([i32; 3]),
    /// A `FrameReader`, all bytes at once.
    Frame,
}

struct Garbage {
    name: String,
    feed: Feed,
    bytes: Vec<u8>,
}

impl Garbage {
    fn new(name: impl Into<String>, feed: Feed, bytes: Vec<u8>) -> Garbage {
        Garbage {
            name: name.into(),
            feed,
            bytes,
        }
    }

    /// Whether `tessera_proto` rejects it, as the TypeScript codec must.
    fn rust_rejects(&self) -> bool {
        match self.feed {
            Feed::Message => frame::decode::<ServerMsg>(&self.bytes, MAX_CONTROL_FRAME).is_err(),
            Feed::Datagram => frame::decode::<ServerDatagram>(&self.bytes, MAX_DATAGRAM).is_err(),
            Feed::Updates(origin) => snapshot::decode_updates(origin, &self.bytes).is_err(),
            Feed::Frame => {
                let mut frames = FrameBuffer::new(MAX_CONTROL_FRAME);
                frames.extend(&self.bytes);
                match frames.next_frame() {
                    Err(_) => true,
                    Ok(Some(payload)) => {
                        frame::decode::<ServerMsg>(&payload, MAX_CONTROL_FRAME).is_err()
                    }
                    Ok(None) => false,
                }
            }
        }
    }

    fn json(&self) -> Value {
        let (kind, origin) = match self.feed {
            Feed::Message => ("ServerMsg", None),
            Feed::Datagram => ("ServerDatagram", None),
            Feed::Updates(origin) => ("SnapshotEntities", Some(origin)),
            Feed::Frame => ("Frame", None),
        };
        let mut value = json!({ "name": self.name, "kind": kind, "bytes": hex(&self.bytes) });
        if let Some(origin) = origin {
            value["origin"] = json!(origin);
        }
        value
    }
}

fn with_prefix(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn garbage(
    server: &[(String, ServerMsg, Value)],
    snaps: &[(String, ServerDatagram)],
) -> Vec<Garbage> {
    let mut out = Vec::new();
    for (name, msg, _) in server {
        let bytes = frame::encode(msg).expect("encodes");
        for cut in 0..bytes.len() {
            out.push(Garbage::new(
                format!("{name} cut to {cut} bytes"),
                Feed::Message,
                bytes[..cut].to_vec(),
            ));
        }
        out.push(Garbage::new(
            format!("{name} and a byte"),
            Feed::Message,
            cat(&[&bytes, &[0]]),
        ));
        out.push(Garbage::new(
            format!("{name} framed, and a byte"),
            Feed::Frame,
            with_prefix(&cat(&[&bytes, &[0]])),
        ));
    }
    let text = |bytes: &[u8]| cat(&[&[6, bytes.len() as u8], bytes]);
    out.extend([
        Garbage::new("ServerMsg variant 13", Feed::Message, vec![13]),
        Garbage::new("ServerMsg variant 256", Feed::Message, vec![0xfb, 0, 1]),
        Garbage::new("ErrorCode 15", Feed::Message, vec![2, 15, 0]),
        Garbage::new(
            "EntityKind 2",
            Feed::Message,
            cat(&[&[3, 1, 0, 2, 0], &[0; 12]]),
        ),
        Garbage::new("ChatKind 4", Feed::Message, vec![7, 4, 0, 0, 0, 0]),
        Garbage::new("bool 2", Feed::Message, vec![5, 0, 0, 0, 2]),
        Garbage::new("Option tag 2", Feed::Message, vec![5, 0, 2, 0, 0, 0]),
        Garbage::new("invalid UTF-8", Feed::Message, text(&[0xc3, 0x28])),
        Garbage::new(
            "UTF-8 of a surrogate",
            Feed::Message,
            text(&[0xed, 0xa0, 0x80]),
        ),
        Garbage::new("overlong UTF-8", Feed::Message, text(&[0xc0, 0x80])),
        Garbage::new("a string past the end", Feed::Message, vec![6, 5, b'a']),
        Garbage::new(
            "a string of 2^64-1 bytes",
            Feed::Message,
            cat(&[&[6, 0xfd], &[0xff; 8]]),
        ),
        Garbage::new(
            "a u32 with a u64 marker",
            Feed::Message,
            cat(&[&[0, 0xfd, 1], &[0; 7], &[0, 0]]),
        ),
        Garbage::new(
            "a u64 with a u128 marker",
            Feed::Message,
            cat(&[&[9, 0xfe], &[0; 16]]),
        ),
        Garbage::new("a reserved varint marker", Feed::Message, vec![9, 0xff]),
        Garbage::new(
            "a u16 with a u32 marker",
            Feed::Message,
            vec![3, 1, 0xfc, 0, 0, 1, 0],
        ),
        Garbage::new(
            "a ServerMsg over MAX_CONTROL_FRAME",
            Feed::Message,
            cat(&[&[6, 0xfb, 0, 0x40], &vec![b'a'; MAX_CONTROL_FRAME]]),
        ),
        Garbage::new(
            "a frame over MAX_CONTROL_FRAME",
            Feed::Frame,
            ((MAX_CONTROL_FRAME + 1) as u32).to_be_bytes().to_vec(),
        ),
        Garbage::new("a frame of 2^32-1 bytes", Feed::Frame, vec![0xff; 4]),
        Garbage::new(
            "a frame of a truncated message",
            Feed::Frame,
            with_prefix(&[6, 5, b'a']),
        ),
        Garbage::new(
            "a frame of invalid UTF-8",
            Feed::Frame,
            with_prefix(&text(&[0xff])),
        ),
        Garbage::new(
            "ServerDatagram variant 1",
            Feed::Datagram,
            vec![1, 0, 0, 0, 0, 0, 0],
        ),
        Garbage::new(
            "a datagram over MAX_DATAGRAM",
            Feed::Datagram,
            cat(&[&[0, 0, 0, 0, 0, 0, 0xfb, 0xa8, 0x04], &[0; 1192]]),
        ),
        Garbage::new(
            "snapshot flags 0x80",
            Feed::Updates([0; 3]),
            vec![1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Garbage::new(
            "snapshot flags 0x04",
            Feed::Updates([0; 3]),
            vec![1, 0x04, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Garbage::new(
            "snapshot slot of 3 bytes",
            Feed::Updates([0; 3]),
            vec![0x81, 0x81, 0],
        ),
        Garbage::new(
            "snapshot cut after a slot",
            Feed::Updates([0; 3]),
            vec![0x81],
        ),
    ]);
    for (name, datagram) in snaps {
        let bytes = frame::encode(datagram).expect("encodes");
        for cut in 0..bytes.len() {
            out.push(Garbage::new(
                format!("{name} cut to {cut} bytes"),
                Feed::Datagram,
                bytes[..cut].to_vec(),
            ));
        }
        out.push(Garbage::new(
            format!("{name} and a byte"),
            Feed::Datagram,
            cat(&[&bytes, &[0]]),
        ));
        let ServerDatagram::Snapshot {
            origin, entities, ..
        } = datagram;
        // A cut between two updates is a shorter list, not garbage: only the others.
        for cut in 1..entities.len() {
            let g = Garbage::new(
                format!("{name} updates cut to {cut} bytes"),
                Feed::Updates(*origin),
                entities[..cut].to_vec(),
            );
            if g.rust_rejects() {
                out.push(g);
            }
        }
    }
    out
}

// ---- Running the TypeScript side. ----

/// A message's bytes as this crate encodes them, in hex.
fn payload<T: Serialize>(msg: &T) -> String {
    hex(&frame::encode(msg).expect("encodes"))
}

/// A control message as this crate frames it, in hex.
fn framed<T: Serialize>(msg: &T) -> String {
    hex(&frame::encode_frame(msg, MAX_CONTROL_FRAME).expect("frames"))
}

/// Checks what the TypeScript codec encoded (hex, from `from_ts.json`): it decodes to
/// `want`, and is exactly the bytes this crate encodes `want` to.
fn from_typescript<T>(encoded: &Value, want: &T, limit: usize) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encoded
        .as_str()
        .and_then(unhex)
        .ok_or_else(|| format!("no encoding in from_ts.json, found {encoded}"))?;
    let got: T = frame::decode(&bytes, limit).map_err(|e| e.to_string())?;
    if &got != want {
        return Err(format!("decoded {got:?}, want {want:?}"));
    }
    let rust = frame::encode(want).expect("encodes");
    if rust != bytes {
        return Err(format!("bytes {}, Rust writes {}", hex(&bytes), hex(&rust)));
    }
    Ok(())
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/web")
}

/// Runs `node test/run.mjs <dir>` in client/web; panics, saying what to install, when it
/// cannot.
fn run_typescript(dir: &Path) -> std::process::Output {
    const SETUP: &str = "the web codec test runs client/web's TypeScript codec under Node.js \
                         (18 or later): install Node and run `cd client/web && npm ci`";
    let web = web_dir();
    if !web.join("node_modules/esbuild").is_dir() {
        panic!(
            "{SETUP} ({} is missing)",
            web.join("node_modules/esbuild").display()
        );
    }
    Command::new("node")
        .arg(web.join("test/run.mjs"))
        .arg(dir)
        .current_dir(&web)
        .output()
        .unwrap_or_else(|e| panic!("{SETUP} (cannot run `node`: {e})"))
}

/// The names of `T`'s variants, as its derived `Deserialize` lists them: read from the type
/// itself, so a new variant is counted without anyone listing it.
fn variant_names<T: DeserializeOwned>() -> BTreeSet<&'static str> {
    struct Names(Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &mut Names {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(variants);
            Err(de::Error::custom("only the variant names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let mut names = Names(None);
    let _ = T::deserialize(&mut names);
    names.0.expect("an enum").iter().copied().collect()
}

/// The variant names in `values` (or in their `field`): a unit variant is a string, any
/// other a `{ "type": name, ... }` object.
fn names_of<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    field: Option<&str>,
) -> BTreeSet<String> {
    values
        .into_iter()
        .map(|v| field.map_or(v, |field| &v[field]))
        .map(|v| v.as_str().unwrap_or_else(|| type_of_str(v)).to_string())
        .collect()
}

/// The samples' variant names are exactly `T`'s, but those in `except`.
fn assert_covers<T: DeserializeOwned>(samples: BTreeSet<String>, except: &[&str]) {
    let what = std::any::type_name::<T>();
    let variants: BTreeSet<String> = variant_names::<T>()
        .into_iter()
        .filter(|name| !except.contains(name))
        .map(String::from)
        .collect();
    assert_eq!(
        samples, variants,
        "the {what} samples must cover every variant of {what}, and no other: add a sample"
    );
}

/// Every variant of every enum the web client sees has a sample (`Relay` is left out: the
/// web client's type has no place for it).
#[test]
fn every_variant_has_a_sample() {
    let server: Vec<Value> = server_msgs().iter().map(server_msg_json).collect();
    let client: Vec<Value> = client_msgs().iter().filter_map(client_msg_json).collect();
    let of_type = |ty: &str| -> Vec<&Value> { server.iter().filter(|v| v["type"] == ty).collect() };
    assert_covers::<ServerMsg>(names_of(&server, None), &[]);
    assert_covers::<ClientMsg>(names_of(&client, None), &["Relay"]);
    assert_covers::<ErrorCode>(names_of(of_type("Error"), Some("code")), &[]);
    assert_covers::<EntityKind>(names_of(of_type("EntityAppeared"), Some("kind")), &[]);
    assert_covers::<ChatKind>(names_of(of_type("ChatLine"), Some("kind")), &[]);
    let snaps: Vec<Value> = snapshots()
        .iter()
        .map(|(d, _)| server_datagram_json(d))
        .collect();
    assert_covers::<ServerDatagram>(names_of(&snaps, None), &[]);
    let inputs: Vec<Value> = inputs().iter().map(client_datagram_json).collect();
    assert_covers::<ClientDatagram>(names_of(&inputs, None), &[]);
}

#[test]
fn the_typescript_codec_reads_and_writes_what_rust_does() {
    let server = named(server_msgs(), server_msg_json);
    let client: Vec<(String, ClientMsg, Value)> = named(
        client_msgs()
            .into_iter()
            .filter(|m| client_msg_json(m).is_some())
            .collect(),
        |m| client_msg_json(m).expect("not a Relay"),
    );
    let datagrams = named(inputs(), client_datagram_json);
    let snaps = named(snapshots(), |(d, _)| server_datagram_json(d));

    let snap_datagrams: Vec<(String, ServerDatagram)> = snaps
        .iter()
        .map(|(name, (d, _), _)| (name.clone(), d.clone()))
        .collect();
    let garbage = garbage(&server, &snap_datagrams);
    let accepted: Vec<&str> = garbage
        .iter()
        .filter(|g| !g.rust_rejects())
        .map(|g| g.name.as_str())
        .collect();
    assert!(
        accepted.is_empty(),
        "Rust accepts garbage cases: {accepted:?}"
    );

    let cases = json!({
        "server_msgs": server.iter().map(|(name, msg, value)| {
            json!({ "name": name, "value": value, "bytes": payload(msg), "frame": framed(msg) })
        }).collect::<Vec<_>>(),
        "server_datagrams": snaps.iter().map(|(name, (datagram, updates), value)| {
            let ServerDatagram::Snapshot { origin, entities, .. } = datagram;
            assert_eq!(snapshot::decode_updates(*origin, entities).as_ref(), Ok(updates));
            json!({
                "name": name,
                "value": value,
                "bytes": payload(datagram),
                "updates": updates.iter().map(update_json).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "client_msgs": client.iter().map(|(name, msg, value)| {
            json!({ "name": name, "value": value, "bytes": payload(msg), "frame": framed(msg) })
        }).collect::<Vec<_>>(),
        "client_datagrams": datagrams.iter().map(|(name, datagram, value)| {
            json!({ "name": name, "value": value, "bytes": payload(datagram) })
        }).collect::<Vec<_>>(),
        "garbage": garbage.iter().map(Garbage::json).collect::<Vec<_>>(),
    });

    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web_codec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creates the cases directory");
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_vec_pretty(&cases).expect("serializes"),
    )
    .expect("writes cases.json");

    let started = Instant::now();
    let out = run_typescript(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the TypeScript codec disagrees with Rust's ({}; cases in {}):\n{stderr}\n{stdout}",
        out.status,
        dir.display()
    );
    eprintln!(
        "node test/run.mjs took {:.2?}: {}",
        started.elapsed(),
        stdout.trim()
    );

    // What TypeScript encoded, decoded by Rust.
    let from_ts: Value = serde_json::from_slice(
        &std::fs::read(dir.join("from_ts.json")).expect("the TypeScript side wrote from_ts.json"),
    )
    .expect("from_ts.json is JSON");
    let mut failures = Vec::new();
    for (name, msg, _) in &client {
        if let Err(e) = from_typescript(&from_ts["client_msgs"][name], msg, MAX_CONTROL_FRAME) {
            failures.push(format!("ClientMsg {name}: {e}"));
        }
    }
    for (name, datagram, _) in &datagrams {
        if let Err(e) = from_typescript(&from_ts["client_datagrams"][name], datagram, MAX_DATAGRAM)
        {
            failures.push(format!("ClientDatagram {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "Rust does not read what the TypeScript codec wrote (cases in {}):\n{}",
        dir.display(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
