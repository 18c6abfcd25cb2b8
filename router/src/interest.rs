//! Interest management for one QUIC player: which entities the player
//! knows (appear/gone on the control stream) and which of them each
//! snapshot carries. Pure: fed the entities in view, it decides.
//!
//! What bounds a client's bandwidth (docs/protocol.md, "Interest
//! management"):
//! - at most [`MAX_VISIBLE`] entities, the nearest, are known at once, so a
//!   crowd costs no more than this many;
//! - the nearer an entity, the more often it is sent: every snapshot within
//!   [`NEAR`], every second one within [`MID`], every fourth beyond (phased
//!   by entity id, so the load is spread over snapshots); the player's own
//!   entity is in every snapshot;
//! - an entity that has not changed since it was last sent is skipped, but
//!   sent again at least every [`REFRESH`] snapshots, since datagrams can
//!   be lost;
//! - updates are packed by `tessera_proto::snapshot`: each entity is named
//!   by a small slot given here (and in its `EntityAppeared`), and a slot
//!   freed by `EntityGone` is not given again for [`SLOT_QUARANTINE`]
//!   snapshots, so a late datagram cannot move the wrong entity.

use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use tessera_proto::cluster::ViewEntity;
use tessera_proto::frame;
use tessera_proto::msg::ServerDatagram;
use tessera_proto::snapshot::{self, EntityUpdate, MAX_SLOT};
use tessera_proto::{EntityId, Vec3};

/// Most entities a player knows at once (the nearest).
pub const MAX_VISIBLE: usize = 64;
/// Within this distance (m) an entity is sent in every snapshot.
pub const NEAR: f32 = 16.0;
/// Within this distance, in every second snapshot; beyond, every fourth.
pub const MID: f32 = 40.0;
/// An unchanged entity is sent again after this many snapshots (1 s at
/// 20 Hz).
pub const REFRESH: u64 = 20;
/// A freed slot is given to another entity only after this many snapshots
/// (5 s at 20 Hz): far longer than a datagram can trail the control stream.
pub const SLOT_QUARANTINE: u64 = 100;

/// What the player was last sent of an entity.
struct Sent {
    slot: u16,
    update: Option<EntityUpdate>,
    /// The snapshot number it was sent in.
    at: u64,
    /// The last snapshot it was among the nearest in.
    seen: u64,
}

/// One player's interest state.
#[derive(Default)]
pub struct Interest {
    known: FxHashMap<EntityId, Sent>,
    /// Snapshots built so far.
    n: u64,
    slots: Slots,
}

/// The slots a player's entities are named by.
#[derive(Default)]
struct Slots {
    /// Slots free to give, lowest first (fewest bytes).
    free: BTreeSet<u16>,
    /// Slots freed, with the snapshot they were freed in, oldest first.
    quarantine: VecDeque<(u16, u64)>,
    /// Slots never given yet start here.
    next_slot: u16,
}

/// What to send for one snapshot.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Newly visible entities and their slots: send `EntityAppeared` first.
    pub appeared: Vec<(ViewEntity, u16)>,
    /// No longer visible: send `EntityGone`.
    pub gone: Vec<EntityId>,
    /// The snapshot's updates, the player's own first, then nearest first.
    pub updates: Vec<EntityUpdate>,
    /// The input of the player's own entity the shard has applied.
    pub ack_input: u32,
}

fn update_of(slot: u16, e: &ViewEntity) -> EntityUpdate {
    EntityUpdate::quantize(slot, e.pos, e.vel, e.yaw)
}

impl Interest {
    pub fn known(&self) -> usize {
        self.known.len()
    }

    /// The slot of a known entity.
    pub fn slot(&self, id: EntityId) -> Option<u16> {
        self.known.get(&id).map(|s| s.slot)
    }

    /// Plans the next snapshot for a player whose entity is `me`, standing
    /// at `at`, given `visible` (every entity in range, nearest first).
    ///
    /// Every QUIC player's every snapshot runs this, so it looks each
    /// entity up once, and quantizes an update only when it may be sent.
    pub fn plan(&mut self, me: EntityId, at: Vec3, visible: &[ViewEntity]) -> Plan {
        let n = self.n;
        self.n += 1;
        let mut plan = Plan::default();
        // The player's own entity, then the nearest others.
        let mine = visible.iter().find(|e| e.id == me);
        plan.ack_input = mine.map(|e| e.ack_input).unwrap_or(0);
        if mine.is_none() {
            // No ack and no update of the player's own avatar in this
            // snapshot: a hand-off under way, or a view gone stale.
            metrics::counter!("tessera_router_snapshots_without_self_total").increment(1);
        }
        let chosen = mine
            .into_iter()
            .chain(visible.iter().filter(|e| e.id != me).take(MAX_VISIBLE - 1));
        for e in chosen {
            let sent = match self.known.entry(e.id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    let Some(slot) = self.slots.take(n) else {
                        continue;
                    };
                    plan.appeared.push((e.clone(), slot));
                    v.insert(Sent {
                        slot,
                        update: None,
                        at: 0,
                        seen: n,
                    })
                }
            };
            sent.seen = n;
            let period = if e.id == me {
                1
            } else {
                let d = e.pos.distance_xz(at);
                if d < NEAR {
                    1
                } else if d < MID {
                    2
                } else {
                    4
                }
            };
            let due = (n + e.id.0 % period).is_multiple_of(period);
            let stale = n - sent.at >= REFRESH;
            // New, the player's own, or not sent for a while: sent anyway;
            // otherwise when due, if it changed.
            let always = sent.update.is_none() || e.id == me || stale;
            if !(always || due) {
                continue;
            }
            let update = update_of(sent.slot, e);
            if always || sent.update.as_ref() != Some(&update) {
                sent.update = Some(update);
                sent.at = n;
                plan.updates.push(update);
            }
        }
        // Known but no longer among the nearest: gone, its slot quarantined.
        let slots = &mut self.slots;
        self.known.retain(|id, sent| {
            if sent.seen == n {
                return true;
            }
            plan.gone.push(*id);
            slots.quarantine.push_back((sent.slot, n));
            false
        });
        plan.gone.sort();
        plan
    }
}

impl Slots {
    /// A slot for a newly visible entity in snapshot `n`: the lowest free
    /// one, else a new one. None only if every slot is known or in
    /// quarantine, which takes far more churn than [`MAX_VISIBLE`]
    /// entities can make.
    fn take(&mut self, n: u64) -> Option<u16> {
        while let Some(&(slot, freed)) = self.quarantine.front() {
            if n - freed < SLOT_QUARANTINE {
                break;
            }
            self.quarantine.pop_front();
            self.free.insert(slot);
        }
        if let Some(slot) = self.free.pop_first() {
            return Some(slot);
        }
        if self.next_slot > MAX_SLOT {
            return None;
        }
        self.next_slot += 1;
        Some(self.next_slot - 1)
    }
}

/// When a QUIC player's snapshots go out: at `snapshot_hz` on average, each
/// right after a frame of the player's region has arrived, so a snapshot
/// carries the newest tick instead of one up to a snapshot period old.
///
/// A free-running 20 Hz timer beside 30 Hz ticks made a snapshot wait 0 to
/// 50 ms after the frame it carried, so input-to-ack was up to a tick plus
/// a whole snapshot period (p99 about 86 ms on an idle router; see
/// docs/performance.md, "Capacity per core"). Timed to frames it is up to
/// a tick plus the frames skipped to keep the rate: one in three at 30 Hz
/// ticks and 20 Hz snapshots.
///
/// Each snapshot is due a period after the previous one was due (not after
/// it was sent), so the rate holds exactly; a frame up to [`FRAME_EARLY`]
/// before that is taken, since the next may be a whole tick later. With no
/// frames (a shard stalled, or a cell being handed over) snapshots still go
/// out at [`SnapshotClock::deadline`], half a period late.
#[derive(Debug)]
pub struct SnapshotClock {
    period: Duration,
    due: Instant,
}

/// How early a frame may arrive before a snapshot is due and still carry it.
pub const FRAME_EARLY: Duration = Duration::from_millis(10);
/// How early, when the player has sent an input since its last snapshot:
/// the frame that may carry the input's ack goes out rather than wait a
/// tick for the next (docs/protocol.md, "Interest management"). At 30 Hz
/// frames and 20 Hz snapshots the frame left out is 17 ms early, so this
/// takes it; it stays under 27 ms, beyond which an early snapshot would
/// leave the next two frames out (a 100 ms gap, measured: input-to-ack p99
/// 107 -> 151 ms at 600 players with 40 ms).
pub const ACK_EARLY: Duration = Duration::from_millis(25);

impl SnapshotClock {
    /// The first snapshot is due at once.
    pub fn new(period: Duration, now: Instant) -> SnapshotClock {
        SnapshotClock { period, due: now }
    }

    /// A frame of the player's region arrived at `now`: true if a snapshot
    /// should go out (it then counts as sent). `input_waiting`: the player
    /// sent an input since its last snapshot, so this frame may ack it and
    /// is taken up to [`ACK_EARLY`] before the snapshot is due. An early
    /// snapshot still moves the next one a whole period on, so the rate
    /// never rises: with 30 Hz frames and 20 Hz snapshots, the frame left
    /// out is one without an ack to carry where it can be.
    pub fn on_frame(&mut self, now: Instant, input_waiting: bool) -> bool {
        let early = if input_waiting {
            ACK_EARLY
        } else {
            FRAME_EARLY
        };
        if now + early.min(self.period) < self.due {
            return false;
        }
        self.sent(now);
        true
    }

    /// When a snapshot goes out even without a frame.
    pub fn deadline(&self) -> Instant {
        self.due + self.period / 2
    }

    /// A snapshot went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.due += self.period;
        // Fallen behind (the task was starved): start again from now
        // rather than send a burst.
        if self.due + self.period < now {
            self.due = now + self.period;
        }
    }
}

/// A snapshot's updates, relative to `origin` (the player's own position),
/// as encoded datagrams of at most `max` bytes each, in order; at least one
/// (an empty snapshot still carries the tick and the input ack).
pub fn encode_snapshot(
    tick: u64,
    ack_input: u32,
    origin: Vec3,
    updates: &[EntityUpdate],
    max: usize,
) -> Vec<Vec<u8>> {
    let origin = snapshot::quantize_pos(origin);
    let encode = |entities: Vec<u8>| {
        frame::encode(&ServerDatagram::Snapshot {
            tick,
            ack_input,
            origin,
            entities,
        })
        .expect("a snapshot encodes")
    };
    // The empty snapshot's size, plus each update's, plus room for the
    // length prefix of the bytes.
    let base = encode(Vec::new()).len() + 4;
    let mut out = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    for u in updates {
        if !chunk.is_empty() && base + chunk.len() + u.encoded_len(origin) > max {
            out.push(encode(std::mem::take(&mut chunk)));
        }
        u.encode(origin, &mut chunk);
    }
    out.push(encode(chunk));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use tessera_proto::msg::EntityKind;

    fn entity(id: u64, x: f32) -> ViewEntity {
        ViewEntity {
            id: EntityId(id),
            kind: EntityKind::Npc,
            name: format!("e{id}").into(),
            pos: Vec3::new(x, 0.0, 0.0),
            vel: Vec3::ZERO,
            yaw: 0.0,
            ack_input: 0,
        }
    }

    /// The entities the updates name, through the slots `i` gave them.
    fn ids(i: &Interest, updates: &[EntityUpdate]) -> Vec<u64> {
        updates
            .iter()
            .map(|u| {
                i.known
                    .iter()
                    .find(|(_, s)| s.slot == u.slot)
                    .map(|(id, _)| id.0)
                    .expect("an update names a known entity")
            })
            .collect()
    }

    #[test]
    fn a_crowd_is_capped_to_the_nearest_and_the_player_comes_first() {
        let mut i = Interest::default();
        let me = EntityId(1);
        let mut visible: Vec<ViewEntity> = (2..500).map(|k| entity(k, k as f32 * 0.1)).collect();
        visible.push(entity(1, 0.0));
        let plan = i.plan(me, Vec3::ZERO, &visible);
        assert_eq!(plan.appeared.len(), MAX_VISIBLE);
        assert_eq!(plan.updates.len(), MAX_VISIBLE, "all new: all sent");
        assert_eq!(ids(&i, &plan.updates)[..2], [1, 2]);
        assert_eq!(i.known(), MAX_VISIBLE);
        let slots: HashSet<u16> = plan.appeared.iter().map(|(_, s)| *s).collect();
        assert_eq!(slots.len(), MAX_VISIBLE, "every entity its own slot");
        assert!(
            slots.iter().all(|s| usize::from(*s) < MAX_VISIBLE),
            "lowest first"
        );
    }

    #[test]
    fn nearer_is_sent_more_often_and_unchanged_is_skipped_until_refreshed() {
        let mut i = Interest::default();
        let me = EntityId(1);
        // Moving entities: near (5 m), mid (30 m) and far (80 m).
        let at = |n: u64| {
            vec![
                entity(1, 0.0),
                ViewEntity {
                    pos: Vec3::new(5.0, 0.0, n as f32 * 0.1),
                    ..entity(10, 5.0)
                },
                ViewEntity {
                    pos: Vec3::new(30.0, 0.0, n as f32 * 0.1),
                    ..entity(20, 30.0)
                },
                ViewEntity {
                    pos: Vec3::new(80.0, 0.0, n as f32 * 0.1),
                    ..entity(40, 80.0)
                },
                entity(99, 6.0), // stands still
            ]
        };
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for n in 0..40u64 {
            let plan = i.plan(me, Vec3::ZERO, &at(n));
            for id in ids(&i, &plan.updates) {
                *counts.entry(id).or_default() += 1;
            }
        }
        assert_eq!(counts[&1], 40, "own entity: every snapshot");
        assert_eq!(counts[&10], 40, "near: every snapshot");
        assert_eq!(counts[&20], 20, "mid: every second");
        assert_eq!(counts[&40], 10, "far: every fourth");
        // Still: once when it appeared, then once per refresh.
        assert_eq!(counts[&99], 2);
    }

    #[test]
    fn snapshots_split_into_datagrams_that_fit_and_keep_every_update() {
        // Near and far (wide positions), at rest and moving, small and
        // two-byte slots.
        let updates: Vec<EntityUpdate> = (0..500u64)
            .map(|k| {
                let e = ViewEntity {
                    vel: Vec3::new(k as f32 % 3.0, 0.0, 0.0),
                    ..entity(k | (1 << 63), k as f32 * 2.0)
                };
                update_of(k as u16 * 7, &e)
            })
            .collect();
        let origin = Vec3::new(10.0, 0.0, 0.0);
        let dgs = encode_snapshot(7, 3, origin, &updates, 1200);
        assert!(dgs.len() > 1);
        let mut back = Vec::new();
        for d in &dgs {
            assert!(d.len() <= 1200, "{} bytes", d.len());
            let ServerDatagram::Snapshot {
                tick,
                ack_input,
                origin,
                entities,
            } = frame::decode(d, 1200).unwrap();
            assert_eq!((tick, ack_input), (7, 3));
            back.extend(snapshot::decode_updates(origin, &entities).unwrap());
        }
        assert_eq!(back, updates);
        assert_eq!(encode_snapshot(7, 3, origin, &[], 1200).len(), 1);
    }

    #[test]
    fn entities_out_of_view_are_gone_and_come_back_as_new() {
        let mut i = Interest::default();
        let me = EntityId(1);
        i.plan(me, Vec3::ZERO, &[entity(1, 0.0), entity(7, 3.0)]);
        let plan = i.plan(me, Vec3::ZERO, &[entity(1, 0.0)]);
        assert_eq!(plan.gone, vec![EntityId(7)]);
        let plan = i.plan(me, Vec3::ZERO, &[entity(1, 0.0), entity(7, 3.0)]);
        assert_eq!(plan.appeared.len(), 1);
        assert!(ids(&i, &plan.updates).contains(&7));
    }

    #[test]
    fn a_freed_slot_waits_out_its_quarantine_before_another_entity_gets_it() {
        let mut i = Interest::default();
        let me = EntityId(1);
        i.plan(me, Vec3::ZERO, &[entity(1, 0.0), entity(7, 3.0)]);
        let seven = i.slot(EntityId(7)).unwrap();
        i.plan(me, Vec3::ZERO, &[entity(1, 0.0)]);
        // Entity 8 appears while 7's slot is in quarantine: a new slot.
        let plan = i.plan(me, Vec3::ZERO, &[entity(1, 0.0), entity(8, 3.0)]);
        assert_ne!(plan.appeared[0].1, seven);
        for _ in 0..SLOT_QUARANTINE {
            i.plan(me, Vec3::ZERO, &[entity(1, 0.0), entity(8, 3.0)]);
        }
        let plan = i.plan(
            me,
            Vec3::ZERO,
            &[entity(1, 0.0), entity(8, 3.0), entity(9, 4.0)],
        );
        assert_eq!(plan.appeared[0].1, seven, "reused after the quarantine");
    }

    /// With frames at 30 Hz and snapshots at 20 Hz, two frames in three
    /// carry a snapshot, each sent the moment its frame arrives: exactly
    /// 20 a second, none more than one frame late.
    #[test]
    fn snapshots_follow_frames_at_their_own_rate() {
        let start = Instant::now();
        let tick = Duration::from_secs_f64(1.0 / 30.0);
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let sent: Vec<usize> = (0..300)
            .filter(|k| clock.on_frame(start + tick * *k as u32, false))
            .collect();
        assert_eq!(sent.len(), 200, "20 Hz over 10 s");
        for pair in sent.windows(2) {
            assert!(matches!(pair[1] - pair[0], 1 | 2), "{pair:?}");
        }
        assert!(clock.deadline() > start + tick * 299);
    }

    /// Frames that stop leave the deadline to send, at the same rate; a
    /// starved connection does not burst when it wakes.
    #[test]
    fn without_frames_the_deadline_keeps_the_rate() {
        let start = Instant::now();
        let period = Duration::from_millis(50);
        let mut clock = SnapshotClock::new(period, start);
        assert!(clock.on_frame(start, false));
        let mut sends = 0;
        let mut now = start;
        while now < start + Duration::from_secs(1) {
            now = clock.deadline();
            clock.sent(now);
            sends += 1;
        }
        assert_eq!(sends, 20);
        // Asleep for 2 s: one snapshot, then the normal rate again.
        let late = now + Duration::from_secs(2);
        assert!(clock.on_frame(late, false));
        assert!(!clock.on_frame(late + Duration::from_millis(1), false));
        assert!(clock.on_frame(late + period, false));
    }

    /// A frame after an input is taken where it would have been left out,
    /// and inputs on every frame do not raise the rate.
    #[test]
    fn an_input_waiting_for_its_ack_takes_the_next_frame_without_raising_the_rate() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let start = Instant::now();
        let tick = Duration::from_secs_f64(1.0 / 30.0);
        let frame = |k: u32| start + tick * k;
        // Without inputs frames 0, 2, 3, 5, ... go out: 1 and 4 are left
        // out.
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let plain: Vec<u32> = (0..6)
            .filter(|k| clock.on_frame(frame(*k), false))
            .collect();
        assert_eq!(plain, [0, 2, 3, 5]);
        // An input before frame 1: it goes out, and the frame left out is
        // one without an input waiting.
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let acked: Vec<u32> = (0..6)
            .filter(|k| clock.on_frame(frame(*k), *k == 1))
            .collect();
        assert!(acked.contains(&1), "{acked:?}");
        assert_eq!(acked.len(), plain.len(), "{acked:?}");
        // Never two frames left out in a row, whatever the inputs.
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let mut rng = StdRng::seed_from_u64(5);
        let sent: Vec<u32> = (0..300)
            .filter(|k| clock.on_frame(frame(*k), rng.gen_bool(0.75)))
            .collect();
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] <= 2, "{pair:?}");
        }
        // An input before every frame: still 20 Hz.
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let all = (0..300).filter(|k| clock.on_frame(frame(*k), true)).count();
        assert!((199..=201).contains(&all), "{all} in 10 s");
        // Inputs before every other frame, at random phases: never above
        // 20 Hz.
        let mut clock = SnapshotClock::new(Duration::from_millis(50), start);
        let mut rng = StdRng::seed_from_u64(11);
        let some = (0..300)
            .filter(|k| clock.on_frame(frame(*k), rng.gen_bool(0.5)))
            .count();
        assert!((199..=201).contains(&some), "{some} in 10 s");
    }
}
