//! A player resumed on another router takes their avatar over; the old
//! router's late `Leave` must not pull the avatar out from under the new
//! session. Two real `Shard`s, two routers and the in-process bus, driven
//! from the test.

use std::sync::Arc;
use std::time::Instant;
use tessera_coordinator::{placement, Bus, CellMap, CellOwner, LocalBus};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToRouter, ToShard};
use tessera_proto::world::parse_world;
use tessera_proto::{
    CellId, Compass, EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId, Vec3,
};
use tessera_shard::{Shard, ShardConfig};
use tokio::sync::mpsc::Receiver;

// Shard "a" owns x < 0, shard "b" x >= 0.
const WORLD: &str = r#"
name = "Resume"
cell_size = 32
spawn = [-4, 0, 4]
[extent]
min = [-2, -1]
max = [1, 0]
"#;

struct Cluster {
    shards: Vec<Shard>,
    inboxes: Vec<crossbeam_channel::Receiver<ToShard>>,
    /// Routers "r1" and "r2".
    routers: Vec<Receiver<ToRouter>>,
    /// Player events, by the session (router, session) they went to.
    events: Vec<(SessionRef, PlayerEvent)>,
}

impl Cluster {
    fn new() -> Cluster {
        let world = Arc::new(parse_world(WORLD).expect("world"));
        let ids = vec![ShardId::new("a"), ShardId::new("b")];
        let cells: Vec<CellId> = world.extent.cells().collect();
        let map = CellMap::fixed(placement::stripes(&cells, &ids).into_iter().map(|(c, s)| {
            (
                c,
                CellOwner {
                    owner: s,
                    epoch: Epoch(1),
                },
            )
        }));
        let bus = LocalBus::new();
        let routers = vec![
            bus.add_router(RouterId("r1".into())),
            bus.add_router(RouterId("r2".into())),
        ];
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let mut shards = Vec::new();
        let mut inboxes = Vec::new();
        for id in &ids {
            inboxes.push(bus.add_shard(id.clone()));
            let config = ShardConfig::new(id.clone());
            shards.push(Shard::new(config, world.clone(), dyn_bus.clone(), map.clone()).unwrap());
        }
        for s in &mut shards {
            s.step(Instant::now());
        }
        Cluster {
            shards,
            inboxes,
            routers,
            events: Vec::new(),
        }
    }

    /// Hands `msg` to shard `shard`, then delivers everything it caused.
    fn send(&mut self, shard: usize, msg: ToShard) {
        self.shards[shard].handle(msg, Instant::now());
        loop {
            let mut any = false;
            for (i, inbox) in self.inboxes.iter().enumerate() {
                while let Ok(msg) = inbox.try_recv() {
                    self.shards[i].handle(msg, Instant::now());
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        for (i, rx) in self.routers.iter_mut().enumerate() {
            while let Ok(msg) = rx.try_recv() {
                if let ToRouter::Player { session, event } = msg {
                    let to = SessionRef {
                        router: RouterId(format!("r{}", i + 1)),
                        session,
                    };
                    self.events.push((to, event));
                }
            }
        }
    }

    /// Which shard has `id`, and the session it is bound to there.
    fn avatar(&self, id: EntityId) -> Option<(usize, Option<SessionRef>)> {
        self.shards.iter().enumerate().find_map(|(i, s)| {
            s.cells()
                .find(|c| c.contains(id))
                .map(|c| (i, c.session(id)))
        })
    }

    fn left(&self, to: &SessionRef) -> Vec<Vec3> {
        self.events
            .iter()
            .filter_map(|(s, e)| match e {
                PlayerEvent::Left { pos } if s == to => Some(*pos),
                _ => None,
            })
            .collect()
    }
}

fn session(router: &str, session: u64) -> SessionRef {
    SessionRef {
        router: RouterId(router.into()),
        session: SessionId(session),
    }
}

fn join(session: &SessionRef, player: u64, pos: Vec3) -> ToShard {
    ToShard::Join {
        session: session.clone(),
        player: PlayerId(player),
        name: "Ann".into(),
        pos,
    }
}

#[test]
fn a_late_leave_from_the_old_router_keeps_the_resumed_avatar() {
    let mut c = Cluster::new();
    let (s1, s2) = (session("r1", 1), session("r2", 9));
    let at = Vec3::new(-8.0, 0.0, -8.0);
    c.send(0, join(&s1, 5, at));
    let ann = EntityId::for_player(PlayerId(5));
    assert_eq!(c.avatar(ann), Some((0, Some(s1.clone()))));
    // The player resumes on router r2: the avatar is taken over.
    c.send(0, join(&s2, 5, at));
    assert_eq!(c.avatar(ann), Some((0, Some(s2.clone()))));
    let pos = c.shards[0]
        .cells()
        .find_map(|cell| cell.position(ann))
        .unwrap();
    // Router r1's connection ends later: its Leave changes nothing, and r1
    // is told at once where the avatar is.
    c.send(
        0,
        ToShard::Leave {
            entity: ann,
            session: s1.clone(),
        },
    );
    assert_eq!(c.avatar(ann), Some((0, Some(s2.clone()))), "still r2's");
    assert_eq!(c.shards[0].entity_count(), 1);
    assert_eq!(c.left(&s1), vec![pos]);
    assert!(c.left(&s2).is_empty(), "r2's player is not told it left");
    // The bound session's Leave removes it.
    c.send(
        0,
        ToShard::Leave {
            entity: ann,
            session: s2.clone(),
        },
    );
    assert_eq!(c.avatar(ann), None);
    assert_eq!(c.shards[0].entity_count(), 0);
    assert_eq!(c.left(&s2), vec![pos]);
}

#[test]
fn a_leave_forwarded_to_the_avatars_new_shard_keeps_its_session() {
    let mut c = Cluster::new();
    let (s1, s2) = (session("r1", 1), session("r2", 9));
    c.send(0, join(&s1, 6, Vec3::new(-0.5, 0.0, -8.0)));
    let bob = EntityId::for_player(PlayerId(6));
    // One 3 m step east crosses to shard b at once.
    c.send(
        0,
        ToShard::Step {
            entity: bob,
            dir: Compass::East,
        },
    );
    assert_eq!(c.avatar(bob), Some((1, Some(s1.clone()))));
    // Router r2 resumes the player on b; r1 still thinks the avatar is on
    // a and sends its Leave there: a forwards it, b keeps the avatar.
    c.send(1, join(&s2, 6, Vec3::new(2.5, 0.0, -8.0)));
    c.send(
        0,
        ToShard::Leave {
            entity: bob,
            session: s1.clone(),
        },
    );
    assert_eq!(c.avatar(bob), Some((1, Some(s2.clone()))));
    assert_eq!(c.left(&s1).len(), 1, "r1 got its answer via b");
    // r2's Leave, also sent to a, is forwarded and removes the avatar.
    c.send(
        0,
        ToShard::Leave {
            entity: bob,
            session: s2.clone(),
        },
    );
    assert_eq!(c.avatar(bob), None);
    assert_eq!(c.left(&s2).len(), 1);
}
