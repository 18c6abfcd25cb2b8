//! Helpers for the real-process cluster tests: a `tessera <role>` process
//! that is killed on drop, the flags every role takes, starting shards and
//! routers on free loopback ports, `tessera ctl`, the cluster CA, and
//! entity counts from the shards' metrics. Include with
//! `#[path = "support/cluster.rs"] mod support_cluster;` next to
//! `mod common;` and the etcd support module. (It lives under
//! `tests/support/` so that cargo does not build it as a test of its own.)

#![allow(dead_code)]

use crate::common::{metric_samples, scrape};
use crate::etcd::EtcdServer;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/worlds/default");
pub const PW: &str = "correct-horse";

/// One `tessera <role>` process; killed on drop.
pub struct Role {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_log: PathBuf,
}

impl Role {
    pub fn start(dir: &Path, name: &str, args: &[String]) -> Role {
        let stderr_log = dir.join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start tessera");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Role {
            name: name.into(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr_log,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..].to_string();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => panic!(
                    "{} never printed {prefix:?}; stdout {:?}; stderr:\n{}",
                    self.name,
                    self.seen,
                    std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
                ),
            }
        }
    }

    pub fn addr_after(&mut self, prefix: &str) -> SocketAddr {
        let rest = self.wait_line(prefix);
        let word = rest.split_whitespace().next().unwrap_or("");
        word.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .trim_end_matches(';')
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad address in {rest:?}: {e}", self.name))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn common_args(etcd: &EtcdServer, role: &str) -> Vec<String> {
    vec![
        role.into(),
        "--etcd".into(),
        etcd.client_url(),
        "--world".into(),
        WORLD.into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ]
}

pub fn member_args(ca: &Path, ttl_secs: u64) -> Vec<String> {
    vec![
        "--cluster-ca".into(),
        ca.display().to_string(),
        "--cluster-listen".into(),
        "127.0.0.1:0".into(),
        "--lease-ttl-secs".into(),
        ttl_secs.to_string(),
    ]
}

pub fn shard(dir: &Path, etcd: &EtcdServer, ca: &Path, id: &str) -> (Role, SocketAddr) {
    shard_with_ttl(dir, etcd, ca, id, 2)
}

pub fn shard_with_ttl(
    dir: &Path,
    etcd: &EtcdServer,
    ca: &Path,
    id: &str,
    ttl_secs: u64,
) -> (Role, SocketAddr) {
    let mut args = common_args(etcd, "shard");
    args.extend(member_args(ca, ttl_secs));
    args.extend(["--id".into(), id.into()]);
    let mut role = Role::start(dir, id, &args);
    let rest = role.wait_line(&format!("shard {id} running; cluster address "));
    let metrics = rest
        .split_once("metrics on http://")
        .map(|(_, m)| {
            m.trim_end_matches("/metrics")
                .parse()
                .expect("metrics address")
        })
        .expect("metrics address printed");
    (role, metrics)
}

/// A router on free loopback ports; returns it and its telnet address.
pub fn router(dir: &Path, etcd: &EtcdServer, ca: &Path, ttl_secs: u64) -> (Role, SocketAddr) {
    let mut args = common_args(etcd, "router");
    args.extend(member_args(ca, ttl_secs));
    args.extend([
        "--telnet".into(),
        "127.0.0.1:0".into(),
        "--quic".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("router-data").display().to_string(),
    ]);
    let mut role = Role::start(dir, "router", &args);
    let telnet = role.addr_after("telnet listening on ");
    (role, telnet)
}

pub fn ticks(metrics: SocketAddr) -> f64 {
    metric_samples(&scrape(metrics), "tessera_shard_tick_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

pub fn entities(shards: &[SocketAddr]) -> f64 {
    shards
        .iter()
        .map(|m| {
            metric_samples(&scrape(*m), "tessera_shard_entities")
                .iter()
                .map(|(_, v)| v)
                .sum::<f64>()
        })
        .sum()
}

pub fn settled_entities(shards: &[SocketAddr]) -> f64 {
    let mut last = entities(shards);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = entities(shards);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

pub fn ctl(etcd: &EtcdServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ctl", "--etcd", &etcd.client_url()])
        .args(args)
        .output()
        .expect("run tessera ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn ca_init(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    let status = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "init"])
        .arg(&ca)
        .status()
        .expect("tessera ca init");
    assert!(status.success());
    ca
}

/// (cell, owner, epoch) of every cell, from `tessera ctl cells --json`.
pub fn owners(etcd: &EtcdServer) -> Vec<(String, String, u64)> {
    let (ok, json, err) = ctl(etcd, &["cells", "--json"]);
    assert!(ok, "ctl cells: {err}");
    let cells: serde_json::Value = serde_json::from_str(&json).expect("json");
    let mut out: Vec<_> = cells
        .as_array()
        .expect("array")
        .iter()
        .map(|c| {
            (
                format!("{},{}", c["cell"]["x"], c["cell"]["z"]),
                c["owner"].as_str().unwrap_or("").to_string(),
                c["epoch"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}
