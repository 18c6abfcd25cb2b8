//! The cluster-store conformance suite against a real etcd (Debian's
//! `etcd-server`, started on free loopback ports, reached over TLS with a
//! client certificate as in a deployment), plus what only a real
//! server can show: a watch closes when etcd dies, and the same store works
//! again once etcd is back.
//!
//! Fails, rather than skips, when the etcd binary is missing: run
//! `scripts/test.sh`, which installs it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::etcd::EtcdServer;
use tessera_coordinator::conformance::{list_in_key_order_under_prefix, run_all};
use tessera_coordinator::store::{ClusterStore, WatchEvent};
use tessera_coordinator::{EtcdStore, StoreError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_store_conforms() {
    let etcd = EtcdServer::start();
    let store = EtcdStore::connect(&etcd.endpoints(), Some(&etcd.tls()), CONNECT_TIMEOUT)
        .await
        .expect("connect to the test etcd");
    let paged = store.clone().with_list_page(2);
    run_all(Arc::new(store), "/tessera-conformance/").await;
    // `list` reads big prefixes in pages; make every list here take several.
    list_in_key_order_under_prefix(&paged, "/tessera-conformance-paged/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_closes_when_etcd_dies_and_the_store_recovers() {
    let mut etcd = EtcdServer::start();
    let store = EtcdStore::connect(&etcd.endpoints(), Some(&etcd.tls()), CONNECT_TIMEOUT)
        .await
        .expect("connect to the test etcd")
        .with_request_timeout(Duration::from_secs(2));
    let rev = store
        .put("/t/cells/0,0", b"a".to_vec(), None)
        .await
        .unwrap();
    let mut events = store.watch("/t/").await.unwrap();

    etcd.stop();
    // The caller notices: the channel closes (and must re-list and re-watch).
    match tokio::time::timeout(Duration::from_secs(15), events.recv()).await {
        Ok(None) => {}
        Ok(Some(event)) => panic!("event from a dead etcd: {event:?}"),
        Err(_) => panic!("watch still open 15 s after etcd died"),
    }
    match store.get("/t/cells/0,0").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("get from a dead etcd: {other:?}"),
    }

    etcd.restart();
    // The same store reconnects by itself; the data survived on disk.
    let start = Instant::now();
    let kv = loop {
        match store.get("/t/cells/0,0").await {
            Ok(kv) => break kv.expect("key survived the restart"),
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("waiting for etcd to come back: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover after the etcd restart: {e}"),
        }
    };
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"a"[..], rev));
    let mut events = store.watch("/t/").await.unwrap();
    let rev2 = store
        .put("/t/cells/0,0", b"b".to_vec(), None)
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(WatchEvent::Put(kv))) => assert_eq!(kv.mod_revision, rev2),
        other => panic!("expected the put on the new watch, got {other:?}"),
    }
}

/// The cell map and the member directory keep following etcd after it
/// restarts: their watches re-list and re-watch, so a change made after the
/// restart (and a registration deleted while etcd was away) shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cell_map_and_directory_resync_after_an_etcd_restart() {
    use tessera_coordinator::cellmap::cell_key;
    use tessera_coordinator::membership::{shard_key, watch_directory, ShardRegistration};
    use tessera_coordinator::transport::{Directory, Member};
    use tessera_coordinator::{CellMap, CellOwner};
    use tessera_proto::{CellId, Epoch, ShardId};

    let mut etcd = EtcdServer::start();
    let store: Arc<dyn ClusterStore> = Arc::new(
        EtcdStore::connect(&etcd.endpoints(), Some(&etcd.tls()), CONNECT_TIMEOUT)
            .await
            .expect("connect")
            .with_request_timeout(Duration::from_secs(2)),
    );
    let owner = |s: &str, e: u64| {
        serde_json::to_vec(&CellOwner {
            owner: ShardId::new(s),
            epoch: Epoch(e),
        })
        .unwrap()
    };
    let cell = CellId::new(0, 0);
    store
        .put(&cell_key("/r/", cell), owner("a", 1), None)
        .await
        .unwrap();
    let reg = ShardRegistration {
        addr: "127.0.0.1:7000".parse().unwrap(),
        node: "n".into(),
        capacity: 1,
        version: "0".into(),
    };
    let gone = ShardId::new("gone");
    store
        .put(
            &shard_key("/r/", &gone),
            serde_json::to_vec(&reg).unwrap(),
            None,
        )
        .await
        .unwrap();
    let map = CellMap::watch(store.clone(), "/r/").await.unwrap();
    let directory = Directory::default();
    watch_directory(store.clone(), "/r/", directory.clone())
        .await
        .unwrap();
    assert_eq!(map.owner(cell).unwrap().owner.0, "a");
    assert!(directory.get(&Member::Shard(gone.clone())).is_some());

    etcd.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart();
    // Changes after the restart: a new owner, and the registration gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if store
            .put(&cell_key("/r/", cell), owner("b", 2), None)
            .await
            .is_ok()
            && store.delete(&shard_key("/r/", &gone)).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while map.owner(cell).map(|o| o.owner.0) != Some("b".into())
        || directory.get(&Member::Shard(gone.clone())).is_some()
    {
        assert!(
            Instant::now() < deadline,
            "map or directory did not re-sync: owner {:?}, gone still listed: {}",
            map.owner(cell),
            directory.get(&Member::Shard(gone.clone())).is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A split cell's tree goes through a real etcd: written with one
/// compare-and-put on the old whole-cell value's revision (what a split
/// does), then seen by a watching cell map and by a listing, while a cell
/// written in the old format beside it still reads as a whole cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_cell_tree_round_trips_through_etcd() {
    use tessera_coordinator::cellmap::{cell_key, list_trees, next_epoch, tree_json, CellTree};
    use tessera_coordinator::store::Expect;
    use tessera_coordinator::{CellMap, CellOwner};
    use tessera_proto::{CellId, Epoch, Grid, RegionId, ShardId, Vec3};

    let etcd = EtcdServer::start();
    let store: Arc<dyn ClusterStore> = Arc::new(
        EtcdStore::connect(&etcd.endpoints(), Some(&etcd.tls()), CONNECT_TIMEOUT)
            .await
            .expect("connect"),
    );
    let owner = |s: &str, e: u64| CellOwner {
        owner: ShardId::new(s),
        epoch: Epoch(e),
    };
    let (split_cell, old_cell) = (CellId::new(0, 0), CellId::new(1, 0));
    store
        .put(
            &cell_key("/s/", old_cell),
            br#"{"owner":"b","epoch":2}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    let rev = store
        .put(
            &cell_key("/s/", split_cell),
            tree_json(&CellTree::whole(owner("a", 1))),
            None,
        )
        .await
        .unwrap();
    let map = CellMap::watch(store.clone(), "/s/").await.unwrap();
    let mut tree = CellTree::whole(owner("a", 1));
    let e = next_epoch(&tree).0;
    tree.split(
        RegionId::cell(split_cell),
        [owner("a", e), owner("b", e), owner("a", e), owner("c", e)],
    )
    .unwrap();
    let written = store
        .compare_and_put(
            &cell_key("/s/", split_cell),
            Expect::ModRevision(rev),
            tree_json(&tree),
            None,
        )
        .await
        .unwrap();
    assert!(written.is_some(), "the split's compare-and-put failed");
    // A second split from the same revision loses: one change per revision.
    let again = store
        .compare_and_put(
            &cell_key("/s/", split_cell),
            Expect::ModRevision(rev),
            tree_json(&CellTree::whole(owner("z", 9))),
            None,
        )
        .await
        .unwrap();
    assert!(again.is_none());
    let grid = Grid::new(64.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while map
        .owner_at(&grid, Vec3::new(50.0, 0.0, 50.0))
        .map(|(_, o)| o)
        != Some(owner("c", 2))
    {
        assert!(Instant::now() < deadline, "the watch did not see the split");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(map.owner(old_cell), Some(owner("b", 2)));
    let listed = list_trees(&*store, "/s/").await.unwrap();
    assert_eq!(listed.len(), 2);
    let split = listed.iter().find(|t| t.cell == split_cell).unwrap();
    assert_eq!(split.tree, tree);
    assert_eq!(
        listed.iter().find(|t| t.cell == old_cell).unwrap().whole(),
        Some(&owner("b", 2))
    );
}
