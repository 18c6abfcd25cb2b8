//! Faults in a cluster of separate processes against a real etcd
//! (DESIGN.md invariants 1, 2, 4, 6):
//! - a shard cut off from etcd (from inside a network namespace) stops
//!   simulating before any other shard takes its cells;
//! - the leading coordinator killed at several points of a migration: the
//!   migration completes or is cancelled cleanly, never a cell with two
//!   owners or none, no entity lost or duplicated;
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
    let ca = ca_init(dir.path());
    let _coord = coordinator(dir.path(), &etcd, "coordinator-a", 2);
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
            ip: ns.inner_ip,
            netns: Some(&ns.name),
            rust_log: "warn,tessera_shard::sim=info",
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
