//! Headless bot swarms against a running Tessera (`tessera bots`).
//!
//! A swarm is QUIC bots (the client library, many sharing a few UDP
//! sockets) and telnet bots (the text contract), started at `--ramp`
//! connections per second, each playing a [`Scenario`] until `--duration`
//! is over; then they log out. Everything they see is measured into
//! [`Stats`] (HDR histograms, counters, errors by cause, a time series) and
//! ends as a [`Report`]: a table on stdout, and with `--report DIR` a JSON
//! file, SVG plots and an `index.html`. Thresholds (`--max-p99-ms`, ...)
//! turn a bad run into a non-zero exit code.
//!
//! What each latency means is on [`stats::Metric`]; how the numbers are
//! taken is in docs/performance.md ("Bot swarms").

pub mod cluster;
pub mod quic_bot;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod telnet_bot;

use parking_lot::Mutex;
use scenario::{CrowdPhase, Steering};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::msg::Secret;
use tessera_proto::Vec3;

pub use scenario::{CrowdPlan, Scenario};
pub use stats::{Metric, Report, Stats};

/// Most bots one swarm runs.
pub const MAX_BOTS: usize = 20_000;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// QUIC bots per UDP socket.
pub const BOTS_PER_ENDPOINT: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read the router's certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open a QUIC socket: {0}")]
    Endpoint(String),
    #[error("cannot write the report to {path}: {reason}")]
    Report { path: PathBuf, reason: String },
}

/// Limits that make a run fail (exit code 2).
#[derive(Clone, Debug, Default)]
pub struct Thresholds {
    /// Input-to-ack p99, ms.
    pub max_p99_ms: Option<f64>,
    /// Say-to-heard p99, ms.
    pub max_say_p99_ms: Option<f64>,
    /// Connect-and-login p99, ms.
    pub max_login_p99_ms: Option<f64>,
    /// Errors and disconnects, all causes.
    pub max_errors: Option<u64>,
    /// Mean bytes per second per QUIC bot, received.
    pub max_bytes_per_bot: Option<f64>,
}

/// How a swarm runs.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub quic_addr: Option<SocketAddr>,
    /// The router's certificate (DER) to pin.
    pub cert: PathBuf,
    pub telnet_addr: Option<SocketAddr>,
    pub quic_bots: usize,
    pub telnet_bots: usize,
    pub duration: Duration,
    /// New connections per second while ramping up.
    pub ramp: f64,
    /// After the last bot has started, wait this long before measuring
    /// the run "after the ramp" (its last logins settle).
    pub settle: Duration,
    pub seed: u64,
    pub scenario: Scenario,
    /// Every bot's password (`Debug` shows `<redacted>`).
    pub password: Secret,
    /// How often `chat` bots talk.
    pub chat_interval: Duration,
    /// Where `flock` bots go.
    pub flock_target: Vec3,
    /// Where `crowd` bots gather, and when they disperse.
    pub crowd: CrowdPlan,
    /// The world's cell size (for `border`).
    pub cell_size: f32,
    pub thresholds: Thresholds,
    /// etcd endpoints and key prefix, to record cell owners during the run.
    pub etcd: Vec<String>,
    /// How to reach etcd over TLS (with `https://` endpoints).
    pub etcd_tls: Option<tessera_coordinator::EtcdTls>,
    pub prefix: String,
    /// Draw a progress bar (else print a line every 5 s).
    pub progress: bool,
    pub command: String,
}

impl SwarmConfig {
    pub fn validate(&self) -> Result<(), SwarmError> {
        let bad = |s: String| Err(SwarmError::Config(s));
        let total = self.quic_bots + self.telnet_bots;
        if total == 0 {
            return bad("no bots: give --quic N and/or --telnet N".into());
        }
        if total > MAX_BOTS {
            return bad(format!("{total} bots is more than the limit of {MAX_BOTS}"));
        }
        if self.quic_bots > 0 && self.quic_addr.is_none() {
            return bad("QUIC bots need the router's QUIC address (--quic-addr)".into());
        }
        if self.telnet_bots > 0 && self.telnet_addr.is_none() {
            return bad("telnet bots need the router's telnet address (--telnet-addr)".into());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "--duration must be between 1 s and {} h",
                MAX_DURATION.as_secs() / 3600
            ));
        }
        if !(self.ramp > 0.0 && self.ramp.is_finite()) {
            return bad("--ramp must be a positive number of connections per second".into());
        }
        if !(self.crowd.radius >= 0.0 && self.crowd.radius.is_finite()) {
            return bad("--crowd-radius must be a number of metres, 0 or more".into());
        }
        if let Some(after) = self.crowd.disperse_after_s {
            if self.scenario != Scenario::Crowd {
                return bad("--disperse-after applies to --scenario crowd only".into());
            }
            if !(after >= 0.0 && after.is_finite()) {
                return bad("--disperse-after must be a number of seconds, 0 or more".into());
            }
        }
        Ok(())
    }

    /// How a bot playing `scenario` with `seed` and starting at `start`
    /// steers in this swarm.
    pub(crate) fn steering(&self, scenario: Scenario, seed: u64, start: Vec3) -> Steering {
        Steering::new(scenario, seed, start, self.cell_size, self.flock_target)
            .with_crowd(self.crowd)
    }
}

/// How a bot's session ended.
pub(crate) enum SessionEnd {
    /// The run is over.
    Done,
    /// Reconnect after this pause (churn, login storm).
    Again(Duration),
}

/// Tokens bots say, and when: how a hearer knows the latency.
#[derive(Default)]
pub struct Heard {
    next: AtomicU64,
    sent: Mutex<HashMap<u64, Instant>>,
}

/// Tokens are forgotten after this long.
const TOKEN_TTL: Duration = Duration::from_secs(30);

impl Heard {
    /// A new token (`tk<N>`), sent now.
    pub fn token(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut sent = self.sent.lock();
        if n.is_multiple_of(1024) {
            sent.retain(|_, at| now.duration_since(*at) < TOKEN_TTL);
        }
        sent.insert(n, now);
        format!("tk{n}")
    }

    /// When the token in `text` was sent, if it holds one.
    pub fn sent_at(&self, text: &str) -> Option<Instant> {
        let at = text.find("tk")?;
        let digits: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let n: u64 = digits.parse().ok()?;
        self.sent.lock().get(&n).copied()
    }
}

/// What every bot shares.
#[derive(Clone)]
pub(crate) struct BotCtx {
    pub config: Arc<SwarmConfig>,
    pub stats: Arc<Stats>,
    pub heard: Arc<Heard>,
    pub deadline: Instant,
}

impl BotCtx {
    pub fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Plays sessions one after another until the run is over: each gets a
    /// new seed; a failed one is counted by its cause and retried after a
    /// second; one that asks to come back does so after its pause.
    pub async fn keep_playing<F, Fut>(&self, mut seed: u64, mut session: F)
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<SessionEnd, String>>,
    {
        while !self.over() {
            seed = seed.wrapping_add(1);
            let pause = match session(seed).await {
                Ok(SessionEnd::Done) => break,
                Ok(SessionEnd::Again(after)) => after,
                Err(cause) => {
                    self.stats.error(cause);
                    Duration::from_secs(1)
                }
            };
            self.sleep(pause).await;
        }
    }

    /// Counts a `crowd` bot's progress between two steps: `crowd_arrived`
    /// when it reached the crowd, `crowd_dispersed` when it got away from
    /// it.
    pub fn crowd_progress(&self, before: Option<CrowdPhase>, after: Option<CrowdPhase>) {
        if before == after {
            return;
        }
        match after {
            Some(CrowdPhase::Milling) => self.stats.count("crowd_arrived", 1),
            Some(CrowdPhase::Dispersed) => self.stats.count("crowd_dispersed", 1),
            _ => {}
        }
    }

    /// Sleeps, but not past the end of the run.
    pub async fn sleep(&self, d: Duration) {
        let until = (Instant::now() + d).min(self.deadline);
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Runs a swarm to the end and returns its report (with `violations` filled
/// in from the thresholds). Call inside a multi-threaded tokio runtime.
pub async fn run(config: SwarmConfig) -> Result<Report, SwarmError> {
    config.validate()?;
    let endpoints = if config.quic_bots > 0 {
        let cert = std::fs::read(&config.cert).map_err(|source| SwarmError::Certificate {
            path: config.cert.clone(),
            source,
        })?;
        let n = config.quic_bots.div_ceil(BOTS_PER_ENDPOINT);
        (0..n)
            .map(|_| {
                tessera_client::endpoint(rustls::pki_types::CertificateDer::from(cert.clone()))
                    .map_err(|e| SwarmError::Endpoint(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let config = Arc::new(config);
    let stats = Arc::new(Stats::new());
    let started = Instant::now();
    let ctx = BotCtx {
        config: config.clone(),
        stats: stats.clone(),
        heard: Arc::new(Heard::default()),
        deadline: started + config.duration,
    };
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);

    let watcher = if config.etcd.is_empty() {
        None
    } else {
        Some(tokio::spawn(cluster::watch(
            config.etcd.clone(),
            config.etcd_tls.clone(),
            config.prefix.clone(),
            stats.clone(),
            ctx.deadline,
        )))
    };
    let live = tokio::spawn(report::live(config.clone(), stats.clone(), ctx.deadline));

    // Ramp: QUIC and telnet bots interleaved, `ramp` per second.
    let mut bots = tokio::task::JoinSet::new();
    let (mut q, mut t) = (0usize, 0usize);
    let total = config.quic_bots + config.telnet_bots;
    for i in 0..total {
        let at = started + Duration::from_secs_f64(i as f64 / config.ramp);
        if at >= ctx.deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        // Keep the mix even while ramping.
        let quic_turn = t >= config.telnet_bots
            || (q < config.quic_bots && q * config.telnet_bots <= t * config.quic_bots);
        let ctx = ctx.clone();
        if quic_turn {
            let ep = endpoints[q / BOTS_PER_ENDPOINT].clone();
            bots.spawn(quic_bot::run(ctx, q, ep));
            q += 1;
        } else {
            bots.spawn(telnet_bot::run(ctx, t));
            t += 1;
        }
    }
    stats.after_ramp_from(Instant::now() + config.settle);
    // Bots stop by themselves at the deadline; give logouts a moment.
    let grace = tokio::time::sleep_until((ctx.deadline + Duration::from_secs(15)).into());
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = bots.join_next() => if done.is_none() { break },
            _ = &mut grace => {
                stats.error("bot still busy at the end of the run");
                bots.abort_all();
                break;
            }
        }
    }
    let _ = live.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"swarm done");
    }
    let mut report = stats.finish();
    report.command = config.command.clone();
    report.scenario = config.scenario.name().to_string();
    report.quic_bots = config.quic_bots;
    report.telnet_bots = config.telnet_bots;
    report.seed = config.seed;
    report.started_unix_ms = started_unix_ms;
    report.violations = check(&config.thresholds, &report);
    Ok(report)
}

/// The thresholds `report` breaks, as sentences.
pub fn check(t: &Thresholds, report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let p99 = |key: &str| report.latency.get(key).map(|p| p.p99_ms).unwrap_or(0.0);
    let mut limit = |what: &str, value: f64, max: Option<f64>, unit: &str| {
        if let Some(max) = max {
            if value > max {
                out.push(format!(
                    "{what} {value:.1} {unit} is over the limit of {max} {unit}"
                ));
            }
        }
    };
    limit("input-to-ack p99", p99("input_ack"), t.max_p99_ms, "ms");
    limit("say-to-heard p99", p99("say_heard"), t.max_say_p99_ms, "ms");
    limit("login p99", p99("login"), t.max_login_p99_ms, "ms");
    limit(
        "bytes per QUIC bot per second",
        report.quic_bytes_in_per_bot,
        t.max_bytes_per_bot,
        "B/s",
    );
    limit(
        "errors and disconnects",
        report.total_errors() as f64,
        t.max_errors.map(|e| e as f64),
        "",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SwarmConfig {
        SwarmConfig {
            quic_addr: Some("127.0.0.1:4433".parse().unwrap()),
            cert: PathBuf::from("cert.der"),
            telnet_addr: None,
            quic_bots: 10,
            telnet_bots: 0,
            duration: Duration::from_secs(10),
            ramp: 50.0,
            settle: Duration::from_secs(5),
            seed: 1,
            scenario: Scenario::Wander,
            password: "pw-pw-pw".into(),
            chat_interval: Duration::from_secs(5),
            flock_target: Vec3::ZERO,
            crowd: CrowdPlan::at(Vec3::new(32.0, 0.0, 32.0)),
            cell_size: 64.0,
            thresholds: Thresholds::default(),
            etcd: Vec::new(),
            etcd_tls: None,
            prefix: "/tessera/".into(),
            progress: false,
            command: String::new(),
        }
    }

    #[test]
    fn debug_leaves_out_the_password() {
        let shown = format!("{:?} {:#?}", config(), config());
        assert!(!shown.contains("pw-pw-pw"), "{shown}");
        assert!(shown.contains("password: \"<redacted>\""), "{shown}");
        assert_eq!(config().password.expose(), "pw-pw-pw");
    }

    #[test]
    fn configurations_that_cannot_run_are_refused_with_a_reason() {
        assert!(config().validate().is_ok());
        let no_telnet = SwarmConfig {
            telnet_bots: 3,
            ..config()
        };
        assert!(no_telnet
            .validate()
            .unwrap_err()
            .to_string()
            .contains("telnet"));
        let too_many = SwarmConfig {
            quic_bots: MAX_BOTS + 1,
            ..config()
        };
        assert!(too_many.validate().is_err());
        let none = SwarmConfig {
            quic_bots: 0,
            ..config()
        };
        assert!(none.validate().unwrap_err().to_string().contains("no bots"));
        let no_ramp = SwarmConfig {
            ramp: 0.0,
            ..config()
        };
        assert!(no_ramp.validate().is_err());
        let dispersing = |scenario, after| SwarmConfig {
            scenario,
            crowd: CrowdPlan {
                disperse_after_s: Some(after),
                ..config().crowd
            },
            ..config()
        };
        assert!(dispersing(Scenario::Crowd, 30.0).validate().is_ok());
        assert!(dispersing(Scenario::Crowd, 0.0).validate().is_ok());
        assert!(dispersing(Scenario::Crowd, -1.0).validate().is_err());
        assert!(dispersing(Scenario::Crowd, f64::NAN).validate().is_err());
        assert!(dispersing(Scenario::Flock, 30.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("crowd"));
        let no_radius = SwarmConfig {
            scenario: Scenario::Crowd,
            crowd: CrowdPlan {
                radius: -1.0,
                ..config().crowd
            },
            ..config()
        };
        assert!(no_radius.validate().is_err());
    }

    #[test]
    fn tokens_are_found_in_what_is_heard() {
        let h = Heard::default();
        let t = h.token();
        assert!(h.sent_at(&format!("Bob says, \"{t}\"")).is_some());
        assert!(h.sent_at(&format!("[trade] Bob: {t}")).is_some());
        assert!(h.sent_at("tk999999").is_none());
        assert!(h.sent_at("hello").is_none());
    }

    #[test]
    fn thresholds_name_what_they_break() {
        let mut r = Report::default();
        r.latency.insert(
            "input_ack".into(),
            stats::Percentiles {
                p99_ms: 120.0,
                ..Default::default()
            },
        );
        r.errors.insert("connect: timed out".into(), 2);
        let t = Thresholds {
            max_p99_ms: Some(100.0),
            max_errors: Some(0),
            max_say_p99_ms: Some(150.0),
            ..Default::default()
        };
        let v = check(&t, &r);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("input-to-ack p99 120.0 ms"));
        assert!(v[1].contains("errors"));
    }
}
