//! A router re-joins a player on a cell's new owner as soon as its own copy
//! of the cell map says so; the new owner's copy may lag behind, or it may
//! not have opened the cell yet. The join must not be lost either way.

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::world::parse_world;
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig};

const WORLD: &str = r#"
name = "Race"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

fn join(player: u64) -> ToShard {
    ToShard::Join {
        session: SessionRef {
            router: RouterId("r".into()),
            session: SessionId(player),
        },
        player: PlayerId(player),
        name: format!("P{player}"),
        pos: Vec3::new(32.0, 0.0, 32.0),
    }
}

fn setup() -> (Shard, CellMap, tokio::sync::mpsc::Receiver<ToRouter>) {
    let world = Arc::new(parse_world(WORLD).unwrap());
    let (dead, b) = (ShardId::new("dead"), ShardId::new("b"));
    let owner = |s: &ShardId, e| CellOwner {
        owner: s.clone(),
        epoch: Epoch(e),
    };
    // Cell 0,0 belonged to a shard that died; b owns 1,0.
    let map = CellMap::fixed([
        (CellId::new(0, 0), owner(&dead, 1)),
        (CellId::new(1, 0), owner(&b, 1)),
    ]);
    let bus = LocalBus::new();
    let _inbox = bus.add_shard(b.clone());
    let router = bus.add_router(RouterId("r".into()));
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let mut shard = Shard::new(ShardConfig::new(b), world, dyn_bus, map.clone()).unwrap();
    shard.step(Instant::now());
    (shard, map, router)
}

fn joined(router: &mut tokio::sync::mpsc::Receiver<ToRouter>) -> Vec<PlayerEvent> {
    let mut events = Vec::new();
    while let Ok(msg) = router.try_recv() {
        if let ToRouter::Player { event, .. } = msg {
            events.push(event);
        }
    }
    events
}

fn in_world(shard: &Shard, player: u64) -> bool {
    let id = EntityId::for_player(PlayerId(player));
    shard.cells().any(|c| c.contains(id))
}

#[test]
fn a_join_that_arrives_before_the_shard_reconciled_its_map_is_served() {
    let (mut shard, map, mut router) = setup();
    // The coordinator gives 0,0 to b; b's map has it, b has not ticked yet.
    map.set(
        CellId::new(0, 0),
        CellOwner {
            owner: ShardId::new("b"),
            epoch: Epoch(2),
        },
    );
    shard.handle(join(1), Instant::now());
    assert!(in_world(&shard, 1), "{:?}", joined(&mut router));
    assert!(joined(&mut router)
        .iter()
        .any(|e| matches!(e, PlayerEvent::Joined { .. })));
}

#[test]
fn a_join_that_arrives_before_the_shards_map_caught_up_waits_for_it() {
    let (mut shard, map, mut router) = setup();
    // b's map still names the dead shard: the join must wait, not be
    // forwarded into the void.
    shard.handle(join(2), Instant::now());
    shard.step(Instant::now());
    assert!(!in_world(&shard, 2));
    map.set(
        CellId::new(0, 0),
        CellOwner {
            owner: ShardId::new("b"),
            epoch: Epoch(2),
        },
    );
    shard.step(Instant::now());
    assert!(in_world(&shard, 2), "{:?}", joined(&mut router));
}

#[test]
fn a_crowd_joining_at_one_spot_is_placed_side_by_side() {
    let (mut shard, _map, mut router) = setup();
    // 1,0 is b's: the crowd arrives there between two ticks, all at once.
    let at = Vec3::new(96.0, 0.0, 32.0);
    for p in 100..130u64 {
        let ToShard::Join {
            session,
            player,
            name,
            ..
        } = join(p)
        else {
            unreachable!()
        };
        shard.handle(
            ToShard::Join {
                session,
                player,
                name,
                pos: at,
            },
            Instant::now(),
        );
    }
    let places: Vec<Vec3> = joined(&mut router)
        .into_iter()
        .filter_map(|e| match e {
            PlayerEvent::Joined { pos, .. } => Some(pos),
            _ => None,
        })
        .collect();
    assert_eq!(places.len(), 30);
    assert_eq!(places[0], at, "the first one gets the spot it asked for");
    for (i, a) in places.iter().enumerate() {
        assert!(a.distance_xz(at) < 20.0, "{a:?} is far from the spot");
        for b in &places[i + 1..] {
            assert!(a.distance_xz(*b) >= 0.99, "{a:?} and {b:?} overlap");
        }
    }
}

#[test]
fn a_join_whose_cell_never_gets_a_live_owner_is_refused_after_the_patience() {
    let (mut shard, _map, mut router) = setup();
    let t0 = Instant::now();
    shard.handle(join(3), t0);
    shard.step(t0 + tessera_shard::sim::JOIN_PATIENCE);
    assert!(
        !joined(&mut router)
            .iter()
            .any(|e| matches!(e, PlayerEvent::Error { .. })),
        "still within the patience: the join waits"
    );
    shard.step(t0 + tessera_shard::sim::JOIN_PATIENCE + std::time::Duration::from_millis(1));
    let events = joined(&mut router);
    assert!(
        events.iter().any(
            |e| matches!(e, PlayerEvent::Error { message } if message.contains("not being simulated"))
        ),
        "{events:?}"
    );
    assert!(!in_world(&shard, 3));
    // Refused once: it no longer waits.
    shard.step(t0 + tessera_shard::sim::JOIN_PATIENCE * 2);
    assert!(joined(&mut router).is_empty());
}
