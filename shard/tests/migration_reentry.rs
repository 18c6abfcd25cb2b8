//! Two cells migrating into one shard, whose map flips them one after the other while the
//! shard is opening the first: opening it hands the messages that waited for it on, and
//! handling them catches up with the newer map, which opens the second cell. The first
//! reconcile, still working from the older map, must not then drop the second cell as
//! "assigned elsewhere" (a rolling restart once lost a migrated cell's players that way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{Bus, BusError, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{CellFrame, EntityTransfer, SessionRef, ToRouter, ToShard};
use tessera_proto::msg::{EntityKind, Input};
use tessera_proto::world::parse_world;
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Reentry"
cell_size = 32
spawn = [80, 0, 16]
[extent]
min = [0, 0]
max = [2, 0]
"#;

/// The in-process bus, which flips cell B to the target in the map the first time the
/// target tells a router anything (it does so while opening cell A).
struct FlippingBus {
    inner: LocalBus,
    map: CellMap,
    flip: (CellId, CellOwner),
    flipped: AtomicBool,
}

impl Bus for FlippingBus {
    fn to_shard(&self, shard: &ShardId, msg: ToShard) -> Result<(), BusError> {
        self.inner.to_shard(shard, msg)
    }
    fn to_router(&self, router: &RouterId, msg: ToRouter) -> Result<(), BusError> {
        if !self.flipped.swap(true, Ordering::SeqCst) {
            self.map.set(self.flip.0, self.flip.1.clone());
        }
        self.inner.to_router(router, msg)
    }
    fn publish_frame(&self, frame: Arc<CellFrame>) {
        self.inner.publish_frame(frame)
    }
    fn has_shard(&self, shard: &ShardId) -> bool {
        self.inner.has_shard(shard)
    }
    fn router_incarnation(&self, router: &RouterId) -> Option<i64> {
        self.inner.router_incarnation(router)
    }
    fn routers(&self) -> Vec<RouterId> {
        self.inner.routers()
    }
}

fn entity(id: u64, pos: Vec3, player: Option<u64>) -> EntityTransfer {
    EntityTransfer {
        id: EntityId(id),
        kind: if player.is_some() {
            EntityKind::Player
        } else {
            EntityKind::Npc
        },
        name: format!("e{id}"),
        description: String::new(),
        pos,
        vel: Vec3::ZERO,
        yaw: 0.0,
        home: pos,
        player: player.map(PlayerId),
        session: player.map(|p| SessionRef {
            router: RouterId("r1".into()),
            session: SessionId(p),
        }),
        input: Input::default(),
        walk_target: None,
        script: None,
    }
}

#[test]
fn a_cell_opened_while_another_opens_is_not_dropped_by_the_older_map() {
    let world = Arc::new(parse_world(WORLD).unwrap());
    let (src, dst) = (ShardId::new("src"), ShardId::new("dst"));
    let (a, b, c) = (CellId::new(0, 0), CellId::new(1, 0), CellId::new(2, 0));
    let owner = |s: &ShardId, e: u64| CellOwner {
        owner: s.clone(),
        epoch: Epoch(e),
    };
    let map = CellMap::fixed([
        (a, owner(&src, 1)),
        (b, owner(&src, 1)),
        (c, owner(&dst, 1)),
    ]);
    let local = LocalBus::new();
    let _router = local.add_router(RouterId("r1".into()));
    let _src_inbox = local.add_shard(src.clone());
    let _dst_inbox = local.add_shard(dst.clone());
    let bus: Arc<dyn Bus> = Arc::new(FlippingBus {
        inner: local,
        map: map.clone(),
        flip: (b, owner(&dst, 2)),
        flipped: AtomicBool::new(false),
    });
    let (tx, _notices) = tokio::sync::mpsc::unbounded_channel();
    let mut shard = Shard::new(ShardConfig::new(dst.clone()), world, bus, map.clone())
        .unwrap()
        .with_migrations(Default::default(), tx);
    let now = Instant::now();
    shard.step(now);
    // Both cells' snapshots arrive: A with a player (opening it tells her router), B with
    // three NPCs.
    let snapshot = |cell: CellId, entities| ToShard::CellSnapshot {
        region: cell.into(),
        epoch: Epoch(2),
        frozen_tick: 10,
        frozen_unix_ms: 0,
        entities,
    };
    shard.handle(
        snapshot(a, vec![entity(1, Vec3::new(10.0, 0.0, 10.0), Some(1))]),
        now,
    );
    shard.handle(
        snapshot(
            b,
            (0..3)
                .map(|i| {
                    entity(
                        0x8000_0000_0000_0100 + i,
                        Vec3::new(40.0 + i as f32, 0.0, 10.0),
                        None,
                    )
                })
                .collect(),
        ),
        now,
    );
    // Bob walks into A from a neighbour meanwhile: his hand-off waits for A to open.
    shard.handle(
        ToShard::Handoff {
            to: a.into(),
            epoch: Epoch(2),
            entity: entity(2, Vec3::new(12.0, 0.0, 12.0), Some(2)),
        },
        now,
    );
    // The coordinator flips A; B follows while A opens.
    map.set(a, owner(&dst, 2));
    shard.step(now);
    shard.step(now);
    let open: Vec<CellId> = shard.cells().map(|c| c.id.cell_id()).collect();
    assert!(open.contains(&a) && open.contains(&b), "open: {open:?}");
    let in_b = shard
        .cells()
        .find(|cell| cell.id.cell_id() == b)
        .map(|cell| cell.entity_count());
    assert_eq!(in_b, Some(3), "cell B's migrated entities");
    let counts: Vec<(CellId, usize)> = shard
        .cells()
        .map(|c| (c.id.cell_id(), c.entity_count()))
        .collect();
    assert_eq!(
        shard.entity_count(),
        1 + 1 + 3,
        "Ann, Bob and B's three NPCs: {counts:?}"
    );
}
