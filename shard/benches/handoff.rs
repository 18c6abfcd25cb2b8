//! `cargo bench -p tessera-shard --bench handoff`: cross-shard hand-off
//! latency of one player, as a router (and so a client) sees it.
//!
//! Two shards run on their own threads at 30 Hz, each with a real `QuicBus`
//! (QUIC with mutual TLS over loopback, the cluster bus of separate
//! processes), and a third bus plays the router. A player paces east and
//! west across the shard border. For every crossing the bench measures the
//! gap between the last cell frame from the old shard that shows the player
//! and the first frame from the new shard that does: the time the player is
//! invisible (or frozen) to its viewers. The target is under two ticks.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does two
//! crossings only.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_coordinator::{
    pki::ClusterCa,
    transport::{Directory, LocalInbox, Member, QuicBus},
};
use tessera_coordinator::{Bus, CellMap, CellOwner};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::msg::Input;
use tessera_proto::world::parse_world;
use tessera_proto::{CellId, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3};
use tessera_shard::{spawn_shard, Shard, ShardConfig};

const WORLD: &str = r#"
name = "Handoff"
cell_size = 64
spawn = [-4, 0, 32]
[extent]
min = [-1, 0]
max = [0, 0]
"#;

const TICK_HZ: u32 = 30;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let crossings = if quick { 2 } else { 60 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ClusterCa::create(&dir.path().join("ca")).expect("cluster CA");
    let (a, b) = (ShardId::new("a"), ShardId::new("b"));
    let router = RouterId("r".into());
    let world = Arc::new(parse_world(WORLD).expect("world"));
    let owner = |s: &ShardId| CellOwner {
        owner: s.clone(),
        epoch: Epoch(1),
    };
    let map = CellMap::fixed([
        (CellId::new(-1, 0), owner(&a)),
        (CellId::new(0, 0), owner(&b)),
    ]);
    let directory = Directory::default();
    let listen = "127.0.0.1:0".parse().expect("address");

    let mut handles = Vec::new();
    for id in [&a, &b] {
        let (tx, inbox) = crossbeam_channel::unbounded();
        let bus = QuicBus::start(
            &ca.member(
                tessera_coordinator::identity::MemberRole::Shard,
                &format!("shard {id}"),
            )
            .expect("identity"),
            listen,
            LocalInbox::Shard(id.clone(), tx),
            directory.clone(),
        )
        .expect("shard bus");
        directory.set(Member::Shard(id.clone()), bus.local_addr().expect("addr"));
        let mut config = ShardConfig::new(id.clone());
        config.tick_hz = TICK_HZ;
        let dyn_bus: Arc<dyn Bus> = bus;
        let shard = Shard::new(config, world.clone(), dyn_bus, map.clone()).expect("shard");
        handles.push(spawn_shard(shard, inbox).expect("shard thread"));
    }
    let (tx, mut inbox) = tessera_coordinator::bus::router_inbox();
    let router_bus = QuicBus::start(
        &ca.member(
            tessera_coordinator::identity::MemberRole::Router,
            "router r",
        )
        .expect("identity"),
        listen,
        LocalInbox::Router(router.clone(), tx),
        directory.clone(),
    )
    .expect("router bus");
    directory.set(
        Member::Router(router.clone()),
        router_bus.local_addr().expect("addr"),
    );

    let player = PlayerId(1);
    let entity = EntityId::for_player(player);
    router_bus
        .to_shard(
            &a,
            ToShard::Join {
                session: SessionRef {
                    router: router.clone(),
                    session: SessionId(1),
                },
                player,
                name: "Pacer".into(),
                pos: Vec3::new(-4.0, 0.0, 32.0),
            },
        )
        .expect("join");

    let period = Duration::from_secs_f64(1.0 / TICK_HZ as f64);
    let mut owner_now = a.clone();
    let mut seq = 0u32;
    let mut heading_east = true;
    let steer = |to: &ShardId, east: bool, seq: &mut u32| {
        *seq += 1;
        let input = Input {
            seq: *seq,
            move_x: if east { 1.0 } else { -1.0 },
            move_z: 0.0,
            yaw: 0.0,
            jump: false,
        };
        let _ = router_bus.to_shard(to, ToShard::Input { entity, input });
    };
    // Last frame showing the player: (shard, when it arrived).
    let mut last_seen: Option<(ShardId, Instant)> = None;
    let mut gaps: Vec<Duration> = Vec::new();
    let mut turn_at: Option<Instant> = None;
    let mut steered = false;
    let deadline = Instant::now() + Duration::from_secs(20 + crossings as u64 * 3);
    while gaps.len() < crossings {
        assert!(Instant::now() < deadline, "the player stopped crossing");
        let msg = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
        });
        let Ok(Some(msg)) = msg else {
            continue;
        };
        let now = Instant::now();
        match msg {
            ToRouter::Player { event, .. } => match event {
                PlayerEvent::Joined { shard, .. } | PlayerEvent::OwnerChanged { shard, .. } => {
                    owner_now = shard;
                    if !steered {
                        steer(&owner_now, heading_east, &mut seq);
                        steered = true;
                    } else {
                        // Walk on for a moment past the border, then turn.
                        turn_at = Some(now + Duration::from_millis(600));
                    }
                }
                _ => {}
            },
            ToRouter::Frame(frame) => {
                if !frame.entities.iter().any(|e| e.id == entity) {
                    continue;
                }
                if let Some((shard, at)) = &last_seen {
                    if *shard != frame.shard {
                        gaps.push(now.duration_since(*at));
                    }
                }
                last_seen = Some((frame.shard.clone(), now));
            }
            ToRouter::SavePlayer { .. } => {}
        }
        if turn_at.is_some_and(|t| now >= t) {
            turn_at = None;
            heading_east = !heading_east;
            steer(&owner_now, heading_east, &mut seq);
        }
    }
    for h in handles {
        h.stop();
    }
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ticks = |d: Duration| d.as_secs_f64() / period.as_secs_f64();
    let pick = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
    println!(
        "cross-shard hand-off over QUIC, {} crossings at {TICK_HZ} Hz: gap between the old shard's last frame and the new shard's first \
         p50 {:.1} ms ({:.2} ticks), p90 {:.1} ms ({:.2} ticks), max {:.1} ms ({:.2} ticks)",
        gaps.len(),
        ms(pick(0.5)),
        ticks(pick(0.5)),
        ms(pick(0.9)),
        ticks(pick(0.9)),
        ms(pick(1.0)),
        ticks(pick(1.0)),
    );
}
