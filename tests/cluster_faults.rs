//! Faults in a cluster of separate processes against a real etcd
//! (DESIGN.md invariants 1, 2, 4, 6):
//! - a shard cut off from etcd (from inside a network namespace) stops
//!   simulating before any other shard takes its cells;
//! - the leading coordinator killed at several points of a migration: the
//!   migration completes or is cancelled cleanly, never a cell with two
//!   owners or none, no entity lost or duplicated;
//! - a shard whose simulation thread dies exits non-zero and gives up its
//!   registration at once, so its cells fail over without waiting out the lease;
//! - a rolling restart (SIGTERM on each shard in turn) drops no player;
//! - players pacing across shard borders for 30 s: the entity count never
//!   changes and nobody is disconnected.
//!
//! Timings these tests print are recorded in docs/performance.md.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{TelnetClient, TestDir};
use etcd::EtcdServer;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};
use support_cluster::*;

/// Partition fencing (invariant 1): shard-2 runs in a network namespace and
/// reaches etcd at an address of its own; a blackhole route inside the
/// namespace cuts it off from etcd (its cluster bus and metrics stay
/// reachable). It must stop simulating, and exit, before its lease expires
/// and the coordinator gives its cells to shard-1: at no moment do two
/// shards simulate the same cell.
#[test]
fn a_shard_cut_off_from_etcd_stops_simulating_before_its_cells_move() {
    let dir = TestDir::new();
    let ns = Netns::create();
    let etcd = EtcdServer::start_also_on(&[ns.host_ip2]);
    let ca = ca_init(dir.path(), &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator-a"),
    );
    let s1 = shard(
        dir.path(),
        &ca,
        &ShardSpec {
            ip: ns.host_ip,
            ..ShardSpec::local(&etcd, "shard-1")
        },
    );
    let mut s2 = shard(
        dir.path(),
        &ca,
        &ShardSpec {
            id: "shard-2",
            lease_ttl_secs: 2,
            etcd_url: etcd.client_url_on(ns.host_ip2),
            etcd_tls: etcd.tls(),
            ip: ns.inner_ip,
            netns: Some(&ns.name),
            rust_log: "warn,tessera_shard::sim=info",
            persistence: None,
            world: WORLD.into(),
            assets: None,
            extra: &[],
        },
    );
    wait_ticking(&[s1.metrics, s2.metrics], 10.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let rows = owners(&etcd);
        let by: BTreeSet<&str> = rows.iter().map(|r| r.owner.as_str()).collect();
        if rows.len() == 16 && by.len() == 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "cells not placed: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let cut_cells: BTreeMap<String, u64> = before
        .iter()
        .filter(|r| r.owner == "shard-2")
        .map(|r| (r.cell.clone(), r.epoch))
        .collect();
    assert!(!cut_cells.is_empty());
    let world = settled_entities(&[s1.metrics, s2.metrics]);

    let cut = SystemTime::now();
    ns.cut_off(ns.host_ip2);

    // Poll until every one of shard-2's cells has a new owner: shard-2's
    // exit and tick counter, and the cell map as `tessera ctl` shows it.
    let mut exited: Option<(SystemTime, std::process::ExitStatus)> = None;
    let mut last_ticks = (0.0, cut);
    let mut last_live_read: Option<SystemTime> = None; // ctl still saw shard-2 registered
    let mut last_old_owner_read: Option<SystemTime> = None; // ctl still saw it own its cells
    let mut new_owner_seen: Option<SystemTime> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while new_owner_seen.is_none() {
        assert!(
            Instant::now() < deadline,
            "shard-2's cells never got a new owner"
        );
        if exited.is_none() {
            if let Some(status) = s2.role.try_exit() {
                exited = Some((SystemTime::now(), status));
            } else if let Some(text) = try_scrape(s2.metrics) {
                let n: f64 = common::metric_samples(&text, "tessera_shard_tick_seconds_count")
                    .iter()
                    .map(|(_, v)| v)
                    .sum();
                if n != last_ticks.0 {
                    last_ticks = (n, SystemTime::now());
                }
            }
        }
        let read_started = SystemTime::now();
        let rows = owners(&etcd);
        let mut moved = 0;
        for r in rows.iter().filter(|r| cut_cells.contains_key(&r.cell)) {
            if r.owner == "shard-2" {
                if r.owner_live {
                    last_live_read = Some(read_started);
                }
                last_old_owner_read = Some(read_started);
            } else {
                assert_eq!(r.owner, "shard-1", "{r:?}");
                assert_eq!(r.epoch, cut_cells[&r.cell] + 1, "{r:?}");
                moved += 1;
            }
        }
        if moved == cut_cells.len() {
            new_owner_seen = Some(read_started);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ms = |t: SystemTime| unix_ms(t) - unix_ms(cut);
    let (exit_seen, status) = exited.unwrap_or_else(|| {
        panic!(
            "shard-2 was still running when its cells were given to shard-1 ({} ms after the cut); \
             its tick counter last moved at +{} ms (tick {}). stderr:\n{}",
            ms(new_owner_seen.unwrap()),
            ms(last_ticks.1),
            last_ticks.0,
            s2.role.stderr_tail(20)
        )
    });
    let takeover_after = last_old_owner_read.expect("ctl saw shard-2 own its cells after the cut");
    let stderr = s2.role.stderr();
    let stopped_line = stderr
        .lines()
        .find(|l| l.contains("shard stopped"))
        .unwrap_or_else(|| panic!("no `shard stopped` log line:\n{stderr}"));
    let stopped_at = log_line_unix_ms(stopped_line).expect("a timestamp in the log line");
    eprintln!(
        "fencing: cut at +0; shard-2 last tick seen +{} ms; simulation stopped (log) +{} ms; \
         exit seen +{} ms; lease still live at +{} ms; old owner still in the map at +{} ms; \
         new owner seen +{} ms; margin (takeover lower bound - stop) {} ms",
        ms(last_ticks.1),
        stopped_at - unix_ms(cut),
        ms(exit_seen),
        last_live_read.map(ms).unwrap_or(-1),
        ms(takeover_after),
        ms(new_owner_seen.unwrap()),
        unix_ms(takeover_after) - stopped_at,
    );
    assert!(
        !status.success(),
        "a shard that lost its lease exits non-zero: {status}"
    );
    assert!(
        stderr.contains("lost its etcd lease"),
        "shard-2 should say why it stopped:\n{stderr}"
    );
    // The evidence: the simulation thread logged its stop, and the process
    // was seen gone, before a `ctl cells` read that still showed shard-2 as
    // the owner of its cells; the new owner was written after that read.
    assert!(
        stopped_at < unix_ms(takeover_after),
        "shard-2 stopped simulating at +{} ms, but its cells may have moved from +{} ms",
        stopped_at - unix_ms(cut),
        ms(takeover_after)
    );
    assert!(
        exit_seen < takeover_after,
        "shard-2 exited (seen at +{} ms) after its cells may have moved (+{} ms)",
        ms(exit_seen),
        ms(takeover_after)
    );
    // shard-1 simulates the whole world now (fresh cells, same NPCs).
    assert_eq!(settled_entities(&[s1.metrics]), world);
}

/// When the leading coordinator is killed during a migration.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the migration record appeared in etcd.
    AfterRequest(Duration),
    /// Frozen (SIGSTOP) before the request, killed once the target has
    /// restored the cell (the owner flip is all that is left).
    WhenRestored,
}

/// Invariant 4 across a leader failure: the leading coordinator is killed
/// (SIGKILL) at several points of a live migration of a cell holding a
/// player and NPCs. The standby takes over and the migration completes (or
/// is cancelled cleanly); all along every cell has exactly one live owner,
/// no cell is simulated by two shards, and afterwards no entity is lost or
/// duplicated and no migration record is left.
#[test]
fn killing_the_leading_coordinator_during_a_migration_leaves_one_owner_per_cell() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let peek = EtcdPeek::connect(&etcd);
    let ca = ca_init(dir.path(), &etcd);
    let mut coords: BTreeMap<String, Role> = BTreeMap::new();
    coords.insert(
        "coordinator-a".into(),
        coordinator(
            dir.path(),
            &ca,
            &CoordinatorSpec::local(&etcd, "coordinator-a"),
        ),
    );
    let s1 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let s2 = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-2"));
    coords.insert(
        "coordinator-b".into(),
        coordinator(
            dir.path(),
            &ca,
            &CoordinatorSpec::local(&etcd, "coordinator-b"),
        ),
    );
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));
    wait_ticking(&[s1.metrics, s2.metrics], 10.0);
    let metrics_of = |id: &str| {
        if id == "shard-1" {
            s1.metrics
        } else {
            s2.metrics
        }
    };

    let mut ann = TelnetClient::create(router.telnet, "Ann", PW);
    let cell = "-1,0";
    assert_eq!(ann.where_().cell, cell);
    let world = settled_entities(&[s1.metrics, s2.metrics]);
    let cell_label = format!("cell=\"{cell}\"");

    let plan = [
        KillAt::AfterRequest(Duration::ZERO),
        KillAt::AfterRequest(Duration::from_millis(3)),
        KillAt::AfterRequest(Duration::from_millis(10)),
        KillAt::AfterRequest(Duration::from_millis(30)),
        KillAt::WhenRestored,
    ];
    for (round, kill_at) in plan.into_iter().enumerate() {
        let before = owners(&etcd);
        let row = before.iter().find(|r| r.cell == cell).expect("the cell");
        let (from, epoch) = (row.owner.clone(), row.epoch);
        let to = if from == "shard-1" {
            "shard-2"
        } else {
            "shard-1"
        };
        let leader_id = leader(&etcd).expect("a leader");
        let leader_pid = coords[&leader_id].pid().to_string();
        if let KillAt::WhenRestored = kill_at {
            let stopped = std::process::Command::new("kill")
                .args(["-STOP", &leader_pid])
                .status()
                .expect("kill -STOP");
            assert!(stopped.success());
        }
        let mut mv = ctl_command(&etcd, Some(&operator_credential(&ca)), &["move", cell, to])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tessera ctl move");
        let wait_for_record = |restored: bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let m = peek.migrations();
                if m.iter()
                    .any(|(_, v)| !restored || v.contains("\"restored\""))
                {
                    return;
                }
                assert!(Instant::now() < deadline, "migration record: {m:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        match kill_at {
            KillAt::AfterRequest(d) => {
                wait_for_record(false);
                std::thread::sleep(d);
            }
            KillAt::WhenRestored => wait_for_record(true),
        }
        coords.get_mut(&leader_id).expect("leader role").kill();
        let killed = Instant::now();
        let at_kill = peek.migrations();

        // Until `ctl move` returns: one live owner per cell, the cell in at
        // most one shard (the source zeroes its count when it ships the
        // cell, before the target can open it).
        let (mut fewest, mut most) = (world, world);
        let mut samples = 0;
        let status = loop {
            if let Some(status) = mv.try_wait().expect("wait for ctl move") {
                break status;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(40),
                "ctl move never returned"
            );
            let rows = owners(&etcd);
            assert_eq!(rows.len(), 16, "a cell has no owner: {rows:?}");
            for r in &rows {
                assert!(
                    r.owner_live && (r.owner == "shard-1" || r.owner == "shard-2"),
                    "round {round}: cell without a live owner: {r:?}"
                );
            }
            let (total, by_cell) = entities_at_once(&[metrics_of(to), metrics_of(&from)]);
            let simulating: Vec<_> = by_cell
                .iter()
                .filter(|(_, labels, v)| labels.contains(&cell_label) && *v > 0.0)
                .collect();
            assert!(
                simulating.len() <= 1,
                "round {round}: cell {cell} simulated by two shards: {simulating:?}"
            );
            fewest = fewest.min(total);
            most = most.max(total);
            samples += 1;
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = killed.elapsed();
        let out = mv.wait_with_output().expect("ctl move output");
        let after = owners(&etcd);
        let row = after.iter().find(|r| r.cell == cell).expect("the cell");
        let outcome = if status.success() {
            assert_eq!((row.owner.as_str(), row.epoch), (to, epoch + 1));
            "completed"
        } else {
            // Cancelled: the cell stays where it was, at its epoch.
            assert_eq!((&row.owner, row.epoch), (&from, epoch), "{out:?}");
            "cancelled"
        };
        // The standby cleared the record (it deletes right after the flip).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !peek.migrations().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a migration record was left behind: {:?}",
                peek.migrations()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The standby takes over once the dead leader's lease (2 s) expires
        // (the migration may have finished before the kill).
        let deadline = Instant::now() + Duration::from_secs(8);
        while leader(&etcd).is_none_or(|l| l == leader_id) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the standby did not take over from {leader_id}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let failover = killed.elapsed();
        assert_eq!(
            settled_entities(&[s1.metrics, s2.metrics]),
            world,
            "round {round}: entities lost or duplicated"
        );
        // Ann stayed connected and is served by the cell's owner.
        let w = ann.where_();
        assert_eq!(
            (w.cell.as_str(), w.shard.as_str()),
            (cell, row.owner.as_str())
        );
        eprintln!(
            "leader kill round {round} ({kill_at:?}): record at kill {:?}; migration {outcome} \
             {} ms after the kill ({samples} samples, entities seen {fewest}..{most} of {world}); \
             standby leading {} ms after the kill; {}",
            at_kill.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
            took.as_millis(),
            failover.as_millis(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        // The killed coordinator comes back as the standby.
        coords.insert(
            leader_id.clone(),
            coordinator(dir.path(), &ca, &CoordinatorSpec::local(&etcd, &leader_id)),
        );
    }
}

/// How the walkers walk: a step every 150 ms, no `where` on the way.
const WALKING: Pace = Pace {
    rest: Duration::from_millis(150),
    where_every: None,
};

const PACES: [&[&str]; 4] = [
    &["e", "e", "e", "w", "w", "w"],
    &["n", "n", "n", "s", "s", "s"],
    &["e", "n", "e", "n", "e", "n", "w", "s", "w", "s", "w", "s"],
    &["e", "e", "e", "e", "w", "w", "w", "w"],
];

/// A coordinator for [`three_shards`] clusters, which moves no cell on its
/// own: the tests place the cells themselves, and the rebalancer's join
/// balance (on by default) would move cells at the same time.
/// A shard whose simulation thread dies (the test builds' fault switch makes it panic at
/// tick 150, 5 s in) gives up its registration and exits non-zero at once: its cells move to
/// the other shard within a few seconds, although its lease (20 s, the default) is far from
/// running out (issue 16, item 1).
#[test]
fn a_shard_whose_simulation_dies_exits_and_its_cells_fail_over_at_once() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator-a").not_rebalancing(),
    );
    let default_lease = ShardSpec {
        lease_ttl_secs: 20,
        ..ShardSpec::local(&etcd, "shard-1")
    };
    let mut doomed = shard_with_env(
        dir.path(),
        &ca,
        &default_lease,
        &[("TESSERA_FAULT_SIM_PANIC_AT_TICK", "150")],
    );
    let _healthy = shard(
        dir.path(),
        &ca,
        &ShardSpec {
            id: "shard-2",
            ..default_lease
        },
    );
    let placed = Instant::now() + Duration::from_secs(15);
    while !owners(&etcd).iter().any(|r| r.owner == "shard-1") {
        assert!(Instant::now() < placed, "shard-1 got no cells");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = loop {
        if let Some(status) = doomed.role.try_exit() {
            break status;
        }
        assert!(
            Instant::now() < placed + Duration::from_secs(15),
            "shard-1 did not exit after its simulation died:\n{}",
            doomed.role.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let died = Instant::now();
    assert!(!status.success(), "a shard whose simulation died exited 0");
    let stderr = doomed.role.stderr();
    assert!(
        stderr.contains("simulation thread of shard shard-1 died"),
        "{}",
        doomed.role.stderr_tail(20)
    );
    // Its cells go to shard-2 long before a 20 s lease would have run out.
    loop {
        let rows = owners(&etcd);
        if rows.len() == 16 && rows.iter().all(|r| r.owner == "shard-2") {
            eprintln!(
                "every cell on shard-2 {} ms after shard-1 exited (lease 20 s)",
                died.elapsed().as_millis()
            );
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(5),
            "cells still with the dead shard {:?} after it exited: {rows:?}",
            died.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two shards, a router, a coordinator and a persistence service on loopback, with the
/// default leases (20 s for members, the coordinator's own default), every cell placed (the
/// X stripes: shard-1 west of x = 0, shard-2 east).
struct DefaultCluster {
    ca: std::path::PathBuf,
    persistence: PersistenceProc,
    coordinator: Role,
    s1: ShardProc,
    s2: ShardProc,
    router: RouterProc,
}

impl DefaultCluster {
    fn start(dir: &TestDir, etcd: &EtcdServer) -> DefaultCluster {
        let ca = ca_init(dir.path(), etcd);
        let store = persistence(dir.path(), &ca, etcd);
        let coord = coordinator(
            dir.path(),
            &ca,
            &CoordinatorSpec {
                lease_ttl_secs: None,
                ..placing_by_hand(etcd, "coordinator-a")
            },
        );
        let spec = |id| ShardSpec {
            lease_ttl_secs: 20,
            persistence: Some(store.addr),
            ..ShardSpec::local(etcd, id)
        };
        let s1 = shard(dir.path(), &ca, &spec("shard-1"));
        let s2 = shard(dir.path(), &ca, &spec("shard-2"));
        wait_ticking(&[s1.metrics, s2.metrics], 10.0);
        let placed = Instant::now() + Duration::from_secs(15);
        while owners(etcd).len() < 16 {
            assert!(Instant::now() < placed, "cells not placed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let router = router(
            dir.path(),
            &ca,
            &RouterSpec {
                lease_ttl_secs: 20,
                persistence: Some(store.addr),
                ..RouterSpec::local(etcd)
            },
        );
        DefaultCluster {
            ca,
            persistence: store,
            coordinator: coord,
            s1,
            s2,
            router,
        }
    }
}

/// kill -9 of the shard simulating a telnet player, with the default leases (20 s): the
/// leading coordinator's liveness watchdog finds the shard unheard on the cluster bus and its
/// lease unrenewed about a second later, revokes the lease, and the player is served by the
/// other shard within 3 s, still connected, with every entity back from the checkpoints
/// (issue 16, item 0).
#[test]
fn kill_9_of_a_players_shard_with_default_leases_serves_her_again_within_3_s() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let DefaultCluster {
        ca: _ca,
        persistence: _store,
        coordinator: _coord,
        mut s1,
        s2,
        router,
    } = DefaultCluster::start(&dir, &etcd);
    let mut ann = TelnetClient::create(router.telnet, "Ann", PW);
    assert_eq!(ann.where_().shard, "shard-1");
    let before = settled_entities(&[s1.metrics, s2.metrics]);
    // Every cell of shard-1 checkpointed at least once (every 2 s by default).
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    s1.role.kill();
    let back = loop {
        let answer = ann.command("where");
        if answer.contains("shard shard-2") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "Ann was not put back into the world: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "kill -9 to serving again, default 20 s leases: {} ms",
        back.as_millis()
    );
    assert!(
        back < Duration::from_secs(3),
        "served again only {back:?} after kill -9"
    );
    assert_eq!(
        settled_entities(&[s2.metrics]),
        before,
        "every entity is back on shard-2"
    );
    // On the same telnet connection all along.
    assert_eq!(ann.where_().shard, "shard-2");
}

/// A router killed with kill -9 leaves its telnet player linkdead: the shard saves where
/// her avatar stands through the other router, keeps the avatar for `--linkdead-secs` (3 s
/// here) and then removes it; logging in again through the other router puts her where
/// she stood, not where she logged in (issue 16, item 3).
#[test]
fn a_crashed_routers_player_is_saved_and_removed_after_the_linkdead_time() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let store = persistence(dir.path(), &ca, &etcd);
    let _coord = coordinator(dir.path(), &ca, &placing_by_hand(&etcd, "coordinator-a"));
    let s1 = shard(
        dir.path(),
        &ca,
        &ShardSpec {
            persistence: Some(store.addr),
            extra: &["--linkdead-secs", "3"],
            ..ShardSpec::local(&etcd, "shard-1")
        },
    );
    wait_ticking(&[s1.metrics], 10.0);
    let router_spec = |id: &str| RouterSpec {
        persistence: Some(store.addr),
        id: id.into(),
        ..RouterSpec::local(&etcd)
    };
    let mut r1 = router(dir.path(), &ca, &router_spec("router-1"));
    let r2 = router(dir.path(), &ca, &router_spec("router-2"));
    let mut ann = TelnetClient::create(r1.telnet, "Ann", PW);
    let start = ann.where_();
    for _ in 0..3 {
        ann.command("n");
    }
    let stood = ann.where_();
    assert!(
        (stood.z - start.z).abs() > 3.0,
        "Ann did not walk: {start:?} -> {stood:?}"
    );
    let with_ann = settled_entities(&[s1.metrics]);

    r1.role.kill();
    drop(ann);
    let killed = Instant::now();
    // Her avatar stays for the linkdead time, then goes.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        settled_entities(&[s1.metrics]),
        with_ann,
        "the avatar went before the linkdead time"
    );
    loop {
        if settled_entities(&[s1.metrics]) == with_ann - 1.0 {
            eprintln!(
                "linkdead avatar removed {} ms after the router's kill -9 (linkdead 3 s)",
                killed.elapsed().as_millis()
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the linkdead avatar was never removed:\n{}",
            s1.role.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Saved through router-2 (its next save round), so she comes back where she stood.
    std::thread::sleep(Duration::from_secs(6));
    let mut back = TelnetClient::login(r2.telnet, "Ann", PW);
    let now = back.where_();
    assert!(
        (now.x - stood.x).abs() < 1.5 && (now.z - stood.z).abs() < 1.5,
        "Ann came back at {now:?}, not where she stood ({stood:?})"
    );
}

/// Resident memory of a process, bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A stalled peer (issue 16, item 2): shard-1 frozen with SIGSTOP for 30 s under a bot
/// swarm, default leases. Its cells fail over to shard-2 within seconds (the liveness
/// watchdog); the router's and shard-2's memory stay flat meanwhile (bounded queues, and
/// nothing is queued for a member whose registration is gone); once continued, shard-1 finds
/// its lease gone and exits non-zero, and every cell stays with shard-2.
#[test]
fn a_shard_frozen_for_30_s_fails_over_and_is_fenced_when_it_wakes() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let DefaultCluster {
        ca: _ca,
        persistence: _store,
        coordinator: _coord,
        mut s1,
        s2,
        router,
    } = DefaultCluster::start(&dir, &etcd);
    let _swarm = BotSwarm::start(
        dir.path(),
        &router,
        8,
        50,
        &["--quic", "8", "--scenario", "border", "--seed", "16"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let (router_pid, s2_pid) = (router.role.pid(), s2.role.pid());
    let before = (rss(router_pid), rss(s2_pid));

    let frozen = Instant::now();
    signal(s1.role.pid(), "STOP");
    let failed_over = loop {
        let rows = owners(&etcd);
        if rows.len() == 16 && rows.iter().all(|r| r.owner == "shard-2") {
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(10),
            "the frozen shard's cells did not fail over: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut peak = before;
    while frozen.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(2));
        peak = (peak.0.max(rss(router_pid)), peak.1.max(rss(s2_pid)));
    }
    eprintln!(
        "SIGSTOP shard-1 (leases 20 s): every cell on shard-2 after {} ms; over 30 s RSS router {} -> {} MB peak, shard-2 {} -> {} MB peak",
        failed_over.as_millis(),
        before.0 >> 20,
        peak.0 >> 20,
        before.1 >> 20,
        peak.1 >> 20
    );
    const FLAT: u64 = 64 << 20;
    assert!(
        peak.0 < before.0 + FLAT && peak.1 < before.1 + FLAT,
        "memory grew while a peer was frozen: router {} -> {}, shard-2 {} -> {}",
        before.0,
        peak.0,
        before.1,
        peak.1
    );

    // Woken, it learns its lease is gone and stops: never two owners.
    signal(s1.role.pid(), "CONT");
    let woke = Instant::now();
    let status = loop {
        if let Some(status) = s1.role.try_exit() {
            break status;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(10),
            "the woken shard kept running:\n{}",
            s1.role.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a fenced shard exited 0");
    assert!(
        s1.role.stderr().contains("lost its etcd lease"),
        "{}",
        s1.role.stderr_tail(20)
    );
    let rows = owners(&etcd);
    assert!(
        rows.len() == 16 && rows.iter().all(|r| r.owner == "shard-2"),
        "{rows:?}"
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

fn placing_by_hand<'a>(etcd: &EtcdServer, id: &'a str) -> CoordinatorSpec<'a> {
    CoordinatorSpec::local(etcd, id).not_rebalancing()
}

/// A cluster of three shards on loopback where every shard owns cells
/// around the spawn: the X stripes leave shard-3 without cells (four
/// columns over three shards), so the two cells north of the spawn move to
/// it. Around the spawn, (-1,0) is shard-1's, (0,0) shard-2's and (-1,-1),
/// (0,-1) shard-3's.
fn three_shards(dir: &TestDir, etcd: &EtcdServer, ca: &std::path::Path) -> Vec<ShardProc> {
    let shards: Vec<ShardProc> = ["shard-1", "shard-2", "shard-3"]
        .iter()
        .map(|id| shard(dir.path(), ca, &ShardSpec::local(etcd, id)))
        .collect();
    let metrics: Vec<_> = shards.iter().map(|s| s.metrics).collect();
    wait_ticking(&metrics, 10.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while owners(etcd).len() < 16 {
        assert!(Instant::now() < deadline, "cells not placed");
        std::thread::sleep(Duration::from_millis(100));
    }
    for cell in ["-1,-1", "0,-1"] {
        let (ok, out, err) = ops(etcd, ca, &["move", cell, "shard-3"]);
        assert!(ok, "ctl move {cell}: {out} {err}");
    }
    shards
}

/// Invariant 6: SIGTERM on each shard in turn, each restarted with the same
/// id once it has drained and exited: four telnet players walking across
/// the shard borders all along are never disconnected and every step is
/// answered, nor is any bot of a `tessera bots` swarm (QUIC and telnet)
/// pacing across the borders meanwhile; the world's entity count is the
/// same after every restart. This is what a Kubernetes rolling update of
/// the shards does (k8s/base/shard.yaml); each shard's drain time, from
/// SIGTERM to exit, is written to `target/tmp/rolling-restart-drain.json`,
/// which the manifest checks hold the shards' grace period against.
#[test]
fn a_rolling_restart_of_every_shard_disconnects_no_player() {
    use std::sync::atomic::Ordering;
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    // The rebalancer is on, as in production: a draining shard is cordoned
    // (it gets no cells while it drains) and a restarted one gets its share
    // back by join balance.
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator-a"),
    );
    let mut shards: Vec<ShardProc> = ["shard-1", "shard-2", "shard-3"]
        .iter()
        .map(|id| shard(dir.path(), &ca, &ShardSpec::local(&etcd, id)))
        .collect();
    let every_shard_owns_cells = |etcd: &EtcdServer| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = owners(etcd);
            let owning: BTreeSet<String> = rows.iter().map(|r| r.owner.clone()).collect();
            if rows.len() == 16 && owning.len() == 3 && rows.iter().all(|r| r.owner_live) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "join balance did not give every shard cells: {rows:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    every_shard_owns_cells(&etcd);
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));
    let flags = WalkFlags::paused();
    let mut walkers: Vec<Walker> = ["Rola", "Rolb", "Rolc", "Rold"]
        .iter()
        .zip(PACES)
        .map(|(name, pattern)| {
            let client = TelnetClient::create(router.telnet, name, PW);
            Walker::start(client, pattern, flags.clone(), WALKING)
        })
        .collect();
    let metrics = |shards: &[ShardProc]| shards.iter().map(|s| s.metrics).collect::<Vec<_>>();
    let world_without_bots = settled_entities(&metrics(&shards));
    let mut swarm = BotSwarm::start(
        dir.path(),
        &router,
        BOTS,
        ROLLING_RESTART_BOT_SECS,
        &[
            "--quic",
            &(BOTS - 2).to_string(),
            "--telnet",
            "2",
            "--scenario",
            "border",
            "--seed",
            "77",
        ],
    );
    let world = world_without_bots + BOTS as f64;
    flags.paused.store(false, Ordering::Relaxed);
    let mut drain_seconds = BTreeMap::new();
    let restarts = Instant::now();

    for i in 0..shards.len() {
        std::thread::sleep(Duration::from_secs(1));
        let id = format!("shard-{}", i + 1);
        let owned = owners(&etcd).iter().filter(|r| r.owner == id).count();
        let sigterm = Instant::now();
        let status = shards[i].role.terminate(Duration::from_secs(40));
        let drained_in = sigterm.elapsed();
        assert!(status.success(), "{id} exited with {status}");
        drain_seconds.insert(id.clone(), drained_in.as_secs_f64());
        let drained = shards[i].role.wait_line(&format!("shard {id} drained: "));
        assert!(
            !drained.starts_with("0 cells moved"),
            "{id} owned {owned} cells: {drained}"
        );
        assert!(
            owners(&etcd).iter().all(|r| r.owner != id),
            "{id} exited still owning cells"
        );
        // A drained shard leaves no cordon behind (a Kubernetes pod's name
        // never comes back to remove it).
        assert_eq!(
            EtcdPeek::connect(&etcd).records("draining/"),
            vec![],
            "{id} exited leaving a drain mark"
        );
        let restart = Instant::now();
        shards[i] = shard(dir.path(), &ca, &ShardSpec::local(&etcd, &id));
        wait_registered(&etcd, &id);
        let registered_in = restart.elapsed();
        wait_ticking(&[shards[i].metrics], 3.0);
        // Registered, so ready: Kubernetes may go on to the next shard.
        let (status, body) = common::http_get(shards[i].metrics, "/readyz");
        assert_eq!(status, 200, "{id} registered but not ready: {body}");
        // Join balance gives the restarted shard its share back.
        every_shard_owns_cells(&etcd);
        // Nobody has been lost or duplicated (the players stand still while
        // the shards are read; the bots keep pacing, so the count is exact
        // whenever none of them is in flight between shards).
        flags.paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let now = entities_reach(&metrics(&shards), world);
        flags.paused.store(false, Ordering::Relaxed);
        eprintln!(
            "rolling restart: {id} drained {owned} cells and exited {} ms after SIGTERM; \
             restarted and registered in {} ms; entities {now} of {world}",
            drained_in.as_millis(),
            registered_in.as_millis()
        );
        for w in &mut walkers {
            w.check();
        }
        assert_eq!(
            now, world,
            "entities lost or duplicated around {id}'s restart"
        );
        let rows = owners(&etcd);
        assert!(
            rows.len() == 16 && rows.iter().all(|r| r.owner_live),
            "{rows:?}"
        );
    }
    // The bots played through every drain, not only the first ones.
    let restarts = restarts.elapsed();
    assert!(
        swarm.running(),
        "the bots stopped before the last shard restarted ({} s of restarts): \
         raise ROLLING_RESTART_BOT_SECS",
        restarts.as_secs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let measured = serde_json::json!({
        "test": "a_rolling_restart_of_every_shard_disconnects_no_player",
        "drain_seconds": drain_seconds,
    });
    let record =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rolling-restart-drain.json");
    std::fs::write(&record, format!("{measured:#}\n")).expect("drain record");
    eprintln!(
        "rolling restart: three restarts in {} ms; drain times {drain_seconds:?} written to {}",
        restarts.as_millis(),
        record.display()
    );
    swarm.finish_without_errors();
    flags.stop.store(true, Ordering::Relaxed);
    // (The clients stay connected until the end: a quit is a logout.)
    let mut clients = Vec::new();
    for w in walkers {
        let name = w.name.clone();
        let WalkLog {
            mut client, steps, ..
        } = w.finish();
        assert!(steps > 10, "{name} walked only {steps} steps");
        let at = client.where_();
        eprintln!(
            "rolling restart: {name} took {steps} steps; now in {} on {}",
            at.cell, at.shard
        );
        clients.push(client);
    }
    assert_eq!(
        router_connections(router.metrics),
        4.0,
        "a player was disconnected"
    );
    assert_eq!(
        entities_reach(&metrics(&shards), world_without_bots),
        world_without_bots
    );
    drop(clients);
}

/// Bots in the rolling restart: QUIC and telnet.
const BOTS: usize = 8;

/// How long the bots play: longer than the three drains and restarts (12 s
/// measured; the test fails if the bots stop first).
const ROLLING_RESTART_BOT_SECS: u64 = 40;

/// The entity count of `shards` once it equals `want` (10 s at most; a
/// reading is off while an entity is in flight between shards), else the
/// last reading.
fn entities_reach(shards: &[std::net::SocketAddr], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = entities(shards);
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The two waypoints a QUIC bot paces between, (x, z): lanes spread
/// around the spawn (-5, 5), each across a border where shards meet:
/// x = 0 between shard-1 (-1,0) and shard-2 (0,0), z = 0 between shard-1
/// and shard-3 (-1,-1), and diagonals into (0,-1), also shard-3's.
fn bot_lane(i: usize) -> ((f32, f32), (f32, f32)) {
    let k = (i / 3) as f32 * 2.5;
    match i % 3 {
        0 => ((-7.0, 3.0 + k), (6.0, 3.0 + k)),
        1 => ((-3.0 - k, 7.0), (-3.0 - k, -6.0)),
        _ => ((-6.0 + k, 6.0), (5.0 + k, -5.0)),
    }
}

/// Invariant 2 under load: three shards, one router, two coordinators;
/// 12 QUIC bots and 4 telnet players pace across the borders where the
/// three shards meet, for 30 s. The entity count, read from all shards at
/// once every 100 ms, is exact at least once in every 2 s (a reading can be
/// off for a moment while an entity is in flight between shards) and exact
/// once they stop; nobody is disconnected, and every player crossed a shard
/// border.
#[test]
fn bots_pacing_across_shard_borders_for_30_s_keep_every_entity() {
    use std::sync::atomic::Ordering;
    const WALK: Duration = Duration::from_secs(30);
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let _ca_coord = coordinator(dir.path(), &ca, &placing_by_hand(&etcd, "coordinator-a"));
    let _cb_coord = coordinator(dir.path(), &ca, &placing_by_hand(&etcd, "coordinator-b"));
    let shards = three_shards(&dir, &etcd, &ca);
    let metrics: Vec<_> = shards.iter().map(|s| s.metrics).collect();
    let router = router(dir.path(), &ca, &RouterSpec::local(&etcd));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cert = std::fs::read(&router.cert).expect("the router's certificate");
    let ep = {
        let _guard = rt.enter();
        tessera_client::endpoint(rustls::pki_types::CertificateDer::from(cert))
            .expect("a QUIC endpoint")
    };
    let mut bots = Vec::new();
    for i in 0..12 {
        let name = format!("Bot{i}");
        let client = rt.block_on(async {
            let mut c = tessera_client::Client::connect(&ep, router.quic)
                .await
                .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
            c.create(&name, PW)
                .await
                .unwrap_or_else(|e| panic!("{name}: create: {e}"));
            // Off the spawn point before the next one arrives: characters
            // created on top of each other can stay wedged.
            let ((ax, az), _) = bot_lane(i);
            let (dx, dz) = (ax + 5.0, az - 5.0);
            let d = (dx * dx + dz * dz).sqrt().max(0.1);
            for _ in 0..4 {
                c.send_input(dx / d, dz / d, 0.0).expect("input");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.send_input(0.0, 0.0, 0.0).expect("input");
            c
        });
        bots.push((name, client));
    }
    let flags = WalkFlags::paused();
    let mut walkers: Vec<Walker> = ["Tela", "Telb", "Telc", "Teld"]
        .iter()
        .zip(PACES)
        .map(|(name, pattern)| {
            let client = TelnetClient::create(router.telnet, name, PW);
            Walker::start(client, pattern, flags.clone(), WALKING)
        })
        .collect();
    let world = settled_entities(&metrics);
    assert_eq!(router_connections(router.metrics), 16.0);

    let started = Instant::now();
    flags.paused.store(false, Ordering::Relaxed);
    let tasks: Vec<_> = bots
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut client))| {
            let (a, b) = bot_lane(i);
            rt.spawn(async move {
                let mut shards_seen = BTreeSet::new();
                let mut target = b;
                let begin = Instant::now();
                while begin.elapsed() < WALK {
                    if let Some(reason) = client.connection().close_reason() {
                        return Err(format!("{name} disconnected: {reason}"));
                    }
                    // Where the server has the bot (`where`), then steer
                    // to the waypoint; turn round when there.
                    let text = client
                        .command("where")
                        .await
                        .map_err(|e| format!("{name}: where: {e}"))?;
                    let w = common::Where::parse(&text)
                        .ok_or_else(|| format!("{name}: where answered {text:?}"))?;
                    let (dx, dz) = (target.0 - w.x, target.1 - w.z);
                    let d = (dx * dx + dz * dz).sqrt();
                    if d < 1.5 {
                        target = if target == b { a } else { b };
                    } else {
                        client
                            .send_input(dx / d, dz / d, 0.0)
                            .map_err(|e| format!("{name}: input: {e}"))?;
                    }
                    shards_seen.insert(w.shard);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                for _ in 0..3 {
                    let _ = client.send_input(0.0, 0.0, 0.0);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok((name, client, shards_seen))
            })
        })
        .collect();

    // Sample the entity count while they walk.
    let mut samples: Vec<(Duration, f64)> = Vec::new();
    while started.elapsed() < WALK {
        let (total, _) = entities_at_once(&metrics);
        samples.push((started.elapsed(), total));
        for w in &mut walkers {
            w.check();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    flags.stop.store(true, Ordering::Relaxed);
    // A reading can be off for a moment (an entity in flight between two
    // shards is in neither count; a busy source may publish its count a
    // few ms after the target did), but a lost or duplicated entity would
    // keep every later reading off: each 2 s window must hold a reading of
    // exactly the world's count.
    for window in samples.chunk_by(|a, b| a.0.as_secs() / 2 == b.0.as_secs() / 2) {
        assert!(
            window.iter().any(|(_, n)| *n == world),
            "no exact count of {world} entities between {:?} and {:?}: {window:?}",
            window[0].0,
            window[window.len() - 1].0
        );
    }
    let exact = samples.iter().filter(|(_, n)| *n == world).count();
    let fewest = samples.iter().map(|(_, n)| *n).fold(world, f64::min);
    let most = samples.iter().map(|(_, n)| *n).fold(world, f64::max);

    // (Every client stays connected until the end: a quit is a logout.)
    let mut everyone_seen = BTreeSet::new();
    let mut clients = Vec::new();
    let mut telnets = Vec::new();
    let mut crossed = 0;
    for task in tasks {
        let (name, mut client, seen) = rt
            .block_on(task)
            .expect("bot task")
            .unwrap_or_else(|e| panic!("{e}"));
        if seen.len() >= 2 {
            crossed += 1;
        } else {
            eprintln!("border walk: {name} stayed on {seen:?} (jostled by the others)");
        }
        let text = rt.block_on(client.command("where")).expect("where");
        assert!(common::Where::parse(&text).is_some(), "{name}: {text:?}");
        everyone_seen.extend(seen);
        clients.push(client);
    }
    let mut steps = 0;
    for w in walkers {
        let WalkLog {
            mut client,
            steps: n,
            ..
        } = w.finish();
        steps += n;
        everyone_seen.insert(client.where_().shard);
        telnets.push(client);
    }
    // Bots jostle each other in the crowd; most must have crossed.
    assert!(
        crossed >= 9,
        "only {crossed} of 12 bots crossed a shard border"
    );
    assert_eq!(
        everyone_seen.len(),
        3,
        "the players did not visit all three shards: {everyone_seen:?}"
    );
    assert_eq!(
        router_connections(router.metrics),
        16.0,
        "a player was disconnected"
    );
    let settled = settled_entities(&metrics);
    eprintln!(
        "border walk: {} s, 12 QUIC bots ({crossed} crossed shard borders) + 4 telnet \
         players ({steps} steps); \
         {} readings, {exact} exactly {world}, fewest {fewest}, most {most}; after: {settled}",
        WALK.as_secs(),
        samples.len()
    );
    assert_eq!(settled, world, "entities lost or duplicated");
    drop((clients, telnets));
}
