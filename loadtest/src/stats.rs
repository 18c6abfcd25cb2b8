//! What a swarm measures: latency histograms (HDR, microseconds), counters,
//! errors by cause, and a once-a-second time series for the plots. Bots
//! record into one shared [`Stats`]; [`Stats::finish`] turns it into a
//! [`Report`], the JSON a run writes and the tables and plots are made from.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A latency the bots measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Connect (QUIC handshake + hello, or TCP + banner) to logged in.
    Login,
    /// A movement input sent to the snapshot that acknowledged it (QUIC).
    InputAck,
    /// `say` sent by one bot to heard by another.
    SayHeard,
    /// `shout` / `tell` sent by one bot to the line arriving at another.
    ChatHeard,
    /// Time without an update of a bot's own entity across a hand-off to
    /// another cell (QUIC: `CellChanged`).
    HandoffGap,
    /// Any gap between two updates of a bot's own entity (QUIC).
    UpdateGap,
    /// A text command sent to its answer (telnet and QUIC `Command`); for
    /// a telnet step, the answer carries the new position, so this is a text
    /// player's input-to-ack.
    Command,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Login,
        Metric::InputAck,
        Metric::SayHeard,
        Metric::ChatHeard,
        Metric::HandoffGap,
        Metric::UpdateGap,
        Metric::Command,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Login => "connect + login",
            Metric::InputAck => "input to ack",
            Metric::SayHeard => "say to heard",
            Metric::ChatHeard => "shout/tell to heard",
            Metric::HandoffGap => "hand-off gap",
            Metric::UpdateGap => "own update gap",
            Metric::Command => "command to answer",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Metric::Login => "login",
            Metric::InputAck => "input_ack",
            Metric::SayHeard => "say_heard",
            Metric::ChatHeard => "chat_heard",
            Metric::HandoffGap => "handoff_gap",
            Metric::UpdateGap => "update_gap",
            Metric::Command => "command",
        }
    }
}

/// Percentiles of one latency, milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of the run, for the plots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the swarm started.
    pub t: f64,
    /// Bots logged in at the end of the second.
    pub connected: i64,
    /// p50 and p99 of each latency measured during that second, ms.
    pub p50_ms: BTreeMap<String, f64>,
    pub p99_ms: BTreeMap<String, f64>,
    /// Bytes per second per connected QUIC bot (UDP payload, both ways).
    pub quic_bytes_in_per_bot: f64,
    pub quic_bytes_out_per_bot: f64,
    /// Errors and disconnects during that second.
    pub errors: u64,
}

/// Something the cluster did during the run (with `--etcd`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Seconds since the swarm started.
    pub t: f64,
    /// `migration` (a cell changed owner) or `note`.
    pub kind: String,
    pub cell: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub epoch: Option<u64>,
}

/// Everything a run found; written as `report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The command line, for the record.
    pub command: String,
    pub scenario: String,
    pub quic_bots: usize,
    pub telnet_bots: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub started_unix_ms: u64,
    /// Latencies over the whole run, by [`Metric::key`].
    pub latency: BTreeMap<String, Percentiles>,
    /// Counters (`logins`, `inputs`, `says`, `heard`, `handoffs`,
    /// `disconnects`, ...).
    pub counts: BTreeMap<String, u64>,
    /// Errors and disconnects by cause.
    pub errors: BTreeMap<String, u64>,
    /// Mean bytes per second per QUIC bot over the run.
    pub quic_bytes_in_per_bot: f64,
    pub quic_bytes_out_per_bot: f64,
    /// Most bots logged in at once.
    pub peak_connected: i64,
    pub series: Vec<Sample>,
    /// Cell owners that changed during the run (with `--etcd`).
    pub cluster: Vec<ClusterEvent>,
    /// Thresholds that were broken (the exit code is non-zero if any).
    pub violations: Vec<String>,
    /// The same measured after the ramp only (every bot started, plus the
    /// settling time): the steady state a capacity figure is read from.
    #[serde(default)]
    pub after_ramp: Option<AfterRamp>,
}

/// What was measured from the end of the ramp to the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AfterRamp {
    /// Seconds since the swarm started when the window began.
    pub from_s: f64,
    pub latency: BTreeMap<String, Percentiles>,
    /// Errors and disconnects in the window.
    pub errors: u64,
}

impl Report {
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Window {
    total: BTreeMap<Metric, Histogram<u64>>,
    second: BTreeMap<Metric, Histogram<u64>>,
    counts: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    errors_this_second: u64,
    series: Vec<Sample>,
    cluster: Vec<ClusterEvent>,
    /// From when latencies and errors also count as after the ramp.
    after_ramp_from: Option<Instant>,
    after_ramp: BTreeMap<Metric, Histogram<u64>>,
    after_ramp_errors: u64,
}

impl Window {
    fn after_ramp(&self) -> bool {
        self.after_ramp_from.is_some_and(|t| Instant::now() >= t)
    }
}

/// The swarm's shared measurements. Cheap to record into from many tasks.
pub struct Stats {
    started: Instant,
    inner: Mutex<Window>,
    connected: AtomicI64,
    peak: AtomicI64,
    quic_bytes_in: AtomicU64,
    quic_bytes_out: AtomicU64,
    /// QUIC bot-seconds connected, for per-bot byte rates.
    quic_bot_millis: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            inner: Mutex::new(Window {
                total: BTreeMap::new(),
                second: BTreeMap::new(),
                counts: BTreeMap::new(),
                errors: BTreeMap::new(),
                errors_this_second: 0,
                series: Vec::new(),
                cluster: Vec::new(),
                after_ramp_from: None,
                after_ramp: BTreeMap::new(),
                after_ramp_errors: 0,
            }),
            connected: AtomicI64::new(0),
            peak: AtomicI64::new(0),
            quic_bytes_in: AtomicU64::new(0),
            quic_bytes_out: AtomicU64::new(0),
            quic_bot_millis: AtomicU64::new(0),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn record(&self, metric: Metric, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        let mut w = self.inner.lock();
        let _ = w.total.entry(metric).or_insert_with(histogram).record(us);
        let _ = w.second.entry(metric).or_insert_with(histogram).record(us);
        if w.after_ramp() {
            let _ = w
                .after_ramp
                .entry(metric)
                .or_insert_with(histogram)
                .record(us);
        }
    }

    /// Latencies and errors from `at` on are also measured apart, as the
    /// run after its ramp ([`Report::after_ramp`]).
    pub fn after_ramp_from(&self, at: Instant) {
        self.inner.lock().after_ramp_from = Some(at);
    }

    pub fn count(&self, what: &str, n: u64) {
        *self
            .inner
            .lock()
            .counts
            .entry(what.to_string())
            .or_default() += n;
    }

    /// An error or a disconnect, by cause (`connect: timed out`, ...).
    pub fn error(&self, cause: impl Into<String>) {
        let mut w = self.inner.lock();
        *w.errors.entry(cause.into()).or_default() += 1;
        w.errors_this_second += 1;
        if w.after_ramp() {
            w.after_ramp_errors += 1;
        }
    }

    pub fn connected(&self, delta: i64) {
        let now = self.connected.fetch_add(delta, Ordering::Relaxed) + delta;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn connected_now(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Bytes a QUIC bot moved since its last report, and for how long it was
    /// connected meanwhile.
    pub fn quic_traffic(&self, bytes_in: u64, bytes_out: u64, connected_for: Duration) {
        self.quic_bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.quic_bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        self.quic_bot_millis
            .fetch_add(connected_for.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn cluster_event(&self, event: ClusterEvent) {
        self.inner.lock().cluster.push(event);
    }

    /// Seconds since start, for events.
    pub fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Closes the current second: appends a [`Sample`] and returns it.
    /// `quic_rate` is (bytes in, bytes out, bot-seconds) during the second.
    pub fn close_second(&self, quic_rate: (u64, u64, f64)) -> Sample {
        let mut w = self.inner.lock();
        let mut sample = Sample {
            t: self.started.elapsed().as_secs_f64(),
            connected: self.connected_now(),
            errors: std::mem::take(&mut w.errors_this_second),
            ..Sample::default()
        };
        for (m, h) in std::mem::take(&mut w.second) {
            if h.is_empty() {
                continue;
            }
            let p = Percentiles::of(&h);
            sample.p50_ms.insert(m.key().to_string(), p.p50_ms);
            sample.p99_ms.insert(m.key().to_string(), p.p99_ms);
        }
        let (bytes_in, bytes_out, bot_secs) = quic_rate;
        if bot_secs > 0.0 {
            sample.quic_bytes_in_per_bot = bytes_in as f64 / bot_secs;
            sample.quic_bytes_out_per_bot = bytes_out as f64 / bot_secs;
        }
        w.series.push(sample.clone());
        sample
    }

    /// Totals of QUIC traffic so far: (bytes in, bytes out, bot-seconds).
    pub fn quic_totals(&self) -> (u64, u64, f64) {
        (
            self.quic_bytes_in.load(Ordering::Relaxed),
            self.quic_bytes_out.load(Ordering::Relaxed),
            self.quic_bot_millis.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }

    /// The latency of `metric` so far.
    pub fn percentiles(&self, metric: Metric) -> Percentiles {
        self.inner
            .lock()
            .total
            .get(&metric)
            .map(Percentiles::of)
            .unwrap_or_default()
    }

    pub fn error_total(&self) -> u64 {
        self.inner.lock().errors.values().sum()
    }

    /// The report of everything recorded.
    pub fn finish(&self) -> Report {
        let w = self.inner.lock();
        let (bytes_in, bytes_out, bot_secs) = self.quic_totals();
        Report {
            duration_s: self.started.elapsed().as_secs_f64(),
            latency: w
                .total
                .iter()
                .map(|(m, h)| (m.key().to_string(), Percentiles::of(h)))
                .collect(),
            counts: w.counts.clone(),
            errors: w.errors.clone(),
            quic_bytes_in_per_bot: if bot_secs > 0.0 {
                bytes_in as f64 / bot_secs
            } else {
                0.0
            },
            quic_bytes_out_per_bot: if bot_secs > 0.0 {
                bytes_out as f64 / bot_secs
            } else {
                0.0
            },
            peak_connected: self.peak.load(Ordering::Relaxed),
            series: w.series.clone(),
            cluster: w.cluster.clone(),
            after_ramp: w
                .after_ramp_from
                .filter(|t| Instant::now() > *t)
                .map(|t| AfterRamp {
                    from_s: t.saturating_duration_since(self.started).as_secs_f64(),
                    latency: w
                        .after_ramp
                        .iter()
                        .map(|(m, h)| (m.key().to_string(), Percentiles::of(h)))
                        .collect(),
                    errors: w.after_ramp_errors,
                }),
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_seconds_come_out_of_what_was_recorded() {
        let s = Stats::new();
        for ms in 1..=100 {
            s.record(Metric::InputAck, Duration::from_millis(ms));
        }
        s.error("connect: timed out");
        s.error("connect: timed out");
        s.connected(3);
        s.connected(-1);
        let second = s.close_second((3000, 1000, 2.0));
        assert_eq!(second.connected, 2);
        assert_eq!(second.errors, 2);
        assert_eq!(second.quic_bytes_in_per_bot, 1500.0);
        assert!((second.p99_ms["input_ack"] - 99.0).abs() < 0.5);
        // The next second starts empty.
        assert!(s.close_second((0, 0, 0.0)).p99_ms.is_empty());
        let r = s.finish();
        let p = &r.latency["input_ack"];
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.5, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.5, "{p:?}");
        assert_eq!(r.errors["connect: timed out"], 2);
        assert_eq!(r.peak_connected, 3);
        assert_eq!(r.series.len(), 2);
    }

    /// Only what is recorded once the ramp is over counts after it: the
    /// slow logins of the ramp do not hide in the steady state, nor the
    /// steady state in them.
    #[test]
    fn after_the_ramp_counts_only_what_came_after_it() {
        let s = Stats::new();
        s.record(Metric::InputAck, Duration::from_millis(900));
        s.error("connect: timed out");
        assert!(s.finish().after_ramp.is_none(), "no ramp end given yet");
        s.after_ramp_from(Instant::now());
        for _ in 0..10 {
            s.record(Metric::InputAck, Duration::from_millis(20));
        }
        s.error("connection lost");
        let r = s.finish();
        let after = r.after_ramp.expect("the window began");
        assert_eq!(after.latency["input_ack"].count, 10);
        assert!(after.latency["input_ack"].max_ms < 21.0);
        assert_eq!(after.errors, 1);
        assert_eq!(r.latency["input_ack"].count, 11, "the whole run has both");
        // A window that has not begun by the end of the run is no window.
        let later = Stats::new();
        later.after_ramp_from(Instant::now() + Duration::from_secs(60));
        later.record(Metric::InputAck, Duration::from_millis(5));
        assert!(later.finish().after_ramp.is_none());
    }
}
