//! Channel history and mutes in persistence, and the memory buffer that lets delivery go on
//! while the store is down.
//!
//! Every line goes through [`HistoryLog`]: [`HistoryLog::push`] only queues it (never blocks,
//! never fails); a writer task appends the queue to the store in order, in batches, and retries
//! every second while the store fails. The queue is bounded: past its capacity the oldest
//! lines are dropped, counted in `tessera_chat_history_dropped_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tessera_persistence::{key, parse_key, prefix_range, Database, StoreError, Transaction};

use crate::wire::ChatLine;
use crate::HISTORY_KEEP;

/// Lines written per transaction.
const BATCH: usize = 256;
/// How often a failing store is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Largest stored line we decode.
const MAX_STORED_LINE: usize = 16 * 1024;

fn channel_prefix(channel: &str) -> Vec<u8> {
    key(&[b"chat", b"history", channel.as_bytes()])
}

fn line_key(channel: &str, seq: u64) -> Vec<u8> {
    key(&[b"chat", b"history", channel.as_bytes(), &seq.to_be_bytes()])
}

fn mute_key(folded_name: &str) -> Vec<u8> {
    key(&[b"chat", b"mute", folded_name.as_bytes()])
}

fn seq_of(k: &[u8]) -> Option<u64> {
    let parts = parse_key(k)?;
    let bytes: [u8; 8] = parts.get(3)?.as_slice().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Appends `lines` in order, keeping the last [`HISTORY_KEEP`] of each channel.
fn append(tx: &mut dyn Transaction, lines: &[Pending]) -> Result<(), StoreError> {
    // Keys of each touched channel, oldest first.
    let mut channels: HashMap<&str, VecDeque<Vec<u8>>> = HashMap::new();
    for p in lines {
        if !channels.contains_key(p.channel.as_str()) {
            let (begin, end) = prefix_range(&channel_prefix(&p.channel));
            let keys = tx
                .get_range(&begin, &end, 0)?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            channels.insert(p.channel.as_str(), keys);
        }
        let keys = channels
            .get_mut(p.channel.as_str())
            .ok_or(StoreError::Conflict)?;
        let seq = keys.back().and_then(|k| seq_of(k)).map_or(0, |s| s + 1);
        let k = line_key(&p.channel, seq);
        let value = tessera_proto::frame::encode(&p.line)
            .map_err(|e| StoreError::Backend(format!("encoding a chat line: {e}")))?;
        tx.set(&k, &value)?;
        keys.push_back(k);
        while keys.len() > HISTORY_KEEP {
            if let Some(old) = keys.pop_front() {
                tx.clear(&old)?;
            }
        }
    }
    Ok(())
}

/// The last `limit` stored lines of `channel`, oldest first.
pub(crate) fn read(
    db: &Database,
    channel: &str,
    limit: usize,
) -> Result<Vec<ChatLine>, StoreError> {
    let (begin, end) = prefix_range(&channel_prefix(channel));
    let entries = db.get_range(&begin, &end, 0)?;
    let skip = entries.len().saturating_sub(limit);
    Ok(entries
        .into_iter()
        .skip(skip)
        .filter_map(
            |(k, v)| match tessera_proto::frame::decode::<ChatLine>(&v, MAX_STORED_LINE) {
                Ok(line) => Some(line),
                Err(e) => {
                    tracing::warn!(channel, key = ?k, error = %e, "skipping a corrupt chat line");
                    None
                }
            },
        )
        .collect())
}

/// Every stored mute: (lowercase name, until unix ms).
pub(crate) fn load_mutes(db: &Database) -> Result<Vec<(String, u64)>, StoreError> {
    let (begin, end) = prefix_range(&key(&[b"chat", b"mute"]));
    Ok(db
        .get_range(&begin, &end, 0)?
        .into_iter()
        .filter_map(|(k, v)| {
            let name = String::from_utf8(parse_key(&k)?.get(2)?.clone()).ok()?;
            let until = u64::from_be_bytes(v.as_slice().try_into().ok()?);
            Some((name, until))
        })
        .collect())
}

/// One player's stored mute, if any.
pub(crate) fn load_mute(db: &Database, folded_name: &str) -> Result<Option<u64>, StoreError> {
    Ok(db
        .get(&mute_key(folded_name))?
        .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?))))
}

/// Stores (`Some(until)`) or removes (`None`) a mute.
pub(crate) fn store_mute(
    db: &Database,
    folded_name: &str,
    until: Option<u64>,
) -> Result<(), StoreError> {
    match until {
        Some(until) => db.set(&mute_key(folded_name), &until.to_be_bytes()),
        None => db.clear(&mute_key(folded_name)),
    }
}

#[derive(Clone, Debug)]
struct Pending {
    id: u64,
    channel: String,
    line: ChatLine,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Pending>,
    next_id: u64,
}

/// Lines on their way to the store.
pub(crate) struct HistoryLog {
    queue: parking_lot::Mutex<Queue>,
    capacity: usize,
    wake: tokio::sync::Notify,
    /// Held while lines move from the queue to the store, so a reader sees each line exactly
    /// once: in the store or in the queue.
    moving: tokio::sync::Mutex<()>,
}

impl HistoryLog {
    pub fn new(capacity: usize) -> HistoryLog {
        HistoryLog {
            queue: parking_lot::Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            wake: tokio::sync::Notify::new(),
            moving: tokio::sync::Mutex::new(()),
        }
    }

    /// Queues a line for the store; drops the oldest queued line if the queue is full.
    pub fn push(&self, channel: String, line: ChatLine) {
        let len = {
            let mut q = self.queue.lock();
            if q.lines.len() >= self.capacity {
                q.lines.pop_front();
                metrics::counter!("tessera_chat_history_dropped_total").increment(1);
                tracing::warn!(
                    capacity = self.capacity,
                    "chat history buffer full; dropping the oldest unsaved line"
                );
            }
            let id = q.next_id;
            q.next_id += 1;
            q.lines.push_back(Pending { id, channel, line });
            q.lines.len()
        };
        metrics::gauge!("tessera_chat_history_buffered").set(len as f64);
        self.wake.notify_one();
    }

    /// Lines waiting for the store.
    pub fn buffered(&self) -> usize {
        self.queue.lock().lines.len()
    }

    /// Writes everything queued, in batches, in order. Stops at the first failure.
    pub async fn flush(&self, db: &Database) -> Result<(), StoreError> {
        let _moving = self.moving.lock().await;
        loop {
            let batch: Vec<Pending> = self
                .queue
                .lock()
                .lines
                .iter()
                .take(BATCH)
                .cloned()
                .collect();
            let Some(last) = batch.last().map(|p| p.id) else {
                return Ok(());
            };
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.transact(|tx| append(tx, &batch)))
                .await
                .map_err(|e| StoreError::Backend(format!("history writer failed: {e}")))??;
            let len = {
                let mut q = self.queue.lock();
                while q.lines.front().is_some_and(|p| p.id <= last) {
                    q.lines.pop_front();
                }
                q.lines.len()
            };
            metrics::gauge!("tessera_chat_history_buffered").set(len as f64);
        }
    }

    /// The last `limit` lines of `channel`: stored ones, then those still queued.
    pub async fn recent(
        &self,
        db: &Database,
        channel: &str,
        limit: usize,
    ) -> Result<Vec<ChatLine>, StoreError> {
        let _moving = self.moving.lock().await;
        let (db, ch) = (db.clone(), channel.to_string());
        let mut lines = tokio::task::spawn_blocking(move || read(&db, &ch, limit))
            .await
            .map_err(|e| StoreError::Backend(format!("history reader failed: {e}")))??;
        lines.extend(
            self.queue
                .lock()
                .lines
                .iter()
                .filter(|p| p.channel == channel)
                .map(|p| p.line.clone()),
        );
        let skip = lines.len().saturating_sub(limit);
        Ok(lines.split_off(skip))
    }

    /// Writes queued lines as they come, retrying every second while the store fails, until
    /// `stop` says so (then tries once more).
    pub async fn run_writer(
        self: Arc<Self>,
        db: Database,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut failing = false;
        loop {
            if *stop.borrow() {
                break;
            }
            if failing {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = stop.changed() => {}
                }
            } else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = stop.changed() => {}
                }
            }
            match self.flush(&db).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("chat history is being saved again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            error = %e,
                            buffered = self.buffered(),
                            "cannot save chat history; keeping lines in memory and retrying"
                        );
                    }
                    failing = true;
                }
            }
        }
        if let Err(e) = self.flush(&db).await {
            tracing::warn!(error = %e, lost = self.buffered(), "chat history not saved at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LineKind;

    fn line(text: &str) -> ChatLine {
        ChatLine {
            kind: LineKind::Shout,
            from: "Ann".into(),
            to: None,
            text: text.into(),
            at_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn keeps_the_last_hundred_per_channel_and_drops_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("h.redb")).unwrap();
        let log = HistoryLog::new(1000);
        for i in 0..130 {
            log.push("shout".into(), line(&i.to_string()));
        }
        log.push("trade".into(), line("rope"));
        log.flush(&db).await.unwrap();
        assert_eq!(log.buffered(), 0);
        let all = read(&db, "shout", 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].text, "30");
        assert_eq!(all[99].text, "129");
        assert_eq!(read(&db, "trade", 10).unwrap().len(), 1);
        let last3: Vec<String> = log
            .recent(&db, "shout", 3)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(last3, ["127", "128", "129"]);

        let small = HistoryLog::new(2);
        for t in ["a", "b", "c"] {
            small.push("shout".into(), line(t));
        }
        assert_eq!(small.buffered(), 2);
    }
}
