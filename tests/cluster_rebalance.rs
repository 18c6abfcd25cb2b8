//! The rebalancer against real processes and a real etcd: a shard that
//! joins gets its share of the world by live migration, and a crowd of QUIC
//! players in one cell gets its shard relieved. `ctl rebalance --dry-run`
//! and `ctl top` are checked on the way. Each test runs on the shared test
//! cluster (`support_cluster::cluster::Cluster`).

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::eventually;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support_cluster::cluster::{Cluster, MemberSpec};
use support_cluster::PW;

/// A copy of the default world in `dir` whose only NPCs are two crowds of
/// busy clerks (their script works hard every time it thinks), 30 in cell
/// -1,0 and 20 in cell -1,-1: a load that stays put and costs the same
/// tick after tick.
fn world_with_busy_crowds(dir: &std::path::Path) -> String {
    let to = dir.join("world-busy");
    std::fs::create_dir_all(to.join("scripts")).unwrap();
    let toml = std::fs::read_to_string(format!("{}/world.toml", support_cluster::WORLD)).unwrap();
    // Everything before the first NPC; the NPC tables come last.
    let kept = toml.split("[[npc]]").next().unwrap();
    assert!(toml.contains("[[npc]]"));
    let crowds = r#"
[[npc]]
name = "Clerk"
description = "Busy."
pos = [-30, 0, 30]
script = "busy"
count = 30
scatter = 10

[[npc]]
name = "Porter"
description = "Busy too."
pos = [-30, 0, -30]
script = "busy"
count = 20
scatter = 10
"#;
    std::fs::write(to.join("world.toml"), format!("{kept}{crowds}")).unwrap();
    std::fs::write(
        to.join("scripts/busy.rhai"),
        "fn on_tick() { let x = 0; for i in 0..3000 { x += i; } state.x = x; }\n",
    )
    .unwrap();
    to.display().to_string()
}

/// A coordinator that places cells 1.5 s after the first shard registers.
fn coordinator(id: &str) -> MemberSpec {
    MemberSpec::coordinator(id).settle_ms(1500)
}

/// `ctl cells --json`.
fn cells(c: &Cluster) -> Vec<Value> {
    let (ok, out, err) = c.ctl(&["cells", "--json"]);
    assert!(ok, "ctl cells: {err}");
    serde_json::from_str::<Value>(&out)
        .expect("ctl cells --json")
        .as_array()
        .expect("an array")
        .clone()
}

fn per_owner(cells: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for c in cells {
        *n.entry(c["owner"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    n
}

/// Entities of every cell, once every cell's owner reports it.
fn reported_entities(c: &Cluster) -> Option<u64> {
    cells(c)
        .iter()
        .map(|c| c["entities"].as_u64())
        .sum::<Option<u64>>()
}

/// Each shard's load as the rebalancer models it: the sum of the mean step
/// times of the cells the map gives it (milliseconds), from `ctl cells`.
/// `None` while some cell is not in its owner's report yet.
fn loads(cells: &[Value]) -> Option<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for c in cells {
        let ms = c["cell_tick_ms"].as_f64()?;
        *out.entry(c["owner"].as_str()?.to_string()).or_insert(0.0) += ms;
    }
    Some(out)
}

#[test]
fn a_joining_shard_gets_its_share_by_live_migration() {
    let mut c = Cluster::new();
    c.start(coordinator("coordinator"));
    c.start(MemberSpec::shard("shard-1"));
    c.start(MemberSpec::shard("shard-2"));

    // The first placement splits the 16 cells 8/8, and every cell reports.
    let mut n = BTreeMap::new();
    let before = eventually(Duration::from_secs(20), || {
        n = per_owner(&cells(&c));
        if n.values().sum::<usize>() == 16 && n.len() == 2 {
            if let Some(e) = reported_entities(&c) {
                assert_eq!(n["shard-1"], 8);
                return Some(e);
            }
        }
        None
    })
    .unwrap_or_else(|| panic!("no placement: {n:?}"));
    assert!(before > 0, "the world has NPCs");
    // Balanced: nothing to do, and the dry run says so.
    let (ok, plan, err) = c.ctl(&["rebalance", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(plan.starts_with("nothing to move"), "{plan}");

    // A third shard joins; it gets its share (16/3, rounded down), a cell
    // at a time, by live migration.
    let joined = Instant::now();
    c.start(MemberSpec::shard("shard-3"));
    let counts = eventually(Duration::from_secs(40), || {
        n = per_owner(&cells(&c));
        (n.get("shard-3").copied().unwrap_or(0) >= 5).then(|| n.clone())
    })
    .unwrap_or_else(|| panic!("shard-3 never got 5 cells: {n:?}"));
    eprintln!(
        "shard-3 got its share in {} ms: {counts:?}",
        joined.elapsed().as_millis()
    );
    // It stops there: no more moves once shares are even, none back.
    std::thread::sleep(Duration::from_secs(4));
    let all = cells(&c);
    let settled = per_owner(&all);
    assert_eq!(settled, counts, "cells kept moving");
    assert_eq!(settled["shard-3"], 5);
    assert!(settled["shard-1"].abs_diff(settled["shard-2"]) <= 1);
    for cell in &all {
        let epoch = cell["epoch"].as_u64().unwrap();
        let moved = cell["owner"] == "shard-3";
        assert_eq!(epoch, if moved { 2 } else { 1 }, "{cell}");
    }
    // Live migration loses and duplicates nothing.
    let mut entities = None;
    eventually(Duration::from_secs(10), || {
        entities = reported_entities(&c);
        (entities == Some(before)).then_some(())
    })
    .unwrap_or_else(|| panic!("entities {entities:?}, before {before}"));

    // `ctl top` once: shards, then the hottest cells.
    let (ok, top, err) = c.ctl(&["top", "--iterations", "1"]);
    assert!(ok, "{err}");
    assert!(
        top.starts_with("\x1b[2J\x1b[H"),
        "clears the screen: {top:?}"
    );
    assert!(top.contains("leader: coordinator"), "{top}");
    let shard_rows = top.lines().filter(|l| l.starts_with("shard-")).count();
    assert_eq!(shard_rows, 3, "{top}");
    assert!(top.contains("STEP_MS"), "{top}");
    // And as JSON: one object per refresh.
    let (ok, top, err) = c.ctl(&[
        "top",
        "--iterations",
        "2",
        "--interval",
        "0.2",
        "--json",
        "--cells",
        "4",
    ]);
    assert!(ok, "{err}");
    let frames: Vec<Value> = top
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 2, "{top}");
    for f in &frames {
        assert_eq!(f["shards"].as_array().unwrap().len(), 3);
        let hot = f["hottest_cells"].as_array().unwrap();
        assert_eq!(hot.len(), 4);
        let costs: Vec<f64> = hot
            .iter()
            .map(|c| c["cell_tick_ms"].as_f64().unwrap_or(0.0))
            .collect();
        assert!(costs.windows(2).all(|w| w[0] >= w[1]), "{costs:?}");
    }
}

/// `n` QUIC players in two crowds: the first half arrive and step north
/// from the spawn (cell -1,0) into cell -1,-1, then the second half arrive
/// and stay; then all shuffle east and west until `stop`.
/// Returns how many were still connected.
async fn crowds(
    quic: std::net::SocketAddr,
    cert: std::path::PathBuf,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    use std::sync::atomic::Ordering;
    let der = std::fs::read(&cert).expect("router certificate");
    let ep = tessera_client::endpoint(rustls::pki_types::CertificateDer::from(der))
        .expect("QUIC endpoint");
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = tessera_client::Client::connect(&ep, quic)
            .await
            .unwrap_or_else(|e| panic!("bot {i} connect: {e}"));
        c.create(&format!("Bot{i}"), PW)
            .await
            .unwrap_or_else(|e| panic!("bot {i} create: {e}"));
        // The first half step north four times (3 m each, on ground the
        // world keeps clear for tests), from z = 5 to z = -7, before the
        // rest arrive and stand in their way.
        if i < n / 2 {
            for _ in 0..4 {
                c.command("n").await.expect("step north");
            }
        }
        clients.push(c);
    }
    // Then everyone shuffles east and west by a metre or two, which keeps
    // each crowd in its cell.
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let dir = if (tick / 3).is_multiple_of(2) {
            1.0
        } else {
            -1.0
        };
        for c in clients.iter_mut() {
            let _ = c.send_input(dir, 0.0, 0.0);
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = clients.len();
    for c in clients {
        c.logout().await;
    }
    n
}

fn cell_name(c: &Value) -> String {
    format!("{},{}", c["cell"]["x"], c["cell"]["z"])
}

/// Two crowds of QUIC players on one shard make it overloaded (measured
/// against a `--tick-budget-ms` derived from what the crowds cost here);
/// the coordinator moves one crowded cell to the other shard, and no shard
/// stays over budget. (A single crowded cell cannot be split, so relief
/// there can only mean emptying its shard of everything else: the planner's
/// unit tests cover that case.)
/// Players among the crowds (half in each).
const PLAYERS: usize = 6;

#[test]
fn crowds_on_one_shard_get_spread_over_shards() {
    let mut c = Cluster::new();
    // Two crowds of busy NPCs are the load; a few players stand among them.
    let world = world_with_busy_crowds(c.path());
    // First without rebalancing, to measure what the crowds cost.
    c.start(coordinator("quiet").not_rebalancing().world(&world));
    c.start(MemberSpec::shard("shard-1").world(&world));
    c.start(MemberSpec::shard("shard-2").world(&world));
    c.start(MemberSpec::router("router-1").world(&world));
    let (quic, cert) = (c.quic("router-1"), c.router_cert());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bots = runtime.spawn(crowds(quic, cert, PLAYERS, stop.clone()));

    // Wait until both crowds stand in their cells (both on shard-1) and
    // every cell reports its cost.
    let mut all = Vec::new();
    let crowded: Vec<String> = eventually(Duration::from_secs(40), || {
        all = cells(&c);
        let crowded: Vec<String> = all
            .iter()
            .filter(|c| c["entities"].as_u64().unwrap_or(0) >= 15)
            .map(cell_name)
            .collect();
        (crowded.len() == 2 && loads(&all).is_some()).then_some(crowded)
    })
    .unwrap_or_else(|| {
        panic!(
            "the crowds never gathered: {:?}",
            all.iter()
                .map(|c| (cell_name(c), c["players"].clone()))
                .collect::<Vec<_>>()
        )
    });
    // Let the per-cell means (64 ticks) fill with the crowds moving.
    std::thread::sleep(Duration::from_secs(3));
    let all = cells(&c);
    let before = loads(&all).expect("every cell reports");
    let cost = |name: &str| {
        all.iter()
            .find(|c| cell_name(c) == name)
            .and_then(|c| c["cell_tick_ms"].as_f64())
            .unwrap()
    };
    eprintln!(
        "crowds in {} ({:.2} ms) and {} ({:.2} ms); loads {before:?}",
        crowded[0],
        cost(&crowded[0]),
        crowded[1],
        cost(&crowded[1])
    );
    let (a, b) = (cost(&crowded[0]), cost(&crowded[1]));
    let (a, b) = (a.max(b), a.min(b));
    let crowded_ms = before["shard-1"];
    let idle_ms = before["shard-2"];
    assert!(idle_ms < crowded_ms / 3.0, "{before:?}");
    // A budget at which shard-1 is over the high watermark (80 %) but
    // would be under it without the cheaper crowd, which fits on shard-2
    // under the low watermark (60 %): the middle of that range. (The two
    // crowds do not cost quite the same, so the range depends on the
    // machine; it is printed.)
    let lowest = ((crowded_ms - b) / 0.8).max((idle_ms + b) / 0.6);
    let highest = crowded_ms / 0.8;
    assert!(
        lowest < 0.95 * highest,
        "no budget makes one crowd relieve the other: {a:.2} ms and {b:.2} ms"
    );
    let budget = (lowest + highest) / 2.0;
    eprintln!("budget {budget:.2} ms (from {lowest:.2} to {highest:.2})");
    let budget_arg = format!("{budget:.4}");

    // The dry run plans moving one crowd off shard-1, and moves nothing.
    let (ok, plan, err) = c.ctl(&[
        "rebalance",
        "--dry-run",
        "--json",
        "--tick-budget-ms",
        &budget_arg,
    ]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&plan).expect("plan JSON");
    let planned: Vec<&Value> = plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w.as_array().unwrap())
        .collect();
    assert_eq!(planned.len(), 1, "{plan}");
    let m = planned[0];
    assert_eq!(
        (m["from"].as_str(), m["to"].as_str()),
        (Some("shard-1"), Some("shard-2"))
    );
    assert_eq!(m["reason"], "overloaded");
    assert!(
        crowded
            .iter()
            .any(|c| *c == format!("{},{}", m["cell"]["x"], m["cell"]["z"])),
        "{m}"
    );
    assert!(m["to_load_after"].as_f64().unwrap() < 0.6, "{m}");
    assert!(m["from_load_after"].as_f64().unwrap() <= 0.8, "{m}");
    let (_, table, _) = c.ctl(&["rebalance", "--dry-run", "--tick-budget-ms", &budget_arg]);
    eprintln!("{table}");
    // The plan lists the splits it would make first (these crowds cost
    // more than 35 % of the tight budget), then the moves.
    assert!(table.contains("STEP  REGION"), "{table}");
    assert!(table.contains("overloaded"), "{table}");
    assert!(
        cells(&c).iter().all(|c| c["epoch"] == 1),
        "a dry run moved a cell"
    );

    // Now a coordinator that rebalances against that budget takes over.
    c.stop_within("quiet", Duration::from_secs(10));
    let started = Instant::now();
    c.start(
        coordinator("rebalancer")
            // Relief by moving whole cells is what this test is about:
            // no splits (tests/cluster_regions.rs and the planner's unit
            // tests cover those).
            .args(&[
                "--tick-budget-ms",
                &budget_arg,
                "--sustain-reports",
                "2",
                "--split-above",
                "100",
            ])
            .world(&world),
    );
    // Relieved: a crowd moved to shard-2, and no shard is over its budget
    // in three reads in a row, a second apart.
    let mut good = 0;
    let mut first_good = None;
    let mut last = None;
    let relieved_after = eventually(Duration::from_secs(45), || {
        let all = cells(&c);
        let moved = all
            .iter()
            .any(|c| crowded.contains(&cell_name(c)) && c["owner"] == "shard-2");
        match loads(&all) {
            Some(l) if moved && l.values().all(|ms| *ms < budget) => {
                first_good.get_or_insert(started.elapsed());
                good += 1;
            }
            l => {
                good = 0;
                first_good = None;
                last = Some((moved, l));
            }
        }
        if good >= 3 {
            return first_good;
        }
        std::thread::sleep(Duration::from_millis(900));
        None
    })
    .unwrap_or_else(|| {
        panic!(
            "not relieved: (moved, loads) {last:?}, budget {budget:.3} ms; coordinator log:\n{}",
            c.role("rebalancer").stderr()
        )
    });
    eprintln!(
        "relieved {} ms after the rebalancing coordinator started (it waits for 2 reports over the watermark)",
        relieved_after.as_millis()
    );
    let all = cells(&c);
    eprintln!("loads after relief: {:?}", loads(&all));
    eprintln!("{}", c.ctl(&["cells"]).1);
    // The crowds ended on different shards. (Costs on a shared machine
    // move around: if a crowd's cost alone came near the high watermark,
    // the hot-cell rule may also have moved idle cells; so count, do not
    // pin, the moves.)
    let owner = |name: &str| {
        all.iter()
            .find(|c| cell_name(c) == name)
            .map(|c| c["owner"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_ne!(owner(&crowded[0]), owner(&crowded[1]));
    let moved = all
        .iter()
        .filter(|c| c["epoch"].as_u64().unwrap_or(0) >= 2)
        .count();
    eprintln!("{moved} cells moved");
    // The moved crowd's players are still there.
    let players: u64 = all.iter().map(|c| c["players"].as_u64().unwrap_or(0)).sum();
    assert_eq!(players, PLAYERS as u64);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = runtime.block_on(bots).expect("bots");
    assert_eq!(n, PLAYERS);
}

/// `tessera ctl rebalance` (not a dry run) carries out its plan wave by
/// wave while the coordinator itself does not rebalance: a second shard
/// joins a world placed on one, and gets half of it.
#[test]
fn ctl_rebalance_carries_out_its_plan() {
    let mut c = Cluster::new();
    c.start(coordinator("coordinator").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    let before = eventually(Duration::from_secs(20), || {
        if per_owner(&cells(&c)).get("shard-1") == Some(&16) {
            return reported_entities(&c);
        }
        None
    })
    .expect("no placement");
    c.start(MemberSpec::shard("shard-2"));
    // Wait for shard-2's first load report: the planner needs it.
    let mut plan = String::new();
    eventually(Duration::from_secs(10), || {
        plan = c.ctl(&["rebalance", "--dry-run"]).1;
        plan.contains("join-balance").then_some(())
    })
    .unwrap_or_else(|| panic!("no plan for shard-2: {plan}"));
    // The coordinator does not move anything on its own...
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(per_owner(&cells(&c)).get("shard-2"), None);
    // ...ctl rebalance does (as an operator: it moves cells), and says so.
    let started = Instant::now();
    let (ok, out, err) = c.ops(&["rebalance"]);
    assert!(ok, "{out}\n{err}");
    eprintln!(
        "{out}ctl rebalance took {} ms",
        started.elapsed().as_millis()
    );
    assert!(out.contains("rebalanced: 8 cells moved"), "{out}");
    assert_eq!(out.matches("join-balance)").count(), 8, "{out}");
    let n = per_owner(&cells(&c));
    assert_eq!((n["shard-1"], n["shard-2"]), (8, 8));
    let (_, plan, _) = c.ctl(&["rebalance", "--dry-run"]);
    assert!(plan.starts_with("nothing to move"), "{plan}");
    eventually(Duration::from_secs(10), || {
        (reported_entities(&c) == Some(before)).then_some(())
    })
    .expect("entities lost or duplicated");
}
