//! Messages between cluster members: router -> shard, shard -> shard and
//! shard -> router. In `tessera up` they travel over the in-process bus; in a
//! cluster the same values travel as bincode frames over QUIC.

use crate::geometry::{Compass, Vec3};
use crate::ids::{EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId};
use crate::msg::{EntityKind, Input};
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where a player's session lives: events for the player go there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    pub router: RouterId,
    pub session: SessionId,
}

/// A script's state as it travels with its entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptState {
    pub script: String,
    /// The script's `state` map, as JSON text.
    pub state_json: String,
    /// Why the script was disabled, if it was.
    pub disabled: Option<String>,
}

/// Everything needed to re-create an entity in another cell: the hand-off
/// and migration payload. Nothing about an entity lives outside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityTransfer {
    pub id: EntityId,
    pub kind: EntityKind,
    pub name: String,
    pub description: String,
    pub pos: Vec3,
    pub vel: Vec3,
    pub yaw: f32,
    pub home: Vec3,
    pub player: Option<PlayerId>,
    pub session: Option<SessionRef>,
    /// The newest movement input, still being applied.
    pub input: Input,
    /// Where a scripted NPC is walking to.
    pub walk_target: Option<Vec3>,
    pub script: Option<ScriptState>,
}

/// A read-only copy of an entity near a border, shown in the neighbour cell.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GhostState {
    pub id: EntityId,
    pub kind: EntityKind,
    pub pos: Vec3,
    pub yaw: f32,
}

/// Messages a shard receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToShard {
    /// A player logs in at `pos` (their saved position or the spawn).
    Join {
        session: SessionRef,
        player: PlayerId,
        name: String,
        pos: Vec3,
    },
    /// Continuous movement intent (QUIC players).
    Input {
        entity: EntityId,
        input: Input,
    },
    /// One step of a few metres (text players); answered with `StepDone`.
    Step {
        entity: EntityId,
        dir: Compass,
    },
    Say {
        entity: EntityId,
        text: String,
    },
    /// The player's session `session` logs out; answered with `Left`.
    /// Only the session the avatar is bound to removes it: after a resume
    /// on another router took the avatar over, a late `Leave` from the old
    /// session is answered with `Left` (the avatar's current position) and
    /// changes nothing.
    Leave {
        entity: EntityId,
        session: SessionRef,
    },
    /// An entity crossing into region `to`, owned by the receiver at
    /// `epoch`.
    Handoff {
        to: RegionId,
        epoch: Epoch,
        entity: EntityTransfer,
    },
    /// The border entities of region `from` that lie within the ghost
    /// margin of region `to`, at `tick`. Replaces the previous set.
    Ghosts {
        from: RegionId,
        to: RegionId,
        tick: u64,
        ghosts: Vec<GhostState>,
    },
    /// A whole region, frozen at a tick boundary by its old owner during a
    /// live migration; the receiver opens it once it owns the region at
    /// `epoch`.
    CellSnapshot {
        region: RegionId,
        epoch: Epoch,
        /// The old owner's last tick of the cell, and when (unix ms).
        frozen_tick: u64,
        frozen_unix_ms: u64,
        entities: Vec<EntityTransfer>,
    },
    /// Speech to deliver to listeners in `regions` within `radius` of
    /// `origin`.
    Speech {
        regions: Vec<RegionId>,
        origin: Vec3,
        radius: f32,
        speaker: EntityId,
        name: String,
        text: String,
        /// An emote (`Mira waves.`) rather than speech.
        emote: bool,
    },
}

/// What happened to a player, sent to their session's router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PlayerEvent {
    Joined {
        entity: EntityId,
        pos: Vec3,
        region: RegionId,
        shard: ShardId,
    },
    /// The player's entity is now owned by `shard` (hand-off): route its
    /// traffic there.
    OwnerChanged {
        region: RegionId,
        shard: ShardId,
    },
    /// A step's result, sent after any hand-off it caused: `region` and
    /// `shard` say where the entity is simulated now.
    StepDone {
        pos: Vec3,
        blocked: bool,
        region: RegionId,
        shard: ShardId,
    },
    Heard {
        speaker: EntityId,
        name: String,
        text: String,
        emote: bool,
    },
    /// The session's logout is done: the entity was removed at `pos`; or,
    /// for a session that no longer controls it (another router resumed
    /// the player), it stays in the world at `pos`.
    Left {
        pos: Vec3,
    },
    Error {
        message: String,
    },
    /// A line from the chat service. Routers make these from what the chat
    /// service delivers; shards never send them.
    Chat {
        kind: crate::msg::ChatKind,
        from: String,
        to: Option<String>,
        text: String,
        at_unix_ms: u64,
    },
    /// An operator kicked the player (from the chat service; shards never
    /// send it): the router ends the session.
    Kicked {
        by: String,
        reason: String,
    },
    /// The session's event queue is full (routers only; never on the bus):
    /// the router ends the session rather than hold events without limit.
    Lagged,
    /// A new connection resumed this player's session (routers only; never
    /// on the bus): this connection ends, the session goes on there.
    Replaced,
}

/// One entity as routers see it, for interest management and text views.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewEntity {
    pub id: EntityId,
    pub kind: EntityKind,
    pub name: Arc<str>,
    pub pos: Vec3,
    pub vel: Vec3,
    pub yaw: f32,
    /// Newest input applied (players), for client reconciliation.
    pub ack_input: u32,
}

/// The state of one region (a whole cell or a part of a split one) at one
/// tick, published to routers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellFrame {
    pub region: RegionId,
    pub shard: ShardId,
    pub epoch: Epoch,
    pub tick: u64,
    pub entities: Vec<ViewEntity>,
}

/// Messages a router receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToRouter {
    Player {
        session: SessionId,
        event: PlayerEvent,
    },
    Frame(Arc<CellFrame>),
    /// Save this player's position (`player/<id>`): the router that held the player's
    /// session is gone, so a shard asks a live router to keep where the avatar stands
    /// (when it goes linkdead, and when it is removed; docs/protocol.md, "Linkdead").
    SavePlayer {
        player: PlayerId,
        pos: Vec3,
    },
}

/// The first frame of every cluster stream in format 2 and later (format 1 streams have
/// none): which format the stream's messages use, and which link they come from. Messages
/// that follow are numbered `first_seq`, `first_seq + 1`, ... in the order they are written;
/// a link that reconnects starts its next stream at the message it was writing, so a
/// receiver that already delivered that number drops it (docs/protocol.md, "Cluster
/// streams").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub format: u16,
    /// Random, new for every link a sender opens to a receiver.
    pub link: u64,
    pub first_seq: u64,
}

/// What travels on a cluster link: a message and its addressee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    Shard { to: ShardId, msg: ToShard },
    Router { to: RouterId, msg: ToRouter },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, MAX_CLUSTER_FRAME};

    #[test]
    fn cluster_messages_round_trip_through_the_codec() {
        let transfer = EntityTransfer {
            id: EntityId(9),
            kind: EntityKind::Npc,
            name: "Mira".into(),
            description: "A baker.".into(),
            pos: Vec3::new(1.0, 0.0, 2.0),
            vel: Vec3::ZERO,
            yaw: 0.5,
            home: Vec3::new(1.0, 0.0, 2.0),
            player: None,
            session: Some(SessionRef {
                router: RouterId("r1".into()),
                session: SessionId(3),
            }),
            input: Input::default(),
            walk_target: Some(Vec3::new(4.0, 0.0, 4.0)),
            script: Some(ScriptState {
                script: "greeter".into(),
                state_json: "{\"greeted\":2}".into(),
                disabled: None,
            }),
        };
        let msgs = vec![
            ToShard::Handoff {
                to: "0,-1/2".parse().unwrap(),
                epoch: Epoch(4),
                entity: transfer,
            },
            ToShard::Step {
                entity: EntityId(1),
                dir: Compass::East,
            },
            ToShard::Leave {
                entity: EntityId(1),
                session: SessionRef {
                    router: RouterId("r2".into()),
                    session: SessionId(8),
                },
            },
            ToShard::Speech {
                regions: vec![RegionId::cell(crate::CellId::new(0, 0))],
                origin: Vec3::ZERO,
                radius: 30.0,
                speaker: EntityId(1),
                name: "Ann".into(),
                text: "hi".into(),
                emote: false,
            },
        ];
        for m in msgs {
            let bytes = encode(&m).unwrap();
            assert_eq!(decode::<ToShard>(&bytes, MAX_CLUSTER_FRAME).unwrap(), m);
        }
        let frame = ToRouter::Frame(Arc::new(CellFrame {
            region: "1,1/3/0".parse().unwrap(),
            shard: ShardId::new("shard-1"),
            epoch: Epoch(1),
            tick: 99,
            entities: vec![ViewEntity {
                id: EntityId(1),
                kind: EntityKind::Player,
                name: "Ann".into(),
                pos: Vec3::ZERO,
                vel: Vec3::ZERO,
                yaw: 0.0,
                ack_input: 7,
            }],
        }));
        let bytes = encode(&frame).unwrap();
        assert_eq!(
            decode::<ToRouter>(&bytes, MAX_CLUSTER_FRAME).unwrap(),
            frame
        );
    }
}
