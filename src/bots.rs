//! `tessera bots`: a headless bot swarm against a running Tessera
//! (docs/performance.md, "Bot swarms").

use clap::Args;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tessera_loadtest::{CrowdPlan, Scenario, SwarmConfig, Thresholds};
use tessera_proto::msg::Secret;
use tessera_proto::Vec3;

#[derive(Args, Debug, Clone)]
pub struct BotsArgs {
    /// QUIC bots (3D players).
    #[arg(long, default_value_t = 0)]
    quic: usize,
    /// Telnet bots (text players).
    #[arg(long, default_value_t = 0)]
    telnet: usize,
    /// The router's QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    quic_addr: SocketAddr,
    /// The router's certificate to pin (DER; `tessera up` prints its path).
    #[arg(long, default_value = "data/quic-cert.der")]
    cert: PathBuf,
    /// The router's telnet address.
    #[arg(long, default_value = "127.0.0.1:4000")]
    telnet_addr: SocketAddr,
    /// Seconds to run; then every bot logs out.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    ramp: f64,
    /// Seconds after the last bot has started before the "after the ramp"
    /// figures begin (the steady state; capacity is read from them).
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Seeds the bots' choices and names (the same seed reuses accounts).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// wander, flock, crowd, border, chat, login-storm, churn or mix.
    #[arg(long, default_value = "wander")]
    scenario: Scenario,
    /// The bots' password (`Debug` shows `<redacted>`).
    #[arg(long, default_value = "bot-password")]
    password: Secret,
    /// Seconds between a chat bot's messages (on average).
    #[arg(long, default_value_t = 5.0)]
    chat_interval: f64,
    /// Where `flock` bots go, `x,z` metres.
    #[arg(long, default_value = "40,0", value_parser = parse_xz, allow_hyphen_values = true)]
    flock_target: (f32, f32),
    /// Where `crowd` bots gather, `x,z` metres (the middle of cell 0,0;
    /// its own flag because --flock-target's default sits on a border).
    #[arg(long, default_value = "32,32", value_parser = parse_xz, allow_hyphen_values = true)]
    crowd_target: (f32, f32),
    /// `crowd` bots mill about within this many metres of --crowd-target
    /// (20: inside one 64 m cell when the target is its middle).
    #[arg(long, default_value_t = tessera_loadtest::scenario::CROWD_RADIUS)]
    crowd_radius: f32,
    /// Seconds into the run after which `crowd` bots leave the crowd, each
    /// for a point of its own 100 to 150 m away, and wander there (default:
    /// they stay).
    #[arg(long)]
    disperse_after: Option<f64>,
    /// The world's cell size, metres (for `border`).
    #[arg(long, default_value_t = 64.0)]
    cell_size: f32,
    /// Write report.json, SVG plots and index.html here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// etcd endpoints: record cell owners and migrations during the run.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_tls: crate::EtcdTlsArgs,
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    prefix: String,
    /// Fail (exit 2) if input-to-ack p99 is over this, ms.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Fail if say-to-heard p99 is over this, ms.
    #[arg(long)]
    max_say_p99_ms: Option<f64>,
    /// Fail if connect-and-login p99 is over this, ms.
    #[arg(long)]
    max_login_p99_ms: Option<f64>,
    /// Fail if there are more errors and disconnects than this.
    #[arg(long)]
    max_errors: Option<u64>,
    /// Fail if a QUIC bot receives more than this many bytes per second on
    /// average.
    #[arg(long)]
    max_bytes_per_bot: Option<f64>,
    /// No progress bar (a line every 5 s instead).
    #[arg(long)]
    no_progress: bool,
}

fn parse_xz(s: &str) -> Result<(f32, f32), String> {
    let (x, z) = s.split_once(',').ok_or("expected x,z")?;
    let n = |v: &str| v.trim().parse::<f32>().map_err(|e| format!("{v:?}: {e}"));
    Ok((n(x)?, n(z)?))
}

/// Runs the swarm; the exit code: 0, or 2 when a limit was broken.
pub async fn run(args: BotsArgs) -> anyhow::Result<i32> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let config = SwarmConfig {
        quic_addr: (args.quic > 0).then_some(args.quic_addr),
        cert: args.cert.clone(),
        telnet_addr: (args.telnet > 0).then_some(args.telnet_addr),
        quic_bots: args.quic,
        telnet_bots: args.telnet,
        duration: Duration::from_secs_f64(args.duration),
        ramp: args.ramp,
        settle: Duration::from_secs_f64(args.settle.max(0.0)),
        seed: args.seed,
        scenario: args.scenario,
        password: args.password.clone(),
        chat_interval: Duration::from_secs_f64(args.chat_interval.max(0.1)),
        flock_target: Vec3::new(args.flock_target.0, 0.0, args.flock_target.1),
        crowd: CrowdPlan {
            centre: Vec3::new(args.crowd_target.0, 0.0, args.crowd_target.1),
            radius: args.crowd_radius,
            disperse_after_s: args.disperse_after,
        },
        cell_size: args.cell_size,
        thresholds: Thresholds {
            max_p99_ms: args.max_p99_ms,
            max_say_p99_ms: args.max_say_p99_ms,
            max_login_p99_ms: args.max_login_p99_ms,
            max_errors: args.max_errors,
            max_bytes_per_bot: args.max_bytes_per_bot,
        },
        etcd: args.etcd.clone(),
        etcd_tls: args.etcd_tls.config(&args.etcd)?,
        prefix: args.prefix.clone(),
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = tessera_loadtest::run(config).await?;
    print!("{}", tessera_loadtest::report::table(&report));
    if let Some(dir) = &args.report {
        tessera_loadtest::report::write_dir(dir, &report)?;
        println!("report: {}", dir.join("index.html").display());
    }
    Ok(if report.violations.is_empty() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bots: BotsArgs,
    }

    #[test]
    fn debug_leaves_out_the_password() {
        let cli = Cli::try_parse_from(["bots", "--password", "hunter2-secret"]).unwrap();
        let shown = format!("{cli:?} {cli:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: \"<redacted>\""), "{shown}");
        assert_eq!(cli.bots.password.expose(), "hunter2-secret");
        let cli = Cli::try_parse_from(["bots"]).unwrap();
        assert_eq!(cli.bots.password.expose(), "bot-password");
    }
}
