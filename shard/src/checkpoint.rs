//! Cell checkpoints: every cell's entities, written to persistence at a fixed interval and after
//! a migration, so that a cell whose shard dies reopens elsewhere as it was at its last
//! checkpoint (docs/ARCHITECTURE.md, "Failover").
//!
//! **Keys** (tuple-encoded, `tessera_persistence::key`), one set per region (a whole cell or a
//! quadrant of a split one, by its text form: `3,-1` or `3,-1/0/2`; docs/regions.md):
//! - `("checkpoint", "<region>", "owner")`: the epoch of the owner that last claimed or wrote the
//!   region, 8 bytes big-endian;
//! - `("checkpoint", "<region>", "state")`: the [`CellCheckpoint`], chunked.
//!
//! **Format.** A state value is `0xFF`, a format version byte, then the bincode of the
//! checkpoint. Version 2 names a [`RegionId`]. Version 1 values (written before regions) carry
//! no prefix, just the bincode of a checkpoint that named a `CellId`; they still load, as whole
//! cells. A version 1 value can never start with `0xFF` (bincode's variable-length integers
//! never begin with that byte), so the two cannot be confused.
//!
//! **Fencing.** Epochs only grow while a cluster lives, so a write is refused when the stored
//! owner epoch is newer than the writer's: a shard that lost a cell (to a migration or a
//! failover) can never overwrite the new owner's checkpoint. A shard opening a cell that did
//! not arrive by migration *claims* it: in one transaction it reads the checkpoint and sets the
//! owner epoch to its own, whatever was stored (a cluster started on a fresh etcd counts epochs
//! from 1 again, and the map is the authority).
//!
//! Players are not restored from checkpoints: routers re-join their players on the new owner at
//! their last known position, so a restored copy would be a duplicate.
//!
//! Writes run on their own thread, never the simulation thread; if the store falls behind, a
//! round of checkpoints is skipped (and counted), never queued without bound.

use crossbeam_channel::{Sender, TrySendError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tessera_persistence::{get_chunked, key, set_chunked, Database, StoreError, Transaction};
use tessera_proto::cluster::EntityTransfer;
use tessera_proto::{CellId, Epoch, RegionId, ShardId};

/// Largest checkpoint we decode (a cell of ~100k entities).
const MAX_CHECKPOINT: usize = 64 * 1024 * 1024;

/// Stop adding cells to one transaction past this many bytes (the limit is 10 MB).
const BATCH_BYTES: usize = 6 * 1024 * 1024;

/// How a shard checkpoints its cells.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub db: Database,
    /// Time between checkpoints of every cell.
    pub interval: Duration,
}

/// One region as it was at a tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellCheckpoint {
    pub region: RegionId,
    pub epoch: Epoch,
    pub shard: ShardId,
    pub tick: u64,
    pub saved_unix_ms: u64,
    pub entities: Vec<EntityTransfer>,
}

/// What a checkpoint looked like before regions (format version 1).
#[derive(Deserialize)]
struct CellCheckpointV1 {
    cell: CellId,
    epoch: Epoch,
    shard: ShardId,
    tick: u64,
    saved_unix_ms: u64,
    entities: Vec<EntityTransfer>,
}

/// The first byte of a versioned checkpoint value.
const VERSIONED: u8 = 0xFF;
/// The format this release writes.
const FORMAT: u8 = 2;

/// The stored bytes of a checkpoint.
pub fn encode(cp: &CellCheckpoint) -> Result<Vec<u8>, tessera_proto::frame::FrameError> {
    let body = tessera_proto::frame::encode(cp)?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&[VERSIONED, FORMAT]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a checkpoint in this release's format or the one before.
pub fn decode(bytes: &[u8]) -> Result<CellCheckpoint, String> {
    match bytes {
        [VERSIONED, FORMAT, body @ ..] => {
            tessera_proto::frame::decode(body, MAX_CHECKPOINT).map_err(|e| e.to_string())
        }
        [VERSIONED, version, ..] => Err(format!(
            "checkpoint format {version} is newer than this release reads ({FORMAT})"
        )),
        v1 => {
            let old: CellCheckpointV1 =
                tessera_proto::frame::decode(v1, MAX_CHECKPOINT).map_err(|e| e.to_string())?;
            Ok(CellCheckpoint {
                region: RegionId::cell(old.cell),
                epoch: old.epoch,
                shard: old.shard,
                tick: old.tick,
                saved_unix_ms: old.saved_unix_ms,
                entities: old.entities,
            })
        }
    }
}

fn owner_key(cell: RegionId) -> Vec<u8> {
    key(&[b"checkpoint", cell.to_string().as_bytes(), b"owner"])
}

fn state_key(cell: RegionId) -> Vec<u8> {
    key(&[b"checkpoint", cell.to_string().as_bytes(), b"state"])
}

fn read_owner(tx: &mut dyn Transaction, cell: RegionId) -> Result<Option<Epoch>, StoreError> {
    match tx.get(&owner_key(cell))? {
        None => Ok(None),
        Some(bytes) => {
            let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("checkpoint owner of cell {cell} is not 8 bytes"))
            })?;
            Ok(Some(Epoch(u64::from_be_bytes(raw))))
        }
    }
}

fn read_state(
    tx: &mut dyn Transaction,
    cell: RegionId,
) -> Result<Option<CellCheckpoint>, StoreError> {
    match get_chunked(tx, &state_key(cell))? {
        None => Ok(None),
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("checkpoint of region {cell}: {e}"))),
    }
}

/// Claims `cell` for the owner at `epoch` and returns its last checkpoint, if any, in one
/// transaction.
pub fn claim(
    db: &Database,
    cell: RegionId,
    epoch: Epoch,
) -> Result<Option<CellCheckpoint>, StoreError> {
    db.transact(|tx| {
        let state = read_state(tx, cell)?;
        tx.set(&owner_key(cell), &epoch.0.to_be_bytes())?;
        Ok(state)
    })
}

/// The last checkpoint of `cell`, if any (for operators and tests).
pub fn load(db: &Database, cell: RegionId) -> Result<Option<CellCheckpoint>, StoreError> {
    db.transact(|tx| read_state(tx, cell))
}

/// What became of one cell's checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Saved {
    Written,
    /// A newer owner holds the cell; nothing was written.
    Fenced {
        owner: Epoch,
    },
}

/// Writes checkpoints, each unless a newer owner holds its cell, in one transaction.
pub fn save(
    db: &Database,
    checkpoints: &[(CellCheckpoint, Vec<u8>)],
) -> Result<Vec<Saved>, StoreError> {
    db.transact(|tx| {
        let mut out = Vec::with_capacity(checkpoints.len());
        for (cp, bytes) in checkpoints {
            match read_owner(tx, cp.region)? {
                Some(owner) if owner > cp.epoch => out.push(Saved::Fenced { owner }),
                _ => {
                    tx.set(&owner_key(cp.region), &cp.epoch.0.to_be_bytes())?;
                    set_chunked(tx, &state_key(cp.region), bytes)?;
                    out.push(Saved::Written);
                }
            }
        }
        Ok(out)
    })
}

/// The thread that writes a shard's checkpoints.
pub struct Writer {
    tx: Sender<Vec<CellCheckpoint>>,
    shard: ShardId,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    pub fn start(shard: ShardId, db: Database) -> std::io::Result<Writer> {
        // Room for one round in flight and one waiting: a slow store skips rounds.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<CellCheckpoint>>(1);
        let id = shard.clone();
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint-{shard}"))
            .spawn(move || {
                // Checkpoints the store has not taken yet (it was down), newest per cell. A
                // newer round replaces them, so a store that comes back gets each cell's
                // latest state, and nothing older than what it already had.
                let mut pending: BTreeMap<RegionId, CellCheckpoint> = BTreeMap::new();
                for round in rx {
                    for cp in round {
                        pending.insert(cp.region, cp);
                    }
                    let written = write_round(&id, &db, &mut pending);
                    metrics::gauge!("tessera_shard_checkpoints_pending", "shard" => id.0.clone())
                        .set(pending.len() as f64);
                    tracing::trace!(shard = %id, written, pending = pending.len(), "checkpoints written");
                }
                if !pending.is_empty() {
                    tracing::error!(shard = %id, cells = pending.len(), "stopping with checkpoints the store never took");
                }
            })?;
        Ok(Writer { tx, shard, thread })
    }

    /// Writes a last round after every round queued before it (so an older
    /// round can never overwrite it), then stops the thread. Returns when it
    /// is written.
    pub fn finish(self, last: Vec<CellCheckpoint>) {
        let Writer { tx, shard, thread } = self;
        let cells = last.len();
        if tx.send(last).is_err() {
            tracing::error!(shard = %shard, "checkpoint writer has stopped; final checkpoint not written");
        }
        drop(tx);
        if thread.join().is_err() {
            tracing::error!(shard = %shard, "checkpoint writer panicked");
        } else if cells > 0 {
            tracing::info!(shard = %shard, cells, "final checkpoint written");
        }
    }

    /// Queues a round of checkpoints; skips it (and returns false) if the previous rounds are
    /// still being written.
    pub fn submit(&self, round: Vec<CellCheckpoint>) -> bool {
        match self.tx.try_send(round) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                metrics::counter!("tessera_shard_checkpoints_skipped_total", "shard" => self.shard.0.clone())
                    .increment(1);
                tracing::debug!(shard = %self.shard, "persistence is behind; skipping a round of checkpoints");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!(shard = %self.shard, "checkpoint writer has stopped");
                false
            }
        }
    }
}

/// Writes the pending checkpoints in transactions of at most
/// [`BATCH_BYTES`] and removes the ones the store took (or fenced off);
/// returns how many were written. Errors are logged and leave the rest
/// pending.
fn write_round(
    shard: &ShardId,
    db: &Database,
    pending: &mut BTreeMap<RegionId, CellCheckpoint>,
) -> usize {
    let started = std::time::Instant::now();
    let mut batch: Vec<(CellCheckpoint, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    let mut written = 0;
    let mut down = false;
    // Writes a batch; a batch the store did not take goes back to `pending`.
    let mut flush = |batch: &mut Vec<(CellCheckpoint, Vec<u8>)>,
                     pending: &mut BTreeMap<RegionId, CellCheckpoint>| {
        if batch.is_empty() {
            return;
        }
        if down {
            pending.extend(batch.drain(..).map(|(cp, _)| (cp.region, cp)));
            return;
        }
        match save(db, batch) {
            Ok(results) => {
                for ((cp, _), saved) in batch.iter().zip(results) {
                    match saved {
                        Saved::Written => written += 1,
                        Saved::Fenced { owner } => {
                            tracing::warn!(shard = %shard, cell = %cp.region, epoch = %cp.epoch, owner = %owner, "checkpoint refused: a newer owner holds the cell")
                        }
                    }
                }
                batch.clear();
            }
            Err(e) => {
                metrics::counter!("tessera_shard_checkpoint_errors_total", "shard" => shard.0.clone())
                    .increment(1);
                tracing::error!(shard = %shard, cells = batch.len(), error = %e, "cannot write checkpoints; keeping them for the next round");
                // The store is down: keep everything for the next round rather than wait for
                // each remaining batch to time out too.
                down = true;
                pending.extend(batch.drain(..).map(|(cp, _)| (cp.region, cp)));
            }
        }
    };
    for (_, cp) in std::mem::take(pending) {
        let encoded = match encode(&cp) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(shard = %shard, cell = %cp.region, error = %e, "cannot encode a checkpoint");
                continue;
            }
        };
        if bytes + encoded.len() > BATCH_BYTES {
            flush(&mut batch, pending);
            bytes = 0;
        }
        bytes += encoded.len();
        batch.push((cp, encoded));
    }
    flush(&mut batch, pending);
    metrics::histogram!("tessera_shard_checkpoint_seconds", "shard" => shard.0.clone())
        .record(started.elapsed().as_secs_f64());
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(cell: RegionId, epoch: u64, tick: u64) -> CellCheckpoint {
        CellCheckpoint {
            region: cell,
            epoch: Epoch(epoch),
            shard: ShardId::new("shard-1"),
            tick,
            saved_unix_ms: 0,
            entities: Vec::new(),
        }
    }

    fn encoded(c: CellCheckpoint) -> (CellCheckpoint, Vec<u8>) {
        let b = encode(&c).unwrap();
        (c, b)
    }

    /// A store that refuses everything while `down` is set, as an
    /// unreachable persistence service does.
    struct Outage {
        inner: Database,
        down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl tessera_persistence::Backend for Outage {
        fn attempt(
            &self,
            body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the store is down".into()));
            }
            self.inner.transact(|tx| body(tx))
        }

        fn describe(&self) -> String {
            "outage wrapper".into()
        }

        fn snapshot(
            &self,
        ) -> Result<std::sync::Arc<dyn tessera_persistence::Snapshot>, StoreError> {
            self.inner.snapshot()
        }
    }

    #[test]
    fn checkpoints_wait_out_an_outage_and_land_when_the_store_returns() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let db = Database::new(std::sync::Arc::new(Outage {
            inner: inner.clone(),
            down: down.clone(),
        }));
        let (a, b) = (
            RegionId::cell(CellId::new(0, 0)),
            RegionId::cell(CellId::new(1, 0)),
        );
        let writer = Writer::start(ShardId::new("shard-1"), db).unwrap();
        let submit = |round: Vec<CellCheckpoint>| {
            // The writer may still be busy with the previous round.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !writer.submit(round.clone()) {
                assert!(std::time::Instant::now() < deadline, "writer stuck");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        submit(vec![cp(a, 1, 10), cp(b, 1, 10)]);
        submit(vec![cp(a, 1, 11)]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            load(&inner, a).unwrap().is_none(),
            "nothing lands while down"
        );
        down.store(false, std::sync::atomic::Ordering::SeqCst);
        // The next round carries the buffered cells along with its own.
        writer.finish(vec![cp(a, 1, 12)]);
        assert_eq!(load(&inner, a).unwrap().unwrap().tick, 12);
        assert_eq!(
            load(&inner, b).unwrap().unwrap().tick,
            10,
            "the cell checkpointed only during the outage is not lost"
        );
    }

    #[test]
    fn an_older_owner_cannot_overwrite_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let cell = RegionId::cell(CellId::new(-1, 0));
        assert_eq!(
            save(&db, &[encoded(cp(cell, 1, 10))]).unwrap(),
            vec![Saved::Written]
        );
        // The cell migrates: the new owner (epoch 2) claims it and sees epoch 1's state.
        let seen = claim(&db, cell, Epoch(2)).unwrap().unwrap();
        assert_eq!(seen.tick, 10);
        // The old owner's late write is refused; the new owner's goes through.
        assert_eq!(
            save(&db, &[encoded(cp(cell, 1, 11))]).unwrap(),
            vec![Saved::Fenced { owner: Epoch(2) }]
        );
        assert_eq!(
            save(&db, &[encoded(cp(cell, 2, 12))]).unwrap(),
            vec![Saved::Written]
        );
        assert_eq!(load(&db, cell).unwrap().unwrap().tick, 12);
    }

    #[test]
    fn a_claim_wins_over_epochs_of_an_earlier_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let cell = RegionId::cell(CellId::new(0, 0));
        save(&db, &[encoded(cp(cell, 7, 1))]).unwrap();
        // A fresh etcd counts from 1 again; the owner at epoch 1 claims the cell.
        assert!(claim(&db, cell, Epoch(1)).unwrap().is_some());
        assert_eq!(
            save(&db, &[encoded(cp(cell, 1, 2))]).unwrap(),
            vec![Saved::Written]
        );
    }

    #[test]
    fn a_corrupt_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let cell = RegionId::cell(CellId::new(0, 0));
        db.transact(|tx| set_chunked(tx, &state_key(cell), b"not a checkpoint"))
            .unwrap();
        let err = load(&db, cell).unwrap_err().to_string();
        assert!(err.contains("checkpoint of region 0,0"), "{err}");
    }

    /// What the release before regions wrote: no version prefix, a
    /// `CellId`. Encoded here field by field as that release did.
    #[derive(Serialize)]
    struct WrittenBeforeRegions {
        cell: CellId,
        epoch: Epoch,
        shard: ShardId,
        tick: u64,
        saved_unix_ms: u64,
        entities: Vec<EntityTransfer>,
    }

    #[test]
    fn a_checkpoint_written_before_regions_loads_as_a_whole_cell() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let cell = CellId::new(2, -3);
        let old = tessera_proto::frame::encode(&WrittenBeforeRegions {
            cell,
            epoch: Epoch(4),
            shard: ShardId::new("shard-1"),
            tick: 77,
            saved_unix_ms: 1_795_000_000_000,
            entities: Vec::new(),
        })
        .unwrap();
        assert_ne!(old[0], VERSIONED);
        let region = RegionId::cell(cell);
        db.transact(|tx| set_chunked(tx, &state_key(region), &old))
            .unwrap();
        let cp = load(&db, region).unwrap().unwrap();
        assert_eq!((cp.region, cp.epoch, cp.tick), (region, Epoch(4), 77));
    }

    #[test]
    fn regions_of_one_cell_have_checkpoints_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let [nw, ne, ..] = RegionId::cell(CellId::new(0, 0)).children().unwrap();
        save(&db, &[encoded(cp(nw, 3, 1)), encoded(cp(ne, 4, 2))]).unwrap();
        assert_eq!(load(&db, nw).unwrap().unwrap().tick, 1);
        assert_eq!(load(&db, ne).unwrap().unwrap().region, ne);
        assert!(load(&db, RegionId::cell(CellId::new(0, 0)))
            .unwrap()
            .is_none());
        // A checkpoint of a format from the future is a clear error.
        db.transact(|tx| set_chunked(tx, &state_key(nw), &[VERSIONED, 9, 0]))
            .unwrap();
        let err = load(&db, nw).unwrap_err().to_string();
        assert!(err.contains("format 9 is newer"), "{err}");
    }
}
