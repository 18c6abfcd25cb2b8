//! `tessera ctl`: what operators ask the cluster. Reads the cluster store
//! (registrations, load reports, the cell map, the leader) and renders
//! human tables or JSON: `status`, `shards`, `cells`, `top`, and the plan
//! of `rebalance`. (`move`, `drain` and the execution of a rebalance plan
//! are in the binary's `roles.rs`.)

use crate::cellmap::CellOwner;
use crate::control::{leader_key, Leader};
use crate::membership::{RouterRegistration, ShardLoad, ShardRegistration};
use crate::store::ClusterStore;
use crate::CoordinatorError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use tessera_proto::{CellId, Epoch, RegionId};

#[derive(Clone, Debug, Serialize)]
pub struct ShardRow {
    pub id: String,
    pub addr: String,
    pub node: String,
    pub cells: usize,
    pub entities: usize,
    pub players: usize,
    pub tick_p50_ms: f64,
    pub tick_p99_ms: f64,
    pub tick_budget_ms: f64,
    /// Sum of the mean step times of the cells in its report: the load
    /// the rebalancer works with, milliseconds per tick.
    pub cells_tick_ms: f64,
    /// A drain mark (`draining/<id>`) is set: the rebalancer gives it no cells
    /// (`tessera ctl uncordon` lifts it).
    pub cordoned: bool,
}

/// One leaf region of the cell map: a whole cell, or a region of a split
/// cell (docs/regions.md).
#[derive(Clone, Debug, Serialize)]
pub struct CellRow {
    /// The cell the region is in.
    pub cell: CellId,
    /// The region's text form (`3,-1` for a whole cell, `3,-1/0/2`).
    pub region: String,
    pub owner: String,
    pub epoch: Epoch,
    /// Whether the owner is registered (alive).
    pub owner_live: bool,
    pub entities: Option<usize>,
    pub players: Option<usize>,
    /// The owning shard's tick p99 (a shard ticks all its cells together).
    pub tick_p99_ms: Option<f64>,
    /// This cell's own step time (scripts + physics), mean and p99 over
    /// the last 64 ticks, as its owner reports it.
    pub cell_tick_ms: Option<f64>,
    pub cell_tick_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouterRow {
    pub id: String,
    pub addr: String,
    pub telnet: String,
    pub quic: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub leader: Option<String>,
    pub shards: Vec<ShardRow>,
    pub routers: Vec<RouterRow>,
    pub cells: usize,
    pub cells_without_live_owner: usize,
    pub entities: usize,
    pub players: usize,
    pub worst_tick_p99_ms: f64,
}

/// Everything `ctl` shows, read in one go.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub status: Status,
    pub cells: Vec<CellRow>,
}

fn under<'a>(key: &'a str, prefix: &str, dir: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_prefix(dir)
}

/// Reads the cluster's state.
pub async fn snapshot(
    store: &dyn ClusterStore,
    prefix: &str,
) -> Result<Snapshot, CoordinatorError> {
    let mut regs: BTreeMap<String, ShardRegistration> = BTreeMap::new();
    let mut loads: BTreeMap<String, ShardLoad> = BTreeMap::new();
    let mut routers = Vec::new();
    let mut owners: BTreeMap<RegionId, CellOwner> = BTreeMap::new();
    let mut cordoned: BTreeSet<String> = BTreeSet::new();
    for kv in store.list(prefix).await? {
        let bad = |reason: String| CoordinatorError::BadValue {
            key: kv.key.clone(),
            reason,
        };
        if let Some(id) = under(&kv.key, prefix, "shards/") {
            let r = serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
            regs.insert(id.to_string(), r);
        } else if let Some(id) = under(&kv.key, prefix, "load/") {
            let l = serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
            loads.insert(id.to_string(), l);
        } else if let Some(id) = under(&kv.key, prefix, "routers/") {
            let r: RouterRegistration =
                serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
            routers.push(RouterRow {
                id: id.to_string(),
                addr: r.addr.to_string(),
                telnet: r.telnet.to_string(),
                quic: r.quic.to_string(),
            });
        } else if let Some(id) = under(&kv.key, prefix, "draining/") {
            cordoned.insert(id.to_string());
        } else if let Some(cell) = under(&kv.key, prefix, "cells/") {
            let cell: CellId = cell.parse().map_err(|e| bad(format!("{e}")))?;
            let tree = crate::cellmap::parse_tree(&kv.key, &kv.value)?;
            owners.extend(tree.leaves(cell).map(|(r, o)| (r, o.clone())));
        }
    }
    let leader = match store.get(&leader_key(prefix)).await? {
        Some(kv) => serde_json::from_slice::<Leader>(&kv.value)
            .ok()
            .map(|l| l.id),
        None => None,
    };
    let shards: Vec<ShardRow> = regs
        .iter()
        .map(|(id, r)| {
            let load = loads.get(id).cloned().unwrap_or_default();
            ShardRow {
                id: id.clone(),
                addr: r.addr.to_string(),
                node: r.node.clone(),
                cells: owners.values().filter(|o| &o.owner.0 == id).count(),
                entities: load.entities,
                players: load.players,
                tick_p50_ms: load.tick_p50_ms,
                tick_p99_ms: load.tick_p99_ms,
                tick_budget_ms: load.tick_budget_ms,
                cells_tick_ms: load.cells.iter().map(|c| c.tick_ms).sum(),
                cordoned: cordoned.contains(id),
            }
        })
        .collect();
    let cells: Vec<CellRow> = owners
        .iter()
        .map(|(region, o)| {
            let load = loads.get(&o.owner.0);
            // A report entry names its cell, and its region when that is
            // not the whole cell.
            let text = region.to_string();
            let cell_load = load.and_then(|l| {
                l.cells.iter().find(|c| {
                    c.cell == region.cell_id()
                        && c.region.as_deref().map_or(region.is_cell(), |r| r == text)
                })
            });
            CellRow {
                cell: region.cell_id(),
                region: region.to_string(),
                owner: o.owner.0.clone(),
                epoch: o.epoch,
                owner_live: regs.contains_key(&o.owner.0),
                entities: cell_load.map(|c| c.entities),
                players: cell_load.map(|c| c.players),
                tick_p99_ms: load.map(|l| l.tick_p99_ms),
                cell_tick_ms: cell_load.map(|c| c.tick_ms),
                cell_tick_p99_ms: cell_load.map(|c| c.tick_p99_ms),
            }
        })
        .collect();
    let status = Status {
        leader,
        cells: cells.len(),
        cells_without_live_owner: cells.iter().filter(|c| !c.owner_live).count(),
        entities: shards.iter().map(|s| s.entities).sum(),
        players: shards.iter().map(|s| s.players).sum(),
        worst_tick_p99_ms: shards.iter().map(|s| s.tick_p99_ms).fold(0.0, f64::max),
        shards,
        routers,
    };
    Ok(Snapshot { status, cells })
}

/// Renders rows as an aligned text table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

pub fn render_shards(s: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = s
        .status
        .shards
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.addr.clone(),
                r.node.clone(),
                r.cells.to_string(),
                r.entities.to_string(),
                r.players.to_string(),
                ms(r.tick_p50_ms),
                ms(r.tick_p99_ms),
                ms(r.tick_budget_ms),
                ms(r.cells_tick_ms),
                if r.cordoned { "cordoned" } else { "ready" }.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SHARD",
            "ADDRESS",
            "NODE",
            "CELLS",
            "ENTITIES",
            "PLAYERS",
            "TICK_P50_MS",
            "TICK_P99_MS",
            "BUDGET_MS",
            "CELLS_MS",
            "STATE",
        ],
        &rows,
    )
}

pub fn render_cells(s: &Snapshot) -> String {
    let opt = |v: Option<usize>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = s
        .cells
        .iter()
        .map(|c| {
            vec![
                c.region.clone(),
                if c.owner_live {
                    c.owner.clone()
                } else {
                    format!("{} (gone)", c.owner)
                },
                c.epoch.to_string(),
                opt(c.entities),
                opt(c.players),
                c.tick_p99_ms.map(ms).unwrap_or_else(|| "-".into()),
                c.cell_tick_ms.map(ms2).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "REGION",
            "OWNER",
            "EPOCH",
            "ENTITIES",
            "PLAYERS",
            "TICK_P99_MS",
            "STEP_MS",
        ],
        &rows,
    )
}

fn ms2(v: f64) -> String {
    format!("{v:.2}")
}

/// What one refresh of `tessera ctl top` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Top {
    pub leader: Option<String>,
    pub shards: Vec<ShardRow>,
    /// The most expensive cells first.
    pub hottest_cells: Vec<CellRow>,
}

/// Shards, and the `cells` most expensive cells.
pub fn top(s: &Snapshot, cells: usize) -> Top {
    let mut hot: Vec<CellRow> = s.cells.clone();
    hot.sort_by(|a, b| {
        b.cell_tick_ms
            .unwrap_or(0.0)
            .total_cmp(&a.cell_tick_ms.unwrap_or(0.0))
            .then(a.cell.cmp(&b.cell))
    });
    hot.truncate(cells);
    Top {
        leader: s.status.leader.clone(),
        shards: s.status.shards.clone(),
        hottest_cells: hot,
    }
}

pub fn render_top(t: &Top) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leader: {}",
        t.leader
            .as_deref()
            .unwrap_or("none (no coordinator running)")
    );
    let rows: Vec<Vec<String>> = t
        .shards
        .iter()
        .map(|r| {
            let load = if r.tick_budget_ms > 0.0 {
                format!("{:.0}%", 100.0 * r.cells_tick_ms / r.tick_budget_ms)
            } else {
                "-".into()
            };
            vec![
                r.id.clone(),
                r.cells.to_string(),
                r.entities.to_string(),
                r.players.to_string(),
                ms2(r.cells_tick_ms),
                load,
                ms(r.tick_p99_ms),
                ms(r.tick_budget_ms),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SHARD",
            "CELLS",
            "ENTITIES",
            "PLAYERS",
            "CELLS_MS",
            "LOAD",
            "TICK_P99_MS",
            "BUDGET_MS",
        ],
        &rows,
    ));
    out.push('\n');
    let opt = |v: Option<usize>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let optms = |v: Option<f64>| v.map(ms2).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = t
        .hottest_cells
        .iter()
        .map(|c| {
            vec![
                c.region.clone(),
                c.owner.clone(),
                opt(c.entities),
                opt(c.players),
                optms(c.cell_tick_ms),
                optms(c.cell_tick_p99_ms),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "REGION",
            "OWNER",
            "ENTITIES",
            "PLAYERS",
            "STEP_MS",
            "STEP_P99_MS",
        ],
        &rows,
    ));
    out
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// `tessera ctl rebalance` as a table: the moves wave by wave, then each
/// shard's load now and after the plan, then what cannot be helped.
pub fn render_plan(
    plan: &crate::rebalance::PlanAll,
    now: &std::collections::BTreeMap<tessera_proto::ShardId, f64>,
    after: &std::collections::BTreeMap<tessera_proto::ShardId, f64>,
) -> String {
    let mut out = String::new();
    let moves: Vec<Vec<String>> = plan
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, wave)| {
            wave.iter().map(move |m| {
                vec![
                    (i + 1).to_string(),
                    m.cell.to_string(),
                    m.from.to_string(),
                    m.to.to_string(),
                    m.reason.to_string(),
                    m.players.to_string(),
                    ms2(m.cost_ms),
                    format!("{} -> {}", pct(m.from_load_before), pct(m.from_load_after)),
                    format!("{} -> {}", pct(m.to_load_before), pct(m.to_load_after)),
                ]
            })
        })
        .collect();
    if !plan.reshapes.is_empty() {
        let rows: Vec<Vec<String>> = plan
            .reshapes
            .iter()
            .map(|r| {
                vec![
                    r.op.to_string(),
                    r.region.to_string(),
                    r.shard.to_string(),
                    ms2(r.cost_ms),
                    pct(r.load),
                    r.why.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["RESHAPE", "REGION", "SHARD", "COST_MS", "LOAD", "WHY"],
            &rows,
        ));
        out.push('\n');
    }
    if moves.is_empty() {
        out.push_str("nothing to move\n");
    } else {
        out.push_str(&table(
            &[
                "STEP",
                "REGION",
                "FROM",
                "TO",
                "REASON",
                "PLAYERS",
                "COST_MS",
                "FROM_LOAD",
                "TO_LOAD",
            ],
            &moves,
        ));
    }
    out.push('\n');
    let shards: Vec<Vec<String>> = now
        .iter()
        .map(|(id, l)| {
            vec![
                id.to_string(),
                pct(*l),
                after.get(id).map(|a| pct(*a)).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(&["SHARD", "LOAD_NOW", "LOAD_AFTER"], &shards));
    for b in &plan.blocked {
        let _ = writeln!(out, "cannot help {}: {}", b.shard, b.why);
    }
    out
}

pub fn render_status(s: &Snapshot) -> String {
    let st = &s.status;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leader: {}",
        st.leader
            .as_deref()
            .unwrap_or("none (no coordinator running)")
    );
    let _ = writeln!(
        out,
        "shards: {}   routers: {}   cells: {} ({} without a live owner)",
        st.shards.len(),
        st.routers.len(),
        st.cells,
        st.cells_without_live_owner
    );
    let _ = writeln!(
        out,
        "entities: {}   players: {}   worst tick p99: {} ms",
        st.entities,
        st.players,
        ms(st.worst_tick_p99_ms)
    );
    let cordoned: Vec<&str> = st
        .shards
        .iter()
        .filter(|s| s.cordoned)
        .map(|s| s.id.as_str())
        .collect();
    if !cordoned.is_empty() {
        let _ = writeln!(
            out,
            "cordoned: {} (given no cells; `tessera ctl uncordon SHARD` lifts it)",
            cordoned.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{load_key, shard_key, CellLoad};
    use crate::store::MemStore;
    use tessera_proto::ShardId;

    #[tokio::test]
    async fn snapshot_joins_registrations_loads_and_cells() {
        let store = MemStore::new();
        let s1 = ShardId::new("s1");
        let reg = ShardRegistration {
            addr: "127.0.0.1:7000".parse().unwrap(),
            node: "opi-1".into(),
            capacity: 1,
            version: "0".into(),
        };
        store
            .put(
                &shard_key("/t/", &s1),
                serde_json::to_vec(&reg).unwrap(),
                None,
            )
            .await
            .unwrap();
        let load = ShardLoad {
            tick: 90,
            tick_p50_ms: 1.5,
            tick_p99_ms: 3.25,
            tick_budget_ms: 33.3,
            entities: 7,
            players: 2,
            last_migration_stall_ms: None,
            cells: vec![CellLoad {
                cell: CellId::new(0, 0),
                region: None,
                epoch: Epoch(1),
                entities: 7,
                players: 2,
                ghosts: 0,
                tick_ms: 0.75,
                tick_p99_ms: 1.5,
            }],
        };
        store
            .put(
                &load_key("/t/", &s1),
                serde_json::to_vec(&load).unwrap(),
                None,
            )
            .await
            .unwrap();
        for (cell, owner) in [(CellId::new(0, 0), "s1"), (CellId::new(1, 0), "dead")] {
            let o = CellOwner {
                owner: ShardId::new(owner),
                epoch: Epoch(1),
            };
            store
                .put(
                    &crate::cellmap::cell_key("/t/", cell),
                    serde_json::to_vec(&o).unwrap(),
                    None,
                )
                .await
                .unwrap();
        }
        let snap = snapshot(&store, "/t/").await.unwrap();
        assert_eq!(snap.status.shards.len(), 1);
        assert_eq!(snap.status.shards[0].cells, 1);
        assert_eq!(snap.status.entities, 7);
        assert_eq!(snap.status.cells_without_live_owner, 1);
        assert_eq!(snap.cells[0].entities, Some(7));
        assert_eq!(snap.cells[1].entities, None);
        let cells = render_cells(&snap);
        assert!(cells.contains("dead (gone)"), "{cells}");
        let shards = render_shards(&snap);
        assert!(shards.lines().nth(1).unwrap().starts_with("s1"), "{shards}");
        assert!(render_status(&snap).contains("leader: none"));
        assert!(!snap.status.shards[0].cordoned);
        assert!(shards.lines().nth(1).unwrap().contains("ready"), "{shards}");

        // A drain mark shows in `shards`, `status` and the JSON.
        store
            .put(
                &crate::migration::draining_key("/t/", &s1),
                b"{}".to_vec(),
                None,
            )
            .await
            .unwrap();
        let snap = snapshot(&store, "/t/").await.unwrap();
        assert!(snap.status.shards[0].cordoned);
        let shards = render_shards(&snap);
        assert!(
            shards.lines().nth(1).unwrap().contains("cordoned"),
            "{shards}"
        );
        let status = render_status(&snap);
        assert!(status.contains("cordoned: s1"), "{status}");
    }
}
