//! What bots do, as pure decisions: which scenario a bot plays and where it
//! heads next. No I/O; the bots ask these functions every step.

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
    pub const ALL: [Scenario; 7] = [
        Scenario::Wander,
        Scenario::Flock,
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
            Scenario::Border => "border",
            Scenario::Chat => "chat",
            Scenario::LoginStorm => "login-storm",
            Scenario::Churn => "churn",
            Scenario::Mix => "mix",
        }
    }

    /// The scenario bot number `index` plays (`Mix` deals the others out in
    /// turn).
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

/// Where a bot heads: a movement direction every step.
pub struct Steering {
    scenario: Scenario,
    rng: StdRng,
    heading: (f32, f32),
    next_turn_s: f64,
    border_x: f32,
    east: bool,
    target: Vec3,
}

impl Steering {
    /// For a bot starting at `start` in a world of `cell_size` cells;
    /// `target` is where `flock` bots go.
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
        }
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
            Scenario::Flock => {
                let (dx, dz) = (self.target.x - pos.x, self.target.z - pos.z);
                let d = (dx * dx + dz * dz).sqrt();
                if d < 3.0 {
                    (0.0, 0.0)
                } else {
                    (dx / d, dz / d)
                }
            }
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
            for sc in Scenario::ALL {
                let mut s = Steering::new(sc, seed, Vec3::new(x, 0.0, z), 64.0, Vec3::new(5.0, 0.0, 5.0));
                let (dx, dz) = s.direction(t, Vec3::new(x, 0.0, z));
                let len = (dx * dx + dz * dz).sqrt();
                prop_assert!(len == 0.0 || (len - 1.0).abs() < 1e-4, "{sc}: {dx},{dz}");
            }
        }
    }
}
