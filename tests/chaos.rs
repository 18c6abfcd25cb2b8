//! Chaos (issue 16, item 8): a bot swarm against a process cluster on etcd (two
//! coordinators, three shards, two routers, the persistence service, every member in a
//! network namespace of its own: `support_cluster::cluster::Cluster::on_lan`) while members
//! are killed (kill -9, then restarted as a supervisor would), frozen (SIGSTOP for a few
//! seconds beyond their lease) and cut off from everyone (the link of their namespace down
//! for as long), each role in turn. All the time it checks:
//! - the entity count: the NPCs (entities less players, over the shards) stay exact and the
//!   players are the bots and walkers in the world;
//! - one owner per region, from etcd's revision history of the cell map (no region changed
//!   owner while its owner was registered, except by a migration; epochs only go up);
//! - no acknowledged position write lost: telnet walkers ask `where` after every step they
//!   got an answer to, and after a fault they must stand where the last answer left them
//!   (or one unanswered step further);
//! - no acknowledged account lost: accounts created (and answered) during the run must all
//!   log in at the end;
//! - every bot and walker playing again within a bound after each fault.
//!
//! It writes a report (markdown, and JSON beside it) with the time to recover from each
//! fault and what was lost: `$TESSERA_CHAOS_REPORT`, default `target/chaos-report.md`.
//!
//! `chaos_short_one_fault_of_each_kind` runs in CI (about two minutes, short leases);
//! `chaos_every_role_in_turn` is the long run with the default leases (`#[ignore]`:
//! `scripts/chaos.sh`). The figures of a long run are in docs/performance.md, "Chaos".
//!
//! A finding is reported, not hidden: the test fails on a violation after the report is
//! written, so the report says what happened.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{metric_samples, TelnetClient, Where};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support_cluster::cluster::{Cluster, Kind, MemberSpec, WORLD_CELLS};
use support_cluster::*;

// ---------------------------------------------------------------------------- settings

/// What a fault does to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// kill -9, then a restart (as Kubernetes restarts a crashed container).
    Kill,
    /// SIGSTOP for the hold, then SIGCONT (and a restart if it exits, fenced).
    Pause,
    /// Its namespace's link down for the hold, then up (and a restart if it exits).
    Partition,
}

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill -9",
            FaultKind::Pause => "SIGSTOP",
            FaultKind::Partition => "partition",
        }
    }
}

/// A fault of the plan: what, and to a member of which role (the leading coordinator, the
/// shards and routers in turn).
#[derive(Clone, Copy, Debug)]
struct Planned {
    kind: FaultKind,
    role: Kind,
}

struct Settings {
    name: &'static str,
    /// Shards' and routers' registration lease, seconds.
    member_lease: u64,
    /// The coordinators' leader lease, seconds.
    coordinator_lease: u64,
    /// How much longer than the member's lease a pause or partition lasts.
    hold_extra: Duration,
    /// How long a killed member stays down before its restart.
    restart_delay: Duration,
    /// Each fault's slot: its hold plus this; a fault that recovers sooner leaves the rest
    /// of its slot to steady play (so the swarm's length is known in advance).
    settle: Duration,
    /// Every check must hold again within this long after the fault was lifted.
    recovery_bound: Duration,
    /// How much longer than the planned slots the bots play.
    bot_margin: Duration,
    quic_bots_per_router: usize,
    telnet_bots_per_router: usize,
    walkers_per_router: usize,
    plan: Vec<Planned>,
}

impl Settings {
    /// The CI run: one fault of each kind, short leases.
    fn short() -> Settings {
        Settings {
            name: "short",
            member_lease: 5,
            coordinator_lease: 3,
            hold_extra: Duration::from_secs(3),
            restart_delay: Duration::from_secs(2),
            settle: Duration::from_secs(16),
            recovery_bound: Duration::from_secs(30),
            quic_bots_per_router: 4,
            telnet_bots_per_router: 2,
            walkers_per_router: 2,
            // One fault of each kind.
            plan: vec![
                Planned {
                    kind: FaultKind::Kill,
                    role: Kind::Coordinator,
                },
                Planned {
                    kind: FaultKind::Pause,
                    role: Kind::Shard,
                },
                Planned {
                    kind: FaultKind::Partition,
                    role: Kind::Shard,
                },
            ],
            bot_margin: Duration::from_secs(15),
        }
    }

    /// The long run: every role, every kind of fault, `rounds` times, default leases.
    fn long(rounds: usize) -> Settings {
        let mut plan = Vec::new();
        for _ in 0..rounds {
            for kind in [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition] {
                for role in [
                    Kind::Coordinator,
                    Kind::Shard,
                    Kind::Router,
                    Kind::Persistence,
                ] {
                    plan.push(Planned { kind, role });
                }
            }
        }
        Settings {
            name: "long",
            member_lease: 20,
            coordinator_lease: 3,
            hold_extra: Duration::from_secs(3),
            restart_delay: Duration::from_secs(2),
            settle: Duration::from_secs(25),
            recovery_bound: Duration::from_secs(60),
            bot_margin: Duration::from_secs(40),
            quic_bots_per_router: 10,
            telnet_bots_per_router: 4,
            walkers_per_router: 2,
            plan,
        }
    }

    fn lease_of(&self, role: Kind) -> Duration {
        Duration::from_secs(match role {
            Kind::Coordinator => self.coordinator_lease,
            _ => self.member_lease,
        })
    }

    /// How long a fault lasts before it is lifted.
    fn hold(&self, p: &Planned) -> Duration {
        match p.kind {
            FaultKind::Kill => self.restart_delay,
            _ => self.lease_of(p.role) + self.hold_extra,
        }
    }

    fn slot(&self, p: &Planned) -> Duration {
        self.hold(p) + self.settle
    }

    fn bots(&self) -> usize {
        2 * (self.quic_bots_per_router + self.telnet_bots_per_router)
    }

    fn walkers(&self) -> usize {
        2 * self.walkers_per_router
    }
}

// ------------------------------------------------------------------- quiet attempts

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Sends `line` and reads the answer up to the next prompt: `None` when none came within
/// [`ANSWER_WAIT`] or the connection broke (quietly: a fault makes that expected).
fn ask(c: &mut TelnetClient, line: &str) -> Option<String> {
    quietly(|| {
        c.send_line(line);
        c.try_read_until_prompt(ANSWER_WAIT)
    })
    .flatten()
}

/// Runs `f`, turning a panic (the telnet helpers panic on a lost connection) into `None`
/// without printing it: a client in a chaos run expects to lose connections.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    QUIET.with(|q| q.set(false));
    r
}

// --------------------------------------------------------------------------- walkers

/// An outage of one walker: from its first failed command to its next answered step.
#[derive(Clone, Debug)]
struct Outage {
    from: SystemTime,
    to: Option<SystemTime>,
    why: String,
}

#[derive(Clone, Debug, Default)]
struct WalkerState {
    playing: bool,
    steps: u64,
    reconnects: u32,
    outages: Vec<Outage>,
    /// Acknowledged positions lost: (when noticed, what).
    lost: Vec<(SystemTime, String)>,
}

/// A telnet player pacing east and west across the border of x = 0 (shard-1 and shard-2 by
/// the X stripes), asking `where` after every answered step, reconnecting through any
/// router when its connection fails.
struct ChaosWalker {
    name: String,
    state: Arc<Mutex<WalkerState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const PATTERN: [&str; 6] = ["e", "e", "e", "w", "w", "w"];
/// How long a walker waits for an answer before it gives up on the connection.
const ANSWER_WAIT: Duration = Duration::from_secs(8);
/// A walker whose commands fail this long on a live connection reconnects, as a player
/// would.
const RECONNECT_AFTER: Duration = Duration::from_secs(10);
/// How far from where an answer left it a walker may stand afterwards, metres.
const POSITION_SLACK: f32 = 1.5;

fn step_of(dir: &str) -> (f32, f32) {
    match dir {
        "e" => (3.0, 0.0),
        "w" => (-3.0, 0.0),
        "n" => (0.0, -3.0),
        _ => (0.0, 3.0),
    }
}

/// Distance from `p` to the segment from `a` to `a + d`, in the XZ plane.
fn distance_to_step(p: (f32, f32), a: (f32, f32), d: (f32, f32)) -> f32 {
    let len2 = d.0 * d.0 + d.1 * d.1;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * d.0 + (p.1 - a.1) * d.1) / len2).clamp(0.0, 1.0)
    };
    let (x, z) = (a.0 + t * d.0, a.1 + t * d.1);
    ((p.0 - x).powi(2) + (p.1 - z).powi(2)).sqrt()
}

impl ChaosWalker {
    fn start(
        name: String,
        routers: Vec<SocketAddr>,
        home: usize,
        stop: Arc<AtomicBool>,
    ) -> ChaosWalker {
        let state = Arc::new(Mutex::new(WalkerState {
            playing: true,
            ..WalkerState::default()
        }));
        let first = TelnetClient::create(routers[home], &name, PW);
        let shared = state.clone();
        let who = name.clone();
        let thread = std::thread::spawn(move || {
            walk(who, first, routers, home, stop, shared);
        });
        ChaosWalker {
            name,
            state,
            thread: Some(thread),
        }
    }

    fn state(&self) -> WalkerState {
        self.state.lock().expect("walker").clone()
    }

    fn finish(mut self) -> WalkerState {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state()
    }
}

fn walk(
    name: String,
    first: TelnetClient,
    routers: Vec<SocketAddr>,
    home: usize,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<WalkerState>>,
) {
    let mut client = Some(first);
    // Where the last answered `where` put it, and the step sent since without an answer.
    let mut acked: Option<(f32, f32)> = None;
    let mut pending: Option<&str> = None;
    let mut checking = false;
    let mut i = 0usize;
    let fail = |state: &Arc<Mutex<WalkerState>>, why: String| {
        let mut s = state.lock().expect("walker");
        if s.playing {
            s.playing = false;
            s.outages.push(Outage {
                from: SystemTime::now(),
                to: None,
                why,
            });
        }
    };
    let compare = |state: &Arc<Mutex<WalkerState>>,
                   w: &Where,
                   acked: Option<(f32, f32)>,
                   pending: Option<&str>| {
        let Some(a) = acked else { return };
        let d = pending.map(step_of).unwrap_or((0.0, 0.0));
        let off = distance_to_step((w.x, w.z), a, d);
        if off > POSITION_SLACK {
            state.lock().expect("walker").lost.push((
                SystemTime::now(),
                format!(
                    "{name}: at ({:.1}, {:.1}) on {}, {off:.1} m from where its last answer \
                     left it ({:.1}, {:.1}; unanswered step: {pending:?})",
                    w.x, w.z, w.shard, a.0, a.1
                ),
            ));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            // Reconnect: home first, then the others.
            let order = (0..routers.len()).map(|k| routers[(home + k) % routers.len()]);
            let mut back = None;
            for addr in order {
                if let Some(c) = quietly(|| TelnetClient::login(addr, &name, PW)) {
                    back = Some(c);
                    break;
                }
            }
            match back {
                Some(c) => {
                    state.lock().expect("walker").reconnects += 1;
                    client = Some(c);
                    checking = true;
                }
                None => std::thread::sleep(Duration::from_millis(500)),
            }
            continue;
        };
        if checking {
            // After a failure: where does it stand now?
            let text = ask(c, "where");
            match text.as_deref().and_then(Where::parse) {
                Some(w) => {
                    compare(&state, &w, acked, pending);
                    acked = Some((w.x, w.z));
                    pending = None;
                    checking = false;
                }
                None => {
                    fail(&state, format!("`where` answered {text:?}"));
                    client = None;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let dir = PATTERN[i % PATTERN.len()];
        pending = Some(dir);
        let answer = ask(c, dir);
        let walked = answer
            .as_deref()
            .is_some_and(|a| a.starts_with("You walk") || a.starts_with("Something blocks"));
        if !walked {
            // A player whose commands keep failing reconnects after a while.
            let stuck = {
                let s = state.lock().expect("walker");
                s.outages.last().is_some_and(|o| {
                    o.to.is_none() && o.from.elapsed().unwrap_or_default() > RECONNECT_AFTER
                })
            };
            let gone = c.is_eof() || answer.is_none() || stuck;
            fail(&state, format!("`{dir}` answered {answer:?}"));
            checking = true;
            if gone {
                client = None;
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
            continue;
        }
        let text = ask(c, "where");
        match text.as_deref().and_then(Where::parse) {
            Some(w) => {
                acked = Some((w.x, w.z));
                pending = None;
                i += 1;
                let mut s = state.lock().expect("walker");
                s.steps += 1;
                if !s.playing {
                    s.playing = true;
                    if let Some(o) = s.outages.last_mut() {
                        o.to = Some(SystemTime::now());
                    }
                }
            }
            None => {
                fail(&state, format!("`where` answered {text:?}"));
                checking = true;
                if c.is_eof() || text.is_none() {
                    client = None;
                }
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // The end: it must stand where the last answer left it.
    if let Some(c) = client.as_mut() {
        let text = quietly(|| c.command("where"));
        if let Some(w) = text.as_deref().and_then(Where::parse) {
            compare(&state, &w, acked, pending);
        }
    }
}

// -------------------------------------------------------------------------- accounts

/// Creates an account every three seconds through the routers in turn, and keeps those whose
/// creation was answered (they must all log in at the end).
struct AccountWriter {
    acked: Arc<Mutex<Vec<(String, SystemTime)>>>,
    attempts: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AccountWriter {
    fn start(routers: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> AccountWriter {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (a, n) = (acked.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("Acct{k}");
                let addr = routers[k % routers.len()];
                k += 1;
                *n.lock().expect("attempts") += 1;
                let created = quietly(|| {
                    let mut c = TelnetClient::connect(addr);
                    let text = c.command(&format!("create {name} {PW}"));
                    let ok = text.contains(&format!("Welcome to Tessera, {name}!"));
                    if ok {
                        c.quit();
                    }
                    ok
                });
                if created == Some(true) {
                    a.lock().expect("accounts").push((name, SystemTime::now()));
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        });
        AccountWriter {
            acked,
            attempts,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<(String, SystemTime)>, u32) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let acked = self.acked.lock().expect("accounts").clone();
        let attempts = *self.attempts.lock().expect("attempts");
        (acked, attempts)
    }
}

// ---------------------------------------------------------------------------- swarms

/// A `tessera bots` swarm against one router that tolerates errors (they are expected
/// during faults) and writes its report (a per-second series) to a directory.
struct Swarm {
    role: Role,
    report_dir: PathBuf,
    started: SystemTime,
    bots: usize,
}

impl Swarm {
    fn start(c: &Cluster, router: &str, s: &Settings, secs: u64, seed: u64) -> Swarm {
        let ready = c.ready(router);
        let report_dir = c.path().join(format!("bots-{router}"));
        let args: Vec<String> = vec![
            "bots".into(),
            "--quic-addr".into(),
            ready.addr("quic").to_string(),
            "--cert".into(),
            c.router_cert().display().to_string(),
            "--telnet-addr".into(),
            ready.addr("telnet").to_string(),
            "--quic".into(),
            s.quic_bots_per_router.to_string(),
            "--telnet".into(),
            s.telnet_bots_per_router.to_string(),
            "--scenario".into(),
            "border".into(),
            "--seed".into(),
            seed.to_string(),
            "--duration".into(),
            secs.to_string(),
            "--report".into(),
            report_dir.display().to_string(),
            "--no-progress".into(),
        ];
        let started = SystemTime::now();
        let role = Role::start(c.path(), &format!("bots-{router}"), &args);
        Swarm {
            role,
            report_dir,
            started,
            bots: s.quic_bots_per_router + s.telnet_bots_per_router,
        }
    }

    fn running(&mut self) -> bool {
        self.role.try_exit().is_none()
    }

    /// Waits for the end of the run and reads its report.
    fn finish(mut self, timeout: Duration) -> Option<tessera_loadtest::stats::Report> {
        let deadline = Instant::now() + timeout;
        while self.role.try_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let text = std::fs::read_to_string(self.report_dir.join("report.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

// --------------------------------------------------------------------------- samples

/// One look at the whole cluster.
#[derive(Clone, Debug)]
struct Sample {
    at: SystemTime,
    /// Every cell placed and every region owned by a registered shard (etcd's history).
    cells_ok: bool,
    leader: bool,
    /// Entities less players over the shards, if every shard answered.
    npcs: Option<f64>,
    players: Option<f64>,
    /// Player connections over the routers, if every router answered.
    connections: Option<f64>,
    walkers_playing: usize,
    /// Every member runs, unfrozen and reachable.
    members_ok: bool,
}

/// What the samples must show when all is well.
struct Expect {
    npcs: f64,
    /// Bots and walkers.
    players: f64,
    walkers: usize,
}

impl Sample {
    fn npcs_ok(&self, e: &Expect) -> bool {
        self.npcs == Some(e.npcs)
    }

    /// The players are the bots and walkers (and at most one account being created).
    fn players_ok(&self, e: &Expect) -> bool {
        self.players
            .is_some_and(|p| p >= e.players && p <= e.players + 1.0)
    }

    fn bots_ok(&self, e: &Expect) -> bool {
        self.connections
            .is_some_and(|n| n >= e.players && n <= e.players + 1.0)
    }

    fn walkers_ok(&self, e: &Expect) -> bool {
        self.walkers_playing == e.walkers
    }

    fn ok(&self, e: &Expect) -> bool {
        self.cells_ok
            && self.leader
            && self.members_ok
            && self.npcs_ok(e)
            && self.players_ok(e)
            && self.bots_ok(e)
            && self.walkers_ok(e)
    }
}

fn sum_of(text: &str, metric: &str) -> f64 {
    metric_samples(text, metric).iter().map(|(_, v)| v).sum()
}

fn sample(c: &mut Cluster, walkers: &[ChaosWalker]) -> Sample {
    let map = c.map_now();
    let mut members_ok = true;
    // The world is what the registered shards simulate: a shard whose registration is gone
    // (revoked while it was frozen or cut off) no longer counts, whatever it still holds.
    let mut shard_addrs = Vec::new();
    let mut shards_all = true;
    let mut router_addrs = Vec::new();
    let mut routers_all = true;
    for kind in [
        Kind::Coordinator,
        Kind::Shard,
        Kind::Router,
        Kind::Persistence,
    ] {
        for name in c.names(kind) {
            let reachable = c.is_reachable(&name);
            members_ok &= reachable;
            match kind {
                Kind::Shard if map.shards.contains(&name) => {
                    if reachable {
                        shard_addrs.push(c.metrics(&name));
                    } else {
                        shards_all = false;
                    }
                }
                Kind::Router => {
                    if reachable {
                        router_addrs.push(c.metrics(&name));
                    } else {
                        routers_all = false;
                    }
                }
                _ => {}
            }
        }
    }
    // Every shard at the same moment (one thread each): an entity in flight between two
    // shards is in neither count, never in both.
    let (shard_texts, router_texts): (Vec<Option<String>>, Vec<Option<String>>) =
        std::thread::scope(|s| {
            let sh: Vec<_> = shard_addrs
                .iter()
                .map(|a| s.spawn(move || try_scrape(*a)))
                .collect();
            let ro: Vec<_> = router_addrs
                .iter()
                .map(|a| s.spawn(move || try_scrape(*a)))
                .collect();
            (
                sh.into_iter().map(|h| h.join().ok().flatten()).collect(),
                ro.into_iter().map(|h| h.join().ok().flatten()).collect(),
            )
        });
    let (npcs, players) = if shards_all && shard_texts.iter().all(Option::is_some) {
        let (mut e, mut p) = (0.0, 0.0);
        for t in shard_texts.iter().flatten() {
            e += sum_of(t, "tessera_shard_entities");
            p += sum_of(t, "tessera_shard_players");
        }
        (Some(e - p), Some(p))
    } else {
        (None, None)
    };
    let connections = (routers_all && router_texts.iter().all(Option::is_some)).then(|| {
        router_texts
            .iter()
            .flatten()
            .map(|t| sum_of(t, "tessera_router_connections"))
            .sum()
    });
    Sample {
        at: SystemTime::now(),
        cells_ok: map.all_owned(WORLD_CELLS),
        leader: map.leader.is_some(),
        npcs,
        players,
        connections,
        walkers_playing: walkers.iter().filter(|w| w.state().playing).count(),
        members_ok,
    }
}

// --------------------------------------------------------------------------- faults

/// What one fault did and how the cluster came back.
#[derive(Clone, Debug, serde::Serialize)]
struct FaultRecord {
    n: usize,
    /// Whether every check held when it started (else an earlier fault's trouble was still
    /// on, and what this one shows is not its own).
    steady_before: bool,
    kind: &'static str,
    role: &'static str,
    member: String,
    started_unix_ms: i64,
    /// How long the fault lasted (until SIGCONT, the heal, or the restart), ms.
    held_ms: i64,
    /// What the member did meanwhile or after (exited, fenced, restarted).
    member_fate: String,
    /// Each from the start of the fault.
    cells_owned_again: Back,
    npcs_exact_again: Back,
    players_exact_again: Back,
    bots_connected_again: Back,
    walkers_playing_again: Back,
    /// Every check holding (for 2 s) again; `None`: not within the bound.
    recovered_ms: Option<i64>,
    fewest_npcs: Option<f64>,
    most_players: Option<f64>,
    /// Bots' errors and disconnects from the fault to its recovery (their reports).
    bot_errors: u64,
    /// Longest time a walker could not play.
    longest_walker_outage_ms: i64,
    /// What the walkers' failed commands got (a few, distinct).
    walker_failures: Vec<String>,
    /// Positions the walkers lost in this window.
    lost_positions: Vec<String>,
    /// For a shard cut off or frozen: how long it went on simulating (its log says when it
    /// stopped) after the first of its regions had a new owner; negative: it stopped first.
    stopped_before_takeover_ms: Option<i64>,
    /// Changes in etcd's history during the window that broke one owner per region.
    owner_violations: Vec<String>,
}

fn ms(from: SystemTime, to: SystemTime) -> i64 {
    unix_ms(to) - unix_ms(from)
}

/// When a check held again, from the start of a fault.
#[derive(Clone, Copy, Debug, serde::Serialize)]
enum Back {
    /// It held all along.
    Undisturbed,
    /// It held again this many ms after the start (and until the end of the window).
    After(i64),
    /// It did not hold at the end of the window.
    Not,
}

/// When `ok` held again after the last sample it did not.
fn back_at(samples: &[Sample], t0: SystemTime, ok: impl Fn(&Sample) -> bool) -> Back {
    let Some(last_bad) = samples.iter().rposition(|s| !ok(s)) else {
        return Back::Undisturbed;
    };
    match samples.get(last_bad + 1) {
        Some(s) => Back::After(ms(t0, s.at)),
        None => Back::Not,
    }
}

/// The member of `role` a fault hits: the leading coordinator, the shards and routers in
/// turn.
fn pick(c: &Cluster, role: Kind, turn: &mut BTreeMap<Kind, usize>) -> String {
    if role == Kind::Coordinator {
        if let Some(l) = c.map_now().leader {
            return l;
        }
    }
    let names = c.names(role);
    let k = turn.entry(role).or_default();
    let name = names[*k % names.len()].clone();
    *k += 1;
    name
}

struct Run {
    settings: Settings,
    c: Cluster,
    walkers: Vec<ChaosWalker>,
    expect: Expect,
    samples: Vec<Sample>,
    notes: Vec<String>,
}

impl Run {
    /// Samples every 250 ms for `d`.
    fn watch_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let s = sample(&mut self.c, &self.walkers);
            self.samples.push(s);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Samples until every check has held for 2 s (the time it first held), or `bound`.
    fn wait_recovered(&mut self, bound: Duration) -> Option<SystemTime> {
        let deadline = Instant::now() + bound;
        let mut since: Option<(Instant, SystemTime)> = None;
        while Instant::now() < deadline {
            let s = sample(&mut self.c, &self.walkers);
            let ok = s.ok(&self.expect);
            self.samples.push(s.clone());
            match (ok, since) {
                (true, None) => since = Some((Instant::now(), s.at)),
                (true, Some((t, at))) if t.elapsed() >= Duration::from_secs(2) => return Some(at),
                (false, _) => since = None,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
    }

    /// Restarts `name` if its process exited; what happened.
    fn restart_if_exited(&mut self, name: &str) -> Option<String> {
        let status = self.c.try_exit(name)?;
        self.c.restart(name);
        Some(format!("exited ({status}); restarted"))
    }

    /// What a supervisor does once a fault is lifted: restarts the member if it exited,
    /// and restarts a shard or router that runs on without its registration for 5 s (it
    /// cannot serve anyone: a liveness probe would restart it).
    fn supervise(&mut self, name: &str, role: Kind) -> Option<String> {
        if !matches!(role, Kind::Shard | Kind::Router) {
            return self.restart_if_exited(name);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Some(f) = self.restart_if_exited(name) {
                return Some(f);
            }
            let map = self.c.map_now();
            if map.shards.contains(name) || map.routers.contains(name) {
                return None;
            }
            let s = sample(&mut self.c, &self.walkers);
            self.samples.push(s);
            std::thread::sleep(Duration::from_millis(250));
        }
        self.c.kill(name);
        self.c.restart(name);
        Some(format!("{UNREGISTERED} 5 s after it was let go; restarted"))
    }

    fn inject(&mut self, n: usize, p: Planned, name: &str) -> FaultRecord {
        let steady_before = self.samples.last().is_some_and(|s| s.ok(&self.expect));
        let t0 = SystemTime::now();
        let first_sample = self.samples.len();
        let history_from = self.c.history().len();
        let hold = self.settings.hold(&p);
        eprintln!(
            "chaos {}: fault {n}: {} {} ({name}) for {hold:?}",
            self.settings.name,
            p.kind.label(),
            p.role.role()
        );
        let mut fate = Vec::new();
        match p.kind {
            FaultKind::Kill => {
                self.c.kill(name);
                self.watch_for(hold);
                self.c.restart(name);
                fate.push("restarted".to_string());
            }
            FaultKind::Pause => {
                self.c.pause(name);
                self.watch_for(hold);
                self.c.resume(name);
                // A member whose lease went meanwhile finds out on waking and stops.
                self.watch_for(Duration::from_secs(2));
                fate.extend(self.supervise(name, p.role));
            }
            FaultKind::Partition => {
                self.c.partition(name);
                self.watch_for(hold);
                self.c.heal(name);
                self.watch_for(Duration::from_secs(2));
                fate.extend(self.supervise(name, p.role));
            }
        }
        let lifted = SystemTime::now();
        let recovered = self.wait_recovered(self.settings.recovery_bound);
        // Anything that exited while the cluster recovered is restarted too (and noted).
        for kind in [
            Kind::Coordinator,
            Kind::Shard,
            Kind::Router,
            Kind::Persistence,
        ] {
            for other in self.c.names(kind) {
                if let Some(f) = self.restart_if_exited(&other) {
                    fate.push(format!("{other} {f}"));
                }
            }
        }
        let window = &self.samples[first_sample..];
        let e = &self.expect;
        let history = self.c.history();
        let check = self.c.owner_check();
        let end = recovered.unwrap_or_else(SystemTime::now);
        let owner_violations = check
            .violations
            .iter()
            .filter(|v| {
                // "rev N: ..." of a change seen in this window.
                let rev: i64 = v
                    .strip_prefix("rev ")
                    .and_then(|r| r.split(':').next())
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                history[history_from..].iter().any(|c| c.revision == rev)
            })
            .cloned()
            .collect();
        // (A frozen shard does not simulate; only a cut-off one can go on.)
        let stopped_before_takeover_ms = if p.role == Kind::Shard && p.kind == FaultKind::Partition
        {
            let takeover = check
                .owner_changes
                .iter()
                .filter(|(seen, _, from, _)| *seen >= t0 && from == name)
                .map(|(seen, ..)| *seen)
                .min();
            let stderr = self.c.role(name).stderr();
            // It stops simulating when it gives up its registration ("registration lost"),
            // or when its simulation stops ("shard stopped", after a last checkpoint).
            let stopped = stderr
                .lines()
                .filter(|l| l.contains("registration lost") || l.contains("shard stopped"))
                .filter_map(log_line_unix_ms)
                .find(|t| *t >= unix_ms(t0));
            takeover
                .zip(stopped)
                .map(|(taken, stopped)| stopped - unix_ms(taken))
        } else {
            None
        };
        let mut lost_positions = Vec::new();
        let mut longest = 0;
        let mut walker_failures: Vec<String> = Vec::new();
        for w in &self.walkers {
            let st = w.state();
            for (at, what) in &st.lost {
                if *at >= t0 && *at <= end + Duration::from_secs(1) {
                    lost_positions.push(what.clone());
                }
            }
            for o in &st.outages {
                if o.from >= t0 && o.from <= end {
                    let to = o.to.unwrap_or_else(SystemTime::now);
                    longest = longest.max(ms(o.from, to));
                    if walker_failures.len() < 4 && !walker_failures.contains(&o.why) {
                        walker_failures.push(o.why.clone());
                    }
                }
            }
        }
        let record = FaultRecord {
            n,
            steady_before,
            kind: p.kind.label(),
            role: p.role.role(),
            member: name.to_string(),
            started_unix_ms: unix_ms(t0),
            held_ms: ms(t0, lifted),
            member_fate: fate.join("; "),
            cells_owned_again: back_at(window, t0, |s| s.cells_ok && s.leader),
            npcs_exact_again: back_at(window, t0, |s| s.npcs_ok(e)),
            players_exact_again: back_at(window, t0, |s| s.players_ok(e)),
            bots_connected_again: back_at(window, t0, |s| s.bots_ok(e)),
            walkers_playing_again: back_at(window, t0, |s| s.walkers_ok(e)),
            recovered_ms: recovered.map(|r| ms(t0, r)),
            fewest_npcs: window.iter().filter_map(|s| s.npcs).reduce(f64::min),
            most_players: window.iter().filter_map(|s| s.players).reduce(f64::max),
            bot_errors: 0,
            longest_walker_outage_ms: longest,
            walker_failures,
            lost_positions,
            stopped_before_takeover_ms,
            owner_violations,
        };
        eprintln!("chaos {}: {record:?}", self.settings.name);
        record
    }
}

// --------------------------------------------------------------------------- the run

/// What a whole run found.
#[derive(Debug, serde::Serialize)]
struct Findings {
    settings: serde_json::Value,
    faults: Vec<FaultRecord>,
    skipped: Vec<String>,
    npcs: f64,
    players: f64,
    npcs_at_end: f64,
    accounts_acknowledged: usize,
    account_attempts: u32,
    accounts_lost: Vec<String>,
    walker_steps: u64,
    walker_reconnects: u32,
    positions_lost: Vec<String>,
    owner_writes: usize,
    owner_migrations: usize,
    owner_failovers: usize,
    owner_violations: Vec<String>,
    owner_warnings: Vec<String>,
    bot_errors: BTreeMap<String, u64>,
    bot_counts: BTreeMap<String, u64>,
    notes: Vec<String>,
    seconds: f64,
}

fn chaos(settings: Settings) -> Findings {
    let begun = Instant::now();
    let mut c = Cluster::on_lan();
    let lease = settings.member_lease;
    c.start(MemberSpec::persistence());
    for id in ["coordinator-a", "coordinator-b"] {
        c.start(MemberSpec::coordinator(id).lease(settings.coordinator_lease));
    }
    for id in ["shard-1", "shard-2", "shard-3"] {
        c.start(
            MemberSpec::shard(id)
                .lease(lease)
                .log("warn,tessera_shard=info"),
        );
    }
    c.wait_placed();
    c.wait_ticking(10.0);
    for id in ["router-1", "router-2"] {
        c.start(MemberSpec::router(id).lease(lease));
    }
    let npcs = c.settled_entities();
    let routers: Vec<SocketAddr> = c.names(Kind::Router).iter().map(|r| c.telnet(r)).collect();

    // Players: walkers first (their accounts are made before the bots', one at a time).
    let stop = Arc::new(AtomicBool::new(false));
    let walkers: Vec<ChaosWalker> = (0..settings.walkers())
        .map(|i| {
            ChaosWalker::start(
                format!("Walker{i}"),
                routers.clone(),
                i % routers.len(),
                stop.clone(),
            )
        })
        .collect();
    let planned: Duration = settings.plan.iter().map(|p| settings.slot(p)).sum();
    let bot_secs = (planned + settings.bot_margin).as_secs();
    let mut swarms: Vec<Swarm> = c
        .names(Kind::Router)
        .iter()
        .enumerate()
        .map(|(i, r)| Swarm::start(&c, r, &settings, bot_secs, 800 + i as u64))
        .collect();
    let expect = Expect {
        npcs,
        players: (settings.bots() + settings.walkers()) as f64,
        walkers: settings.walkers(),
    };
    let mut run = Run {
        settings,
        c,
        walkers,
        expect,
        samples: Vec::new(),
        notes: Vec::new(),
    };
    // Steady before the first fault: everyone in the world and playing.
    if run.wait_recovered(Duration::from_secs(60)).is_none() {
        let last = run.samples.last().cloned();
        panic!("the cluster never became steady before the faults: {last:?}");
    }
    let writer = AccountWriter::start(routers.clone(), stop.clone());
    eprintln!(
        "chaos {}: steady after {} s: {npcs} NPCs, {} players; {} faults planned over {} s",
        run.settings.name,
        begun.elapsed().as_secs(),
        run.expect.players,
        run.settings.plan.len(),
        planned.as_secs()
    );

    let mut faults = Vec::new();
    let skipped = Vec::new();
    let mut turn = BTreeMap::new();
    let plan = run.settings.plan.clone();
    // Reports of the swarms (none for one stopped before its end).
    let mut reports: Vec<(SystemTime, Option<tessera_loadtest::stats::Report>)> = Vec::new();
    let mut seed = 900;
    for (n, p) in plan.iter().enumerate() {
        // Bots that stopped early (the schedule ran late), or that are stuck after a fault
        // the cluster did not recover from, start again (as players would log in again), so
        // that the next fault is measured on its own.
        let unsteady = !run.samples.last().is_some_and(|s| s.ok(&run.expect));
        let stuck = unsteady && run.wait_recovered(Duration::from_secs(20)).is_none();
        if stuck || !swarms.iter_mut().all(Swarm::running) {
            let why = if stuck {
                format!("the cluster was not steady 20 s after fault {n}'s slot")
            } else {
                "the swarms had ended".to_string()
            };
            let rest: Duration = plan[n..].iter().map(|p| run.settings.slot(p)).sum();
            let secs = (rest + run.settings.bot_margin).as_secs();
            for mut s in swarms.drain(..) {
                if s.running() {
                    s.role.kill();
                    reports.push((s.started, None));
                } else {
                    let started = s.started;
                    reports.push((started, s.finish(Duration::from_secs(5))));
                }
            }
            run.notes.push(format!(
                "before fault {}: the bots were started again ({why}); the errors of the \
                 swarms stopped then are not counted",
                n + 1
            ));
            swarms = run
                .c
                .names(Kind::Router)
                .iter()
                .enumerate()
                .map(|(i, r)| Swarm::start(&run.c, r, &run.settings, secs, seed + i as u64))
                .collect();
            seed += 100;
            if run.wait_recovered(Duration::from_secs(60)).is_none() {
                run.notes
                    .push(format!("before fault {}: not steady within 60 s", n + 1));
            }
        }
        let slot_end = Instant::now() + run.settings.slot(p);
        let name = pick(&run.c, p.role, &mut turn);
        faults.push(run.inject(n + 1, *p, &name));
        let left = slot_end.saturating_duration_since(Instant::now());
        run.watch_for(left);
    }

    // The end: the bots' reports, the walkers, the accounts.
    for s in swarms {
        let started = s.started;
        let bots = s.bots;
        let r = s.finish(Duration::from_secs(bot_secs + 120));
        if r.is_none() {
            run.notes
                .push(format!("a swarm of {bots} bots wrote no report"));
        }
        reports.push((started, r));
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, attempts) = writer.finish();
    let walker_states: Vec<(String, WalkerState)> = std::mem::take(&mut run.walkers)
        .into_iter()
        .map(|w| (w.name.clone(), w.finish()))
        .collect();
    // Every answered account logs in (through either router; a refusal that is not about
    // the account, such as a busy world, is tried again).
    let mut accounts_lost = Vec::new();
    for (i, (name, _)) in acked.iter().enumerate() {
        let mut last = String::new();
        let mut ok = false;
        for attempt in 0..6 {
            let addr = routers[(i + attempt) % routers.len()];
            let text = quietly(|| {
                let mut c = TelnetClient::connect(addr);
                let text = c.command(&format!("connect {name} {PW}"));
                if text.contains(&format!("Welcome back, {name}.")) {
                    c.quit();
                }
                text
            });
            last = text.unwrap_or_else(|| "(no answer)".into());
            if last.contains(&format!("Welcome back, {name}.")) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if !ok {
            accounts_lost.push(format!("{name}: {last:?}"));
        }
    }
    let npcs_at_end = {
        let shards = run.c.shard_metrics();
        let (_, rows) = entities_at_once(&shards);
        let entities: f64 = rows.iter().map(|(_, _, v)| v).sum();
        let players: f64 = shards
            .iter()
            .filter_map(|m| try_scrape(*m))
            .map(|t| sum_of(&t, "tessera_shard_players"))
            .sum();
        entities - players
    };

    // Bot errors per fault window, from the per-second series.
    let mut bot_errors = BTreeMap::new();
    let mut bot_counts = BTreeMap::new();
    for (started, report) in &reports {
        let Some(r) = report else { continue };
        for (cause, n) in &r.errors {
            *bot_errors.entry(cause.clone()).or_insert(0) += n;
        }
        for (what, n) in &r.counts {
            *bot_counts.entry(what.clone()).or_insert(0) += n;
        }
        for f in &mut faults {
            let from = (f.started_unix_ms - unix_ms(*started)) as f64 / 1000.0;
            let to = from
                + f.recovered_ms
                    .unwrap_or(run.settings.recovery_bound.as_millis() as i64)
                    as f64
                    / 1000.0
                + 1.0;
            f.bot_errors += r
                .series
                .iter()
                .filter(|s| s.t >= from && s.t <= to)
                .map(|s| s.errors)
                .sum::<u64>();
        }
    }
    let logs = report_path().with_extension("logs");
    let _ = std::fs::remove_dir_all(&logs);
    run.c.save_logs(&logs);
    run.notes
        .push(format!("every member's log is in {}", logs.display()));
    let check = run.c.owner_check();
    let positions_lost: Vec<String> = walker_states
        .iter()
        .flat_map(|(_, s)| s.lost.iter().map(|(_, w)| w.clone()))
        .collect();
    let s = &run.settings;
    Findings {
        settings: serde_json::json!({
            "run": s.name,
            "member_lease_s": s.member_lease,
            "coordinator_lease_s": s.coordinator_lease,
            "hold_beyond_lease_s": s.hold_extra.as_secs(),
            "restart_delay_s": s.restart_delay.as_secs(),
            "recovery_bound_s": s.recovery_bound.as_secs(),
            "bots": s.bots(),
            "quic_bots": 2 * s.quic_bots_per_router,
            "telnet_bots": 2 * s.telnet_bots_per_router,
            "walkers": s.walkers(),
            "members": "2 coordinators, 3 shards, 2 routers, persistence; each in its own network namespace",
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        }),
        faults,
        skipped,
        npcs,
        players: run.expect.players,
        npcs_at_end,
        accounts_acknowledged: acked.len(),
        account_attempts: attempts,
        accounts_lost,
        walker_steps: walker_states.iter().map(|(_, s)| s.steps).sum(),
        walker_reconnects: walker_states.iter().map(|(_, s)| s.reconnects).sum(),
        positions_lost,
        owner_writes: check.cell_writes,
        owner_migrations: check.migrations,
        owner_failovers: check.failovers,
        owner_violations: check.violations,
        owner_warnings: check.warnings,
        bot_errors,
        bot_counts,
        notes: run.notes.clone(),
        seconds: begun.elapsed().as_secs_f64(),
    }
}

// --------------------------------------------------------------------------- report

fn opt_ms(v: Option<i64>) -> String {
    match v {
        Some(ms) => format!("{:.1}", ms as f64 / 1000.0),
        None => "–".into(),
    }
}

fn back(b: Back) -> String {
    match b {
        Back::Undisturbed => "–".into(),
        Back::After(ms) => format!("{:.1}", ms as f64 / 1000.0),
        Back::Not => "**not**".into(),
    }
}

fn markdown(f: &Findings, broken: &[(String, Option<&'static str>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Chaos run ({})\n",
        f.settings["run"].as_str().unwrap_or("")
    );
    let _ = writeln!(out, "Settings: `{}`\n", f.settings);
    let _ = writeln!(
        out,
        "{} faults in {:.0} s; {} NPCs and {} players (bots and walkers) in the world.\n",
        f.faults.len(),
        f.seconds,
        f.npcs,
        f.players
    );
    let _ = writeln!(
        out,
        "Times in seconds from the start of each fault until the check held again; `–`: \
         never disturbed; **not**: not back at the end of the fault's window (its recovery \
         bound). \"stopped after takeover\": how long a cut-off or frozen shard went on \
         (until it gave up its registration, by its log) after another shard got its first \
         region.\n"
    );
    let _ = writeln!(
        out,
        "| # | fault | member | held | cells owned | NPCs exact | players exact | bots connected | walkers playing | recovered | bot errors | longest walker outage | stopped after takeover | what happened to the member | lost |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &f.faults {
        let mut lost = Vec::new();
        if !r.lost_positions.is_empty() {
            lost.push(format!("{} positions", r.lost_positions.len()));
        }
        if !r.owner_violations.is_empty() {
            lost.push(format!("{} owner violations", r.owner_violations.len()));
        }
        if matches!(r.npcs_exact_again, Back::Not) {
            lost.push("NPCs (not back)".into());
        }
        if matches!(r.players_exact_again, Back::Not) {
            lost.push("players (not back in the world)".into());
        }
        let _ = writeln!(
            out,
            "| {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            r.kind,
            r.role,
            if r.steady_before {
                r.member.clone()
            } else {
                format!("{} (started unsteady)", r.member)
            },
            opt_ms(Some(r.held_ms)),
            back(r.cells_owned_again),
            back(r.npcs_exact_again),
            back(r.players_exact_again),
            back(r.bots_connected_again),
            back(r.walkers_playing_again),
            r.recovered_ms
                .map_or("**not**".into(), |ms| opt_ms(Some(ms))),
            r.bot_errors,
            opt_ms(Some(r.longest_walker_outage_ms)),
            opt_ms(r.stopped_before_takeover_ms),
            if r.member_fate.is_empty() {
                "–"
            } else {
                &r.member_fate
            },
            if lost.is_empty() {
                "nothing".into()
            } else {
                lost.join(", ")
            },
        );
    }
    let _ = writeln!(out, "\n## What was lost\n");
    let _ = writeln!(
        out,
        "- NPCs: {} at the start, {} at the end.",
        f.npcs, f.npcs_at_end
    );
    let _ = writeln!(
        out,
        "- Accounts: {} created and answered ({} attempts); {} lost{}.",
        f.accounts_acknowledged,
        f.account_attempts,
        f.accounts_lost.len(),
        if f.accounts_lost.is_empty() {
            String::new()
        } else {
            format!(": {:?}", f.accounts_lost)
        }
    );
    let _ = writeln!(
        out,
        "- Walker positions: {} steps answered, {} reconnects; {} acknowledged positions lost.",
        f.walker_steps,
        f.walker_reconnects,
        f.positions_lost.len()
    );
    for p in &f.positions_lost {
        let _ = writeln!(out, "  - {p}");
    }
    let _ = writeln!(
        out,
        "- Cell owners (etcd's history): {} writes, {} owner changes by migration, {} by \
         failover; {} violations of one owner per region.",
        f.owner_writes,
        f.owner_migrations,
        f.owner_failovers,
        f.owner_violations.len()
    );
    for v in &f.owner_violations {
        let _ = writeln!(out, "  - {v}");
    }
    for w in &f.owner_warnings {
        let _ = writeln!(out, "  - warning: {w}");
    }
    let _ = writeln!(out, "- Bot errors and disconnects: {:?}", f.bot_errors);
    let _ = writeln!(out, "- Bot counts: {:?}", f.bot_counts);
    for s in &f.skipped {
        let _ = writeln!(out, "- skipped: {s}");
    }
    for n in &f.notes {
        let _ = writeln!(out, "- note: {n}");
    }
    let _ = writeln!(out, "\n## Verdict\n");
    if broken.is_empty() {
        let _ = writeln!(out, "Every check held.");
    }
    for (b, known) in broken {
        match known {
            Some(why) => {
                let _ = writeln!(out, "- known finding: {b}. {why}.");
            }
            None => {
                let _ = writeln!(out, "- **new finding**: {b}.");
            }
        }
    }
    out
}

fn report_path() -> PathBuf {
    std::env::var_os("TESSERA_CHAOS_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap_or(Path::new("target"))
                .join("chaos-report.md")
        })
}

fn write_report(f: &Findings, broken: &[(String, Option<&'static str>)]) -> PathBuf {
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, markdown(f, broken)).expect("write the chaos report");
    let json = path.with_extension("json");
    let mut value = serde_json::to_value(f).expect("findings as JSON");
    value["verdict"] = broken
        .iter()
        .map(|(b, known)| serde_json::json!({"finding": b, "known": known}))
        .collect();
    let text = serde_json::to_string_pretty(&value).expect("findings as JSON");
    std::fs::write(&json, text).expect("write the chaos report (JSON)");
    path
}

/// Findings of the chaos run that are reported but not fixed yet: a run that shows them
/// (and nothing else) passes, and the report lists them. Remove an entry when it is fixed.
/// (Fixed since: a shard killed and restarted under the same id left its players out of the
/// world; a router whose registration was revoked ran on serving nobody; players stayed out
/// of the world after a shard frozen or cut off past its lease was revoked, because a
/// hand-off queued for it was never taken and a re-join lost on the way was never sent
/// again. Each is a new finding again if it comes back.)
const KNOWN_DUAL_SIMULATION: &str =
    "a shard cut off from everyone is revoked by the liveness watchdog about 2 s after the \
     cut and its regions reopen elsewhere, but it goes on simulating until its own lease \
     deadline (3/4 of the TTL after its last renewal): two shards simulate those regions \
     meanwhile (coordinator/src/liveness.rs accepts it; harmless while the cut-off shard \
     reaches nobody)";

const UNSTEADY: &str = "the fault started before the cluster was steady again after the one \
     before (see it), even after the bots were started again: what it shows is not its own";

/// The fate the chaos run gives a member that runs on without its registration.
const UNREGISTERED: &str = "ran on without its registration";

/// What must hold after a run: the findings, each with the known finding it matches.
fn verdict(f: &Findings) -> Vec<(String, Option<&'static str>)> {
    let mut broken = Vec::new();
    for r in &f.faults {
        let fault = format!("{} {}", r.kind, r.role);
        // Why players may be out of the world, or the fault unrecovered, for a known reason.
        let known_outage = (!r.steady_before).then_some(UNSTEADY);
        let what = format!("fault {} ({fault} {})", r.n, r.member);
        if r.member_fate.contains(UNREGISTERED) {
            broken.push((format!("{what}: {}", r.member_fate), None));
        }
        if matches!(r.players_exact_again, Back::Not) {
            broken.push((
                format!("{what}: players missing from the world at the end of its window"),
                known_outage,
            ));
        }
        if r.recovered_ms.is_none() {
            broken.push((
                format!("{what}: not recovered within the bound"),
                known_outage,
            ));
        }
        // A walker that had to log in again because of a known outage may find an older
        // position: reported with that finding (it is not known to happen otherwise).
        for lost in &r.lost_positions {
            broken.push((
                format!("{what}: acknowledged position lost: {lost}"),
                known_outage,
            ));
        }
        if r.stopped_before_takeover_ms.is_some_and(|d| d > 0) {
            broken.push((
                format!(
                    "{what}: the shard simulated {} ms after its regions had a new owner",
                    r.stopped_before_takeover_ms.unwrap_or(0)
                ),
                Some(KNOWN_DUAL_SIMULATION).filter(|_| fault == "partition shard"),
            ));
        }
    }
    let mut broken_too = Vec::new();
    if f.npcs_at_end != f.npcs {
        broken_too.push(format!(
            "NPCs: {} at the start, {} at the end",
            f.npcs, f.npcs_at_end
        ));
    }
    if !f.accounts_lost.is_empty() {
        broken_too.push(format!("accounts lost: {:?}", f.accounts_lost));
    }
    let outside: Vec<&String> = f
        .positions_lost
        .iter()
        .filter(|p| !f.faults.iter().any(|r| r.lost_positions.contains(p)))
        .collect();
    if !outside.is_empty() {
        broken_too.push(format!("positions lost outside any fault: {outside:?}"));
    }
    if !f.owner_violations.is_empty() {
        broken_too.push(format!("one owner per region: {:?}", f.owner_violations));
    }
    if !f.skipped.is_empty() {
        broken_too.push(format!("faults skipped: {:?}", f.skipped));
    }
    broken.extend(broken_too.into_iter().map(|b| (b, None)));
    broken
}

fn run_and_report(settings: Settings) {
    let findings = chaos(settings);
    let broken = verdict(&findings);
    let path = write_report(&findings, &broken);
    eprintln!("{}", markdown(&findings, &broken));
    eprintln!("chaos report: {}", path.display());
    let new: Vec<&String> = broken
        .iter()
        .filter(|(_, known)| known.is_none())
        .map(|(b, _)| b)
        .collect();
    assert!(new.is_empty(), "the chaos run found: {new:#?}");
}

/// The CI run: the leading coordinator killed (-9) and restarted, a shard frozen for 8 s, a
/// shard cut off for 8 s (leases of 5 s), under 12 bots and 4 walkers.
#[test]
fn chaos_short_one_fault_of_each_kind() {
    run_and_report(Settings::short());
}

/// The long run: every role (the leading coordinator, each shard and router in turn, the
/// persistence service) killed, frozen and cut off, `TESSERA_CHAOS_ROUNDS` times (2),
/// default leases, under 28 bots and 4 walkers. `scripts/chaos.sh`.
#[test]
#[ignore = "long (about 15 minutes): scripts/chaos.sh"]
fn chaos_every_role_in_turn() {
    let rounds = std::env::var("TESSERA_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    run_and_report(Settings::long(rounds));
}
