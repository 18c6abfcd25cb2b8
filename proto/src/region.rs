//! Regions: the quadtree inside each cell of the world grid.
//!
//! A cell of the [`Grid`] (level 0) can be split into four square quadrants,
//! each quadrant again into four, down to [`MAX_DEPTH`] levels below the
//! cell. A [`RegionId`] names one square of that quadtree: its cell, its
//! depth, and its coordinates `(qx, qz)` among the `2^depth x 2^depth`
//! squares of that depth inside the cell (`qx` grows east, `qz` grows south,
//! like the cell coordinates themselves).
//!
//! # Quadrants
//!
//! The four children of a region are numbered like this (north is -Z, east
//! is +X, as everywhere in Tessera):
//!
//! ```text
//!              north (-Z)
//!          +-------+-------+
//!          |   0   |   1   |
//!   west   |  NW   |  NE   |   east (+X)
//!          +-------+-------+
//!          |   2   |   3   |
//!          |  SW   |  SE   |
//!          +-------+-------+
//!              south (+Z)
//! ```
//!
//! so bit 0 of the number is "east half" (high x) and bit 1 "south half"
//! (high z); see [`Quadrant`].
//!
//! # Text form
//!
//! Used in etcd keys, CLI arguments and the player-facing `where`: a whole
//! cell prints exactly like its [`CellId`], `3,-1`; a deeper region appends
//! the quadrant of each level from the cell down, `3,-1/0/3` (the south-east
//! quadrant of the north-west quadrant of cell `3,-1`). Parsing accepts
//! whitespace around every component (`" 3 , -1 / 0 "`) and rejects anything
//! else with a [`ParseRegionError`].
//!
//! # Geometry
//!
//! A region's extent is half-open like a cell's. Which region holds a point
//! is decided by [`RegionId::at`], which uses the same arithmetic as
//! [`Grid::cell_of`], so at depth 0 the two always agree and
//! [`RegionId::contains_point`] never disagrees with either; [`RegionId::bounds`]
//! is for drawing and distances and may differ from them by rounding right on
//! an edge. Relations between regions ([`RegionId::contains`],
//! [`RegionId::overlaps`], [`RegionId::touches`]) are exact integer
//! arithmetic and need no grid.
//!
//! # Ownership trees
//!
//! [`RegionTree`] is the layout of one cell: whole, or split into four
//! subtrees, with a payload (the coordinator's owner record) on every leaf.
//! In JSON a whole cell is exactly its payload, so values stored before
//! regions existed still load.

use crate::geometry::{CellId, Grid, Vec3};
use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// How many levels a cell can be split below itself. A region of depth `d`
/// has a side of `cell_size / 2^d`.
pub const MAX_DEPTH: u8 = 8;

// `qx` and `qz` are below `2^depth` and stored in a `u16`.
const _: () = assert!(MAX_DEPTH <= 16);

/// One of the four children of a region. The discriminant is the number used
/// in the text form and in [`RegionId::children`]: bit 0 set means the east
/// (high x) half, bit 1 set the south (high z) half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quadrant {
    /// 0: low x, low z.
    NorthWest = 0,
    /// 1: high x, low z.
    NorthEast = 1,
    /// 2: low x, high z.
    SouthWest = 2,
    /// 3: high x, high z.
    SouthEast = 3,
}

impl Quadrant {
    /// All four, in number order.
    pub const ALL: [Quadrant; 4] = [
        Quadrant::NorthWest,
        Quadrant::NorthEast,
        Quadrant::SouthWest,
        Quadrant::SouthEast,
    ];

    /// The number of this quadrant, `0..4`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The quadrant numbered `index`, if `index < 4`.
    pub const fn from_index(index: usize) -> Option<Quadrant> {
        match index {
            0 => Some(Quadrant::NorthWest),
            1 => Some(Quadrant::NorthEast),
            2 => Some(Quadrant::SouthWest),
            3 => Some(Quadrant::SouthEast),
            _ => None,
        }
    }

    /// Whether this is an east (high x) quadrant.
    pub const fn is_east(self) -> bool {
        self as usize & 1 != 0
    }

    /// Whether this is a south (high z) quadrant.
    pub const fn is_south(self) -> bool {
        self as usize & 2 != 0
    }

    const fn from_halves(east: bool, south: bool) -> Quadrant {
        match (east, south) {
            (false, false) => Quadrant::NorthWest,
            (true, false) => Quadrant::NorthEast,
            (false, true) => Quadrant::SouthWest,
            (true, true) => Quadrant::SouthEast,
        }
    }
}

/// A square region of the quadtree inside one cell: the whole cell at depth
/// 0, one of `4^depth` equal squares at `depth`.
///
/// Always valid: `depth <= MAX_DEPTH` and `qx, qz < 2^depth` (deserialising
/// checks it too). The derived order compares the cell, then the depth, then
/// `qx`, then `qz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawRegionId")]
pub struct RegionId {
    cell: CellId,
    depth: u8,
    qx: u16,
    qz: u16,
}

/// The serialised fields of a `RegionId`, before validation.
#[derive(Deserialize)]
struct RawRegionId {
    cell: CellId,
    depth: u8,
    qx: u16,
    qz: u16,
}

impl TryFrom<RawRegionId> for RegionId {
    type Error = String;
    fn try_from(raw: RawRegionId) -> Result<Self, Self::Error> {
        RegionId::new(raw.cell, raw.depth, raw.qx, raw.qz).ok_or_else(|| {
            format!(
                "no region at depth {} ({}, {}) of cell {}: depth is at most {MAX_DEPTH} and \
                 coordinates are below 2^depth",
                raw.depth, raw.qx, raw.qz, raw.cell
            )
        })
    }
}

impl RegionId {
    /// The whole cell (depth 0).
    pub const fn cell(cell: CellId) -> RegionId {
        RegionId {
            cell,
            depth: 0,
            qx: 0,
            qz: 0,
        }
    }

    /// The region `(qx, qz)` of depth `depth` in `cell`, if `depth <=
    /// MAX_DEPTH` and both coordinates are below `2^depth`.
    pub fn new(cell: CellId, depth: u8, qx: u16, qz: u16) -> Option<RegionId> {
        let n = side_count(depth)?;
        (u32::from(qx) < n && u32::from(qz) < n).then_some(RegionId {
            cell,
            depth,
            qx,
            qz,
        })
    }

    /// The cell this region is in.
    pub const fn cell_id(self) -> CellId {
        self.cell
    }

    /// Levels below the cell: 0 for the whole cell.
    pub const fn depth(self) -> u8 {
        self.depth
    }

    /// Column inside the cell at this depth, `0..2^depth`, growing east.
    pub const fn qx(self) -> u16 {
        self.qx
    }

    /// Row inside the cell at this depth, `0..2^depth`, growing south.
    pub const fn qz(self) -> u16 {
        self.qz
    }

    /// Whether this is a whole cell.
    pub const fn is_cell(self) -> bool {
        self.depth == 0
    }

    /// The region this one is a quadrant of; `None` for a whole cell.
    pub fn parent(self) -> Option<RegionId> {
        (!self.is_cell()).then(|| self.truncate(self.depth - 1))
    }

    /// Which quadrant of its parent this region is; `None` for a whole cell.
    pub fn quadrant(self) -> Option<Quadrant> {
        (!self.is_cell()).then(|| Quadrant::from_halves(self.qx & 1 != 0, self.qz & 1 != 0))
    }

    /// Quadrant `q` of this region; `None` at [`MAX_DEPTH`].
    pub fn child(self, q: Quadrant) -> Option<RegionId> {
        (self.depth < MAX_DEPTH).then(|| self.child_unchecked(q))
    }

    /// The four quadrants of this region, indexed by [`Quadrant::index`];
    /// `None` at [`MAX_DEPTH`].
    pub fn children(self) -> Option<[RegionId; 4]> {
        (self.depth < MAX_DEPTH).then(|| Quadrant::ALL.map(|q| self.child_unchecked(q)))
    }

    /// The region of depth `depth` that contains this one (itself at its own
    /// depth); `None` if `depth` is deeper than this region.
    pub fn ancestor(self, depth: u8) -> Option<RegionId> {
        (depth <= self.depth).then(|| self.truncate(depth))
    }

    /// The quadrants from the cell down to this region, one per level; empty
    /// for a whole cell. This is the `/q/q...` part of the text form.
    pub fn path(self) -> impl DoubleEndedIterator<Item = Quadrant> + ExactSizeIterator {
        (0..self.depth).rev().map(move |shift| {
            Quadrant::from_halves((self.qx >> shift) & 1 != 0, (self.qz >> shift) & 1 != 0)
        })
    }

    /// Whether `other` is this region or lies inside it.
    pub fn contains(self, other: RegionId) -> bool {
        other.ancestor(self.depth) == Some(self)
    }

    /// Whether the two regions share any area. Quadtree squares are either
    /// nested or disjoint, so this is "one contains the other".
    pub fn overlaps(self, other: RegionId) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// Whether the two regions meet along an edge or at a corner without
    /// overlapping. Works across cells and depths, exactly.
    pub fn touches(self, other: RegionId) -> bool {
        let a = self.units();
        let b = other.units();
        let closed = a.0 <= b.2 && b.0 <= a.2 && a.1 <= b.3 && b.1 <= a.3;
        let open = a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
        closed && !open
    }

    /// The region of depth `depth` containing `pos` (its height is ignored).
    /// At depth 0 this is `RegionId::cell(grid.cell_of(pos))`; the cell is
    /// always the one `Grid::cell_of` gives.
    ///
    /// # Panics
    ///
    /// If `depth > MAX_DEPTH`.
    pub fn at(grid: &Grid, pos: Vec3, depth: u8) -> RegionId {
        let Some(n) = side_count(depth) else {
            panic!("region depth {depth} is beyond MAX_DEPTH {MAX_DEPTH}");
        };
        // The same division as `Grid::cell_of`; the fraction left after its
        // floor picks the square. `t - floor(t)` is exact except for tiny
        // negative `t`, where it can round up to 1: the clamp keeps such a
        // point in the last square of the cell `cell_of` chose. Non-finite
        // input gives NaN, which `as` turns into 0, as `cell_of` does.
        let square = |coord: f32| -> u16 {
            let t = coord / grid.cell_size;
            let frac = t - t.floor();
            ((frac * n as f32) as u32).min(n - 1) as u16
        };
        RegionId {
            cell: grid.cell_of(pos),
            depth,
            qx: square(pos.x),
            qz: square(pos.z),
        }
    }

    /// Whether `pos` (height ignored) lies in this region: exactly when
    /// [`RegionId::at`] at this depth gives this region, so it agrees with
    /// `Grid::cell_of` (half-open: the low edges belong to the region).
    pub fn contains_point(self, grid: &Grid, pos: Vec3) -> bool {
        RegionId::at(grid, pos, self.depth) == self
    }

    /// The extent of this region on the XZ plane, in metres.
    pub fn bounds(self, grid: &Grid) -> Rect {
        let n = f64::from(1u32 << self.depth);
        let size = f64::from(grid.cell_size);
        let edge = |cell: i32, q: u16| (f64::from(cell) * n + f64::from(q)) * size / n;
        Rect {
            min_x: edge(self.cell.x, self.qx) as f32,
            min_z: edge(self.cell.z, self.qz) as f32,
            max_x: edge(self.cell.x, self.qx + 1) as f32,
            max_z: edge(self.cell.z, self.qz + 1) as f32,
        }
    }

    /// Side length in metres: `cell_size / 2^depth`.
    pub fn side(self, grid: &Grid) -> f32 {
        grid.cell_size / (1u32 << self.depth) as f32
    }

    /// The centre of this region, at height 0.
    pub fn centre(self, grid: &Grid) -> Vec3 {
        self.bounds(grid).centre()
    }

    /// Distance on the XZ plane from `pos` to this region: 0 inside or on
    /// its edge, the distance to the nearest point of the region otherwise.
    pub fn distance_xz(self, grid: &Grid, pos: Vec3) -> f32 {
        self.bounds(grid).distance_xz(pos)
    }

    /// `self` with its path cut to `depth <= self.depth`.
    fn truncate(self, depth: u8) -> RegionId {
        debug_assert!(depth <= self.depth);
        let shift = self.depth - depth;
        RegionId {
            cell: self.cell,
            depth,
            qx: self.qx >> shift,
            qz: self.qz >> shift,
        }
    }

    /// Quadrant `q`, for `self.depth < MAX_DEPTH`.
    fn child_unchecked(self, q: Quadrant) -> RegionId {
        debug_assert!(self.depth < MAX_DEPTH);
        RegionId {
            cell: self.cell,
            depth: self.depth + 1,
            qx: (self.qx << 1) | u16::from(q.is_east()),
            qz: (self.qz << 1) | u16::from(q.is_south()),
        }
    }

    /// Half-open extent `(x0, z0, x1, z1)` in units of a [`MAX_DEPTH`]
    /// square, world-wide. At most 2^39 in magnitude.
    fn units(self) -> (i64, i64, i64, i64) {
        let scale = 1i64 << (MAX_DEPTH - self.depth);
        let x0 = (i64::from(self.cell.x) << MAX_DEPTH) + i64::from(self.qx) * scale;
        let z0 = (i64::from(self.cell.z) << MAX_DEPTH) + i64::from(self.qz) * scale;
        (x0, z0, x0 + scale, z0 + scale)
    }
}

/// `2^depth`, the number of squares along a side at `depth`, if the depth
/// is allowed.
fn side_count(depth: u8) -> Option<u32> {
    (depth <= MAX_DEPTH).then(|| 1u32 << depth)
}

impl From<CellId> for RegionId {
    fn from(cell: CellId) -> RegionId {
        RegionId::cell(cell)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cell)?;
        for q in self.path() {
            write!(f, "/{}", q.index())?;
        }
        Ok(())
    }
}

/// Error parsing a [`RegionId`] from its text form `x,z` or `x,z/q/q...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseRegionError {
    /// The part before the first `/` is not a cell `x,z`.
    #[error(
        "a region is written `x,z` or `x,z/q/...`, but {input:?} does not start with a cell `x,z`"
    )]
    Cell { input: String },
    /// A path component is not one of the quadrant numbers.
    #[error(
        "in region {input:?}, {quadrant:?} is not a quadrant: 0 (north-west), 1 (north-east), \
         2 (south-west) or 3 (south-east)"
    )]
    Quadrant { input: String, quadrant: String },
    /// The path has more than [`MAX_DEPTH`] components.
    #[error("region {input:?} is too deep: regions go at most {MAX_DEPTH} levels below a cell")]
    TooDeep { input: String },
}

impl FromStr for RegionId {
    type Err = ParseRegionError;

    /// Parses `x,z` or `x,z/q/q...`, allowing whitespace around every
    /// component.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (cell, path) = match s.split_once('/') {
            Some((cell, path)) => (cell, Some(path)),
            None => (s, None),
        };
        let cell: CellId = cell.parse().map_err(|_| ParseRegionError::Cell {
            input: s.to_string(),
        })?;
        let mut region = RegionId::cell(cell);
        for part in path.into_iter().flat_map(|p| p.split('/')) {
            let part = part.trim();
            let q = match part {
                "0" => Quadrant::NorthWest,
                "1" => Quadrant::NorthEast,
                "2" => Quadrant::SouthWest,
                "3" => Quadrant::SouthEast,
                _ => {
                    return Err(ParseRegionError::Quadrant {
                        input: s.to_string(),
                        quadrant: part.to_string(),
                    })
                }
            };
            region = region.child(q).ok_or_else(|| ParseRegionError::TooDeep {
                input: s.to_string(),
            })?;
        }
        Ok(region)
    }
}

/// An axis-aligned rectangle on the XZ plane, in metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub min_x: f32,
    pub min_z: f32,
    pub max_x: f32,
    pub max_z: f32,
}

impl Rect {
    /// The centre, at height 0.
    pub fn centre(&self) -> Vec3 {
        Vec3::new(
            (self.min_x + self.max_x) / 2.0,
            0.0,
            (self.min_z + self.max_z) / 2.0,
        )
    }

    /// Distance on the XZ plane from `pos` to the rectangle: 0 inside or on
    /// the edge.
    pub fn distance_xz(&self, pos: Vec3) -> f32 {
        let dx = (self.min_x - pos.x).max(pos.x - self.max_x).max(0.0);
        let dz = (self.min_z - pos.z).max(pos.z - self.max_z).max(0.0);
        dx.hypot(dz)
    }

    /// Signed distance from `pos` to the nearest edge, as
    /// [`Grid::distance_to_border`] measures it for cells: positive inside,
    /// negative outside (by the larger of the two axis overshoots' minimum,
    /// so an entity is "1 m out" when it is 1 m past one edge).
    pub fn border_distance(&self, pos: Vec3) -> f32 {
        let dx = (pos.x - self.min_x).min(self.max_x - pos.x);
        let dz = (pos.z - self.min_z).min(self.max_z - pos.z);
        dx.min(dz)
    }
}

/// The ownership layout of one cell: whole, with one payload, or split into
/// four quadrants (indexed by [`Quadrant::index`]), each again a tree.
///
/// The tree does not store its cell: operations taking a [`RegionId`] follow
/// the region's [path](RegionId::path) and ignore its cell, and the caller
/// (who keys trees by cell) passes the cell where ids are produced. A tree
/// is never deeper than [`MAX_DEPTH`]: [`RegionTree::split`] and
/// deserialisation refuse to go further.
///
/// # Serialised form
///
/// In human-readable formats (JSON, TOML) a whole cell is exactly its
/// payload and a split one is `{"split": [nw, ne, sw, se]}`; so an owner
/// record stored before regions existed, `{"owner":"shard-1","epoch":1}`,
/// loads as a whole cell. The one ambiguity: a payload that serialises as a
/// map whose only key is `split` holding four trees would read back as a
/// split. In binary formats (bincode) it is an ordinary tagged enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTree<T>(Node<T>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node<T> {
    Leaf(T),
    Split(Box<[RegionTree<T>; 4]>),
}

/// Why a [`RegionTree`] operation was refused. The tree is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionTreeError {
    /// The region is not a node of the tree: it lies inside a leaf.
    #[error("{region} is not in the tree: it lies inside the undivided region {leaf}")]
    InsideLeaf { region: RegionId, leaf: RegionId },
    /// Split of a region that is already split.
    #[error("{0} is already split")]
    AlreadySplit(RegionId),
    /// Split of a region at [`MAX_DEPTH`].
    #[error("{0} is {MAX_DEPTH} levels deep and cannot be split further")]
    TooDeep(RegionId),
    /// Merge of a region that is not split.
    #[error("{0} is not split, so there is nothing to merge")]
    NotSplit(RegionId),
    /// Merge of a region some of whose quadrants are split themselves.
    #[error("{0} cannot be merged: some of its quadrants are split; merge those first")]
    QuadrantsSplit(RegionId),
}

impl<T> RegionTree<T> {
    /// A whole, unsplit cell (or quadrant) with `payload`.
    pub const fn whole(payload: T) -> RegionTree<T> {
        RegionTree(Node::Leaf(payload))
    }

    /// Whether this tree is a single leaf.
    pub fn is_whole(&self) -> bool {
        matches!(self.0, Node::Leaf(_))
    }

    /// The payload, if this tree is a single leaf.
    pub fn as_whole(&self) -> Option<&T> {
        match &self.0 {
            Node::Leaf(t) => Some(t),
            Node::Split(_) => None,
        }
    }

    /// The four quadrant subtrees, if this tree is split.
    pub fn quadrants(&self) -> Option<&[RegionTree<T>; 4]> {
        match &self.0 {
            Node::Leaf(_) => None,
            Node::Split(kids) => Some(kids),
        }
    }

    /// Levels below the root of the deepest leaf: 0 for a whole tree.
    pub fn height(&self) -> u8 {
        match &self.0 {
            Node::Leaf(_) => 0,
            Node::Split(kids) => 1 + kids.iter().map(RegionTree::height).max().unwrap_or(0),
        }
    }

    /// Every leaf with its region, given the cell this tree describes, in
    /// depth-first quadrant order. The leaves tile the cell.
    pub fn leaves(&self, cell: CellId) -> impl Iterator<Item = (RegionId, &T)> + '_ {
        let mut stack = vec![(RegionId::cell(cell), self)];
        std::iter::from_fn(move || loop {
            let (region, tree) = stack.pop()?;
            match &tree.0 {
                Node::Leaf(t) => return Some((region, t)),
                Node::Split(kids) => {
                    for q in Quadrant::ALL.into_iter().rev() {
                        stack.push((region.child_unchecked(q), &kids[q.index()]));
                    }
                }
            }
        })
    }

    /// The leaf that contains `region` (the region itself or an ancestor),
    /// with its id in `region`'s cell; `None` if `region` is split, i.e.
    /// spans several leaves.
    pub fn leaf_containing(&self, region: RegionId) -> Option<(RegionId, &T)> {
        let mut tree = self;
        let mut path = region.path();
        let mut depth = 0;
        loop {
            match &tree.0 {
                Node::Leaf(t) => return Some((region.truncate(depth), t)),
                Node::Split(kids) => {
                    tree = &kids[path.next()?.index()];
                    depth += 1;
                }
            }
        }
    }

    /// The leaf that contains `pos`, if `pos` is in `cell` (this tree's
    /// cell) according to `grid`.
    pub fn leaf_at(&self, grid: &Grid, cell: CellId, pos: Vec3) -> Option<(RegionId, &T)> {
        let finest = RegionId::at(grid, pos, MAX_DEPTH);
        (finest.cell == cell)
            .then(|| self.leaf_containing(finest))
            .flatten()
    }

    /// The payload of the leaf that is exactly `region`.
    pub fn get(&self, region: RegionId) -> Option<&T> {
        self.node(region).ok()?.as_whole()
    }

    /// The payload of the leaf that is exactly `region`, mutably.
    pub fn get_mut(&mut self, region: RegionId) -> Option<&mut T> {
        match &mut self.node_mut(region).ok()?.0 {
            Node::Leaf(t) => Some(t),
            Node::Split(_) => None,
        }
    }

    /// Splits the leaf `region` into four leaves with `quadrants` as their
    /// payloads (indexed by [`Quadrant::index`]) and returns the payload the
    /// leaf had.
    pub fn split(&mut self, region: RegionId, quadrants: [T; 4]) -> Result<T, RegionTreeError> {
        if region.depth >= MAX_DEPTH {
            return Err(RegionTreeError::TooDeep(region));
        }
        let tree = self.node_mut(region)?;
        if !tree.is_whole() {
            return Err(RegionTreeError::AlreadySplit(region));
        }
        let kids = Box::new(quadrants.map(RegionTree::whole));
        match std::mem::replace(&mut tree.0, Node::Split(kids)) {
            Node::Leaf(old) => Ok(old),
            Node::Split(_) => unreachable!("checked to be a leaf above"),
        }
    }

    /// Merges the four quadrants of `region`, which must all be leaves, into
    /// one leaf with `payload`, and returns their payloads (indexed by
    /// [`Quadrant::index`]).
    pub fn merge(&mut self, region: RegionId, payload: T) -> Result<[T; 4], RegionTreeError> {
        let tree = self.node_mut(region)?;
        let Node::Split(kids) = &tree.0 else {
            return Err(RegionTreeError::NotSplit(region));
        };
        if !kids.iter().all(RegionTree::is_whole) {
            return Err(RegionTreeError::QuadrantsSplit(region));
        }
        let Node::Split(kids) = std::mem::replace(&mut tree.0, Node::Leaf(payload)) else {
            unreachable!("checked to be split above");
        };
        Ok((*kids).map(|kid| match kid.0 {
            Node::Leaf(t) => t,
            Node::Split(_) => unreachable!("checked to be leaves above"),
        }))
    }

    /// Collapses every leaf under `region`, which must be split (to any
    /// depth), into one leaf with `payload`; returns the leaves it held,
    /// in depth-first quadrant order. A merge of a whole subtree in one
    /// step, where [`RegionTree::merge`] takes one level.
    pub fn collapse(
        &mut self,
        region: RegionId,
        payload: T,
    ) -> Result<Vec<(RegionId, T)>, RegionTreeError> {
        let tree = self.node_mut(region)?;
        if tree.is_whole() {
            return Err(RegionTreeError::NotSplit(region));
        }
        let old = std::mem::replace(tree, RegionTree(Node::Leaf(payload)));
        let mut out = Vec::new();
        let mut stack = vec![(region, old)];
        while let Some((r, t)) = stack.pop() {
            match t.0 {
                Node::Leaf(p) => out.push((r, p)),
                Node::Split(kids) => {
                    for (q, kid) in Quadrant::ALL.into_iter().zip(*kids).rev() {
                        stack.push((r.child_unchecked(q), kid));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The node at `region`'s path.
    fn node(&self, region: RegionId) -> Result<&RegionTree<T>, RegionTreeError> {
        let mut tree = self;
        for (depth, q) in (0u8..).zip(region.path()) {
            match &tree.0 {
                Node::Leaf(_) => return Err(inside_leaf(region, depth)),
                Node::Split(kids) => tree = &kids[q.index()],
            }
        }
        Ok(tree)
    }

    /// The node at `region`'s path, mutably.
    fn node_mut(&mut self, region: RegionId) -> Result<&mut RegionTree<T>, RegionTreeError> {
        let mut tree = self;
        for (depth, q) in (0u8..).zip(region.path()) {
            match &mut tree.0 {
                Node::Leaf(_) => return Err(inside_leaf(region, depth)),
                Node::Split(kids) => tree = &mut kids[q.index()],
            }
        }
        Ok(tree)
    }
}

fn inside_leaf(region: RegionId, leaf_depth: u8) -> RegionTreeError {
    RegionTreeError::InsideLeaf {
        region,
        leaf: region.truncate(leaf_depth),
    }
}

impl<T: Serialize> Serialize for RegionTree<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (&self.0, serializer.is_human_readable()) {
            (Node::Leaf(t), true) => t.serialize(serializer),
            (Node::Split(kids), true) => {
                let mut s = serializer.serialize_struct("RegionTree", 1)?;
                s.serialize_field("split", &**kids)?;
                s.end()
            }
            (Node::Leaf(t), false) => {
                serializer.serialize_newtype_variant("RegionTree", 0, "Leaf", t)
            }
            (Node::Split(kids), false) => {
                serializer.serialize_newtype_variant("RegionTree", 1, "Split", &**kids)
            }
        }
    }
}

/// The human-readable form: `{"split": [..]}` or the bare payload.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a region's payload, or {\"split\": [four region trees]} for a split region"
)]
enum TextForm<T> {
    Split(SplitForm<T>),
    Leaf(T),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitForm<T> {
    split: [RegionTree<T>; 4],
}

/// The binary form; variant names and indices match `serialize`.
#[derive(Deserialize)]
#[serde(rename = "RegionTree")]
enum BinaryForm<T> {
    Leaf(T),
    Split([RegionTree<T>; 4]),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for RegionTree<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let node = if deserializer.is_human_readable() {
            match TextForm::deserialize(deserializer)? {
                TextForm::Split(SplitForm { split }) => Node::Split(Box::new(split)),
                TextForm::Leaf(t) => Node::Leaf(t),
            }
        } else {
            match BinaryForm::deserialize(deserializer)? {
                BinaryForm::Split(kids) => Node::Split(Box::new(kids)),
                BinaryForm::Leaf(t) => Node::Leaf(t),
            }
        };
        let tree = RegionTree(node);
        if tree.height() > MAX_DEPTH {
            return Err(D::Error::custom(format_args!(
                "region tree is split more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Compass;
    use proptest::prelude::*;

    fn region(s: &str) -> RegionId {
        s.parse().unwrap()
    }

    #[test]
    fn text_form() {
        let cell = RegionId::cell(CellId::new(3, -1));
        assert_eq!(cell.to_string(), "3,-1");
        assert_eq!(cell.to_string(), CellId::new(3, -1).to_string());
        let r = cell
            .child(Quadrant::NorthWest)
            .unwrap()
            .child(Quadrant::SouthEast)
            .unwrap();
        assert_eq!(r.to_string(), "3,-1/0/3");
        assert_eq!(region("3,-1/0/3"), r);
        assert_eq!(region(" 3 , -1 / 0 /3 "), r);
        assert_eq!(region("3,-1"), cell);
        assert_eq!(RegionId::from(CellId::new(3, -1)), cell);
        assert_eq!((r.depth(), r.qx(), r.qz()), (2, 1, 1));
    }

    #[test]
    fn parse_errors() {
        let cell_err = |s: &str| ParseRegionError::Cell { input: s.into() };
        let q_err = |s: &str, q: &str| ParseRegionError::Quadrant {
            input: s.into(),
            quadrant: q.into(),
        };
        for s in ["", "3", "a,b", "/0", "3,-1,2/0", "3;-1/0"] {
            assert_eq!(s.parse::<RegionId>(), Err(cell_err(s)), "{s:?}");
        }
        for (s, q) in [
            ("3,-1/4", "4"),
            ("3,-1/", ""),
            ("3,-1//1", ""),
            ("3,-1/01", "01"),
            ("3,-1/-1", "-1"),
            ("3,-1/+1", "+1"),
            ("3,-1/0/x", "x"),
            ("3,-1/0 1", "0 1"),
        ] {
            assert_eq!(s.parse::<RegionId>(), Err(q_err(s, q)), "{s:?}");
        }
        let deepest = format!("0,0{}", "/3".repeat(MAX_DEPTH.into()));
        assert_eq!(region(&deepest).depth(), MAX_DEPTH);
        let too_deep = format!("{deepest}/0");
        assert_eq!(
            too_deep.parse::<RegionId>(),
            Err(ParseRegionError::TooDeep {
                input: too_deep.clone()
            })
        );
        // The message names the fix.
        let msg = "3,-1/7".parse::<RegionId>().unwrap_err().to_string();
        assert!(msg.contains("0 (north-west)"), "{msg}");
    }

    #[test]
    fn quadrant_numbering_matches_the_compass() {
        let grid = Grid::new(64.0);
        let parent = region("2,-5/1");
        let centre = parent.centre(&grid);
        let kids = parent.children().unwrap();
        let expected = [
            Compass::NorthWest,
            Compass::NorthEast,
            Compass::SouthWest,
            Compass::SouthEast,
        ];
        for (q, dir) in Quadrant::ALL.into_iter().zip(expected) {
            let kid = kids[q.index()];
            assert_eq!(Compass::towards(centre, kid.centre(&grid)), Some(dir));
            assert_eq!(kid.quadrant(), Some(q));
            assert_eq!(Quadrant::from_index(q.index()), Some(q));
        }
        assert_eq!(Quadrant::from_index(4), None);
        // Quadrant 0 shares the parent's low corner; 3 its high corner.
        let (pb, b0, b3) = (
            parent.bounds(&grid),
            kids[0].bounds(&grid),
            kids[3].bounds(&grid),
        );
        assert_eq!((b0.min_x, b0.min_z), (pb.min_x, pb.min_z));
        assert_eq!((b3.max_x, b3.max_z), (pb.max_x, pb.max_z));
        assert_eq!(b0.max_x - b0.min_x, kids[0].side(&grid));
        assert_eq!(parent.side(&grid), 32.0);
    }

    #[test]
    fn family() {
        let cell = RegionId::cell(CellId::new(0, 0));
        assert!(cell.is_cell());
        assert_eq!(cell.parent(), None);
        assert_eq!(cell.quadrant(), None);
        let r = region("0,0/2/1/3");
        assert_eq!(r.parent(), Some(region("0,0/2/1")));
        assert_eq!(r.ancestor(1), Some(region("0,0/2")));
        assert_eq!(r.ancestor(0), Some(cell));
        assert_eq!(r.ancestor(4), None);
        assert_eq!(
            r.path().collect::<Vec<_>>(),
            [
                Quadrant::SouthWest,
                Quadrant::NorthEast,
                Quadrant::SouthEast
            ]
        );
        assert!(cell.contains(r) && r.contains(r) && !r.contains(cell));
        assert!(!region("1,0").contains(region("0,0/0")));
        let deepest = region(&format!("0,0{}", "/0".repeat(MAX_DEPTH.into())));
        assert_eq!(deepest.children(), None);
        assert_eq!(deepest.child(Quadrant::NorthWest), None);
        assert_eq!(RegionId::new(CellId::new(0, 0), 2, 4, 0), None);
        assert_eq!(RegionId::new(CellId::new(0, 0), MAX_DEPTH + 1, 0, 0), None);
        assert_eq!(
            RegionId::new(CellId::new(0, 0), 2, 1, 3),
            Some(region("0,0/2/3"))
        );
    }

    #[test]
    fn touching_and_overlapping() {
        let a = region("0,0/1");
        // Siblings, across a cell border, at a corner, at different depths.
        assert!(a.touches(region("0,0/0")));
        assert!(a.touches(region("0,0/2")));
        assert!(a.touches(region("1,0/0/2")));
        assert!(a.touches(region("1,-1/2/2/2")));
        assert!(a.touches(region("0,-1")));
        // A gap of one deep square.
        assert!(!a.touches(region("1,0/1")));
        assert!(!a.touches(region("0,0/3/3")));
        // Overlapping is not touching.
        assert!(a.overlaps(region("0,0/1/3")) && !a.touches(region("0,0/1/3")));
        assert!(a.overlaps(a) && !a.touches(a));
        assert!(!a.overlaps(region("0,0/0")));
        assert!(RegionId::cell(CellId::new(0, 0)).touches(RegionId::cell(CellId::new(1, 1))));
    }

    #[test]
    fn distance_xz() {
        let grid = Grid::new(64.0);
        let r = region("1,0/3"); // [96, 128) x [32, 64)
        assert_eq!(
            r.bounds(&grid),
            Rect {
                min_x: 96.0,
                min_z: 32.0,
                max_x: 128.0,
                max_z: 64.0
            }
        );
        assert_eq!(r.distance_xz(&grid, Vec3::new(100.0, 5.0, 40.0)), 0.0);
        assert_eq!(r.distance_xz(&grid, Vec3::new(90.0, 0.0, 40.0)), 6.0);
        assert_eq!(r.distance_xz(&grid, Vec3::new(131.0, 0.0, 68.0)), 5.0);
        assert_eq!(r.centre(&grid), Vec3::new(112.0, 0.0, 48.0));
        assert!(r.contains_point(&grid, Vec3::new(96.0, 0.0, 32.0)));
        assert!(!r.contains_point(&grid, Vec3::new(128.0, 0.0, 40.0)));
        assert!(!r.contains_point(&grid, Vec3::new(100.0, 0.0, 64.0)));
    }

    #[test]
    fn negative_zero_and_tiny_negative_coordinates() {
        let grid = Grid::new(64.0);
        for depth in 0..=MAX_DEPTH {
            let p = Vec3::new(-1e-10, 0.0, -0.0);
            let r = RegionId::at(&grid, p, depth);
            assert_eq!(r.cell_id(), grid.cell_of(p));
            assert!(r.contains_point(&grid, p));
        }
    }

    #[test]
    fn non_finite_positions_do_not_panic() {
        let grid = Grid::new(10.0);
        for v in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
        ] {
            let p = Vec3::new(v, 0.0, v);
            let r = RegionId::at(&grid, p, MAX_DEPTH);
            assert_eq!(r.cell_id(), grid.cell_of(p));
            let _ = r.distance_xz(&grid, p);
        }
    }

    /// An owner record shaped like the coordinator's `CellOwner`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct Owner {
        owner: String,
        epoch: u64,
    }

    fn owner(name: &str, epoch: u64) -> Owner {
        Owner {
            owner: name.into(),
            epoch,
        }
    }

    fn four(epoch: u64) -> [Owner; 4] {
        ["a", "b", "c", "d"].map(|n| owner(n, epoch))
    }

    #[test]
    fn tree_operations() {
        let cell = CellId::new(3, -1);
        let root = RegionId::cell(cell);
        let mut tree = RegionTree::whole(owner("shard-1", 1));
        assert_eq!(tree.get(root), Some(&owner("shard-1", 1)));
        assert_eq!(tree.split(root, four(2)), Ok(owner("shard-1", 1)));
        assert_eq!(
            tree.split(root, four(3)),
            Err(RegionTreeError::AlreadySplit(root))
        );
        let ne = region("3,-1/1");
        assert_eq!(tree.split(ne, four(3)), Ok(owner("b", 2)));
        assert_eq!(tree.height(), 2);
        assert_eq!(tree.get(root), None);
        assert_eq!(tree.get(ne), None);
        assert_eq!(tree.get(region("3,-1/1/2")), Some(&owner("c", 3)));
        tree.get_mut(region("3,-1/1/2")).unwrap().epoch = 9;
        assert_eq!(tree.get(region("3,-1/1/2")).map(|o| o.epoch), Some(9));

        let leaves: Vec<String> = tree
            .leaves(cell)
            .map(|(r, o)| format!("{r}={}", o.owner))
            .collect();
        assert_eq!(
            leaves,
            [
                "3,-1/0=a",
                "3,-1/1/0=a",
                "3,-1/1/1=b",
                "3,-1/1/2=c",
                "3,-1/1/3=d",
                "3,-1/2=c",
                "3,-1/3=d"
            ]
        );

        // Lookups of regions inside, at and above leaves.
        assert_eq!(
            tree.leaf_containing(region("3,-1/0/3/3")),
            Some((region("3,-1/0"), &owner("a", 2)))
        );
        assert_eq!(tree.leaf_containing(ne).map(|(r, _)| r), None);
        assert_eq!(tree.leaf_containing(root).map(|(r, _)| r), None);
        let inside = region("3,-1/0/3");
        assert_eq!(
            tree.split(inside, four(4)),
            Err(RegionTreeError::InsideLeaf {
                region: inside,
                leaf: region("3,-1/0")
            })
        );
        assert_eq!(tree.get(inside), None);

        // A point.
        let grid = Grid::new(64.0);
        let p = Vec3::new(3.0 * 64.0 + 60.0, 0.0, -64.0 + 1.0); // NE of NE
        assert_eq!(
            tree.leaf_at(&grid, cell, p).map(|(r, _)| r),
            Some(region("3,-1/1/1"))
        );
        assert_eq!(tree.leaf_at(&grid, CellId::new(0, 0), p), None);

        // Merges.
        assert_eq!(
            tree.merge(root, owner("x", 5)),
            Err(RegionTreeError::QuadrantsSplit(root))
        );
        let nw = region("3,-1/0");
        assert_eq!(
            tree.merge(nw, owner("x", 5)),
            Err(RegionTreeError::NotSplit(nw))
        );
        let merged = tree.merge(ne, owner("b", 4)).unwrap();
        assert_eq!(merged.map(|o| o.epoch), [3, 3, 9, 3]);
        assert_eq!(
            tree.merge(root, owner("shard-1", 5)),
            Ok([owner("a", 2), owner("b", 4), owner("c", 2), owner("d", 2)])
        );
        assert_eq!(tree, RegionTree::whole(owner("shard-1", 5)));
        assert_eq!(tree.as_whole(), Some(&owner("shard-1", 5)));

        // A whole subtree collapses in one step, whatever its depth.
        let mut deep = RegionTree::whole(0u8);
        deep.split(root, [1, 2, 3, 4]).unwrap();
        deep.split(region("3,-1/1"), [5, 6, 7, 8]).unwrap();
        deep.split(region("3,-1/1/2"), [9, 10, 11, 12]).unwrap();
        assert_eq!(
            deep.collapse(region("3,-1/0"), 0),
            Err(RegionTreeError::NotSplit(region("3,-1/0")))
        );
        let held = deep.collapse(root, 99).unwrap();
        assert_eq!(
            held.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            vec![1, 5, 6, 9, 10, 11, 12, 8, 3, 4]
        );
        assert_eq!(held[3].0, region("3,-1/1/2/0"));
        assert_eq!(deep, RegionTree::whole(99));

        // Depth limit.
        let mut tree = RegionTree::whole(0u8);
        let mut r = root;
        for _ in 0..MAX_DEPTH {
            tree.split(r, [1, 2, 3, 4]).unwrap();
            r = r.child(Quadrant::SouthEast).unwrap();
        }
        assert_eq!(
            tree.split(r, [1, 2, 3, 4]),
            Err(RegionTreeError::TooDeep(r))
        );
        assert_eq!(tree.height(), MAX_DEPTH);
    }

    #[test]
    fn old_plain_owner_loads_as_whole_cell() {
        let tree: RegionTree<Owner> =
            serde_json::from_str(r#"{"owner":"shard-1","epoch":1}"#).unwrap();
        assert_eq!(tree, RegionTree::whole(owner("shard-1", 1)));
        assert_eq!(
            serde_json::to_string(&tree).unwrap(),
            r#"{"owner":"shard-1","epoch":1}"#
        );
    }

    #[test]
    fn split_tree_json() {
        let mut tree = RegionTree::whole(owner("s", 1));
        tree.split(region("0,0"), four(2)).unwrap();
        tree.split(region("0,0/3"), four(3)).unwrap();
        let json = serde_json::to_string(&tree).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"split":[{"owner":"a","epoch":2},{"owner":"b","epoch":2},{"owner":"c","epoch":2},"#,
                r#"{"split":[{"owner":"a","epoch":3},{"owner":"b","epoch":3},"#,
                r#"{"owner":"c","epoch":3},{"owner":"d","epoch":3}]}]}"#
            )
        );
        let back: RegionTree<Owner> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tree);
        // And through the wire codec (bincode).
        let bytes = crate::frame::encode(&tree).unwrap();
        let back: RegionTree<Owner> = crate::frame::decode(&bytes, 1 << 16).unwrap();
        assert_eq!(back, tree);
    }

    #[test]
    fn bad_json_trees_are_refused() {
        let leaf = r#"{"owner":"a","epoch":1}"#;
        for bad in [
            format!(r#"{{"split":[{leaf},{leaf},{leaf}]}}"#),
            format!(r#"{{"split":[{leaf},{leaf},{leaf},{leaf}],"owner":"a"}}"#),
            r#"{"owner":"a"}"#.to_string(),
            "[]".to_string(),
        ] {
            let err = serde_json::from_str::<RegionTree<Owner>>(&bad).unwrap_err();
            assert!(err.to_string().contains("region's payload"), "{bad}: {err}");
        }
        let nested = |levels: u8| {
            let mut json = leaf.to_string();
            for _ in 0..levels {
                json = format!(r#"{{"split":[{json},{leaf},{leaf},{leaf}]}}"#);
            }
            serde_json::from_str::<RegionTree<Owner>>(&json)
        };
        assert_eq!(nested(MAX_DEPTH).unwrap().height(), MAX_DEPTH);
        let err = nested(MAX_DEPTH + 1).unwrap_err();
        assert!(err.to_string().contains("levels deep"), "{err}");
    }

    #[test]
    fn region_id_serde() {
        let r = region("-2,7/1/2");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"cell":{"x":-2,"z":7},"depth":2,"qx":2,"qz":1}"#);
        assert_eq!(serde_json::from_str::<RegionId>(&json).unwrap(), r);
        let bad = r#"{"cell":{"x":-2,"z":7},"depth":2,"qx":4,"qz":2}"#;
        assert!(serde_json::from_str::<RegionId>(bad).is_err());
        let bad = r#"{"cell":{"x":0,"z":0},"depth":9,"qx":0,"qz":0}"#;
        assert!(serde_json::from_str::<RegionId>(bad).is_err());
        let bytes = crate::frame::encode(&r).unwrap();
        assert_eq!(crate::frame::decode::<RegionId>(&bytes, 64).unwrap(), r);
    }

    // ---- properties ----

    fn any_region() -> impl Strategy<Value = RegionId> {
        (-3i32..3, -3i32..3, 0..=MAX_DEPTH).prop_flat_map(|(x, z, depth)| {
            let n = 1u16 << depth;
            (0..n, 0..n)
                .prop_map(move |(qx, qz)| RegionId::new(CellId::new(x, z), depth, qx, qz).unwrap())
        })
    }

    fn shallow_region() -> impl Strategy<Value = RegionId> {
        (-1i32..=1, -1i32..=1, 0u8..=3).prop_flat_map(|(x, z, depth)| {
            let n = 1u16 << depth;
            (0..n, 0..n)
                .prop_map(move |(qx, qz)| RegionId::new(CellId::new(x, z), depth, qx, qz).unwrap())
        })
    }

    fn any_grid() -> impl Strategy<Value = Grid> {
        prop_oneof![Just(64.0f32), Just(100.0), 0.5f32..300.0].prop_map(Grid::new)
    }

    /// A point in or near `r`: fractions of its side from its low corner.
    fn point_near(grid: &Grid, r: RegionId, fx: f32, fz: f32) -> Vec3 {
        let b = r.bounds(grid);
        let side = b.max_x - b.min_x;
        Vec3::new(b.min_x + fx * side, 0.0, b.min_z + fz * side)
    }

    /// A random tree of `cell`, built by splitting the leaves at random
    /// deep squares down to random depths; payloads are distinct.
    fn any_tree() -> impl Strategy<Value = RegionTree<u32>> {
        prop::collection::vec((any::<u8>(), any::<u8>(), 1..=MAX_DEPTH), 0..24).prop_map(|splits| {
            let cell = CellId::new(0, 0);
            let mut tree = RegionTree::whole(0);
            let mut next = 1;
            for (qx, qz, depth) in splits {
                let finest = RegionId::new(cell, MAX_DEPTH, qx.into(), qz.into()).unwrap();
                let target = finest.ancestor(depth).unwrap();
                while let Some((leaf, _)) = tree.leaf_containing(target) {
                    if leaf == target {
                        break;
                    }
                    tree.split(leaf, [next, next + 1, next + 2, next + 3])
                        .unwrap();
                    next += 4;
                }
            }
            tree
        })
    }

    proptest! {
        #[test]
        fn text_round_trip(r in any_region()) {
            let text = r.to_string();
            prop_assert_eq!(text.parse::<RegionId>(), Ok(r));
            prop_assert_eq!(text.matches('/').count(), usize::from(r.depth()));
            if r.is_cell() {
                prop_assert_eq!(text, r.cell_id().to_string());
            }
        }

        #[test]
        fn parsing_garbage_never_panics(s in "[0-9,/ +-]{0,40}|\\PC{0,40}") {
            if let Ok(r) = s.parse::<RegionId>() {
                prop_assert!(r.depth() <= MAX_DEPTH);
                prop_assert_eq!(r.to_string().parse::<RegionId>(), Ok(r));
            }
        }

        #[test]
        fn children_know_their_parent(r in any_region()) {
            match r.children() {
                None => prop_assert_eq!(r.depth(), MAX_DEPTH),
                Some(kids) => {
                    for (i, kid) in kids.into_iter().enumerate() {
                        prop_assert_eq!(kid.parent(), Some(r));
                        prop_assert_eq!(kid.quadrant().map(Quadrant::index), Some(i));
                        prop_assert!(r.contains(kid) && !kid.contains(r));
                        prop_assert_eq!(kid.path().last(), kid.quadrant());
                    }
                }
            }
            if let Some(parent) = r.parent() {
                prop_assert_eq!(parent.children().map(|k| k[r.quadrant().unwrap().index()]), Some(r));
            }
        }

        #[test]
        fn children_tile_their_parent(
            r in any_region().prop_filter("splittable", |r| r.depth() < MAX_DEPTH),
            grid in any_grid(),
            fx in -0.5f32..1.5,
            fz in -0.5f32..1.5,
        ) {
            let p = point_near(&grid, r, fx, fz);
            let kids = r.children().unwrap();
            let inside = kids.iter().filter(|k| k.contains_point(&grid, p)).count();
            prop_assert_eq!(inside, usize::from(r.contains_point(&grid, p)));
            // On a grid of exact binary fractions the bounds tile exactly too.
            let g64 = Grid::new(64.0);
            let (pb, kb) = (r.bounds(&g64), kids.map(|k| k.bounds(&g64)));
            prop_assert_eq!((kb[0].min_x, kb[0].min_z, kb[3].max_x, kb[3].max_z),
                (pb.min_x, pb.min_z, pb.max_x, pb.max_z));
            prop_assert_eq!((kb[0].max_x, kb[0].max_z), (kb[3].min_x, kb[3].min_z));
            prop_assert_eq!((kb[1].min_x, kb[1].max_z), (kb[0].max_x, kb[0].max_z));
            prop_assert_eq!((kb[2].max_x, kb[2].min_z), (kb[0].max_x, kb[0].max_z));
        }

        #[test]
        fn region_at_agrees_with_cells_and_bounds(
            x in -10_000.0f32..10_000.0,
            z in -10_000.0f32..10_000.0,
            grid in any_grid(),
        ) {
            let p = Vec3::new(x, 7.0, z);
            prop_assert_eq!(RegionId::at(&grid, p, 0), RegionId::cell(grid.cell_of(p)));
            let mut previous = None;
            for depth in 0..=MAX_DEPTH {
                let r = RegionId::at(&grid, p, depth);
                prop_assert_eq!(r.depth(), depth);
                prop_assert_eq!(r.cell_id(), grid.cell_of(p));
                prop_assert!(r.contains_point(&grid, p));
                prop_assert_eq!(r.parent(), previous);
                // Rounding aside, the point is inside the bounds.
                let tolerance = 1e-2 + x.abs().max(z.abs()) * 1e-6;
                prop_assert!(r.distance_xz(&grid, p) <= tolerance);
                let b = r.bounds(&grid);
                prop_assert!(x >= b.min_x - tolerance && x <= b.max_x + tolerance);
                prop_assert!(z >= b.min_z - tolerance && z <= b.max_z + tolerance);
                previous = Some(r);
            }
        }

        #[test]
        fn distance_is_zero_exactly_near_inside(r in any_region(), fx in -1.0f32..2.0, fz in -1.0f32..2.0) {
            let grid = Grid::new(64.0);
            let p = point_near(&grid, r, fx, fz);
            let d = r.distance_xz(&grid, p);
            let side = r.side(&grid);
            let (ox, oz) = ((-fx).max(fx - 1.0).max(0.0), (-fz).max(fz - 1.0).max(0.0));
            prop_assert!((d - side * ox.hypot(oz)).abs() <= 1e-3 * side.max(1.0));
        }

        #[test]
        fn touches_is_symmetric_and_exclusive_of_overlap(a in shallow_region(), b in shallow_region()) {
            prop_assert_eq!(a.touches(b), b.touches(a));
            prop_assert_eq!(a.overlaps(b), b.overlaps(a));
            prop_assert!(!(a.touches(b) && a.overlaps(b)));
            // Against the float rectangles (exact on this grid).
            let grid = Grid::new(64.0);
            let (ra, rb) = (a.bounds(&grid), b.bounds(&grid));
            let closed = ra.min_x <= rb.max_x && rb.min_x <= ra.max_x
                && ra.min_z <= rb.max_z && rb.min_z <= ra.max_z;
            let open = ra.min_x < rb.max_x && rb.min_x < ra.max_x
                && ra.min_z < rb.max_z && rb.min_z < ra.max_z;
            prop_assert_eq!(a.overlaps(b), open);
            prop_assert_eq!(a.touches(b), closed && !open);
        }

        #[test]
        fn leaves_tile_the_cell(
            tree in any_tree(),
            grid in any_grid(),
            fx in -0.2f32..1.2,
            fz in -0.2f32..1.2,
        ) {
            let cell = CellId::new(0, 0);
            let p = point_near(&grid, RegionId::cell(cell), fx, fz);
            let hits: Vec<_> = tree.leaves(cell).filter(|(r, _)| r.contains_point(&grid, p)).collect();
            if grid.cell_of(p) == cell {
                prop_assert_eq!(hits.len(), 1);
                prop_assert_eq!(tree.leaf_at(&grid, cell, p), Some(hits[0]));
            } else {
                prop_assert!(hits.is_empty());
                prop_assert_eq!(tree.leaf_at(&grid, cell, p), None);
            }
            // Exactly: the leaves' areas add up to the cell's and none overlap.
            let leaves: Vec<RegionId> = tree.leaves(cell).map(|(r, _)| r).collect();
            let area: u64 = leaves.iter().map(|r| 1u64 << (2 * (MAX_DEPTH - r.depth()))).sum();
            prop_assert_eq!(area, 1u64 << (2 * MAX_DEPTH));
            for (i, a) in leaves.iter().enumerate() {
                prop_assert_eq!(tree.leaf_containing(*a).map(|(r, _)| r), Some(*a));
                prop_assert!(tree.get(*a).is_some());
                for b in &leaves[i + 1..] {
                    prop_assert!(!a.overlaps(*b));
                }
            }
        }

        #[test]
        fn split_then_merge_restores_the_tree(tree in any_tree(), pick in any::<prop::sample::Index>()) {
            let cell = CellId::new(0, 0);
            let leaves: Vec<(RegionId, u32)> = tree.leaves(cell).map(|(r, t)| (r, *t)).collect();
            let (leaf, payload) = leaves[pick.index(leaves.len())];
            let mut changed = tree.clone();
            match changed.split(leaf, [100, 101, 102, 103]) {
                Ok(old) => {
                    prop_assert_eq!(old, payload);
                    prop_assert_eq!(changed.leaves(cell).count(), leaves.len() + 3);
                    prop_assert_eq!(changed.merge(leaf, payload), Ok([100, 101, 102, 103]));
                }
                Err(e) => prop_assert_eq!(e, RegionTreeError::TooDeep(leaf)),
            }
            prop_assert_eq!(&changed, &tree);
        }

        #[test]
        fn trees_survive_json_and_bincode(tree in any_tree()) {
            let json = serde_json::to_string(&tree).unwrap();
            prop_assert_eq!(serde_json::from_str::<RegionTree<u32>>(&json).unwrap(), tree.clone());
            let bytes = crate::frame::encode(&tree).unwrap();
            prop_assert_eq!(crate::frame::decode::<RegionTree<u32>>(&bytes, 1 << 20).unwrap(), tree);
        }
    }

    #[test]
    fn border_distance_matches_the_grids_for_a_whole_cell() {
        let grid = Grid::new(64.0);
        let cell = CellId::new(-1, 2);
        let rect = RegionId::cell(cell).bounds(&grid);
        for pos in [
            Vec3::new(-32.0, 0.0, 150.0),
            Vec3::new(-64.5, 0.0, 130.0),
            Vec3::new(3.0, 0.0, 190.0),
            Vec3::new(-70.0, 0.0, 120.0),
        ] {
            assert_eq!(
                rect.border_distance(pos),
                grid.distance_to_border(pos, cell)
            );
        }
    }
}
