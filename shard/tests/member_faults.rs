//! A shard member whose simulation thread dies gives up its registration at once, so its
//! cells fail over now rather than when the lease runs out, and says so (issue 16, item 1).
//! The thread is made to die by the test-only fault switch (feature `fault-injection`).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::authority::ClusterTrust;
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::member::Membership;
use tessera_coordinator::membership::shard_key;
use tessera_coordinator::pki::ClusterCa;
use tessera_coordinator::{cellmap, placement, ClusterStore, MemStore};
use tessera_proto::world::parse_world;
use tessera_proto::ShardId;
use tessera_shard::member::{run, MemberConfig, MemberError, ShardState};
use tessera_shard::ShardConfig;

const WORLD: &str = r#"
name = "Faults"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

const PREFIX: &str = "/t/";

async fn member(store: Arc<dyn ClusterStore>, panic_at_tick: Option<u64>) -> MemberConfig {
    let ca = ClusterCa::generate().expect("a CA");
    let identity = Arc::new(ca.member(MemberRole::Shard, "s1").expect("a member"));
    let world = Arc::new(parse_world(WORLD).expect("world"));
    let id = ShardId::new("s1");
    let cells: Vec<_> = world.extent.cells().collect();
    cellmap::place_unowned(
        &*store,
        PREFIX,
        &placement::stripes(&cells, std::slice::from_ref(&id)),
    )
    .await
    .expect("cells placed");
    let mut shard = ShardConfig::new(id);
    shard.panic_at_tick = panic_at_tick;
    MemberConfig {
        shard,
        world,
        trust: ClusterTrust::new(ca.trust().to_vec()).with_identity(identity.clone()),
        membership: Membership {
            store,
            prefix: PREFIX.into(),
            identity,
            listen: "127.0.0.1:0".parse().expect("an address"),
            advertise: None,
            // A long lease: only giving it up makes the registration vanish in time.
            lease_ttl: Duration::from_secs(60),
            cluster_format: tessera_coordinator::transport::CLUSTER_FORMAT,
        },
        capacity: 1,
        node: "test".into(),
        drain_timeout: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_simulation_thread_gives_up_the_registration_at_once() {
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let (state, mut watch) = tokio::sync::watch::channel(ShardState::Starting);
    let config = member(store.clone(), Some(20)).await;
    let started = Instant::now();
    let running = tokio::spawn(run(config, std::future::pending(), state));
    watch
        .wait_for(|s| matches!(s, ShardState::Serving { .. }))
        .await
        .expect("the shard registers");
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the member ends when its simulation dies")
        .expect("no panic escapes the member");
    assert!(
        matches!(outcome, Err(MemberError::SimulationDied(ref id)) if id.0 == "s1"),
        "{outcome:?}"
    );
    let key = shard_key(PREFIX, &ShardId::new("s1"));
    assert!(
        store.get(&key).await.expect("the store answers").is_none(),
        "the registration outlived the simulation ({:?} after start)",
        started.elapsed()
    );
}

/// The same member without the fault keeps its registration until told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_shard_keeps_its_registration_until_stopped() {
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let (state, mut watch) = tokio::sync::watch::channel(ShardState::Starting);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = member(store.clone(), None).await;
    let running = tokio::spawn(run(
        config,
        async {
            let _ = stopped.await;
        },
        state,
    ));
    watch
        .wait_for(|s| matches!(s, ShardState::Serving { .. }))
        .await
        .expect("the shard registers");
    // Well past tick 20 at 30 Hz.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let key = shard_key(PREFIX, &ShardId::new("s1"));
    assert!(store.get(&key).await.expect("the store answers").is_some());
    let _ = stop.send(());
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the member stops")
        .expect("no panic");
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(store.get(&key).await.expect("the store answers").is_none());
}
