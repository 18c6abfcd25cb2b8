//! Writes the committed seed corpus, `fuzz/corpus/<target>/`: a handful of
//! valid inputs per fuzz target, encoded by the real codec, so the fuzzer
//! starts from messages the decoders accept and mutates from there.
//!
//! Run from `fuzz/` after a change to a wire message:
//! `cargo run --example seed_corpus` (then commit what changed). The files
//! are named after what they hold; they are small (a few KB in all).

use std::path::Path;
use std::sync::Arc;
use tessera_proto::cluster::{
    CellFrame, EntityTransfer, Envelope, GhostState, PlayerEvent, ScriptState, SessionRef,
    ToRouter, ToShard, ViewEntity,
};
use tessera_proto::frame::{encode_frame, MAX_CLUSTER_FRAME, MAX_CONTROL_FRAME};
use tessera_proto::msg::{ClientDatagram, ClientMsg, EntityKind, Input};
use tessera_proto::{
    CellId, Compass, EntityId, Epoch, PlayerId, RegionId, RouterId, SessionId, ShardId, Vec3,
};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    client_control_frames(&corpus.join("client_control_frames"));
    client_datagram(&corpus.join("client_datagram"));
    cluster_message(&corpus.join("cluster_message"));
    telnet_input(&corpus.join("telnet_input"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// A control stream: length-prefixed `ClientMsg` frames, as a client sends
/// them; and one bare message (the target also decodes its whole input).
fn client_control_frames(dir: &Path) {
    let frames = |msgs: &[ClientMsg]| -> Vec<u8> {
        msgs.iter()
            .flat_map(|m| encode_frame(m, MAX_CONTROL_FRAME).expect("encode a frame"))
            .collect()
    };
    let hello = ClientMsg::Hello {
        version: tessera_proto::PROTOCOL_VERSION,
        client: "seed/1".into(),
    };
    let create = ClientMsg::Create {
        name: "Ann".into(),
        password: "correct-horse".into(),
    };
    let connect = ClientMsg::Connect {
        name: "Ann".into(),
        password: "correct-horse".into(),
    };
    write(dir, "hello-create", &frames(&[hello.clone(), create]));
    write(
        dir,
        "hello-connect-play-logout",
        &frames(&[
            hello.clone(),
            connect,
            ClientMsg::Command {
                line: "look".into(),
            },
            ClientMsg::Say {
                text: "hello, Mira".into(),
            },
            ClientMsg::Ping { nonce: 42 },
            ClientMsg::Logout,
        ]),
    );
    write(
        dir,
        "hello-resume",
        &frames(&[
            hello.clone(),
            ClientMsg::Resume {
                token: "v1.p7.s3.deadbeef".into(),
            },
        ]),
    );
    write(
        dir,
        "hello-relay",
        &frames(&[
            hello,
            ClientMsg::Relay {
                client: "192.0.2.7:50123".parse().expect("an address"),
            },
        ]),
    );
    write(
        dir,
        "bare-command",
        &tessera_proto::encode(&ClientMsg::Command {
            line: "where".into(),
        })
        .expect("encode"),
    );
}

/// Input datagrams: still, walking, clamped, and non-finite values the
/// router must sanitise.
fn client_datagram(dir: &Path) {
    let inputs = [
        ("still", Input::default()),
        (
            "walk-north-jump",
            Input {
                seq: 7,
                move_x: 0.0,
                move_z: -1.0,
                yaw: 0.0,
                jump: true,
            },
        ),
        (
            "too-fast",
            Input {
                seq: u32::MAX,
                move_x: 3.0,
                move_z: 4.0,
                yaw: 1.5,
                jump: false,
            },
        ),
        (
            "non-finite",
            Input {
                seq: 1,
                move_x: f32::NAN,
                move_z: f32::INFINITY,
                yaw: f32::NEG_INFINITY,
                jump: false,
            },
        ),
    ];
    for (name, input) in inputs {
        let bytes = tessera_proto::encode(&ClientDatagram::Input(input)).expect("encode");
        write(dir, name, &bytes);
    }
}

/// Cluster traffic: a bus stream of `Envelope` frames for a shard and for
/// a router, and bare `ToShard` / `ToRouter` messages.
fn cluster_message(dir: &Path) {
    let session = SessionRef {
        router: RouterId("router-1".into()),
        session: SessionId(3),
    };
    let region = RegionId::cell(CellId::new(-1, 0));
    let transfer = EntityTransfer {
        id: EntityId(EntityId::NPC_BIT | 9),
        kind: EntityKind::Npc,
        name: "Mira".into(),
        description: "A baker.".into(),
        pos: Vec3::new(1.0, 0.0, 2.0),
        vel: Vec3::ZERO,
        yaw: 0.5,
        home: Vec3::new(1.0, 0.0, 2.0),
        player: None,
        session: None,
        input: Input::default(),
        walk_target: Some(Vec3::new(4.0, 0.0, 4.0)),
        script: Some(ScriptState {
            script: "greeter".into(),
            state_json: "{\"greeted\":2}".into(),
            disabled: None,
        }),
    };
    let to_shard = vec![
        ToShard::Join {
            session: session.clone(),
            player: PlayerId(7),
            name: "Ann".into(),
            pos: Vec3::new(-10.0, 0.0, 5.0),
        },
        ToShard::Input {
            entity: EntityId(7),
            input: Input {
                seq: 3,
                move_x: 0.5,
                move_z: 0.0,
                yaw: 0.0,
                jump: false,
            },
        },
        ToShard::Step {
            entity: EntityId(7),
            dir: Compass::East,
        },
        ToShard::Say {
            entity: EntityId(7),
            text: "hello".into(),
        },
        ToShard::Leave {
            entity: EntityId(7),
            session: session.clone(),
        },
        ToShard::Handoff {
            to: "0,-1/2".parse().expect("a region"),
            epoch: Epoch(4),
            entity: transfer.clone(),
        },
        ToShard::Ghosts {
            from: region,
            to: RegionId::cell(CellId::new(0, 0)),
            tick: 99,
            ghosts: vec![GhostState {
                id: EntityId(7),
                kind: EntityKind::Player,
                pos: Vec3::new(-0.5, 0.0, 5.0),
                yaw: 1.0,
            }],
        },
        ToShard::CellSnapshot {
            region,
            epoch: Epoch(2),
            frozen_tick: 1200,
            frozen_unix_ms: 1_700_000_000_000,
            entities: vec![transfer],
        },
        ToShard::Speech {
            regions: vec![region],
            origin: Vec3::ZERO,
            radius: 30.0,
            speaker: EntityId(7),
            name: "Ann".into(),
            text: "hi".into(),
            emote: false,
        },
    ];
    let to_router = [
        ToRouter::Player {
            session: SessionId(3),
            event: PlayerEvent::Joined {
                entity: EntityId(7),
                pos: Vec3::new(-10.0, 0.0, 5.0),
                region,
                shard: ShardId::new("shard-1"),
            },
        },
        ToRouter::Player {
            session: SessionId(3),
            event: PlayerEvent::Heard {
                speaker: EntityId(EntityId::NPC_BIT | 9),
                name: "Mira".into(),
                text: "Welcome!".into(),
                emote: false,
            },
        },
        ToRouter::Frame(Arc::new(CellFrame {
            region: "1,1/3/0".parse().expect("a region"),
            shard: ShardId::new("shard-2"),
            epoch: Epoch(1),
            tick: 99,
            entities: vec![ViewEntity {
                id: EntityId(7),
                kind: EntityKind::Player,
                name: "Ann".into(),
                pos: Vec3::ZERO,
                vel: Vec3::ZERO,
                yaw: 0.0,
                ack_input: 3,
            }],
        })),
        ToRouter::SavePlayer {
            player: PlayerId(7),
            pos: Vec3::new(3.0, 0.0, -2.0),
        },
    ];
    let stream = |envelopes: Vec<Envelope>| -> Vec<u8> {
        envelopes
            .iter()
            .flat_map(|e| encode_frame(e, MAX_CLUSTER_FRAME).expect("encode a frame"))
            .collect()
    };
    let shard = ShardId::new("shard-1");
    write(
        dir,
        "stream-to-shard",
        &stream(
            to_shard
                .iter()
                .map(|m| Envelope::Shard {
                    to: shard.clone(),
                    msg: m.clone(),
                })
                .collect(),
        ),
    );
    write(
        dir,
        "stream-to-router",
        &stream(
            to_router
                .iter()
                .map(|m| Envelope::Router {
                    to: RouterId("router-1".into()),
                    msg: m.clone(),
                })
                .collect(),
        ),
    );
    for (i, m) in to_shard.iter().enumerate() {
        write(
            dir,
            &format!("to-shard-{i}"),
            &tessera_proto::encode(m).expect("encode"),
        );
    }
    for (i, m) in to_router.iter().enumerate() {
        write(
            dir,
            &format!("to-router-{i}"),
            &tessera_proto::encode(m).expect("encode"),
        );
    }
}

const IAC: u8 = 255;
const WILL: u8 = 251;
const WONT: u8 = 252;
const DO: u8 = 253;
const SB: u8 = 250;
const SE: u8 = 240;
const AYT: u8 = 246;
const IP: u8 = 244;
const TTYPE: u8 = 24;
const NAWS: u8 = 31;

/// What telnet clients send: a login and commands (CR LF, LF, CR NUL line
/// ends), the client's side of option negotiation (NAWS, TTYPE), escaped
/// IAC bytes, UTF-8 text, backspaces, AYT and IP, and a line over the
/// target's 256-byte limit.
fn telnet_input(dir: &Path) {
    write(
        dir,
        "login-and-play",
        b"create Ann correct-horse\r\nlook\r\nn\r\nsay hello Mira\r\nwho\r\nwhere\r\nquit\r\n",
    );
    write(dir, "line-ends", b"connect Ann pw\nlook\r\0e\r\nmap\n");
    let mut negotiation = vec![IAC, WILL, NAWS, IAC, SB, NAWS, 0, 120, 0, 40, IAC, SE];
    negotiation.extend_from_slice(&[IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]);
    negotiation.extend_from_slice(b"XTERM-256COLOR");
    negotiation.extend_from_slice(&[IAC, SE, IAC, DO, 3, IAC, WONT, 1]);
    negotiation.extend_from_slice(b"look\r\n");
    write(dir, "negotiation", &negotiation);
    let mut escaped = b"say a".to_vec();
    escaped.extend_from_slice(&[IAC, IAC]);
    escaped.extend_from_slice(b"b\r\nsay caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x99\x82\r\n");
    escaped.extend_from_slice(b"say typo\x08\x08\x08\x08ok\r\n");
    escaped.extend_from_slice(&[IAC, AYT]);
    escaped.extend_from_slice(b"half a line");
    escaped.extend_from_slice(&[IAC, IP]);
    escaped.extend_from_slice(b"tell Bob hi\r\n");
    write(dir, "escapes-utf8-controls", &escaped);
    let mut long = b"say ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 300));
    long.extend_from_slice(b"\r\nlook\r\n");
    write(dir, "line-too-long", &long);
}
