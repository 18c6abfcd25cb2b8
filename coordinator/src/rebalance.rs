//! The rebalancer: which cells to move, and where, so that no shard stays
//! overloaded and a shard that joins gets its share of the world. A pure
//! state machine (no I/O, the time is an input): the leading coordinator
//! feeds it the cluster as it reads it every second and requests the moves
//! it returns through [`crate::migration::request_move`]; `tessera ctl
//! rebalance` runs a fresh one on a snapshot.
//!
//! ## The load model
//!
//! Shards report, per cell, the mean time the cell's step (scripts and
//! physics) took over the last 64 ticks (`CellLoad::tick_ms`). A shard's
//! load is the sum of the costs of the cells the *cell map* gives it, as a
//! fraction of its tick budget (1 / tick rate, or `--tick-budget-ms`). Means
//! are used rather than percentiles because they add up: the effect of a
//! move can be projected (the source loses the cell's cost, the target gains
//! it), and because the map, not the shard's last report, says who owns a
//! cell, a move counts the moment it completes. The watermarks sit well
//! below the budget to leave the tail (the p99 that `ctl shards` shows) its
//! headroom. A cell no report lists yet has an unknown cost and is not moved.
//!
//! ## Rules
//!
//! - **Overload, with hysteresis.** A shard is overloaded once its load has
//!   been above the high watermark (default 80 %) in `sustain` consecutive
//!   fresh load reports (default 3, a report is fresh when its tick number
//!   changed). From then on it is relieved, one cell at a time, until its
//!   load is at or below the high watermark.
//! - **Moves cannot bounce back.** A cell moves only to a shard whose load,
//!   with the cell, stays under the low watermark (default 60 %): the target
//!   ends far from overload, and the gap between the watermarks is what a
//!   move back would have to cross. A shard that is itself being relieved
//!   is never a target.
//! - **Which cell.** A cell whose move alone brings the shard back to the
//!   high watermark, with the fewest players (each player in a moving cell
//!   sees the stall), then the cheapest; otherwise the cell that relieves
//!   the most per player (`cost / (1 + players)`). Among equal choices, the
//!   target that already owns most of the cell's border (2 per shared edge,
//!   1 per corner: fewer cross-shard borders), then the least loaded.
//! - **Regions.** The units are the leaf regions of the map: whole cells
//!   and the regions of split ones (docs/regions.md); "cell" here means
//!   any of them. A region whose own cost stays above `split_above` (35 %
//!   of its shard's budget) for `split_sustain` fresh reports is split,
//!   unless at `max_depth`; its quadrants then move by the rules here once
//!   the shard reports them. A split region whose leaves (at any depth)
//!   cost under `merge_below` together (10 % of the budget of the shard
//!   owning most of them) for `merge_sustain` (5) reports is merged onto
//!   that shard in one step, the largest such region first. A region
//!   split or merged is not reshaped again, either way, for
//!   `reshape_cooldown`: with the gap between the two lines, a crowd on a
//!   border cannot make it flap.
//! - **Hot cells.** A cell whose cost alone is above the high watermark
//!   and that cannot be split further; the same rule moves every other cell off its shard
//!   (the hot cell fits under no other shard's low watermark unless that
//!   shard has a larger budget, in which case it moves there). Once nothing
//!   else can move the shard is reported blocked and its streak restarts.
//! - **Join balance.** A shard that owns fewer than half its capacity share
//!   of the cells (`cells * capacity / total capacity`; a shard that just
//!   joined or restarted owns none) is *filled*: cells move to it from the
//!   shard with the most cells per capacity, a few at a time, for as long
//!   as the source keeps at least as many cells per capacity as the target
//!   would have, and only while the target stays under the low watermark.
//!   Cells sharing the most border with the ones it already got come first
//!   (then the fewest players, then the cheapest), so it grows a region
//!   rather than a scatter.
//! - **Pacing.** At most one migration in flight per shard (as source or
//!   target); a shard that received a cell takes no other for
//!   `shard_cooldown` (its next report must show what it got); a cell that
//!   moved does not move again for `cell_cooldown`; at most `max_moves` new
//!   moves per round.
//!
//! Relief comes before balance. [`plan_all`] runs the planner to a fixed
//! point on projected loads (what `ctl rebalance` prints).

use crate::membership::{CellLoad, ShardLoad};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};
use tessera_proto::{CellId, Grid, RegionId, ShardId};

/// How long after a split its quadrants are placed by load (`spread`).
const SPREAD_WINDOW: Duration = Duration::from_secs(60);

/// The rebalancer's knobs (docs/operations.md).
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceConfig {
    /// Load (fraction of the tick budget) above which a shard is overloaded.
    pub high_watermark: f64,
    /// A target's load, with the moved cell, must stay under this.
    pub low_watermark: f64,
    /// Consecutive fresh reports above the high watermark before a shard
    /// counts as overloaded.
    pub sustain: u32,
    /// A shard that received a cell is not a target again for this long.
    pub shard_cooldown: Duration,
    /// A cell that moved does not move again for this long.
    pub cell_cooldown: Duration,
    /// Overrides every shard's reported tick budget, milliseconds.
    pub tick_budget_ms: Option<f64>,
    /// New moves per round, at most.
    pub max_moves: usize,
    /// A region whose own cost stays above this fraction of its shard's
    /// budget is split (docs/regions.md, Policy).
    pub split_above: f64,
    /// Four sibling regions whose summed cost stays below this fraction of
    /// the merge target's budget are merged.
    pub merge_below: f64,
    /// Consecutive fresh reports a region must stay above `split_above`.
    pub split_sustain: u32,
    /// Consecutive fresh reports the leaves under a split region must stay
    /// below `merge_below` together.
    pub merge_sustain: u32,
    /// A region that was just split or merged is not reshaped again (in
    /// either direction) for this long.
    pub reshape_cooldown: Duration,
    /// Regions are never split below this depth (the coordinator derives
    /// it from the cell size and the minimum side).
    pub max_depth: u8,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            high_watermark: 0.8,
            low_watermark: 0.6,
            sustain: 3,
            shard_cooldown: Duration::from_secs(2),
            cell_cooldown: Duration::from_secs(30),
            tick_budget_ms: None,
            max_moves: 4,
            split_above: 0.35,
            merge_below: 0.1,
            split_sustain: 3,
            merge_sustain: 5,
            reshape_cooldown: Duration::from_secs(10),
            max_depth: 3,
        }
    }
}

/// A live shard as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardView {
    /// Relative capacity (registration).
    pub capacity: u32,
    /// Its latest load report, if it has published one.
    pub load: Option<ShardLoad>,
}

/// A migration in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub cell: RegionId,
    pub from: ShardId,
    pub to: ShardId,
}

/// The cluster as read from the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Every leaf region of the map (whole cells and regions of split
    /// ones) and its owner.
    pub owners: BTreeMap<RegionId, ShardId>,
    /// Live (registered) shards only.
    pub shards: BTreeMap<ShardId, ShardView>,
    pub in_flight: Vec<InFlight>,
}

impl ClusterView {
    /// The view after `moves` completed: the owners change; the cells'
    /// costs go with them (they are keyed by cell); every report counts as
    /// fresh again.
    pub fn after(&self, moves: &[Move]) -> ClusterView {
        let mut next = self.clone();
        for m in moves {
            next.owners.insert(m.cell, m.to.clone());
        }
        next.in_flight.clear();
        for s in next.shards.values_mut() {
            if let Some(l) = s.load.as_mut() {
                l.tick += 1;
            }
        }
        next
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The source is above the high watermark.
    Overloaded,
    /// The source holds a cell that alone is above the high watermark;
    /// this moves one of its other cells away.
    HotCell,
    /// The target owns less than its share of the cells.
    JoinBalance,
    /// A quadrant of a region just split for its cost goes to a shard
    /// with room, so the crowd's cost is shared.
    Spread,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Overloaded => "overloaded",
            Reason::HotCell => "hot-cell",
            Reason::JoinBalance => "join-balance",
            Reason::Spread => "spread",
        })
    }
}

/// One planned move. Loads are fractions of the shard's tick budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    /// The region to move (a whole cell, or a region of a split one); in
    /// JSON its text form, with its cell beside it as `cell`.
    #[serde(rename = "region", serialize_with = "as_text")]
    pub cell: RegionId,
    /// The cell `cell` is in (JSON only, for readers of the cell form).
    #[serde(rename = "cell")]
    pub in_cell: CellId,
    pub from: ShardId,
    pub to: ShardId,
    pub reason: Reason,
    /// The cell's cost, milliseconds per tick.
    pub cost_ms: f64,
    pub players: usize,
    pub from_load_before: f64,
    pub from_load_after: f64,
    pub to_load_before: f64,
    pub to_load_after: f64,
}

/// Why a shard that needs help gets none this round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Blocked {
    pub shard: ShardId,
    pub why: String,
}

/// A planned split or merge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedReshape {
    #[serde(serialize_with = "as_text")]
    pub region: RegionId,
    pub op: crate::reshape::ReshapeOp,
    /// The shard that owns it (a split), or the one that owns most of the
    /// quadrants (a merge).
    pub shard: ShardId,
    /// The region's cost (a split) or the four quadrants' (a merge),
    /// milliseconds per tick, and as a fraction of `shard`'s budget.
    pub cost_ms: f64,
    pub load: f64,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub blocked: Vec<Blocked>,
    pub reshapes: Vec<PlannedReshape>,
}

/// The planner and the state its hysteresis needs.
#[derive(Clone, Debug)]
pub struct Rebalancer {
    config: RebalanceConfig,
    /// Per shard: tick of the last report counted, consecutive reports over
    /// the high watermark.
    streaks: HashMap<ShardId, (u64, u32)>,
    relieving: BTreeSet<ShardId>,
    filling: BTreeSet<ShardId>,
    shard_until: HashMap<ShardId, Instant>,
    cell_until: HashMap<RegionId, Instant>,
    /// Per region: the owner's report tick last counted, consecutive
    /// reports above `split_above`.
    split_streaks: HashMap<RegionId, (u64, u32)>,
    /// Per split region (the parent of four leaves): the same, below
    /// `merge_below`.
    merge_streaks: HashMap<RegionId, (u64, u32)>,
    /// Regions split or merged recently (the region and its quadrants).
    reshaped_until: HashMap<RegionId, Instant>,
    /// Regions split recently whose quadrants are being placed by load.
    spreading_until: HashMap<RegionId, Instant>,
}

/// A cell's cost and players, from the newest report that lists it.
#[derive(Clone, Copy, Debug)]
struct Cost {
    ms: f64,
    players: usize,
}

/// One round's working copy of the cluster.
struct Model {
    budget: BTreeMap<ShardId, f64>,
    capacity: BTreeMap<ShardId, f64>,
    load_ms: BTreeMap<ShardId, f64>,
    cells: BTreeMap<ShardId, BTreeSet<RegionId>>,
    cost: HashMap<RegionId, Cost>,
    busy: HashSet<ShardId>,
    /// Cells whose region tree is changing: a migration in flight or
    /// planned this round, or a reshape planned this round. Each change
    /// takes the cell's next epoch, so a second one in the same cell makes
    /// the first stale and it is cancelled (a shipped region is then taken
    /// back: seconds of stall for its players). One change per cell at a
    /// time.
    changing: HashSet<CellId>,
    total_cells: usize,
}

impl Model {
    fn build(view: &ClusterView, config: &RebalanceConfig) -> Model {
        let mut newest: HashMap<RegionId, &CellLoad> = HashMap::new();
        for s in view.shards.values() {
            for c in s.load.iter().flat_map(|l| l.cells.iter()) {
                let region = region_of(c);
                match newest.get(&region) {
                    Some(old) if old.epoch >= c.epoch => {}
                    _ => {
                        newest.insert(region, c);
                    }
                }
            }
        }
        let cost: HashMap<RegionId, Cost> = newest
            .into_iter()
            .filter(|(_, c)| c.tick_ms.is_finite() && c.tick_ms >= 0.0)
            .map(|(id, c)| {
                (
                    id,
                    Cost {
                        ms: c.tick_ms,
                        players: c.players,
                    },
                )
            })
            .collect();
        let mut m = Model {
            budget: BTreeMap::new(),
            capacity: BTreeMap::new(),
            load_ms: BTreeMap::new(),
            cells: BTreeMap::new(),
            cost,
            busy: HashSet::new(),
            changing: HashSet::new(),
            total_cells: 0,
        };
        // Only shards with a report and a budget take part.
        for (id, s) in &view.shards {
            let Some(load) = &s.load else { continue };
            let budget = config.tick_budget_ms.unwrap_or(load.tick_budget_ms);
            if !(budget.is_finite() && budget > 0.0) {
                continue;
            }
            m.budget.insert(id.clone(), budget);
            m.capacity.insert(id.clone(), s.capacity.max(1) as f64);
            m.load_ms.insert(id.clone(), 0.0);
            m.cells.insert(id.clone(), BTreeSet::new());
        }
        for (cell, owner) in &view.owners {
            if let Some(set) = m.cells.get_mut(owner) {
                set.insert(*cell);
                m.total_cells += 1;
                let c = m.cost.get(cell).map(|c| c.ms).unwrap_or(0.0);
                *m.load_ms.get_mut(owner).expect("same keys") += c;
            }
        }
        for f in &view.in_flight {
            m.busy.insert(f.from.clone());
            m.busy.insert(f.to.clone());
            m.changing.insert(f.cell.cell_id());
        }
        m
    }

    fn util(&self, s: &ShardId) -> f64 {
        self.load_ms[s] / self.budget[s]
    }

    fn count(&self, s: &ShardId) -> usize {
        self.cells[s].len()
    }

    /// Cells per unit of capacity.
    fn density(&self, s: &ShardId, count: usize) -> f64 {
        count as f64 / self.capacity[s]
    }

    fn share(&self, s: &ShardId) -> f64 {
        let total: f64 = self.capacity.values().sum();
        self.total_cells as f64 * self.capacity[s] / total
    }

    /// How much of `cell`'s border `s` already owns: 2 per region sharing
    /// an edge, 1 per region touching a corner. More contact, fewer
    /// cross-shard borders.
    fn contact(&self, cell: RegionId, s: &ShardId) -> u32 {
        let near = |r: &&RegionId| {
            let (a, b) = (r.cell_id(), cell.cell_id());
            (a.x - b.x).abs() <= 1 && (a.z - b.z).abs() <= 1
        };
        self.cells[s]
            .iter()
            .filter(near)
            .filter(|r| cell.touches(**r))
            .map(|r| if shares_edge(cell, *r) { 2 } else { 1 })
            .sum()
    }

    fn apply(&mut self, cell: RegionId, from: &ShardId, to: &ShardId) {
        let c = self.cost.get(&cell).map(|c| c.ms).unwrap_or(0.0);
        *self.load_ms.get_mut(from).expect("known shard") -= c;
        *self.load_ms.get_mut(to).expect("known shard") += c;
        self.cells.get_mut(from).expect("known shard").remove(&cell);
        self.cells.get_mut(to).expect("known shard").insert(cell);
        self.busy.insert(from.clone());
        self.busy.insert(to.clone());
        self.changing.insert(cell.cell_id());
    }
}

impl Rebalancer {
    pub fn new(config: RebalanceConfig) -> Rebalancer {
        Rebalancer {
            config,
            streaks: HashMap::new(),
            relieving: BTreeSet::new(),
            filling: BTreeSet::new(),
            shard_until: HashMap::new(),
            cell_until: HashMap::new(),
            split_streaks: HashMap::new(),
            merge_streaks: HashMap::new(),
            reshaped_until: HashMap::new(),
            spreading_until: HashMap::new(),
        }
    }

    /// A planner for a one-shot plan (`ctl rebalance`): one report above
    /// the high watermark is enough.
    pub fn one_shot(config: RebalanceConfig) -> Rebalancer {
        Rebalancer::new(RebalanceConfig {
            sustain: 1,
            split_sustain: 1,
            merge_sustain: 1,
            ..config
        })
    }

    pub fn config(&self) -> &RebalanceConfig {
        &self.config
    }

    /// One round: updates the hysteresis state from `view` and returns the
    /// moves to request now. The returned moves are assumed requested
    /// (their cooldowns start).
    pub fn plan(&mut self, view: &ClusterView, now: Instant) -> Plan {
        let cfg = self.config.clone();
        let mut model = Model::build(view, &cfg);
        self.shard_until.retain(|_, until| *until > now);
        self.cell_until.retain(|_, until| *until > now);
        self.streaks.retain(|s, _| model.budget.contains_key(s));
        self.relieving.retain(|s| model.budget.contains_key(s));
        self.filling.retain(|s| model.budget.contains_key(s));

        // Hysteresis: count fresh reports over the high watermark.
        for (id, s) in &view.shards {
            let Some(load) = &s.load else { continue };
            if !model.budget.contains_key(id) {
                continue;
            }
            let over = model.util(id) > cfg.high_watermark;
            if !over {
                self.relieving.remove(id);
            }
            let streak = self.streaks.entry(id.clone()).or_insert((u64::MAX, 0));
            if streak.0 != load.tick {
                streak.0 = load.tick;
                streak.1 = if over { streak.1.saturating_add(1) } else { 0 };
            }
            if over && streak.1 >= cfg.sustain.max(1) {
                self.relieving.insert(id.clone());
            }
        }
        // Join balance: shards far below their share of the cells.
        let ids: Vec<ShardId> = model.budget.keys().cloned().collect();
        for id in &ids {
            // A shard that is busy simulating what it has (a hot cell left
            // alone on it, say) is not short of cells.
            if (model.count(id) as f64) < model.share(id) / 2.0
                && model.util(id) < cfg.low_watermark
                && !self.relieving.contains(id)
            {
                self.filling.insert(id.clone());
            }
        }

        let mut plan = Plan::default();
        // Relief first, the most loaded shard first: moving a whole cell
        // off an overloaded shard is cheaper than splitting it, and a cell
        // changes one way per round (`Model::changing`).
        let mut over: Vec<ShardId> = self.relieving.iter().cloned().collect();
        over.sort_by(|a, b| model.util(b).total_cmp(&model.util(a)).then(a.cmp(b)));
        for s in over {
            if plan.moves.len() >= cfg.max_moves {
                break;
            }
            if model.busy.contains(&s) {
                continue;
            }
            match self.relief(&model, &s) {
                Relief::Move(m) => {
                    self.commit(&mut model, &m, now);
                    plan.moves.push(m);
                }
                Relief::Blocked(why) => {
                    // Nothing can take any of its cells: stop trying until
                    // it is overloaded again for `sustain` reports.
                    self.relieving.remove(&s);
                    if let Some(st) = self.streaks.get_mut(&s) {
                        st.1 = 0;
                    }
                    plan.blocked.push(Blocked { shard: s, why });
                }
                Relief::Wait => {}
            }
        }
        self.plan_reshapes(view, &mut model, now, &mut plan);
        self.spread(&mut model, now, &mut plan);
        let filling: Vec<ShardId> = self.filling.iter().cloned().collect();
        for t in filling {
            if plan.moves.len() >= cfg.max_moves {
                break;
            }
            if model.busy.contains(&t) || self.shard_until.contains_key(&t) {
                continue;
            }
            match self.fill(&model, &t) {
                Fill::Move(m) => {
                    self.commit(&mut model, &m, now);
                    plan.moves.push(m);
                }
                Fill::NoSource => {
                    self.filling.remove(&t);
                }
                Fill::Blocked(why) => {
                    self.filling.remove(&t);
                    plan.blocked.push(Blocked { shard: t, why });
                }
            }
        }
        plan
    }

    /// Splits of regions that stay too expensive for one shard, and merges
    /// of sibling regions that stay cheap (docs/regions.md, Policy). The
    /// gap between `split_above` and `merge_below`, the sustain counts and
    /// the cooldown keep a crowd on a border from making regions flap.
    fn plan_reshapes(
        &mut self,
        view: &ClusterView,
        model: &mut Model,
        now: Instant,
        plan: &mut Plan,
    ) {
        let cfg = self.config.clone();
        self.reshaped_until.retain(|_, until| *until > now);
        self.split_streaks
            .retain(|r, _| view.owners.contains_key(r));
        let tick_of = |s: &ShardId| {
            view.shards
                .get(s)
                .and_then(|v| v.load.as_ref())
                .map(|l| l.tick)
        };
        // Reshaped recently: the region itself or a region around it (a
        // merge planned for a cell cools every leaf under it).
        let cooling = |r: &RegionId, until: &HashMap<RegionId, Instant>| {
            let mut a = Some(*r);
            while let Some(x) = a {
                if until.contains_key(&x) {
                    return true;
                }
                a = x.parent();
            }
            false
        };
        // Splits.
        for (region, owner) in &view.owners {
            let (Some(budget), Some(cost), Some(tick)) = (
                model.budget.get(owner),
                model.cost.get(region),
                tick_of(owner),
            ) else {
                continue;
            };
            let over = cost.ms / budget > cfg.split_above;
            let streak = self.split_streaks.entry(*region).or_insert((u64::MAX, 0));
            if streak.0 != tick {
                streak.0 = tick;
                streak.1 = if over { streak.1.saturating_add(1) } else { 0 };
            }
            if !over
                || streak.1 < cfg.split_sustain.max(1)
                || region.depth() >= cfg.max_depth
                || model.changing.contains(&region.cell_id())
                || cooling(region, &self.reshaped_until)
                || plan.reshapes.len() >= cfg.max_moves
            {
                continue;
            }
            plan.reshapes.push(PlannedReshape {
                region: *region,
                op: crate::reshape::ReshapeOp::Split,
                shard: owner.clone(),
                cost_ms: cost.ms,
                load: cost.ms / budget,
                why: format!(
                    "costs {:.0}% of {owner}'s budget alone (split above {:.0}%)",
                    cost.ms / budget * 100.0,
                    cfg.split_above * 100.0
                ),
            });
            self.reshaped_until
                .insert(*region, now + cfg.reshape_cooldown);
            self.spreading_until.insert(*region, now + SPREAD_WINDOW);
            self.split_streaks.remove(region);
            model.changing.insert(region.cell_id());
        }
        // Merges: every split region whose leaves (at any depth) stay cheap
        // together, the largest such region of a subtree first, so a
        // crowd's many levels merge back in one step, not one level per
        // cooldown.
        let mut subtrees: BTreeMap<RegionId, Vec<RegionId>> = BTreeMap::new();
        for leaf in view.owners.keys() {
            let mut r = *leaf;
            while let Some(p) = r.parent() {
                subtrees.entry(p).or_default().push(*leaf);
                r = p;
            }
        }
        self.merge_streaks.retain(|p, _| subtrees.contains_key(p));
        // Largest regions first (depth, then position): a region planned to
        // merge takes its whole subtree with it.
        let mut order: Vec<RegionId> = subtrees.keys().copied().collect();
        order.sort_by_key(|r| (r.depth(), *r));
        let mut taken: Vec<RegionId> = Vec::new();
        // Cheap regions not merged this round (their streak is still
        // building, or a leaf is busy): they will take their subtrees with
        // them, so those wait rather than merge first and hold the larger
        // merge back by their cooldown.
        let mut waiting: Vec<RegionId> = Vec::new();
        for region in order {
            let leaves = &subtrees[&region];
            let owners: Vec<(RegionId, crate::cellmap::CellOwner)> = leaves
                .iter()
                .map(|l| {
                    (
                        *l,
                        crate::cellmap::CellOwner {
                            owner: view.owners[l].clone(),
                            epoch: tessera_proto::Epoch(0),
                        },
                    )
                })
                .collect();
            let target = crate::reshape::merge_target(&owners);
            let costs: Option<Vec<f64>> = leaves
                .iter()
                .map(|l| model.cost.get(l).map(|c| c.ms))
                .collect();
            let (Some(costs), Some(budget), Some(tick)) =
                (costs, model.budget.get(&target), tick_of(&target))
            else {
                continue;
            };
            let sum: f64 = costs.iter().sum();
            let under = sum / budget < cfg.merge_below;
            let streak = self.merge_streaks.entry(region).or_insert((u64::MAX, 0));
            if streak.0 != tick {
                streak.0 = tick;
                streak.1 = if under { streak.1.saturating_add(1) } else { 0 };
            }
            let leaf_cooling = leaves.iter().any(|l| cooling(l, &self.reshaped_until));
            let within = |rs: &[RegionId]| rs.iter().any(|r| *r != region && r.contains(region));
            if within(&taken) || within(&waiting) {
                continue;
            }
            if !under
                || streak.1 < cfg.merge_sustain.max(1)
                || leaf_cooling
                || model.changing.contains(&region.cell_id())
                || plan.reshapes.len() >= cfg.max_moves
            {
                if under {
                    waiting.push(region);
                }
                continue;
            }
            let what = if leaves.len() == 4 {
                "its quadrants cost".to_string()
            } else {
                format!("its {} regions cost", leaves.len())
            };
            plan.reshapes.push(PlannedReshape {
                region,
                op: crate::reshape::ReshapeOp::Merge,
                shard: target.clone(),
                cost_ms: sum,
                load: sum / budget,
                why: format!(
                    "{what} {:.0}% of {target}'s budget together (merge below {:.0}%)",
                    sum / budget * 100.0,
                    cfg.merge_below * 100.0
                ),
            });
            self.reshaped_until
                .insert(region, now + cfg.reshape_cooldown);
            self.merge_streaks.remove(&region);
            // The merge gathers the subtree onto one shard: spreading its
            // quadrants over idle shards would undo that.
            self.spreading_until.retain(|p, _| !region.contains(*p));
            taken.push(region);
            model.changing.insert(region.cell_id());
        }
    }

    /// Places the quadrants of regions split for their cost by load: a
    /// quadrant moves to the least loaded free shard when that lowers the
    /// busier of the two by more than 5 % of the budget and the target
    /// stays under the low watermark. So
    /// a crowd's cost ends up shared by shards that were idle, not only
    /// trimmed down to the high watermark.
    fn spread(&mut self, model: &mut Model, now: Instant, plan: &mut Plan) {
        self.spreading_until.retain(|_, until| *until > now);
        let parents: Vec<RegionId> = self.spreading_until.keys().copied().collect();
        for parent in parents {
            let Some(quadrants) = parent.children() else {
                continue;
            };
            for q in quadrants {
                if plan.moves.len() >= self.config.max_moves {
                    return;
                }
                let Some(s) = model
                    .cells
                    .iter()
                    .find(|(_, set)| set.contains(&q))
                    .map(|(s, _)| s.clone())
                else {
                    continue;
                };
                if model.busy.contains(&s)
                    || model.changing.contains(&q.cell_id())
                    || self.cell_until.contains_key(&q)
                {
                    continue;
                }
                let Some(cost) = model.cost.get(&q).copied() else {
                    continue;
                };
                if cost.ms <= 0.0 {
                    continue;
                }
                let from_after = (model.load_ms[&s] - cost.ms) / model.budget[&s];
                let target = model
                    .budget
                    .keys()
                    .filter(|t| **t != s && self.target_free(model, t))
                    .filter_map(|t| self.fits(model, t, cost.ms).map(|after| (t.clone(), after)))
                    // The busier of the two ends clearly less busy than
                    // the source is now (so the move back never pays).
                    .filter(|(_, after)| after.max(from_after) < model.util(&s) - 0.05)
                    .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                let Some((t, to_after)) = target else {
                    continue;
                };
                let m = Move {
                    cell: q,
                    in_cell: q.cell_id(),
                    from: s.clone(),
                    to: t.clone(),
                    reason: Reason::Spread,
                    cost_ms: cost.ms,
                    players: cost.players,
                    from_load_before: model.util(&s),
                    from_load_after: from_after,
                    to_load_before: model.util(&t),
                    to_load_after: to_after,
                };
                self.commit(model, &m, now);
                plan.moves.push(m);
            }
        }
    }

    fn commit(&mut self, model: &mut Model, m: &Move, now: Instant) {
        model.apply(m.cell, &m.from, &m.to);
        self.shard_until
            .insert(m.to.clone(), now + self.config.shard_cooldown);
        self.cell_until
            .insert(m.cell, now + self.config.cell_cooldown);
    }

    /// Cells of `s` that may move now, with their costs.
    fn movable(&self, model: &Model, s: &ShardId) -> Vec<(RegionId, Cost)> {
        model.cells[s]
            .iter()
            .filter(|c| !model.changing.contains(&c.cell_id()) && !self.cell_until.contains_key(c))
            .filter_map(|c| model.cost.get(c).map(|cost| (*c, *cost)))
            .collect()
    }

    /// Whether `t` may receive a cell of `cost_ms` now: `Some(load after)`.
    fn fits(&self, model: &Model, t: &ShardId, cost_ms: f64) -> Option<f64> {
        let after = (model.load_ms[t] + cost_ms) / model.budget[t];
        (after < self.config.low_watermark).then_some(after)
    }

    fn target_free(&self, model: &Model, t: &ShardId) -> bool {
        !model.busy.contains(t) && !self.shard_until.contains_key(t) && !self.relieving.contains(t)
    }

    /// The best move off the overloaded shard `s`, or why there is none.
    fn relief(&self, model: &Model, s: &ShardId) -> Relief {
        let high = self.config.high_watermark;
        let budget = model.budget[s];
        let hot: Option<RegionId> = model.cells[s]
            .iter()
            .filter_map(|c| model.cost.get(c).map(|k| (*c, k.ms)))
            .filter(|(_, ms)| ms / budget > high)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c);
        let cells = self.movable(model, s);
        let mut best: Option<Candidate> = None;
        let mut waiting = false;
        for (cell, cost) in &cells {
            if cost.ms <= 0.0 {
                continue;
            }
            let effect = if (model.load_ms[s] - cost.ms) / budget <= high {
                Effect::Fixes {
                    players: cost.players,
                    cost_ms: cost.ms,
                }
            } else {
                Effect::Eases {
                    ms_per_player: cost.ms / (1.0 + cost.players as f64),
                }
            };
            for t in model.budget.keys().filter(|t| *t != s) {
                let Some(after) = self.fits(model, t, cost.ms) else {
                    continue;
                };
                if !self.target_free(model, t) {
                    waiting |= !self.relieving.contains(t);
                    continue;
                }
                let candidate = Candidate {
                    rank: Rank {
                        effect,
                        contact: model.contact(*cell, t),
                        to_load_after: after,
                    },
                    cell: *cell,
                    to: t.clone(),
                };
                if best.as_ref().is_none_or(|b| candidate.beats(b)) {
                    best = Some(candidate);
                }
            }
        }
        if let Some(Candidate { rank, cell, to }) = best {
            let cost = model.cost[&cell];
            return Relief::Move(Move {
                cell,
                in_cell: cell.cell_id(),
                from: s.clone(),
                to: to.clone(),
                reason: if hot.is_some_and(|h| h != cell) {
                    Reason::HotCell
                } else {
                    Reason::Overloaded
                },
                cost_ms: cost.ms,
                players: cost.players,
                from_load_before: model.util(s),
                from_load_after: (model.load_ms[s] - cost.ms) / budget,
                to_load_before: model.util(&to),
                to_load_after: rank.to_load_after,
            });
        }
        let cooling = model.cells[s]
            .iter()
            .any(|c| model.changing.contains(&c.cell_id()) || self.cell_until.contains_key(c));
        if waiting || cooling {
            return Relief::Wait;
        }
        Relief::Blocked(match hot {
            Some(h) => format!(
                "at {:.0}% of its budget; cell {h} alone costs more than the high watermark and no other cell can move under the low watermark elsewhere",
                model.util(s) * 100.0
            ),
            None => format!(
                "at {:.0}% of its budget; no shard can take one of its cells under the low watermark",
                model.util(s) * 100.0
            ),
        })
    }

    /// The next cell for the under-filled shard `t`, or why there is none.
    fn fill(&self, model: &Model, t: &ShardId) -> Fill {
        let after_t = model.density(t, model.count(t) + 1);
        let mut sources: Vec<&ShardId> = model
            .budget
            .keys()
            .filter(|s| *s != t && !model.busy.contains(*s))
            .filter(|s| model.density(s, model.count(s).saturating_sub(1)) >= after_t)
            .filter(|s| model.count(s) > 0)
            .collect();
        if sources.is_empty() {
            return Fill::NoSource;
        }
        sources.sort_by(|a, b| {
            model
                .density(b, model.count(b))
                .total_cmp(&model.density(a, model.count(a)))
                .then(a.cmp(b))
        });
        for s in sources {
            let mut cells = self.movable(model, s);
            cells.retain(|(_, cost)| self.fits(model, t, cost.ms).is_some());
            let Some((cell, cost)) = cells.into_iter().min_by(|(ca, ka), (cb, kb)| {
                model
                    .contact(*cb, t)
                    .cmp(&model.contact(*ca, t))
                    .then(ka.players.cmp(&kb.players))
                    .then(ka.ms.total_cmp(&kb.ms))
                    .then(ca.cmp(cb))
            }) else {
                continue;
            };
            return Fill::Move(Move {
                cell,
                in_cell: cell.cell_id(),
                from: s.clone(),
                to: t.clone(),
                reason: Reason::JoinBalance,
                cost_ms: cost.ms,
                players: cost.players,
                from_load_before: model.util(s),
                from_load_after: (model.load_ms[s] - cost.ms) / model.budget[s],
                to_load_before: model.util(t),
                to_load_after: (model.load_ms[t] + cost.ms) / model.budget[t],
            });
        }
        Fill::Blocked(format!(
            "owns {} of its share of {:.1} cells; no cell of a fuller shard fits under the low watermark",
            model.count(t),
            model.share(t)
        ))
    }
}

/// What [`Rebalancer::relief`] found for an overloaded shard.
#[derive(Debug)]
enum Relief {
    /// Move this cell now.
    Move(Move),
    /// No move this round, but one may come once something frees up: a
    /// target with room is busy or cooling down, or one of the shard's own
    /// cells is migrating or cooling down. The shard stays on the relief
    /// list.
    Wait,
    /// No shard can take any of its cells under the low watermark, even
    /// once everything busy or cooling down is free. The shard is reported
    /// blocked and its streak restarts.
    Blocked(String),
}

/// What [`Rebalancer::fill`] found for an under-filled shard.
#[derive(Debug)]
enum Fill {
    /// Move this cell now.
    Move(Move),
    /// No shard free this round would keep at least as many cells per
    /// capacity as the target would have with one more: the target has its
    /// share (or every fuller shard is busy). Filling stops; nothing to
    /// report.
    NoSource,
    /// Fuller shards exist, but none has a cell that may move now and fits
    /// under the target's low watermark. Filling stops and the target is
    /// reported blocked.
    Blocked(String),
}

/// What moving a cell does for its overloaded source; part of a [`Rank`].
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// The move alone brings the source back to the high watermark.
    Fixes { players: usize, cost_ms: f64 },
    /// It does not; the cell relieves `ms_per_player`, its cost over
    /// `1 + players`.
    Eases { ms_per_player: f64 },
}

impl Ord for Effect {
    /// A move that fixes the source first, with the fewest players (each
    /// sees the stall), then the cheapest; otherwise the most relief per
    /// player.
    fn cmp(&self, other: &Self) -> Ordering {
        use Effect::{Eases, Fixes};
        match (self, other) {
            (
                Fixes {
                    players: pa,
                    cost_ms: ca,
                },
                Fixes {
                    players: pb,
                    cost_ms: cb,
                },
            ) => pa.cmp(pb).then(ca.total_cmp(cb)),
            (Fixes { .. }, Eases { .. }) => Ordering::Less,
            (Eases { .. }, Fixes { .. }) => Ordering::Greater,
            (Eases { ms_per_player: a }, Eases { ms_per_player: b }) => b.total_cmp(a),
        }
    }
}

impl PartialOrd for Effect {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Effect {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Effect {}

/// How good a relief move is; the lesser rank is the better move. Fields
/// compare in order, floats by [`f64::total_cmp`].
#[derive(Clone, Copy, Debug)]
struct Rank {
    /// What the move does for the source.
    effect: Effect,
    /// How much of the cell's border the target already owns
    /// ([`Model::contact`]); more first.
    contact: u32,
    /// The target's load with the cell; least loaded first.
    to_load_after: f64,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.effect
            .cmp(&other.effect)
            .then(other.contact.cmp(&self.contact))
            .then(self.to_load_after.total_cmp(&other.to_load_after))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Rank {}

/// A possible relief move: `cell` to `to`.
#[derive(Debug)]
struct Candidate {
    rank: Rank,
    cell: RegionId,
    to: ShardId,
}

impl Candidate {
    /// The better rank wins; equal ranks go to the lesser cell, then the
    /// lesser target, so the plan does not depend on iteration order.
    fn beats(&self, other: &Candidate) -> bool {
        (&self.rank, self.cell, &self.to) < (&other.rank, other.cell, &other.to)
    }
}

/// Plans to a fixed point on projected loads: each wave is one round of a
/// one-shot planner on the view after the previous waves completed (and
/// their shard cooldowns passed). What `tessera ctl rebalance` shows and
/// executes, wave after wave. A cell moves at most once in it. Stops after
/// `max_waves`.
pub fn plan_all(config: &RebalanceConfig, view: &ClusterView, max_waves: usize) -> PlanAll {
    // Within one plan a cell moves at most once.
    let mut r = Rebalancer::one_shot(RebalanceConfig {
        cell_cooldown: Duration::from_secs(24 * 3600),
        ..config.clone()
    });
    let mut view = view.clone();
    let mut now = Instant::now();
    let mut out = PlanAll::default();
    for wave in 0..max_waves {
        let plan = r.plan(&view, now);
        if wave == 0 {
            out.reshapes = plan.reshapes.clone();
        }
        out.blocked = plan.blocked;
        if plan.moves.is_empty() {
            break;
        }
        view = view.after(&plan.moves);
        out.waves.push(plan.moves);
        now += config.shard_cooldown + Duration::from_millis(1);
    }
    out.projected = view;
    out
}

#[derive(Clone, Debug, Default)]
pub struct PlanAll {
    /// Moves wave by wave; the moves of one wave can run together.
    pub waves: Vec<Vec<Move>>,
    /// What still needs help and cannot get it, after the last wave.
    pub blocked: Vec<Blocked>,
    /// Splits and merges due now (not projected into the waves: a split's
    /// quadrants have no measured cost until their shard reports them).
    pub reshapes: Vec<PlannedReshape>,
    /// The cluster once every wave completed.
    pub projected: ClusterView,
}

/// The region a load report entry is about.
fn region_of(c: &CellLoad) -> RegionId {
    c.region
        .as_deref()
        .and_then(|r| r.parse().ok())
        .filter(|r: &RegionId| r.cell_id() == c.cell)
        .unwrap_or(RegionId::cell(c.cell))
}

/// Whether two touching regions share a stretch of edge (not just a
/// corner).
fn shares_edge(a: RegionId, b: RegionId) -> bool {
    // Exact on a unit grid: sides are powers of two.
    let unit = Grid::new(1.0);
    let (ra, rb) = (a.bounds(&unit), b.bounds(&unit));
    let overlap_x = ra.max_x.min(rb.max_x) - ra.min_x.max(rb.min_x);
    let overlap_z = ra.max_z.min(rb.max_z) - ra.min_z.max(rb.min_z);
    (overlap_x > 0.0 && overlap_z == 0.0) || (overlap_z > 0.0 && overlap_x == 0.0)
}

fn as_text<S: serde::Serializer>(r: &RegionId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(r)
}

/// Each shard's load (fraction of its budget) in `view`, as the planner
/// models it; shards without a report are left out.
pub fn loads(view: &ClusterView, config: &RebalanceConfig) -> BTreeMap<ShardId, f64> {
    let m = Model::build(view, config);
    m.budget.keys().map(|s| (s.clone(), m.util(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tessera_proto::Epoch;

    fn sid(s: &str) -> ShardId {
        ShardId::new(s)
    }

    /// A test cell: `(cell, cost_ms, players)`.
    type CellSpec = (RegionId, f64, usize);
    /// A test shard: `(shard, capacity, cells)`.
    type ShardSpec<'a> = (&'a str, u32, Vec<CellSpec>);

    /// A view of `shards`, budget 10 ms.
    fn view(shards: &[ShardSpec]) -> ClusterView {
        let mut v = ClusterView::default();
        for (id, cap, cells) in shards {
            let load = ShardLoad {
                tick: 1,
                tick_budget_ms: 10.0,
                cells: cells
                    .iter()
                    .map(|(c, ms, players)| CellLoad {
                        cell: c.cell_id(),
                        region: (!c.is_cell()).then(|| c.to_string()),
                        epoch: Epoch(1),
                        entities: *players,
                        players: *players,
                        ghosts: 0,
                        tick_ms: *ms,
                        tick_p99_ms: *ms,
                    })
                    .collect(),
                ..ShardLoad::default()
            };
            for (c, _, _) in cells {
                v.owners.insert(*c, sid(id));
            }
            v.shards.insert(
                sid(id),
                ShardView {
                    capacity: *cap,
                    load: Some(load),
                },
            );
        }
        v
    }

    fn c(x: i32, z: i32) -> RegionId {
        RegionId::cell(CellId::new(x, z))
    }

    fn fresh(v: &ClusterView) -> ClusterView {
        v.after(&[])
    }

    #[test]
    fn a_rank_compares_effect_then_contact_then_target_load() {
        let fixes = |players, cost_ms| Effect::Fixes { players, cost_ms };
        let eases = |ms_per_player| Effect::Eases { ms_per_player };
        let rank = |effect, contact, to_load_after| Rank {
            effect,
            contact,
            to_load_after,
        };
        // A move that fixes the source beats one that only eases it,
        // whatever the rest says.
        assert!(rank(fixes(9, 9.0), 0, 0.59) < rank(eases(9.0), 8, 0.0));
        // Among fixing moves, the fewest players, then the cheapest.
        assert!(fixes(0, 9.0) < fixes(1, 0.1));
        assert!(fixes(1, 0.1) < fixes(1, 0.2));
        // Among easing moves, the most relief per player.
        assert!(eases(2.0) < eases(1.0));
        // The effect dominates the contact, ...
        assert!(rank(fixes(0, 1.0), 0, 0.5) < rank(fixes(0, 2.0), 8, 0.5));
        assert!(rank(eases(2.0), 0, 0.5) < rank(eases(1.0), 8, 0.5));
        // ... which dominates the target's load (more contact first), ...
        assert!(rank(fixes(0, 1.0), 2, 0.59) < rank(fixes(0, 1.0), 1, 0.0));
        // ... which breaks the last tie (least loaded first).
        assert!(rank(fixes(0, 1.0), 2, 0.1) < rank(fixes(0, 1.0), 2, 0.2));
        assert_eq!(rank(eases(1.0), 2, 0.1), rank(eases(1.0), 2, 0.1));
        // Equal ranks fall back to the cell, then the target.
        let candidate = |cell, to: &str| Candidate {
            rank: rank(eases(1.0), 2, 0.1),
            cell,
            to: sid(to),
        };
        assert!(candidate(c(0, 0), "b").beats(&candidate(c(0, 1), "a")));
        assert!(candidate(c(0, 0), "a").beats(&candidate(c(0, 0), "b")));
        assert!(!candidate(c(0, 0), "a").beats(&candidate(c(0, 0), "a")));
    }

    #[test]
    fn overload_must_be_sustained_over_fresh_reports() {
        let v = view(&[
            ("a", 1, vec![(c(0, 0), 5.0, 0), (c(0, 1), 4.0, 0)]),
            ("b", 1, vec![(c(1, 0), 1.0, 0)]),
        ]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let t = Instant::now();
        assert!(r.plan(&v, t).moves.is_empty(), "one report");
        // The same report again is not a new sample.
        assert!(r.plan(&v, t).moves.is_empty());
        let v2 = fresh(&v);
        assert!(r.plan(&v2, t).moves.is_empty(), "two reports");
        let plan = r.plan(&fresh(&v2), t);
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        let m = &plan.moves[0];
        assert_eq!((m.from.0.as_str(), m.to.0.as_str()), ("a", "b"));
        assert_eq!(m.reason, Reason::Overloaded);
        // Moving 0,1 (4 ms) fixes it and costs less than 0,0 (5 ms).
        assert_eq!(m.cell, c(0, 1));
        assert!((m.from_load_after - 0.5).abs() < 1e-9);
        assert!((m.to_load_after - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_dip_below_the_watermark_restarts_the_streak() {
        let hot = view(&[
            ("a", 1, vec![(c(0, 0), 5.0, 0), (c(0, 1), 4.0, 0)]),
            ("b", 1, vec![(c(1, 0), 1.0, 0)]),
        ]);
        let cool = view(&[
            ("a", 1, vec![(c(0, 0), 2.0, 0), (c(0, 1), 4.0, 0)]),
            ("b", 1, vec![(c(1, 0), 1.0, 0)]),
        ]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let t = Instant::now();
        let mut v = hot.clone();
        for (i, src) in [&hot, &hot, &cool, &hot, &hot].into_iter().enumerate() {
            v = ClusterView {
                shards: src.shards.clone(),
                ..v
            };
            for s in v.shards.values_mut() {
                s.load.as_mut().unwrap().tick = i as u64 + 10;
            }
            assert!(r.plan(&v, t).moves.is_empty(), "report {i}");
        }
    }

    #[test]
    fn players_weigh_against_a_move_and_neighbours_break_ties() {
        // Either cell fixes `a`; 0,1 has players, so 0,2 goes. Targets b
        // and c are equally loaded; c owns a neighbour of 0,2.
        let v = view(&[
            (
                "a",
                1,
                vec![(c(0, 0), 4.0, 0), (c(0, 1), 3.0, 5), (c(0, 2), 3.0, 0)],
            ),
            ("b", 1, vec![(c(5, 5), 2.0, 0)]),
            ("c", 1, vec![(c(1, 2), 2.0, 0)]),
        ]);
        let plan = Rebalancer::one_shot(RebalanceConfig::default()).plan(&v, Instant::now());
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        assert_eq!(plan.moves[0].cell, c(0, 2));
        assert_eq!(plan.moves[0].to, sid("c"));
    }

    #[test]
    fn no_move_would_put_a_target_over_the_low_watermark() {
        let v = view(&[
            ("a", 1, vec![(c(0, 0), 4.5, 0), (c(0, 1), 4.5, 0)]),
            ("b", 1, vec![(c(1, 0), 2.0, 0)]),
        ]);
        let mut r = Rebalancer::one_shot(RebalanceConfig::default());
        let plan = r.plan(&v, Instant::now());
        assert!(plan.moves.is_empty(), "{plan:?}");
        assert_eq!(plan.blocked.len(), 1);
        assert_eq!(plan.blocked[0].shard, sid("a"));
        assert!(
            plan.blocked[0].why.contains("low watermark"),
            "{:?}",
            plan.blocked
        );
    }

    #[test]
    fn a_hot_cell_keeps_its_shard_to_itself() {
        let v = view(&[
            (
                "a",
                1,
                vec![
                    (c(0, 0), 8.5, 30),
                    (c(0, 1), 0.5, 0),
                    (c(0, 2), 0.5, 0),
                    (c(0, 3), 0.5, 1),
                ],
            ),
            ("b", 1, vec![(c(1, 0), 0.5, 0)]),
            ("c", 1, vec![(c(2, 0), 0.5, 0)]),
        ]);
        let all = plan_all(&RebalanceConfig::default(), &v, 50);
        let moved: Vec<RegionId> = all.waves.iter().flatten().map(|m| m.cell).collect();
        assert_eq!(moved.len(), 3, "{:?}", all.waves);
        assert!(!moved.contains(&c(0, 0)), "the hot cell stays");
        assert!(all
            .waves
            .iter()
            .flatten()
            .all(|m| m.reason == Reason::HotCell && m.to_load_after < 0.6));
        // Once alone, it is reported (once: a shard that busy is not
        // short of cells), not bounced around.
        assert_eq!(all.blocked.len(), 1, "{:?}", all.blocked);
        assert!(all.blocked[0].why.contains("cell 0,0 alone"));
        assert_eq!(
            all.projected
                .owners
                .iter()
                .filter(|(_, o)| o.0 == "a")
                .count(),
            1
        );
    }

    #[test]
    fn a_bigger_shard_takes_the_hot_cell() {
        let mut v = view(&[
            ("a", 1, vec![(c(0, 0), 9.0, 30)]),
            ("big", 4, vec![(c(1, 0), 1.0, 0)]),
        ]);
        v.shards
            .get_mut(&sid("big"))
            .unwrap()
            .load
            .as_mut()
            .unwrap()
            .tick_budget_ms = 40.0;
        let plan = Rebalancer::one_shot(RebalanceConfig::default()).plan(&v, Instant::now());
        assert_eq!(plan.moves.len(), 1);
        assert_eq!(
            (plan.moves[0].cell, plan.moves[0].to.clone()),
            (c(0, 0), sid("big"))
        );
        assert_eq!(plan.moves[0].reason, Reason::Overloaded);
    }

    #[test]
    fn one_migration_in_flight_per_shard_and_cooldowns() {
        let cells: Vec<_> = (0..6).map(|i| (c(0, i), 1.7, 0)).collect();
        let v = view(&[("a", 1, cells), ("b", 1, vec![])]);
        let cfg = RebalanceConfig::default();
        let mut r = Rebalancer::one_shot(cfg.clone());
        let t = Instant::now();
        let mut busy = v.clone();
        busy.in_flight.push(InFlight {
            cell: c(0, 0),
            from: sid("a"),
            to: sid("x"),
        });
        assert!(r.plan(&busy, t).moves.is_empty(), "a is busy");
        let plan = r.plan(&fresh(&v), t);
        assert_eq!(plan.moves.len(), 1, "one move off a per round: {plan:?}");
        let first = plan.moves[0].clone();
        // Completed; a is still over the watermark, but b cools down.
        let after = v.after(&plan.moves);
        let plan = r.plan(&after, t + Duration::from_millis(100));
        assert!(plan.moves.is_empty(), "{plan:?}");
        assert!(plan.blocked.is_empty(), "waiting is not blocked");
        let plan = r.plan(&fresh(&after), t + cfg.shard_cooldown);
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        assert_eq!(plan.moves[0].to, sid("b"));
        assert_ne!(plan.moves[0].cell, first.cell);
    }

    #[test]
    fn a_joining_shard_gets_its_share_a_few_cells_at_a_time() {
        let cells_a: Vec<_> = (0..8).map(|i| (c(i % 2 - 2, i / 2 - 2), 0.5, 0)).collect();
        let cells_b: Vec<_> = (0..8).map(|i| (c(i % 2, i / 2 - 2), 0.5, 0)).collect();
        let v = view(&[("a", 1, cells_a), ("b", 1, cells_b), ("new", 1, vec![])]);
        let all = plan_all(&RebalanceConfig::default(), &v, 50);
        assert!(all.waves.iter().all(|w| w.len() == 1), "one at a time");
        let counts = |o: &str| all.projected.owners.values().filter(|s| s.0 == o).count();
        assert_eq!(counts("new"), 5, "{:?}", all.waves);
        assert_eq!(counts("a") + counts("b"), 11);
        assert!(counts("a").abs_diff(counts("b")) <= 1);
        for m in all.waves.iter().flatten() {
            assert_eq!(m.reason, Reason::JoinBalance);
            assert_eq!(m.to, sid("new"));
        }
    }

    #[test]
    fn capacity_sets_the_share() {
        // A 4 x 3 block of cells whose costs differ a little, in no
        // geometric order.
        let cells_a: Vec<_> = (0..12)
            .map(|i| (c(i % 4, i / 4), 0.1 + ((i * 7) % 12) as f64 * 0.01, 0))
            .collect();
        let v = view(&[("a", 1, cells_a), ("big", 2, vec![])]);
        let all = plan_all(&RebalanceConfig::default(), &v, 50);
        let big = all
            .projected
            .owners
            .values()
            .filter(|s| s.0 == "big")
            .count();
        assert_eq!(big, 8, "two thirds of 12");
        // It grows a region: each cell shares an edge with one it already
        // got.
        let moved: Vec<RegionId> = all.waves.iter().flatten().map(|m| m.cell).collect();
        for (i, cell) in moved.iter().enumerate().skip(1) {
            assert!(
                moved[..i].iter().any(|m| {
                    let (m, cell) = (m.cell_id(), cell.cell_id());
                    m.x.abs_diff(cell.x) + m.z.abs_diff(cell.z) == 1
                }),
                "{cell} is not next to {:?}",
                &moved[..i]
            );
        }
    }

    #[test]
    fn a_balance_move_never_crosses_the_low_watermark() {
        let cells_a: Vec<_> = (0..6).map(|i| (c(i, 0), 1.0, 0)).collect();
        let mut v = view(&[("a", 1, cells_a), ("new", 1, vec![(c(9, 9), 5.5, 0)])]);
        // `new` is nearly full of one expensive cell: it gets nothing.
        v.owners.insert(c(9, 9), sid("new"));
        let all = plan_all(&RebalanceConfig::default(), &v, 50);
        assert!(all.waves.is_empty(), "{:?}", all.waves);
        assert_eq!(all.blocked.len(), 1, "{:?}", all.blocked);
    }

    #[test]
    fn cells_without_a_cost_or_shards_without_a_report_are_left_alone() {
        let mut v = view(&[
            ("a", 1, vec![(c(0, 0), 9.0, 0), (c(0, 1), 0.0, 0)]),
            ("b", 1, vec![]),
        ]);
        // 0,1 is placed but no report lists it yet; b has not reported.
        v.owners.insert(c(0, 2), sid("a"));
        v.shards.get_mut(&sid("b")).unwrap().load = None;
        let plan = Rebalancer::one_shot(RebalanceConfig::default()).plan(&v, Instant::now());
        assert!(plan.moves.is_empty(), "{plan:?}");
    }

    /// Shards with equal budgets (10 ms) and cells of random costs and
    /// players, placed at random.
    fn arb_view() -> impl Strategy<Value = ClusterView> {
        (2usize..5, 1usize..40).prop_flat_map(|(shards, cells)| {
            (
                Just(shards),
                prop::collection::vec((0..shards, 0.0f64..3.0, 0usize..5), cells),
                prop::collection::vec(1u32..3, shards),
            )
                .prop_map(|(shards, cells, caps)| {
                    let mut spec: Vec<(String, u32, Vec<CellSpec>)> = (0..shards)
                        .map(|i| (format!("s{i}"), caps[i], Vec::new()))
                        .collect();
                    for (i, (owner, ms, players)) in cells.into_iter().enumerate() {
                        let cell = c(i as i32 % 6, i as i32 / 6);
                        spec[owner].2.push((cell, ms, players));
                    }
                    let borrowed: Vec<ShardSpec> = spec
                        .iter()
                        .map(|(id, cap, cells)| (id.as_str(), *cap, cells.clone()))
                        .collect();
                    view(&borrowed)
                })
        })
    }

    proptest! {
        #[test]
        fn no_move_back_after_the_plan_completes(v in arb_view()) {
            let cfg = RebalanceConfig::default();
            let all = plan_all(&cfg, &v, 200);
            let moves: Vec<&Move> = all.waves.iter().flatten().collect();
            // Each cell moves at most once in a plan.
            let mut seen = HashSet::new();
            for m in &moves {
                prop_assert!(seen.insert(m.cell), "{} moved twice", m.cell);
                prop_assert!(m.to_load_after < cfg.low_watermark);
            }
            // A fresh planner on the projected loads moves nothing back.
            let again = Rebalancer::one_shot(cfg.clone()).plan(&fresh(&all.projected), Instant::now());
            for m2 in &again.moves {
                prop_assert!(
                    !moves.iter().any(|m| m.cell == m2.cell && m.from == m2.to),
                    "{} bounces back to {}", m2.cell, m2.to
                );
            }
            // Nobody the plan moved cells onto ends over the high watermark.
            let loads = loads(&all.projected, &cfg);
            for m in &moves {
                prop_assert!(loads[&m.to] <= cfg.high_watermark);
            }
        }

        #[test]
        fn overloaded_shards_are_relieved_when_others_have_room(
            costs in prop::collection::vec(0.25f64..0.5, 20..60),
            shards in 2usize..5,
        ) {
            // Everything starts on s0 at 85 % of its budget, which is at
            // most half of the cluster's; every cell costs under 10 %, so
            // some other shard always has room under the low watermark.
            let total: f64 = costs.iter().sum();
            let cells: Vec<_> = costs
                .iter()
                .enumerate()
                .map(|(i, ms)| (c(i as i32 % 8, i as i32 / 8), ms * 8.5 / total, 0))
                .collect();
            let mut spec = vec![("s0".to_string(), 1, cells)];
            for i in 1..shards {
                spec.push((format!("s{i}"), 1, Vec::new()));
            }
            let borrowed: Vec<ShardSpec> = spec
                .iter()
                .map(|(id, cap, cells)| (id.as_str(), *cap, cells.clone()))
                .collect();
            let v = view(&borrowed);
            let cfg = RebalanceConfig::default();
            prop_assert!(loads(&v, &cfg)[&sid("s0")] > cfg.high_watermark);
            let all = plan_all(&cfg, &v, 500);
            for (s, load) in loads(&all.projected, &cfg) {
                prop_assert!(load <= cfg.high_watermark, "{s} at {load}");
            }
        }
    }

    fn q(text: &str) -> RegionId {
        text.parse().unwrap()
    }

    /// The four quadrants of cell 0,0 with their costs (ms) and players.
    fn quadrants_of_0_0(costs: [(f64, usize); 4]) -> Vec<(RegionId, f64, usize)> {
        (0..4)
            .map(|i| (q(&format!("0,0/{i}")), costs[i].0, costs[i].1))
            .collect()
    }

    /// Cell 0,0 split two levels deep: 0,0/0's quadrants and 0,0/1 (ms
    /// `rest`) on a, 0,0/2 and 0,0/3 (ms `crowd`, 40 players) on b; every
    /// other region costs 0.05 ms.
    fn two_levels(rest: f64, crowd: f64) -> ClusterView {
        let mut on_a: Vec<(RegionId, f64, usize)> = (0..4)
            .map(|i| (q(&format!("0,0/0/{i}")), 0.05, usize::from(i == 0)))
            .collect();
        on_a.push((q("0,0/1"), rest, 0));
        view(&[
            ("a", 1, on_a),
            ("b", 1, vec![(q("0,0/2"), 0.05, 0), (q("0,0/3"), crowd, 40)]),
        ])
    }

    /// Splits at the first report over the line, targets without cooldown.
    fn eager() -> RebalanceConfig {
        RebalanceConfig {
            split_sustain: 1,
            shard_cooldown: Duration::ZERO,
            ..RebalanceConfig::default()
        }
    }

    /// One round per fresh report; the reshapes planned in each.
    fn rounds(r: &mut Rebalancer, v: &ClusterView, n: usize, t0: Instant) -> Vec<Vec<String>> {
        let mut v = v.clone();
        (0..n)
            .map(|i| {
                v = fresh(&v);
                r.plan(&v, t0 + Duration::from_secs(i as u64))
                    .reshapes
                    .iter()
                    .map(|x| format!("{} {}", x.op, x.region))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_region_that_stays_too_expensive_is_split_once() {
        // Budget 10 ms: 0,0 costs 5 ms (50 %, above 35 %), 1,0 1 ms.
        let v = view(&[
            ("a", 1, vec![(c(0, 0), 5.0, 300), (c(1, 0), 1.0, 0)]),
            ("b", 1, vec![(c(2, 0), 0.5, 0)]),
        ]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let t0 = Instant::now();
        let planned = rounds(&mut r, &v, 5, t0);
        // Three fresh reports above the line (split_sustain), then once.
        assert_eq!(planned[0], Vec::<String>::new());
        assert_eq!(planned[1], Vec::<String>::new());
        assert_eq!(planned[2], vec!["split 0,0"]);
        assert_eq!(planned[3], Vec::<String>::new(), "requested once");
        // A stale report (same tick) counts nothing.
        let mut r = Rebalancer::new(RebalanceConfig::default());
        for i in 0..5 {
            assert!(r.plan(&v, t0 + Duration::from_secs(i)).reshapes.is_empty());
        }
    }

    #[test]
    fn no_split_below_the_deepest_level() {
        let deep = q("0,0/1/2/3");
        assert_eq!(deep.depth(), 3);
        let v = view(&[("a", 1, vec![(deep, 9.0, 100)]), ("b", 1, vec![])]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let planned = rounds(&mut r, &v, 5, Instant::now());
        assert!(planned.iter().all(|p| p.is_empty()), "{planned:?}");
    }

    #[test]
    fn cheap_quadrants_merge_onto_the_shard_that_has_most_of_them() {
        let v = view(&[
            (
                "a",
                1,
                vec![
                    (q("0,0/0"), 0.1, 1),
                    (q("0,0/2"), 0.1, 0),
                    (q("0,0/3"), 0.1, 0),
                ],
            ),
            ("b", 1, vec![(q("0,0/1"), 0.2, 2), (c(1, 0), 0.5, 0)]),
        ]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let t0 = Instant::now();
        let planned = rounds(&mut r, &v, 12, t0);
        let first = planned
            .iter()
            .position(|p| !p.is_empty())
            .expect("no merge");
        assert_eq!(
            first,
            RebalanceConfig::default().merge_sustain as usize - 1,
            "after merge_sustain fresh reports"
        );
        assert_eq!(planned[first], vec!["merge 0,0"]);
        let plan = {
            let mut r = Rebalancer::one_shot(RebalanceConfig::default());
            r.plan(&fresh(&v), t0)
        };
        assert_eq!(plan.reshapes[0].shard, sid("a"));
        // Costly quadrants do not merge: 0.4 + 0.3 * 3 = 1.3 ms of 10 (13 %).
        let busy = view(&[
            (
                "a",
                1,
                vec![
                    (q("0,0/0"), 0.4, 1),
                    (q("0,0/2"), 0.3, 0),
                    (q("0,0/3"), 0.3, 0),
                ],
            ),
            ("b", 1, vec![(q("0,0/1"), 0.3, 2)]),
        ]);
        let mut r = Rebalancer::new(RebalanceConfig::default());
        assert!(rounds(&mut r, &busy, 15, t0).iter().all(|p| p.is_empty()));
    }

    /// A crowd that split a cell two levels deep and left: the whole cell
    /// merges back in one step, not one level per cooldown; where part of
    /// the crowd stays, only the subtree it left merges.
    #[test]
    fn a_cheap_subtree_merges_in_one_step_from_its_largest_region() {
        let deep = |crowd: f64| two_levels(0.05, crowd);
        let t0 = Instant::now();
        let sustain = RebalanceConfig::default().merge_sustain as usize;
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let planned = rounds(&mut r, &deep(0.05), sustain + 3, t0);
        let merges: Vec<&String> = planned.iter().flatten().collect();
        assert_eq!(merges, vec!["merge 0,0"], "{planned:?}");
        assert_eq!(planned[sustain - 1], vec!["merge 0,0"]);
        let plan = Rebalancer::one_shot(RebalanceConfig::default()).plan(&fresh(&deep(0.05)), t0);
        assert_eq!(
            plan.reshapes[0].shard,
            sid("a"),
            "a holds 5 of the 7 regions"
        );
        assert!(
            plan.reshapes[0].why.contains("its 7 regions"),
            "{}",
            plan.reshapes[0].why
        );
        // Part of the crowd stays in 0,0/3 (3 ms of 10): the cell stays
        // split, the subtree it left merges.
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let planned = rounds(&mut r, &deep(3.0), sustain + 3, t0);
        let merges: Vec<&String> = planned.iter().flatten().collect();
        assert_eq!(merges, vec!["merge 0,0/0"], "{planned:?}");
    }

    /// A crowd leaving: the inner subtree gets cheap first, the whole
    /// cell a few reports later. The inner subtree waits for the cell,
    /// which merges in one step; merged first, its cooldown would hold the
    /// cell's merge back (10 s more in a dispersal run).
    #[test]
    fn a_subtree_waits_for_a_cheap_ancestor_to_merge_it() {
        let tree = |rest: f64| two_levels(rest, 0.05);
        let t0 = Instant::now();
        let sustain = RebalanceConfig::default().merge_sustain as usize;
        let mut r = Rebalancer::new(RebalanceConfig::default());
        // Two reports with 0,0/1 still busy (2 ms of 10: 0,0 is not cheap,
        // 0,0/0 is), then the last of the crowd has left it too.
        let mut planned = rounds(&mut r, &tree(2.0), 2, t0);
        planned.extend(rounds(
            &mut r,
            &tree(0.05),
            sustain + 2,
            t0 + Duration::from_secs(2),
        ));
        let merges: Vec<&String> = planned.iter().flatten().collect();
        assert_eq!(merges, vec!["merge 0,0"], "{planned:?}");
        // An ancestor that stays expensive does not hold its subtree back.
        let mut r = Rebalancer::new(RebalanceConfig::default());
        let planned = rounds(&mut r, &tree(2.0), sustain + 2, t0);
        let merges: Vec<&String> = planned.iter().flatten().collect();
        assert_eq!(merges, vec!["merge 0,0/0"], "{planned:?}");
    }

    #[test]
    fn a_split_region_does_not_merge_back_within_the_cooldown() {
        let t0 = Instant::now();
        let cfg = RebalanceConfig {
            split_sustain: 1,
            merge_sustain: 1,
            ..RebalanceConfig::default()
        };
        let mut r = Rebalancer::new(cfg.clone());
        let hot = view(&[("a", 1, vec![(c(0, 0), 5.0, 300)]), ("b", 1, vec![])]);
        let p = r.plan(&fresh(&hot), t0);
        assert_eq!(p.reshapes.len(), 1);
        // The crowd left at once: the quadrants are cheap, but recently split.
        let quiet = view(&[
            (
                "a",
                1,
                vec![
                    (q("0,0/0"), 0.0, 0),
                    (q("0,0/1"), 0.0, 0),
                    (q("0,0/2"), 0.0, 0),
                    (q("0,0/3"), 0.0, 0),
                ],
            ),
            ("b", 1, vec![]),
        ]);
        let soon = t0 + cfg.reshape_cooldown - Duration::from_secs(1);
        assert!(r.plan(&fresh(&quiet), soon).reshapes.is_empty());
        let later = t0 + cfg.reshape_cooldown + Duration::from_secs(1);
        let p = r.plan(&fresh(&fresh(&quiet)), later);
        assert_eq!(p.reshapes.len(), 1);
        assert_eq!(p.reshapes[0].op, crate::reshape::ReshapeOp::Merge);
        // The merge ends the split's spreading (it would scatter what the
        // merge gathers).
        assert!(r.spreading_until.is_empty());
    }

    #[test]
    fn quadrants_of_a_split_region_are_moved_off_an_overloaded_shard() {
        // Four quadrants at 2.2 ms each on a (88 % of 10 ms), b and c idle.
        let v = view(&[
            (
                "a",
                1,
                vec![
                    (q("0,0/0"), 2.2, 50),
                    (q("0,0/1"), 2.2, 50),
                    (q("0,0/2"), 2.2, 50),
                    (q("0,0/3"), 2.2, 50),
                ],
            ),
            ("b", 1, vec![(c(1, 0), 0.1, 0)]),
            ("c", 1, vec![(c(2, 0), 0.1, 0)]),
        ]);
        let all = plan_all(&RebalanceConfig::default(), &v, 16);
        let moved: Vec<String> = all
            .waves
            .iter()
            .flatten()
            .map(|m| m.cell.to_string())
            .collect();
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|m| m.starts_with("0,0/")), "{moved:?}");
        // The JSON keeps the cell form beside the region.
        let json = serde_json::to_value(&all.waves[0][0]).unwrap();
        assert_eq!(json["cell"]["x"], 0);
        assert!(json["region"].as_str().unwrap().starts_with("0,0/"));
    }

    /// A split or merge and a migration in one cell both take its next
    /// epoch, so the later makes the earlier stale (control.rs cancels it,
    /// and a region already shipped is taken back). Seen in a crowd run: a
    /// quadrant's split planned in the round that moved its cousin.
    #[test]
    fn one_change_per_cell_at_a_time() {
        let cfg = eager();
        let t0 = Instant::now();
        // 0,0 is split on a; 0,0/0 is hot enough to split again (50 % of
        // 10 ms) and 0,0/1 is due to spread to idle b.
        let split = |in_flight: bool| {
            let mut v = view(&[
                (
                    "a",
                    1,
                    quadrants_of_0_0([(5.0, 200), (1.0, 50), (0.5, 20), (0.5, 20)]),
                ),
                ("b", 1, vec![(c(1, 0), 0.1, 0)]),
                ("c", 1, vec![(c(2, 0), 0.1, 0)]),
            ]);
            v = fresh(&v);
            if in_flight {
                v.in_flight.push(InFlight {
                    cell: q("0,0/3"),
                    from: sid("a"),
                    to: sid("c"),
                });
            }
            v
        };
        // With a quadrant of 0,0 migrating, nothing else changes in 0,0.
        let mut r = Rebalancer::new(cfg.clone());
        r.spreading_until.insert(q("0,0"), t0 + SPREAD_WINDOW);
        let p = r.plan(&split(true), t0);
        assert!(p.reshapes.is_empty(), "{:?}", p.reshapes);
        assert!(
            p.moves
                .iter()
                .all(|m| m.cell.cell_id() != CellId::new(0, 0)),
            "{:?}",
            p.moves
        );
        // Without: one change in 0,0 per round, never a split and a move.
        let mut r = Rebalancer::new(cfg);
        r.spreading_until.insert(q("0,0"), t0 + SPREAD_WINDOW);
        let p = r.plan(&split(false), t0);
        let in_cell = p.reshapes.len()
            + p.moves
                .iter()
                .filter(|m| m.cell.cell_id() == CellId::new(0, 0))
                .count();
        assert_eq!(in_cell, 1, "{:?} {:?}", p.reshapes, p.moves);
    }

    #[test]
    fn the_quadrants_of_a_split_crowd_spread_over_idle_shards() {
        let cfg = eager();
        let mut r = Rebalancer::new(cfg.clone());
        let t0 = Instant::now();
        // A crowd costing 7 ms of 10 (70 %: under the high watermark, so no
        // relief) in cell 0,0 on a; b, c, d idle.
        let hot = view(&[
            ("a", 1, vec![(c(0, 0), 7.0, 400)]),
            ("b", 1, vec![(c(1, 0), 0.1, 0)]),
            ("c", 1, vec![(c(2, 0), 0.1, 0)]),
            ("d", 1, vec![(c(3, 0), 0.1, 0)]),
        ]);
        let p = r.plan(&fresh(&hot), t0);
        assert_eq!(p.reshapes.len(), 1);
        // Split: four quadrants of 1.75 ms on a; rounds until nothing moves.
        let mut v = view(&[
            ("a", 1, quadrants_of_0_0([(1.75, 100); 4])),
            ("b", 1, vec![(c(1, 0), 0.1, 0)]),
            ("c", 1, vec![(c(2, 0), 0.1, 0)]),
            ("d", 1, vec![(c(3, 0), 0.1, 0)]),
        ]);
        let mut moved = Vec::new();
        for i in 1..10 {
            let p = r.plan(&fresh(&v), t0 + Duration::from_millis(100 * i));
            if p.moves.is_empty() {
                break;
            }
            assert!(p.moves.iter().all(|m| m.reason == Reason::Spread));
            moved.extend(p.moves.iter().map(|m| m.to.0.clone()));
            v = v.after(&p.moves);
        }
        moved.sort();
        assert_eq!(
            moved,
            vec!["b", "c", "d"],
            "one quadrant to each idle shard"
        );
        let loads = loads(&v, &cfg);
        let total: f64 = loads.values().sum();
        let max = loads.values().copied().fold(0.0, f64::max);
        assert!(max < total / 2.0, "{loads:?}");
    }
}
