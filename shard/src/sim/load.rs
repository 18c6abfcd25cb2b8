//! The shard's load: recent tick durations, the report it publishes for the
//! cluster store (and `tessera ctl`), and the shard-wide gauges.

use super::Shard;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tessera_coordinator::membership::{CellLoad, ShardLoad};

/// How many recent ticks the percentiles cover.
const KEEP: usize = 300;

/// Recent tick durations and where the latest report is published.
#[derive(Debug, Default)]
pub(super) struct TickHistory {
    /// Tick durations, microseconds, oldest first.
    recent: VecDeque<u32>,
    /// The latest report, for the process to send.
    pub(super) board: Arc<parking_lot::Mutex<ShardLoad>>,
}

impl TickHistory {
    fn record(&mut self, took: Duration) {
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent
            .push_back(took.as_micros().min(u32::MAX as u128) as u32);
    }

    /// The `p` quantile (0..=1) of the recent ticks, ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted: Vec<u32> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i] as f64 / 1000.0
    }
}

impl Shard {
    /// The latest load report, refreshed about once a second by the tick
    /// loop.
    pub fn load_board(&self) -> Arc<parking_lot::Mutex<ShardLoad>> {
        self.ticks.board.clone()
    }

    pub(super) fn record_tick(&mut self, took: Duration) {
        self.ticks.record(took);
        if self.tick.is_multiple_of(self.config.tick_hz.max(1) as u64) {
            let report = self.load_report();
            self.record_load_gauges(&report);
            *self.ticks.board.lock() = report;
        }
    }

    /// Shard-wide gauges, refreshed with the load report (once a second):
    /// cells owned, and the mean tick time over the last ticks as a fraction
    /// of the tick budget (what a shard autoscaler targets).
    fn record_load_gauges(&self, report: &ShardLoad) {
        let shard = self.id.0.clone();
        metrics::gauge!("tessera_shard_cells", "shard" => shard.clone())
            .set(self.cells.len() as f64);
        metrics::gauge!("tessera_shard_tick_utilization_ratio", "shard" => shard)
            .set(tick_utilization(&self.ticks.recent, report.tick_budget_ms));
    }

    /// Load of this shard and its cells now.
    pub fn load_report(&self) -> ShardLoad {
        let cells: Vec<CellLoad> = self
            .cells
            .values()
            .map(|c| CellLoad {
                cell: c.id.cell_id(),
                region: (!c.id.is_cell()).then(|| c.id.to_string()),
                epoch: c.epoch,
                entities: c.entity_count(),
                players: c.player_count(),
                ghosts: c.ghost_count(),
                tick_ms: c.cost.mean_ms(),
                tick_p99_ms: c.cost.p99_ms(),
            })
            .collect();
        ShardLoad {
            tick: self.tick,
            tick_p50_ms: self.ticks.percentile_ms(0.5),
            tick_p99_ms: self.ticks.percentile_ms(0.99),
            tick_budget_ms: 1000.0 / self.config.tick_hz.max(1) as f64,
            entities: cells.iter().map(|c| c.entities).sum(),
            players: cells.iter().map(|c| c.players).sum(),
            last_migration_stall_ms: self.migrations.last_stall_ms,
            cells,
        }
    }
}

/// The mean of `ticks_us` (tick durations in microseconds) as a fraction of
/// `budget_ms`; 0 with no ticks or no budget.
fn tick_utilization(ticks_us: &VecDeque<u32>, budget_ms: f64) -> f64 {
    if ticks_us.is_empty() || budget_ms <= 0.0 {
        return 0.0;
    }
    let mean_us = ticks_us.iter().map(|&t| t as f64).sum::<f64>() / ticks_us.len() as f64;
    mean_us / 1000.0 / budget_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_the_mean_tick_over_the_budget() {
        let ticks: VecDeque<u32> = [10_000, 20_000, 30_000].into_iter().collect();
        let u = tick_utilization(&ticks, 40.0);
        assert!((u - 0.5).abs() < 1e-9, "{u}");
    }

    #[test]
    fn utilization_without_ticks_or_budget_is_zero() {
        assert_eq!(tick_utilization(&VecDeque::new(), 33.3), 0.0);
        let ticks: VecDeque<u32> = [1_000].into_iter().collect();
        assert_eq!(tick_utilization(&ticks, 0.0), 0.0);
    }

    #[test]
    fn percentiles_cover_the_last_ticks_only() {
        let mut h = TickHistory::default();
        for _ in 0..KEEP {
            h.record(Duration::from_millis(50));
        }
        for _ in 0..KEEP {
            h.record(Duration::from_millis(2));
        }
        assert_eq!(h.percentile_ms(0.99), 2.0);
        assert_eq!(TickHistory::default().percentile_ms(0.5), 0.0);
    }
}
