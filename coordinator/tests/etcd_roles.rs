//! etcd users and roles against a real etcd (TLS, `--client-cert-auth`,
//! auth turned on by [`apply_roles`]): each Tessera role's client
//! certificate (CN `tessera-<role>`) may touch only the keys its role
//! grants, a certificate whose CN is no user may do nothing, applying twice
//! changes nothing, and the members' real code paths (registration, the
//! cell map, leader election, placement, migrations, drains, operators and
//! nonces) work under their own roles.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::etcd::EtcdServer;
use tessera_coordinator::etcd::{apply_roles, AuthChange, EtcdRolesError, MEMBER_GRANTS};
use tessera_coordinator::store::{ClusterStore, Expect, StoreError};
use tessera_coordinator::{EtcdStore, EtcdTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PREFIX: &str = "/tessera/";

async fn connect(etcd: &EtcdServer, tls: &EtcdTls) -> EtcdStore {
    EtcdStore::connect(&etcd.endpoints(), Some(tls), CONNECT_TIMEOUT)
        .await
        .expect("connect to the test etcd")
}

/// A client showing a certificate with CN `cn`: etcd user `cn`.
async fn as_user(etcd: &EtcdServer, cn: &str) -> EtcdStore {
    connect(etcd, &etcd.client_tls_for(cn)).await
}

fn key(dir: &str) -> String {
    format!("{PREFIX}{dir}")
}

/// `result` is etcd's refusal for `user`, and says so clearly.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, StoreError>, user: &str, what: &str) {
    match result {
        Err(e @ StoreError::PermissionDenied { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("etcd refused: permission denied for user ")
                    && msg.contains(user)
                    && msg.contains("docs/security.md"),
                "{what}: unclear refusal: {msg}"
            );
        }
        other => panic!("{what}: etcd did not refuse {user}: {other:?}"),
    }
}

#[track_caller]
fn allowed<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: refused: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_touch_only_its_own_keys() {
    let etcd = EtcdServer::start();

    // The shared test certificate names no etcd user: turning auth on with
    // it would lock it out, so nothing is changed.
    let shared = connect(&etcd, &etcd.tls()).await;
    let err = apply_roles(&shared, PREFIX).await.unwrap_err();
    assert!(
        matches!(err, EtcdRolesError::WouldLockOut { .. })
            && err.to_string().contains("use a certificate with CN root"),
        "{err}"
    );
    allowed(
        shared.put(&key("cells/9,9"), b"x".to_vec(), None).await,
        "auth still off after the refused apply",
    );

    // As root: every role and user, then auth on.
    let root = as_user(&etcd, "root").await;
    let changes = apply_roles(&root, PREFIX).await.expect("apply the roles");
    for c in &changes {
        eprintln!("{c}");
    }
    for m in MEMBER_GRANTS {
        assert!(
            changes.contains(&AuthChange::RoleAdded(m.user.into()))
                && changes.contains(&AuthChange::UserAdded(m.user.into())),
            "no role or user {}: {changes:?}",
            m.user
        );
    }
    assert!(changes.contains(&AuthChange::UserAdded("root".into())));
    assert_eq!(changes.last(), Some(&AuthChange::AuthEnabled));
    // Twice: nothing to do.
    let again = apply_roles(&root, PREFIX).await.expect("apply again");
    assert!(again.is_empty(), "the second apply changed {again:?}");

    // A router registers itself and reads the map, and writes nothing else.
    let router = as_user(&etcd, "tessera-router").await;
    allowed(
        router.put(&key("routers/r1"), b"{}".to_vec(), None).await,
        "a router registering under routers/",
    );
    allowed(
        router.get(&key("cells/9,9")).await,
        "a router reading the map",
    );
    refused(
        router.put(&key("cells/0,0"), b"{}".to_vec(), None).await,
        "tessera-router",
        "a router writing cells/0,0",
    );
    refused(
        router
            .compare_and_put(
                &key("coordinator/leader"),
                Expect::Absent,
                b"{}".to_vec(),
                None,
            )
            .await,
        "tessera-router",
        "a router taking the coordinator's leader key",
    );
    refused(
        router.put(&key("operators/x"), b"{}".to_vec(), None).await,
        "tessera-router",
        "a router writing an operator record",
    );
    refused(
        router.delete(&key("migrations/0,0")).await,
        "tessera-router",
        "a router deleting a migration",
    );
    // The message names the user, the request and the key.
    let msg = router
        .put(&key("cells/0,0"), b"{}".to_vec(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("for user tessera-router to put /tessera/cells/0,0"),
        "{msg}"
    );

    // A shard may not write the map either; the coordinator may.
    let shard = as_user(&etcd, "tessera-shard").await;
    allowed(
        shard.put(&key("shards/s1"), b"{}".to_vec(), None).await,
        "a shard registering",
    );
    refused(
        shard.put(&key("cells/0,0"), b"{}".to_vec(), None).await,
        "tessera-shard",
        "a shard writing cells/",
    );
    refused(
        shard.put(&key("operators/x"), b"{}".to_vec(), None).await,
        "tessera-shard",
        "a shard writing an operator record",
    );
    let coordinator = as_user(&etcd, "tessera-coordinator").await;
    allowed(
        coordinator
            .put(&key("cells/0,0"), b"{}".to_vec(), None)
            .await,
        "the coordinator writing cells/",
    );
    allowed(
        coordinator
            .compare_and_put(
                &key("coordinator/leader"),
                Expect::Absent,
                b"{}".to_vec(),
                None,
            )
            .await,
        "the coordinator taking the leader key",
    );
    refused(
        coordinator
            .put(&key("operators/x"), b"{}".to_vec(), None)
            .await,
        "tessera-coordinator",
        "the coordinator writing an operator record",
    );

    // A telnet gateway reads the routers and writes nothing.
    let gateway = as_user(&etcd, "tessera-gateway").await;
    let routers = allowed(
        gateway.list(&key("routers/")).await,
        "a gateway listing routers/",
    );
    assert_eq!(routers.len(), 1, "{routers:?}");
    allowed(
        gateway.watch(&key("routers/")).await,
        "a gateway watching routers/",
    );
    refused(
        gateway.put(&key("routers/g"), b"{}".to_vec(), None).await,
        "tessera-gateway",
        "a gateway writing routers/",
    );
    refused(
        gateway.get(&key("cells/0,0")).await,
        "tessera-gateway",
        "a gateway reading the map",
    );
    refused(
        gateway.watch(PREFIX).await,
        "tessera-gateway",
        "a gateway watching the whole prefix",
    );

    // A service records nonces and reads, but cannot write, the operators.
    let service = as_user(&etcd, "tessera-auth").await;
    let lease = allowed(
        service.grant_lease(Duration::from_secs(5)).await,
        "a service granting a lease",
    );
    allowed(
        service
            .compare_and_put(
                &key("nonces/alice/n1"),
                Expect::Absent,
                b"1".to_vec(),
                Some(lease),
            )
            .await,
        "a service recording a nonce",
    );
    allowed(
        service.get(&key("operators/x")).await,
        "a service reading an operator",
    );
    refused(
        service.put(&key("operators/x"), b"{}".to_vec(), None).await,
        "tessera-auth",
        "a service writing an operator record",
    );

    // Leases: a member cannot revoke another's lease, nor hang a key of its
    // own on it (either would let it delete the other's keys).
    let shard_lease = allowed(
        shard.grant_lease(Duration::from_secs(10)).await,
        "a shard granting a lease",
    );
    allowed(
        shard
            .put(&key("shards/s2"), b"{}".to_vec(), Some(shard_lease))
            .await,
        "a shard registering under its lease",
    );
    refused(
        router.revoke(shard_lease).await,
        "tessera-router",
        "a router revoking a shard's lease",
    );
    refused(
        router
            .put(&key("routers/r2"), b"{}".to_vec(), Some(shard_lease))
            .await,
        "tessera-router",
        "a router putting a key under a shard's lease",
    );
    allowed(
        shard.revoke(shard_lease).await,
        "a shard revoking its own lease",
    );
    assert!(
        root.get(&key("shards/s2")).await.unwrap().is_none(),
        "the shard's revoked registration is still there"
    );
    // The leading coordinator's liveness watchdog reads a member's lease and revokes it
    // when the member is dead (coordinator/src/liveness.rs): a shard's registration and
    // load report, a router's registration.
    let dead_shard = allowed(
        shard.grant_lease(Duration::from_secs(10)).await,
        "a shard granting a lease",
    );
    for k in ["shards/s3", "load/s3"] {
        allowed(
            shard.put(&key(k), b"{}".to_vec(), Some(dead_shard)).await,
            "a shard writing under its lease",
        );
    }
    let ttl = allowed(
        coordinator.lease_time_to_live(dead_shard).await,
        "the coordinator reading a shard's lease",
    );
    assert_eq!(ttl.map(|t| t.granted), Some(Duration::from_secs(10)));
    allowed(
        coordinator.revoke(dead_shard).await,
        "the coordinator revoking a dead shard's lease",
    );
    for k in ["shards/s3", "load/s3"] {
        assert!(root.get(&key(k)).await.unwrap().is_none(), "{k} survived");
    }
    let dead_router = allowed(
        router.grant_lease(Duration::from_secs(10)).await,
        "a router granting a lease",
    );
    allowed(
        router
            .put(&key("routers/r3"), b"{}".to_vec(), Some(dead_router))
            .await,
        "a router registering under its lease",
    );
    allowed(
        coordinator.revoke(dead_router).await,
        "the coordinator revoking a dead router's lease",
    );
    assert!(root.get(&key("routers/r3")).await.unwrap().is_none());

    // A certificate whose CN is no etcd user may do nothing at all; nor may
    // the shared test certificate any more.
    let stranger = as_user(&etcd, "mallory").await;
    refused(
        stranger.get(&key("cells/0,0")).await,
        "mallory",
        "a stranger reading",
    );
    refused(
        stranger.put(&key("routers/m"), b"{}".to_vec(), None).await,
        "mallory",
        "a stranger writing",
    );
    refused(
        shared.put(&key("cells/0,0"), b"{}".to_vec(), None).await,
        "tessera test client",
        "the shared certificate after auth",
    );
    // Only root changes roles.
    let err = apply_roles(&router, PREFIX).await.unwrap_err();
    assert!(
        matches!(err, EtcdRolesError::PermissionDenied { .. })
            && err
                .to_string()
                .contains("permission denied for user tessera-router"),
        "{err}"
    );
}

/// A grant added by hand to a Tessera role under the prefix is revoked, a
/// role given to a Tessera user by hand is taken back, and grants under
/// another prefix (another cluster on the same etcd) stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_converges_and_leaves_other_prefixes_alone() {
    let etcd = EtcdServer::start();
    let root = as_user(&etcd, "root").await;
    apply_roles(&root, PREFIX).await.expect("apply");
    apply_roles(&root, "/other/")
        .await
        .expect("apply for another prefix");
    let router = as_user(&etcd, "tessera-router").await;
    allowed(
        router.put("/other/routers/r", b"{}".to_vec(), None).await,
        "a router of the other cluster",
    );
    // Widen the router by hand: write on cells/, and the coordinator's role.
    let mut auth = etcd_client::Client::connect(
        etcd.endpoints(),
        Some(
            etcd_client::ConnectOptions::new().with_tls(tls_options(&etcd.client_tls_for("root"))),
        ),
    )
    .await
    .expect("a raw etcd client");
    auth.role_grant_permission(
        "tessera-router",
        etcd_client::Permission::read_write(format!("{PREFIX}cells/")).with_prefix(),
    )
    .await
    .unwrap();
    auth.user_grant_role("tessera-router", "tessera-coordinator")
        .await
        .unwrap();
    allowed(
        router.put(&key("cells/0,0"), b"{}".to_vec(), None).await,
        "the widened router",
    );
    let changes = apply_roles(&root, PREFIX).await.expect("apply again");
    assert!(
        changes.contains(&AuthChange::Revoked {
            role: "tessera-router".into(),
            range: "/tessera/cells/*".into()
        }) && changes.contains(&AuthChange::UserRevoked {
            user: "tessera-router".into(),
            role: "tessera-coordinator".into()
        }),
        "{changes:?}"
    );
    assert_eq!(changes.len(), 2, "{changes:?}");
    refused(
        router.put(&key("cells/0,0"), b"{}".to_vec(), None).await,
        "tessera-router",
        "the router after converging",
    );
    allowed(
        router.put("/other/routers/r", b"{}".to_vec(), None).await,
        "the other cluster's grants after converging",
    );
}

fn tls_options(tls: &EtcdTls) -> etcd_client::TlsOptions {
    let client = tls.client.as_ref().expect("a client certificate");
    let read = |p: &std::path::Path| std::fs::read(p).expect("read a TLS file");
    etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
        .identity(etcd_client::Identity::from_pem(
            read(&client.cert),
            read(&client.key),
        ))
}

/// The members' own code, each under its own certificate: the table is
/// enough for them to work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_work_under_their_own_roles() {
    use tessera_coordinator::authority::Signer;
    use tessera_coordinator::control::{self, CoordinatorConfig};
    use tessera_coordinator::membership::{
        load_key, router_key, shard_key, watch_directory, Registration, RouterRegistration,
        ShardLoad, ShardRegistration,
    };
    use tessera_coordinator::migration::{drain, mark_restored, request_move, MigrationBoard};
    use tessera_coordinator::operators::{
        OperatorCache, OperatorKey, OperatorRecord, Operators, Voucher,
    };
    use tessera_coordinator::pki::ClusterCa;
    use tessera_coordinator::transport::{Directory, Member};
    use tessera_coordinator::CellMap;
    use tessera_proto::{CellId, RegionId, RouterId, ShardId};

    let etcd = EtcdServer::start();
    let root = as_user(&etcd, "root").await;
    apply_roles(&root, PREFIX).await.expect("apply the roles");
    let store = |s: EtcdStore| -> Arc<dyn ClusterStore> { Arc::new(s) };
    let coordinator = store(as_user(&etcd, "tessera-coordinator").await);
    let shard = store(as_user(&etcd, "tessera-shard").await);
    let router = store(as_user(&etcd, "tessera-router").await);
    let gateway = store(as_user(&etcd, "tessera-gateway").await);
    let service = store(as_user(&etcd, "tessera-auth").await);
    let ctl = store(as_user(&etcd, "tessera-ctl").await);

    // An operator, vouched for by the cluster CA and written by `ctl`.
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("ca")).expect("a cluster CA");
    let alice = OperatorKey::generate("alice").unwrap();
    let record = OperatorRecord::new("alice", &alice.public_hex(), &Voucher::Ca(&ca)).unwrap();
    Operators::in_store(ctl.clone(), PREFIX, vec![ca.cert().clone()])
        .records()
        .put(&record)
        .await
        .expect("ctl writes an operator record");

    // Shards: follow the members, the map, the migrations, the operators;
    // drop their cordon; register and report load under their lease.
    let directory = Directory::default();
    watch_directory(shard.clone(), PREFIX, directory.clone())
        .await
        .expect("a shard follows the members");
    let map = CellMap::watch(shard.clone(), PREFIX)
        .await
        .expect("a shard follows the map");
    let board = MigrationBoard::watch(shard.clone(), PREFIX, None)
        .await
        .expect("a shard follows the migrations");
    let operators = OperatorCache::follow(Operators::in_store(
        shard.clone(),
        PREFIX,
        vec![ca.cert().clone()],
    ))
    .await;
    assert!(format!("{operators:?}").contains("alice"), "{operators:?}");
    let (s1, s2) = (ShardId::new("s1"), ShardId::new("s2"));
    let mut shards = Vec::new();
    for id in [&s1, &s2] {
        shard
            .delete(&tessera_coordinator::migration::draining_key(PREFIX, id))
            .await
            .expect("a shard drops its cordon");
        let registration = ShardRegistration {
            addr: "127.0.0.1:7000".parse().unwrap(),
            node: "n".into(),
            capacity: 1,
            version: "0".into(),
        };
        let reg = Registration::register(
            shard.clone(),
            shard_key(PREFIX, id),
            serde_json::to_vec(&registration).unwrap(),
            Duration::from_secs(3),
        )
        .await
        .expect("a shard registers");
        shard
            .put(
                &load_key(PREFIX, id),
                serde_json::to_vec(&ShardLoad::default()).unwrap(),
                Some(reg.lease),
            )
            .await
            .expect("a shard reports load under its lease");
        shards.push(reg);
    }

    // A router: the members, the map, its registration and draining mark.
    let router_dir = Directory::default();
    watch_directory(router.clone(), PREFIX, router_dir.clone())
        .await
        .expect("a router follows the members");
    let router_map = CellMap::watch(router.clone(), PREFIX)
        .await
        .expect("a router follows the map");
    let r1 = RouterId("r1".into());
    let value = |draining| {
        serde_json::to_vec(&RouterRegistration {
            addr: "127.0.0.1:7001".parse().unwrap(),
            telnet: "127.0.0.1:4000".parse().unwrap(),
            quic: "127.0.0.1:4433".parse().unwrap(),
            version: "0".into(),
            draining,
        })
        .unwrap()
    };
    let router_reg = Registration::register(
        router.clone(),
        router_key(PREFIX, &r1),
        value(false),
        Duration::from_secs(3),
    )
    .await
    .expect("a router registers");
    router
        .put(
            &router_key(PREFIX, &r1),
            value(true),
            Some(router_reg.lease),
        )
        .await
        .expect("a router marks itself draining");

    // A telnet gateway follows the routers.
    let seen = Arc::new(parking_lot::Mutex::new(0usize));
    let s = seen.clone();
    tessera_coordinator::store::follow(gateway.clone(), key("routers/"), move |f| {
        if let tessera_coordinator::store::Follow::Snapshot(kvs) = f {
            *s.lock() = kvs.len();
        }
    })
    .await
    .expect("a gateway follows the routers");
    assert_eq!(*seen.lock(), 1);

    // The coordinator: leader election, placement, migrations.
    let cells = vec![CellId::new(0, 0), CellId::new(1, 0)];
    let config = CoordinatorConfig {
        id: "coordinator-a".into(),
        prefix: PREFIX.into(),
        cells: cells.clone(),
        lease_ttl: Duration::from_secs(3),
        interval: Duration::from_millis(100),
        settle: Duration::ZERO,
        authority: None,
        rebalance: None,
        grid: tessera_proto::Grid::new(64.0),
        min_region_side: 8.0,
        liveness: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(control::run(config, coordinator.clone(), async move {
        let _ = stop_rx.await;
    }));
    wait_for("the coordinator places every cell", || {
        cells.iter().all(|c| map.owner(*c).is_some())
            && cells.iter().all(|c| router_map.owner(*c).is_some())
    })
    .await;
    let snapshot = tessera_coordinator::ctl::snapshot(&*ctl, PREFIX)
        .await
        .expect("ctl reads the cluster");
    assert_eq!(
        snapshot.status.leader.as_deref(),
        Some("coordinator-a"),
        "{:?}",
        snapshot.status
    );
    assert!(directory.get(&Member::Router(r1.clone())).is_some());
    assert!(router_dir.get(&Member::Shard(s1.clone())).is_some());

    // ctl moves a cell (an operator's signature); the target shard marks it
    // restored; the coordinator flips the map.
    let cell = cells[0];
    let from = map.owner(cell).unwrap().owner;
    let to = if from == s1 { s2.clone() } else { s1.clone() };
    let m = request_move(&*ctl, PREFIX, cell, &to, &Signer::operator(alice.clone()))
        .await
        .expect("ctl requests a move");
    wait_for("the shard sees the migration", || {
        board.get(RegionId::from(cell)).is_some()
    })
    .await;
    assert!(
        mark_restored(&*shard, PREFIX, cell.into(), &to, m.epoch)
            .await
            .expect("the target marks the migration restored"),
        "not marked"
    );
    wait_for("the coordinator flips the cell", || {
        map.owner(cell).is_some_and(|o| o.owner == to)
    })
    .await;

    // A shard drains: its cordon, and a move of each of its cells, which the
    // other shard restores.
    let restorer = {
        let (shard, board, draining) = (shard.clone(), board.clone(), to.clone());
        tokio::spawn(async move {
            loop {
                for (region, m) in board.outgoing(&draining) {
                    let _ = mark_restored(&*shard, PREFIX, region, &m.to, m.epoch).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let drained = drain(
        &*shard,
        PREFIX,
        &to,
        Duration::from_secs(20),
        &Signer::unchecked(format!("shard:{to}")),
    )
    .await
    .expect("a shard drains under its role");
    restorer.abort();
    assert!(drained >= 1, "nothing drained");
    wait_for(
        "the drained shard's cells show elsewhere in the map",
        || map.cells_of(&to).is_empty(),
    )
    .await;

    // A service checks an operator's request and records its nonce; the
    // replay is refused.
    let checker = Operators::in_store(service.clone(), PREFIX, vec![ca.cert().clone()]);
    let sig = alice.sign_request("role", b"bob|operator");
    assert_eq!(
        checker
            .check("role", b"bob|operator", Some(&sig))
            .await
            .expect("a service checks an operator's request"),
        "alice"
    );
    let replay = checker.check("role", b"bob|operator", Some(&sig)).await;
    assert!(
        matches!(
            replay,
            Err(tessera_coordinator::operators::OperatorError::Replayed)
        ),
        "{replay:?}"
    );

    // Everyone leaves: leases revoked by their owners take their keys along.
    router_reg.revoke().await;
    for reg in shards {
        reg.revoke().await;
    }
    let _ = stop_tx.send(());
    running.await.unwrap().expect("the coordinator stops");
    for (what, k) in [
        ("router registration", router_key(PREFIX, &r1)),
        ("shard registration", shard_key(PREFIX, &s1)),
        ("load report", load_key(PREFIX, &s2)),
        ("leader key", key("coordinator/leader")),
    ] {
        assert!(
            root.get(&k).await.unwrap().is_none(),
            "the {what} outlived its revoked lease"
        );
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
