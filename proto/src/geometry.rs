//! Geometry of the world: positions, the square-cell grid on the XZ plane,
//! and compass directions.
//!
//! Conventions (also in docs/ARCHITECTURE.md): Y is up; east is +X; north is
//! -Z (so south is +Z). A cell `(cx, cz)` covers
//! `[cx*size, (cx+1)*size) x [cz*size, (cz+1)*size)`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A position or direction in metres.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vec3 {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

impl Vec3 {
    pub const ZERO: Vec3 = Vec3 {
        x: 0.0,
        y: 0.0,
        z: 0.0,
    };

    pub const fn new(x: f32, y: f32, z: f32) -> Vec3 {
        Vec3 { x, y, z }
    }

    /// Distance on the ground plane, ignoring height.
    pub fn distance_xz(self, other: Vec3) -> f32 {
        let dx = self.x - other.x;
        let dz = self.z - other.z;
        (dx * dx + dz * dz).sqrt()
    }

    pub fn distance(self, other: Vec3) -> f32 {
        let (dx, dy, dz) = (self.x - other.x, self.y - other.y, self.z - other.z);
        (dx * dx + dy * dy + dz * dz).sqrt()
    }

    pub fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite() && self.z.is_finite()
    }

    pub fn length_xz(self) -> f32 {
        (self.x * self.x + self.z * self.z).sqrt()
    }

    pub fn scale(self, s: f32) -> Vec3 {
        Vec3::new(self.x * s, self.y * s, self.z * s)
    }
}

impl std::ops::Add for Vec3 {
    type Output = Vec3;
    fn add(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl std::ops::Sub for Vec3 {
    type Output = Vec3;
    fn sub(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl fmt::Display for Vec3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} {:.1} {:.1}", self.x, self.y, self.z)
    }
}

/// A square cell of the world grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellId {
    pub x: i32,
    pub z: i32,
}

impl CellId {
    pub const fn new(x: i32, z: i32) -> CellId {
        CellId { x, z }
    }

    /// The eight cells around this one.
    pub fn neighbours(self) -> impl Iterator<Item = CellId> {
        (-1..=1).flat_map(move |dz| {
            (-1..=1)
                .filter(move |dx| *dx != 0 || dz != 0)
                .map(move |dx| CellId::new(self.x + dx, self.z + dz))
        })
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.x, self.z)
    }
}

/// Error parsing a `CellId` from `"x,z"`.
#[derive(Debug, thiserror::Error)]
#[error("a cell is written as two integers `x,z`, got {0:?}")]
pub struct ParseCellError(String);

impl FromStr for CellId {
    type Err = ParseCellError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCellError(s.to_string());
        let (x, z) = s.split_once(',').ok_or_else(err)?;
        Ok(CellId::new(
            x.trim().parse().map_err(|_| err())?,
            z.trim().parse().map_err(|_| err())?,
        ))
    }
}

/// The cell grid: square cells of `cell_size` metres on the XZ plane.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub cell_size: f32,
}

impl Grid {
    pub fn new(cell_size: f32) -> Grid {
        assert!(
            cell_size > 0.0 && cell_size.is_finite(),
            "cell size must be positive"
        );
        Grid { cell_size }
    }

    /// The cell containing `pos`.
    pub fn cell_of(&self, pos: Vec3) -> CellId {
        CellId::new(
            (pos.x / self.cell_size).floor() as i32,
            (pos.z / self.cell_size).floor() as i32,
        )
    }

    /// `(min_x, min_z, max_x, max_z)` of a cell.
    pub fn bounds(&self, cell: CellId) -> (f32, f32, f32, f32) {
        let s = self.cell_size;
        (
            cell.x as f32 * s,
            cell.z as f32 * s,
            (cell.x + 1) as f32 * s,
            (cell.z + 1) as f32 * s,
        )
    }

    /// Centre of a cell at height 0.
    pub fn centre(&self, cell: CellId) -> Vec3 {
        let (x0, z0, x1, z1) = self.bounds(cell);
        Vec3::new((x0 + x1) / 2.0, 0.0, (z0 + z1) / 2.0)
    }

    /// Signed distance from `pos` to the nearest border of `cell`: positive
    /// inside the cell, negative outside.
    pub fn distance_to_border(&self, pos: Vec3, cell: CellId) -> f32 {
        let (x0, z0, x1, z1) = self.bounds(cell);
        let dx = (pos.x - x0).min(x1 - pos.x);
        let dz = (pos.z - z0).min(z1 - pos.z);
        dx.min(dz)
    }

    /// The cell that should own an entity at `pos` that is currently owned by
    /// `current`: it stays in `current` until it is more than `hysteresis`
    /// metres outside it, so an entity pacing on a border does not bounce.
    pub fn owner_with_hysteresis(&self, current: CellId, pos: Vec3, hysteresis: f32) -> CellId {
        if self.distance_to_border(pos, current) >= -hysteresis {
            current
        } else {
            self.cell_of(pos)
        }
    }

    /// Every cell that has at least one point within `radius` of `pos` on
    /// the XZ plane.
    pub fn cells_within(&self, pos: Vec3, radius: f32) -> Vec<CellId> {
        let lo = self.cell_of(Vec3::new(pos.x - radius, 0.0, pos.z - radius));
        let hi = self.cell_of(Vec3::new(pos.x + radius, 0.0, pos.z + radius));
        let mut out = Vec::new();
        for cz in lo.z..=hi.z {
            for cx in lo.x..=hi.x {
                let cell = CellId::new(cx, cz);
                let (x0, z0, x1, z1) = self.bounds(cell);
                let nx = pos.x.clamp(x0, x1);
                let nz = pos.z.clamp(z0, z1);
                let (dx, dz) = (pos.x - nx, pos.z - nz);
                if dx * dx + dz * dz <= radius * radius {
                    out.push(cell);
                }
            }
        }
        out
    }
}

/// The eight compass directions text players walk in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compass {
    North,
    NorthEast,
    East,
    SouthEast,
    South,
    SouthWest,
    West,
    NorthWest,
}

impl Compass {
    pub const ALL: [Compass; 8] = [
        Compass::North,
        Compass::NorthEast,
        Compass::East,
        Compass::SouthEast,
        Compass::South,
        Compass::SouthWest,
        Compass::West,
        Compass::NorthWest,
    ];

    /// Unit vector on the ground plane (north is -Z, east is +X).
    pub fn unit(self) -> Vec3 {
        const D: f32 = std::f32::consts::FRAC_1_SQRT_2;
        let (x, z) = match self {
            Compass::North => (0.0, -1.0),
            Compass::NorthEast => (D, -D),
            Compass::East => (1.0, 0.0),
            Compass::SouthEast => (D, D),
            Compass::South => (0.0, 1.0),
            Compass::SouthWest => (-D, D),
            Compass::West => (-1.0, 0.0),
            Compass::NorthWest => (-D, -D),
        };
        Vec3::new(x, 0.0, z)
    }

    pub fn name(self) -> &'static str {
        match self {
            Compass::North => "north",
            Compass::NorthEast => "northeast",
            Compass::East => "east",
            Compass::SouthEast => "southeast",
            Compass::South => "south",
            Compass::SouthWest => "southwest",
            Compass::West => "west",
            Compass::NorthWest => "northwest",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Compass::North => "n",
            Compass::NorthEast => "ne",
            Compass::East => "e",
            Compass::SouthEast => "se",
            Compass::South => "s",
            Compass::SouthWest => "sw",
            Compass::West => "w",
            Compass::NorthWest => "nw",
        }
    }

    /// Parse a full or short name, case-insensitively.
    pub fn parse(word: &str) -> Option<Compass> {
        let w = word.to_ascii_lowercase();
        Compass::ALL
            .into_iter()
            .find(|c| c.name() == w || c.short() == w)
    }

    /// The compass direction closest to the ground-plane vector `from -> to`,
    /// or `None` if the two points coincide.
    pub fn towards(from: Vec3, to: Vec3) -> Option<Compass> {
        let (dx, dz) = (to.x - from.x, to.z - from.z);
        if dx.abs() < 1e-3 && dz.abs() < 1e-3 {
            return None;
        }
        // Angle clockwise from north (-Z) towards east (+X).
        let angle = dx.atan2(-dz).to_degrees().rem_euclid(360.0);
        let idx = ((angle + 22.5) / 45.0).floor() as usize % 8;
        Some(Compass::ALL[idx])
    }
}

impl fmt::Display for Compass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compass_towards_matches_unit() {
        for c in Compass::ALL {
            assert_eq!(Compass::towards(Vec3::ZERO, c.unit().scale(5.0)), Some(c));
        }
        assert_eq!(Compass::towards(Vec3::ZERO, Vec3::ZERO), None);
    }

    #[test]
    fn compass_parse() {
        assert_eq!(Compass::parse("NE"), Some(Compass::NorthEast));
        assert_eq!(Compass::parse("south"), Some(Compass::South));
        assert_eq!(Compass::parse("up"), None);
    }

    #[test]
    fn cell_id_parse_round_trip() {
        let c: CellId = "-3,7".parse().unwrap();
        assert_eq!(c, CellId::new(-3, 7));
        assert_eq!(c.to_string().parse::<CellId>().unwrap(), c);
        assert!("3".parse::<CellId>().is_err());
        assert!("a,b".parse::<CellId>().is_err());
    }

    #[test]
    fn neighbours_are_eight_distinct() {
        let n: Vec<_> = CellId::new(0, 0).neighbours().collect();
        assert_eq!(n.len(), 8);
        assert!(!n.contains(&CellId::new(0, 0)));
    }

    fn coord() -> impl Strategy<Value = f32> {
        -10_000.0f32..10_000.0
    }

    proptest! {
        #[test]
        fn position_lies_in_its_cell(x in coord(), z in coord(), size in 1.0f32..200.0) {
            let g = Grid::new(size);
            let p = Vec3::new(x, 0.0, z);
            let c = g.cell_of(p);
            let (x0, z0, x1, z1) = g.bounds(c);
            prop_assert!(x >= x0 - 1e-2 && x <= x1 + 1e-2);
            prop_assert!(z >= z0 - 1e-2 && z <= z1 + 1e-2);
            prop_assert!(g.distance_to_border(p, c) >= -1e-2);
        }

        #[test]
        fn hysteresis_keeps_owner_near_border(x in coord(), z in coord(), h in 0.0f32..5.0) {
            let g = Grid::new(64.0);
            let p = Vec3::new(x, 0.0, z);
            let home = g.cell_of(p);
            // Owned by a neighbour: it moves only when well outside it.
            for n in home.neighbours() {
                let owner = g.owner_with_hysteresis(n, p, h);
                if g.distance_to_border(p, n) >= -h {
                    prop_assert_eq!(owner, n);
                } else {
                    prop_assert_eq!(owner, home);
                }
            }
            prop_assert_eq!(g.owner_with_hysteresis(home, p, h), home);
        }

        #[test]
        fn cells_within_contains_own_cell_and_is_tight(x in coord(), z in coord(), r in 0.0f32..300.0) {
            let g = Grid::new(64.0);
            let p = Vec3::new(x, 0.0, z);
            let cells = g.cells_within(p, r);
            prop_assert!(cells.contains(&g.cell_of(p)));
            // No cell is further than r + a cell diagonal away.
            for c in cells {
                prop_assert!(g.centre(c).distance_xz(p) <= r + 64.0 * std::f32::consts::SQRT_2);
            }
        }
    }
}
