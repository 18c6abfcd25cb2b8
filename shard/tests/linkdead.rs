//! Linkdead avatars (issue 16, item 3): when the router holding a player's session is gone,
//! the avatar stays where it stands for the linkdead time (60 s by default), its position is
//! saved through a live router, a player who comes back within it finds the avatar where it
//! stood, and after it the avatar is removed (and its position saved again). A real `Shard`
//! on the in-process bus, driven from the test with a clock it sets.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::world::parse_world;
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3};
use tessera_shard::{Shard, ShardConfig, DEFAULT_LINKDEAD};
use tokio::sync::mpsc::Receiver;

const WORLD: &str = r#"
name = "Linkdead"
cell_size = 32
spawn = [4, 0, 4]
[extent]
min = [0, 0]
max = [1, 0]
"#;

fn session(router: &str, session: u64) -> SessionRef {
    SessionRef {
        router: RouterId(router.into()),
        session: SessionId(session),
    }
}

fn join(session: &SessionRef, player: u64, pos: Vec3) -> ToShard {
    ToShard::Join {
        session: session.clone(),
        player: PlayerId(player),
        name: format!("p{player}"),
        pos,
    }
}

/// What a router's inbox got: saves asked of it, and events of its sessions.
fn drain(rx: &mut Receiver<ToRouter>) -> (Vec<(PlayerId, Vec3)>, Vec<PlayerEvent>) {
    let (mut saves, mut events) = (Vec::new(), Vec::new());
    while let Ok(msg) = rx.try_recv() {
        match msg {
            ToRouter::SavePlayer { player, pos } => saves.push((player, pos)),
            ToRouter::Player { event, .. } => events.push(event),
            ToRouter::Frame(_) => {}
        }
    }
    (saves, events)
}

fn has(shard: &Shard, player: u64) -> bool {
    let id = EntityId::for_player(PlayerId(player));
    shard.cells().any(|c| c.contains(id))
}

#[test]
fn a_linkdead_avatar_waits_for_its_player_then_is_removed_and_saved() {
    let world = Arc::new(parse_world(WORLD).expect("world"));
    let a = ShardId::new("a");
    let map = CellMap::fixed(world.extent.cells().map(|c: CellId| {
        (
            c,
            CellOwner {
                owner: a.clone(),
                epoch: Epoch(1),
            },
        )
    }));
    let bus = LocalBus::new();
    let _r1 = bus.add_router(RouterId("r1".into()));
    let mut r2 = bus.add_router(RouterId("r2".into()));
    let _inbox = bus.add_shard(a.clone());
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let mut shard = Shard::new(ShardConfig::new(a), world, dyn_bus, map).unwrap();
    let t0 = Instant::now();
    let at = |s: f32| t0 + Duration::from_secs_f32(s);
    shard.step(at(0.0));
    // Ann (1) and Bob (2) play through r1, Cy (3) through r2.
    let (ann_pos, bob_pos) = (Vec3::new(5.0, 0.0, 5.0), Vec3::new(40.0, 0.0, 6.0));
    shard.handle(join(&session("r1", 1), 1, ann_pos), at(0.0));
    shard.handle(join(&session("r1", 2), 2, bob_pos), at(0.0));
    shard.handle(
        join(&session("r2", 1), 3, Vec3::new(10.0, 0.0, 10.0)),
        at(0.0),
    );
    shard.step(at(0.1));
    assert!(has(&shard, 1) && has(&shard, 2) && has(&shard, 3));
    drain(&mut r2);

    // r1 crashes: Ann and Bob go linkdead; r2 is asked to save where they stand.
    bus.remove_router(&RouterId("r1".into()));
    shard.step(at(1.5));
    let (saves, _) = drain(&mut r2);
    let saved: Vec<PlayerId> = saves.iter().map(|(p, _)| *p).collect();
    assert_eq!(saved, [PlayerId(1), PlayerId(2)], "{saves:?}");
    assert!(
        saves[0].1.distance(ann_pos) < 1.5,
        "Ann saved at {:?}",
        saves[0].1
    );

    // Thirty seconds on, both avatars still stand; Ann comes back through r2 and finds
    // hers where it stood.
    shard.step(at(30.0));
    assert!(has(&shard, 1) && has(&shard, 2));
    shard.handle(
        join(&session("r2", 7), 1, Vec3::new(-100.0, 0.0, 0.0)),
        at(30.0),
    );
    let (_, events) = drain(&mut r2);
    let back = events.iter().find_map(|e| match e {
        PlayerEvent::Joined { pos, .. } => Some(*pos),
        _ => None,
    });
    assert!(
        back.is_some_and(|p| p.distance(ann_pos) < 1.5),
        "Ann's avatar was not where it stood: {events:?}"
    );

    // After the linkdead time Bob's avatar goes, and its position is saved again; Ann
    // (back) and Cy (whose router lives) stay.
    shard.step(at(1.5 + DEFAULT_LINKDEAD.as_secs_f32() - 2.0));
    assert!(has(&shard, 2), "removed before the linkdead time");
    shard.step(at(1.5 + DEFAULT_LINKDEAD.as_secs_f32() + 1.0));
    assert!(
        !has(&shard, 2),
        "Bob's linkdead avatar is still in the world"
    );
    assert!(has(&shard, 1) && has(&shard, 3));
    let (saves, _) = drain(&mut r2);
    assert_eq!(saves.len(), 1, "{saves:?}");
    assert_eq!(saves[0].0, PlayerId(2));
    assert!(saves[0].1.distance(bob_pos) < 1.5, "{saves:?}");
    shard.step(at(600.0));
    assert!(
        has(&shard, 1) && has(&shard, 3),
        "players of a live router removed"
    );
}
