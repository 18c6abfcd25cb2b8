//! Regions (docs/regions.md) in a cluster of separate processes against a
//! real etcd: cells split into quadrants owned by different shards, as the
//! operator drives them with `tessera ctl split`, `move` and `merge`.
//!
//! - a split while players (telnet walkers and a QUIC `tessera bots`
//!   crowd) walk across the cell, then two of its quadrants moved to other
//!   shards: every entity counted exactly once, nobody disconnected, the
//!   quadrants where `ctl cells --json` says;
//! - kill -9 of the shard owning one quadrant: that quadrant alone fails
//!   over and reopens from its checkpoint while its siblings tick on;
//! - a merge while a player crosses the quadrant border: one whole cell
//!   again, the player in it exactly once;
//! - the leading coordinator killed during a split: the standby carries it
//!   out, and every point of the cell keeps exactly one live owner;
//! - a merge target that sees the last quadrant's move and the merge in
//!   one reconcile (frozen for a moment in between): nothing it restored
//!   is lost.
//!
//! Every reading comes from `ctl cells --json`, the shards' metrics, the
//! players' `where` and etcd's records; none from a log line. The world's
//! entity count adds each shard's `tessera_shard_entities` over the regions
//! the map gives that shard (every entity counted once, by its region's
//! owner); that no shard reports entities in a region it does not own (a
//! gauge left behind by a split, a merge or a move) is checked on its own,
//! last in each test.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{metric_samples, scrape, TelnetClient, TestDir, Where};
use etcd::EtcdServer;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support_cluster::*;

/// How the walkers walk: `where` every third step.
const WALK: Pace = Pace {
    rest: Duration::from_millis(100),
    where_every: Some(3),
};

/// The default world's cell side, metres.
const CELL: f32 = 64.0;
/// How far past a border an entity goes before it is handed over, metres
/// (1 m in the product; a little slack for the float positions).
const HYSTERESIS: f32 = 1.1;

// ------------------------------------------------------------------ the map

/// One row of `tessera ctl cells --json`: a leaf region of the cell map.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    /// `x,z` of the cell the region is in.
    cell: String,
    /// The region's text form (`0,0` or `0,0/1`).
    region: String,
    owner: String,
    epoch: u64,
    owner_live: bool,
}

/// Every leaf region of the map.
fn leaves(etcd: &EtcdServer) -> Vec<Leaf> {
    let (ok, json, err) = ctl(etcd, &["cells", "--json"]);
    assert!(ok, "ctl cells --json: {err}");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("ctl cells --json");
    rows.as_array()
        .expect("an array of regions")
        .iter()
        .map(|r| Leaf {
            cell: format!("{},{}", r["cell"]["x"], r["cell"]["z"]),
            region: r["region"]
                .as_str()
                .unwrap_or_else(|| panic!("a row without a region: {r}"))
                .to_string(),
            owner: r["owner"].as_str().unwrap_or("").to_string(),
            epoch: r["epoch"].as_u64().expect("an epoch"),
            owner_live: r["owner_live"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// The leaves of one cell, by region.
fn leaves_of(all: &[Leaf], cell: &str) -> BTreeMap<String, Leaf> {
    all.iter()
        .filter(|l| l.cell == cell)
        .map(|l| (l.region.clone(), l.clone()))
        .collect()
}

/// `(min x, min z, side)` of a region's square, from its text form
/// (`x,z/q/q...`; quadrant 0 NW, 1 NE, 2 SW, 3 SE; north is -Z).
fn bounds(region: &str) -> (f32, f32, f32) {
    let mut parts = region.split('/');
    let cell = parts.next().expect("a cell");
    let (x, z) = cell
        .split_once(',')
        .unwrap_or_else(|| panic!("not a region: {region:?}"));
    let (mut x0, mut z0, mut side) = (
        x.parse::<f32>().expect("cell x") * CELL,
        z.parse::<f32>().expect("cell z") * CELL,
        CELL,
    );
    for q in parts {
        let q: u8 = q.parse().expect("a quadrant digit");
        assert!(q < 4, "bad quadrant in {region:?}");
        side /= 2.0;
        if q & 1 == 1 {
            x0 += side;
        }
        if q & 2 == 2 {
            z0 += side;
        }
    }
    (x0, z0, side)
}

/// Whether `pos` is in `region`, or within the hand-off hysteresis of it.
fn near_region(region: &str, x: f32, z: f32) -> bool {
    let (x0, z0, side) = bounds(region);
    x >= x0 - HYSTERESIS
        && x < x0 + side + HYSTERESIS
        && z >= z0 - HYSTERESIS
        && z < z0 + side + HYSTERESIS
}

/// Exactly one live owner for every point of every cell: each cell's
/// leaves are distinct, none inside another, and their areas add up to the
/// cell's (so they tile it), and each has a live owner among `shards`.
fn assert_one_live_owner_per_point(all: &[Leaf], shards: &[&str], when: &str) {
    let cells: BTreeSet<&str> = all.iter().map(|l| l.cell.as_str()).collect();
    assert_eq!(
        cells.len(),
        16,
        "{when}: cells missing from the map: {all:?}"
    );
    for cell in cells {
        let rows: Vec<&Leaf> = all.iter().filter(|l| l.cell == cell).collect();
        let regions: BTreeSet<&str> = rows.iter().map(|l| l.region.as_str()).collect();
        assert_eq!(
            regions.len(),
            rows.len(),
            "{when}: a region twice: {rows:?}"
        );
        for a in &regions {
            assert!(
                a == &cell || a.starts_with(&format!("{cell}/")),
                "{when}: region {a} listed under cell {cell}"
            );
            for b in &regions {
                assert!(
                    a == b || !b.starts_with(&format!("{a}/")),
                    "{when}: {b} overlaps {a}: {rows:?}"
                );
            }
        }
        let area: f32 = regions.iter().map(|r| bounds(r).2.powi(2)).sum();
        assert!(
            (area - CELL * CELL).abs() < 0.5,
            "{when}: the leaves of {cell} do not tile it: {rows:?}"
        );
        for l in rows {
            assert!(
                l.owner_live && shards.contains(&l.owner.as_str()),
                "{when}: {} has no live owner: {l:?}",
                l.region
            );
        }
    }
}

/// Waits until the coordinator has placed all 16 cells on live shards.
fn wait_placed(etcd: &EtcdServer) -> Vec<Leaf> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = leaves(etcd);
        if all.len() == 16 && all.iter().all(|l| l.owner_live) {
            return all;
        }
        assert!(Instant::now() < deadline, "cells not placed: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- readings

/// The shards of a test: `(id, metrics address)`.
type Shards<'a> = [(&'a str, SocketAddr)];

const ENTITIES: &str = "tessera_shard_entities";
const PLAYERS: &str = "tessera_shard_players";

/// One reading of a per-region gauge (`tessera_shard_entities`,
/// `tessera_shard_players`) of every shard, all scraped at the same moment
/// (one thread each) right after reading the map.
#[derive(Debug)]
struct Reading {
    /// The sum over the regions the map gives each shard: every entity
    /// counted once, by the owner of the region it is in.
    owned: f64,
    /// Non-zero values the shards report for regions the map does not
    /// give them (`shard region value`).
    strays: Vec<String>,
    /// Every non-zero row (`shard region value`), for failure messages.
    rows: Vec<String>,
}

fn read_gauge(etcd: &EtcdServer, shards: &Shards, gauge: &str) -> Reading {
    let map = leaves(etcd);
    let texts: Vec<(&str, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .map(|(id, m)| s.spawn(move || (*id, scrape(*m))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scrape thread"))
            .collect()
    });
    let mut reading = Reading {
        owned: 0.0,
        strays: Vec::new(),
        rows: Vec::new(),
    };
    for (id, text) in texts {
        for (labels, v) in metric_samples(&text, gauge) {
            if v == 0.0 {
                continue;
            }
            let region = label(&labels, "cell").unwrap_or("");
            let row = format!("{id} {region} {v}");
            if map.iter().any(|l| l.region == region && l.owner == id) {
                reading.owned += v;
            } else {
                reading.strays.push(row.clone());
            }
            reading.rows.push(row);
        }
    }
    reading
}

/// Reads the world's entity count until a reading equals `want` (an
/// entity in flight between two shards is in neither count for a moment;
/// a shard re-partitions at its next tick after a map change), else
/// returns the last reading after `timeout`.
fn count_reaches(etcd: &EtcdServer, shards: &Shards, want: f64, timeout: Duration) -> Reading {
    let deadline = Instant::now() + timeout;
    loop {
        let r = read_gauge(etcd, shards, ENTITIES);
        if r.owned == want || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The world's entity count once two readings 300 ms apart agree (10 s at
/// most). The default world has NPCs, so it is never 0: a count that reads
/// nothing would make every later comparison pass.
fn settled_count(etcd: &EtcdServer, shards: &Shards) -> f64 {
    let mut last = read_gauge(etcd, shards, ENTITIES).owned;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let r = read_gauge(etcd, shards, ENTITIES);
        if r.owned == last || Instant::now() > deadline {
            assert!(r.owned >= 10.0, "hardly any entities counted: {r:?}");
            return r.owned;
        }
        last = r.owned;
    }
}

/// Asserts the world's entity count is `want`: every NPC, player and bot
/// counted exactly once, by the owner of its region.
fn assert_count(etcd: &EtcdServer, shards: &Shards, want: f64, when: &str) {
    let r = count_reaches(etcd, shards, want, Duration::from_secs(10));
    assert_eq!(
        r.owned, want,
        "{when}: entities lost or duplicated; shard region count: {:?}",
        r.rows
    );
}

/// No shard reports entities or players in a region the map does not give
/// it: a region it no longer simulates (split, merged or moved away) must
/// drop to 0, or the gauges count those entities twice (a reading right
/// after a map change may still show the old layout: 3 s of patience).
fn assert_no_stale_region_gauges(etcd: &EtcdServer, shards: &Shards) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let e = read_gauge(etcd, shards, ENTITIES);
        let p = read_gauge(etcd, shards, PLAYERS);
        if e.strays.is_empty() && p.strays.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shards report entities in regions the map does not give them (gauges of \
             regions they no longer simulate): entities {:?}, players {:?}; every row: {:?}",
            e.strays,
            p.strays,
            e.rows
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of label `key` in a sample's labels (`shard="shard-1",cell="-1,0/3"`:
/// values hold commas).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let at = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[at..];
    rest.find('"').map(|end| &rest[..end])
}

/// A gauge of one shard's region (`tessera_shard_entities`,
/// `tessera_shard_players`); 0 if it does not report the region.
fn region_gauge(metrics: SocketAddr, name: &str, region: &str) -> f64 {
    metric_samples(&scrape(metrics), name)
        .iter()
        .filter(|(labels, _)| label(labels, "cell") == Some(region))
        .map(|(_, v)| v)
        .sum()
}

/// A counter summed over every label of one shard.
fn counter(metrics: SocketAddr, name: &str) -> f64 {
    metric_samples(&scrape(metrics), name)
        .iter()
        .map(|(_, v)| v)
        .sum()
}

// ----------------------------------------------------------------- players

/// Walks a telnet player to within 1.6 m of `(x, z)` (3 m steps, going
/// round whatever blocks it); returns where it stands.
fn walk_to(c: &mut TelnetClient, x: f32, z: f32) -> Where {
    let mut blocked_axis: Option<bool> = None; // true: the x axis
    for _ in 0..80 {
        let w = c.where_();
        let (dx, dz) = (x - w.x, z - w.z);
        if dx.abs() < 1.6 && dz.abs() < 1.6 {
            return w;
        }
        let mut along_x = dx.abs() >= dz.abs();
        if blocked_axis == Some(along_x) {
            along_x = !along_x;
        }
        let dir = match (along_x, dx > 0.0, dz > 0.0) {
            (true, true, _) => "e",
            (true, false, _) => "w",
            (false, _, true) => "s",
            (false, _, false) => "n",
        };
        let answer = c.command(dir);
        blocked_axis =
            (!answer.starts_with("You walk ") || answer.contains("stops you")).then_some(along_x);
    }
    panic!("{:?} could not walk to ({x}, {z})", c.name);
}

/// Pauses the walkers and gives the step each may be in the middle of
/// time to be answered.
fn pause(flags: &WalkFlags) {
    flags.paused.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(600));
}

/// A router that spreads new characters within 4 m of the spawn (players
/// created on one spot can stay wedged in each other).
fn spread_router(dir: &TestDir, ca: &std::path::Path, spec: RouterSpec) -> RouterProc {
    router(
        dir.path(),
        ca,
        &RouterSpec {
            extra: vec!["--spawn-radius".into(), "4".into()],
            ..spec
        },
    )
}

/// Checks a player's `where`: a position inside `cell` (by more than the
/// hysteresis) is in one of the cell's leaves as the map has it now, and
/// that leaf's owner simulates the player.
fn assert_where_matches_map(name: &str, w: &Where, cell: &str, map: &BTreeMap<String, Leaf>) {
    let (x0, z0, side) = bounds(cell);
    let inside = w.x > x0 + HYSTERESIS
        && w.x < x0 + side - HYSTERESIS
        && w.z > z0 + HYSTERESIS
        && w.z < z0 + side - HYSTERESIS;
    if !inside {
        return;
    }
    let leaf = map.get(&w.cell).unwrap_or_else(|| {
        panic!(
            "{name} is in {}, not a leaf of {cell}: {w:?} {map:?}",
            w.cell
        )
    });
    assert!(
        near_region(&w.cell, w.x, w.z),
        "{name} stands at ({}, {}), outside its region {}",
        w.x,
        w.z,
        w.cell
    );
    assert_eq!(
        w.shard, leaf.owner,
        "{name} is simulated by {} but {} is {}'s",
        w.shard, w.cell, leaf.owner
    );
}

// --------------------------------------------------------------------- bots

/// QUIC bots of a `tessera bots --scenario crowd` swarm milling about the
/// middle of cell 0,0, where its four quadrants meet.
const BOTS: usize = 4;
/// How long they play: longer than the split and the two moves of
/// [`splitting_a_cell_under_walking_players_and_moving_its_quadrants_keeps_every_entity`]
/// (the test fails if they stop first).
const BOT_SECS: u64 = 20;

// -------------------------------------------------------------------- tests

/// Loops around the middle of cell 0,0 (32, 32), where its quadrants meet:
/// (name, start x, start z, steps). Ada's and Ben's squares cross both
/// quadrant borders, Cy paces across x = 32, Di across z = 32.
const LOOPS: [(&str, f32, f32, &[&str]); 4] = [
    (
        "Ada",
        29.0,
        29.0,
        &["e", "e", "e", "s", "s", "s", "w", "w", "w", "n", "n", "n"],
    ),
    (
        "Ben",
        23.0,
        23.0,
        &[
            "e", "e", "e", "e", "e", "e", "s", "s", "s", "s", "s", "s", "w", "w", "w", "w", "w",
            "w", "n", "n", "n", "n", "n", "n",
        ],
    ),
    ("Cyd", 26.0, 47.0, &["e", "e", "e", "e", "w", "w", "w", "w"]),
    ("Dia", 47.0, 26.0, &["s", "s", "s", "s", "n", "n", "n", "n"]),
];

/// `ctl split 0,0` while four telnet players and a crowd of QUIC bots walk
/// back and forth across the middle of the cell, then `ctl move` of two
/// of its quadrants to two other shards. Along the way and at the end:
/// the world's entity count is exact (every NPC, player and bot counted
/// once, by the owner of the region it is in), no walker's step or
/// `where` goes unanswered, no bot sees an error or disconnect, each
/// walker in the cell is in the quadrant its position says, on that
/// quadrant's owner, and `ctl cells --json` lists the four quadrants with
/// the owners and epochs the split and the moves gave them.
#[test]
fn splitting_a_cell_under_walking_players_and_moving_its_quadrants_keeps_every_entity() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator").not_rebalancing(),
    );
    let s1 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let s2 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-2"));
    let placed = wait_placed(&etcd);
    // Joins after the placement, with no cells: it gets a quadrant.
    let s3 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-3"));
    let metrics = [s1.metrics, s2.metrics, s3.metrics];
    let by_id = [
        ("shard-1", s1.metrics),
        ("shard-2", s2.metrics),
        ("shard-3", s3.metrics),
    ];
    wait_ticking(&metrics, 10.0);
    let router = spread_router(&dir, &ca, RouterSpec::local(&etcd));
    let cell = leaves_of(&placed, "0,0");
    let whole = &cell["0,0"];
    assert_eq!(whole.owner, "shard-2", "the X stripes: {placed:?}");

    let flags = WalkFlags::paused();
    let mut walkers: Vec<Walker> = LOOPS
        .iter()
        .map(|(name, x, z, pattern)| {
            let mut c = TelnetClient::create(router.telnet, name, PW);
            walk_to(&mut c, *x, *z);
            Walker::start(c, pattern, flags.clone(), WALK)
        })
        .collect();
    let world_without_bots = settled_count(&etcd, &by_id);
    let mut swarm = BotSwarm::start(
        dir.path(),
        &router,
        BOTS,
        BOT_SECS,
        &[
            "--quic",
            &BOTS.to_string(),
            "--telnet",
            "0",
            "--scenario",
            "crowd",
            "--crowd-target",
            "32,32",
            "--crowd-radius",
            "12",
            "--seed",
            "31",
        ],
    );
    let world = world_without_bots + BOTS as f64;
    flags.paused.store(false, Ordering::Relaxed);
    let bots_started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let exact = |when: &str| assert_count(&etcd, &by_id, world, when);
    exact("before the split");

    // The split: four quadrants on the cell's shard, at the tree's next
    // epoch; the shard re-partitions at its next tick.
    let (ok, out, err) = ops(&etcd, &ca, &["split", "0,0"]);
    assert!(ok, "ctl split 0,0: {out} {err}");
    let split_done = Instant::now();
    let after_split = leaves(&etcd);
    assert_one_live_owner_per_point(&after_split, &["shard-1", "shard-2", "shard-3"], "split");
    let quads = leaves_of(&after_split, "0,0");
    let names: Vec<&str> = quads.keys().map(String::as_str).collect();
    assert_eq!(names, ["0,0/0", "0,0/1", "0,0/2", "0,0/3"], "{quads:?}");
    let split_epoch = quads["0,0/0"].epoch;
    assert!(split_epoch > whole.epoch, "{quads:?}");
    for q in quads.values() {
        assert_eq!(
            (q.owner.as_str(), q.epoch),
            ("shard-2", split_epoch),
            "{q:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(s2.metrics, "tessera_shard_splits_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "shard-2 never re-partitioned 0,0"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in &mut walkers {
        w.check();
    }
    exact("after the split");

    // Two quadrants go to the other shards by live migration, each at the
    // tree's next epoch.
    let moves = [("0,0/1", "shard-1"), ("0,0/2", "shard-3")];
    for (i, (region, to)) in moves.iter().enumerate() {
        let (ok, out, err) = ops(&etcd, &ca, &["move", region, to]);
        assert!(ok, "ctl move {region} {to}: {out} {err}");
        let now = leaves(&etcd);
        assert_one_live_owner_per_point(&now, &["shard-1", "shard-2", "shard-3"], region);
        let q = &leaves_of(&now, "0,0")[*region];
        assert_eq!(
            (q.owner.as_str(), q.epoch),
            (*to, split_epoch + 1 + i as u64),
            "{q:?}"
        );
        for w in &mut walkers {
            w.check();
        }
        exact(&format!("after the move of {region}"));
    }
    let moved = Instant::now();
    // Everyone walks across the new shard borders for a while.
    std::thread::sleep(Duration::from_secs(3));
    for w in &mut walkers {
        w.check();
    }
    exact("walking across the quadrants of three shards");

    let map = leaves(&etcd);
    assert_one_live_owner_per_point(&map, &["shard-1", "shard-2", "shard-3"], "the end");
    let quads = leaves_of(&map, "0,0");
    let owners: Vec<(&str, &str, u64)> = quads
        .values()
        .map(|l| (l.region.as_str(), l.owner.as_str(), l.epoch))
        .collect();
    assert_eq!(
        owners,
        [
            ("0,0/0", "shard-2", split_epoch),
            ("0,0/1", "shard-1", split_epoch + 1),
            ("0,0/2", "shard-3", split_epoch + 2),
            ("0,0/3", "shard-2", split_epoch),
        ]
    );
    // The rest of the map did not change.
    let others =
        |all: &[Leaf]| -> Vec<Leaf> { all.iter().filter(|l| l.cell != "0,0").cloned().collect() };
    assert_eq!(others(&map), others(&placed), "cells besides 0,0 changed");

    pause(&flags);
    assert!(
        swarm.running(),
        "the bots stopped {} s after they started, before the test's checks: raise BOT_SECS",
        bots_started.elapsed().as_secs()
    );
    exact("the end");
    assert_eq!(
        router_connections(router.metrics),
        (LOOPS.len() + BOTS) as f64,
        "a player was disconnected"
    );

    flags.stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    let mut quadrants_seen = BTreeSet::new();
    let mut shards_seen = BTreeSet::new();
    for w in walkers {
        let name = w.name.clone();
        let mut log = w.finish();
        assert!(log.steps > 20, "{name} walked only {} steps", log.steps);
        for (at, seen) in &log.seen {
            if *at > split_done + Duration::from_millis(500) {
                assert_ne!(
                    seen.cell, "0,0",
                    "{name} was still in the whole cell 0,0 after the split"
                );
                if seen.cell.starts_with("0,0/") {
                    quadrants_seen.insert(seen.cell.clone());
                }
            }
            if *at > moved + Duration::from_millis(500) && seen.cell.starts_with("0,0/") {
                shards_seen.insert(seen.shard.clone());
            }
        }
        let w = log.client.where_();
        eprintln!(
            "region split: {name} took {} steps, now at ({:.1}, {:.1}) in {} on {}",
            log.steps, w.x, w.z, w.cell, w.shard
        );
        assert_where_matches_map(&name, &w, "0,0", &quads);
        clients.push(log.client);
    }
    assert!(
        quadrants_seen.len() >= 3,
        "the walkers did not walk across the quadrants: {quadrants_seen:?}"
    );
    assert_eq!(
        shards_seen.len(),
        3,
        "the walkers did not cross into all three shards' quadrants: {shards_seen:?}"
    );
    swarm.finish_without_errors();
    // The bots logged out: the world is what it was without them.
    assert_count(&etcd, &by_id, world_without_bots, "once the bots left");
    assert_eq!(router_connections(router.metrics), LOOPS.len() as f64);
    assert_no_stale_region_gauges(&etcd, &by_id);
    drop(clients);
}

/// Cell -1,-1 is split and spread over three shards: its south-east
/// quadrant (Mira the baker, and Ann, who greets her) on shard-3, its
/// north-east one (Bob) on shard-2, the other two on shard-1. kill -9 of
/// shard-3: the coordinator gives that quadrant alone to a live shard at
/// a higher epoch, its siblings keep their owners and epochs and tick on
/// (Bob keeps walking), the new owner reopens the quadrant from its
/// checkpoint (Mira still counts Ann's greetings), the router puts Ann
/// back, and the world's entity count is what it was.
#[test]
fn killing_the_shard_of_one_quadrant_fails_over_that_quadrant_alone() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let store = persistence(dir.path(), &ca, &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator").not_rebalancing(),
    );
    let spec = |id| ShardSpec {
        persistence: Some(store.addr),
        ..ShardSpec::local(&etcd, id)
    };
    let s1 = shard(dir.path(), &ca, &spec("shard-1"));
    let s2 = shard(dir.path(), &ca, &spec("shard-2"));
    let placed = wait_placed(&etcd);
    let mut s3 = shard(dir.path(), &ca, &spec("shard-3"));
    wait_ticking(&[s1.metrics, s2.metrics, s3.metrics], 10.0);
    let router = spread_router(
        &dir,
        &ca,
        RouterSpec {
            persistence: Some(store.addr),
            ..RouterSpec::local(&etcd)
        },
    );
    assert_eq!(leaves_of(&placed, "-1,-1")["-1,-1"].owner, "shard-1");

    // Ann stands by Mira (-12, -1) in the south-east quadrant, Bob in the
    // north-east one.
    let mut ann = TelnetClient::create(router.telnet, "Ann", PW);
    walk_to(&mut ann, -8.0, -5.0);
    let mut bob = TelnetClient::create(router.telnet, "Bob", PW);
    walk_to(&mut bob, -4.0, -40.0);

    let (ok, out, err) = ops(&etcd, &ca, &["split", "-1,-1"]);
    assert!(ok, "ctl split -1,-1: {out} {err}");
    for (region, to) in [("-1,-1/3", "shard-3"), ("-1,-1/1", "shard-2")] {
        let (ok, out, err) = ops(&etcd, &ca, &["move", region, to]);
        assert!(ok, "ctl move {region} {to}: {out} {err}");
    }
    let at_ann = ann.where_();
    assert_eq!(
        (at_ann.cell.as_str(), at_ann.shard.as_str()),
        ("-1,-1/3", "shard-3")
    );
    let at_bob = bob.where_();
    assert_eq!(
        (at_bob.cell.as_str(), at_bob.shard.as_str()),
        ("-1,-1/1", "shard-2")
    );
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    ann.command("say hello again Mira");
    let greetings = greeting_count(&ann.wait_for("Mira says,", Duration::from_secs(5)));
    // A checkpoint round after the greeting.
    std::thread::sleep(Duration::from_millis(1500));

    let live = [("shard-1", s1.metrics), ("shard-2", s2.metrics)];
    let world = settled_count(
        &etcd,
        &[
            ("shard-1", s1.metrics),
            ("shard-2", s2.metrics),
            ("shard-3", s3.metrics),
        ],
    );
    let victim = "-1,-1/3";
    let in_victim = region_gauge(s3.metrics, ENTITIES, victim);
    assert!(
        in_victim >= 2.0,
        "Mira and Ann are in {victim}: {in_victim} entities"
    );
    let in_bobs = region_gauge(s2.metrics, ENTITIES, "-1,-1/1");
    let before = leaves(&etcd);
    let old = leaves_of(&before, "-1,-1");
    assert_eq!(old[victim].owner, "shard-3");
    assert_eq!(
        before.iter().filter(|l| l.owner == "shard-3").count(),
        1,
        "shard-3 owns the one quadrant: {before:?}"
    );

    let ticks_at_kill = ticks(s2.metrics);
    s3.role.kill();
    // Until the quadrant has a new owner: its siblings keep their owners
    // and epochs, and Bob, on shard-2, keeps walking.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bob_steps = 0;
    let after = loop {
        let now = leaves(&etcd);
        for l in now.iter().filter(|l| l.region != victim) {
            let was = before
                .iter()
                .find(|b| b.region == l.region)
                .unwrap_or_else(|| panic!("a new region {l:?}"));
            assert_eq!(l, was, "a region besides {victim} changed");
        }
        let v = &leaves_of(&now, "-1,-1")[victim];
        if v.owner != "shard-3" {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "{victim} never failed over: {v:?}"
        );
        let answer = bob.command(if bob_steps % 2 == 0 { "n" } else { "s" });
        assert!(
            answer.starts_with("You walk"),
            "Bob, while shard-3 is dead: {answer:?}"
        );
        bob_steps += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(bob_steps > 0, "the failover came before Bob could walk");
    assert!(
        ticks(s2.metrics) > ticks_at_kill + 10.0,
        "shard-2 stopped ticking while shard-3 was dead"
    );
    assert_one_live_owner_per_point(&after, &["shard-1", "shard-2"], "after the failover");
    let new = leaves_of(&after, "-1,-1");
    let v = &new[victim];
    assert!(
        v.owner_live && (v.owner == "shard-1" || v.owner == "shard-2"),
        "{v:?}"
    );
    assert!(v.epoch > old[victim].epoch, "{v:?} after {:?}", old[victim]);
    for (region, l) in &new {
        if region != victim {
            assert_eq!(l, &old[region], "sibling {region} changed");
        }
    }
    assert_eq!(
        after
            .iter()
            .filter(|l| l.region != victim)
            .cloned()
            .collect::<Vec<_>>(),
        before
            .iter()
            .filter(|l| l.region != victim)
            .cloned()
            .collect::<Vec<_>>(),
        "only {victim} changed"
    );

    // The router puts Ann back on the new owner, where she stood.
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        let text = ann.command("where");
        if let Some(w) = Where::parse(&text).filter(|w| w.shard == v.owner) {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "Ann was not put back on {}: {text:?}",
            v.owner
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(back.cell, victim);
    assert!(back.distance_xz(&at_ann) < 0.5, "Ann moved: {back:?}");
    // Mira came back from the checkpoint, not from the world file.
    ann.command("say hello Mira");
    let greeted = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert_eq!(
        greeting_count(&greeted),
        greetings + 1,
        "Mira's state after the failover: {greeted}"
    );
    let new_owner = if v.owner == "shard-1" {
        s1.metrics
    } else {
        s2.metrics
    };
    assert_count(&etcd, &live, world, "after the failover");
    assert_eq!(
        region_gauge(new_owner, ENTITIES, victim),
        in_victim,
        "{victim} reopened without all of its entities"
    );
    assert_eq!(
        region_gauge(s2.metrics, ENTITIES, "-1,-1/1"),
        in_bobs,
        "Bob's quadrant"
    );
    assert_eq!(bob.where_().shard, "shard-2");
    assert_no_stale_region_gauges(&etcd, &live);
}

/// The count in a greeter's "You again, Ann? That's N greetings so far."
fn greeting_count(line: &str) -> u32 {
    line.split("That's ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a repeat greeting: {line:?}"))
}

/// Cell -1,0 split, its south-east quadrant on shard-2 and the rest on
/// shard-1; Cat paces north and south across the quadrant border (z = 32,
/// from shard-1's quadrant into shard-2's) while `ctl merge -1,0` moves
/// that quadrant to shard-1 and merges the four. Afterwards the cell is
/// whole again (one row, `-1,0`) on shard-1, every point of the map has one
/// live owner, Cat stands in it exactly once (one player in the whole
/// world's gauges, in region -1,0 of shard-1) and still answers, and the
/// entity count is what it was.
#[test]
fn a_merge_while_a_player_crosses_the_quadrant_border_leaves_one_whole_cell() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator").not_rebalancing(),
    );
    let s1 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let s2 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-2"));
    let metrics = [s1.metrics, s2.metrics];
    let by_id = [("shard-1", s1.metrics), ("shard-2", s2.metrics)];
    let placed = wait_placed(&etcd);
    wait_ticking(&metrics, 10.0);
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));
    let whole = leaves_of(&placed, "-1,0")["-1,0"].clone();
    assert_eq!(whole.owner, "shard-1");

    let (ok, out, err) = ops(&etcd, &ca, &["split", "-1,0"]);
    assert!(ok, "ctl split -1,0: {out} {err}");
    let (ok, out, err) = ops(&etcd, &ca, &["move", "-1,0/3", "shard-2"]);
    assert!(ok, "ctl move -1,0/3 shard-2: {out} {err}");

    // Cat stands 3 m north of the border; two steps south take her into
    // shard-2's quadrant, two north back.
    let mut cat = TelnetClient::create(router.telnet, "Cat", PW);
    walk_to(&mut cat, -5.0, 29.0);
    let mut sides = BTreeSet::new();
    for dir in ["s", "s", "n", "n"] {
        cat.command(dir);
        let w = cat.where_();
        sides.insert((w.cell, w.shard));
    }
    assert_eq!(
        sides,
        BTreeSet::from([
            ("-1,0/1".to_string(), "shard-1".to_string()),
            ("-1,0/3".to_string(), "shard-2".to_string())
        ]),
        "Cat's pacing crosses the quadrant border between the shards"
    );
    let world = settled_count(&etcd, &by_id);
    let merges_before = counter(s1.metrics, "tessera_shard_merges_total");

    let flags = WalkFlags::paused();
    let mut walker = Walker::start(cat, &["s", "s", "n", "n"], flags.clone(), WALK);
    flags.paused.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));
    let mut merge = ctl_command(&etcd, Some(&operator_credential(&ca)), &["merge", "-1,0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tessera ctl merge");
    let started = Instant::now();
    // While it runs, every point of the map has one live owner.
    let status = loop {
        if let Some(status) = merge.try_wait().expect("wait for ctl merge") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "ctl merge never returned"
        );
        assert_one_live_owner_per_point(&leaves(&etcd), &["shard-1", "shard-2"], "merging");
        walker.check();
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = merge.wait_with_output().expect("ctl merge output");
    assert!(
        status.success(),
        "ctl merge -1,0: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // She walks on across where the border was.
    std::thread::sleep(Duration::from_secs(1));
    pause(&flags);
    flags.stop.store(true, Ordering::Relaxed);
    let mut log = walker.finish();
    assert!(log.steps > 4, "Cat walked only {} steps", log.steps);

    let map = leaves(&etcd);
    assert_one_live_owner_per_point(&map, &["shard-1", "shard-2"], "after the merge");
    let merged: Vec<Leaf> = leaves_of(&map, "-1,0").into_values().collect();
    assert_eq!(merged.len(), 1, "{merged:?}");
    let merged = &merged[0];
    assert_eq!(merged.region, "-1,0", "{merged:?}");
    assert_eq!(
        merged.owner, "shard-1",
        "the shard that owned most quadrants"
    );
    assert!(
        merged.epoch > whole.epoch + 2,
        "{merged:?}: split, move, merge"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(s1.metrics, "tessera_shard_merges_total") <= merges_before {
        assert!(Instant::now() < deadline, "shard-1 never merged -1,0");
        std::thread::sleep(Duration::from_millis(50));
    }

    let w = log.client.where_();
    assert_eq!(
        (w.cell.as_str(), w.shard.as_str()),
        ("-1,0", "shard-1"),
        "{w:?}"
    );
    assert_count(&etcd, &by_id, world, "after the merge");
    assert_eq!(
        region_gauge(s1.metrics, PLAYERS, "-1,0"),
        1.0,
        "Cat in the merged cell"
    );
    let players = read_gauge(&etcd, &by_id, PLAYERS);
    assert_eq!(
        players.owned, 1.0,
        "Cat counted once over the regions of every shard: {:?}",
        players.rows
    );
    assert_eq!(router_connections(router.metrics), 1.0);
    assert_no_stale_region_gauges(&etcd, &by_id);
}

/// How the leading coordinator goes during a split.
#[derive(Clone, Copy, Debug)]
enum KillLeader {
    /// kill -9 as soon as the request is in etcd (it may have carried it
    /// out already, or not).
    AtOnce,
    /// Frozen (SIGSTOP) before the request, killed once the request is in
    /// etcd: the standby must carry it out.
    Frozen,
}

/// Two coordinators. `ctl split` of the spawn cell -1,0, with the leader
/// killed as soon as the request is in etcd; then `ctl split -1,0/1`
/// (Dan's quadrant) with the leader frozen before the request and killed
/// after. Each time the standby takes over and the split completes, or
/// the request is dropped cleanly; all along and afterwards every point of
/// the map has exactly one live owner (each cell's leaves tile it), no
/// reshape request is left, the entity count is exact and Dan, pacing in
/// the cell, answers from the region the map says.
#[test]
fn killing_the_leading_coordinator_during_a_split_leaves_one_owner_per_point() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let peek = EtcdPeek::connect(&etcd);
    let ca = ca_init(dir.path(), &etcd);
    let spec = |id| CoordinatorSpec::local(&etcd, id).not_rebalancing();
    let mut coords: BTreeMap<String, Role> = BTreeMap::new();
    coords.insert(
        "coordinator-a".into(),
        coordinator(dir.path(), &ca, &spec("coordinator-a")),
    );
    let s1 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let s2 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-2"));
    coords.insert(
        "coordinator-b".into(),
        coordinator(dir.path(), &ca, &spec("coordinator-b")),
    );
    let metrics = [s1.metrics, s2.metrics];
    let by_id = [("shard-1", s1.metrics), ("shard-2", s2.metrics)];
    wait_placed(&etcd);
    wait_ticking(&metrics, 10.0);
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));

    // Dan paces east and west at the spawn (-5, 5), in -1,0 (its quadrant
    // 1, and then that quadrant's quadrant 1).
    let dan = TelnetClient::create(router.telnet, "Dan", PW);
    let world = settled_count(&etcd, &by_id);
    let flags = WalkFlags::paused();
    let mut walker = Walker::start(dan, &["w", "e"], flags.clone(), WALK);
    flags.paused.store(false, Ordering::Relaxed);

    let rounds = [("-1,0", KillLeader::AtOnce), ("-1,0/1", KillLeader::Frozen)];
    for (region, how) in rounds {
        let cell = region.split('/').next().expect("a cell");
        let cell_dir = format!("cells/{cell}");
        let tree_before = peek.records(&cell_dir);
        let old = leaves_of(&leaves(&etcd), cell);
        assert!(old.contains_key(region), "{region} is not a leaf: {old:?}");
        let leader_id = leader(&etcd).expect("a leader");
        let leader_pid = coords[&leader_id].pid().to_string();
        if let KillLeader::Frozen = how {
            let stopped = std::process::Command::new("kill")
                .args(["-STOP", &leader_pid])
                .status()
                .expect("kill -STOP");
            assert!(stopped.success());
        }
        let mut split = ctl_command(&etcd, Some(&operator_credential(&ca)), &["split", region])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tessera ctl split");
        // The request in etcd, or (a split carried out at once deletes
        // it) the cell's tree changed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while peek.records("reshapes/").is_empty() && peek.records(&cell_dir) == tree_before {
            assert!(Instant::now() < deadline, "no split request appeared");
            std::thread::sleep(Duration::from_millis(1));
        }
        coords.get_mut(&leader_id).expect("the leader").kill();
        let killed = Instant::now();

        let status = loop {
            if let Some(status) = split.try_wait().expect("wait for ctl split") {
                break status;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "ctl split {region} never returned after the leader died"
            );
            assert_one_live_owner_per_point(
                &leaves(&etcd),
                &["shard-1", "shard-2"],
                &format!("splitting {region} ({how:?})"),
            );
            walker.check();
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = killed.elapsed();
        let out = split.wait_with_output().expect("ctl split output");
        let after = leaves(&etcd);
        assert_one_live_owner_per_point(&after, &["shard-1", "shard-2"], region);
        let now = leaves_of(&after, cell);
        let owner = old[region].owner.clone();
        let outcome = if status.success() {
            let quadrants: Vec<String> = (0..4).map(|q| format!("{region}/{q}")).collect();
            let epoch = now[&quadrants[0]].epoch;
            assert!(epoch > old[region].epoch, "{now:?}");
            for q in &quadrants {
                assert_eq!(
                    (now[q].owner.as_str(), now[q].epoch),
                    (owner.as_str(), epoch),
                    "{q} of the split {now:?}"
                );
            }
            assert!(!now.contains_key(region), "{region} still a leaf: {now:?}");
            "completed"
        } else {
            assert_eq!(now, old, "a failed split changed the map: {out:?}");
            "dropped"
        };
        assert_eq!(
            peek.records("reshapes/"),
            vec![],
            "a reshape request was left behind"
        );
        // The standby leads (the split may have been done before the kill).
        let deadline = Instant::now() + Duration::from_secs(8);
        while leader(&etcd).is_none_or(|l| l == leader_id) {
            assert!(
                Instant::now() < deadline,
                "the standby did not take over from {leader_id}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Dan stands still while the world is counted.
        pause(&flags);
        walker.check();
        assert_count(&etcd, &by_id, world, region);
        flags.paused.store(false, Ordering::Relaxed);
        eprintln!(
            "leader killed during the split of {region} ({how:?}): split {outcome} {} ms after \
             the kill; {}",
            took.as_millis(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        // The killed coordinator comes back as the standby.
        coords.insert(
            leader_id.clone(),
            coordinator(
                dir.path(),
                &ca,
                &CoordinatorSpec::local(&etcd, &leader_id).not_rebalancing(),
            ),
        );
    }

    pause(&flags);
    flags.stop.store(true, Ordering::Relaxed);
    let mut log = walker.finish();
    assert!(log.steps > 10, "Dan walked only {} steps", log.steps);
    let map = leaves(&etcd);
    let w = log.client.where_();
    let here = leaves_of(&map, "-1,0");
    let leaf = here
        .get(&w.cell)
        .unwrap_or_else(|| panic!("Dan is in {}, not a leaf of -1,0: {here:?}", w.cell));
    assert!(near_region(&w.cell, w.x, w.z), "{w:?}");
    assert_eq!(w.shard, leaf.owner, "{w:?}");
    assert_eq!(
        router_connections(router.metrics),
        1.0,
        "Dan was disconnected"
    );
    assert_no_stale_region_gauges(&etcd, &by_id);
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The merge target seeing the last quadrant's move and the merge in one
/// reconcile: shard-1 is frozen (SIGSTOP, as a long pause or a slow tick
/// would hold it) from the moment it has restored the quadrant the merge
/// moves to it (`"restored"` in its migration record) until the
/// coordinator has flipped that quadrant's owner and merged the cell. When
/// it resumes, the map shows the merged cell at once. What it restored is
/// part of that cell: Whiskers and Cat, who stands in the quadrant, must
/// be in the merged cell (the entity count is exact, one player counted),
/// and Cat walks on, answered by shard-1.
#[test]
fn a_merge_target_that_sees_the_move_and_the_merge_at_once_loses_nothing() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let peek = EtcdPeek::connect(&etcd);
    let ca = ca_init(dir.path(), &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator").not_rebalancing(),
    );
    let s1 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let s2 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-2"));
    let by_id = [("shard-1", s1.metrics), ("shard-2", s2.metrics)];
    wait_placed(&etcd);
    wait_ticking(&[s1.metrics, s2.metrics], 10.0);
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));

    let (ok, out, err) = ops(&etcd, &ca, &["split", "-1,0"]);
    assert!(ok, "ctl split -1,0: {out} {err}");
    let (ok, out, err) = ops(&etcd, &ca, &["move", "-1,0/3", "shard-2"]);
    assert!(ok, "ctl move -1,0/3 shard-2: {out} {err}");
    let mut cat = TelnetClient::create(router.telnet, "Cat", PW);
    walk_to(&mut cat, -5.0, 38.0);
    let w = cat.where_();
    assert_eq!((w.cell.as_str(), w.shard.as_str()), ("-1,0/3", "shard-2"));
    let world = settled_count(&etcd, &by_id);
    let in_quadrant = region_gauge(s2.metrics, ENTITIES, "-1,0/3");
    assert!(in_quadrant >= 1.0, "Cat is in -1,0/3");

    let mut merge = ctl_command(&etcd, Some(&operator_credential(&ca)), &["merge", "-1,0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tessera ctl merge");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peek
        .migrations()
        .iter()
        .any(|(_, v)| v.contains("\"restored\""))
    {
        assert!(
            Instant::now() < deadline,
            "the merge's move never reached `restored`: {:?}",
            peek.migrations()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(s1.role.pid(), "-STOP");
    let frozen = Instant::now();
    let merged_in_etcd = loop {
        let tree = peek.records("cells/-1,0");
        if tree.iter().all(|(_, v)| !v.contains("split")) {
            break true;
        }
        if frozen.elapsed() > Duration::from_millis(1500) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    signal(s1.role.pid(), "-CONT");
    assert!(
        merged_in_etcd,
        "the coordinator did not merge within 1.5 s while shard-1 was frozen"
    );
    let status = merge.wait().expect("ctl merge");
    assert!(status.success(), "ctl merge -1,0 failed");

    let merged = leaves_of(&leaves(&etcd), "-1,0");
    let names: Vec<&str> = merged.keys().map(String::as_str).collect();
    assert_eq!(names, ["-1,0"], "{merged:?}");
    assert_eq!(merged["-1,0"].owner, "shard-1");
    assert_count(&etcd, &by_id, world, "after the merge");
    let players = read_gauge(&etcd, &by_id, PLAYERS);
    assert_eq!(players.owned, 1.0, "Cat counted once: {:?}", players.rows);
    let answer = cat.command("n");
    assert!(
        answer.starts_with("You walk"),
        "Cat, after the merge: {answer:?}"
    );
    let w = cat.where_();
    assert_eq!((w.cell.as_str(), w.shard.as_str()), ("-1,0", "shard-1"));
    assert_no_stale_region_gauges(&etcd, &by_id);
}
