//! What bots do, as pure decisions: which scenario a bot plays and where it
//! heads next. No I/O and no clock: the bots pass the run's time in every
//! step.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tessera_proto::{Compass, Vec3};

/// A swarm's behaviour (`--scenario`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Random walks.
    Wander,
    /// Everyone heads to one point: the hot spot that makes the coordinator
    /// migrate cells.
    Flock,
    /// Everyone gathers in a disc inside one cell and mills about there;
    /// with a dispersal time, then walks far away, so the crowded cell
    /// empties (split, then merge).
    Crowd,
    /// Pacing across the nearest cell border: a hand-off storm.
    Border,
    /// `say`, `shout` and `tell` at a set rate (and a slow wander).
    Chat,
    /// Connect, log in, stay a moment, log out, again.
    LoginStorm,
    /// Wander, and drop the connection at random, then come back.
    Churn,
    /// Every bot picks one of the others, in turn.
    Mix,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Wander,
        Scenario::Flock,
        Scenario::Crowd,
        Scenario::Border,
        Scenario::Chat,
        Scenario::LoginStorm,
        Scenario::Churn,
        Scenario::Mix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Wander => "wander",
            Scenario::Flock => "flock",
            Scenario::Crowd => "crowd",
            Scenario::Border => "border",
            Scenario::Chat => "chat",
            Scenario::LoginStorm => "login-storm",
            Scenario::Churn => "churn",
            Scenario::Mix => "mix",
        }
    }

    /// The scenario bot number `index` plays (`Mix` deals the others out in
    /// turn; not `Crowd`, whose point is that everyone takes part).
    pub fn for_bot(self, index: usize) -> Scenario {
        const MIXED: [Scenario; 6] = [
            Scenario::Wander,
            Scenario::Border,
            Scenario::Chat,
            Scenario::Flock,
            Scenario::Churn,
            Scenario::LoginStorm,
        ];
        match self {
            Scenario::Mix => MIXED[index % MIXED.len()],
            other => other,
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?}; one of: {}", names.join(", "))
            })
    }
}

/// How far past a border a `border` bot walks before turning, metres (well
/// past the 1 m hand-off hysteresis and the 4 m ghost margin).
pub const BORDER_OVERSHOOT: f32 = 8.0;

/// A bot this close to where it is going stands, metres (a text player's
/// step is 3 m: closer than that it would only step back and forth).
pub const ARRIVED: f32 = 3.0;

/// The default `--crowd-radius`, metres: a disc of 20 m around the middle
/// of a 64 m cell stays 12 m from its borders (past the 4 m ghost margin).
pub const CROWD_RADIUS: f32 = 20.0;

/// How far from the crowd's centre a dispersing bot goes, metres: well
/// beyond the crowd's cell and its neighbours' ghost margins.
pub const DISPERSE_DISTANCE: std::ops::Range<f32> = 100.0..150.0;

/// How far from where it stands a milling bot picks its next point, metres.
pub const MILL_STEP: f32 = 10.0;

/// How often a milling bot picks a new point, seconds.
const MILL_EVERY_S: std::ops::Range<f64> = 2.0..5.0;

/// Mixed into the seed of a crowd bot's own random numbers, so its path
/// does not depend on what else the bot draws.
const CROWD_SALT: u64 = 0xC20D_D15B_E25E_0001;

/// Where a `crowd` gathers and when it breaks up (`--crowd-target`,
/// `--crowd-radius`, `--disperse-after`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrowdPlan {
    /// The crowd's centre (its y is ignored).
    pub centre: Vec3,
    /// Bots mill about within this many metres of the centre.
    pub radius: f32,
    /// Seconds into the run after which every bot leaves the crowd for a
    /// point of its own `DISPERSE_DISTANCE` away (`None`: never).
    pub disperse_after_s: Option<f64>,
}

impl CrowdPlan {
    /// A crowd at `centre` of the default radius that never disperses.
    pub fn at(centre: Vec3) -> CrowdPlan {
        CrowdPlan {
            centre,
            radius: CROWD_RADIUS,
            disperse_after_s: None,
        }
    }
}

/// How far a `crowd` bot has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrowdPhase {
    /// On its way to the crowd.
    Gathering,
    /// Has reached the crowd's disc and mills about in it.
    Milling,
    /// The crowd is breaking up: on its way to its own far point.
    Dispersing,
    /// More than one cell size from the crowd's centre (out of the crowd's
    /// cell when the centre is the cell's middle), milling about its own
    /// far point.
    Dispersed,
}

/// A `crowd` bot's state: the point it walks to, when it picks the next,
/// and where it goes when the crowd breaks up.
struct Crowd {
    plan: CrowdPlan,
    /// Beyond this distance from the centre a dispersing bot has left.
    gone_beyond: f32,
    rng: StdRng,
    /// This bot's point far away, fixed by its seed.
    away: Vec3,
    waypoint: Option<Vec3>,
    next_pick_s: f64,
    phase: CrowdPhase,
}

impl Crowd {
    fn new(plan: CrowdPlan, seed: u64, cell_size: f32) -> Crowd {
        let mut rng = StdRng::seed_from_u64(seed ^ CROWD_SALT);
        let a = rng.gen_range(0.0..std::f32::consts::TAU);
        let d = rng.gen_range(DISPERSE_DISTANCE);
        let away = Vec3::new(
            plan.centre.x + a.cos() * d,
            plan.centre.y,
            plan.centre.z + a.sin() * d,
        );
        Crowd {
            plan,
            gone_beyond: cell_size,
            rng,
            away,
            waypoint: None,
            next_pick_s: 0.0,
            phase: CrowdPhase::Gathering,
        }
    }

    fn direction(&mut self, now_s: f64, pos: Vec3) -> (f32, f32) {
        let breaking_up = self.plan.disperse_after_s.is_some_and(|t| now_s >= t);
        let radius = self.plan.radius;
        let next = match self.phase {
            CrowdPhase::Gathering | CrowdPhase::Milling if breaking_up => CrowdPhase::Dispersing,
            CrowdPhase::Gathering if pos.distance_xz(self.plan.centre) <= radius + ARRIVED => {
                CrowdPhase::Milling
            }
            CrowdPhase::Dispersing if pos.distance_xz(self.plan.centre) > self.gone_beyond => {
                CrowdPhase::Dispersed
            }
            same => same,
        };
        if next != self.phase {
            if next == CrowdPhase::Dispersing {
                // Leave now, not at the next pick.
                self.waypoint = None;
            }
            self.phase = next;
        }
        let centre = match self.phase {
            CrowdPhase::Gathering | CrowdPhase::Milling => self.plan.centre,
            CrowdPhase::Dispersing | CrowdPhase::Dispersed => self.away,
        };
        if self.waypoint.is_none() || now_s >= self.next_pick_s {
            self.waypoint = Some(self.pick(centre, pos));
            self.next_pick_s = now_s + self.rng.gen_range(MILL_EVERY_S);
        }
        towards(pos, self.waypoint.unwrap_or(centre), ARRIVED)
    }

    /// The next point to walk to, inside the disc around `centre`: within
    /// `MILL_STEP` of `pos` when the bot is in the disc, else anywhere in
    /// it (so arriving bots spread over the disc rather than pile up on
    /// its centre).
    fn pick(&mut self, centre: Vec3, pos: Vec3) -> Vec3 {
        let radius = self.plan.radius;
        let (from, reach) = if pos.distance_xz(centre) <= radius {
            (pos, MILL_STEP.min(radius))
        } else {
            (centre, radius)
        };
        let a = self.rng.gen_range(0.0..std::f32::consts::TAU);
        // Uniform over the area, not crowded at the middle.
        let d = reach * self.rng.gen::<f32>().sqrt();
        let (mut dx, mut dz) = (
            from.x + a.cos() * d - centre.x,
            from.z + a.sin() * d - centre.z,
        );
        let off = (dx * dx + dz * dz).sqrt();
        if off > radius {
            dx *= radius / off;
            dz *= radius / off;
        }
        Vec3::new(centre.x + dx, centre.y, centre.z + dz)
    }
}

/// The unit direction from `pos` to `to`, or zero within `within` metres.
fn towards(pos: Vec3, to: Vec3, within: f32) -> (f32, f32) {
    let (dx, dz) = (to.x - pos.x, to.z - pos.z);
    let d = (dx * dx + dz * dz).sqrt();
    if d < within || d == 0.0 {
        (0.0, 0.0)
    } else {
        (dx / d, dz / d)
    }
}

/// Where a bot heads: a movement direction every step.
pub struct Steering {
    scenario: Scenario,
    rng: StdRng,
    heading: (f32, f32),
    next_turn_s: f64,
    border_x: f32,
    east: bool,
    target: Vec3,
    /// `crowd` bots only.
    crowd: Option<Crowd>,
    seed: u64,
    cell_size: f32,
}

impl Steering {
    /// For a bot starting at `start` in a world of `cell_size` cells;
    /// `target` is where `flock` bots go, and the centre of a `crowd` of
    /// [`CROWD_RADIUS`] that never disperses unless [`Steering::with_crowd`]
    /// says otherwise.
    pub fn new(scenario: Scenario, seed: u64, start: Vec3, cell_size: f32, target: Vec3) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let border_x = (start.x / cell_size).round() * cell_size;
        let east = rng.gen_bool(0.5);
        Steering {
            scenario,
            rng,
            heading: (0.0, 0.0),
            next_turn_s: 0.0,
            border_x,
            east,
            target,
            crowd: (scenario == Scenario::Crowd)
                .then(|| Crowd::new(CrowdPlan::at(target), seed, cell_size)),
            seed,
            cell_size,
        }
    }

    /// Where and how a `crowd` bot gathers and disperses (no effect on
    /// other scenarios).
    pub fn with_crowd(mut self, plan: CrowdPlan) -> Self {
        if self.scenario == Scenario::Crowd {
            self.crowd = Some(Crowd::new(plan, self.seed, self.cell_size));
        }
        self
    }

    /// How far a `crowd` bot has got (`None` for other scenarios); it moves
    /// on in [`Steering::direction`].
    pub fn crowd_phase(&self) -> Option<CrowdPhase> {
        self.crowd.as_ref().map(|c| c.phase)
    }

    /// The border a `border` bot paces across (x = a multiple of the cell
    /// size).
    pub fn border_x(&self) -> f32 {
        self.border_x
    }

    /// The direction to move in now (unit length, or zero to stand), at
    /// `now_s` seconds into the run, standing at `pos`.
    pub fn direction(&mut self, now_s: f64, pos: Vec3) -> (f32, f32) {
        match self.scenario {
            Scenario::Border => {
                if self.east && pos.x > self.border_x + BORDER_OVERSHOOT {
                    self.east = false;
                } else if !self.east && pos.x < self.border_x - BORDER_OVERSHOOT {
                    self.east = true;
                }
                (if self.east { 1.0 } else { -1.0 }, 0.0)
            }
            Scenario::Flock => towards(pos, self.target, ARRIVED),
            Scenario::Crowd => match self.crowd.as_mut() {
                Some(crowd) => crowd.direction(now_s, pos),
                None => (0.0, 0.0),
            },
            Scenario::LoginStorm => (0.0, 0.0),
            Scenario::Wander | Scenario::Chat | Scenario::Churn | Scenario::Mix => {
                if now_s >= self.next_turn_s {
                    let (lo, hi) = if self.scenario == Scenario::Chat {
                        (3.0, 8.0)
                    } else {
                        (1.0, 4.0)
                    };
                    self.next_turn_s = now_s + self.rng.gen_range(lo..hi);
                    let stand = if self.scenario == Scenario::Chat {
                        0.6
                    } else {
                        0.2
                    };
                    self.heading = if self.rng.gen_bool(stand) {
                        (0.0, 0.0)
                    } else {
                        let a = self.rng.gen_range(0.0..std::f32::consts::TAU);
                        (a.cos(), a.sin())
                    };
                }
                self.heading
            }
        }
    }

    /// The same as a compass step for text players (`None`: stand).
    pub fn compass(&mut self, now_s: f64, pos: Vec3) -> Option<Compass> {
        let (dx, dz) = self.direction(now_s, pos);
        if dx == 0.0 && dz == 0.0 {
            return None;
        }
        Compass::towards(pos, Vec3::new(pos.x + dx * 10.0, pos.y, pos.z + dz * 10.0))
    }

    /// A random number generator for the bot's other choices.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

/// Bot `index`'s account name: unique per seed, within the naming rules
/// (a letter first, then letters, digits or `_`, at most 20 characters).
pub fn bot_name(seed: u64, kind: char, index: usize) -> String {
    format!("b{}{kind}{index}", seed % 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    #[test]
    fn scenarios_parse_and_mix_deals_them_out() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>(), Ok(s));
        }
        assert!("fly".parse::<Scenario>().unwrap_err().contains("wander"));
        let dealt: std::collections::HashSet<Scenario> =
            (0..6).map(|i| Scenario::Mix.for_bot(i)).collect();
        assert_eq!(dealt.len(), 6);
        assert!(!dealt.contains(&Scenario::Mix));
        assert_eq!(Scenario::Border.for_bot(5), Scenario::Border);
    }

    #[test]
    fn border_bots_pace_across_the_nearest_border() {
        let mut s = Steering::new(
            Scenario::Border,
            1,
            Vec3::new(60.0, 0.0, 10.0),
            64.0,
            Vec3::ZERO,
        );
        assert_eq!(s.border_x(), 64.0);
        // Far east of it: head west; far west: head east.
        assert_eq!(s.direction(0.0, Vec3::new(80.0, 0.0, 0.0)).0, -1.0);
        assert_eq!(s.direction(0.0, Vec3::new(60.0, 0.0, 0.0)).0, -1.0);
        assert_eq!(s.direction(0.0, Vec3::new(50.0, 0.0, 0.0)).0, 1.0);
        assert_eq!(s.direction(0.0, Vec3::new(70.0, 0.0, 0.0)).0, 1.0);
    }

    #[test]
    fn flock_bots_head_for_the_target_and_stop_there() {
        let target = Vec3::new(10.0, 0.0, 0.0);
        let mut s = Steering::new(Scenario::Flock, 1, Vec3::ZERO, 64.0, target);
        let (dx, dz) = s.direction(0.0, Vec3::ZERO);
        assert!((dx - 1.0).abs() < 1e-6 && dz.abs() < 1e-6);
        assert_eq!(s.direction(0.0, Vec3::new(9.0, 0.0, 0.0)), (0.0, 0.0));
        assert_eq!(s.compass(0.0, Vec3::ZERO), Some(Compass::East));
    }

    /// Where a bot walking at a player's top speed (6 m/s) goes under `s`,
    /// looked at every 0.1 s from `from_s` to `to_s`: its times and
    /// positions.
    fn walk(s: &mut Steering, mut pos: Vec3, from_s: f64, to_s: f64) -> Vec<(f64, Vec3)> {
        const SPEED: f32 = 6.0;
        let mut out = Vec::new();
        let mut t = from_s;
        while t < to_s {
            let (dx, dz) = s.direction(t, pos);
            pos = Vec3::new(pos.x + dx * SPEED * 0.1, pos.y, pos.z + dz * SPEED * 0.1);
            out.push((t, pos));
            t += 0.1;
        }
        out
    }

    fn crowd(seed: u64, start: Vec3, plan: CrowdPlan) -> Steering {
        Steering::new(Scenario::Crowd, seed, start, 64.0, Vec3::ZERO).with_crowd(plan)
    }

    /// The middle of cell 0,0.
    const CENTRE: Vec3 = Vec3 {
        x: 32.0,
        y: 0.0,
        z: 32.0,
    };

    #[test]
    fn crowd_bots_gather_in_the_disc_and_mill_about_inside_it() {
        let plan = CrowdPlan::at(CENTRE);
        for (seed, start) in [
            (1, Vec3::new(-5.0, 0.0, 5.0)),
            (2, Vec3::new(-120.0, 0.0, -120.0)),
            (3, CENTRE),
        ] {
            let mut s = crowd(seed, start, plan);
            assert_eq!(s.crowd_phase(), Some(CrowdPhase::Gathering));
            let path = walk(&mut s, start, 0.0, 120.0);
            assert_eq!(s.crowd_phase(), Some(CrowdPhase::Milling));
            // Once in the disc, it never leaves it, and it stays in cell
            // 0,0.
            let arrived = path
                .iter()
                .position(|(_, p)| p.distance_xz(CENTRE) <= plan.radius)
                .expect("reaches the disc");
            assert!(path[arrived].0 < 40.0, "{seed}: arrives in time");
            let after = &path[arrived..];
            for (t, p) in after {
                assert!(
                    p.distance_xz(CENTRE) <= plan.radius + 0.01,
                    "{seed} at {t}: {p:?}"
                );
                assert!(p.x > 0.0 && p.x < 64.0 && p.z > 0.0 && p.z < 64.0);
            }
            // It mills: it keeps moving, over more than one spot.
            let moved: f32 = after.windows(2).map(|w| w[0].1.distance_xz(w[1].1)).sum();
            assert!(moved > 50.0, "{seed}: walked {moved} m in the disc");
            let (lo, hi) = after.iter().fold((f32::MAX, f32::MIN), |(lo, hi), (_, p)| {
                (lo.min(p.x), hi.max(p.x))
            });
            assert!(hi - lo > 5.0, "{seed}: milled over {lo}..{hi}");
        }
        // A crowd bot with no plan of its own gathers at `target`.
        let mut s = Steering::new(Scenario::Crowd, 1, Vec3::ZERO, 64.0, CENTRE);
        let path = walk(&mut s, Vec3::ZERO, 0.0, 30.0);
        assert!(path.last().unwrap().1.distance_xz(CENTRE) <= CROWD_RADIUS);
        // Other scenarios ignore a crowd plan.
        let s = Steering::new(Scenario::Flock, 1, Vec3::ZERO, 64.0, CENTRE).with_crowd(plan);
        assert_eq!(s.crowd_phase(), None);
    }

    #[test]
    fn text_players_gather_with_compass_steps() {
        let plan = CrowdPlan::at(CENTRE);
        for seed in 0..20 {
            let mut pos = Vec3::new(-5.0, 0.0, 5.0);
            let mut s = crowd(seed, pos, plan);
            let mut inside_from = None;
            // A step of 3 m about once a second, as telnet bots do.
            for t in 0..200 {
                if let Some(step) = s.compass(t as f64, pos) {
                    let d = step.unit();
                    pos = Vec3::new(pos.x + d.x * 3.0, pos.y, pos.z + d.z * 3.0);
                }
                let inside = pos.distance_xz(CENTRE) <= plan.radius;
                if inside && inside_from.is_none() {
                    inside_from = Some(t);
                }
                if inside_from.is_some() {
                    // Eight directions stray a little from the line.
                    assert!(
                        pos.distance_xz(CENTRE) <= plan.radius + 3.0,
                        "{seed} at {t}: {pos:?}"
                    );
                }
            }
            assert!(
                inside_from.is_some_and(|t| t < 40),
                "{seed}: {inside_from:?}"
            );
        }
    }

    #[test]
    fn a_dispersing_crowd_leaves_for_far_points_of_its_own() {
        let plan = CrowdPlan {
            disperse_after_s: Some(30.0),
            ..CrowdPlan::at(CENTRE)
        };
        let mut aways = Vec::new();
        for seed in 0..16 {
            let start = Vec3::new(-5.0, 0.0, 5.0);
            let mut s = crowd(seed, start, plan);
            let before = walk(&mut s, start, 0.0, 30.0);
            assert_eq!(s.crowd_phase(), Some(CrowdPhase::Milling), "{seed}");
            let at = before.last().unwrap().1;
            assert!(at.distance_xz(CENTRE) <= plan.radius + 0.01);
            let after = walk(&mut s, at, 30.0, 90.0);
            assert_eq!(s.crowd_phase(), Some(CrowdPhase::Dispersed), "{seed}");
            // Out of the crowd's cell within 20 s and for good, and far away
            // in the end.
            let far = after.last().unwrap().1;
            let d = far.distance_xz(CENTRE);
            assert!(
                d >= DISPERSE_DISTANCE.start - plan.radius - ARRIVED
                    && d <= DISPERSE_DISTANCE.end + plan.radius,
                "{seed}: {d} m from the crowd"
            );
            let left = after
                .iter()
                .position(|(_, p)| p.distance_xz(CENTRE) > 64.0)
                .expect("leaves");
            assert!(after[left].0 < 50.0, "{seed}: left at {}", after[left].0);
            assert!(after[left..]
                .iter()
                .all(|(_, p)| p.distance_xz(CENTRE) > 64.0));
            aways.push(far);
        }
        // Each its own way: spread all around, not one second crowd.
        let quadrants: std::collections::HashSet<(bool, bool)> = aways
            .iter()
            .map(|p| (p.x > CENTRE.x, p.z > CENTRE.z))
            .collect();
        assert_eq!(quadrants.len(), 4, "{aways:?}");
        // A bot that comes in after the crowd broke up goes straight away.
        let mut late = crowd(99, Vec3::new(-5.0, 0.0, 5.0), plan);
        late.direction(31.0, Vec3::new(-5.0, 0.0, 5.0));
        assert_eq!(late.crowd_phase(), Some(CrowdPhase::Dispersing));
    }

    #[test]
    fn crowd_paths_are_the_seeds() {
        let plan = CrowdPlan {
            disperse_after_s: Some(20.0),
            ..CrowdPlan::at(CENTRE)
        };
        let start = Vec3::new(-5.0, 0.0, 5.0);
        let path = |seed| walk(&mut crowd(seed, start, plan), start, 0.0, 60.0);
        assert_eq!(path(7), path(7));
        assert_ne!(path(7), path(8));
        // The bot's other draws do not change its path.
        let mut s = crowd(7, start, plan);
        let _: u64 = s.rng().gen();
        assert_eq!(walk(&mut s, start, 0.0, 60.0), path(7));
    }

    #[test]
    fn names_follow_the_account_rules() {
        for (seed, i) in [(0, 0), (u64::MAX, 99_999), (42, 1_234_567)] {
            let n = bot_name(seed, 'q', i);
            assert!(n.len() >= 3 && n.len() <= 20, "{n}");
            assert!(n.starts_with('b'));
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_ne!(bot_name(1, 'q', 1), bot_name(1, 't', 1));
    }

    proptest! {
        #[test]
        fn directions_are_unit_or_zero(seed in any::<u64>(), x in -500f32..500.0, z in -500f32..500.0, t in 0f64..1000.0) {
            let plan = CrowdPlan { disperse_after_s: Some(500.0), ..CrowdPlan::at(Vec3::new(5.0, 0.0, 5.0)) };
            for sc in Scenario::ALL {
                let mut s = Steering::new(sc, seed, Vec3::new(x, 0.0, z), 64.0, Vec3::new(5.0, 0.0, 5.0)).with_crowd(plan);
                let (dx, dz) = s.direction(t, Vec3::new(x, 0.0, z));
                let len = (dx * dx + dz * dz).sqrt();
                prop_assert!(len == 0.0 || (len - 1.0).abs() < 1e-4, "{sc}: {dx},{dz}");
            }
        }
    }
}
