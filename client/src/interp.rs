//! Interpolation of other entities between snapshots. Pure logic (no I/O,
//! no clock): times are passed in as seconds on the caller's clock.
//!
//! Every update is stamped with server time (`tick / tick_hz`), not with its
//! arrival time, so network jitter does not turn into jerky motion. A
//! [`ServerClock`] maps local time to server time: over a 3 s window it
//! takes the smallest `arrival - server time` seen (the fastest packet) and
//! the spread above it (the jitter). Entities are drawn at
//! `server now - delay`, with `delay = spread + 100 ms` (two snapshot
//! periods at 20 Hz), clamped to 50..400 ms. The render clock slews towards
//! its target by at most 5% (it never jumps backwards), except after a jump
//! of more than 0.5 s (a new server), when it snaps.
//!
//! Between two samples the position is linear and the yaw takes the shorter
//! way round. Past the newest sample it extrapolates with the last velocity
//! for at most [`MAX_EXTRAPOLATION`]. Routers skip entities that did not
//! change (docs/protocol.md, "Interest management"), so an entity at rest
//! that starts to move arrives after a long gap; the track then inserts a
//! "still here" sample at the time the move must have started (distance /
//! speed before the new sample) instead of creeping over the whole gap.

use std::collections::{HashMap, VecDeque};
use tessera_proto::{EntityId, Vec3};

/// How far past the newest sample a position is extrapolated, seconds.
pub const MAX_EXTRAPOLATION: f64 = 0.25;
/// Interpolation delay bounds, seconds.
pub const MIN_DELAY: f64 = 0.05;
pub const MAX_DELAY: f64 = 0.4;
/// Added to the measured jitter: two snapshot periods at 20 Hz.
pub const DELAY_MARGIN: f64 = 0.1;
/// The clock window, seconds.
pub const CLOCK_WINDOW: f64 = 3.0;
/// How fast the render clock may drift from real time while it adjusts.
pub const MAX_SLEW: f64 = 0.05;
/// A jump between samples larger than this (metres) is a teleport.
pub const TELEPORT_DISTANCE: f32 = 10.0;
/// Samples kept per entity.
const MAX_SAMPLES: usize = 64;
/// Below this speed (m/s) an entity is at rest.
const REST_SPEED: f32 = 0.05;

/// Maps local time to the server's tick clock.
#[derive(Clone, Debug)]
pub struct ServerClock {
    tick_hz: f64,
    /// (local arrival, arrival - server time)
    window: VecDeque<(f64, f64)>,
    last_tick: Option<u64>,
    /// `local - render time` currently in use (offset + delay), slewed.
    lag: Option<f64>,
    last_local: f64,
}

impl ServerClock {
    pub fn new(tick_hz: u32) -> ServerClock {
        ServerClock {
            tick_hz: tick_hz.max(1) as f64,
            window: VecDeque::new(),
            last_tick: None,
            lag: None,
            last_local: 0.0,
        }
    }

    /// Server time of `tick`, seconds.
    pub fn server_time(&self, tick: u64) -> f64 {
        tick as f64 / self.tick_hz
    }

    /// A snapshot of server tick `tick` arrived at local time `local`.
    pub fn observe(&mut self, tick: u64, local: f64) {
        if self.last_tick == Some(tick) {
            return;
        }
        if self
            .last_tick
            .is_some_and(|last| tick + (self.tick_hz as u64) < last)
        {
            // The ticks went back by more than a second: a new server.
            self.window.clear();
            self.lag = None;
        }
        self.last_tick = Some(tick);
        self.window
            .push_back((local, local - self.server_time(tick)));
        while self
            .window
            .front()
            .is_some_and(|(at, _)| *at < local - CLOCK_WINDOW)
        {
            self.window.pop_front();
        }
    }

    /// Smallest offset (fastest packet) and jitter over the window.
    fn offset_and_spread(&self) -> Option<(f64, f64)> {
        let min = self.window.iter().map(|w| w.1).reduce(f64::min)?;
        let max = self.window.iter().map(|w| w.1).reduce(f64::max)?;
        Some((min, max - min))
    }

    /// The interpolation delay the window asks for, seconds.
    pub fn target_delay(&self) -> f64 {
        self.offset_and_spread()
            .map(|(_, spread)| (spread + DELAY_MARGIN).clamp(MIN_DELAY, MAX_DELAY))
            .unwrap_or(DELAY_MARGIN)
    }

    /// The delay in use now (what the render clock trails the newest
    /// server time by), seconds.
    pub fn delay(&self) -> f64 {
        match (self.lag, self.offset_and_spread()) {
            (Some(lag), Some((offset, _))) => lag - offset,
            _ => self.target_delay(),
        }
    }

    /// Server time to draw at, for local time `local` (call once a frame,
    /// with non-decreasing times). `None` before the first snapshot.
    pub fn render_time(&mut self, local: f64) -> Option<f64> {
        let (offset, _) = self.offset_and_spread()?;
        let target = offset + self.target_delay();
        let dt = (local - self.last_local).max(0.0);
        self.last_local = local;
        let lag = match self.lag {
            Some(lag) if (target - lag).abs() <= 0.5 => {
                let step = MAX_SLEW * dt;
                lag + (target - lag).clamp(-step, step)
            }
            _ => target,
        };
        self.lag = Some(lag);
        Some(local - lag)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    t: f64,
    pos: Vec3,
    vel: Vec3,
    yaw: f32,
}

/// Where to draw an entity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pose {
    pub pos: Vec3,
    pub yaw: f32,
    /// Past the newest sample (the entity's updates are late).
    pub extrapolated: bool,
}

#[derive(Clone, Debug, Default)]
struct Track {
    samples: VecDeque<Sample>,
}

impl Track {
    fn push(&mut self, s: Sample) {
        if let Some(last) = self.samples.back().copied() {
            if s.t <= last.t {
                if s.t + 1.0 < last.t {
                    // The server's clock went back (a new server): start over.
                    self.samples.clear();
                } else {
                    return; // a duplicate or a reordered, older update
                }
            } else if s.pos.distance_xz(last.pos) > TELEPORT_DISTANCE {
                self.samples.clear();
            } else if last.vel.length_xz() < REST_SPEED {
                // It was at rest, so the router skipped it until it moved:
                // it left `last.pos` at (distance / speed) before `s`.
                let speed = s.vel.length_xz();
                let gap = s.t - last.t;
                let moving_for = if speed > REST_SPEED {
                    (s.pos.distance_xz(last.pos) / speed) as f64
                } else {
                    0.05
                };
                let start = s.t - moving_for.min(gap);
                if start > last.t + 1e-6 {
                    self.samples.push_back(Sample { t: start, ..last });
                }
            }
        }
        self.samples.push_back(s);
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    fn pose(&mut self, t: f64) -> Option<Pose> {
        // Keep one sample at or before t, for interpolation.
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|s| s.t <= t) {
            self.samples.pop_front();
        }
        let first = *self.samples.front()?;
        if t <= first.t {
            return Some(Pose {
                pos: first.pos,
                yaw: first.yaw,
                extrapolated: false,
            });
        }
        match self.samples.get(1) {
            Some(b) if t <= b.t => {
                let f = ((t - first.t) / (b.t - first.t)) as f32;
                Some(Pose {
                    pos: lerp(first.pos, b.pos, f),
                    yaw: lerp_angle(first.yaw, b.yaw, f),
                    extrapolated: false,
                })
            }
            _ => {
                let last = *self.samples.back()?;
                let ahead = (t - last.t).min(MAX_EXTRAPOLATION) as f32;
                Some(Pose {
                    pos: last.pos + Vec3::new(last.vel.x, 0.0, last.vel.z).scale(ahead),
                    yaw: last.yaw,
                    extrapolated: t - last.t > 1e-3,
                })
            }
        }
    }
}

fn lerp(a: Vec3, b: Vec3, f: f32) -> Vec3 {
    a + (b - a).scale(f)
}

/// Interpolates between two angles (radians) the shorter way round.
pub fn lerp_angle(a: f32, b: f32, f: f32) -> f32 {
    let tau = std::f32::consts::TAU;
    let d = (b - a).rem_euclid(tau);
    let d = if d > std::f32::consts::PI { d - tau } else { d };
    a + d * f
}

/// The interpolated view of every other entity.
#[derive(Clone, Debug)]
pub struct Interpolator {
    pub clock: ServerClock,
    tracks: HashMap<EntityId, Track>,
    /// Server time of the current frame (set by [`Interpolator::begin_frame`]).
    now: Option<f64>,
}

impl Interpolator {
    pub fn new(tick_hz: u32) -> Interpolator {
        Interpolator {
            clock: ServerClock::new(tick_hz),
            tracks: HashMap::new(),
            now: None,
        }
    }

    /// An update of `id` from the snapshot of server tick `tick`, which
    /// arrived at local time `arrived`.
    pub fn push(&mut self, id: EntityId, tick: u64, arrived: f64, pos: Vec3, vel: Vec3, yaw: f32) {
        if !pos.is_finite() || !vel.is_finite() || !yaw.is_finite() {
            return;
        }
        self.clock.observe(tick, arrived);
        let t = self.clock.server_time(tick);
        self.tracks
            .entry(id)
            .or_default()
            .push(Sample { t, pos, vel, yaw });
    }

    pub fn remove(&mut self, id: EntityId) {
        self.tracks.remove(&id);
    }

    /// Keeps only the entities `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(EntityId) -> bool) {
        self.tracks.retain(|id, _| keep(*id));
    }

    /// Fixes the render time for this frame (local time `local`).
    pub fn begin_frame(&mut self, local: f64) -> Option<f64> {
        self.now = self.clock.render_time(local);
        self.now
    }

    /// Where to draw `id` this frame.
    pub fn pose(&mut self, id: EntityId) -> Option<Pose> {
        let t = self.now?;
        self.tracks.get_mut(&id)?.pose(t)
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simlink::{Link, LinkConfig};

    const ID: EntityId = EntityId(7);

    #[test]
    fn angles_take_the_short_way() {
        let pi = std::f32::consts::PI;
        assert!((lerp_angle(0.1, -0.1, 0.5)).abs() < 1e-6);
        let a = lerp_angle(pi - 0.1, -pi + 0.1, 0.5);
        assert!((a.abs() - pi).abs() < 1e-5, "{a}");
        assert!((lerp_angle(0.0, pi / 2.0, 0.5) - pi / 4.0).abs() < 1e-6);
    }

    /// The true path: east at 6 m/s, then around a circle of 10 m, forever.
    fn truth(t: f64) -> Vec3 {
        if t < 2.0 {
            return Vec3::new((t * 6.0) as f32, 0.0, 0.0);
        }
        let a = (t - 2.0) * 0.6;
        Vec3::new(
            12.0 + 10.0 * a.sin() as f32,
            0.0,
            10.0 - 10.0 * a.cos() as f32,
        )
    }

    fn truth_vel(t: f64) -> Vec3 {
        let d = 1e-3;
        (truth(t + d) - truth(t - d)).scale((1.0 / (2.0 * d)) as f32)
    }

    struct Measured {
        /// Frame speed / 6 m/s - 1, per frame.
        speed_dev: Vec<f64>,
        /// Distance from the true position at the render time.
        error: Vec<f64>,
        extrapolated: usize,
        frames: usize,
        delay: f64,
    }

    /// Server ticks at 30 Hz, sends updates at `update_hz`; the client draws
    /// at 60 Hz for 10 s.
    fn run(cfg: LinkConfig, update_hz: f64, seed: u64) -> Measured {
        let mut link: Link<(u64, Vec3, Vec3)> = Link::new(cfg, seed);
        let mut interp = Interpolator::new(30);
        let period = 1.0 / update_hz;
        let mut next_send = 0.013;
        let mut m = Measured {
            speed_dev: Vec::new(),
            error: Vec::new(),
            extrapolated: 0,
            frames: 0,
            delay: 0.0,
        };
        let mut last: Option<Vec3> = None;
        let frame = 1.0 / 60.0;
        for f in 0..600 {
            let now = f as f64 * frame;
            while next_send <= now {
                // The newest tick at send time, and the entity as of it.
                let tick = (next_send * 30.0).floor() as u64;
                let st = tick as f64 / 30.0;
                link.send(next_send, (tick, truth(st), truth_vel(st)));
                next_send += period;
            }
            for (at, (tick, pos, vel)) in link.deliver_timed(now) {
                interp.push(ID, tick, at, pos, vel, 0.0);
            }
            let Some(rt) = interp.begin_frame(now) else {
                continue;
            };
            let Some(pose) = interp.pose(ID) else {
                continue;
            };
            // Measure after the clock settled.
            if now > 3.0 {
                m.frames += 1;
                m.error.push(pose.pos.distance(truth(rt)) as f64);
                if pose.extrapolated {
                    m.extrapolated += 1;
                }
                if let Some(prev) = last {
                    let speed = pose.pos.distance(prev) as f64 / frame;
                    m.speed_dev.push((speed / 6.0 - 1.0).abs());
                }
            }
            last = Some(pose.pos);
        }
        m.delay = interp.clock.delay();
        m
    }

    fn pct(v: &[f64], p: f64) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    }

    fn report(name: &str, m: &Measured) {
        println!(
            "{name}: delay {:.0} ms, speed deviation p50 {:.1}% p99 {:.1}% max {:.1}%, position error p50 {:.3} m max {:.3} m, extrapolated {}/{} frames",
            m.delay * 1000.0,
            pct(&m.speed_dev, 0.5) * 100.0,
            pct(&m.speed_dev, 0.99) * 100.0,
            pct(&m.speed_dev, 1.0) * 100.0,
            pct(&m.error, 0.5),
            pct(&m.error, 1.0),
            m.extrapolated,
            m.frames
        );
    }

    #[test]
    fn smooth_at_30_hz_on_a_clean_link() {
        let m = run(LinkConfig::clean(0.04), 30.0, 1);
        report("30 Hz, clean 40 ms", &m);
        assert_eq!(m.extrapolated, 0);
        assert!(pct(&m.speed_dev, 1.0) < 0.05);
        assert!(pct(&m.error, 1.0) < 0.05);
        assert!(m.delay < 0.15, "{}", m.delay);
    }

    #[test]
    fn smooth_at_30_and_20_hz_with_100_ms_jitter_and_loss() {
        for (hz, seed) in [(30.0, 2), (30.0, 3), (20.0, 4), (20.0, 5)] {
            let cfg = LinkConfig {
                latency: 0.04,
                jitter: 0.1,
                loss: 0.05,
            };
            let m = run(cfg, hz, seed);
            report(&format!("{hz} Hz, 40 ms + 0..100 ms jitter, 5% loss"), &m);
            assert!(m.delay > 0.15 && m.delay <= MAX_DELAY, "{}", m.delay);
            assert!(
                (m.extrapolated as f64) < 0.01 * m.frames as f64,
                "{}",
                m.extrapolated
            );
            assert!(pct(&m.speed_dev, 0.99) < 0.1, "{}", pct(&m.speed_dev, 0.99));
            assert!(pct(&m.speed_dev, 1.0) < 0.25, "{}", pct(&m.speed_dev, 1.0));
            assert!(pct(&m.error, 0.99) < 0.1, "{}", pct(&m.error, 0.99));
        }
    }

    #[test]
    fn an_entity_at_rest_starts_moving_on_time() {
        // Updates every 50 ms while moving; none while at rest (the router
        // skips unchanged entities), except the first.
        let mut interp = Interpolator::new(30);
        let lat = 0.05;
        interp.push(ID, 0, lat, Vec3::ZERO, Vec3::ZERO, 0.0);
        // Still until tick 60 (2 s), then east at 6 m/s.
        let mut drawn = Vec::new();
        for f in 0..240 {
            let now = f as f64 / 60.0;
            // Updates of ticks 61, 63, ... once moving.
            let tick = ((now - lat) * 30.0).floor() as u64;
            if tick > 60 && tick % 2 == 1 {
                let x = (tick - 60) as f32 * 6.0 / 30.0;
                interp.push(
                    ID,
                    tick,
                    now,
                    Vec3::new(x, 0.0, 0.0),
                    Vec3::new(6.0, 0.0, 0.0),
                    0.0,
                );
            }
            if let Some(rt) = interp.begin_frame(now) {
                if let Some(p) = interp.pose(ID) {
                    drawn.push((rt, p.pos.x));
                }
            }
        }
        // Nothing moves before the server time it started (2 s), and it
        // moves at full speed soon after.
        for (rt, x) in &drawn {
            if *rt < 1.99 {
                assert!(*x < 1e-3, "moved at {rt}: {x}");
            }
            if *rt > 2.2 && *rt < 3.0 {
                let want = (*rt - 2.0) * 6.0;
                assert!((*x as f64 - want).abs() < 0.35, "at {rt}: {x} want {want}");
            }
        }
    }

    #[test]
    fn teleports_and_server_restarts_do_not_slide() {
        let mut interp = Interpolator::new(30);
        interp.push(ID, 100, 1.0, Vec3::ZERO, Vec3::ZERO, 0.0);
        interp.push(ID, 102, 1.07, Vec3::new(50.0, 0.0, 0.0), Vec3::ZERO, 0.0);
        interp.begin_frame(2.0);
        assert_eq!(interp.pose(ID).map(|p| p.pos.x), Some(50.0));
        // A new server: ticks start again from 0.
        interp.push(ID, 3, 2.1, Vec3::new(1.0, 0.0, 0.0), Vec3::ZERO, 0.0);
        interp.begin_frame(2.2);
        assert_eq!(interp.pose(ID).map(|p| p.pos.x), Some(1.0));
    }
}
