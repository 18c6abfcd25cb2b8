//! Roles whose essential task dies, as separate processes against a real etcd (issue 16,
//! item 1; the shard whose simulation thread dies is in `cluster_faults.rs`). Each gives up
//! what it holds at once and exits non-zero, so failover never waits for a lease TTL:
//! - a router whose bus inbox pump dies revokes its registration and exits;
//! - the leading coordinator whose loop dies revokes the leader lease and exits, and the
//!   standby leads within a second although the lease is 10 s;
//! - a telnet gateway whose accept loop dies exits (it holds no lease), and the routers see
//!   its players' sessions end at once.
//!
//! The tasks are made to die by the test builds' fault switches (cargo feature
//! `fault-injection`, on in the `tessera` binary that tests build; never in a release). The
//! times measured are printed.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, TelnetClient};
use std::time::{Duration, SystemTime};
use support_cluster::cluster::{Cluster, MemberSpec};
use support_cluster::*;

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
fn ms_between(from: SystemTime, to: SystemTime) -> i64 {
    unix_ms(to) - unix_ms(from)
}

/// A coordinator (placing cells, not rebalancing) and one shard, its cells placed: the
/// routers of a test get every cell's frames and are ready at once.
fn cluster_with_one_shard() -> Cluster {
    let mut c = Cluster::new();
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    c.wait_placed();
    c
}

/// Two routers with 20 s leases; router-2's bus inbox pump panics 3 s after it starts (the
/// fault switch). Router-2 must revoke its registration and exit non-zero at once, not when
/// its lease runs out 20 s later; router-1 stays registered.
#[test]
fn a_router_whose_inbox_pump_dies_unregisters_and_exits_at_once() {
    const PANIC_AFTER_MS: u64 = 3000;
    let mut c = cluster_with_one_shard();
    c.start(MemberSpec::router("router-1").lease(20));
    // The pump starts just before the router is ready.
    let running_at = c
        .start(MemberSpec::router("router-2").lease(20).env(
            "TESSERA_FAULT_ROUTER_PANIC_AFTER_MS",
            &PANIC_AFTER_MS.to_string(),
        ))
        .at;
    let panics_at = running_at + Duration::from_millis(PANIC_AFTER_MS);
    let registered = |c: &mut Cluster, id: &str| {
        let key = format!("/tessera/routers/{id}");
        c.peek().records("routers/").iter().any(|(k, _)| *k == key)
    };
    assert!(registered(&mut c, "router-1") && registered(&mut c, "router-2"));
    let (mut exited, mut unregistered) = (None, None);
    let done = eventually(Duration::from_secs(15), || {
        if exited.is_none() {
            exited = c.try_exit("router-2").map(|s| (s, SystemTime::now()));
        }
        if unregistered.is_none() && !registered(&mut c, "router-2") {
            unregistered = Some(SystemTime::now());
        }
        exited.zip(unregistered)
    });
    let ((status, exited_at), unregistered_at) = done.unwrap_or_else(|| {
        panic!(
            "router-2 exited: {exited:?}, unregistered: {unregistered:?}; stderr:\n{}",
            c.role("router-2").stderr_tail(30)
        )
    });
    eprintln!(
        "router-2 (lease 20 s): registration gone {} ms and process exited {} ms after its \
         inbox pump was set to panic",
        ms_between(panics_at, unregistered_at),
        ms_between(panics_at, exited_at)
    );
    assert!(!status.success(), "a router whose pump died exited 0");
    assert!(
        c.role("router-2")
            .stderr()
            .contains("bus inbox pump panicked"),
        "the error does not name the task:\n{}",
        c.role("router-2").stderr_tail(20)
    );
    // Polled every 100 ms: the bound has that much slack.
    assert!(
        ms_between(panics_at, unregistered_at) < 2000 && ms_between(panics_at, exited_at) < 2000,
        "router-2 took over 2 s to give up its registration and exit"
    );
    assert!(
        registered(&mut c, "router-1"),
        "the healthy router lost its registration"
    );
}

/// Two coordinators with 10 s leader leases; the leader's loop panics 5 s after it starts
/// leading (the fault switch). The leader must revoke its lease and exit non-zero, and the
/// standby must lead within about a second, not after the 10 s lease.
#[test]
fn the_standby_coordinator_leads_within_a_second_when_the_leaders_loop_dies() {
    const PANIC_AFTER_MS: u64 = 5000;
    let mut c = Cluster::new();
    c.start(
        MemberSpec::coordinator("coordinator-a")
            .lease(10)
            .not_rebalancing()
            .env(
                "TESSERA_FAULT_COORDINATOR_PANIC_AFTER_MS",
                &PANIC_AFTER_MS.to_string(),
            ),
    );
    let leader = |c: &mut Cluster| {
        c.peek()
            .records("coordinator/")
            .into_iter()
            .find(|(k, _)| k.ends_with("coordinator/leader"))
            .and_then(|(_, v)| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|v| v["id"].as_str().map(str::to_string))
    };
    eventually(Duration::from_secs(15), || {
        (leader(&mut c).as_deref() == Some("coordinator-a")).then_some(())
    })
    .expect("coordinator-a never led");
    let panics_at = SystemTime::now() + Duration::from_millis(PANIC_AFTER_MS);
    c.start(
        MemberSpec::coordinator("coordinator-b")
            .lease(10)
            .not_rebalancing(),
    );
    assert!(
        c.is_running("coordinator-a") && leader(&mut c).as_deref() == Some("coordinator-a"),
        "the standby started too late: the leader is {:?} already",
        leader(&mut c)
    );
    let (mut exited, mut standby_leads) = (None, None);
    let done = eventually(Duration::from_secs(20), || {
        if exited.is_none() {
            exited = c.try_exit("coordinator-a").map(|s| (s, SystemTime::now()));
        }
        if standby_leads.is_none() && leader(&mut c).as_deref() == Some("coordinator-b") {
            standby_leads = Some(SystemTime::now());
        }
        exited.zip(standby_leads)
    });
    let ((status, exited_at), leads_at) = done.unwrap_or_else(|| {
        panic!(
            "coordinator-a exited: {exited:?}; coordinator-b leads: {standby_leads:?}; \
             coordinator-a's stderr:\n{}",
            c.role("coordinator-a").stderr_tail(30)
        )
    });
    eprintln!(
        "leader lease 10 s: coordinator-a exited {} ms after its loop was set to panic; \
         coordinator-b led {} ms after that point ({} ms after the exit)",
        ms_between(panics_at, exited_at),
        ms_between(panics_at, leads_at),
        ms_between(exited_at, leads_at)
    );
    assert!(!status.success(), "a coordinator whose loop died exited 0");
    let stderr = c.role("coordinator-a").stderr();
    assert!(
        stderr.contains("injected fault: the leading loop of coordinator coordinator-a dies")
            && stderr.contains("leader lease revoked"),
        "{}",
        c.role("coordinator-a").stderr_tail(20)
    );
    // The loop checks the switch once a round (250 ms); etcd answers in milliseconds.
    assert!(
        ms_between(panics_at, leads_at) < 2000,
        "the standby waited {} ms: the lease was not given up",
        ms_between(panics_at, leads_at)
    );
}

/// A telnet gateway whose accept loop dies (the fault switch: at its second connection)
/// while a player plays through it exits non-zero at once; the player's connection closes
/// with it, and the router sees the relayed session end at once (the gateway closes its
/// router links on the way out) rather than after the 5 s idle timeout of the link.
#[test]
fn a_telnet_gateway_whose_accept_loop_dies_exits_at_once() {
    let mut c = cluster_with_one_shard();
    c.start(MemberSpec::router("router-1").lease(20));
    c.start(MemberSpec::gateway("gateway-1").env("TESSERA_FAULT_GATEWAY_PANIC_AT_CONNECTION", "2"));
    let router_metrics = c.metrics("router-1");
    let mut alice = TelnetClient::create(c.telnet("gateway-1"), "alice", PW);
    assert_eq!(
        alice.where_().shard,
        "shard-1",
        "alice plays through the gateway"
    );
    assert_eq!(router_connections(router_metrics), 1.0, "alice's relay");
    let fault_at = SystemTime::now();
    let _second = std::net::TcpStream::connect(c.telnet("gateway-1")).expect("connect");
    let (status, exited_at) = c.wait_exit("gateway-1", Duration::from_secs(10));
    assert!(
        !status.success(),
        "a gateway whose accept loop died exited 0"
    );
    assert!(
        c.role("gateway-1")
            .stderr()
            .contains("telnet accept loop panicked"),
        "the error does not name the task:\n{}",
        c.role("gateway-1").stderr_tail(20)
    );
    alice.read_to_eof(Duration::from_secs(2));
    let closed_at = SystemTime::now();
    eventually(Duration::from_secs(10), || {
        (router_connections(router_metrics) == 0.0).then_some(())
    })
    .expect("the router still holds alice's session");
    let released_at = SystemTime::now();
    eprintln!(
        "gateway: exited {} ms after the fault, alice's connection closed {} ms after, \
         the router released her session {} ms after",
        ms_between(fault_at, exited_at),
        ms_between(fault_at, closed_at),
        ms_between(fault_at, released_at)
    );
    assert!(
        ms_between(fault_at, exited_at) < 2000,
        "the gateway took over 2 s to exit"
    );
    assert!(
        ms_between(fault_at, released_at) < 3000,
        "the router held alice's session {} ms: the gateway's links were not closed",
        ms_between(fault_at, released_at)
    );
}
