//! Golden files of today's formats (issue 16, item 5): every cluster message as the bus
//! frames it, a cell checkpoint as stored, and the JSON records kept in etcd and in
//! persistence, each encoded once into `tests/golden/<name>` and committed. The test decodes
//! every file into the value it was made from and encodes that value back to the same bytes,
//! so a change that breaks (or silently changes) a stored or wire format fails CI, before a
//! rolling update meets it. Compatibility rules: docs/protocol.md, "Compatibility".
//!
//! To add a case, add it to `cases()` and run
//! `TESSERA_GOLDEN_WRITE=1 cargo test --test golden`, which writes the missing files only.
//! A file is never rewritten: a format change is a new case (or a new format version with its
//! own files) while the old files must keep decoding.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_coordinator::cellmap::{tree_json, CellOwner, CellTree};
use tessera_coordinator::membership::{CellLoad, RouterRegistration, ShardLoad, ShardRegistration};
use tessera_coordinator::migration::{Migration, MigrationState};
use tessera_proto::cluster::{
    CellFrame, EntityTransfer, Envelope, GhostState, PlayerEvent, ScriptState, SessionRef,
    StreamHeader, ToRouter, ToShard, ViewEntity,
};
use tessera_proto::frame::{self, MAX_CLUSTER_FRAME};
use tessera_proto::msg::{EntityKind, Input};
use tessera_proto::{
    CellId, Compass, EntityId, Epoch, PlayerId, RegionId, RouterId, SessionId, ShardId, Vec3,
};

/// Makes a golden file's bytes.
type Encode = Box<dyn Fn() -> Vec<u8>>;
/// Checks bytes against the value they must decode to.
type Decodes = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One golden file: how to make its bytes, and how to check bytes against the value.
struct Case {
    name: String,
    encode: Encode,
    decodes: Decodes,
}

/// A value the cluster bus or a store carries as bincode (`tessera_proto::frame`).
fn bincode<T>(name: &str, value: T) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone + 'static,
{
    let v = value.clone();
    Case {
        name: format!("{name}.bin"),
        encode: Box::new(move || frame::encode(&v).expect("encodes")),
        decodes: Box::new(move |bytes| {
            let got: T = frame::decode(bytes, MAX_CLUSTER_FRAME).map_err(|e| e.to_string())?;
            (got == value)
                .then_some(())
                .ok_or_else(|| format!("decoded {got:?}, expected {value:?}"))
        }),
    }
}

/// A JSON record (etcd values, player records).
fn json<T>(name: &str, value: T) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone + 'static,
{
    let v = value.clone();
    Case {
        name: format!("{name}.json"),
        encode: Box::new(move || serde_json::to_vec(&v).expect("encodes")),
        decodes: Box::new(move |bytes| {
            let got: T = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            (got == value)
                .then_some(())
                .ok_or_else(|| format!("decoded {got:?}, expected {value:?}"))
        }),
    }
}

fn session() -> SessionRef {
    SessionRef {
        router: RouterId("router-1".into()),
        session: SessionId(7),
    }
}

fn region() -> RegionId {
    CellId::new(-1, 2).into()
}

fn shard() -> ShardId {
    ShardId::new("shard-2")
}

fn transfer() -> EntityTransfer {
    EntityTransfer {
        id: EntityId(0x8000_0000_0000_0011),
        kind: EntityKind::Npc,
        name: "Mira".into(),
        description: "A baker.".into(),
        pos: Vec3::new(-12.5, 0.0, 70.25),
        vel: Vec3::new(0.5, 0.0, -0.25),
        yaw: 1.5,
        home: Vec3::new(-10.0, 0.0, 72.0),
        player: None,
        session: None,
        input: Input {
            seq: 3,
            move_x: 0.0,
            move_z: -1.0,
            yaw: 0.25,
            jump: false,
        },
        walk_target: Some(Vec3::new(-8.0, 0.0, 75.0)),
        script: Some(ScriptState {
            script: "greeter".into(),
            state_json: r#"{"greeted":2}"#.into(),
            disabled: None,
        }),
    }
}

fn to_shard(name: &str, msg: ToShard) -> Case {
    bincode(
        &format!("cluster/to_shard_{name}"),
        Envelope::Shard { to: shard(), msg },
    )
}

fn to_router(name: &str, msg: ToRouter) -> Case {
    bincode(
        &format!("cluster/to_router_{name}"),
        Envelope::Router {
            to: RouterId("router-1".into()),
            msg,
        },
    )
}

fn player_event(name: &str, event: PlayerEvent) -> Case {
    to_router(
        &format!("player_{name}"),
        ToRouter::Player {
            session: SessionId(7),
            event,
        },
    )
}

fn cases() -> Vec<Case> {
    let player = EntityId(42);
    let mut cases = vec![
        to_shard(
            "join",
            ToShard::Join {
                session: session(),
                player: PlayerId(42),
                name: "Ann".into(),
                pos: Vec3::new(3.0, 0.0, -4.0),
            },
        ),
        to_shard(
            "input",
            ToShard::Input {
                entity: player,
                input: Input {
                    seq: 9,
                    move_x: 0.5,
                    move_z: -0.5,
                    yaw: 3.0,
                    jump: true,
                },
            },
        ),
        to_shard(
            "step",
            ToShard::Step {
                entity: player,
                dir: Compass::NorthEast,
            },
        ),
        to_shard(
            "say",
            ToShard::Say {
                entity: player,
                text: "hello Mira".into(),
            },
        ),
        to_shard(
            "leave",
            ToShard::Leave {
                entity: player,
                session: session(),
            },
        ),
        to_shard(
            "handoff",
            ToShard::Handoff {
                to: region(),
                epoch: Epoch(4),
                entity: transfer(),
            },
        ),
        to_shard(
            "ghosts",
            ToShard::Ghosts {
                from: region(),
                to: CellId::new(0, 2).into(),
                tick: 1234,
                ghosts: vec![GhostState {
                    id: player,
                    kind: EntityKind::Player,
                    pos: Vec3::new(-1.0, 0.0, 70.0),
                    yaw: 0.0,
                }],
            },
        ),
        to_shard(
            "cell_snapshot",
            ToShard::CellSnapshot {
                region: "-1,2/1/3".parse().expect("a region"),
                epoch: Epoch(5),
                frozen_tick: 999,
                frozen_unix_ms: 1_796_000_000_000,
                entities: vec![transfer()],
            },
        ),
        to_shard(
            "speech",
            ToShard::Speech {
                regions: vec![region(), CellId::new(0, 2).into()],
                origin: Vec3::new(-2.0, 0.0, 70.0),
                radius: 30.0,
                speaker: player,
                name: "Ann".into(),
                text: "waves".into(),
                emote: true,
            },
        ),
        player_event(
            "joined",
            PlayerEvent::Joined {
                entity: player,
                pos: Vec3::new(3.0, 0.0, -4.0),
                region: region(),
                shard: shard(),
            },
        ),
        player_event(
            "owner_changed",
            PlayerEvent::OwnerChanged {
                region: region(),
                shard: shard(),
            },
        ),
        player_event(
            "step_done",
            PlayerEvent::StepDone {
                pos: Vec3::new(3.0, 0.0, -7.0),
                blocked: false,
                region: region(),
                shard: shard(),
            },
        ),
        player_event(
            "heard",
            PlayerEvent::Heard {
                speaker: EntityId(0x8000_0000_0000_0011),
                name: "Mira".into(),
                text: "You again, Ann?".into(),
                emote: false,
            },
        ),
        player_event(
            "left",
            PlayerEvent::Left {
                pos: Vec3::new(1.0, 0.0, 1.0),
            },
        ),
        player_event(
            "error",
            PlayerEvent::Error {
                message: "cell 0,0 is not being simulated right now".into(),
            },
        ),
        to_router(
            "frame",
            ToRouter::Frame(Arc::new(CellFrame {
                region: region(),
                shard: shard(),
                epoch: Epoch(4),
                tick: 1234,
                entities: vec![ViewEntity {
                    id: player,
                    kind: EntityKind::Player,
                    name: "Ann".into(),
                    pos: Vec3::new(-3.0, 0.0, 66.0),
                    vel: Vec3::ZERO,
                    yaw: 0.5,
                    ack_input: 9,
                }],
            })),
        ),
        to_router(
            "save_player",
            ToRouter::SavePlayer {
                player: PlayerId(42),
                pos: Vec3::new(-3.0, 0.0, 66.0),
            },
        ),
    ];
    // A cell checkpoint as shards store it (versioned: 0xFF, format 2, then bincode).
    // Format 2's stream header (format 1 streams have none).
    cases.push(bincode(
        "cluster/stream_header_v2",
        StreamHeader {
            format: 2,
            link: 0x5eed_0000_0000_0001,
            first_seq: 300,
        },
    ));
    let checkpoint = tessera_shard::checkpoint::CellCheckpoint {
        region: region(),
        epoch: Epoch(4),
        shard: shard(),
        tick: 1234,
        saved_unix_ms: 1_796_000_000_000,
        entities: vec![transfer()],
    };
    let cp = checkpoint.clone();
    cases.push(Case {
        name: "store/checkpoint.bin".into(),
        encode: Box::new(move || tessera_shard::checkpoint::encode(&cp).expect("encodes")),
        decodes: Box::new(move |bytes| {
            let got = tessera_shard::checkpoint::decode(bytes)?;
            (got == checkpoint)
                .then_some(())
                .ok_or_else(|| format!("decoded {got:?}"))
        }),
    });
    cases.push(json(
        "store/player_record",
        tessera_router::PlayerRecord {
            pos: Vec3::new(-3.0, 0.0, 66.0),
            last_seen_unix: 1_796_000_000,
        },
    ));
    // etcd values.
    cases.push(json(
        "etcd/shard_registration",
        ShardRegistration {
            addr: "10.0.0.5:7000".parse().unwrap(),
            node: "opi-3".into(),
            capacity: 2,
            version: "0.1.0".into(),
        },
    ));
    cases.push(json(
        "etcd/router_registration",
        RouterRegistration {
            addr: "10.0.0.6:7000".parse().unwrap(),
            telnet: "0.0.0.0:4000".parse().unwrap(),
            quic: "0.0.0.0:4433".parse().unwrap(),
            version: "0.1.0".into(),
            draining: true,
        },
    ));
    cases.push(json(
        "etcd/shard_load",
        ShardLoad {
            tick: 1234,
            tick_p50_ms: 1.5,
            tick_p99_ms: 4.25,
            tick_budget_ms: 33.333,
            entities: 21,
            players: 1,
            last_migration_stall_ms: Some(17),
            cells: vec![CellLoad {
                cell: CellId::new(-1, 2),
                region: Some("-1,2/1/3".into()),
                epoch: Epoch(4),
                entities: 7,
                players: 1,
                ghosts: 2,
                tick_ms: 0.5,
                tick_p99_ms: 1.25,
            }],
        },
    ));
    cases.push(json(
        "etcd/migration",
        Migration {
            from: ShardId::new("shard-1"),
            to: shard(),
            epoch: Epoch(5),
            state: MigrationState::Requested,
            requested_unix_ms: 1_796_000_000_000,
            authority: None,
            cancelled_unix_ms: None,
        },
    ));
    let owner = |s: &str, e: u64| CellOwner {
        owner: ShardId::new(s),
        epoch: Epoch(e),
    };
    let mut tree = CellTree::whole(owner("shard-2", 3));
    tree.split(
        CellId::new(-1, 2).into(),
        [
            owner("shard-1", 4),
            owner("shard-2", 3),
            owner("shard-2", 3),
            owner("shard-1", 4),
        ],
    )
    .expect("a whole cell splits");
    let expected = tree.clone();
    let bytes = tree_json(&tree);
    cases.push(Case {
        name: "etcd/cell_tree.json".into(),
        encode: Box::new(move || bytes.clone()),
        decodes: Box::new(move |b| {
            let got = tessera_coordinator::cellmap::parse_tree("/tessera/cells/-1,2", b)
                .map_err(|e| e.to_string())?;
            (got == expected)
                .then_some(())
                .ok_or_else(|| format!("decoded {got:?}"))
        }),
    });
    cases
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn todays_formats_decode_from_and_encode_to_the_golden_files() {
    let write = std::env::var_os("TESSERA_GOLDEN_WRITE").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let path = dir().join(&case.name);
        let fresh = (case.encode)();
        let stored = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) if write => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &fresh).unwrap();
                eprintln!("wrote {}", path.display());
                continue;
            }
            Err(e) => {
                failures.push(format!(
                    "{}: no golden file ({e}); write it with TESSERA_GOLDEN_WRITE=1 cargo test --test golden",
                    case.name
                ));
                continue;
            }
        };
        if let Err(e) = (case.decodes)(&stored) {
            failures.push(format!(
                "{}: today's code no longer reads the stored format: {e}",
                case.name
            ));
        }
        if fresh != stored {
            failures.push(format!(
                "{}: today's code writes different bytes than the stored format ({} bytes, was {}): \
                 a format change must keep reading the old one and be introduced as a new \
                 format version (docs/protocol.md, \"Compatibility\")",
                case.name,
                fresh.len(),
                stored.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every cluster message kind has a golden file: a new variant without one fails here.
#[test]
fn every_cluster_message_kind_has_a_golden_file() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    let to_shard = [
        "join",
        "input",
        "step",
        "say",
        "leave",
        "handoff",
        "ghosts",
        "cell_snapshot",
        "speech",
    ];
    for n in to_shard {
        assert!(names.contains(&format!("cluster/to_shard_{n}.bin")), "{n}");
    }
    // Exhaustive on purpose: a new ToShard or ToRouter variant stops compiling here until
    // it gets a golden case above.
    let kind = |m: &ToShard| match m {
        ToShard::Join { .. }
        | ToShard::Input { .. }
        | ToShard::Step { .. }
        | ToShard::Say { .. }
        | ToShard::Leave { .. }
        | ToShard::Handoff { .. }
        | ToShard::Ghosts { .. }
        | ToShard::CellSnapshot { .. }
        | ToShard::Speech { .. } => (),
    };
    let _ = kind;
    let router_kind = |m: &ToRouter| match m {
        ToRouter::Player { .. } | ToRouter::Frame(_) | ToRouter::SavePlayer { .. } => (),
    };
    let _ = router_kind;
    for n in ["player_joined", "frame", "save_player"] {
        assert!(names.contains(&format!("cluster/to_router_{n}.bin")), "{n}");
    }
}
