//! Two releases in one world (issue 16, item 5): a rolling update from shards that speak
//! only the previous cluster format (`--cluster-format 1`: no stream header, no message
//! numbers, exactly what the previous release wrote) to shards of this release, in the way
//! a Kubernetes Deployment replaces pods: a new shard joins, an old one drains and leaves,
//! and so on. All the while telnet players walk across the shard borders. Old and new
//! shards hand entities to each other and migrate cells between them in format 1, new
//! ones talk format 2 among themselves and with the router; nobody is lost or duplicated
//! and every step is answered.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{metric_samples, scrape};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support_cluster::cluster::{Cluster, MemberSpec, WORLD_CELLS};
use support_cluster::*;

/// Walkers cross the borders around the spawn.
const PACES: [&[&str]; 3] = [
    &["e", "e", "e", "w", "w", "w"],
    &["n", "n", "n", "s", "s", "s"],
    &["e", "n", "e", "n", "w", "s", "w", "s"],
];

const WALKING: Pace = Pace {
    rest: Duration::from_millis(150),
    where_every: None,
};

/// Cluster streams a member accepted in `format`.
fn streams(metrics: std::net::SocketAddr, format: &str) -> f64 {
    metric_samples(&scrape(metrics), "tessera_cluster_streams_total")
        .iter()
        .filter(|(labels, _)| labels.contains(&format!("format=\"{format}\"")))
        .map(|(_, n)| n)
        .sum()
}

/// Entities in the world once the count holds still, within 10 s.
fn entities_reach(c: &mut Cluster, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = entities(&c.shard_metrics());
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn shards_of_the_previous_format_hand_over_to_this_release_in_a_rolling_update() {
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a"));
    let previous = ["--cluster-format", "1"];
    for id in ["old-1", "old-2"] {
        c.start(MemberSpec::shard(id).args(&previous));
    }
    c.wait_owners(Duration::from_secs(30), |rows| {
        rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner_live)
    });
    c.start(MemberSpec::router("router-1"));
    let flags = WalkFlags::paused();
    let mut walkers = Walker::start_each(
        c.telnet("router-1"),
        &["Forma", "Formb", "Formc"],
        &PACES,
        &flags,
        WALKING,
    );
    let world = c.settled_entities();
    flags.paused.store(false, Ordering::Relaxed);

    for (old, new) in [("old-1", "new-1"), ("old-2", "new-2")] {
        // The new release's shard joins and gets cells by join balance.
        c.start(MemberSpec::shard(new));
        c.wait_owners(Duration::from_secs(30), |rows| {
            rows.len() == WORLD_CELLS
                && rows.iter().all(|r| r.owner_live)
                && rows.iter().any(|r| r.owner == new)
        });
        // The old one drains (its cells migrate, in format 1, to old and new shards) and
        // leaves.
        let status = c.stop_within(old, Duration::from_secs(40));
        assert!(status.success(), "{old} exited with {status}");
        c.wait_owners(Duration::from_secs(30), |rows| {
            rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner_live && r.owner != old)
        });
        flags.paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let now = entities_reach(&mut c, world);
        flags.paused.store(false, Ordering::Relaxed);
        for w in &mut walkers {
            w.check();
        }
        assert_eq!(now, world, "entities lost or duplicated when {old} left");
        eprintln!("formats: {old} replaced by {new}; entities {now} of {world}");
    }
    // The new shards heard the old ones in format 1 and everyone else in format 2.
    let new_1 = c.metrics("new-1");
    assert!(streams(new_1, "1") > 0.0, "new-1 never heard format 1");
    assert!(streams(new_1, "2") > 0.0, "new-1 never heard format 2");
    let owners: BTreeSet<String> = c.owners().into_iter().map(|r| r.owner).collect();
    assert_eq!(
        owners,
        ["new-1", "new-2"].map(String::from).into_iter().collect()
    );
    c.assert_one_owner_per_region();
    flags.stop.store(true, Ordering::Relaxed);
    for w in walkers {
        let name = w.name.clone();
        let log = w.finish();
        assert!(log.steps > 10, "{name} walked only {} steps", log.steps);
    }
}
