//! Client-side prediction of the player's own avatar, with server
//! reconciliation. Pure logic (no I/O, no clock): the caller passes times
//! and durations in, so tests drive it over a simulated link.
//!
//! The model follows the shard's movement rules (docs/protocol.md,
//! "Datagrams"): an input's direction is clamped to length 1
//! ([`Input::sanitized`]), multiplied by the player speed (6 m/s) and applied
//! every tick until a newer input arrives. The client sends one input per
//! tick (at most one per frame) and remembers, for each input, how long it
//! was the newest one. The predicted position is the server's position from
//! the newest snapshot plus the moves of every input the server had not yet
//! applied (`seq > ack_input`), replayed on top.
//!
//! When a snapshot disagrees with what was predicted (a lost input, a wall
//! the client does not know about, ticks that did not line up with inputs),
//! the difference is not snapped: it becomes a visual offset that decays
//! exponentially with time constant [`SMOOTHING_TAU`] (63% gone after
//! 100 ms, 95% after 300 ms). Only an error larger than [`SNAP_DISTANCE`] (a teleport) snaps.

use std::collections::VecDeque;
use tessera_proto::msg::Input;
use tessera_proto::Vec3;

/// The shard's default player speed, m/s (`Movement::player_speed`).
pub const PLAYER_SPEED: f32 = 6.0;
/// Time constant of the exponential decay of a correction, seconds.
pub const SMOOTHING_TAU: f32 = 0.1;
/// A disagreement larger than this (metres) is a teleport: snap to it.
pub const SNAP_DISTANCE: f32 = 4.0;
/// At most this many unacknowledged inputs are kept (4 s at 30 Hz); older
/// ones are folded into the base position.
pub const MAX_PENDING: usize = 120;

/// `a` is newer than `b`, with wrap-around (as the shard compares seqs).
pub fn seq_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    seq: u32,
    /// Velocity this input asks for, m/s on the ground plane.
    vel_x: f32,
    vel_z: f32,
    /// How long the input was the newest one, seconds (the last one grows
    /// until the next input is sent).
    duration: f32,
}

/// What one reconciliation found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Correction {
    /// Distance between the old and the new prediction, metres.
    pub error: f32,
    /// The error was larger than [`SNAP_DISTANCE`] and was not smoothed.
    pub snapped: bool,
}

/// Counters for the debug overlay and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct PredictionStats {
    pub reconciliations: u64,
    /// Reconciliations whose error was over 1 cm.
    pub corrections: u64,
    pub snaps: u64,
    pub max_error: f32,
    pub sum_error: f64,
}

/// Predicts the own avatar's position.
#[derive(Clone, Debug)]
pub struct Predictor {
    speed: f32,
    /// Authoritative position from the newest snapshot.
    server_pos: Vec3,
    ack: u32,
    pending: VecDeque<Pending>,
    /// Visual offset still to be smoothed away (display = predicted + offset).
    offset: Vec3,
    pub stats: PredictionStats,
}

impl Predictor {
    /// Starts at `pos` (the `LoggedIn` position) with the default speed.
    pub fn new(pos: Vec3) -> Predictor {
        Predictor::with_speed(pos, PLAYER_SPEED)
    }

    pub fn with_speed(pos: Vec3, speed: f32) -> Predictor {
        Predictor {
            speed,
            server_pos: pos,
            ack: 0,
            pending: VecDeque::new(),
            offset: Vec3::ZERO,
            stats: PredictionStats::default(),
        }
    }

    /// Records an input that was just sent. The previous input stops
    /// being the newest now.
    pub fn push_input(&mut self, input: Input) {
        let i = input.sanitized();
        self.pending.push_back(Pending {
            seq: i.seq,
            vel_x: i.move_x * self.speed,
            vel_z: i.move_z * self.speed,
            duration: 0.0,
        });
        while self.pending.len() > MAX_PENDING {
            // The server is not acknowledging (the own entity out of view,
            // or a dead link): keep the move, forget the input.
            if let Some(old) = self.pending.pop_front() {
                self.server_pos = step(self.server_pos, &old);
            }
        }
    }

    /// Time passes: the newest input stays in effect a little longer, and
    /// the correction offset decays.
    pub fn advance(&mut self, dt: f32) {
        if dt <= 0.0 || !dt.is_finite() {
            return;
        }
        if let Some(last) = self.pending.back_mut() {
            last.duration += dt;
        }
        self.offset = self.offset.scale((-dt / SMOOTHING_TAU).exp());
        if self.offset.length_xz() < 1e-4 && self.offset.y.abs() < 1e-4 {
            self.offset = Vec3::ZERO;
        }
    }

    /// A snapshot carried the own entity at `server_pos`, with the server
    /// having applied inputs up to `ack`. Older or repeated acks (a
    /// reordered datagram) change nothing.
    pub fn reconcile(&mut self, server_pos: Vec3, ack: u32) -> Correction {
        if !server_pos.is_finite() {
            return Correction {
                error: 0.0,
                snapped: false,
            };
        }
        let before = self.predicted();
        if ack != 0 && (self.ack == 0 || !seq_newer(self.ack, ack)) {
            self.ack = ack;
            while self.pending.front().is_some_and(|p| !seq_newer(p.seq, ack)) {
                self.pending.pop_front();
            }
        }
        self.server_pos = server_pos;
        let after = self.predicted();
        let diff = before - after;
        let error = diff.distance(Vec3::ZERO);
        let snapped = error > SNAP_DISTANCE;
        if snapped {
            self.offset = Vec3::ZERO;
            self.stats.snaps += 1;
        } else {
            // Keep what is drawn where it was; the offset decays in advance().
            self.offset = self.offset + diff;
        }
        self.stats.reconciliations += 1;
        if error > 0.01 {
            self.stats.corrections += 1;
        }
        self.stats.max_error = self.stats.max_error.max(error);
        self.stats.sum_error += error as f64;
        Correction { error, snapped }
    }

    /// Where the avatar is predicted to be now (no smoothing).
    pub fn predicted(&self) -> Vec3 {
        self.pending.iter().fold(self.server_pos, step)
    }

    /// Where to draw the avatar: the prediction plus the decaying offset.
    pub fn position(&self) -> Vec3 {
        self.predicted() + self.offset
    }

    /// The correction still being smoothed out, metres.
    pub fn offset(&self) -> f32 {
        self.offset.distance(Vec3::ZERO)
    }

    /// Inputs sent but not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The newest acknowledged input.
    pub fn ack(&self) -> u32 {
        self.ack
    }

    /// The newest authoritative position.
    pub fn server_pos(&self) -> Vec3 {
        self.server_pos
    }
}

fn step(p: Vec3, i: &Pending) -> Vec3 {
    Vec3::new(p.x + i.vel_x * i.duration, p.y, p.z + i.vel_z * i.duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simlink::{Link, LinkConfig};

    fn input(seq: u32, x: f32, z: f32) -> Input {
        Input {
            seq,
            move_x: x,
            move_z: z,
            yaw: 0.0,
            jump: false,
        }
    }

    #[test]
    fn seq_comparison_wraps() {
        assert!(seq_newer(2, 1));
        assert!(!seq_newer(1, 2));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0, u32::MAX));
        assert!(seq_newer(3, u32::MAX - 3));
    }

    #[test]
    fn replays_unacknowledged_inputs_on_the_server_position() {
        let mut p = Predictor::new(Vec3::ZERO);
        for seq in 1..=3 {
            p.push_input(input(seq, 1.0, 0.0));
            p.advance(0.1);
        }
        assert!((p.predicted().x - 1.8).abs() < 1e-4);
        // The server applied input 1 (0.6 m), and walls are not involved.
        let c = p.reconcile(Vec3::new(0.6, 0.0, 0.0), 1);
        assert!(c.error < 1e-4, "{c:?}");
        assert_eq!(p.pending(), 2);
        // A reordered, older snapshot does not bring input 1 back.
        p.reconcile(Vec3::new(0.6, 0.0, 0.0), 0);
        assert_eq!(p.pending(), 2);
    }

    #[test]
    fn direction_is_clamped_like_the_shard_does() {
        let mut p = Predictor::new(Vec3::ZERO);
        p.push_input(input(1, 3.0, 4.0));
        p.advance(1.0);
        let d = p.predicted().distance(Vec3::ZERO);
        assert!((d - PLAYER_SPEED).abs() < 1e-3, "{d}");
        p.push_input(input(2, f32::NAN, 1.0));
        p.advance(1.0);
        assert!((p.predicted().distance(Vec3::ZERO) - PLAYER_SPEED).abs() < 1e-3);
    }

    #[test]
    fn a_wall_is_smoothed_out_and_a_teleport_snaps() {
        let mut p = Predictor::new(Vec3::ZERO);
        p.push_input(input(1, 1.0, 0.0));
        p.advance(0.5); // predicted x = 3
        p.push_input(input(2, 0.0, 0.0));
        // A wall stopped the player at x = 2.5.
        let c = p.reconcile(Vec3::new(2.5, 0.0, 0.0), 2);
        assert!((c.error - 0.5).abs() < 1e-3 && !c.snapped);
        assert!((p.position().x - 3.0).abs() < 1e-3, "drawn where it was");
        p.advance(0.1);
        let left = p.position().x - 2.5;
        assert!(left > 0.0 && left < 0.5 * 0.4, "{left}");
        for _ in 0..60 {
            p.advance(0.016);
        }
        assert!((p.position().x - 2.5).abs() < 1e-3);
        let c = p.reconcile(Vec3::new(50.0, 0.0, 0.0), 2);
        assert!(c.snapped);
        assert_eq!(p.position(), Vec3::new(50.0, 0.0, 0.0));
    }

    #[test]
    fn pending_inputs_are_bounded_without_acks() {
        let mut p = Predictor::new(Vec3::ZERO);
        for seq in 1..=1000 {
            p.push_input(input(seq, 0.0, -1.0));
            p.advance(1.0 / 30.0);
        }
        assert_eq!(p.pending(), MAX_PENDING);
        assert!((p.predicted().z + 200.0).abs() < 0.05);
    }

    /// The shard's side of movement, as in `shard/src/cell.rs`: the newest
    /// input (by seq, wrap-aware) is applied every tick.
    struct SimShard {
        pos: Vec3,
        input: Input,
        /// The seq of the input the last tick applied (what snapshots ack).
        applied: u32,
        /// Walls: x never goes past this.
        wall_x: f32,
    }

    impl SimShard {
        fn set_input(&mut self, i: Input) {
            if i.seq == self.input.seq || seq_newer(i.seq, self.input.seq) {
                self.input = i.sanitized();
            }
        }
        fn tick(&mut self, dt: f32) {
            self.pos.x = (self.pos.x + self.input.move_x * PLAYER_SPEED * dt).min(self.wall_x);
            self.pos.z += self.input.move_z * PLAYER_SPEED * dt;
            self.applied = self.input.seq;
        }
    }

    struct RunResult {
        stats: PredictionStats,
        /// Largest distance the drawn avatar moved in one frame, minus what
        /// the input itself asked for.
        max_extra_step: f32,
        final_error: f32,
    }

    /// Walks a scripted path for 8 s (direction changes every 0.7 s), then
    /// stands still for 1 s. Client frames at 60 Hz, inputs at 30 Hz,
    /// shard ticks at 30 Hz (phase-shifted), snapshots at 20 Hz.
    fn run(cfg: LinkConfig, seed: u64, wall_x: f32) -> RunResult {
        const FRAME: f64 = 1.0 / 60.0;
        const TICK: f64 = 1.0 / 30.0;
        const SNAP: f64 = 1.0 / 20.0;
        let mut up: Link<Input> = Link::new(cfg, seed);
        let mut down: Link<(Vec3, u32)> = Link::new(cfg, seed ^ 0x9e37_79b9);
        let mut shard = SimShard {
            pos: Vec3::ZERO,
            input: Input::default(),
            applied: 0,
            wall_x,
        };
        let mut p = Predictor::new(Vec3::ZERO);
        let mut seq = 0u32;
        let dirs = [(1.0, 0.0), (0.0, -1.0), (-0.7, 0.7), (1.0, 1.0), (0.0, 1.0)];
        let mut next_tick = 0.37 * TICK;
        let mut next_snap = 0.61 * SNAP;
        let mut last_drawn = p.position();
        let mut max_extra_step = 0.0f32;
        let mut frame = 0u64;
        loop {
            let t = frame as f64 * FRAME;
            if t > 9.0 {
                break;
            }
            // Server side up to time t.
            loop {
                let next = next_tick.min(next_snap);
                if next > t {
                    break;
                }
                for i in up.deliver(next) {
                    shard.set_input(i);
                }
                if next_tick <= next_snap {
                    shard.tick(TICK as f32);
                    next_tick += TICK;
                } else {
                    down.send(next, (shard.pos, shard.applied));
                    next_snap += SNAP;
                }
            }
            // Client frame.
            for (pos, ack) in down.deliver(t) {
                p.reconcile(pos, ack);
            }
            if frame.is_multiple_of(2) {
                let (x, z) = if t < 8.0 {
                    dirs[(t / 0.7) as usize % dirs.len()]
                } else {
                    (0.0, 0.0)
                };
                seq = seq.wrapping_add(1);
                let i = input(seq, x, z);
                up.send(t, i);
                p.push_input(i);
            }
            let before = p.predicted();
            p.advance(FRAME as f32);
            let asked = p.predicted().distance_xz(before);
            let drawn = p.position();
            max_extra_step = max_extra_step.max(drawn.distance_xz(last_drawn) - asked);
            last_drawn = drawn;
            frame += 1;
        }
        RunResult {
            stats: p.stats,
            max_extra_step,
            final_error: p.position().distance(shard.pos),
        }
    }

    fn report(name: &str, r: &RunResult) {
        let s = &r.stats;
        println!(
            "{name}: {} reconciliations, {} corrections > 1 cm, {} snaps, mean error {:.4} m, max error {:.4} m, max extra step per frame {:.4} m, final error {:.5} m",
            s.reconciliations,
            s.corrections,
            s.snaps,
            s.sum_error / s.reconciliations.max(1) as f64,
            s.max_error,
            r.max_extra_step,
            r.final_error
        );
    }

    #[test]
    fn clean_link_never_corrects() {
        let r = run(LinkConfig::clean(0.05), 1, f32::INFINITY);
        report("clean 50 ms", &r);
        assert!(r.stats.reconciliations > 150);
        assert_eq!(r.stats.corrections, 0, "{:?}", r.stats);
        assert!(r.stats.max_error < 0.002, "{:?}", r.stats);
        assert_eq!(r.stats.snaps, 0);
        assert!(r.max_extra_step < 0.002, "{}", r.max_extra_step);
        assert!(r.final_error < 0.001, "{}", r.final_error);
    }

    #[test]
    fn jitter_and_loss_are_smoothed_not_snapped() {
        for seed in 0..5 {
            let cfg = LinkConfig {
                latency: 0.06,
                jitter: 0.1,
                loss: 0.05,
            };
            let r = run(cfg, seed, f32::INFINITY);
            report(
                &format!("60 ms + 0..100 ms jitter, 5% loss, seed {seed}"),
                &r,
            );
            assert_eq!(r.stats.snaps, 0);
            // Lost and reordered inputs cost at most a few ticks of movement.
            assert!(r.stats.max_error < 1.0, "{:?}", r.stats);
            // The drawn avatar never jumps: a correction spreads over frames.
            assert!(r.max_extra_step < 0.12, "{}", r.max_extra_step);
            // Standing still, prediction and server agree again.
            assert!(r.final_error < 0.01, "{}", r.final_error);
        }
    }

    #[test]
    fn an_unknown_wall_is_reconciled_smoothly() {
        let r = run(LinkConfig::clean(0.05), 7, 2.0);
        report("clean 50 ms, wall at x = 2", &r);
        assert!(r.stats.corrections > 0);
        assert_eq!(r.stats.snaps, 0);
        assert!(r.max_extra_step < 0.12, "{}", r.max_extra_step);
        assert!(r.final_error < 0.01, "{}", r.final_error);
    }
}
