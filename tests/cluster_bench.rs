//! Cluster benchmarks against real processes and a real etcd. They report
//! numbers (docs/performance.md) rather than assert speed, and take minutes,
//! so they are ignored by default:
//!
//! ```text
//! cargo test --release --test cluster_bench -- --ignored --nocapture
//! ```

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{TelnetClient, TestDir};
use etcd::EtcdServer;
use std::time::{Duration, Instant};
use support_cluster::*;

/// The lease TTL of the shards and the router in the failover benchmark, seconds: the
/// default. Failover does not wait for it: the leading coordinator's liveness watchdog
/// revokes a dead shard's lease (coordinator/src/liveness.rs).
const TTL_SECS: u64 = 20;
const ROUNDS: usize = 6;

/// Failover after `kill -9`: five rounds of killing the shard that
/// simulates a connected player's cell (and restarting it, so the next
/// round has somewhere to fail over to). For each round: the time from the
/// kill to the cell owned again (new epoch in etcd), to the player served
/// again (her next `where` answered by the new owner), and what was lost:
/// how old the restored checkpoint was, and whether the NPC count and
/// Mira's memory survived.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn failover_after_kill_9() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let store = persistence(dir.path(), &ca, &etcd);
    let _coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec {
            lease_ttl_secs: None,
            ..CoordinatorSpec::local(&etcd, "coordinator")
        },
    );
    let spec = |id: &'static str| ShardSpec {
        persistence: Some(store.addr),
        lease_ttl_secs: TTL_SECS,
        ..ShardSpec::local(&etcd, id)
    };
    let mut shards = [
        shard(dir.path(), &ca, &spec("shard-1")),
        shard(dir.path(), &ca, &spec("shard-2")),
    ];
    let router = router(
        dir.path(),
        &ca,
        &RouterSpec {
            persistence: Some(store.addr),
            lease_ttl_secs: TTL_SECS,
            ..RouterSpec::local(&etcd)
        },
    );
    wait_ticking(&shards.iter().map(|s| s.metrics).collect::<Vec<_>>(), 10.0);
    let mut ann = TelnetClient::create(router.telnet, "Ann", PW);
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    let world = settled_entities(&shards.iter().map(|s| s.metrics).collect::<Vec<_>>());

    let mut to_owned = Vec::new();
    let mut to_served = Vec::new();
    let mut ages = Vec::new();
    let mut lost_ms = Vec::new();
    for round in 1..=ROUNDS {
        // Let a few checkpoints happen, then greet Mira (her memory is what
        // a checkpoint must keep).
        std::thread::sleep(Duration::from_millis(2500));
        let here = ann.where_();
        let victim = shards
            .iter()
            .position(|s| s.role.name == here.shard)
            .expect("Ann's shard is one of ours");
        let cell = here.cell.clone();
        let epoch_before = owners(&etcd)
            .iter()
            .find(|r| r.cell == cell)
            .map(|r| r.epoch)
            .expect("her cell is placed");
        let killed = Instant::now();
        shards[victim].role.kill();
        let mut owned = None;
        let served = loop {
            if owned.is_none()
                && owners(&etcd)
                    .iter()
                    .any(|r| r.cell == cell && r.epoch > epoch_before && r.owner_live)
            {
                owned = Some(killed.elapsed());
            }
            let answer = ann.command("where");
            if !answer.contains(&format!("shard {}", here.shard)) && answer.contains("shard ") {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
            std::thread::sleep(Duration::from_millis(50));
        };
        let owned = owned.unwrap_or(served);
        let age = shards[1 - victim]
            .role
            .stderr()
            .lines()
            .rev()
            .find(|l| {
                l.contains("cell restored from its checkpoint")
                    && l.contains(&format!("cell={cell} "))
            })
            .and_then(|l| l.split("age_ms=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        // Mira's cell may still be on its way to a new owner (speech to a
        // dead shard is lost): ask again until she answers.
        let mira = (0..5)
            .find_map(|_| {
                ann.command("say hello Mira");
                ann.try_wait_for("Mira says,", Duration::from_secs(2))
            })
            .unwrap_or_else(|| {
                let look = ann.command("look");
                let metrics = [shards[1 - victim].metrics];
                panic!(
                    "Mira never answered after the failover.\nlook: {look}\nowners: {:?}\nentities: {:?}\nsurvivor log: {}",
                    owners(&etcd),
                    entities_by_cell(&metrics),
                    shards[1 - victim].role.stderr_tail(40)
                )
            });
        let remembered = mira.contains("You again, Ann?");
        let now = settled_entities(&[shards[1 - victim].metrics]);
        // The checkpoint's age at the restore, less the time from the kill
        // to the restore: how much of the cell's history before the kill
        // was lost.
        let lost = age.map(|a| a.saturating_sub(owned.as_millis() as u64));
        eprintln!(
            "round {round}: killed {} (cell {cell}); owned again after {} ms, Ann served after {} ms; \
             checkpoint age {} ms, so the last {} ms before the kill were lost; entities {now} of {world}; \
             Mira remembered Ann: {remembered}",
            here.shard,
            owned.as_millis(),
            served.as_millis(),
            age.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            lost.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
        );
        if let Some(l) = lost {
            lost_ms.push(l);
        }
        to_owned.push(owned);
        to_served.push(served);
        if let Some(a) = age {
            ages.push(a);
        }
        // The victim comes back (same id) for the next round to fail over to.
        let id = if victim == 0 { "shard-1" } else { "shard-2" };
        shards[victim] = shard(dir.path(), &ca, &spec(id));
        wait_registered(&etcd, id);
        wait_ticking(&[shards[victim].metrics], 3.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !owners(&etcd).iter().any(|r| r.owner == id) {
            assert!(Instant::now() < deadline, "{id} got no cells back");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    to_owned.sort();
    to_served.sort();
    ages.sort();
    lost_ms.sort();
    let ms = |d: &Duration| d.as_millis();
    eprintln!(
        "failover after kill -9, lease TTL {TTL_SECS} s, checkpoints every 1 s, {ROUNDS} rounds: \
         cell owned again median {} ms (max {} ms); player served again median {} ms (max {} ms); \
         restored checkpoint age median {} ms (max {} ms); history lost before the kill median {} ms (max {} ms)",
        ms(&to_owned[ROUNDS / 2]),
        ms(to_owned.last().unwrap()),
        ms(&to_served[ROUNDS / 2]),
        ms(to_served.last().unwrap()),
        ages.get(ages.len() / 2).copied().unwrap_or_default(),
        ages.last().copied().unwrap_or_default(),
        lost_ms.get(lost_ms.len() / 2).copied().unwrap_or_default(),
        lost_ms.last().copied().unwrap_or_default(),
    );
}
