//! In-process multi-shard tests: two real `Shard`s and the in-process bus,
//! driven tick by tick from the test (no threads, no sockets), so hand-offs,
//! ghosts and speech across a shard border are checked deterministically.

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{placement, Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::msg::Input;
use tessera_proto::world::parse_world;
use tessera_proto::{
    CellId, Compass, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3,
};
use tessera_shard::{Shard, ShardConfig};
use tokio::sync::mpsc::Receiver;

const WORLD: &str = r#"
name = "Two"
cell_size = 32
spawn = [-4, 0, 4]
[extent]
min = [-2, -1]
max = [1, 0]
"#;

struct Cluster {
    shards: Vec<Shard>,
    inboxes: Vec<crossbeam_channel::Receiver<ToShard>>,
    router: Receiver<ToRouter>,
    events: Vec<(SessionId, PlayerEvent)>,
    bus: LocalBus,
    map: CellMap,
}

impl Cluster {
    fn new() -> Cluster {
        let world = Arc::new(parse_world(WORLD).expect("world"));
        let ids = vec![ShardId::new("a"), ShardId::new("b")];
        let cells: Vec<CellId> = world.extent.cells().collect();
        let plan = placement::stripes(&cells, &ids);
        let map = CellMap::fixed(plan.into_iter().map(|(c, s)| {
            (
                c,
                CellOwner {
                    owner: s,
                    epoch: Epoch(1),
                },
            )
        }));
        let bus = LocalBus::new();
        let router = bus.add_router(RouterId("r".into()));
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let mut shards = Vec::new();
        let mut inboxes = Vec::new();
        for id in &ids {
            inboxes.push(bus.add_shard(id.clone()));
            shards.push(
                Shard::new(
                    ShardConfig::new(id.clone()),
                    world.clone(),
                    dyn_bus.clone(),
                    map.clone(),
                )
                .expect("shard"),
            );
        }
        Cluster {
            shards,
            inboxes,
            router,
            events: Vec::new(),
            bus,
            map,
        }
    }

    /// Delivers every queued message, then ticks both shards once.
    fn tick(&mut self) {
        self.deliver();
        for s in &mut self.shards {
            s.step(Instant::now());
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        loop {
            let mut any = false;
            for (i, inbox) in self.inboxes.iter().enumerate() {
                while let Ok(msg) = inbox.try_recv() {
                    self.shards[i].handle(msg, Instant::now());
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        while let Ok(msg) = self.router.try_recv() {
            if let ToRouter::Player { session, event } = msg {
                self.events.push((session, event));
            }
        }
    }

    fn send(&mut self, shard: usize, msg: ToShard) {
        self.shards[shard].handle(msg, Instant::now());
        self.deliver();
    }

    fn total(&self) -> usize {
        self.shards.iter().map(|s| s.entity_count()).sum()
    }

    fn owner_of(&self, id: EntityId) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.cells().any(|c| c.contains(id)))
    }
}

fn join(c: &mut Cluster, shard: usize, player: u64, name: &str, pos: Vec3) -> EntityId {
    c.send(
        shard,
        ToShard::Join {
            session: SessionRef {
                router: RouterId("r".into()),
                session: SessionId(player),
            },
            player: PlayerId(player),
            name: name.into(),
            pos,
        },
    );
    EntityId::for_player(PlayerId(player))
}

#[test]
fn a_walking_player_crosses_the_shard_border_exactly_once() {
    let mut c = Cluster::new();
    // Shard "a" owns x < 0, shard "b" x >= 0.
    let ann = join(&mut c, 0, 1, "Ann", Vec3::new(-4.0, 0.0, -8.0));
    assert_eq!(c.total(), 1);
    assert_eq!(c.owner_of(ann), Some(0));
    let input = Input {
        seq: 1,
        move_x: 1.0,
        move_z: 0.0,
        yaw: 0.0,
        jump: false,
    };
    c.send(0, ToShard::Input { entity: ann, input });
    let mut crossed_at = None;
    for tick in 0..60 {
        c.tick();
        assert_eq!(c.total(), 1, "entity lost or duplicated at tick {tick}");
        if crossed_at.is_none() && c.owner_of(ann) == Some(1) {
            crossed_at = Some(tick);
        }
    }
    assert!(crossed_at.is_some(), "never reached shard b");
    assert_eq!(c.owner_of(ann), Some(1));
    // The router was told where the player went.
    assert!(c.events.iter().any(|(s, e)| *s == SessionId(1)
        && matches!(e, PlayerEvent::OwnerChanged { shard, .. } if shard.0 == "b")));
    // Inputs sent to the old shard are forwarded, not lost: stop her.
    let stop = Input {
        seq: 2,
        ..Input::default()
    };
    c.send(
        0,
        ToShard::Input {
            entity: ann,
            input: stop,
        },
    );
    c.tick();
    let x1 = c.shards[1]
        .cells()
        .find_map(|cell| cell.position(ann))
        .unwrap()
        .x;
    for _ in 0..10 {
        c.tick();
    }
    let x2 = c.shards[1]
        .cells()
        .find_map(|cell| cell.position(ann))
        .unwrap()
        .x;
    assert!(
        (x2 - x1).abs() < 0.01,
        "the forwarded stop input was applied"
    );
}

#[test]
fn pacing_on_the_border_does_not_bounce_between_shards() {
    let mut c = Cluster::new();
    let bob = join(&mut c, 0, 2, "Bob", Vec3::new(-0.5, 0.0, -8.0));
    let mut owners = Vec::new();
    for i in 0..40 {
        // Half a metre each way across x = 0: inside the 1 m hysteresis.
        let dir = if i % 2 == 0 {
            Compass::East
        } else {
            Compass::West
        };
        let shard = c.owner_of(bob).unwrap();
        c.shards[shard].handle(ToShard::Step { entity: bob, dir }, Instant::now());
        c.tick();
        owners.push(c.owner_of(bob).unwrap());
        assert_eq!(c.total(), 1);
    }
    // 3 m steps from -0.5: east reaches 2.5 (past the hysteresis), west
    // -0.5 (inside it): one hand-off east, then it stays.
    let changes = owners.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(changes <= 1, "owner flapped: {owners:?}");
}

#[test]
fn ghosts_and_speech_cross_the_shard_border() {
    let mut c = Cluster::new();
    let ann = join(&mut c, 0, 1, "Ann", Vec3::new(-0.5, 0.0, -8.0));
    let _bob = join(&mut c, 1, 2, "Bob", Vec3::new(2.0, 0.0, -8.0));
    for _ in 0..3 {
        c.tick();
    }
    // Each sees the other as a ghost in its own border cell.
    let ghosts = |s: &Shard| s.cells().map(|cell| cell.ghost_count()).sum::<usize>();
    assert_eq!(ghosts(&c.shards[0]), 1);
    assert_eq!(ghosts(&c.shards[1]), 1);
    c.events.clear();
    c.send(
        0,
        ToShard::Say {
            entity: ann,
            text: "hello across".into(),
        },
    );
    let heard: Vec<_> = c
        .events
        .iter()
        .filter_map(|(s, e)| match e {
            PlayerEvent::Heard { name, text, .. } => Some((*s, name.clone(), text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        heard,
        vec![(SessionId(2), "Ann".to_string(), "hello across".to_string())],
        "only Bob hears Ann, once"
    );
    // Ghosts collide: one 3 m step west from x = 2 would end at x = -1,
    // but Ann's ghost (at -0.5, radius 0.4, in Bob's shard) stops Bob at
    // about x = 0.3.
    let bob = EntityId::for_player(PlayerId(2));
    c.shards[1].handle(
        ToShard::Step {
            entity: bob,
            dir: Compass::West,
        },
        Instant::now(),
    );
    c.tick();
    let bob_x = c
        .shards
        .iter()
        .find_map(|s| s.cells().find_map(|cell| cell.position(bob)))
        .unwrap()
        .x;
    assert!(bob_x > 0.0, "Bob walked through Ann's ghost: x = {bob_x}");
}

#[test]
fn a_hand_off_delivered_twice_creates_one_entity() {
    let mut c = Cluster::new();
    let ann = join(&mut c, 0, 7, "Ann", Vec3::new(-4.0, 0.0, -8.0));
    let transfer = c.shards[0]
        .cells()
        .find(|cell| cell.contains(ann))
        .and_then(|cell| cell.export(ann))
        .expect("Ann is on shard a");
    // Pretend shard a handed her over and the bus delivered it twice, the
    // second time after she had walked on into the next cell.
    let handoff = |x| ToShard::Handoff {
        to: CellId::new(x, -1).into(),
        epoch: Epoch(1),
        entity: transfer.clone(),
    };
    c.send(1, handoff(0));
    c.send(1, handoff(1));
    let on_b = c.shards[1]
        .cells()
        .filter(|cell| cell.contains(ann))
        .count();
    assert_eq!(on_b, 1, "one copy on shard b");
}

/// Before a due tick the shard handles what waited in its inbox (`pace`):
/// everything, oldest first, while the slice lasts, and at least one
/// message when the slice is already over.
#[test]
fn messages_that_waited_are_handled_before_the_tick() {
    let mut c = Cluster::new();
    let ann = join(&mut c, 0, 1, "Ann", Vec3::new(-20.0, 0.0, -8.0));
    c.events.clear();
    let bus_inbox = c.inboxes[0].clone();
    // Steps queued as a router would queue them while a tick ran.
    let steps = 300;
    let bus = c.bus.clone();
    for _ in 0..steps {
        bus.to_shard(
            &ShardId::new("a"),
            ToShard::Step {
                entity: ann,
                dir: Compass::North,
            },
        )
        .unwrap();
    }
    let over = Instant::now();
    assert_eq!(
        c.shards[0].handle_waiting(&bus_inbox, over),
        1,
        "one, when the slice is over"
    );
    let far = Instant::now() + std::time::Duration::from_secs(3600);
    assert_eq!(c.shards[0].handle_waiting(&bus_inbox, far), steps - 1);
    assert!(bus_inbox.is_empty());
    c.deliver();
    let answered = c
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PlayerEvent::StepDone { .. }))
        .count();
    assert_eq!(answered, steps);
}

/// Shard b leaves the cluster (killed, or frozen and revoked) and the coordinator gives its
/// cells to a.
fn b_leaves(c: &mut Cluster) {
    c.bus.remove_shard(&ShardId::new("b"));
    let cells: Vec<CellId> = c
        .map
        .cells_of(&ShardId::new("b"))
        .into_iter()
        .map(|(cell, _)| cell)
        .collect();
    assert!(!cells.is_empty());
    for cell in cells {
        c.map.set(
            cell,
            CellOwner {
                owner: ShardId::new("a"),
                epoch: Epoch(2),
            },
        );
    }
}

/// Ann, on a, one step west of the border, steps east: a hands her to b.
fn step_ann_across(c: &mut Cluster) -> EntityId {
    let ann = join(c, 0, 1, "Ann", Vec3::new(-0.5, 0.0, -8.0));
    c.shards[0].handle(
        ToShard::Step {
            entity: ann,
            dir: Compass::East,
        },
        Instant::now(),
    );
    c.shards[0].step(Instant::now());
    assert_eq!(c.owner_of(ann), None, "handed off, not yet taken");
    ann
}

#[test]
fn a_hand_off_to_a_shard_that_dies_before_taking_it_goes_where_the_cell_went() {
    let mut c = Cluster::new();
    let ann = step_ann_across(&mut c);
    // b is frozen: what was queued for it is never read, and it is revoked.
    let lost = c.inboxes[1].try_iter().count();
    assert!(lost >= 1, "the hand-off was queued for b");
    b_leaves(&mut c);
    for _ in 0..3 {
        while let Ok(msg) = c.inboxes[0].try_recv() {
            c.shards[0].handle(msg, Instant::now());
        }
        c.shards[0].step(Instant::now());
    }
    assert_eq!(c.owner_of(ann), Some(0), "Ann is in no shard");
    assert_eq!(c.shards[0].entity_count(), 1);
    // Her router follows her to a.
    while let Ok(msg) = c.router.try_recv() {
        if let ToRouter::Player { session, event } = msg {
            c.events.push((session, event));
        }
    }
    assert!(
        c.events.iter().any(|(s, e)| *s == SessionId(1)
            && matches!(e, PlayerEvent::OwnerChanged { shard, .. } if shard.0 == "a")),
        "{:?}",
        c.events
    );
}

#[test]
fn a_hand_off_the_target_took_is_not_sent_again_when_the_target_dies_later() {
    let mut c = Cluster::new();
    let ann = step_ann_across(&mut c);
    // b takes her and sends its border ghosts (Ann among them) to a.
    for _ in 0..2 {
        c.tick();
    }
    assert_eq!(c.owner_of(ann), Some(1));
    b_leaves(&mut c);
    for _ in 0..3 {
        while let Ok(msg) = c.inboxes[0].try_recv() {
            c.shards[0].handle(msg, Instant::now());
        }
        c.shards[0].step(Instant::now());
    }
    // She was b's: its checkpoint brings her back where its cells reopen. A copy from a
    // would be a second Ann once that checkpoint is restored.
    assert!(
        !c.shards[0].cells().any(|cell| cell.contains(ann)),
        "a sent a hand-off again that had arrived"
    );
}
