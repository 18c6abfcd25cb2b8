//! When the shard writes checkpoints: a full round every interval, the
//! cells NPCs crossed into or out of (to or from another shard) at the end
//! of the tick they did, a migrated cell as soon as it opens, and every
//! cell on a clean stop. What a checkpoint holds and how it is fenced is
//! in `crate::checkpoint`.

use super::Shard;
use crate::checkpoint::{CellCheckpoint, Writer};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tessera_coordinator::migration::now_unix_ms;
use tessera_proto::RegionId;

/// The shard's checkpoint rounds.
pub(super) struct Checkpoints {
    writer: Writer,
    interval: Duration,
    /// When the next full round is due; set by the first tick.
    due: Option<Instant>,
    /// Cells an NPC entered from, or left to, another shard since their
    /// last checkpoint: written at the end of the tick, so a failover
    /// neither loses nor duplicates that NPC.
    dirty: BTreeSet<RegionId>,
}

/// What a round writes.
#[derive(Debug, PartialEq)]
enum Round {
    All,
    Dirty,
    Nothing,
}

impl Checkpoints {
    pub(super) fn new(writer: Writer, interval: Duration) -> Checkpoints {
        Checkpoints {
            writer,
            interval,
            due: None,
            dirty: BTreeSet::new(),
        }
    }

    /// Which round is due at `now`; a full round moves the next one on.
    fn round(&mut self, now: Instant) -> Round {
        let due = *self.due.get_or_insert(now + self.interval);
        if now >= due {
            self.due = Some(now + self.interval);
            Round::All
        } else if !self.dirty.is_empty() {
            Round::Dirty
        } else {
            Round::Nothing
        }
    }
}

impl Shard {
    /// Cell `cell` must be written at the end of this tick (an NPC crossed
    /// its border to or from another shard).
    pub(super) fn mark_dirty(&mut self, cell: RegionId) {
        if let Some(c) = &mut self.saving {
            c.dirty.insert(cell);
        }
    }

    /// The current state of `cells`, as checkpoints.
    fn capture(&self, cells: &[RegionId]) -> Vec<CellCheckpoint> {
        let saved_unix_ms = now_unix_ms();
        cells
            .iter()
            .filter_map(|id| self.cells.get(id))
            .map(|cell| CellCheckpoint {
                region: cell.id,
                epoch: cell.epoch,
                shard: self.id.clone(),
                tick: self.tick,
                saved_unix_ms,
                entities: cell
                    .entity_ids()
                    .into_iter()
                    .filter_map(|e| cell.export(e))
                    .collect(),
            })
            .collect()
    }

    /// Queues checkpoints of `cells` for the writer thread; false if the
    /// writer is still busy with earlier ones.
    pub(super) fn checkpoint(&self, cells: &[RegionId]) -> bool {
        match &self.saving {
            Some(c) => c.writer.submit(self.capture(cells)),
            None => true,
        }
    }

    pub(super) fn checkpoint_if_due(&mut self, now: Instant) {
        let Some(saving) = &mut self.saving else {
            return;
        };
        let ids: Vec<RegionId> = match saving.round(now) {
            Round::All => self.cells.keys().copied().collect(),
            Round::Dirty => saving.dirty.iter().copied().collect(),
            Round::Nothing => return,
        };
        if self.checkpoint(&ids) {
            if let Some(saving) = &mut self.saving {
                saving.dirty.clear();
            }
        }
    }

    /// On a clean stop, the cells still here are written before the thread ends.
    pub(super) fn final_checkpoint(&mut self) {
        let ids: Vec<RegionId> = self.cells.keys().copied().collect();
        let last = self.capture(&ids);
        if let Some(saving) = self.saving.take() {
            saving.writer.finish(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_persistence::Database;
    use tessera_proto::ShardId;

    #[test]
    fn a_full_round_comes_every_interval_and_dirty_cells_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("t.redb")).unwrap();
        let writer = Writer::start(ShardId::new("a"), db).unwrap();
        let interval = Duration::from_secs(1);
        let mut c = Checkpoints::new(writer, interval);
        let t0 = Instant::now();
        assert_eq!(
            c.round(t0),
            Round::Nothing,
            "the first tick only sets the clock"
        );
        c.dirty
            .insert(RegionId::cell(tessera_proto::CellId::new(0, 0)));
        assert_eq!(c.round(t0 + Duration::from_millis(10)), Round::Dirty);
        assert_eq!(c.round(t0 + interval), Round::All);
        assert_eq!(
            c.round(t0 + interval + Duration::from_millis(1)),
            Round::Dirty
        );
        c.dirty.clear();
        assert_eq!(
            c.round(t0 + interval * 2 - Duration::from_millis(1)),
            Round::Nothing
        );
        assert_eq!(c.round(t0 + interval * 2), Round::All);
    }
}
