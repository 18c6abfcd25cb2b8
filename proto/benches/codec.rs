//! `cargo bench -p tessera-proto --bench codec`: encode and decode
//! throughput of the hot messages (issue 5), through the codec every role
//! uses (`frame::encode`/`decode`: bincode 2, standard config, size limit).
//!
//! Datagrams are encoded bare (a QUIC datagram is the message), control and
//! cluster messages with their 4-byte length prefix (`encode_frame`), as the
//! streams carry them. Decodes use the limit the receiver uses, except that
//! a snapshot of 50 or 100 entities is over `MAX_DATAGRAM` (routers split a
//! view over several datagrams), so those decode with their own length as
//! the limit. A snapshot's encode and decode include packing its updates
//! (`tessera_proto::snapshot`). Divan reports bytes/s and messages/s; the
//! message sizes are printed first.

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use std::sync::Arc;
use tessera_proto::cluster::{CellFrame, Envelope, ToRouter, ViewEntity};
use tessera_proto::frame::{self, MAX_CLUSTER_FRAME, MAX_CONTROL_FRAME, MAX_DATAGRAM};
use tessera_proto::msg::{ClientDatagram, ClientMsg, EntityKind, Input, ServerDatagram, ServerMsg};
use tessera_proto::snapshot::{self, EntityUpdate};
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RegionId, RouterId, ShardId, Vec3};

#[derive(Clone, Copy, Debug)]
enum Msg {
    Snapshot10,
    Snapshot50,
    Snapshot100,
    Input,
    Hello,
    Say,
    Ping,
    EntityAppeared,
    Chat,
    CellFrame200,
}

const ALL: [Msg; 10] = [
    Msg::Snapshot10,
    Msg::Snapshot50,
    Msg::Snapshot100,
    Msg::Input,
    Msg::Hello,
    Msg::Say,
    Msg::Ping,
    Msg::EntityAppeared,
    Msg::Chat,
    Msg::CellFrame200,
];

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Msg::Snapshot10 => "ServerDatagram::Snapshot/10",
            Msg::Snapshot50 => "ServerDatagram::Snapshot/50",
            Msg::Snapshot100 => "ServerDatagram::Snapshot/100",
            Msg::Input => "ClientDatagram::Input",
            Msg::Hello => "ClientMsg::Hello",
            Msg::Say => "ClientMsg::Say",
            Msg::Ping => "ClientMsg::Ping",
            Msg::EntityAppeared => "ServerMsg::EntityAppeared",
            Msg::Chat => "ServerMsg::Chat",
            Msg::CellFrame200 => "Envelope(ToRouter::Frame)/200",
        };
        f.write_str(name)
    }
}

/// An NPC id (the top bit set: the longest varint, 9 bytes).
fn npc(i: u64) -> EntityId {
    EntityId(EntityId::NPC_BIT | i)
}

fn pos(i: u64) -> Vec3 {
    Vec3::new(i as f32 * 0.37 - 20.0, 0.0, 13.5 - i as f32 * 0.21)
}

/// A snapshot's moving entities, seen from the origin.
fn snapshot(n: u64) -> Vec<EntityUpdate> {
    (0..n)
        .map(|i| EntityUpdate::quantize(i as u16, pos(i), Vec3::new(1.0, 0.0, -0.5), 1.25))
        .collect()
}

const ORIGIN: [i32; 3] = [-1000, 0, 500];

fn cell_frame(n: u64) -> Envelope {
    let name: Arc<str> = Arc::from("Rambler");
    Envelope::Router {
        to: RouterId("router-1".into()),
        msg: ToRouter::Frame(Arc::new(CellFrame {
            region: RegionId::cell(CellId::new(-1, 0)),
            shard: ShardId::new("shard-1"),
            epoch: Epoch(3),
            tick: 123_456,
            entities: (0..n)
                .map(|i| ViewEntity {
                    id: npc(i),
                    kind: EntityKind::Npc,
                    name: Arc::from(format!("{name} {}", i + 1)),
                    pos: pos(i),
                    vel: Vec3::new(1.0, 0.0, -0.5),
                    yaw: 1.25,
                    ack_input: 0,
                })
                .collect(),
        })),
    }
}

/// A built message, of whichever type it is.
enum Built {
    ToClient(Vec<EntityUpdate>),
    FromClient(ClientDatagram),
    Control(ClientMsg),
    ControlReply(ServerMsg),
    Cluster(Envelope),
}

impl Msg {
    fn build(self) -> Built {
        match self {
            Msg::Snapshot10 => Built::ToClient(snapshot(10)),
            Msg::Snapshot50 => Built::ToClient(snapshot(50)),
            Msg::Snapshot100 => Built::ToClient(snapshot(100)),
            Msg::Input => Built::FromClient(ClientDatagram::Input(Input {
                seq: 77_001,
                move_x: 0.7,
                move_z: -0.7,
                yaw: 2.2,
                jump: false,
            })),
            Msg::Hello => Built::Control(ClientMsg::Hello {
                version: tessera_proto::PROTOCOL_VERSION,
                client: "tessera-client 0.1.0".into(),
            }),
            Msg::Say => Built::Control(ClientMsg::Say {
                text: "Has anyone seen the miller's cat? It ran off to the quarry.".into(),
            }),
            Msg::Ping => Built::Control(ClientMsg::Ping { nonce: 1 << 40 }),
            Msg::EntityAppeared => Built::ControlReply(ServerMsg::EntityAppeared {
                entity: EntityId::for_player(PlayerId(42)),
                slot: 3,
                kind: EntityKind::Player,
                name: "Ann".into(),
                pos: pos(7),
            }),
            Msg::Chat => Built::ControlReply(ServerMsg::Chat {
                from: "Mira".into(),
                entity: Some(npc(3)),
                text: "Fresh bread! Fresh bread, still warm from the oven!".into(),
                emote: false,
            }),
            Msg::CellFrame200 => Built::Cluster(cell_frame(200)),
        }
    }
}

impl Built {
    /// The message's bytes as they travel.
    fn encode(&self) -> Vec<u8> {
        let bytes = match self {
            Built::ToClient(updates) => frame::encode(&ServerDatagram::Snapshot {
                tick: 123_456,
                ack_input: 4_321,
                origin: ORIGIN,
                entities: snapshot::encode_updates(ORIGIN, updates),
            }),
            Built::FromClient(m) => frame::encode(m),
            Built::Control(m) => frame::encode_frame(m, MAX_CONTROL_FRAME),
            Built::ControlReply(m) => frame::encode_frame(m, MAX_CONTROL_FRAME),
            Built::Cluster(m) => frame::encode_frame(m, MAX_CLUSTER_FRAME),
        };
        bytes.expect("encodes")
    }

    /// Decodes what [`Built::encode`] made (past the length prefix of
    /// framed messages), as the receiver does.
    fn decode(&self, bytes: &[u8]) -> bool {
        match self {
            // Over one datagram: see the module docs.
            Built::ToClient(_) => {
                match frame::decode::<ServerDatagram>(bytes, bytes.len().max(MAX_DATAGRAM)) {
                    Ok(ServerDatagram::Snapshot {
                        origin, entities, ..
                    }) => snapshot::decode_updates(origin, &entities).is_ok(),
                    Err(_) => false,
                }
            }
            Built::FromClient(_) => frame::decode::<ClientDatagram>(bytes, MAX_DATAGRAM).is_ok(),
            Built::Control(_) => frame::decode::<ClientMsg>(&bytes[4..], MAX_CONTROL_FRAME).is_ok(),
            Built::ControlReply(_) => {
                frame::decode::<ServerMsg>(&bytes[4..], MAX_CONTROL_FRAME).is_ok()
            }
            Built::Cluster(_) => frame::decode::<Envelope>(&bytes[4..], MAX_CLUSTER_FRAME).is_ok(),
        }
    }
}

fn main() {
    println!("message sizes as they travel (framed ones with their 4-byte prefix):");
    for m in ALL {
        println!("  {m}: {} bytes", m.build().encode().len());
    }
    divan::main();
}

#[divan::bench(args = ALL)]
fn encode(bencher: Bencher, m: Msg) {
    let msg = m.build();
    let len = msg.encode().len();
    bencher
        .counter(BytesCount::new(len))
        .counter(ItemsCount::new(1usize))
        .bench(|| msg.encode());
}

#[divan::bench(args = ALL)]
fn decode(bencher: Bencher, m: Msg) {
    let msg = m.build();
    let bytes = msg.encode();
    assert!(msg.decode(&bytes), "{m} decodes");
    bencher
        .counter(BytesCount::new(bytes.len()))
        .counter(ItemsCount::new(1usize))
        .bench(|| msg.decode(divan::black_box(&bytes)));
}
