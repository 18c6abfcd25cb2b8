//! Start and stop the cluster roles as separate `tessera` processes for the
//! real-process cluster tests (`cluster.rs`, `cluster_faults.rs`,
//! `cluster_rebalance.rs`): the cluster CA and an operator credential,
//! coordinators, the persistence service, shards (optionally inside a
//! network namespace), routers, `tessera ctl` (read-only) and `ops` (as the
//! operator, for what changes the cluster), and the readings the tests take
//! (ticks and entities from the shards' metrics, owners from
//! `ctl cells --json`). Every process and every network namespace started
//! here is removed on drop, even when a test panics.
//!
//! Every role is started with a ready file (`TESSERA_READY_FILE`, src/ready.rs) and found
//! through it ([`Role::wait_ready`], [`Ready`]): its addresses never come from the wording
//! of a log line. [`cluster::Cluster`] is the one test cluster built on these helpers: it
//! owns etcd, the CA and every member by name, and starts, stops, kills, pauses and
//! partitions each.
//!
//! Include it with `mod support_cluster;` next to `mod common;` (TestDir,
//! metrics scraping) and `mod etcd;` (the real etcd,
//! `coordinator/tests/support/etcd.rs`). It is a directory module so that
//! cargo does not build it as a test of its own.

#![allow(dead_code)]

pub mod cluster;

use crate::common::{metric_samples, scrape, TelnetClient, Where};
use crate::etcd::{tls_flags, EtcdServer};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tessera_coordinator::EtcdTls;

pub const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/worlds/default");
pub const PW: &str = "correct-horse";
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One `tessera <role>` process; killed on drop. Its stdout lines are kept
/// with the time they were read; its stderr (the tracing log) goes to a file.
pub struct Role {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<(SystemTime, String)>,
    seen: Vec<(SystemTime, String)>,
    pub stderr_log: PathBuf,
    /// Where it announces readiness (`TESSERA_READY_FILE`): `<dir>/<name>.ready.json`.
    pub ready_file: PathBuf,
    exit: Option<ExitStatus>,
}

/// What a role wrote to its ready file once ready (`--ready-file`, src/ready.rs): every
/// address it serves, under the name of the flag that chose it.
#[derive(Clone, Debug)]
pub struct Ready {
    pub role: String,
    pub id: String,
    pub pid: u32,
    /// When the role became ready, by its own clock.
    pub at: SystemTime,
    /// `cluster`, `telnet`, `telnet_tls`, `quic`, `metrics`, `listen`.
    pub addrs: BTreeMap<String, SocketAddr>,
    /// `quic_cert`: the certificate a router serves.
    pub files: BTreeMap<String, PathBuf>,
}

impl Ready {
    /// Reads a ready file; `None` while it is missing or not JSON of the right shape.
    pub fn read(path: &Path) -> Option<Ready> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let map = |key: &str| -> Vec<(String, String)> {
            v[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Ready {
            role: v["role"].as_str()?.to_string(),
            id: v["id"].as_str()?.to_string(),
            pid: u32::try_from(v["pid"].as_u64()?).ok()?,
            at: UNIX_EPOCH + Duration::from_millis(v["ready_unix_ms"].as_u64()?),
            addrs: map("addrs")
                .into_iter()
                .map(|(k, a)| Some((k, a.parse().ok()?)))
                .collect::<Option<_>>()?,
            files: map("files")
                .into_iter()
                .map(|(k, f)| (k, PathBuf::from(f)))
                .collect(),
        })
    }

    /// The address announced under `name`; panics when there is none.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.addrs.get(name).unwrap_or_else(|| {
            panic!(
                "{} {} announced no {name:?} address: {:?}",
                self.role, self.id, self.addrs
            )
        })
    }

    /// Where it serves `/metrics`.
    pub fn metrics(&self) -> SocketAddr {
        self.addr("metrics")
    }
}

/// How long a role may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Role {
    pub fn start(dir: &Path, name: &str, args: &[String]) -> Role {
        Role::start_in(dir, name, None, "warn", args)
    }

    /// Starts `tessera args...`, inside network namespace `netns` if given
    /// (`ip netns exec` execs the binary, so the pid is tessera's own).
    pub fn start_in(
        dir: &Path,
        name: &str,
        netns: Option<&str>,
        rust_log: &str,
        args: &[String],
    ) -> Role {
        Role::start_with_env(dir, name, netns, rust_log, args, &[])
    }

    /// [`Role::start_in`] with more environment variables (the fault switches of test
    /// builds, such as `TESSERA_FAULT_SIM_PANIC_AT_TICK`).
    pub fn start_with_env(
        dir: &Path,
        name: &str,
        netns: Option<&str>,
        rust_log: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Role {
        let stderr_log = dir.join(format!("{name}.stderr.log"));
        // A restarted role appends to the same log.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .expect("stderr log");
        // A file left by an earlier start of this name must not count as this one's.
        let ready_file = dir.join(format!("{name}.ready.json"));
        let _ = std::fs::remove_file(&ready_file);
        let bin = env!("CARGO_BIN_EXE_tessera");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .env("TESSERA_READY_FILE", &ready_file)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start tessera");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((SystemTime::now(), line));
            }
        });
        Role {
            name: name.into(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr_log,
            ready_file,
            exit: None,
        }
    }

    /// Waits (up to `timeout`) until the role wrote its ready file and returns what it
    /// announced; panics with its log if it exits first or takes too long.
    pub fn wait_ready(&mut self, timeout: Duration) -> Ready {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ready) = Ready::read(&self.ready_file) {
                assert_eq!(
                    ready.pid,
                    self.pid(),
                    "{}: the ready file is another process's",
                    self.name
                );
                return ready;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited ({status}) before it was ready; stderr:\n{}",
                    self.name,
                    self.stderr_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid to signal: `ip netns exec` execs the binary, so it is tessera's own.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} ({})", self.pid(), self.name);
    }

    /// SIGSTOP: the process freezes, as on a stalled machine.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Role::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Waits (20 s at most) for a stdout line starting with `prefix`;
    /// returns the rest.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        self.wait_line_timed(prefix, Duration::from_secs(20)).1
    }

    /// Like [`Role::wait_line`]: when the line was read, and its rest.
    pub fn wait_line_timed(&mut self, prefix: &str, timeout: Duration) -> (SystemTime, String) {
        if let Some((at, l)) = self.seen.iter().find(|(_, l)| l.starts_with(prefix)) {
            return (*at, l[prefix.len()..].to_string());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push((at, line.clone()));
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return (at, rest.to_string());
                    }
                }
                Err(_) => panic!(
                    "{} never printed {prefix:?}; stdout {:?}; stderr:\n{}",
                    self.name,
                    self.seen.iter().map(|(_, l)| l).collect::<Vec<_>>(),
                    self.stderr_tail(40)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (no-op once it exited).
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                self.name,
                self.stderr_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} stderr ({}), last lines ----\n{}\n---- end ----",
                self.name,
                self.stderr_log.display(),
                self.stderr_tail(60)
            );
        }
    }
}

/// `tessera ca init DIR/ca`, and an operator ("ops") whose key pair the CA
/// vouches for in `etcd` (its credential next to the CA directory:
/// [`operator_credential`]). Every role of the cluster is given this CA.
pub fn ca_init(dir: &Path, etcd: &EtcdServer) -> PathBuf {
    let mut flags = etcd.client_flags(&etcd.client_url());
    flags.push("--prefix".into());
    flags.push("/tessera/".into());
    ca_init_with(dir, &flags)
}

/// [`ca_init`] for a CA no cluster uses: its operator is a file in
/// `DIR/ca/operators/` (a stranger's, for tests of refusals).
pub fn ca_init_offline(dir: &Path) -> PathBuf {
    ca_init_with(dir, &[])
}

fn ca_init_with(dir: &Path, store_flags: &[String]) -> PathBuf {
    let ca = dir.join("ca");
    let status = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "init"])
        .arg(&ca)
        .stdout(Stdio::null())
        .status()
        .expect("tessera ca init");
    assert!(status.success(), "tessera ca init {}", ca.display());
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "operator", "ops", "--cluster-ca"])
        .arg(&ca)
        .arg("--out")
        .arg(operator_credential(&ca))
        .args(store_flags)
        .output()
        .expect("tessera ca operator");
    assert!(
        out.status.success(),
        "tessera ca operator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ca
}

/// The directory a member of `role` starts from (`--cluster-ca`): a certificate that `tessera
/// ca issue` issued for that role, the trust bundle, and no CA key, as in production. Issued
/// once per CA and role, next to the CA directory.
pub fn member_dir(ca: &Path, role: &str) -> PathBuf {
    let dir = ca.with_file_name(format!("{}-member-{role}", file_name(ca)));
    if dir.exists() {
        return dir;
    }
    // Issued aside and renamed, so that members starting together agree on one.
    let tmp = ca.with_file_name(format!(
        "{}-member-{role}.{}.{}",
        file_name(ca),
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "ca",
            "issue",
            "--role",
            role,
            "--name",
            role,
            "--cluster-ca",
        ])
        .arg(ca)
        .arg("--out")
        .arg(&tmp)
        .output()
        .expect("tessera ca issue");
    assert!(
        out.status.success(),
        "tessera ca issue --role {role}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another member of this role was quicker; use its directory.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(
        !dir.join("ca-key.pem").exists(),
        "a member directory holds the CA key"
    );
    dir
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ca".into())
}

/// The operator credential [`ca_init`] issued for the CA in `ca`.
pub fn operator_credential(ca: &Path) -> PathBuf {
    ca.with_file_name("ops.credential")
}

/// `role --etcd URL --etcd-ca F --etcd-cert F --etcd-key F --world W
/// --metrics IP:0`.
pub fn common_args(
    etcd_url: &str,
    etcd_tls: &EtcdTls,
    role: &str,
    metrics_ip: IpAddr,
    world: &str,
) -> Vec<String> {
    let mut args = vec![role.into(), "--etcd".into(), etcd_url.into()];
    args.extend(tls_flags(etcd_tls));
    args.extend([
        "--world".into(),
        world.into(),
        "--metrics".into(),
        SocketAddr::new(metrics_ip, 0).to_string(),
    ]);
    args
}

/// The flags of a cluster member (shard or router): the CA, a cluster bus
/// on `listen_ip`, its registration lease and, if one runs, the
/// persistence service.
pub fn member_args(
    ca: &Path,
    listen_ip: IpAddr,
    ttl_secs: u64,
    persistence: Option<SocketAddr>,
) -> Vec<String> {
    let mut args = vec![
        "--cluster-ca".into(),
        ca.display().to_string(),
        "--cluster-listen".into(),
        SocketAddr::new(listen_ip, 0).to_string(),
        "--lease-ttl-secs".into(),
        ttl_secs.to_string(),
    ];
    if let Some(p) = persistence {
        args.extend(["--persistence".into(), p.to_string()]);
    }
    args
}

/// How a coordinator runs.
pub struct CoordinatorSpec<'a> {
    pub id: &'a str,
    /// The etcd URL it uses.
    pub etcd_url: String,
    /// The CA and client certificate it reaches etcd with.
    pub etcd_tls: EtcdTls,
    /// How long it waits after the first shard registers before placing
    /// cells.
    pub settle_ms: u64,
    /// Its leadership lease; `None` keeps the binary's default.
    pub lease_ttl_secs: Option<u64>,
    /// Whether it moves cells on its own (join balance, relief of
    /// overloaded shards; the binary's default). Off (`--no-rebalance`)
    /// where a test moves cells itself and counts what each shard owns.
    pub rebalance: bool,
    /// Further flags (`--tick-budget-ms MS`, ...).
    pub extra: &'a [&'a str],
    /// The world definition directory.
    pub world: String,
    /// The address its metrics listen on.
    pub ip: IpAddr,
    /// The network namespace it runs in, if any.
    pub netns: Option<&'a str>,
}

impl<'a> CoordinatorSpec<'a> {
    /// On loopback; places cells 1 s after the first shard registers; a
    /// 2 s lease; rebalances.
    pub fn local(etcd: &EtcdServer, id: &'a str) -> CoordinatorSpec<'a> {
        CoordinatorSpec {
            id,
            etcd_url: etcd.client_url(),
            etcd_tls: etcd.tls(),
            settle_ms: 1000,
            lease_ttl_secs: Some(2),
            rebalance: true,
            extra: &[],
            world: WORLD.into(),
            ip: LOCALHOST,
            netns: None,
        }
    }

    /// The same, moving no cell on its own (`--no-rebalance`).
    pub fn not_rebalancing(self) -> CoordinatorSpec<'a> {
        CoordinatorSpec {
            rebalance: false,
            ..self
        }
    }
}

/// Starts a coordinator and waits until it runs. It is given the cluster
/// CA `ca`, which checks who signed each migration request.
pub fn coordinator(dir: &Path, ca: &Path, spec: &CoordinatorSpec) -> Role {
    coordinator_with_env(dir, ca, spec, &[])
}

/// A running persistence service and where it listens.
pub struct PersistenceProc {
    pub role: Role,
    pub addr: SocketAddr,
}

/// `tessera persistence` on a free loopback port, its store under
/// `dir/persistence-data`; only members with certificates from `ca` may
/// connect. Give its address to shards and routers
/// ([`ShardSpec::persistence`], [`RouterSpec::persistence`]).
/// It reads the operators (who may back up and restore) from `etcd`. Routers may keep
/// accounts in it (`--router-accounts`: these clusters have no auth service).
pub fn persistence(dir: &Path, ca: &Path, etcd: &EtcdServer) -> PersistenceProc {
    persistence_at(
        dir,
        ca,
        "127.0.0.1:0".parse().expect("an address"),
        etcd,
        true,
    )
}

/// [`persistence`] on `listen` (to restart it on the same address); with `router_accounts`
/// false only the auth service may touch accounts.
pub fn persistence_at(
    dir: &Path,
    ca: &Path,
    listen: SocketAddr,
    etcd: &EtcdServer,
    router_accounts: bool,
) -> PersistenceProc {
    persistence_with(
        dir,
        ca,
        &PersistenceSpec {
            listen,
            etcd_url: etcd.client_url(),
            etcd_tls: etcd.tls(),
            netns: None,
            router_accounts,
        },
    )
}

/// Where and how the persistence service runs.
pub struct PersistenceSpec<'a> {
    /// Its QUIC address (port 0: a free one); its metrics listen on the same IP.
    pub listen: SocketAddr,
    /// The etcd URL it reads the operators from.
    pub etcd_url: String,
    pub etcd_tls: EtcdTls,
    /// The network namespace it runs in, if any.
    pub netns: Option<&'a str>,
    /// Whether routers may keep accounts in it (`--router-accounts`).
    pub router_accounts: bool,
}

/// `tessera persistence` as `spec` says, its store under `dir/persistence-data`; waits until
/// it is ready.
pub fn persistence_with(dir: &Path, ca: &Path, spec: &PersistenceSpec) -> PersistenceProc {
    let mut args: Vec<String> = vec![
        "persistence".into(),
        "--cluster-ca".into(),
        member_dir(ca, "persistence").display().to_string(),
        "--listen".into(),
        spec.listen.to_string(),
        "--data-dir".into(),
        dir.join("persistence-data").display().to_string(),
        "--metrics".into(),
        SocketAddr::new(spec.listen.ip(), 0).to_string(),
        "--etcd".into(),
        spec.etcd_url.clone(),
    ];
    args.extend(tls_flags(&spec.etcd_tls));
    if spec.router_accounts {
        args.push("--router-accounts".into());
    }
    let mut role = Role::start_in(dir, "persistence", spec.netns, "warn", &args);
    let addr = role.wait_ready(READY_TIMEOUT).addr("listen");
    PersistenceProc { role, addr }
}

/// A running front service (`tessera auth`, `tessera chat`) and where it
/// listens.
pub struct ServiceProc {
    pub role: Role,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

/// `tessera <role>` (auth, chat, asset) listening on `listen` (port 0: a
/// free one), keeping its state in the persistence service at `store`;
/// `extra` adds flags. Waits until it printed where it listens.
pub fn service(
    dir: &Path,
    ca: &Path,
    role: &str,
    name: &str,
    listen: SocketAddr,
    store: SocketAddr,
    extra: &[&str],
) -> ServiceProc {
    let mut args: Vec<String> = vec![
        role.into(),
        "--cluster-ca".into(),
        member_dir(ca, role).display().to_string(),
        "--listen".into(),
        listen.to_string(),
        "--persistence".into(),
        store.to_string(),
        "--data-dir".into(),
        dir.join(format!("{name}-data")).display().to_string(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    service_in(dir, name, None, &args)
}

/// Starts a front service with the full command line `args` (in network namespace `netns`
/// if given) and waits until it is ready.
pub fn service_in(dir: &Path, name: &str, netns: Option<&str>, args: &[String]) -> ServiceProc {
    let mut role = Role::start_in(dir, name, netns, "warn", args);
    let ready = role.wait_ready(READY_TIMEOUT);
    ServiceProc {
        role,
        addr: ready.addr("listen"),
        metrics: ready.metrics(),
    }
}

/// `tessera auth` replica `name` on `listen`, sharing the port with other
/// replicas (`--reuse-port`) and the signing key `dir/auth-signing.key`.
/// It reads the operators (who may change roles) from `etcd`.
pub fn auth(
    dir: &Path,
    ca: &Path,
    name: &str,
    listen: SocketAddr,
    store: SocketAddr,
    etcd: &EtcdServer,
) -> ServiceProc {
    let key = dir.join("auth-signing.key").display().to_string();
    let mut extra = vec!["--reuse-port".to_string(), "--signing-key".into(), key];
    extra.extend(etcd.client_flags(&etcd.client_url()));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    service(dir, ca, "auth", name, listen, store, &extra)
}

/// Where and how a shard runs.
pub struct ShardSpec<'a> {
    pub id: &'a str,
    pub lease_ttl_secs: u64,
    /// The etcd URL it uses.
    pub etcd_url: String,
    /// The CA and client certificate it reaches etcd with.
    pub etcd_tls: EtcdTls,
    /// The address its cluster bus and metrics listen on.
    pub ip: IpAddr,
    pub netns: Option<&'a str>,
    pub rust_log: &'a str,
    /// The persistence service it checkpoints its cells to, if any.
    pub persistence: Option<SocketAddr>,
    /// The world definition directory.
    pub world: String,
    /// The asset service's URL, to hot-reload scripts from.
    pub assets: Option<String>,
    /// More flags (`--linkdead-secs N`, ...).
    pub extra: &'a [&'a str],
}

impl<'a> ShardSpec<'a> {
    /// On loopback, a 2 s lease, no persistence.
    pub fn local(etcd: &EtcdServer, id: &'a str) -> ShardSpec<'a> {
        ShardSpec {
            id,
            lease_ttl_secs: 2,
            etcd_url: etcd.client_url(),
            etcd_tls: etcd.tls(),
            ip: LOCALHOST,
            netns: None,
            rust_log: "warn,tessera_shard=info",
            persistence: None,
            world: WORLD.into(),
            assets: None,
            extra: &[],
        }
    }
}

/// A running shard process and its metrics address.
pub struct ShardProc {
    pub role: Role,
    pub metrics: SocketAddr,
    /// What it announced (`cluster`, `metrics`).
    pub ready: Ready,
}

/// Starts a shard and waits until it printed its addresses.
pub fn shard(dir: &Path, ca: &Path, spec: &ShardSpec) -> ShardProc {
    shard_with_env(dir, ca, spec, &[])
}

/// [`shard`] with more environment variables (fault switches).
pub fn shard_with_env(dir: &Path, ca: &Path, spec: &ShardSpec, env: &[(&str, &str)]) -> ShardProc {
    let mut args = common_args(
        &spec.etcd_url,
        &spec.etcd_tls,
        "shard",
        spec.ip,
        &spec.world,
    );
    args.extend(member_args(
        &member_dir(ca, "shard"),
        spec.ip,
        spec.lease_ttl_secs,
        spec.persistence,
    ));
    args.extend(["--id".into(), spec.id.into()]);
    if let Some(url) = &spec.assets {
        args.extend(["--assets".into(), url.clone()]);
    }
    args.extend(spec.extra.iter().map(|a| a.to_string()));
    let mut role = Role::start_with_env(dir, spec.id, spec.netns, spec.rust_log, &args, env);
    let ready = role.wait_ready(READY_TIMEOUT);
    ShardProc {
        role,
        metrics: ready.metrics(),
        ready,
    }
}

/// A running router and where it listens.
pub struct RouterProc {
    pub role: Role,
    pub telnet: SocketAddr,
    pub quic: SocketAddr,
    pub cert: PathBuf,
    pub metrics: SocketAddr,
    /// What it announced (`cluster`, `telnet`, `quic`, `metrics`, ...).
    pub ready: Ready,
}

/// How a router runs.
pub struct RouterSpec {
    /// The etcd URL it uses.
    pub etcd_url: String,
    /// The CA and client certificate it reaches etcd with.
    pub etcd_tls: EtcdTls,
    /// The address its cluster bus listens on.
    pub bus_ip: IpAddr,
    pub lease_ttl_secs: u64,
    /// The persistence service it keeps accounts and players in; without
    /// one, its own data dir.
    pub persistence: Option<SocketAddr>,
    /// The world definition directory.
    pub world: String,
    /// Its id; its data dir is `<dir>/router-data` for `router-1`, else
    /// `<dir>/<id>-data`.
    pub id: String,
    /// More flags (`--auth ADDR`, `--chat ADDR`, ...).
    pub extra: Vec<String>,
    /// The network namespace it runs in, if any (its metrics listen on `bus_ip`).
    pub netns: Option<String>,
}

impl RouterSpec {
    /// `router-1` on loopback, a 2 s lease, no persistence.
    pub fn local(etcd: &EtcdServer) -> RouterSpec {
        RouterSpec {
            etcd_url: etcd.client_url(),
            etcd_tls: etcd.tls(),
            bus_ip: LOCALHOST,
            lease_ttl_secs: 2,
            persistence: None,
            world: WORLD.into(),
            id: "router-1".into(),
            extra: Vec::new(),
            netns: None,
        }
    }
}

/// A router with telnet, QUIC and metrics on free loopback ports; waits
/// until it printed them.
pub fn router(dir: &Path, ca: &Path, spec: &RouterSpec) -> RouterProc {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    router_at(dir, ca, spec, any, any)
}

/// Open player connections of a router (`tessera_router_connections`).
pub fn router_connections(metrics: SocketAddr) -> f64 {
    metric_samples(&scrape(metrics), "tessera_router_connections")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// Reads etcd directly, for what `tessera ctl` does not show (the
/// records under `migrations/`). One connection, reused: quick enough to
/// poll every millisecond.
pub struct EtcdPeek {
    rt: tokio::runtime::Runtime,
    store: tessera_coordinator::EtcdStore,
}

impl EtcdPeek {
    pub fn connect(etcd: &EtcdServer) -> EtcdPeek {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = rt
            .block_on(tessera_coordinator::EtcdStore::connect(
                &etcd.endpoints(),
                Some(&etcd.tls()),
                Duration::from_secs(5),
            ))
            .expect("connect to etcd");
        EtcdPeek { rt, store }
    }

    /// `(key, value)` of every record under `migrations/`.
    pub fn migrations(&self) -> Vec<(String, String)> {
        self.records("migrations/")
    }

    /// `(key, value)` of every record under `/tessera/<dir>`.
    pub fn records(&self, dir: &str) -> Vec<(String, String)> {
        use tessera_coordinator::ClusterStore;
        self.rt
            .block_on(self.store.list(&format!("/tessera/{dir}")))
            .expect("list records")
            .into_iter()
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect()
    }
}

/// The leading coordinator's id, from `tessera ctl status`.
pub fn leader(etcd: &EtcdServer) -> Option<String> {
    let (ok, out, _) = ctl(etcd, &["status"]);
    if !ok {
        return None;
    }
    out.lines()
        .find_map(|l| l.strip_prefix("leader: "))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "none")
}

/// Ticks a shard has simulated so far.
pub fn ticks(metrics: SocketAddr) -> f64 {
    metric_samples(&scrape(metrics), "tessera_shard_tick_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// Waits until every shard has ticked at least `n` times.
pub fn wait_ticking(shards: &[SocketAddr], n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while shards.iter().any(|m| ticks(*m) < n) {
        assert!(Instant::now() < deadline, "shards are not all ticking");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entities per (shard metrics address, cell label), from the gauges.
pub fn entities_by_cell(shards: &[SocketAddr]) -> Vec<(SocketAddr, String, f64)> {
    let mut out = Vec::new();
    for m in shards {
        for (labels, v) in metric_samples(&scrape(*m), "tessera_shard_entities") {
            out.push((*m, labels, v));
        }
    }
    out
}

/// Entities per (shard, cell) and their total, every shard scraped at the
/// same time (one thread each), so that an entity handed from one shard to
/// another cannot be counted twice by the reading (it is in flight, in
/// neither count, for at least a bus round trip; the source's count drops
/// in the same tick it sends the entity).
pub fn entities_at_once(shards: &[SocketAddr]) -> (f64, Vec<(SocketAddr, String, f64)>) {
    let texts: Vec<(SocketAddr, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .map(|m| s.spawn(move || (*m, scrape(*m))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scrape thread"))
            .collect()
    });
    let mut rows = Vec::new();
    for (m, text) in texts {
        for (labels, v) in metric_samples(&text, "tessera_shard_entities") {
            rows.push((m, labels, v));
        }
    }
    (rows.iter().map(|(_, _, v)| v).sum(), rows)
}

/// The world's entity count: the sum of `tessera_shard_entities` over the
/// shards (read one after the other, so an entity in flight between two
/// shards can be missed or, rarely, counted twice by one reading).
pub fn entities(shards: &[SocketAddr]) -> f64 {
    entities_by_cell(shards).iter().map(|(_, _, v)| v).sum()
}

/// The entity count once two readings 300 ms apart agree (10 s at most).
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

/// `tessera ctl --etcd URL args...` without a credential, for the
/// read-only commands: (success, stdout, stderr).
pub fn ctl(etcd: &EtcdServer, args: &[&str]) -> (bool, String, String) {
    run(ctl_command(etcd, None, args))
}

/// `tessera ctl` as the operator [`ca_init`] issued a credential for, for
/// the commands that change the cluster (`move`, `drain`, `rebalance`
/// without `--dry-run`).
pub fn ops(etcd: &EtcdServer, ca: &Path, args: &[&str]) -> (bool, String, String) {
    ctl_as(etcd, &operator_credential(ca), args)
}

/// `tessera ctl --credential CREDENTIAL args...`.
pub fn ctl_as(etcd: &EtcdServer, credential: &Path, args: &[&str]) -> (bool, String, String) {
    run(ctl_command(etcd, Some(credential), args))
}

/// The `tessera ctl` command line, to spawn it and not wait (the
/// environment's TESSERA_CREDENTIAL is not passed on: only `credential`
/// counts).
pub fn ctl_command(etcd: &EtcdServer, credential: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["ctl", "--etcd", &etcd.client_url()])
        .args(etcd.tls_flags())
        .args(args)
        .env_remove("TESSERA_CREDENTIAL");
    if let Some(c) = credential {
        cmd.arg("--credential").arg(c);
    }
    cmd
}

fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tessera ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// One row of `tessera ctl cells --json`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnerRow {
    pub cell: String,
    pub owner: String,
    pub epoch: u64,
    pub owner_live: bool,
}

/// Every cell's owner, sorted by cell.
pub fn owners(etcd: &EtcdServer) -> Vec<OwnerRow> {
    let (ok, json, err) = ctl(etcd, &["cells", "--json"]);
    assert!(ok, "ctl cells: {err}");
    let cells: serde_json::Value = serde_json::from_str(&json).expect("json");
    let mut out: Vec<_> = cells
        .as_array()
        .expect("array")
        .iter()
        .map(|c| OwnerRow {
            cell: format!("{},{}", c["cell"]["x"], c["cell"]["z"]),
            owner: c["owner"].as_str().unwrap_or("").to_string(),
            epoch: c["epoch"].as_u64().unwrap_or(0),
            owner_live: c["owner_live"].as_bool().unwrap_or(false),
        })
        .collect();
    out.sort();
    out
}

/// Waits until `ctl shards` lists `id` (it registered).
pub fn wait_registered(etcd: &EtcdServer, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out, _) = ctl(etcd, &["shards"]);
        if ok && out.lines().any(|l| l.split_whitespace().next() == Some(id)) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never registered: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The timestamp at the start of a tracing log line
/// (`2026-11-25T10:04:07.123456Z  INFO ...`), in Unix milliseconds.
pub fn log_line_unix_ms(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + min * 60) as f64 * 1000.0 + secs * 1000.0) as i64)
}

/// A network namespace joined to the host by a veth pair:
/// `<prefix>.1` (and `<prefix>.3`, an extra host address) on the host end,
/// `<prefix>.2` inside. Removed on drop (deleting the namespace's end of
/// the pair deletes both ends).
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: IpAddr,
    /// A second host address, e.g. for etcd only, so that a route to it
    /// can be cut without cutting the cluster bus.
    pub host_ip2: IpAddr,
    pub inner_ip: IpAddr,
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates `tsr<pid>` with a veth pair on 10.200.<pid % 250>.0/24.
    pub fn create() -> Netns {
        let pid = std::process::id();
        let net = pid % 250;
        let ns = Netns {
            name: format!("tsr{pid}"),
            host_if: format!("tsh{pid}"),
            host_ip: IpAddr::V4(Ipv4Addr::new(10, 200, net as u8, 1)),
            host_ip2: IpAddr::V4(Ipv4Addr::new(10, 200, net as u8, 3)),
            inner_ip: IpAddr::V4(Ipv4Addr::new(10, 200, net as u8, 2)),
        };
        let inner_if = format!("tsn{pid}");
        let (h1, h2, i) = (
            format!("{}/24", ns.host_ip),
            format!("{}/24", ns.host_ip2),
            format!("{}/24", ns.inner_ip),
        );
        // From here on, drop removes whatever was created.
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns.name],
            vec![
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &inner_if,
            ],
            vec!["link", "set", &inner_if, "netns", &ns.name],
            vec!["addr", "add", &h1, "dev", &ns.host_if],
            vec!["addr", "add", &h2, "dev", &ns.host_if],
            vec!["link", "set", &ns.host_if, "up"],
            vec!["-n", &ns.name, "addr", "add", &i, "dev", &inner_if],
            vec!["-n", &ns.name, "link", "set", &inner_if, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip_cmd(&step) {
                panic!("cannot set up the network namespace (root and iproute2 needed): {e}");
            }
        }
        ns
    }

    /// Inside the namespace, drops everything sent to `ip` (a blackhole
    /// route): packets vanish without an error, as in a partition.
    pub fn cut_off(&self, ip: IpAddr) {
        let dst = format!("{ip}/32");
        ip_cmd(&["-n", &self.name, "route", "add", "blackhole", &dst]).expect("blackhole route");
    }

    pub fn heal(&self, ip: IpAddr) {
        let dst = format!("{ip}/32");
        ip_cmd(&["-n", &self.name, "route", "del", "blackhole", &dst]).expect("remove the route");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip_cmd(&["link", "del", &self.host_if]);
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}

/// A private network for the members of one test, so that each can be cut off alone: a
/// bridge on the host (`<net>.1` for the test itself and `<net>.2` for etcd) and, per
/// member, a network namespace joined to it by a veth pair (`<net>.10`, `<net>.11`, ...).
/// Members reach each other, etcd and the test across the bridge. Everything is removed
/// on drop. Needs root and iproute2.
pub struct Lan {
    bridge: String,
    /// The first three octets of the /24.
    net: [u8; 3],
    /// The host's address on the bridge (the test's clients come from it).
    pub host_ip: IpAddr,
    /// A second host address on the bridge, for etcd alone, so that a member can be cut off
    /// from etcd without being cut off from the test ([`Lan::cut_off`]).
    pub etcd_ip: IpAddr,
    hosts: Vec<LanHost>,
}

/// One member's place on a [`Lan`]: its namespace and address.
#[derive(Clone, Debug)]
pub struct LanHost {
    pub netns: String,
    pub ip: IpAddr,
    /// The host end of its veth pair (down: the member is cut off).
    host_if: String,
}

impl Lan {
    /// A bridge `tsb<pid>` on 10.201.<n>.0/24, `n` from the pid, skipping /24s another
    /// test's network on this machine already uses.
    pub fn create() -> Lan {
        let pid = std::process::id();
        let used = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let n = (0..250)
            .map(|i| ((pid + i) % 250) as u8)
            .find(|n| !used.contains(&format!("10.201.{n}.")))
            .expect("a free 10.201.x.0/24");
        let net = [10, 201, n];
        let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], last));
        let lan = Lan {
            bridge: format!("tsb{pid}"),
            net,
            host_ip: ip(1),
            etcd_ip: ip(2),
            hosts: Vec::new(),
        };
        let (h1, h2) = (format!("{}/24", lan.host_ip), format!("{}/24", lan.etcd_ip));
        // A bridge takes the lowest address of its ports unless it has one of its own: each
        // member's port would change it, and the members' ARP caches would send the host's
        // packets to an address it no longer has.
        let mac = format!(
            "02:54:53:{:02x}:{:02x}:{n:02x}",
            (pid >> 8) & 0xff,
            pid & 0xff
        );
        let steps: Vec<Vec<&str>> = vec![
            vec!["link", "add", &lan.bridge, "type", "bridge"],
            vec!["link", "set", &lan.bridge, "address", &mac],
            vec!["addr", "add", &h1, "dev", &lan.bridge],
            vec!["addr", "add", &h2, "dev", &lan.bridge],
            vec!["link", "set", &lan.bridge, "up"],
        ];
        for step in steps {
            if let Err(e) = ip_cmd(&step) {
                panic!("cannot set up the test network (root and iproute2 needed): {e}");
            }
        }
        lan
    }

    /// The network, for `--limit-exempt`: the test's clients all come from one address.
    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", self.net[0], self.net[1], self.net[2])
    }

    /// A new namespace on the bridge, for one member.
    pub fn add_host(&mut self) -> LanHost {
        let pid = std::process::id();
        let k = self.hosts.len();
        assert!(k < 200, "too many members on one test network");
        let host = LanHost {
            netns: format!("tsm{pid}x{k}"),
            ip: IpAddr::V4(Ipv4Addr::new(
                self.net[0],
                self.net[1],
                self.net[2],
                10 + k as u8,
            )),
            host_if: format!("tsv{pid}x{k}"),
        };
        let inner_if = format!("tsi{pid}x{k}");
        let addr = format!("{}/24", host.ip);
        // Pushed first, so that drop removes whatever was created.
        self.hosts.push(host.clone());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &host.netns],
            vec![
                "link",
                "add",
                &host.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &inner_if,
            ],
            vec!["link", "set", &inner_if, "netns", &host.netns],
            vec!["link", "set", &host.host_if, "master", &self.bridge],
            vec!["link", "set", &host.host_if, "up"],
            vec!["-n", &host.netns, "addr", "add", &addr, "dev", &inner_if],
            vec!["-n", &host.netns, "link", "set", &inner_if, "up"],
            vec!["-n", &host.netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip_cmd(&step) {
                panic!("cannot add a namespace to the test network: {e}");
            }
        }
        host
    }

    /// Cuts `host` off from everyone (the host end of its link goes down): what it sends
    /// and what is sent to it vanishes without an error, as in a network partition.
    pub fn isolate(&self, host: &LanHost) {
        ip_cmd(&["link", "set", &host.host_if, "down"]).expect("take the link down");
    }

    /// Joins `host` to the network again after [`Lan::isolate`].
    pub fn rejoin(&self, host: &LanHost) {
        ip_cmd(&["link", "set", &host.host_if, "up"]).expect("bring the link up");
    }

    /// Inside `host`'s namespace, drops everything sent to `ip` (a blackhole route).
    pub fn cut_off(&self, host: &LanHost, ip: IpAddr) {
        let dst = format!("{ip}/32");
        ip_cmd(&["-n", &host.netns, "route", "add", "blackhole", &dst]).expect("blackhole route");
    }

    /// Removes the route [`Lan::cut_off`] added (no error if there is none).
    pub fn restore_route(&self, host: &LanHost, ip: IpAddr) {
        let dst = format!("{ip}/32");
        let _ = ip_cmd(&["-n", &host.netns, "route", "del", "blackhole", &dst]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip_cmd(&["link", "del", &h.host_if]);
            let _ = ip_cmd(&["netns", "del", &h.netns]);
        }
        let _ = ip_cmd(&["link", "del", &self.bridge]);
    }
}

/// `GET /metrics`, or `None` if the process does not answer (it exited).
pub fn try_scrape(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A router like [`router`], but with telnet and QUIC on the given
/// addresses: to restart a router where it was (same id, ports and data
/// dir, so the same certificate), as a rolling update does.
pub fn router_at(
    dir: &Path,
    ca: &Path,
    spec: &RouterSpec,
    telnet: SocketAddr,
    quic: SocketAddr,
) -> RouterProc {
    router_at_with_env(dir, ca, spec, telnet, quic, &[])
}

/// [`router_at`] with more environment variables (the fault switches of test builds, such
/// as `TESSERA_FAULT_ROUTER_PANIC_AFTER_MS`).
pub fn router_at_with_env(
    dir: &Path,
    ca: &Path,
    spec: &RouterSpec,
    telnet: SocketAddr,
    quic: SocketAddr,
    env: &[(&str, &str)],
) -> RouterProc {
    let mut args = common_args(
        &spec.etcd_url,
        &spec.etcd_tls,
        "router",
        spec.bus_ip,
        &spec.world,
    );
    args.extend(member_args(
        &member_dir(ca, "router"),
        spec.bus_ip,
        spec.lease_ttl_secs,
        spec.persistence,
    ));
    let data = if spec.id == "router-1" {
        dir.join("router-data")
    } else {
        dir.join(format!("{}-data", spec.id))
    };
    args.extend([
        "--id".into(),
        spec.id.clone(),
        "--telnet".into(),
        telnet.to_string(),
        "--quic".into(),
        quic.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    args.extend(spec.extra.iter().cloned());
    let name = if spec.id == "router-1" {
        "router"
    } else {
        &spec.id
    };
    let mut role = Role::start_with_env(dir, name, spec.netns.as_deref(), "warn", &args, env);
    let ready = role.wait_ready(READY_TIMEOUT);
    RouterProc {
        role,
        telnet: ready.addr("telnet"),
        quic: ready.addr("quic"),
        cert: ready
            .files
            .get("quic_cert")
            .cloned()
            .unwrap_or_else(|| data.join("quic-cert.der")),
        metrics: ready.metrics(),
        ready,
    }
}

/// How a telnet gateway (`tessera telnet-gateway`) runs.
pub struct GatewaySpec {
    /// The etcd URL it finds the routers in.
    pub etcd_url: String,
    /// The CA and client certificate it reaches etcd with.
    pub etcd_tls: EtcdTls,
    pub id: String,
    /// The routers' QUIC certificate it pins (every router of the cluster
    /// shows this one).
    pub router_cert: PathBuf,
    /// More flags (`--drain-timeout-secs N`, ...).
    pub extra: Vec<String>,
    /// The address its telnet port and metrics listen on.
    pub ip: IpAddr,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    /// Its telnet address (port 0: a free one), to restart it where players expect it.
    pub telnet: Option<SocketAddr>,
}

impl GatewaySpec {
    /// `gateway-1`, pinning `router_cert`.
    pub fn local(etcd: &EtcdServer, router_cert: &Path) -> GatewaySpec {
        GatewaySpec {
            etcd_url: etcd.client_url(),
            etcd_tls: etcd.tls(),
            id: "gateway-1".into(),
            router_cert: router_cert.to_path_buf(),
            extra: Vec::new(),
            ip: LOCALHOST,
            netns: None,
            telnet: None,
        }
    }
}

/// A running telnet gateway and where it listens.
pub struct GatewayProc {
    pub role: Role,
    pub telnet: SocketAddr,
    /// The telnet-over-TLS port, if `--telnet-tls` was among the flags.
    pub telnet_tls: Option<SocketAddr>,
    pub metrics: SocketAddr,
}

/// A telnet gateway with telnet and metrics on free loopback ports, shown
/// the cluster CA `ca`; waits until it printed where it listens.
pub fn gateway(dir: &Path, ca: &Path, spec: &GatewaySpec) -> GatewayProc {
    gateway_with_env(dir, ca, spec, &[])
}

/// Players the gateway resumed on another router
/// (`tessera_gateway_resumes_total`, summed over its labels; 0 before
/// the first).
pub fn gateway_resumes(metrics: SocketAddr) -> f64 {
    metric_samples(&scrape(metrics), "tessera_gateway_resumes_total")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// A `tessera bots` swarm against a router that fails on any error or
/// disconnect (`--max-errors 0`).
pub struct BotSwarm {
    role: Role,
    secs: u64,
}

impl BotSwarm {
    /// Starts `tessera bots` with `args` (the scenario, bot counts and
    /// seed; the router's addresses, `--duration secs`, `--max-errors 0`
    /// and `--no-progress` are added) and waits until all `bots` are in
    /// the world.
    pub fn start(
        dir: &Path,
        router: &RouterProc,
        bots: usize,
        secs: u64,
        args: &[&str],
    ) -> BotSwarm {
        BotSwarm::start_at(dir, &router.ready, &router.cert, bots, secs, args)
    }

    /// [`BotSwarm::start`] against the router that announced `router` (serving `cert`).
    pub fn start_at(
        dir: &Path,
        router: &Ready,
        cert: &Path,
        bots: usize,
        secs: u64,
        args: &[&str],
    ) -> BotSwarm {
        let metrics = router.metrics();
        let before = router_connections(metrics);
        let mut all: Vec<String> = vec![
            "bots".into(),
            "--quic-addr".into(),
            router.addr("quic").to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--telnet-addr".into(),
            router.addr("telnet").to_string(),
            "--duration".into(),
            secs.to_string(),
            "--max-errors".into(),
            "0".into(),
            "--no-progress".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let role = Role::start(dir, "bots", &all);
        let deadline = Instant::now() + Duration::from_secs(30);
        while router_connections(metrics) < before + bots as f64 {
            assert!(
                Instant::now() < deadline,
                "the bots did not all log in: {} connections",
                router_connections(metrics)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        BotSwarm { role, secs }
    }

    /// Whether the bots are still playing.
    pub fn running(&mut self) -> bool {
        self.role.try_exit().is_none()
    }

    /// Waits for the swarm's end; it must report no error or disconnect.
    pub fn finish_without_errors(mut self) {
        let timeout = Duration::from_secs(self.secs + 60);
        let (_, errors) = self
            .role
            .wait_line_timed("errors and disconnects: ", timeout);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.role.try_exit() {
                break status;
            }
            assert!(Instant::now() < deadline, "tessera bots did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(errors, "none", "bots saw errors or disconnects");
        assert!(status.success(), "tessera bots exited with {status}");
    }
}

/// Pause and stop flags shared by the walkers of a test.
pub struct WalkFlags {
    pub stop: std::sync::atomic::AtomicBool,
    pub paused: std::sync::atomic::AtomicBool,
}

impl WalkFlags {
    /// Flags with the walkers paused (a test starts them once it has its
    /// baseline readings).
    pub fn paused() -> std::sync::Arc<WalkFlags> {
        std::sync::Arc::new(WalkFlags {
            stop: false.into(),
            paused: true.into(),
        })
    }
}

/// How a walker walks.
#[derive(Clone, Copy)]
pub struct Pace {
    /// Rest between steps.
    pub rest: Duration,
    /// Ask `where` after every this many steps (none: never).
    pub where_every: Option<usize>,
}

/// What a walker saw: its client, its steps, and each `where` it asked.
pub struct WalkLog {
    pub client: TelnetClient,
    pub steps: usize,
    pub seen: Vec<(Instant, Where)>,
}

/// A telnet player walking `pattern` over and over on its own thread until
/// told to stop; idle while `paused` is set. Every step must be answered
/// with `You walk` or `Something blocks your way` (players jostle), and
/// every `where` with a position.
pub struct Walker {
    pub name: String,
    thread: Option<std::thread::JoinHandle<Result<WalkLog, String>>>,
}

impl Walker {
    /// Logs each of `names` in on `telnet` (password [`PW`]) and starts it walking the
    /// pattern of `patterns` at its place (the first name the first pattern), at `pace`.
    pub fn start_each(
        telnet: SocketAddr,
        names: &[&str],
        patterns: &[&'static [&'static str]],
        flags: &std::sync::Arc<WalkFlags>,
        pace: Pace,
    ) -> Vec<Walker> {
        names
            .iter()
            .zip(patterns)
            .map(|(name, pattern)| {
                let client = TelnetClient::create(telnet, name, PW);
                Walker::start(client, pattern, flags.clone(), pace)
            })
            .collect()
    }

    pub fn start(
        mut client: TelnetClient,
        pattern: &'static [&'static str],
        flags: std::sync::Arc<WalkFlags>,
        pace: Pace,
    ) -> Walker {
        use std::sync::atomic::Ordering;
        let name = client.name.clone().unwrap_or_default();
        let who = name.clone();
        let thread = std::thread::spawn(move || {
            let mut steps = 0;
            let mut seen = Vec::new();
            while !flags.stop.load(Ordering::Relaxed) {
                if flags.paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let dir = pattern[steps % pattern.len()];
                client.send_line(dir);
                match client.try_read_until_prompt(Duration::from_secs(15)) {
                    Some(a)
                        if a.starts_with("You walk")
                            || a.starts_with("Something blocks your way") => {}
                    Some(a) => return Err(format!("{who}: `{dir}` answered {a:?}")),
                    None => {
                        return Err(format!(
                            "{who}: no answer to `{dir}` (disconnected: {})",
                            client.is_eof()
                        ))
                    }
                }
                steps += 1;
                if pace.where_every.is_some_and(|n| steps % n == 0) {
                    client.send_line("where");
                    let text = client.try_read_until_prompt(Duration::from_secs(15));
                    match text.as_deref().and_then(Where::parse) {
                        Some(w) => seen.push((Instant::now(), w)),
                        None => return Err(format!("{who}: `where` answered {text:?}")),
                    }
                }
                std::thread::sleep(pace.rest);
            }
            Ok(WalkLog {
                client,
                steps,
                seen,
            })
        });
        Walker {
            name,
            thread: Some(thread),
        }
    }

    /// Panics with the walker's error if it stopped on its own.
    pub fn check(&mut self) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let t = self.thread.take().expect("thread");
            match t.join() {
                Ok(Ok(_)) => panic!("{} stopped walking", self.name),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("{}'s thread panicked", self.name),
            }
        }
    }

    /// Joins the walker (after `stop` was set).
    pub fn finish(mut self) -> WalkLog {
        match self.thread.take().expect("thread").join() {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("{}'s thread panicked", self.name),
        }
    }
}

/// [`coordinator`] with more environment variables (the fault switches of test builds, such
/// as `TESSERA_FAULT_COORDINATOR_PANIC_AFTER_MS`).
pub fn coordinator_with_env(
    dir: &Path,
    ca: &Path,
    spec: &CoordinatorSpec,
    env: &[(&str, &str)],
) -> Role {
    let id = spec.id;
    let mut args = common_args(
        &spec.etcd_url,
        &spec.etcd_tls,
        "coordinator",
        spec.ip,
        &spec.world,
    );
    args.extend([
        "--id".into(),
        id.into(),
        "--cluster-ca".into(),
        member_dir(ca, "coordinator").display().to_string(),
        "--settle-ms".into(),
        spec.settle_ms.to_string(),
    ]);
    if let Some(ttl) = spec.lease_ttl_secs {
        args.extend(["--lease-ttl-secs".into(), ttl.to_string()]);
    }
    if !spec.rebalance {
        args.push("--no-rebalance".into());
    }
    args.extend(spec.extra.iter().map(|a| a.to_string()));
    let mut role = Role::start_with_env(
        dir,
        id,
        spec.netns,
        "warn,tessera_coordinator=info",
        &args,
        env,
    );
    role.wait_ready(READY_TIMEOUT);
    role
}

/// [`router`] with more environment variables (the fault switches of test builds, such as
/// `TESSERA_FAULT_ROUTER_PANIC_AFTER_MS`).
pub fn router_with_env(
    dir: &Path,
    ca: &Path,
    spec: &RouterSpec,
    env: &[(&str, &str)],
) -> RouterProc {
    let any = SocketAddr::new(LOCALHOST, 0);
    router_at_with_env(dir, ca, spec, any, any, env)
}

/// [`gateway`] with more environment variables (the fault switches of test builds, such as
/// `TESSERA_FAULT_GATEWAY_PANIC_AT_CONNECTION`).
pub fn gateway_with_env(
    dir: &Path,
    ca: &Path,
    spec: &GatewaySpec,
    env: &[(&str, &str)],
) -> GatewayProc {
    let mut args: Vec<String> = vec![
        "telnet-gateway".into(),
        "--etcd".into(),
        spec.etcd_url.clone(),
    ];
    args.extend(tls_flags(&spec.etcd_tls));
    args.extend([
        "--cluster-ca".into(),
        member_dir(ca, "gateway").display().to_string(),
        "--router-cert".into(),
        spec.router_cert.display().to_string(),
        "--id".into(),
        spec.id.clone(),
        "--telnet".into(),
        spec.telnet
            .unwrap_or(SocketAddr::new(spec.ip, 0))
            .to_string(),
        "--metrics".into(),
        SocketAddr::new(spec.ip, 0).to_string(),
    ]);
    args.extend(spec.extra.iter().cloned());
    let mut role = Role::start_with_env(
        dir,
        &spec.id,
        spec.netns.as_deref(),
        "warn,tessera_gateway=info",
        &args,
        env,
    );
    let ready = role.wait_ready(READY_TIMEOUT);
    GatewayProc {
        role,
        telnet: ready.addr("telnet"),
        telnet_tls: ready.addrs.get("telnet_tls").copied(),
        metrics: ready.metrics(),
    }
}

/// Waits (up to `timeout`, polling every 10 ms) for `role` to exit; its exit status and when
/// the exit was seen.
pub fn wait_exit(role: &mut Role, timeout: Duration) -> (ExitStatus, SystemTime) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = role.try_exit() {
            return (status, SystemTime::now());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within {timeout:?}; stderr:\n{}",
            role.name,
            role.stderr_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
