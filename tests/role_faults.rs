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

use common::{TelnetClient, TestDir};
use etcd::EtcdServer;
use std::time::{Duration, Instant, SystemTime};
use support_cluster::*;

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
fn ms_between(from: SystemTime, to: SystemTime) -> i64 {
    unix_ms(to) - unix_ms(from)
}

/// A coordinator (placing cells, not rebalancing) and one shard, its cells placed: the
/// routers of a test get every cell's frames and are ready at once.
fn cluster_with_one_shard(
    dir: &TestDir,
    etcd: &EtcdServer,
) -> (std::path::PathBuf, Role, ShardProc) {
    let ca = ca_init(dir.path(), etcd);
    let coord = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(etcd, "coordinator-a").not_rebalancing(),
    );
    let shard = shard(dir.path(), &ca, &ShardSpec::local(etcd, "shard-1"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = owners(etcd);
        if rows.len() == 16 && rows.iter().all(|r| r.owner_live) {
            break;
        }
        assert!(Instant::now() < deadline, "cells not placed: {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (ca, coord, shard)
}

/// Two routers with 20 s leases; router-2's bus inbox pump panics 3 s after it starts (the
/// fault switch). Router-2 must revoke its registration and exit non-zero at once, not when
/// its lease runs out 20 s later; router-1 stays registered.
#[test]
fn a_router_whose_inbox_pump_dies_unregisters_and_exits_at_once() {
    const PANIC_AFTER_MS: u64 = 3000;
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let (ca, _coord, _shard) = cluster_with_one_shard(&dir, &etcd);
    let spec = |id: &str| RouterSpec {
        id: id.into(),
        lease_ttl_secs: 20,
        ..RouterSpec::local(&etcd)
    };
    let _healthy = router(dir.path(), &ca, &spec("router-1"));
    let mut doomed = router_with_env(
        dir.path(),
        &ca,
        &spec("router-2"),
        &[(
            "TESSERA_FAULT_ROUTER_PANIC_AFTER_MS",
            &PANIC_AFTER_MS.to_string(),
        )],
    );
    // The pump starts just before the router says it runs.
    let (running_at, _) = doomed
        .role
        .wait_line_timed("router router-2 running", Duration::from_secs(20));
    let panics_at = running_at + Duration::from_millis(PANIC_AFTER_MS);
    let peek = EtcdPeek::connect(&etcd);
    let registered = |id: &str| {
        let key = format!("/tessera/routers/{id}");
        peek.records("routers/").iter().any(|(k, _)| *k == key)
    };
    assert!(registered("router-1") && registered("router-2"));
    let (mut exited, mut unregistered) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    while exited.is_none() || unregistered.is_none() {
        if exited.is_none() {
            exited = doomed.role.try_exit().map(|s| (s, SystemTime::now()));
        }
        if unregistered.is_none() && !registered("router-2") {
            unregistered = Some(SystemTime::now());
        }
        assert!(
            Instant::now() < deadline,
            "router-2 exited: {exited:?}, unregistered: {unregistered:?}; stderr:\n{}",
            doomed.role.stderr_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, exited_at) = exited.expect("exited");
    let unregistered_at = unregistered.expect("unregistered");
    eprintln!(
        "router-2 (lease 20 s): registration gone {} ms and process exited {} ms after its \
         inbox pump was set to panic",
        ms_between(panics_at, unregistered_at),
        ms_between(panics_at, exited_at)
    );
    assert!(!status.success(), "a router whose pump died exited 0");
    assert!(
        doomed.role.stderr().contains("bus inbox pump panicked"),
        "the error does not name the task:\n{}",
        doomed.role.stderr_tail(20)
    );
    assert!(
        ms_between(panics_at, unregistered_at) < 2000 && ms_between(panics_at, exited_at) < 2000,
        "router-2 took over 2 s to give up its registration and exit"
    );
    assert!(
        registered("router-1"),
        "the healthy router lost its registration"
    );
}

/// Two coordinators with 10 s leader leases; the leader's loop panics 5 s after it starts
/// leading (the fault switch). The leader must revoke its lease and exit non-zero, and the
/// standby must lead within about a second, not after the 10 s lease.
#[test]
fn the_standby_coordinator_leads_within_a_second_when_the_leaders_loop_dies() {
    const PANIC_AFTER_MS: u64 = 5000;
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let spec = |id| CoordinatorSpec {
        lease_ttl_secs: Some(10),
        ..CoordinatorSpec::local(&etcd, id).not_rebalancing()
    };
    let mut doomed = coordinator_with_env(
        dir.path(),
        &ca,
        &spec("coordinator-a"),
        &[(
            "TESSERA_FAULT_COORDINATOR_PANIC_AFTER_MS",
            &PANIC_AFTER_MS.to_string(),
        )],
    );
    let peek = EtcdPeek::connect(&etcd);
    let leader = || {
        peek.records("coordinator/")
            .into_iter()
            .find(|(k, _)| k.ends_with("coordinator/leader"))
            .and_then(|(_, v)| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|v| v["id"].as_str().map(str::to_string))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while leader().as_deref() != Some("coordinator-a") {
        assert!(Instant::now() < deadline, "coordinator-a never led");
        std::thread::sleep(Duration::from_millis(10));
    }
    let panics_at = SystemTime::now() + Duration::from_millis(PANIC_AFTER_MS);
    let _standby = coordinator(dir.path(), &ca, &spec("coordinator-b"));
    assert!(
        doomed.try_exit().is_none() && leader().as_deref() == Some("coordinator-a"),
        "the standby started too late: the leader is {:?} already",
        leader()
    );
    let (mut exited, mut standby_leads) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while exited.is_none() || standby_leads.is_none() {
        if exited.is_none() {
            exited = doomed.try_exit().map(|s| (s, SystemTime::now()));
        }
        if standby_leads.is_none() && leader().as_deref() == Some("coordinator-b") {
            standby_leads = Some(SystemTime::now());
        }
        assert!(
            Instant::now() < deadline,
            "coordinator-a exited: {exited:?}; coordinator-b leads: {standby_leads:?}; \
             coordinator-a's stderr:\n{}",
            doomed.stderr_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, exited_at) = exited.expect("exited");
    let leads_at = standby_leads.expect("leads");
    eprintln!(
        "leader lease 10 s: coordinator-a exited {} ms after its loop was set to panic; \
         coordinator-b led {} ms after that point ({} ms after the exit)",
        ms_between(panics_at, exited_at),
        ms_between(panics_at, leads_at),
        ms_between(exited_at, leads_at)
    );
    assert!(!status.success(), "a coordinator whose loop died exited 0");
    let stderr = doomed.stderr();
    assert!(
        stderr.contains("injected fault: the leading loop of coordinator coordinator-a dies")
            && stderr.contains("leader lease revoked"),
        "{}",
        doomed.stderr_tail(20)
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
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let (ca, _coord, _shard) = cluster_with_one_shard(&dir, &etcd);
    let router = router(
        dir.path(),
        &ca,
        &RouterSpec {
            lease_ttl_secs: 20,
            ..RouterSpec::local(&etcd)
        },
    );
    let mut gateway = gateway_with_env(
        dir.path(),
        &ca,
        &GatewaySpec::local(&etcd, &router.cert),
        &[("TESSERA_FAULT_GATEWAY_PANIC_AT_CONNECTION", "2")],
    );
    let mut alice = TelnetClient::create(gateway.telnet, "alice", PW);
    assert_eq!(
        alice.where_().shard,
        "shard-1",
        "alice plays through the gateway"
    );
    assert_eq!(router_connections(router.metrics), 1.0, "alice's relay");
    let fault_at = SystemTime::now();
    let _second = std::net::TcpStream::connect(gateway.telnet).expect("connect");
    let (status, exited_at) = wait_exit(&mut gateway.role, Duration::from_secs(10));
    assert!(
        !status.success(),
        "a gateway whose accept loop died exited 0"
    );
    assert!(
        gateway
            .role
            .stderr()
            .contains("telnet accept loop panicked"),
        "the error does not name the task:\n{}",
        gateway.role.stderr_tail(20)
    );
    alice.read_to_eof(Duration::from_secs(2));
    let closed_at = SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while router_connections(router.metrics) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the router still holds alice's session"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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
