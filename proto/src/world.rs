//! The world definition: extent, zones, landmarks, static geometry and NPCs.
//!
//! Pure data and validation; no file I/O (the shard's `worldfile` module reads
//! the files and fills [`WorldDef::scripts`]). The on-disk format is TOML and
//! is described in `docs/world-format.md`; [`parse_world`] turns it into a
//! [`WorldDef`], which is also what is shipped to clients (serde, bincode).
//!
//! Conventions follow `geometry`: Y is up, east is +X, north is -Z. Rotations:
//! `yaw_deg` turns a shape around +Y (positive yaw turns east towards north,
//! i.e. counter-clockwise on a north-up map); `pitch_deg` then tilts it around
//! its own X axis (positive pitch raises its local -Z end, which is the north
//! end when yaw is 0).

use crate::geometry::{CellId, Grid, Vec3};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Add, Sub};
use toml::Spanned;

/// Positions are kept this far inside the world's outer bounds.
pub const EDGE_MARGIN: f32 = 0.5;
/// Most copies one `[[npc]]` entry may spawn.
pub const MAX_NPC_COUNT: u32 = 1000;
/// Scatter radius used when an `[[npc]]` with `count > 1` gives none.
pub const DEFAULT_SCATTER: f32 = 5.0;
/// Default thickness of a ramp given by `from`/`to`.
pub const DEFAULT_RAMP_THICKNESS: f32 = 0.5;

/// The golden angle in radians: successive spawns of a counted NPC are turned
/// by it, which spreads them evenly over a disc without any randomness.
const GOLDEN_ANGLE: f32 = 2.399_963_2;

/// The whole world: what the shards simulate and what clients are shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldDef {
    pub name: String,
    /// Edge of a square cell in metres.
    pub cell_size: f32,
    /// The cells that exist; positions outside them are clamped back in.
    pub extent: Extent,
    /// Where new players appear.
    pub spawn: Vec3,
    /// Named areas; the first one containing a position names it.
    pub zones: Vec<Zone>,
    /// The zone reported where no zone of [`zones`](Self::zones) applies.
    pub wilds: Zone,
    pub landmarks: Vec<Landmark>,
    /// Static colliders. The ground plane at y = 0 is implicit.
    pub statics: Vec<StaticShape>,
    pub npcs: Vec<NpcDef>,
    /// Script name (file stem) -> rhai source; filled by the loader.
    pub scripts: BTreeMap<String, String>,
    /// Where each item stands in the world.toml this was parsed from, so
    /// that [`validate_scripts`](Self::validate_scripts), called later,
    /// names lines too. Not shipped to clients.
    #[serde(skip)]
    source: SourceMap,
}

/// The rectangle of cells the world consists of, both corners inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub min: CellId,
    pub max: CellId,
}

/// A named rectangle on the ground, both corners inclusive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    pub description: String,
    pub min_x: f32,
    pub min_z: f32,
    pub max_x: f32,
    pub max_z: f32,
}

/// A named point of interest ("you see the fountain to the north").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Landmark {
    pub name: String,
    pub description: String,
    pub pos: Vec3,
}

/// A static collider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StaticShape {
    /// A box turned by `yaw_deg` around the vertical axis.
    Box {
        name: Option<String>,
        center: Vec3,
        half_extents: Vec3,
        yaw_deg: f32,
    },
    /// A box turned by `yaw_deg` and then tilted by `pitch_deg` around its
    /// own X axis (see the module docs for the signs).
    Ramp {
        name: Option<String>,
        center: Vec3,
        half_extents: Vec3,
        yaw_deg: f32,
        pitch_deg: f32,
    },
}

/// An NPC entry: one NPC, or `count` copies of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NpcDef {
    pub name: String,
    pub description: String,
    pub pos: Vec3,
    /// Script name: the stem of a file in the world's `scripts/` directory.
    pub script: String,
    /// Copies to spawn: one is named `name`; several are `name 1` .. `name N`.
    pub count: u32,
    /// Copies are spread over a disc of this radius (metres) around `pos`.
    pub scatter: f32,
}

/// A place in a world.toml: 1-based line, and column in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePos {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for SourcePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a world definition was refused, and where in its world.toml:
/// `line 12, column 10: npc "Ann" uses script "walk", but ...`.
#[derive(Debug)]
pub struct WorldError {
    /// The item at fault, or `None` where the message says it already (a
    /// [`WorldErrorKind::Parse`] error carries the toml crate's line and
    /// column) or the item was added in code rather than read from a file.
    pub at: Option<SourcePos>,
    pub kind: WorldErrorKind,
}

impl std::fmt::Display for WorldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(at) = self.at {
            write!(f, "{at}: ")?;
        }
        self.kind.fmt(f)
    }
}

/// The kind is part of the message, so it is not also a `source()`: error
/// reports that print the chain would print it twice.
impl std::error::Error for WorldError {}

impl WorldErrorKind {
    fn at(self, at: Option<SourcePos>) -> WorldError {
        WorldError { at, kind: self }
    }
}

/// What was wrong with a world definition.
#[derive(Debug, thiserror::Error)]
pub enum WorldErrorKind {
    #[error("world definition is not valid TOML: {0}")]
    Parse(String),
    #[error("cell_size must be a positive number of metres, got {0}")]
    BadCellSize(f32),
    #[error("extent is empty: min cell {min} is beyond max cell {max}")]
    EmptyExtent { min: CellId, max: CellId },
    #[error("spawn ({spawn}) is outside the world's extent")]
    SpawnOutside { spawn: Vec3 },
    #[error("zone {zone:?} has a minimum corner beyond its maximum corner")]
    InvertedZone { zone: String },
    #[error("npc {npc:?} would spawn at ({pos}), outside the world's extent")]
    NpcOutside { npc: String, pos: Vec3 },
    #[error(
        "npc name {name:?} is invalid: 3 to 20 ASCII letters or digits, starting with a letter"
    )]
    BadNpcName { name: String },
    #[error("npc {npc:?} uses script {script:?}, but there is no scripts/{script}.rhai")]
    UnknownScript { npc: String, script: String },
    #[error("{item} contains a number that is not finite")]
    NonFinite { item: String },
    #[error("{item}: {reason}")]
    BadShape { item: String, reason: String },
    #[error("npc {npc:?}: {reason}")]
    BadNpc { npc: String, reason: String },
    #[error("two NPCs would both be called {name:?}")]
    DuplicateNpc { name: String },
}

// ---------------------------------------------------------------------------
// Extent

impl Extent {
    pub fn new(min: CellId, max: CellId) -> Extent {
        Extent { min, max }
    }

    pub fn is_empty(&self) -> bool {
        self.min.x > self.max.x || self.min.z > self.max.z
    }

    pub fn contains(&self, cell: CellId) -> bool {
        (self.min.x..=self.max.x).contains(&cell.x) && (self.min.z..=self.max.z).contains(&cell.z)
    }

    /// Every cell, row by row from north (min z) to south, west to east.
    pub fn cells(&self) -> impl Iterator<Item = CellId> {
        let (min, max) = (self.min, self.max);
        (min.z..=max.z).flat_map(move |z| (min.x..=max.x).map(move |x| CellId::new(x, z)))
    }

    pub fn cell_count(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        let w = (self.max.x as i64 - self.min.x as i64 + 1) as usize;
        let h = (self.max.z as i64 - self.min.z as i64 + 1) as usize;
        w * h
    }

    /// Outer bounds in metres: `(min_x, min_z, max_x, max_z)`.
    pub fn bounds(&self, grid: &Grid) -> (f32, f32, f32, f32) {
        let (x0, z0, _, _) = grid.bounds(self.min);
        let (_, _, x1, z1) = grid.bounds(self.max);
        (x0, z0, x1, z1)
    }

    /// Whether `pos` lies in one of the world's cells.
    pub fn contains_position(&self, grid: &Grid, pos: Vec3) -> bool {
        pos.x.is_finite() && pos.z.is_finite() && self.contains(grid.cell_of(pos))
    }

    /// `pos` moved (on X and Z only) to lie at least [`EDGE_MARGIN`] inside
    /// the world's outer bounds.
    pub fn clamp_position(&self, grid: &Grid, pos: Vec3) -> Vec3 {
        let (x0, z0, x1, z1) = self.bounds(grid);
        Vec3::new(
            clamp_inside(pos.x, x0, x1),
            pos.y,
            clamp_inside(pos.z, z0, z1),
        )
    }
}

/// Clamp `v` into `[lo + margin, hi - margin]`; the middle if that is empty.
/// A NaN coordinate is put in the middle too.
fn clamp_inside(v: f32, lo: f32, hi: f32) -> f32 {
    let (a, b) = (lo + EDGE_MARGIN, hi - EDGE_MARGIN);
    if a > b || v.is_nan() {
        (lo + hi) / 2.0
    } else {
        v.clamp(a, b)
    }
}

// ---------------------------------------------------------------------------
// Zones, landmarks

impl Zone {
    pub fn contains(&self, pos: Vec3) -> bool {
        pos.x >= self.min_x && pos.x <= self.max_x && pos.z >= self.min_z && pos.z <= self.max_z
    }

    /// The zone used where no other applies, unless the world names its own.
    pub fn default_wilds() -> Zone {
        Zone {
            name: "The Wilds".to_string(),
            description: "Untamed country: tall grass, loose stones and no path worth the \
                          name. Nobody has claimed this stretch of land yet."
                .to_string(),
            min_x: f32::NEG_INFINITY,
            min_z: f32::NEG_INFINITY,
            max_x: f32::INFINITY,
            max_z: f32::INFINITY,
        }
    }
}

// ---------------------------------------------------------------------------
// Static shapes

/// A 3x3 rotation matrix, row-major.
type Mat3 = [[f32; 3]; 3];

fn rotation_matrix(yaw_deg: f32, pitch_deg: f32) -> Mat3 {
    let (sy, cy) = yaw_deg.to_radians().sin_cos();
    let (sp, cp) = pitch_deg.to_radians().sin_cos();
    // R = R_y(yaw) * R_x(pitch): pitch about the local X axis, then yaw.
    [
        [cy, sy * sp, sy * cp],
        [0.0, cp, -sp],
        [-sy, cy * sp, cy * cp],
    ]
}

fn mul(m: &Mat3, v: Vec3) -> Vec3 {
    Vec3::new(
        m[0][0] * v.x + m[0][1] * v.y + m[0][2] * v.z,
        m[1][0] * v.x + m[1][1] * v.y + m[1][2] * v.z,
        m[2][0] * v.x + m[2][1] * v.y + m[2][2] * v.z,
    )
}

impl StaticShape {
    /// A ramp whose top surface runs from the middle of its low edge `from`
    /// to the middle of its high edge `to`.
    pub fn ramp_between(
        name: Option<String>,
        from: Vec3,
        to: Vec3,
        width: f32,
        thickness: f32,
    ) -> StaticShape {
        let d = to.sub(from);
        let run = d.length_xz();
        let length = d.distance(Vec3::ZERO);
        // Local -Z points from `from` to `to` on the ground...
        let yaw = (-d.x).atan2(-d.z);
        // ...and positive pitch raises the local -Z end.
        let pitch = d.y.atan2(run);
        let up = mul(
            &rotation_matrix(yaw.to_degrees(), pitch.to_degrees()),
            Vec3::new(0.0, 1.0, 0.0),
        );
        let center = from.add(to).scale(0.5).sub(up.scale(thickness / 2.0));
        StaticShape::Ramp {
            name,
            center,
            half_extents: Vec3::new(width / 2.0, thickness / 2.0, length / 2.0),
            yaw_deg: yaw.to_degrees(),
            pitch_deg: pitch.to_degrees(),
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            StaticShape::Box { name, .. } | StaticShape::Ramp { name, .. } => name.as_deref(),
        }
    }

    pub fn center(&self) -> Vec3 {
        match *self {
            StaticShape::Box { center, .. } | StaticShape::Ramp { center, .. } => center,
        }
    }

    pub fn half_extents(&self) -> Vec3 {
        match *self {
            StaticShape::Box { half_extents, .. } | StaticShape::Ramp { half_extents, .. } => {
                half_extents
            }
        }
    }

    pub fn yaw_deg(&self) -> f32 {
        match *self {
            StaticShape::Box { yaw_deg, .. } | StaticShape::Ramp { yaw_deg, .. } => yaw_deg,
        }
    }

    /// Tilt around the local X axis; always 0 for a box.
    pub fn pitch_deg(&self) -> f32 {
        match *self {
            StaticShape::Box { .. } => 0.0,
            StaticShape::Ramp { pitch_deg, .. } => pitch_deg,
        }
    }

    /// The shape's rotation as a unit quaternion `[x, y, z, w]` (yaw about
    /// +Y applied after pitch about the local +X), ready for a physics engine.
    pub fn rotation_xyzw(&self) -> [f32; 4] {
        let (sy, cy) = (self.yaw_deg().to_radians() / 2.0).sin_cos();
        let (sp, cp) = (self.pitch_deg().to_radians() / 2.0).sin_cos();
        // q_yaw * q_pitch
        [cy * sp, sy * cp, -sy * sp, cy * cp]
    }

    /// A point given in the shape's own frame, in world coordinates.
    pub fn to_world(&self, local: Vec3) -> Vec3 {
        mul(&rotation_matrix(self.yaw_deg(), self.pitch_deg()), local).add(self.center())
    }

    /// The eight corners in world coordinates.
    pub fn corners(&self) -> [Vec3; 8] {
        let h = self.half_extents();
        let mut out = [Vec3::ZERO; 8];
        for (i, c) in out.iter_mut().enumerate() {
            let sx = if i & 1 == 0 { -1.0 } else { 1.0 };
            let sy = if i & 2 == 0 { -1.0 } else { 1.0 };
            let sz = if i & 4 == 0 { -1.0 } else { 1.0 };
            *c = self.to_world(Vec3::new(sx * h.x, sy * h.y, sz * h.z));
        }
        out
    }

    /// Axis-aligned bound of the rotated shape on the ground:
    /// `(min_x, min_z, max_x, max_z)`.
    pub fn footprint(&self) -> (f32, f32, f32, f32) {
        let mut fp = (
            f32::INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        );
        for c in self.corners() {
            fp.0 = fp.0.min(c.x);
            fp.1 = fp.1.min(c.z);
            fp.2 = fp.2.max(c.x);
            fp.3 = fp.3.max(c.z);
        }
        fp
    }

    /// Highest point of the shape.
    pub fn top_y(&self) -> f32 {
        self.corners()
            .iter()
            .map(|c| c.y)
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// Every cell the footprint overlaps (a shape on a border belongs to all
    /// the cells it touches, so each of them gets the collider).
    pub fn cells(&self, grid: &Grid) -> Vec<CellId> {
        let (x0, z0, x1, z1) = self.footprint();
        let lo = grid.cell_of(Vec3::new(x0, 0.0, z0));
        let hi = grid.cell_of(Vec3::new(x1, 0.0, z1));
        (lo.z..=hi.z)
            .flat_map(|z| (lo.x..=hi.x).map(move |x| CellId::new(x, z)))
            .collect()
    }

    /// Ground distance from `pos` to the footprint (0 inside it).
    pub fn footprint_distance(&self, pos: Vec3) -> f32 {
        let (x0, z0, x1, z1) = self.footprint();
        let dx = (x0 - pos.x).max(0.0).max(pos.x - x1);
        let dz = (z0 - pos.z).max(0.0).max(pos.z - z1);
        (dx * dx + dz * dz).sqrt()
    }

    /// How error messages name this shape: by its name, else `box #N` or
    /// `ramp #N`, where `index` counts the shapes of its kind in file order
    /// from 0.
    fn describe(&self, index: usize) -> String {
        let kind = match self {
            StaticShape::Box { .. } => "box",
            StaticShape::Ramp { .. } => "ramp",
        };
        match self.name() {
            Some(n) => format!("{kind} {n:?}"),
            None => format!("{kind} #{}", index + 1),
        }
    }
}

// ---------------------------------------------------------------------------
// NPCs

impl NpcDef {
    /// The NPCs this entry spawns, `(name, position)`: see
    /// [`WorldDef::npc_spawns`].
    fn spawns(&self) -> impl Iterator<Item = (String, Vec3)> + '_ {
        let n = self.count as f32;
        (0..self.count).map(move |i| {
            if self.count == 1 {
                return (self.name.clone(), self.pos);
            }
            let r = self.scatter * ((i as f32 + 0.5) / n).sqrt();
            let (s, c) = (i as f32 * GOLDEN_ANGLE).sin_cos();
            let pos = Vec3::new(self.pos.x + r * c, self.pos.y, self.pos.z + r * s);
            (format!("{} {}", self.name, i + 1), pos)
        })
    }
}

// ---------------------------------------------------------------------------
// Names

/// Whether `name` is acceptable as an NPC name: the player-name rule, 3 to 20
/// ASCII letters or digits starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    (3..=20).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// WorldDef

impl WorldDef {
    pub fn grid(&self) -> Grid {
        Grid::new(self.cell_size)
    }

    /// The first zone containing `pos`, or [`wilds`](Self::wilds).
    pub fn zone_at(&self, pos: Vec3) -> &Zone {
        self.zones
            .iter()
            .find(|z| z.contains(pos))
            .unwrap_or(&self.wilds)
    }

    /// Landmarks within `radius` metres of `pos` on the ground, nearest first.
    pub fn landmarks_near(&self, pos: Vec3, radius: f32) -> Vec<&Landmark> {
        let mut near: Vec<(f32, &Landmark)> = self
            .landmarks
            .iter()
            .map(|l| (l.pos.distance_xz(pos), l))
            .filter(|(d, _)| *d <= radius)
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        near.into_iter().map(|(_, l)| l).collect()
    }

    /// The statics whose footprint overlaps `cell`.
    pub fn statics_in_cell(&self, cell: CellId) -> impl Iterator<Item = &StaticShape> + '_ {
        let grid = self.grid();
        self.statics
            .iter()
            .filter(move |s| s.cells(&grid).contains(&cell))
    }

    /// Every NPC to spawn: `(name, position, definition)`, in file order.
    /// Deterministic: copies of a counted NPC lie on a golden-angle spiral
    /// filling a disc of radius `scatter` around `pos`.
    pub fn npc_spawns(&self) -> Vec<(String, Vec3, &NpcDef)> {
        self.npcs
            .iter()
            .flat_map(|def| def.spawns().map(move |(name, pos)| (name, pos, def)))
            .collect()
    }

    /// Check everything except the scripts (see [`validate_scripts`](Self::validate_scripts)).
    /// Errors name the line of the item at fault when the world was parsed
    /// from a file.
    pub fn validate(&self) -> Result<(), WorldError> {
        let src = &self.source;
        if !(self.cell_size.is_finite() && self.cell_size > 0.0) {
            return Err(WorldErrorKind::BadCellSize(self.cell_size).at(src.cell_size));
        }
        if self.extent.is_empty() {
            return Err(WorldErrorKind::EmptyExtent {
                min: self.extent.min,
                max: self.extent.max,
            }
            .at(src.extent));
        }
        let grid = self.grid();
        if !self.spawn.is_finite() {
            return Err(non_finite("spawn").at(src.spawn));
        }
        if !self.extent.contains_position(&grid, self.spawn) {
            return Err(WorldErrorKind::SpawnOutside { spawn: self.spawn }.at(src.spawn));
        }
        // The wilds come last and have no entry in `src.zones` (a file gives
        // them no bounds to get wrong).
        for (i, zone) in self.zones.iter().chain([&self.wilds]).enumerate() {
            let at = src.zones.get(i).copied();
            // The wilds may be unbounded; only NaN is refused there.
            let bounds = [zone.min_x, zone.min_z, zone.max_x, zone.max_z];
            let is_wilds = std::ptr::eq(zone, &self.wilds);
            if bounds
                .iter()
                .any(|v| v.is_nan() || (!is_wilds && v.is_infinite()))
            {
                return Err(non_finite(&format!("zone {:?}", zone.name)).at(at));
            }
            if zone.min_x > zone.max_x || zone.min_z > zone.max_z {
                return Err(WorldErrorKind::InvertedZone {
                    zone: zone.name.clone(),
                }
                .at(at));
            }
        }
        for (i, l) in self.landmarks.iter().enumerate() {
            if !l.pos.is_finite() {
                let at = src.landmarks.get(i).copied();
                return Err(non_finite(&format!("landmark {:?}", l.name)).at(at));
            }
        }
        let (mut boxes, mut ramps) = (0, 0);
        for (i, s) in self.statics.iter().enumerate() {
            let nth = match s {
                StaticShape::Box { .. } => &mut boxes,
                StaticShape::Ramp { .. } => &mut ramps,
            };
            validate_shape(*nth, s).map_err(|kind| kind.at(src.statics.get(i).copied()))?;
            *nth += 1;
        }
        self.validate_npcs(&grid)
    }

    fn validate_npcs(&self, grid: &Grid) -> Result<(), WorldError> {
        // Field positions of the i-th entry, if it came from a file.
        let at = |i: usize, field: fn(&NpcSource) -> Option<SourcePos>| {
            self.source.npcs.get(i).and_then(field)
        };
        for (i, def) in self.npcs.iter().enumerate() {
            if !is_valid_name(&def.name) {
                return Err(WorldErrorKind::BadNpcName {
                    name: def.name.clone(),
                }
                .at(at(i, |s| Some(s.name))));
            }
            let non_finite_npc = || non_finite(&format!("npc {:?}", def.name));
            if !def.pos.is_finite() {
                return Err(non_finite_npc().at(at(i, |s| Some(s.pos))));
            }
            if !def.scatter.is_finite() {
                return Err(non_finite_npc().at(at(i, |s| s.scatter.or(Some(s.entry)))));
            }
            let bad = |reason: String| WorldErrorKind::BadNpc {
                npc: def.name.clone(),
                reason,
            };
            if def.count == 0 || def.count > MAX_NPC_COUNT {
                let reason = format!("count must be 1 to {MAX_NPC_COUNT}");
                return Err(bad(reason).at(at(i, |s| s.count.or(Some(s.entry)))));
            }
            if def.scatter < 0.0 {
                let reason = "scatter must not be negative".to_string();
                return Err(bad(reason).at(at(i, |s| s.scatter.or(Some(s.entry)))));
            }
            if def.script.is_empty() {
                let reason = "script must name a file in scripts/".to_string();
                return Err(bad(reason).at(at(i, |s| Some(s.script))));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, def) in self.npcs.iter().enumerate() {
            for (name, pos) in def.spawns() {
                if !self.extent.contains_position(grid, pos) {
                    return Err(
                        WorldErrorKind::NpcOutside { npc: name, pos }.at(at(i, |s| Some(s.pos)))
                    );
                }
                if !seen.insert(name.to_ascii_lowercase()) {
                    return Err(WorldErrorKind::DuplicateNpc { name }.at(at(i, |s| Some(s.name))));
                }
            }
        }
        Ok(())
    }

    /// Every NPC's script must be in [`scripts`](Self::scripts); call this
    /// once the loader has filled them. The error names the line of the
    /// NPC's `script`.
    pub fn validate_scripts(&self) -> Result<(), WorldError> {
        match self
            .npcs
            .iter()
            .enumerate()
            .find(|(_, n)| !self.scripts.contains_key(&n.script))
        {
            Some((i, n)) => Err(WorldErrorKind::UnknownScript {
                npc: n.name.clone(),
                script: n.script.clone(),
            }
            .at(self.source.npcs.get(i).map(|s| s.script))),
            None => Ok(()),
        }
    }

    /// Total NPCs once counts are expanded.
    pub fn npc_total(&self) -> usize {
        self.npcs.iter().map(|n| n.count as usize).sum()
    }
}

fn non_finite(item: &str) -> WorldErrorKind {
    WorldErrorKind::NonFinite {
        item: item.to_string(),
    }
}

/// Checks the `index`-th shape of its kind.
fn validate_shape(index: usize, s: &StaticShape) -> Result<(), WorldErrorKind> {
    let item = s.describe(index);
    let h = s.half_extents();
    if !s.center().is_finite() || !h.is_finite() || !s.yaw_deg().is_finite() {
        return Err(non_finite(&item));
    }
    if !s.pitch_deg().is_finite() {
        return Err(non_finite(&item));
    }
    if h.x <= 0.0 || h.y <= 0.0 || h.z <= 0.0 {
        return Err(WorldErrorKind::BadShape {
            item,
            reason: "every size must be positive".to_string(),
        });
    }
    if s.pitch_deg().abs() >= 90.0 {
        return Err(WorldErrorKind::BadShape {
            item,
            reason: "pitch must be between -90 and 90 degrees".to_string(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The TOML format (see docs/world-format.md)
//
// The raw structs keep the spans of what errors point at (`Spanned`); the
// parser turns them into a `SourceMap`, which the checks read.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorld {
    name: String,
    cell_size: Spanned<f32>,
    spawn: Spanned<[f32; 3]>,
    extent: Spanned<RawExtent>,
    wilds: Option<RawWilds>,
    #[serde(default)]
    zone: Vec<Spanned<RawZone>>,
    #[serde(default)]
    landmark: Vec<Spanned<RawLandmark>>,
    #[serde(default, rename = "box")]
    boxes: Vec<Spanned<RawBox>>,
    #[serde(default)]
    ramp: Vec<Spanned<RawRamp>>,
    #[serde(default)]
    npc: Vec<Spanned<RawNpc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtent {
    min: [i32; 2],
    max: [i32; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWilds {
    name: String,
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    description: String,
    min: [f32; 2],
    max: [f32; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLandmark {
    name: String,
    description: String,
    pos: [f32; 3],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBox {
    name: Option<String>,
    center: [f32; 3],
    size: [f32; 3],
    #[serde(default)]
    yaw: f32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRamp {
    name: Option<String>,
    // Either from/to/width[/thickness]...
    from: Option<[f32; 3]>,
    to: Option<[f32; 3]>,
    width: Option<f32>,
    thickness: Option<f32>,
    // ...or center/size/yaw/pitch, like a box.
    center: Option<[f32; 3]>,
    size: Option<[f32; 3]>,
    yaw: Option<f32>,
    pitch: Option<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNpc {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    pos: Spanned<[f32; 3]>,
    script: Spanned<String>,
    count: Option<Spanned<u32>>,
    scatter: Option<Spanned<f32>>,
}

/// Where the items of a world.toml are: what [`WorldDef::validate`] and
/// [`WorldDef::validate_scripts`] point at. Empty for a world built in code;
/// entries added in code after parsing have none.
#[derive(Clone, Debug, Default)]
struct SourceMap {
    cell_size: Option<SourcePos>,
    spawn: Option<SourcePos>,
    /// The `[extent]` table.
    extent: Option<SourcePos>,
    /// Each `[[zone]]`, `[[landmark]]`, and static (boxes, then ramps, as in
    /// [`WorldDef::statics`]) at its header.
    zones: Vec<SourcePos>,
    landmarks: Vec<SourcePos>,
    statics: Vec<SourcePos>,
    npcs: Vec<NpcSource>,
}

/// Where a world was written down is not part of what it is: two worlds that
/// differ only in layout are equal.
impl PartialEq for SourceMap {
    fn eq(&self, _: &SourceMap) -> bool {
        true
    }
}

/// Where an `[[npc]]` entry and its fields are.
#[derive(Clone, Copy, Debug)]
struct NpcSource {
    entry: SourcePos,
    name: SourcePos,
    pos: SourcePos,
    script: SourcePos,
    count: Option<SourcePos>,
    scatter: Option<SourcePos>,
}

/// Turns byte offsets into a text into lines and columns.
struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The line and column of byte `offset` (clamped to the text).
    fn pos(&self, offset: usize) -> SourcePos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        SourcePos { line, column }
    }

    fn at<T>(&self, item: &Spanned<T>) -> SourcePos {
        self.pos(item.span().start)
    }
}

fn v3(a: [f32; 3]) -> Vec3 {
    Vec3::new(a[0], a[1], a[2])
}

impl RawRamp {
    fn into_shape(self, index: usize) -> Result<StaticShape, WorldErrorKind> {
        let item = match &self.name {
            Some(n) => format!("ramp {n:?}"),
            None => format!("ramp #{}", index + 1),
        };
        let bad = |reason: &str| WorldErrorKind::BadShape {
            item: item.clone(),
            reason: reason.to_string(),
        };
        match (self.from, self.to, self.center, self.size) {
            (Some(from), Some(to), None, None) => {
                if self.yaw.is_some() || self.pitch.is_some() {
                    return Err(bad("a ramp given by from/to takes no yaw or pitch"));
                }
                let width = self
                    .width
                    .ok_or_else(|| bad("a ramp given by from/to needs a width"))?;
                let thickness = self.thickness.unwrap_or(DEFAULT_RAMP_THICKNESS);
                let (from, to) = (v3(from), v3(to));
                if !from.is_finite() || !to.is_finite() || !width.is_finite() {
                    return Err(WorldErrorKind::NonFinite { item });
                }
                if from.distance_xz(to) < 0.1 {
                    return Err(bad("from and to must be apart on the ground"));
                }
                Ok(StaticShape::ramp_between(
                    self.name, from, to, width, thickness,
                ))
            }
            (None, None, Some(center), Some(size)) => {
                if self.width.is_some() || self.thickness.is_some() {
                    return Err(bad(
                        "a ramp given by center/size takes no width or thickness",
                    ));
                }
                Ok(StaticShape::Ramp {
                    name: self.name,
                    center: v3(center),
                    half_extents: v3(size).scale(0.5),
                    yaw_deg: self.yaw.unwrap_or(0.0),
                    pitch_deg: self.pitch.unwrap_or(0.0),
                })
            }
            _ => Err(bad("give either from, to and width, or center and size")),
        }
    }
}

/// Parse and validate a world definition (all but its scripts, which the
/// loader adds before calling [`WorldDef::validate_scripts`]). A syntax
/// error carries the toml crate's line and column in its message; any other
/// error has the line and column of the item at fault in
/// [`WorldError::at`].
pub fn parse_world(toml_text: &str) -> Result<WorldDef, WorldError> {
    let raw: RawWorld =
        toml::from_str(toml_text).map_err(|e| WorldErrorKind::Parse(e.to_string()).at(None))?;
    let lines = LineIndex::new(toml_text);
    let wilds = match raw.wilds {
        Some(w) => Zone {
            name: w.name,
            description: w.description,
            ..Zone::default_wilds()
        },
        None => Zone::default_wilds(),
    };
    let mut source = SourceMap {
        cell_size: Some(lines.at(&raw.cell_size)),
        spawn: Some(lines.at(&raw.spawn)),
        extent: Some(lines.at(&raw.extent)),
        zones: raw.zone.iter().map(|z| lines.at(z)).collect(),
        landmarks: raw.landmark.iter().map(|l| lines.at(l)).collect(),
        statics: raw.boxes.iter().map(|b| lines.at(b)).collect(),
        npcs: raw
            .npc
            .iter()
            .map(|n| NpcSource {
                entry: lines.at(n),
                name: lines.at(&n.get_ref().name),
                pos: lines.at(&n.get_ref().pos),
                script: lines.at(&n.get_ref().script),
                count: n.get_ref().count.as_ref().map(|c| lines.at(c)),
                scatter: n.get_ref().scatter.as_ref().map(|s| lines.at(s)),
            })
            .collect(),
    };
    let mut statics: Vec<StaticShape> = raw
        .boxes
        .into_iter()
        .map(|b| b.into_inner())
        .map(|b| StaticShape::Box {
            name: b.name,
            center: v3(b.center),
            half_extents: v3(b.size).scale(0.5),
            yaw_deg: b.yaw,
        })
        .collect();
    for (i, r) in raw.ramp.into_iter().enumerate() {
        let at = lines.at(&r);
        statics.push(r.into_inner().into_shape(i).map_err(|e| e.at(Some(at)))?);
        source.statics.push(at);
    }
    let extent = raw.extent.into_inner();
    let world = WorldDef {
        name: raw.name,
        cell_size: raw.cell_size.into_inner(),
        extent: Extent::new(
            CellId::new(extent.min[0], extent.min[1]),
            CellId::new(extent.max[0], extent.max[1]),
        ),
        spawn: v3(raw.spawn.into_inner()),
        zones: raw
            .zone
            .into_iter()
            .map(|z| z.into_inner())
            .map(|z| Zone {
                name: z.name,
                description: z.description,
                min_x: z.min[0],
                min_z: z.min[1],
                max_x: z.max[0],
                max_z: z.max[1],
            })
            .collect(),
        wilds,
        landmarks: raw
            .landmark
            .into_iter()
            .map(|l| l.into_inner())
            .map(|l| Landmark {
                name: l.name,
                description: l.description,
                pos: v3(l.pos),
            })
            .collect(),
        statics,
        npcs: raw
            .npc
            .into_iter()
            .map(|n| n.into_inner())
            .map(|n| {
                let count = n.count.map_or(1, Spanned::into_inner);
                let default_scatter = if count > 1 { DEFAULT_SCATTER } else { 0.0 };
                NpcDef {
                    scatter: n.scatter.map_or(default_scatter, Spanned::into_inner),
                    name: n.name.into_inner(),
                    description: n.description,
                    pos: v3(n.pos.into_inner()),
                    script: n.script.into_inner(),
                    count,
                }
            })
            .collect(),
        scripts: BTreeMap::new(),
        source,
    };
    world.validate()?;
    Ok(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_WORLD: &str = include_str!("../../worlds/default/world.toml");
    const DEFAULT_SCRIPTS: &[(&str, &str)] = &[
        (
            "crier",
            include_str!("../../worlds/default/scripts/crier.rhai"),
        ),
        (
            "greeter",
            include_str!("../../worlds/default/scripts/greeter.rhai"),
        ),
        (
            "guard",
            include_str!("../../worlds/default/scripts/guard.rhai"),
        ),
        (
            "wanderer",
            include_str!("../../worlds/default/scripts/wanderer.rhai"),
        ),
    ];

    fn default_world() -> WorldDef {
        let mut w = parse_world(DEFAULT_WORLD).expect("default world parses");
        for (name, src) in DEFAULT_SCRIPTS {
            w.scripts.insert(name.to_string(), src.to_string());
        }
        w
    }

    const MINIMAL: &str = r#"
        name = "Tiny"
        cell_size = 10
        spawn = [5, 0, 5]
        [extent]
        min = [0, 0]
        max = [1, 1]
    "#;

    /// [`MINIMAL`] plus `extra`, parsed; only the kind of error, as most
    /// tests check what was refused (`semantic_errors_name_their_line`
    /// checks where).
    fn with(extra: &str) -> Result<WorldDef, WorldErrorKind> {
        parse_world(&format!("{MINIMAL}\n{extra}")).map_err(|e| e.kind)
    }

    fn minimal_replacing(from: &str, to: &str) -> Result<WorldDef, WorldErrorKind> {
        assert!(MINIMAL.contains(from));
        parse_world(&MINIMAL.replace(from, to)).map_err(|e| e.kind)
    }

    #[test]
    fn default_world_parses_and_validates() {
        let w = default_world();
        w.validate_scripts().unwrap();
        assert_eq!(w.cell_size, 64.0);
        assert_eq!(w.extent.cell_count(), 16);
        assert_eq!(w.spawn, Vec3::new(-5.0, 0.0, 5.0));
        assert!(w.zones.len() >= 4);
        assert!(w.landmarks.len() >= 6);
        assert!(w.statics.len() >= 12);
        let ramps = w
            .statics
            .iter()
            .filter(|s| matches!(s, StaticShape::Ramp { .. }))
            .count();
        assert!((2..=3).contains(&ramps));
        let total = w.npc_total();
        assert!((15..=25).contains(&total), "{total} NPCs");
        assert_eq!(w.npc_spawns().len(), total);
        assert_eq!(w.zone_at(w.spawn).name, "Market Square");
        // Mira the baker stands 8-10 m from the spawn.
        let mira = w
            .npc_spawns()
            .into_iter()
            .find(|(n, _, _)| n == "Mira")
            .unwrap();
        let d = mira.1.distance_xz(w.spawn);
        assert!((8.0..=10.0).contains(&d), "Mira is {d} m from spawn");
    }

    /// Ground distance from `p` to the segment `a`-`b`.
    fn segment_distance(s: &StaticShape, a: Vec3, b: Vec3) -> f32 {
        // Sample the segment finely; shapes are metres wide.
        (0..=200)
            .map(|i| a.add(b.sub(a).scale(i as f32 / 200.0)))
            .map(|p| s.footprint_distance(p))
            .fold(f32::INFINITY, f32::min)
    }

    #[test]
    fn default_world_keeps_spawn_and_test_paths_clear() {
        let w = default_world();
        let east = (Vec3::new(-12.0, 0.0, 5.0), Vec3::new(12.0, 0.0, 5.0));
        let north = (Vec3::new(-5.0, 0.0, -8.0), Vec3::new(-5.0, 0.0, 12.0));
        for s in &w.statics {
            let name = s.name().unwrap_or("?");
            assert!(
                s.footprint_distance(w.spawn) >= 12.0,
                "{name} is near the spawn"
            );
            assert!(
                segment_distance(s, east.0, east.1) >= 3.0,
                "{name} blocks z=5"
            );
            assert!(
                segment_distance(s, north.0, north.1) >= 3.0,
                "{name} blocks x=-5"
            );
        }
        // NPCs do not stand on the test paths either.
        for (name, pos, _) in w.npc_spawns() {
            assert!(pos.distance_xz(w.spawn) >= 5.0, "{name} on the spawn");
            assert!(
                !((-12.0..=12.0).contains(&pos.x) && (pos.z - 5.0).abs() < 3.0),
                "{name}"
            );
            assert!(
                !((-8.0..=12.0).contains(&pos.z) && (pos.x + 5.0).abs() < 3.0),
                "{name}"
            );
        }
    }

    #[test]
    fn world_round_trips_through_the_wire_codec() {
        let w = default_world();
        let bytes = crate::encode(&w).unwrap();
        let back: WorldDef = crate::decode(&bytes, crate::frame::MAX_CLUSTER_FRAME).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn minimal_world_defaults() {
        let w = parse_world(MINIMAL).unwrap();
        assert!(w.zones.is_empty() && w.statics.is_empty() && w.npcs.is_empty());
        assert_eq!(w.zone_at(Vec3::new(1.0, 0.0, 1.0)).name, "The Wilds");
        w.validate_scripts().unwrap();
    }

    #[test]
    fn toml_errors_are_parse_errors() {
        let e = parse_world("name = ").unwrap_err();
        assert!(matches!(e.kind, WorldErrorKind::Parse(_)), "{e:?}");
        // The toml crate's message carries the line; nothing is added to it.
        assert!(e.at.is_none() && e.to_string().contains("line 1"), "{e}");
        // Unknown keys are refused, so typos do not go unnoticed.
        let e = with("colour = \"red\"").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    /// Where `# <-` marks a line of `text`: its 1-based number.
    fn marked_line(text: &str) -> usize {
        let lines: Vec<usize> = (text.lines().enumerate())
            .filter(|(_, l)| l.contains("# <-"))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(lines.len(), 1, "one marked line in {text}");
        lines[0]
    }

    /// Every kind of semantic error names the line of the item at fault
    /// (marked `# <-`), and its message starts with it.
    #[test]
    fn semantic_errors_name_their_line() {
        const NPC: &str = "[[npc]]\nname = \"Ann\"\npos = [5, 0, 5]\nscript = \"w\"\n";
        const BOX: &str = "[[box]]\ncenter = [1, 1, 1]\nsize = [1, 1, 1]\n";
        let replacing = |from: &str, to: &str| {
            assert!(MINIMAL.contains(from));
            MINIMAL.replace(from, to)
        };
        let adding = |extra: &str| format!("{MINIMAL}\n{extra}");
        type Check = fn(&WorldErrorKind) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (replacing("cell_size = 10", "cell_size = 0 # <-"), |k| {
                matches!(k, WorldErrorKind::BadCellSize(_))
            }),
            (
                replacing("[extent]", "[extent] # <-").replace("max = [1, 1]", "max = [1, -1]"),
                |k| matches!(k, WorldErrorKind::EmptyExtent { .. }),
            ),
            (replacing("spawn = [5, 0, 5]", "spawn = [25, 0, 5] # <-"), |k| {
                matches!(k, WorldErrorKind::SpawnOutside { .. })
            }),
            (replacing("spawn = [5, 0, 5]", "spawn = [5, nan, 5] # <-"), |k| {
                matches!(k, WorldErrorKind::NonFinite { .. })
            }),
            (
                adding("[[zone]] # <-\nname = \"Back\"\ndescription = \"\"\nmin = [5, 0]\nmax = [1, 4]"),
                |k| matches!(k, WorldErrorKind::InvertedZone { .. }),
            ),
            (
                adding("[[landmark]]\nname = \"Well\"\ndescription = \"\"\npos = [1, 0, 1]\n\
                        [[landmark]] # <-\nname = \"Pit\"\ndescription = \"\"\npos = [nan, 0, 1]"),
                |k| matches!(k, WorldErrorKind::NonFinite { .. }),
            ),
            (
                adding(&format!("{BOX}[[box]] # <-\ncenter = [1, 1, 1]\nsize = [1, 0, 1]")),
                |k| matches!(k, WorldErrorKind::BadShape { .. }),
            ),
            // Refused while the ramp is read...
            (
                adding("[[ramp]] # <-\nfrom = [1, 0, 1]\nto = [1, 2, 9]"),
                |k| matches!(k, WorldErrorKind::BadShape { .. }),
            ),
            // ...and when the shapes are checked, after the boxes.
            (
                adding(&format!(
                    "{BOX}[[ramp]]\ncenter = [1, 1, 1]\nsize = [1, 1, 1]\npitch = 10\n\
                     [[ramp]] # <-\ncenter = [1, 1, 1]\nsize = [1, 1, 1]\npitch = 95\n{BOX}"
                )),
                |k| matches!(k, WorldErrorKind::BadShape { .. }),
            ),
            (
                adding(&format!("{NPC}{}", NPC.replace("\"Ann\"", "\"A n\" # <-"))),
                |k| matches!(k, WorldErrorKind::BadNpcName { .. }),
            ),
            (adding(&format!("{NPC}count = 0 # <-")), |k| {
                matches!(k, WorldErrorKind::BadNpc { .. })
            }),
            (adding(&format!("{NPC}scatter = nan # <-")), |k| {
                matches!(k, WorldErrorKind::NonFinite { .. })
            }),
            (
                adding(&format!(
                    "{NPC}{}",
                    NPC.replace("Ann", "Bob")
                        .replace("[5, 0, 5]", "[50, 0, 5] # <-")
                )),
                |k| matches!(k, WorldErrorKind::NpcOutside { .. }),
            ),
            (
                adding(&format!("{NPC}{}", NPC.replace("\"Ann\"", "\"ANN\" # <-"))),
                |k| matches!(k, WorldErrorKind::DuplicateNpc { .. }),
            ),
        ];
        for (text, is_kind) in cases {
            let line = marked_line(&text);
            let e = parse_world(&text).unwrap_err();
            assert!(is_kind(&e.kind), "wrong error {e:?} for\n{text}");
            assert_eq!(e.at.map(|at| at.line), Some(line), "{e} for\n{text}");
            let prefix = format!("line {line}, column ");
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
    }

    /// An unknown script is found once the loader has added the scripts; it
    /// names the line and column of the `script` value.
    #[test]
    fn unknown_script_names_its_line_and_column() {
        let text = format!(
            "{MINIMAL}\n[[npc]]\nname = \"Ann\"\npos = [5, 0, 5]\nscript = \"w\"\n\
             [[npc]]\nname = \"Bob\"\npos = [5, 0, 6]\nscript = \"walk\" # <-\n"
        );
        let line = marked_line(&text);
        let mut w = parse_world(&text).unwrap();
        w.scripts.insert("w".into(), String::new());
        let e = w.validate_scripts().unwrap_err();
        assert_eq!(e.at, Some(SourcePos { line, column: 10 }));
        assert_eq!(
            e.to_string(),
            format!(
                "line {line}, column 10: npc \"Bob\" uses script \"walk\", \
                 but there is no scripts/walk.rhai"
            )
        );
    }

    /// NPCs added in code have no place in a file: their errors say what,
    /// not where, and the positions of the others still hold.
    #[test]
    fn npcs_added_in_code_have_no_line() {
        let mut w = with("[[npc]]\nname = \"Ann\"\npos = [5, 0, 5]\nscript = \"w\"").unwrap();
        w.scripts.insert("w".into(), String::new());
        w.npcs.push(NpcDef {
            name: "Bob".into(),
            description: String::new(),
            pos: Vec3::new(5.0, 0.0, 6.0),
            script: "walk".into(),
            count: 1,
            scatter: 0.0,
        });
        let e = w.validate_scripts().unwrap_err();
        assert_eq!(e.at, None);
        assert!(e.to_string().starts_with("npc \"Bob\""), "{e}");
    }

    /// Columns count characters, not bytes.
    #[test]
    fn columns_count_characters() {
        let text = MINIMAL.replace("name = \"Tiny\"", "name = \"Zoë\"; x = 1");
        let lines = LineIndex::new(&text);
        let offset = text.find("x = 1").unwrap();
        let line = marked_line(&text.replace("x = 1", "# <-"));
        assert_eq!(lines.pos(offset), SourcePos { line, column: 23 });
        assert_eq!(lines.pos(0), SourcePos { line: 1, column: 1 });
        assert_eq!(lines.pos(text.len()).line, text.matches('\n').count() + 1);
    }

    #[test]
    fn bad_cell_size() {
        for bad in ["0", "-64", "nan", "inf"] {
            let e = minimal_replacing("cell_size = 10", &format!("cell_size = {bad}"));
            assert!(
                matches!(e, Err(WorldErrorKind::BadCellSize(_))),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn empty_extent() {
        let e = minimal_replacing("max = [1, 1]", "max = [1, -1]");
        assert!(
            matches!(e, Err(WorldErrorKind::EmptyExtent { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn spawn_outside() {
        let e = minimal_replacing("spawn = [5, 0, 5]", "spawn = [25, 0, 5]");
        assert!(
            matches!(e, Err(WorldErrorKind::SpawnOutside { .. })),
            "{e:?}"
        );
        let e = minimal_replacing("spawn = [5, 0, 5]", "spawn = [5, nan, 5]");
        assert!(matches!(e, Err(WorldErrorKind::NonFinite { .. })), "{e:?}");
    }

    #[test]
    fn inverted_zone() {
        let e = with("[[zone]]\nname = \"Back\"\ndescription = \"x\"\nmin = [5, 0]\nmax = [1, 4]");
        match e {
            Err(WorldErrorKind::InvertedZone { zone }) => assert_eq!(zone, "Back"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn npc_outside() {
        let e = with("[[npc]]\nname = \"Walker\"\npos = [50, 0, 5]\nscript = \"w\"");
        assert!(matches!(e, Err(WorldErrorKind::NpcOutside { .. })), "{e:?}");
        // A scatter that reaches beyond the edge counts too.
        let e = with(
            "[[npc]]\nname = \"Hen\"\npos = [2, 0, 2]\nscript = \"w\"\ncount = 9\nscatter = 5",
        );
        assert!(matches!(e, Err(WorldErrorKind::NpcOutside { .. })), "{e:?}");
    }

    #[test]
    fn npc_names() {
        for bad in [
            "Al",
            "1abc",
            "Mira Baker",
            "ThisNameIsFarTooLongToUse",
            "Zoë",
            "",
        ] {
            let e = with(&format!(
                "[[npc]]\nname = {bad:?}\npos = [5, 0, 5]\nscript = \"w\""
            ));
            assert!(
                matches!(e, Err(WorldErrorKind::BadNpcName { .. })),
                "{bad}: {e:?}"
            );
        }
        assert!(is_valid_name("Mira") && is_valid_name("R2d2") && is_valid_name("Bob"));
        let dup = "[[npc]]\nname = \"Ann\"\npos = [5, 0, 5]\nscript = \"w\"\n";
        let e = with(&format!("{dup}{}", dup.replace("Ann", "ANN")));
        assert!(
            matches!(e, Err(WorldErrorKind::DuplicateNpc { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn npc_count_and_scatter_are_checked() {
        let base = "[[npc]]\nname = \"Hen\"\npos = [10, 0, 10]\nscript = \"w\"\n";
        let e = with(&format!("{base}count = 0"));
        assert!(matches!(e, Err(WorldErrorKind::BadNpc { .. })), "{e:?}");
        let e = with(&format!("{base}count = 2\nscatter = -1"));
        assert!(matches!(e, Err(WorldErrorKind::BadNpc { .. })), "{e:?}");
        let e = with(&format!("{base}scatter = nan"));
        assert!(matches!(e, Err(WorldErrorKind::NonFinite { .. })), "{e:?}");
    }

    #[test]
    fn unknown_script() {
        let mut w = with("[[npc]]\nname = \"Walker\"\npos = [5, 0, 5]\nscript = \"walk\"").unwrap();
        match w.validate_scripts().map_err(|e| e.kind) {
            Err(WorldErrorKind::UnknownScript { npc, script }) => {
                assert_eq!((npc.as_str(), script.as_str()), ("Walker", "walk"))
            }
            other => panic!("{other:?}"),
        }
        w.scripts.insert("walk".into(), "fn on_tick() {}".into());
        w.validate_scripts().unwrap();
    }

    #[test]
    fn non_finite_shapes_and_bad_sizes() {
        let e = with("[[box]]\nname = \"Crate\"\ncenter = [1, inf, 1]\nsize = [1, 1, 1]");
        assert!(matches!(e, Err(WorldErrorKind::NonFinite { ref item }) if item.contains("Crate")));
        let e = with("[[landmark]]\nname = \"Well\"\ndescription = \"\"\npos = [nan, 0, 1]");
        assert!(matches!(e, Err(WorldErrorKind::NonFinite { .. })), "{e:?}");
        let e = with("[[zone]]\nname = \"Z\"\ndescription = \"\"\nmin = [0, -inf]\nmax = [1, 1]");
        assert!(matches!(e, Err(WorldErrorKind::NonFinite { .. })), "{e:?}");
        let e = with("[[box]]\ncenter = [1, 1, 1]\nsize = [1, 0, 1]");
        match e {
            Err(WorldErrorKind::BadShape { item, .. }) => assert_eq!(item, "box #1"),
            other => panic!("{other:?}"),
        }
        // Shapes are counted per kind, as in the file.
        let e = with(
            "[[box]]\ncenter = [1, 1, 1]\nsize = [1, 1, 1]\n\
                      [[ramp]]\ncenter = [1, 1, 1]\nsize = [1, 1, 1]\npitch = 95",
        );
        match e {
            Err(WorldErrorKind::BadShape { item, .. }) => assert_eq!(item, "ramp #1"),
            other => panic!("{other:?}"),
        }
        let e = with("[[ramp]]\nfrom = [1, 0, 1]\nto = [1, 2, 9]");
        assert!(
            matches!(e, Err(WorldErrorKind::BadShape { .. })),
            "needs width: {e:?}"
        );
        let e = with("[[ramp]]\nfrom = [1, 0, 1]\nto = [1, 2, 9]\nwidth = 2\npitch = 3");
        assert!(
            matches!(e, Err(WorldErrorKind::BadShape { .. })),
            "mixed forms: {e:?}"
        );
    }

    #[test]
    fn zone_at_falls_back_to_the_wilds() {
        let w = with(concat!(
            "[[zone]]\nname = \"West\"\ndescription = \"w\"\nmin = [0, 0]\nmax = [10, 20]\n",
            "[[zone]]\nname = \"All\"\ndescription = \"a\"\nmin = [0, 0]\nmax = [20, 10]\n",
        ))
        .unwrap();
        assert_eq!(
            w.zone_at(Vec3::new(5.0, 0.0, 5.0)).name,
            "West",
            "first match wins"
        );
        assert_eq!(w.zone_at(Vec3::new(15.0, 0.0, 5.0)).name, "All");
        let wild = w.zone_at(Vec3::new(15.0, 0.0, 15.0));
        assert_eq!(wild.name, "The Wilds");
        assert!(!wild.description.is_empty());
        let w = with("[wilds]\nname = \"The Moor\"\ndescription = \"Heather.\"").unwrap();
        assert_eq!(w.zone_at(Vec3::ZERO).name, "The Moor");
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn footprint_of_a_rotated_box() {
        let b = StaticShape::Box {
            name: None,
            center: Vec3::new(10.0, 1.0, -4.0),
            half_extents: Vec3::new(2.0, 1.0, 1.0),
            yaw_deg: 90.0,
        };
        // Turned a quarter: the long side now runs north-south.
        let (x0, z0, x1, z1) = b.footprint();
        assert!(close(x0, 9.0) && close(x1, 11.0) && close(z0, -6.0) && close(z1, -2.0));
        let b = StaticShape::Box {
            name: None,
            center: Vec3::new(10.0, 1.0, -4.0),
            half_extents: Vec3::new(1.0, 1.0, 1.0),
            yaw_deg: 45.0,
        };
        let (x0, z0, x1, z1) = b.footprint();
        let r = std::f32::consts::SQRT_2;
        assert!(close(x0, 10.0 - r) && close(x1, 10.0 + r));
        assert!(close(z0, -4.0 - r) && close(z1, -4.0 + r));
        // A box on a border belongs to both cells.
        let grid = Grid::new(64.0);
        let wall = StaticShape::Box {
            name: None,
            center: Vec3::new(0.0, 1.0, 10.0),
            half_extents: Vec3::new(3.0, 1.0, 0.5),
            yaw_deg: 0.0,
        };
        assert_eq!(
            wall.cells(&grid),
            vec![CellId::new(-1, 0), CellId::new(0, 0)]
        );
    }

    #[test]
    fn positive_yaw_turns_east_to_north_and_pitch_raises_the_north_end() {
        let b = StaticShape::Box {
            name: None,
            center: Vec3::ZERO,
            half_extents: Vec3::new(1.0, 1.0, 1.0),
            yaw_deg: 90.0,
        };
        let p = b.to_world(Vec3::new(1.0, 0.0, 0.0));
        assert!(close(p.x, 0.0) && close(p.z, -1.0), "{p}");
        let r = StaticShape::Ramp {
            name: None,
            center: Vec3::ZERO,
            half_extents: Vec3::new(1.0, 0.1, 5.0),
            yaw_deg: 0.0,
            pitch_deg: 30.0,
        };
        let north_end = r.to_world(Vec3::new(0.0, 0.0, -5.0));
        assert!(close(north_end.y, 2.5) && north_end.z < 0.0, "{north_end}");
    }

    #[test]
    fn quaternion_agrees_with_the_matrix() {
        let s = StaticShape::Ramp {
            name: None,
            center: Vec3::ZERO,
            half_extents: Vec3::new(1.0, 1.0, 1.0),
            yaw_deg: -63.0,
            pitch_deg: 17.0,
        };
        let [qx, qy, qz, qw] = s.rotation_xyzw();
        let v = Vec3::new(0.3, -1.2, 2.0);
        // v' = v + 2w(q x v) + 2 q x (q x v)
        let q = Vec3::new(qx, qy, qz);
        let cross = |a: Vec3, b: Vec3| {
            Vec3::new(
                a.y * b.z - a.z * b.y,
                a.z * b.x - a.x * b.z,
                a.x * b.y - a.y * b.x,
            )
        };
        let t = cross(q, v).scale(2.0);
        let rotated = v.add(t.scale(qw)).add(cross(q, t));
        let expected = s.to_world(v);
        assert!(rotated.distance(expected) < 1e-4, "{rotated} vs {expected}");
    }

    #[test]
    fn ramp_from_to_meets_its_ends() {
        let from = Vec3::new(84.0, 0.0, -60.0);
        let to = Vec3::new(90.0, 4.0, -80.0);
        let r = StaticShape::ramp_between(None, from, to, 5.0, 0.5);
        // The middle of the top edges are the given points.
        let h = r.half_extents();
        let low = r.to_world(Vec3::new(0.0, h.y, h.z));
        let high = r.to_world(Vec3::new(0.0, h.y, -h.z));
        assert!(low.distance(from) < 1e-3, "{low}");
        assert!(high.distance(to) < 1e-3, "{high}");
        // The low end meets the ground and no corner pokes far above `to`.
        assert!(r.top_y() < to.y + 0.3, "{}", r.top_y());
    }

    #[test]
    fn npc_spawns_expand_counts_deterministically() {
        let w = with(concat!(
            "[[npc]]\nname = \"Mira\"\npos = [5, 0, 5]\nscript = \"greeter\"\n",
            "[[npc]]\nname = \"Sheep\"\npos = [10, 0, 10]\nscript = \"wanderer\"\ncount = 6\nscatter = 4\n",
        ))
        .unwrap();
        let spawns = w.npc_spawns();
        assert_eq!(spawns.len(), 7);
        assert_eq!(spawns[0].0, "Mira");
        assert_eq!(spawns[0].1, Vec3::new(5.0, 0.0, 5.0));
        let names: Vec<_> = spawns[1..].iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            ["Sheep 1", "Sheep 2", "Sheep 3", "Sheep 4", "Sheep 5", "Sheep 6"]
        );
        for (_, pos, def) in &spawns[1..] {
            assert!(pos.distance_xz(def.pos) <= 4.0 + 1e-4);
        }
        // Spread out, not stacked.
        for (i, a) in spawns[1..].iter().enumerate() {
            for b in &spawns[i + 2..] {
                assert!(a.1.distance_xz(b.1) > 0.5, "{} and {} overlap", a.0, b.0);
            }
        }
        let again: Vec<_> = w.npc_spawns().into_iter().map(|s| (s.0, s.1)).collect();
        let first: Vec<_> = spawns.into_iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(first, again);
        // Omitted scatter defaults to DEFAULT_SCATTER for counted NPCs.
        let w =
            with("[[npc]]\nname = \"Hen\"\npos = [10, 0, 10]\nscript = \"w\"\ncount = 3").unwrap();
        assert_eq!(w.npcs[0].scatter, DEFAULT_SCATTER);
    }

    #[test]
    fn extent_cells_and_clamping() {
        let w = default_world();
        let cells: Vec<_> = w.extent.cells().collect();
        assert_eq!(cells.len(), 16);
        assert_eq!(cells[0], CellId::new(-2, -2));
        assert_eq!(cells[15], CellId::new(1, 1));
        assert!(w.extent.contains(CellId::new(0, 0)) && !w.extent.contains(CellId::new(2, 0)));
        let grid = w.grid();
        let p = w
            .extent
            .clamp_position(&grid, Vec3::new(500.0, 3.0, -500.0));
        assert_eq!(p, Vec3::new(127.5, 3.0, -127.5));
        let inside = Vec3::new(1.0, 0.0, 2.0);
        assert_eq!(w.extent.clamp_position(&grid, inside), inside);
    }

    #[test]
    fn landmarks_near_sorts_by_distance() {
        let w = default_world();
        let near = w.landmarks_near(w.spawn, 30.0);
        assert!(!near.is_empty());
        let d: Vec<f32> = near.iter().map(|l| l.pos.distance_xz(w.spawn)).collect();
        assert!(d.windows(2).all(|p| p[0] <= p[1]) && d.iter().all(|x| *x <= 30.0));
        assert!(w
            .landmarks_near(Vec3::new(-127.0, 0.0, 127.0), 1.0)
            .is_empty());
    }
}
