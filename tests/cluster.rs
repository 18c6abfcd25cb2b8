//! The cluster as separate processes against a real etcd: two coordinators
//! (leader election), two shard processes and a router, talking over the
//! QUIC cluster bus with mutual TLS. A connected telnet player walks across
//! the shard border, has her cell live-migrated (`tessera ctl move`), her
//! shard drained by SIGTERM, her cell migrated again while the leading
//! coordinator is dead (the standby completes it), and finally her shard
//! killed with SIGKILL (failover; the router puts her back). The world's
//! entity count never changes and she never disconnects. A second test
//! stops etcd for 10 s.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;

use common::{metric_samples, scrape, TelnetClient, TestDir};
use etcd::EtcdServer;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/worlds/default");
const PW: &str = "correct-horse";

/// One `tessera <role>` process; killed on drop.
struct Role {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_log: PathBuf,
}

impl Role {
    fn start(dir: &Path, name: &str, args: &[String]) -> Role {
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
    fn wait_line(&mut self, prefix: &str) -> String {
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

    fn addr_after(&mut self, prefix: &str) -> SocketAddr {
        let rest = self.wait_line(prefix);
        let word = rest.split_whitespace().next().unwrap_or("");
        word.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .trim_end_matches(';')
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad address in {rest:?}: {e}", self.name))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
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

fn common_args(etcd: &EtcdServer, role: &str) -> Vec<String> {
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

/// Where the cluster's roles find their CA and, if one runs, the persistence service.
struct Cluster {
    ca: PathBuf,
    persistence: Option<SocketAddr>,
}

fn member_args(cluster: &Cluster, ttl_secs: u64) -> Vec<String> {
    let mut args = vec![
        "--cluster-ca".into(),
        cluster.ca.display().to_string(),
        "--cluster-listen".into(),
        "127.0.0.1:0".into(),
        "--lease-ttl-secs".into(),
        ttl_secs.to_string(),
    ];
    if let Some(p) = cluster.persistence {
        args.extend(["--persistence".into(), p.to_string()]);
    }
    args
}

fn shard(dir: &Path, etcd: &EtcdServer, ca: &Cluster, id: &str) -> (Role, SocketAddr) {
    shard_with_ttl(dir, etcd, ca, id, 2)
}

/// `tessera persistence` on a free loopback port; returns it and its address.
fn persistence(dir: &Path, ca: &Path) -> (Role, SocketAddr) {
    let args: Vec<String> = vec![
        "persistence".into(),
        "--cluster-ca".into(),
        ca.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("persistence-data").display().to_string(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    let mut role = Role::start(dir, "persistence", &args);
    let addr = role.addr_after("persistence listening on ");
    (role, addr)
}

fn shard_with_ttl(
    dir: &Path,
    etcd: &EtcdServer,
    ca: &Cluster,
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
fn router(dir: &Path, etcd: &EtcdServer, ca: &Cluster, ttl_secs: u64) -> (Role, SocketAddr) {
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

fn ticks(metrics: SocketAddr) -> f64 {
    metric_samples(&scrape(metrics), "tessera_shard_tick_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

fn entities(shards: &[SocketAddr]) -> f64 {
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

fn settled_entities(shards: &[SocketAddr]) -> f64 {
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

fn ctl(etcd: &EtcdServer, args: &[&str]) -> (bool, String, String) {
    ctl_as(etcd, None, args)
}

/// `tessera ctl` with an operator credential.
fn ctl_as(etcd: &EtcdServer, credential: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["ctl", "--etcd", &etcd.client_url()])
        .args(args)
        .env_remove("TESSERA_CREDENTIAL");
    if let Some(c) = credential {
        cmd.arg("--credential").arg(c);
    }
    let out = cmd.output().expect("run tessera ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn processes_walk_migrate_drain_survive_a_leader_change_and_fail_over() {
    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca_dir = ca_init(dir.path());
    let (_store, store_addr) = persistence(dir.path(), &ca_dir);
    let ca = Cluster {
        ca: ca_dir,
        persistence: Some(store_addr),
    };

    let ops = operator_credential(&ca.ca, dir.path(), "ops");
    let ops = Some(ops.as_path());
    let mut coord_args = common_args(&etcd, "coordinator");
    coord_args.extend([
        "--settle-ms".into(),
        "1500".into(),
        "--lease-ttl-secs".into(),
        "2".into(),
        "--cluster-ca".into(),
        ca.ca.display().to_string(),
    ]);
    let mut c1 = Role::start(dir.path(), "coordinator-a", &{
        let mut a = coord_args.clone();
        a.extend(["--id".into(), "coordinator-a".into()]);
        a
    });
    c1.wait_line("coordinator coordinator-a running");
    let (s1, m1) = shard(dir.path(), &etcd, &ca, "shard-1");
    let (mut s2, m2) = shard(dir.path(), &etcd, &ca, "shard-2");
    let mut c2 = Role::start(dir.path(), "coordinator-b", &{
        let mut a = coord_args.clone();
        a.extend(["--id".into(), "coordinator-b".into()]);
        a
    });
    c2.wait_line("coordinator coordinator-b running");

    let (_router, telnet) = router(dir.path(), &etcd, &ca, 2);

    // Both shards simulate (the coordinator split the world between them).
    let deadline = Instant::now() + Duration::from_secs(15);
    while ticks(m1) < 10.0 || ticks(m2) < 10.0 {
        assert!(Instant::now() < deadline, "shards are not both ticking");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut ann = TelnetClient::create(telnet, "Ann", PW);
    let start = ann.where_();
    assert_eq!(
        (start.cell.as_str(), start.shard.as_str()),
        ("-1,0", "shard-1")
    );
    let before = settled_entities(&[m1, m2]);
    for _ in 0..3 {
        ann.command("e");
    }
    let after_walk = ann.where_();
    assert_eq!(
        (after_walk.cell.as_str(), after_walk.shard.as_str()),
        ("0,0", "shard-2"),
        "Ann should now be simulated by the other shard process"
    );
    // Speech reaches an NPC on the other shard process and comes back.
    for _ in 0..3 {
        ann.command("w");
    }
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    let after = settled_entities(&[m1, m2]);
    assert_eq!(
        before, after,
        "entities lost or duplicated across processes"
    );

    // The operator's view agrees: 16 cells split between the two shards,
    // and the load reports count the same entities as the metrics.
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, cells_json, _) = ctl(&etcd, &["cells", "--json"]);
    assert!(ok);
    let cells: serde_json::Value = serde_json::from_str(&cells_json).expect("ctl cells --json");
    let cells = cells.as_array().expect("an array of cells");
    assert_eq!(cells.len(), 16);
    let reported: u64 = cells
        .iter()
        .map(|c| c["entities"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reported as f64, after, "ctl cells entities vs metrics");
    for c in cells {
        let owner = c["owner"].as_str().unwrap();
        let x = c["cell"]["x"].as_i64().unwrap();
        assert_eq!(owner, if x < 0 { "shard-1" } else { "shard-2" }, "{c}");
    }
    let (ok, shards, _) = ctl(&etcd, &["shards"]);
    assert!(ok);
    assert!(shards.starts_with("SHARD"), "{shards}");
    assert_eq!(shards.lines().count(), 3, "{shards}");
    let (ok, status, _) = ctl(&etcd, &["status"]);
    assert!(ok && status.contains("leader: coordinator-a"), "{status}");
    // A wrong etcd address is a clear error, not a hang or a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ctl", "--etcd", "http://127.0.0.1:1", "status"])
        .output()
        .expect("run ctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:1"),
        "{err}"
    );

    // Live-migrate Ann's cell (with Mira and the other locals) to shard-2
    // while she is connected: nothing is lost, she stays connected, and her
    // commands now go to shard-2.
    let here = ann.where_();
    assert_eq!(
        (here.cell.as_str(), here.shard.as_str()),
        ("-1,0", "shard-1")
    );
    // Moves need an operator credential of this cluster.
    let (ok, _, err) = ctl(&etcd, &["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("needs an operator credential"), "{err}");
    let stranger_ca = dir.path().join("stranger");
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "init"])
        .arg(&stranger_ca)
        .status()
        .expect("tessera ca init");
    let stranger = operator_credential(&stranger_ca, dir.path(), "mallory");
    let (ok, _, err) = ctl_as(&etcd, Some(&stranger), &["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(
        ann.where_().shard,
        "shard-1",
        "a refused move moved nothing"
    );
    let (ok, moved, err) = ctl_as(&etcd, ops, &["move", "-1,0", "shard-2"]);
    assert!(ok, "ctl move failed: {moved} {err}");
    eprintln!("{}", moved.trim());
    assert!(
        moved.starts_with("moved cell -1,0 from shard-1 to shard-2 (epoch 2)"),
        "{moved}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let w = ann.where_();
        if w.shard == "shard-2" {
            assert_eq!(w.cell, "-1,0");
            assert!(
                w.distance_xz(&here) < 0.01,
                "Ann moved during the migration"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Ann's commands never went to shard-2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ann.command("n");
    ann.command("say hello again Mira");
    // Mira's script state came along: she remembers being greeted.
    let greeted = ann.wait_for("Mira says,", Duration::from_secs(5));
    let greetings = greeting_count(&greeted);
    assert_eq!(
        settled_entities(&[m1, m2]),
        after,
        "entities lost or duplicated by the migration"
    );
    // Moving it to where it already is, or to a shard that does not
    // exist, is a clear error.
    let (ok, _, err) = ctl_as(&etcd, ops, &["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("already owned by shard-2"), "{err}");
    let (ok, _, err) = ctl_as(&etcd, ops, &["move", "-1,0", "shard-9"]);
    assert!(!ok && err.contains("shard-9 is not registered"), "{err}");

    // SIGTERM on shard-2 drains it: its cells, Ann's included, move to
    // shard-1 by live migration; Ann stays connected; nothing is lost.
    let status = s2.terminate(Duration::from_secs(30));
    assert!(status.success(), "shard-2 exited with {status}");
    assert!(
        s2.wait_line("shard shard-2 drained: ")
            .starts_with("9 cells moved"),
        "shard-2 owned its 8 cells and -1,0"
    );
    let w = ann.where_();
    assert_eq!(
        (w.cell.as_str(), w.shard.as_str()),
        ("-1,0", "shard-1"),
        "after the drain"
    );
    ann.command("s");
    assert_eq!(ann.where_().shard, "shard-1");
    assert_eq!(
        settled_entities(&[m1]),
        after,
        "entities lost or duplicated by the drain"
    );
    let (_, cells_json, _) = ctl(&etcd, &["cells", "--json"]);
    let cells: serde_json::Value = serde_json::from_str(&cells_json).unwrap();
    assert!(cells
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["owner"] == "shard-1"));

    // A new shard joins. The leading coordinator dies, and a migration of
    // Ann's cell to the new shard is requested while no coordinator leads:
    // it completes once the standby takes over (its lease: 2 s).
    let (s3, m3) = shard(dir.path(), &etcd, &ca, "shard-3");
    c1.kill();
    let (ok, moved, err) = ctl_as(&etcd, ops, &["move", "-1,0", "shard-3"]);
    assert!(
        ok,
        "the move did not complete after the leader died: {moved} {err}"
    );
    let (_, status, _) = ctl(&etcd, &["status"]);
    assert!(
        status.contains("leader: coordinator-b"),
        "standby did not take over: {status:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while ann.where_().shard != "shard-3" {
        assert!(
            Instant::now() < deadline,
            "Ann's cell did not reach shard-3"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        settled_entities(&[m1, m3]),
        after,
        "entities lost or duplicated by the migration across a leader change"
    );

    // kill -9 the shard Ann is on. Its cell goes to a live shard when its
    // lease (2 s) expires, restored from its last checkpoint, and the
    // router puts Ann back into the world there on her next command.
    let mut s3 = s3;
    let killed = Instant::now();
    s3.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = loop {
        let answer = ann.command("where");
        if answer.contains("shard shard-1") {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "Ann was not put back into the world: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("kill -9 to serving again: {} ms", back.as_millis());
    assert!(
        back < Duration::from_secs(2 + 2 + 1),
        "failover took {back:?}"
    );
    assert_eq!(
        settled_entities(&[m1]),
        after,
        "every cell serves again on shard-1"
    );
    // Mira came back from the checkpoint, not from the world file: she
    // still counts Ann's greetings.
    ann.command("say hello Mira");
    let greeted = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert_eq!(
        greeting_count(&greeted),
        greetings + 1,
        "Mira's state after the failover: {greeted}"
    );
    drop(s1);
}

/// The count in Mira's "You again, Ann? That's N greetings so far." line.
fn greeting_count(line: &str) -> u32 {
    line.split("That's ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a repeat greeting: {line:?}"))
}

/// `tessera ca operator NAME`; returns the credential file.
fn operator_credential(ca: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.credential"));
    let status = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "operator", name, "--cluster-ca"])
        .arg(ca)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("tessera ca operator");
    assert!(status.success());
    out
}

fn ca_init(dir: &Path) -> PathBuf {
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
fn owners(etcd: &EtcdServer) -> Vec<(String, String, u64)> {
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

/// etcd stopped for 10 s and started again: the shards keep simulating and
/// serving players meanwhile (their 20 s leases outlive the outage), no cell
/// changes owner, and afterwards the cluster answers again.
#[test]
fn an_etcd_outage_of_ten_seconds_changes_nothing() {
    let dir = TestDir::new();
    let mut etcd = EtcdServer::start();
    // No persistence service here: shards run without checkpoints.
    let ca = Cluster {
        ca: ca_init(dir.path()),
        persistence: None,
    };
    let mut coord = common_args(&etcd, "coordinator");
    coord.extend([
        "--settle-ms".into(),
        "1000".into(),
        "--id".into(),
        "coordinator".into(),
        "--cluster-ca".into(),
        ca.ca.display().to_string(),
    ]);
    let mut c = Role::start(dir.path(), "coordinator", &coord);
    c.wait_line("coordinator coordinator running");
    let (_s1, m1) = shard_with_ttl(dir.path(), &etcd, &ca, "shard-1", 20);
    let (_s2, m2) = shard_with_ttl(dir.path(), &etcd, &ca, "shard-2", 20);
    let (_router, telnet) = router(dir.path(), &etcd, &ca, 20);
    let mut bob = TelnetClient::create(telnet, "Bob", PW);
    let before = owners(&etcd);
    assert_eq!(before.len(), 16);

    let ticks_before = ticks(m1) + ticks(m2);
    let outage = Instant::now();
    etcd.stop();
    // Players are served throughout: nothing on the player path needs etcd.
    let mut steps = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let dir = if steps % 2 == 0 { "e" } else { "w" };
        let answer = bob.command(dir);
        assert!(
            answer.starts_with("You walk"),
            "during the outage: {answer:?}"
        );
        steps += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let ticked = ticks(m1) + ticks(m2) - ticks_before;
    // Two shards at 30 Hz for 10 s: 600 ticks; allow for a slow machine.
    assert!(
        ticked > 400.0,
        "shards stopped simulating: {ticked} ticks in 10 s"
    );
    etcd.restart();

    // The cluster converges: the map is readable, nothing moved.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, status, _) = ctl(&etcd, &["status"]);
        if ok && status.contains("leader: coordinator") && status.contains("shards: 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence after etcd came back: {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        owners(&etcd),
        before,
        "a cell changed owner around the outage"
    );
    assert!(bob.command("where").contains("shard shard-1"));
}
