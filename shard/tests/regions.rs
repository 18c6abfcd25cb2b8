//! Shards simulating regions of a split cell (docs/regions.md), driven tick
//! by tick in process: hand-offs between regions of different sizes and
//! shards, ghosts and speech across region borders, exact entity counts.
//!
//! The map: cell 0,0 split, its north-west and south-west quadrants on
//! shard a, north-east on b, and the south-east quadrant split again (its
//! quadrants alternating a, b, a, b); cell 1,0 whole on a.
//!
//! ```text
//!  z=0  +--------+--------+----------------+
//!       | 0,0/0  | 0,0/1  |                |
//!       |   a    |   b    |                |
//!  z=32 +--------+---+----+      1,0       |
//!       | 0,0/2  |3/0|3/1 |       a        |
//!       |   a    | a | b  |                |
//!       |        +---+----+                |
//!       |        |3/2|3/3 |                |
//!       |        | a | b  |                |
//!  z=64 +--------+---+----+----------------+
//!      x=0      32  48   64               128
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::migration::{Migration, MigrationBoard, MigrationState};
use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::world::parse_world;
use tessera_proto::{
    CellId, Compass, EntityId, Epoch, PlayerId, RegionId, RegionTree, RouterId, SessionId, ShardId,
    Vec3,
};
use tessera_shard::sim::ShardNotice;
use tessera_shard::{Shard, ShardConfig};
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};

const WORLD: &str = r#"
name = "Quadrants"
cell_size = 64
spawn = [10, 0, 10]
[extent]
min = [0, 0]
max = [1, 0]
"#;

fn region(text: &str) -> RegionId {
    text.parse().expect("region")
}

struct Cluster {
    shards: Vec<Shard>,
    inboxes: Vec<crossbeam_channel::Receiver<ToShard>>,
    router: Receiver<ToRouter>,
    events: Vec<(SessionId, PlayerEvent)>,
    /// What the shards would record in the cluster store (unread: the
    /// tests move the map themselves).
    _notices: Vec<UnboundedReceiver<ShardNotice>>,
}

/// More messages than any test sends: past it, messages bounce between
/// shards (or a shard and itself) without end.
const MESSAGE_LIMIT: usize = 100_000;

fn owner(s: &str, e: u64) -> CellOwner {
    CellOwner {
        owner: ShardId::new(s),
        epoch: Epoch(e),
    }
}

impl Cluster {
    /// The map of the module doc.
    fn new() -> Cluster {
        let (a, b) = (ShardId::new("a"), ShardId::new("b"));
        let owner = |s: &ShardId, e: u64| CellOwner {
            owner: s.clone(),
            epoch: Epoch(e),
        };
        let cell = CellId::new(0, 0);
        let mut tree = RegionTree::whole(owner(&a, 1));
        tree.split(
            RegionId::cell(cell),
            [owner(&a, 2), owner(&b, 2), owner(&a, 2), owner(&a, 2)],
        )
        .unwrap();
        tree.split(
            region("0,0/3"),
            [owner(&a, 3), owner(&b, 3), owner(&a, 3), owner(&b, 3)],
        )
        .unwrap();
        let map = CellMap::fixed([(CellId::new(1, 0), owner(&a, 1))]);
        map.set_tree(cell, tree);
        Cluster::with_map(map)
    }

    /// Shards a and b following `map`.
    fn with_map(map: CellMap) -> Cluster {
        Cluster::with_board(map, None)
    }

    /// Shards a and b following `map`, and migrations on `board` if given.
    fn with_board(map: CellMap, board: Option<MigrationBoard>) -> Cluster {
        let world = Arc::new(parse_world(WORLD).expect("world"));
        let (a, b) = (ShardId::new("a"), ShardId::new("b"));
        let bus = LocalBus::new();
        let router = bus.add_router(RouterId("r".into()));
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let mut shards = Vec::new();
        let mut inboxes = Vec::new();
        let mut notices = Vec::new();
        for id in [a, b] {
            inboxes.push(bus.add_shard(id.clone()));
            let shard = Shard::new(
                ShardConfig::new(id),
                world.clone(),
                dyn_bus.clone(),
                map.clone(),
            )
            .expect("shard");
            shards.push(match &board {
                Some(board) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    notices.push(rx);
                    shard.with_migrations(board.clone(), tx)
                }
                None => shard,
            });
        }
        Cluster {
            shards,
            inboxes,
            router,
            events: Vec::new(),
            _notices: notices,
        }
    }

    fn tick(&mut self) {
        self.deliver();
        for s in &mut self.shards {
            s.step(Instant::now());
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        let mut delivered = 0;
        loop {
            let mut any = false;
            for (i, inbox) in self.inboxes.iter().enumerate() {
                while let Ok(msg) = inbox.try_recv() {
                    self.shards[i].handle(msg, Instant::now());
                    any = true;
                    delivered += 1;
                    assert!(delivered < MESSAGE_LIMIT, "messages bounce without end");
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

    /// Which shard and region hold `id`; panics if more than one does.
    fn where_is(&self, id: EntityId) -> Option<(usize, RegionId)> {
        let found: Vec<(usize, RegionId)> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.cells().filter(|c| c.contains(id)).map(move |c| (i, c.id)))
            .collect();
        assert!(found.len() <= 1, "{id} is in two places: {found:?}");
        found.first().copied()
    }

    fn ghost_in(&self, shard: usize, region: RegionId) -> usize {
        self.shards[shard]
            .cells()
            .find(|c| c.id == region)
            .map(|c| c.ghost_count())
            .unwrap_or(0)
    }
}

fn join(c: &mut Cluster, shard: usize, player: u64, pos: Vec3) -> EntityId {
    c.send(
        shard,
        ToShard::Join {
            session: SessionRef {
                router: RouterId("r".into()),
                session: SessionId(player),
            },
            player: PlayerId(player),
            name: format!("P{player}"),
            pos,
        },
    );
    EntityId::for_player(PlayerId(player))
}

#[test]
fn each_shard_simulates_exactly_its_regions() {
    let c = Cluster::new();
    let ids = |i: usize| -> BTreeSet<String> {
        c.shards[i]
            .cells()
            .map(|cell| cell.id.to_string())
            .collect()
    };
    let want = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        ids(0),
        want(&["0,0/0", "0,0/2", "0,0/3/0", "0,0/3/2", "1,0"])
    );
    assert_eq!(ids(1), want(&["0,0/1", "0,0/3/1", "0,0/3/3"]));
}

/// A text player walks east from the north-west quadrant (a) through the
/// north-east one (b) into the bigger neighbour cell 1,0 (a), then south
/// and back west into the small quadrant 0,0/3/3 (b): one copy at every
/// step, each step answered with the region that holds it.
#[test]
fn a_player_walks_through_regions_of_every_size_and_exists_once() {
    let mut c = Cluster::new();
    let ann = join(&mut c, 0, 1, Vec3::new(10.0, 0.0, 10.0));
    assert_eq!(c.where_is(ann).map(|(_, r)| r), Some(region("0,0/0")));
    let mut visited = Vec::new();
    let mut walk = |c: &mut Cluster, dir: Compass, steps: usize| {
        for _ in 0..steps {
            let (shard, _) = c.where_is(ann).expect("in the world");
            c.events.clear();
            c.send(shard, ToShard::Step { entity: ann, dir });
            c.tick();
            assert_eq!(c.total(), 1, "lost or duplicated");
            let (_, now) = c.where_is(ann).expect("in the world");
            let answered = c.events.iter().find_map(|(_, e)| match e {
                PlayerEvent::StepDone { region, .. } => Some(*region),
                _ => None,
            });
            // A step hands off at once, so its answer names the region the
            // next command must go to.
            assert_eq!(answered, Some(now));
            if visited.last() != Some(&now) {
                visited.push(now);
            }
        }
    };
    walk(&mut c, Compass::East, 27); // x 10 -> 91
    walk(&mut c, Compass::South, 15); // z 10 -> 55
    walk(&mut c, Compass::West, 11); // x 91 -> 58
    let names: Vec<String> = visited.iter().map(|r| r.to_string()).collect();
    assert_eq!(names, vec!["0,0/0", "0,0/1", "1,0", "0,0/3/3"], "{names:?}");
    assert_eq!(c.where_is(ann).map(|(s, _)| s), Some(1));
    // The router heard of every change of shard.
    let owners: Vec<String> = c
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PlayerEvent::OwnerChanged { shard, .. } => Some(shard.0.clone()),
            _ => None,
        })
        .collect();
    assert!(owners.iter().all(|s| s == "b"), "{owners:?}");
}

#[test]
fn ghosts_reach_neighbours_of_any_size_on_either_shard() {
    let mut c = Cluster::new();
    // Near the border of 0,0/0 (a) and 0,0/1 (b).
    join(&mut c, 0, 1, Vec3::new(30.0, 0.0, 10.0));
    // In cell 1,0 (a), 2 m from the small quadrant 0,0/3/3 (b).
    join(&mut c, 0, 2, Vec3::new(66.0, 0.0, 56.0));
    c.tick();
    c.tick();
    assert_eq!(
        c.ghost_in(1, region("0,0/1")),
        1,
        "across the quadrant border"
    );
    assert_eq!(
        c.ghost_in(1, region("0,0/3/3")),
        1,
        "into a smaller neighbour"
    );
    assert_eq!(
        c.ghost_in(0, region("0,0/3/2")),
        0,
        "not a neighbour within reach"
    );
    assert_eq!(c.total(), 2, "ghosts are not entities");
}

#[test]
fn speech_reaches_every_region_within_hearing_range() {
    let mut c = Cluster::new();
    let ann = join(&mut c, 0, 1, Vec3::new(30.0, 0.0, 10.0)); // 0,0/0, a
    join(&mut c, 1, 2, Vec3::new(36.0, 0.0, 12.0)); // 0,0/1, b
    join(&mut c, 0, 3, Vec3::new(36.0, 0.0, 34.0)); // 0,0/3/0, a
    join(&mut c, 1, 4, Vec3::new(52.0, 0.0, 36.0)); // 0,0/3/1, b: ~35 m away
    join(&mut c, 0, 5, Vec3::new(70.0, 0.0, 10.0)); // 1,0: 40 m away
    c.tick();
    c.events.clear();
    c.send(
        0,
        ToShard::Say {
            entity: ann,
            text: "hello regions".into(),
        },
    );
    c.tick();
    let heard: BTreeSet<u64> = c
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PlayerEvent::Heard { text, .. } if text == "hello regions"))
        .map(|(s, _)| s.0)
        .collect();
    // The speaker's router echoes its own words; the shard tells the others.
    assert_eq!(heard, BTreeSet::from([2, 3]));
}

/// Entities in `shard`, by region.
fn census(c: &Cluster, shard: usize) -> Vec<(String, usize)> {
    c.shards[shard]
        .cells()
        .map(|cell| (cell.id.to_string(), cell.entity_count()))
        .collect()
}

/// A crowd of players walking about in one whole cell; the coordinator
/// splits it (all four quadrants to the same shard), then merges it back.
/// Nobody is lost or duplicated, everybody keeps walking, and each ends up
/// in the region that holds them.
#[test]
fn a_cell_splits_and_merges_on_its_shard_while_players_walk() {
    let map = CellMap::fixed([
        (CellId::new(0, 0), owner("a", 1)),
        (CellId::new(1, 0), owner("b", 1)),
    ]);
    let mut c = Cluster::with_map(map.clone());
    let mut players = Vec::new();
    for p in 0..40u64 {
        let pos = Vec3::new(8.0 + (p % 8) as f32 * 6.0, 0.0, 8.0 + (p / 8) as f32 * 10.0);
        let id = join(&mut c, 0, p + 1, pos);
        // Half walk east, half south, slowly.
        let (move_x, move_z) = if p % 2 == 0 { (0.3, 0.0) } else { (0.0, 0.3) };
        c.send(
            0,
            ToShard::Input {
                entity: id,
                input: tessera_proto::msg::Input {
                    seq: 1,
                    move_x,
                    move_z,
                    yaw: 0.0,
                    jump: false,
                },
            },
        );
        players.push(id);
    }
    for _ in 0..5 {
        c.tick();
    }
    assert_eq!(c.total(), 40);
    // Split 0,0: all four quadrants stay on a, at the next epoch.
    let mut tree = RegionTree::whole(owner("a", 1));
    tree.split(
        RegionId::cell(CellId::new(0, 0)),
        [owner("a", 2), owner("a", 2), owner("a", 2), owner("a", 2)],
    )
    .unwrap();
    map.set_tree(CellId::new(0, 0), tree);
    c.events.clear();
    c.tick();
    assert_eq!(c.total(), 40, "lost or duplicated in the split");
    let mut regions: Vec<String> = census(&c, 0).into_iter().map(|(r, _)| r).collect();
    regions.sort();
    assert_eq!(regions, vec!["0,0/0", "0,0/1", "0,0/2", "0,0/3"]);
    for id in &players {
        let (_, region) = c.where_is(*id).expect("in the world");
        let pos = c.shards[0]
            .cells()
            .find_map(|cell| cell.position(*id))
            .unwrap();
        let grid = tessera_proto::Grid::new(64.0);
        assert!(
            region.distance_xz(&grid, pos) <= 1.0,
            "{id} at {pos} is in {region}"
        );
    }
    // Their routers were told where they are now.
    let told = c
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PlayerEvent::OwnerChanged { region, .. } if !region.is_cell()))
        .count();
    assert_eq!(told, 40);
    // They keep walking: positions change over the next ticks.
    let before: Vec<Vec3> = players
        .iter()
        .map(|id| {
            c.shards[0]
                .cells()
                .find_map(|cell| cell.position(*id))
                .unwrap()
        })
        .collect();
    for _ in 0..10 {
        c.tick();
        assert_eq!(c.total(), 40);
    }
    let moved = players
        .iter()
        .zip(&before)
        .filter(|(id, b)| {
            c.shards[0]
                .cells()
                .find_map(|cell| cell.position(**id))
                .is_some_and(|p| p.distance_xz(**b) > 0.5)
        })
        .count();
    assert_eq!(moved, 40, "inputs survived the split");
    // Merge back (epoch 3).
    map.set(CellId::new(0, 0), owner("a", 3));
    c.tick();
    assert_eq!(c.total(), 40, "lost or duplicated in the merge");
    assert_eq!(census(&c, 0), vec![("0,0".to_string(), 40)]);
}

/// A cell split two levels deep collapses straight back to one region when
/// the map merges its whole subtree in one step (the coordinator's merge
/// after a crowd leaves): every entity of the seven regions ends up in the
/// cell, none lost or duplicated.
#[test]
fn a_subtree_two_levels_deep_collapses_into_its_cell_in_one_step() {
    let map = CellMap::fixed([
        (CellId::new(0, 0), owner("a", 1)),
        (CellId::new(1, 0), owner("b", 1)),
    ]);
    let mut c = Cluster::with_map(map.clone());
    for p in 0..28u64 {
        let pos = Vec3::new(4.0 + (p % 7) as f32 * 9.0, 0.0, 4.0 + (p / 7) as f32 * 15.0);
        join(&mut c, 0, p + 1, pos);
    }
    c.tick();
    let cell = RegionId::cell(CellId::new(0, 0));
    let mut tree = RegionTree::whole(owner("a", 1));
    tree.split(
        cell,
        [owner("a", 2), owner("a", 2), owner("a", 2), owner("a", 2)],
    )
    .unwrap();
    tree.split(
        region("0,0/0"),
        [owner("a", 3), owner("a", 3), owner("a", 3), owner("a", 3)],
    )
    .unwrap();
    map.set_tree(CellId::new(0, 0), tree);
    c.tick();
    assert_eq!(census(&c, 0).len(), 7, "{:?}", census(&c, 0));
    assert_eq!(c.total(), 28);
    map.set(CellId::new(0, 0), owner("a", 4));
    c.tick();
    assert_eq!(census(&c, 0), vec![("0,0".to_string(), 28)]);
    assert_eq!(c.total(), 28, "lost or duplicated in the collapse");
}

/// The map may already have moved one new quadrant to another shard when
/// the owner re-partitions (it was behind): the entities there are handed
/// to that shard, not kept or dropped.
#[test]
fn entities_of_a_quadrant_the_map_gave_elsewhere_are_handed_over() {
    let map = CellMap::fixed([
        (CellId::new(0, 0), owner("a", 1)),
        (CellId::new(1, 0), owner("b", 1)),
    ]);
    let mut c = Cluster::with_map(map.clone());
    let nw = join(&mut c, 0, 1, Vec3::new(10.0, 0.0, 10.0));
    let ne = join(&mut c, 0, 2, Vec3::new(50.0, 0.0, 10.0));
    c.tick();
    let mut tree = RegionTree::whole(owner("a", 1));
    tree.split(
        RegionId::cell(CellId::new(0, 0)),
        [owner("a", 2), owner("b", 3), owner("a", 2), owner("a", 2)],
    )
    .unwrap();
    map.set_tree(CellId::new(0, 0), tree);
    c.tick();
    assert_eq!(c.total(), 2);
    assert_eq!(c.where_is(nw), Some((0, region("0,0/0"))));
    assert_eq!(c.where_is(ne), Some((1, region("0,0/1"))));
}

/// NPCs keep their script state through a split and a merge: a counter
/// script goes on counting from where it was.
#[test]
fn npcs_keep_their_script_state_through_a_split_and_a_merge() {
    use tessera_proto::world::NpcDef;
    let mut world = parse_world(WORLD).unwrap();
    world.scripts.insert(
        "counter".into(),
        "fn on_tick() { state.n = (state.n ?? 0) + 1; }".into(),
    );
    for (name, pos) in [
        ("Nw", Vec3::new(10.0, 0.0, 10.0)),
        ("Se", Vec3::new(50.0, 0.0, 50.0)),
    ] {
        world.npcs.push(NpcDef {
            name: name.into(),
            description: "Counts.".into(),
            pos,
            script: "counter".into(),
            count: 1,
            scatter: 0.0,
        });
    }
    let a = ShardId::new("a");
    let map = CellMap::fixed([(CellId::new(0, 0), owner("a", 1))]);
    let bus = LocalBus::new();
    let _inbox = bus.add_shard(a.clone());
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus);
    let mut shard = Shard::new(ShardConfig::new(a), Arc::new(world), dyn_bus, map.clone()).unwrap();
    let counts = |shard: &Shard| -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = shard
            .cells()
            .flat_map(|cell| {
                cell.entity_ids()
                    .into_iter()
                    .filter_map(|id| cell.export(id))
                    .map(|t| {
                        let state: serde_json::Value =
                            serde_json::from_str(&t.script.unwrap().state_json).unwrap();
                        (t.name, state["n"].as_i64().unwrap_or(0))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    };
    let run = |shard: &mut Shard, ticks: usize| {
        for _ in 0..ticks {
            shard.step(Instant::now());
        }
    };
    run(&mut shard, 30);
    let before = counts(&shard);
    assert!(before.iter().all(|(_, n)| *n >= 2), "{before:?}");
    let mut tree = RegionTree::whole(owner("a", 1));
    tree.split(
        RegionId::cell(CellId::new(0, 0)),
        [owner("a", 2), owner("a", 2), owner("a", 2), owner("a", 2)],
    )
    .unwrap();
    map.set_tree(CellId::new(0, 0), tree);
    run(&mut shard, 30);
    let split = counts(&shard);
    assert_eq!(shard.cells().count(), 4);
    for ((name, n0), (_, n1)) in before.iter().zip(&split) {
        assert!(n1 > n0, "{name} counted on from {n0}: {n1}");
    }
    map.set(CellId::new(0, 0), owner("a", 3));
    run(&mut shard, 30);
    let merged = counts(&shard);
    assert_eq!(shard.cells().count(), 1);
    for ((name, n1), (_, n2)) in split.iter().zip(&merged) {
        assert!(n2 > n1, "{name} counted on from {n1}: {n2}");
    }
    assert_eq!(merged.len(), 2, "no NPC lost or duplicated");
}

/// A merge right after the last quadrant's migration: the target may see
/// the owner flip and the merge in one map change, so the quadrant it holds
/// as a migration snapshot never opened on its own. Its entities must join
/// the merged region, not be lost.
#[test]
fn a_merge_seen_together_with_the_last_quadrants_migration_keeps_its_entities() {
    let world = Arc::new(parse_world(WORLD).unwrap());
    let (a, b) = (ShardId::new("a"), ShardId::new("b"));
    let cell = CellId::new(0, 0);
    let mut tree = RegionTree::whole(owner("a", 1));
    tree.split(
        RegionId::cell(cell),
        [owner("a", 2), owner("a", 2), owner("a", 2), owner("b", 3)],
    )
    .unwrap();
    let map = CellMap::fixed([(CellId::new(1, 0), owner("b", 1))]);
    map.set_tree(cell, tree);
    let bus = LocalBus::new();
    let router = bus.add_router(RouterId("r".into()));
    let inbox_a = bus.add_shard(a.clone());
    let _inbox_b = bus.add_shard(b.clone());
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let board = MigrationBoard::default();
    let (tx, _notices) = tokio::sync::mpsc::unbounded_channel();
    let shard = |id: &ShardId| {
        Shard::new(
            ShardConfig::new(id.clone()),
            world.clone(),
            dyn_bus.clone(),
            map.clone(),
        )
        .unwrap()
        .with_migrations(board.clone(), tx.clone())
    };
    let (mut sa, mut sb) = (shard(&a), shard(&b));
    let mut c = Cluster {
        shards: Vec::new(),
        inboxes: Vec::new(),
        router,
        events: Vec::new(),
        _notices: Vec::new(),
    };
    // Two players in the south-east quadrant, on b.
    for p in [1u64, 2] {
        sb.handle(
            ToShard::Join {
                session: SessionRef {
                    router: RouterId("r".into()),
                    session: SessionId(p),
                },
                player: PlayerId(p),
                name: format!("P{p}"),
                pos: Vec3::new(40.0 + p as f32 * 5.0, 0.0, 50.0),
            },
            Instant::now(),
        );
    }
    sa.step(Instant::now());
    sb.step(Instant::now());
    assert_eq!(sb.entity_count(), 2);
    // The merge gathers the quadrants on a: 0,0/3 migrates b -> a.
    board.set(
        region("0,0/3"),
        Migration {
            from: b.clone(),
            to: a.clone(),
            epoch: Epoch(4),
            state: MigrationState::Requested,
            requested_unix_ms: 0,
            authority: None,
            cancelled_unix_ms: None,
        },
    );
    sb.step(Instant::now()); // freezes and ships
    while let Ok(msg) = inbox_a.try_recv() {
        sa.handle(msg, Instant::now());
    }
    assert_eq!(sa.entity_count() + sb.entity_count(), 0, "in flight");
    // The owner flips to a (epoch 4) and the cell merges (epoch 5) before a
    // looks at the map again.
    board.remove(region("0,0/3"));
    map.set(cell, owner("a", 5));
    sa.step(Instant::now());
    sb.step(Instant::now());
    assert_eq!(
        sa.cells().map(|c| c.id.to_string()).collect::<Vec<_>>(),
        vec!["0,0"]
    );
    assert_eq!(
        sa.entity_count() + sb.entity_count(),
        2,
        "lost in the merge"
    );
    for p in [1u64, 2] {
        let id = EntityId::for_player(PlayerId(p));
        assert!(sa.cells().any(|cell| cell.contains(id)), "P{p} lost");
    }
    // Their routers heard where they are now.
    while let Ok(msg) = c.router.try_recv() {
        if let ToRouter::Player { session, event } = msg {
            c.events.push((session, event));
        }
    }
    assert!(c.events.iter().any(|(s, e)| s.0 == 1
        && matches!(e, PlayerEvent::OwnerChanged { region, shard } if region.is_cell() && shard.0 == "a")));
}

/// A player who walks into a cell its shard has just shipped (the map does
/// not name the new owner yet) follows the cell, and so do the commands the
/// router still sends to the old shard: each is answered once the cell
/// opens on its new owner, and none circles back to the shard that sent it.
#[test]
fn commands_for_a_player_who_walks_into_a_shipped_cell_follow_it() {
    let (west, east) = (CellId::new(0, 0), CellId::new(1, 0));
    let map = CellMap::fixed([(west, owner("a", 1)), (east, owner("a", 1))]);
    let board = MigrationBoard::default();
    let mut c = Cluster::with_board(map.clone(), Some(board.clone()));
    c.tick();
    let ann = join(&mut c, 0, 1, Vec3::new(63.5, 0.0, 20.0));
    c.tick();
    assert_eq!(c.where_is(ann), Some((0, RegionId::cell(west))));

    board.set(
        RegionId::cell(east),
        Migration {
            from: ShardId::new("a"),
            to: ShardId::new("b"),
            epoch: Epoch(2),
            state: MigrationState::Requested,
            requested_unix_ms: 0,
            authority: None,
            cancelled_unix_ms: None,
        },
    );
    c.tick();
    assert_eq!(c.shards[0].entity_count(), 1, "a shipped the east cell");

    // Ann walks east, into the shipped cell, and the router, told nothing
    // yet, sends her next steps to a.
    c.events.clear();
    for _ in 0..3 {
        c.send(
            0,
            ToShard::Step {
                entity: ann,
                dir: Compass::East,
            },
        );
    }
    assert_eq!(
        c.total(),
        0,
        "Ann waits with the cell, on neither shard yet"
    );

    map.set(east, owner("b", 2));
    c.tick();
    c.tick();
    assert_eq!(c.where_is(ann), Some((1, RegionId::cell(east))));
    let answered = c
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PlayerEvent::StepDone { .. }))
        .count();
    assert_eq!(answered, 3, "every step answered once: {:?}", c.events);
}
