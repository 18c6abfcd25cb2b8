//! Faults in a cluster of separate processes against a real etcd
//! (DESIGN.md invariants 1, 2, 4, 6), each on the shared test cluster
//! (`support_cluster::cluster::Cluster`):
//! - a shard cut off from etcd (from inside a network namespace) stops
//!   simulating before any other shard takes its cells;
//! - the leading coordinator killed at several points of a migration: the
//!   migration completes or is cancelled cleanly, never a cell with two
//!   owners or none, no entity lost or duplicated;
//! - a shard whose simulation thread dies exits non-zero and gives up its
//!   registration at once, so its cells fail over without waiting out the lease;
//! - kill -9 of a player's shard, of a player's router, and a shard frozen for 30 s;
//! - a rolling restart (SIGTERM on each shard in turn) drops no player;
//! - players pacing across shard borders for 30 s: the entity count never
//!   changes and nobody is disconnected.
//!
//! Every test ends by replaying etcd's revision history of the cell map: no region ever
//! changed owner while its owner was registered, except by a migration.
//!
//! Timings these tests print are recorded in docs/performance.md.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, TelnetClient};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};
use support_cluster::cluster::{Cluster, Kind, MemberSpec, WORLD_CELLS};
use support_cluster::*;

/// Partition fencing (invariant 1): every member runs in a network namespace of its own;
/// a blackhole route inside shard-2's cuts it off from etcd (its cluster bus and metrics
/// stay reachable). It must stop simulating, and exit, before its lease expires and the
/// coordinator gives its cells to shard-1: at no moment do two shards simulate the same
/// cell.
#[test]
fn a_shard_cut_off_from_etcd_stops_simulating_before_its_cells_move() {
    let mut c = Cluster::on_lan();
    c.start(MemberSpec::coordinator("coordinator-a"));
    c.start(MemberSpec::shard("shard-1"));
    c.start(MemberSpec::shard("shard-2").log("warn,tessera_shard::sim=info"));
    c.wait_ticking(10.0);
    let before = c.wait_owners(Duration::from_secs(15), |rows| {
        let by: BTreeSet<&str> = rows.iter().map(|r| r.owner.as_str()).collect();
        rows.len() == WORLD_CELLS && by.len() == 2
    });
    let cut_cells: BTreeMap<String, u64> = before
        .iter()
        .filter(|r| r.owner == "shard-2")
        .map(|r| (r.cell.clone(), r.epoch))
        .collect();
    assert!(!cut_cells.is_empty());
    let world = c.settled_entities();
    let s2_metrics = c.metrics("shard-2");

    let cut = SystemTime::now();
    c.partition_from_etcd("shard-2");

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
            if let Some(status) = c.try_exit("shard-2") {
                exited = Some((SystemTime::now(), status));
            } else if let Some(text) = try_scrape(s2_metrics) {
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
        let rows = c.owners();
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
            c.role("shard-2").stderr_tail(20)
        )
    });
    let takeover_after = last_old_owner_read.expect("ctl saw shard-2 own its cells after the cut");
    let stderr = c.role("shard-2").stderr();
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
    assert_eq!(settled_entities(&[c.metrics("shard-1")]), world);
    c.assert_one_owner_per_region();
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
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a"));
    c.start(MemberSpec::shard("shard-1"));
    c.start(MemberSpec::shard("shard-2"));
    c.start(MemberSpec::coordinator("coordinator-b"));
    c.start(MemberSpec::router("router-1"));
    c.wait_ticking(10.0);
    let metrics_of = |c: &Cluster, id: &str| c.metrics(id);
    let both = [c.metrics("shard-1"), c.metrics("shard-2")];

    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    let cell = "-1,0";
    assert_eq!(ann.where_().cell, cell);
    let world = settled_entities(&both);
    let cell_label = format!("cell=\"{cell}\"");

    let plan = [
        KillAt::AfterRequest(Duration::ZERO),
        KillAt::AfterRequest(Duration::from_millis(3)),
        KillAt::AfterRequest(Duration::from_millis(10)),
        KillAt::AfterRequest(Duration::from_millis(30)),
        KillAt::WhenRestored,
    ];
    for (round, kill_at) in plan.into_iter().enumerate() {
        let before = c.owners();
        let row = before.iter().find(|r| r.cell == cell).expect("the cell");
        let (from, epoch) = (row.owner.clone(), row.epoch);
        let to = if from == "shard-1" {
            "shard-2"
        } else {
            "shard-1"
        };
        let leader_id = c.leader().expect("a leader");
        if let KillAt::WhenRestored = kill_at {
            c.pause(&leader_id);
        }
        let mut mv = ctl_command(
            &c.etcd,
            Some(&operator_credential(&c.ca)),
            &["move", cell, to],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tessera ctl move");
        let wait_for_record = |c: &mut Cluster, restored: bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let m = c.peek().migrations();
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
                wait_for_record(&mut c, false);
                std::thread::sleep(d);
            }
            KillAt::WhenRestored => wait_for_record(&mut c, true),
        }
        c.kill(&leader_id);
        let killed = Instant::now();
        let at_kill = c.peek().migrations();

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
            let rows = c.owners();
            assert_eq!(rows.len(), WORLD_CELLS, "a cell has no owner: {rows:?}");
            for r in &rows {
                assert!(
                    r.owner_live && (r.owner == "shard-1" || r.owner == "shard-2"),
                    "round {round}: cell without a live owner: {r:?}"
                );
            }
            let (total, by_cell) = entities_at_once(&[metrics_of(&c, to), metrics_of(&c, &from)]);
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
        let after = c.owners();
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
        eventually(Duration::from_secs(5), || {
            c.peek().migrations().is_empty().then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "a migration record was left behind: {:?}",
                c.peek().migrations()
            )
        });
        // The standby takes over once the dead leader's lease (2 s) expires
        // (the migration may have finished before the kill).
        eventually(Duration::from_secs(8), || {
            c.leader().filter(|l| *l != leader_id).map(|_| ())
        })
        .unwrap_or_else(|| panic!("round {round}: the standby did not take over from {leader_id}"));
        let failover = killed.elapsed();
        assert_eq!(
            settled_entities(&both),
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
        c.restart(&leader_id);
    }
    c.assert_one_owner_per_region();
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

/// A shard whose simulation thread dies (the test builds' fault switch makes it panic at
/// tick 150, 5 s in) gives up its registration and exits non-zero at once: its cells move to
/// the other shard within a few seconds, although its lease (20 s, the default) is far from
/// running out (issue 16, item 1).
#[test]
fn a_shard_whose_simulation_dies_exits_and_its_cells_fail_over_at_once() {
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(
        MemberSpec::shard("shard-1")
            .lease(20)
            .env("TESSERA_FAULT_SIM_PANIC_AT_TICK", "150"),
    );
    c.start(MemberSpec::shard("shard-2").lease(20));
    c.wait_owners(Duration::from_secs(15), |rows| {
        rows.iter().any(|r| r.owner == "shard-1")
    });
    let (status, _) = c.wait_exit("shard-1", Duration::from_secs(15));
    let died = Instant::now();
    assert!(!status.success(), "a shard whose simulation died exited 0");
    let stderr = c.role("shard-1").stderr();
    assert!(
        stderr.contains("simulation thread of shard shard-1 died"),
        "{}",
        c.role("shard-1").stderr_tail(20)
    );
    // Its cells go to shard-2 long before a 20 s lease would have run out.
    c.wait_owners(Duration::from_secs(5), |rows| {
        rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner == "shard-2")
    });
    eprintln!(
        "every cell on shard-2 {} ms after shard-1 exited (lease 20 s)",
        died.elapsed().as_millis()
    );
    c.assert_one_owner_per_region();
}

/// Two shards, a router, a coordinator and a persistence service on loopback, with the
/// default leases (20 s for members, the coordinator's own default), every cell placed (the
/// X stripes: shard-1 west of x = 0, shard-2 east).
fn default_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence());
    c.start(
        MemberSpec::coordinator("coordinator-a")
            .default_lease()
            .not_rebalancing(),
    );
    c.start(MemberSpec::shard("shard-1").lease(20));
    c.start(MemberSpec::shard("shard-2").lease(20));
    c.wait_ticking(10.0);
    c.wait_owners(Duration::from_secs(15), |rows| rows.len() == WORLD_CELLS);
    c.start(MemberSpec::router("router-1").lease(20));
    c
}

/// kill -9 of the shard simulating a telnet player, with the default leases (20 s): the
/// leading coordinator's liveness watchdog finds the shard unheard on the cluster bus and its
/// lease unrenewed about a second later, revokes the lease, and the player is served by the
/// other shard within 3 s, still connected, with every entity back from the checkpoints
/// (issue 16, item 0).
#[test]
fn kill_9_of_a_players_shard_with_default_leases_serves_her_again_within_3_s() {
    let mut c = default_cluster();
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    assert_eq!(ann.where_().shard, "shard-1");
    let before = c.settled_entities();
    // Every cell of shard-1 checkpointed at least once (every 2 s by default).
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    c.kill("shard-1");
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
        settled_entities(&[c.metrics("shard-2")]),
        before,
        "every entity is back on shard-2"
    );
    // On the same telnet connection all along.
    assert_eq!(ann.where_().shard, "shard-2");
    c.assert_one_owner_per_region();
}

/// A router killed with kill -9 leaves its telnet player linkdead: the shard saves where
/// her avatar stands through the other router, keeps the avatar for `--linkdead-secs` (3 s
/// here) and then removes it; logging in again through the other router puts her where
/// she stood, not where she logged in (issue 16, item 3).
#[test]
fn a_crashed_routers_player_is_saved_and_removed_after_the_linkdead_time() {
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence());
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1").args(&["--linkdead-secs", "3"]));
    c.wait_ticking(10.0);
    c.start(MemberSpec::router("router-1"));
    c.start(MemberSpec::router("router-2"));
    let s1 = [c.metrics("shard-1")];
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    let start = ann.where_();
    for _ in 0..3 {
        ann.command("n");
    }
    let stood = ann.where_();
    assert!(
        (stood.z - start.z).abs() > 3.0,
        "Ann did not walk: {start:?} -> {stood:?}"
    );
    let with_ann = settled_entities(&s1);

    c.kill("router-1");
    drop(ann);
    let killed = Instant::now();
    // Her avatar stays for the linkdead time, then goes.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        settled_entities(&s1),
        with_ann,
        "the avatar went before the linkdead time"
    );
    eventually(Duration::from_secs(14), || {
        (settled_entities(&s1) == with_ann - 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the linkdead avatar was never removed:\n{}",
            c.role("shard-1").stderr_tail(20)
        )
    });
    eprintln!(
        "linkdead avatar removed {} ms after the router's kill -9 (linkdead 3 s)",
        killed.elapsed().as_millis()
    );
    // Saved through router-2 (its next save round), so she comes back where she stood.
    std::thread::sleep(Duration::from_secs(6));
    let mut back = TelnetClient::login(c.telnet("router-2"), "Ann", PW);
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
    let mut c = default_cluster();
    let _swarm = BotSwarm::start_at(
        c.path(),
        c.ready("router-1"),
        &c.router_cert(),
        8,
        50,
        &["--quic", "8", "--scenario", "border", "--seed", "16"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let (router_pid, s2_pid) = (c.pid("router-1"), c.pid("shard-2"));
    let before = (rss(router_pid), rss(s2_pid));

    let frozen = Instant::now();
    c.pause("shard-1");
    c.wait_owners(Duration::from_secs(10), |rows| {
        rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner == "shard-2")
    });
    let failed_over = frozen.elapsed();
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
    c.resume("shard-1");
    let (status, _) = c.wait_exit("shard-1", Duration::from_secs(10));
    assert!(!status.success(), "a fenced shard exited 0");
    assert!(
        c.role("shard-1").stderr().contains("lost its etcd lease"),
        "{}",
        c.role("shard-1").stderr_tail(20)
    );
    let rows = c.owners();
    assert!(
        rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner == "shard-2"),
        "{rows:?}"
    );
    c.assert_one_owner_per_region();
}

/// Three shards on loopback where every shard owns cells around the spawn: the X stripes
/// leave shard-3 without cells (four columns over three shards), so the two cells north of
/// the spawn move to it. Around the spawn, (-1,0) is shard-1's, (0,0) shard-2's and
/// (-1,-1), (0,-1) shard-3's.
fn three_shards(c: &mut Cluster) {
    for id in ["shard-1", "shard-2", "shard-3"] {
        c.start(MemberSpec::shard(id));
    }
    c.wait_ticking(10.0);
    c.wait_owners(Duration::from_secs(15), |rows| rows.len() == WORLD_CELLS);
    for cell in ["-1,-1", "0,-1"] {
        let (ok, out, err) = c.ops(&["move", cell, "shard-3"]);
        assert!(ok, "ctl move {cell}: {out} {err}");
    }
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
    let mut c = Cluster::new();
    // The rebalancer is on, as in production: a draining shard is cordoned
    // (it gets no cells while it drains) and a restarted one gets its share
    // back by join balance.
    c.start(MemberSpec::coordinator("coordinator-a"));
    for id in ["shard-1", "shard-2", "shard-3"] {
        c.start(MemberSpec::shard(id));
    }
    let every_shard_owns_cells = |c: &Cluster| {
        c.wait_owners(Duration::from_secs(30), |rows| {
            let owning: BTreeSet<&str> = rows.iter().map(|r| r.owner.as_str()).collect();
            rows.len() == WORLD_CELLS && owning.len() == 3 && rows.iter().all(|r| r.owner_live)
        });
    };
    every_shard_owns_cells(&c);
    c.start(MemberSpec::router("router-1"));
    let flags = WalkFlags::paused();
    let mut walkers = Walker::start_each(
        c.telnet("router-1"),
        &["Rola", "Rolb", "Rolc", "Rold"],
        &PACES,
        &flags,
        WALKING,
    );
    let world_without_bots = c.settled_entities();
    let mut swarm = BotSwarm::start_at(
        c.path(),
        c.ready("router-1"),
        &c.router_cert(),
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

    for id in c.names(Kind::Shard) {
        std::thread::sleep(Duration::from_secs(1));
        let owned = c.owners().iter().filter(|r| r.owner == id).count();
        let history_before = c.owner_check();
        let sigterm = Instant::now();
        let status = c.stop_within(&id, Duration::from_secs(40));
        let drained_in = sigterm.elapsed();
        assert!(status.success(), "{id} exited with {status}");
        drain_seconds.insert(id.clone(), drained_in.as_secs_f64());
        // Drained: every cell left by a live migration (etcd's history), none by failover.
        let history = c.owner_check();
        assert!(
            owned > 0 && history.migrations >= history_before.migrations + owned,
            "{id} owned {owned} cells; migrations {} -> {}",
            history_before.migrations,
            history.migrations
        );
        assert_eq!(
            history.failovers, history_before.failovers,
            "{id}'s cells failed over instead of being drained"
        );
        assert!(
            c.owners().iter().all(|r| r.owner != id),
            "{id} exited still owning cells"
        );
        // A drained shard leaves no cordon behind (a Kubernetes pod's name
        // never comes back to remove it).
        assert_eq!(
            c.peek().records("draining/"),
            vec![],
            "{id} exited leaving a drain mark"
        );
        let restart = Instant::now();
        c.restart(&id);
        wait_registered(&c.etcd, &id);
        let registered_in = restart.elapsed();
        wait_ticking(&[c.metrics(&id)], 3.0);
        // Registered, so ready: Kubernetes may go on to the next shard.
        let (status, body) = common::http_get(c.metrics(&id), "/readyz");
        assert_eq!(status, 200, "{id} registered but not ready: {body}");
        // Join balance gives the restarted shard its share back.
        every_shard_owns_cells(&c);
        // Nobody has been lost or duplicated (the players stand still while
        // the shards are read; the bots keep pacing, so the count is exact
        // whenever none of them is in flight between shards).
        flags.paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let now = entities_reach(&c.shard_metrics(), world);
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
        let rows = c.owners();
        assert!(
            rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner_live),
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
    assert_eq!(c.router_connections(), 4.0, "a player was disconnected");
    assert_eq!(
        entities_reach(&c.shard_metrics(), world_without_bots),
        world_without_bots
    );
    drop(clients);
    c.assert_one_owner_per_region();
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
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::coordinator("coordinator-b").not_rebalancing());
    three_shards(&mut c);
    let metrics = c.shard_metrics();
    c.start(MemberSpec::router("router-1"));
    let (router_quic, router_telnet) = (c.quic("router-1"), c.telnet("router-1"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cert = std::fs::read(c.router_cert()).expect("the router's certificate");
    let ep = {
        let _guard = rt.enter();
        tessera_client::endpoint(rustls::pki_types::CertificateDer::from(cert))
            .expect("a QUIC endpoint")
    };
    let mut bots = Vec::new();
    for i in 0..12 {
        let name = format!("Bot{i}");
        let client = rt.block_on(async {
            let mut c = tessera_client::Client::connect(&ep, router_quic)
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
    let mut walkers = Walker::start_each(
        router_telnet,
        &["Tela", "Telb", "Telc", "Teld"],
        &PACES,
        &flags,
        WALKING,
    );
    let world = settled_entities(&metrics);
    assert_eq!(c.router_connections(), 16.0);

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
    assert_eq!(c.router_connections(), 16.0, "a player was disconnected");
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
    c.assert_one_owner_per_region();
}

/// kill -9 of the shard simulating a telnet player, restarted with the same id two seconds
/// later (what Kubernetes does when a shard's container crashes: the pod, and so
/// `--id=$(POD_NAME)`, stays): the player must be served again, by whichever shard owns her
/// cell, as when the shard stays dead
/// (`kill_9_of_a_players_shard_with_default_leases_serves_her_again_within_3_s`).
///
/// Found by the chaos run (tests/chaos.rs): the router checked that a player's shard was
/// still a member by its id only, so once the new incarnation had registered under the old
/// id it never re-joined her; every command went to a shard that did not know her. The
/// router now compares the shard's incarnation (`Player::ensure_in_world`).
#[test]
fn kill_9_and_a_quick_restart_of_a_players_shard_serves_her_again() {
    let mut c = default_cluster();
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    assert_eq!(ann.where_().shard, "shard-1");
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    c.kill("shard-1");
    std::thread::sleep(Duration::from_secs(2));
    c.restart("shard-1");
    let mut answers = Vec::new();
    let back = loop {
        let answer = ann.command("e");
        if answer.starts_with("You walk") || answer.starts_with("Something blocks") {
            break killed.elapsed();
        }
        answers.push((killed.elapsed().as_millis(), answer));
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "Ann was not served again within 30 s of the kill (restart after 2 s); answers: \
             {answers:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "kill -9, restart after 2 s: Ann walks again {} ms after the kill",
        back.as_millis()
    );
    c.assert_one_owner_per_region();
}

/// A router frozen (SIGSTOP) for longer than its lease: the liveness watchdog revokes its
/// registration and its players are linkdead on the shards. Woken, it must either register
/// again or exit (to be restarted): a router without a registration gets no frames and no
/// player events, so it cannot serve anyone.
///
/// Found by the chaos run (tests/chaos.rs): the router member did not watch
/// `Registration::lost` (unlike the shard's), so it went on running unregistered. It now
/// stops and exits non-zero (`router/src/member.rs`).
#[test]
fn a_router_frozen_past_its_lease_registers_again_or_exits() {
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    c.wait_placed();
    c.start(MemberSpec::router("router-1").lease(3));
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    assert!(ann.command("e").starts_with("You walk"));
    c.pause("router-1");
    let registered = |c: &Cluster| c.map_now().routers.contains("router-1");
    eventually(Duration::from_secs(10), || (!registered(&c)).then_some(()))
        .expect("the watchdog revoked the frozen router's registration");
    std::thread::sleep(Duration::from_secs(3));
    c.resume("router-1");
    let woke = Instant::now();
    let outcome = eventually(Duration::from_secs(10), || {
        if c.try_exit("router-1").is_some() {
            Some("exited")
        } else if registered(&c) {
            Some("registered again")
        } else {
            None
        }
    });
    // Exited: the player's telnet connection to it is gone (a player behind a telnet
    // gateway would be resumed on another router).
    ann.send_line("e");
    let answer = ann.try_read_until_prompt(Duration::from_secs(5));
    eprintln!(
        "router-1 frozen 3 s past its lease: {outcome:?} {} ms after SIGCONT; its player's \
         next step: {answer:?}",
        woke.elapsed().as_millis()
    );
    assert!(
        outcome.is_some(),
        "router-1 runs on without a registration 10 s after waking; its player's step \
         answered {answer:?}"
    );
}

/// Players of a router killed with kill -9 and restarted two seconds later (a crashed
/// container in its pod, same `--id`) log in again through it at once: each must have one
/// avatar in the world, not a new one beside the linkdead one the shard keeps for
/// `--linkdead-secs` (60 s by default).
#[test]
fn players_of_a_router_killed_and_restarted_have_one_avatar_each() {
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence());
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    c.wait_placed();
    c.start(MemberSpec::router("router-1"));
    let s1 = [c.metrics("shard-1")];
    let players = |c: &Cluster| {
        common::metric_samples(
            &common::scrape(c.metrics("shard-1")),
            "tessera_shard_players",
        )
        .iter()
        .map(|(_, v)| v)
        .sum::<f64>()
    };
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    ann.command("e");
    let npcs_and_ann = settled_entities(&s1);
    assert_eq!(players(&c), 1.0);
    c.kill("router-1");
    drop(ann);
    std::thread::sleep(Duration::from_secs(2));
    c.restart("router-1");
    let mut ann = TelnetClient::login(c.telnet("router-1"), "Ann", PW);
    let w = ann.where_();
    std::thread::sleep(Duration::from_secs(2));
    let (entities, avatars) = (settled_entities(&s1), players(&c));
    eprintln!(
        "router killed and restarted: Ann back at ({:.1}, {:.1}); {avatars} player avatars, \
         {entities} entities (before: {npcs_and_ann})",
        w.x, w.z
    );
    assert_eq!(avatars, 1.0, "Ann has {avatars} avatars in the world");
    assert_eq!(entities, npcs_and_ann);
}

/// The avatar of a player whose router was killed (kill -9) and restarted two seconds later
/// under the same id, and who does not come back, is removed after `--linkdead-secs` (3 s
/// here), as when the router stays dead
/// (`a_crashed_routers_player_is_saved_and_removed_after_the_linkdead_time`): the router's
/// new process does not hold her session.
#[test]
fn a_player_who_does_not_come_back_to_a_restarted_router_is_removed_after_the_linkdead_time() {
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence());
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1").args(&["--linkdead-secs", "3"]));
    c.wait_placed();
    c.start(MemberSpec::router("router-1"));
    let s1 = [c.metrics("shard-1")];
    let npcs = settled_entities(&s1);
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    ann.command("e");
    assert_eq!(settled_entities(&s1), npcs + 1.0);
    c.kill("router-1");
    drop(ann);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    c.restart("router-1");
    let gone = eventually(Duration::from_secs(20), || {
        (settled_entities(&s1) == npcs).then(|| killed.elapsed())
    });
    eprintln!("router killed and restarted under its id: Ann's avatar removed after {gone:?}");
    assert!(
        gone.is_some(),
        "Ann's avatar is still in the world 20 s after her router was killed and restarted \
         (linkdead 3 s):\n{}",
        c.role("shard-1").stderr_tail(20)
    );
}
