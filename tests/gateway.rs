//! The telnet gateway (`tessera telnet-gateway`) in a cluster of separate
//! processes against a real etcd: etcd, a coordinator, the persistence
//! service, two shards, two routers sharing one QUIC certificate and
//! signing key (as the routers of a Kubernetes deployment share one
//! secret) and one gateway in front of them.
//!
//! - text players ride through a rolling update of every router: nobody is
//!   disconnected, every command is answered, nobody moves; the answer
//!   latencies around each restart are written to
//!   `target/tmp/gateway-rollout.json` (a measurement, not an assertion);
//! - the gateway speaks the router's telnet, byte for byte where the
//!   answers do not depend on names and places;
//! - only a cluster member (a client certificate from the cluster CA) may
//!   relay a player;
//! - a draining gateway refuses new connections and keeps its players
//!   until they quit;
//! - login rate limits see the player's address, not the gateway's.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, Where};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support_cluster::cluster::{Cluster, MemberSpec};
use support_cluster::*;

/// A generous bound for one answer (argon2id logins included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The gateway of every test.
const GATEWAY: &str = "gateway-1";

// ------------------------------------------------------------------ cluster

/// Starts the cluster and waits until the gateway is ready. With `with_auth`, the routers
/// share one `tessera auth` service (and so one login rate limiter); without, each router
/// keeps accounts in the persistence service itself. Everything is killed when the cluster
/// drops.
fn gateway_cluster(with_auth: bool) -> Cluster {
    let started = Instant::now();
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence());
    if with_auth {
        c.start(MemberSpec::auth("auth-1"));
    }
    c.start(MemberSpec::coordinator("coordinator-a"));
    for id in ["shard-1", "shard-2"] {
        c.start(MemberSpec::shard(id));
    }
    c.wait_placed();
    c.wait_ticking(5.0);
    c.start(MemberSpec::router("router-1"));
    // Every router of the cluster shows the same certificate (the gateway pins one: router 2
    // serves router 1's) and signs session tokens with the same key (a player resumes on any
    // of them).
    c.start(MemberSpec::router("router-2").sharing_signing_key());
    // Players may also come in over TLS, with a certificate for the gateway's public name.
    let ck =
        rcgen::generate_simple_self_signed(vec!["mud.example.org".into()]).expect("a certificate");
    let (cert, key) = (
        c.path().join("gateway-tls.pem"),
        c.path().join("gateway-tls-key.pem"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    c.start(MemberSpec::gateway(GATEWAY).args(&[
        // 127.0.0.1 stays exempt (the players of most tests); other loopback addresses are
        // players of their own, capped at 3.
        "--limit-exempt",
        "127.0.0.1",
        "--connections-per-address",
        "3",
        "--telnet-tls",
        "127.0.0.1:0",
        "--telnet-tls-cert",
        &cert,
        "--telnet-tls-key",
        &key,
    ]));
    let metrics = c.metrics(GATEWAY);
    let mut last = None;
    eventually(Duration::from_secs(15), || {
        last = try_get(metrics, "/readyz");
        matches!(last, Some((200, _))).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the gateway never became ready: /readyz {last:?}; stderr:\n{}",
            c.role(GATEWAY).stderr_tail(40)
        )
    });
    eprintln!(
        "gateway cluster up in {} ms (gateway telnet {}, routers {} and {})",
        started.elapsed().as_millis(),
        c.telnet(GATEWAY),
        c.telnet("router-1"),
        c.telnet("router-2")
    );
    c
}

/// SIGTERM on router `id`, waits until it exits, starts it again with the same id, ports
/// and data dir and waits until it is registered again. Returns (exited after, registered
/// after).
fn restart_router(c: &mut Cluster, id: &str) -> (Duration, Duration) {
    let quic = c.quic(id).to_string();
    let sigterm = Instant::now();
    let status = c.stop_within(id, Duration::from_secs(30));
    let exited = sigterm.elapsed();
    assert!(status.success(), "{id} exited with {status} after SIGTERM");
    c.restart(id);
    let key = format!("/tessera/routers/{id}");
    eventually(Duration::from_secs(15), || {
        c.peek()
            .records("routers/")
            .iter()
            .any(|(k, v)| k == &key && v.contains(&quic))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{id} never registered again"));
    (exited, sigterm.elapsed())
}

/// A GET of `path`: the status code and body, or `None` if nobody answers.
fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

// ------------------------------------------------------------------- telnet

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const DO: u8 = 253;
const GMCP: u8 = 201;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IacState {
    Data,
    Iac,
    Option,
    Sub,
    SubIac,
}

/// A telnet connection that keeps everything it received: the raw bytes
/// and the text with the telnet commands stripped. Answers are the text up
/// to the next prompt (`> ` at the start of a line); something that
/// happened while the player sat at the prompt arrives as
/// `\r\n<text>\r\n> ` and is kept as a note.
struct Tn {
    stream: TcpStream,
    raw: Vec<u8>,
    data: Vec<u8>,
    /// How much of `data` has been taken as answers and notes.
    pos: usize,
    iac: IacState,
    eof: bool,
    notes: Vec<String>,
    answers: std::collections::VecDeque<String>,
}

impl Tn {
    /// Connects; reads nothing.
    fn connect(addr: SocketAddr) -> Tn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("telnet connect to {addr}: {e}"));
        Tn::over(stream)
    }

    /// Connects from the local address `from` (any of 127.0.0.0/8 on
    /// loopback: another player's machine).
    fn connect_from(addr: SocketAddr, from: IpAddr) -> Tn {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("telnet connect from {from} to {addr}: {e}"));
        Tn::over(socket.into())
    }

    fn over(stream: TcpStream) -> Tn {
        stream.set_nodelay(true).ok();
        Tn {
            stream,
            raw: Vec::new(),
            data: Vec::new(),
            pos: 0,
            iac: IacState::Data,
            eof: false,
            notes: Vec::new(),
            answers: Default::default(),
        }
    }

    /// Connects and reads the banner; panics unless it greets.
    fn open(addr: SocketAddr) -> Tn {
        let mut t = Tn::connect(addr);
        t.expect_banner();
        t
    }

    fn open_from(addr: SocketAddr, from: IpAddr) -> Tn {
        let mut t = Tn::connect_from(addr, from);
        t.expect_banner();
        t
    }

    fn expect_banner(&mut self) {
        let banner = self
            .answer(ANSWER_TIMEOUT)
            .unwrap_or_else(|| panic!("no banner: {:?}", self.rest()));
        assert!(
            banner.contains("Welcome to Tessera"),
            "unexpected banner: {banner:?}"
        );
    }

    /// Connects, creates `name` and enters the world.
    fn create(addr: SocketAddr, name: &str) -> Tn {
        let mut t = Tn::open(addr);
        let welcome = t
            .command(&format!("create {name} {PW}"))
            .unwrap_or_else(|| panic!("create {name}: no answer; {:?}", t.rest()));
        assert!(
            welcome.contains(&format!("Welcome to Tessera, {name}!")),
            "create {name}: {welcome:?}"
        );
        t
    }

    fn strip(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        for &b in bytes {
            self.iac = match (self.iac, b) {
                (IacState::Data, IAC) => IacState::Iac,
                (IacState::Data, _) => {
                    self.data.push(b);
                    IacState::Data
                }
                (IacState::Iac, IAC) => {
                    self.data.push(IAC);
                    IacState::Data
                }
                (IacState::Iac, 251..=254) => IacState::Option,
                (IacState::Iac, SB) => IacState::Sub,
                (IacState::Iac, _) => IacState::Data,
                (IacState::Option, _) => IacState::Data,
                (IacState::Sub, IAC) => IacState::SubIac,
                (IacState::Sub, _) => IacState::Sub,
                (IacState::SubIac, SE) => IacState::Data,
                (IacState::SubIac, _) => IacState::Sub,
            };
        }
    }

    /// Reads once; false on timeout or EOF.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok();
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.strip(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes)
    }

    /// The text received and not yet taken.
    fn rest(&self) -> String {
        clean(&self.data[self.pos..])
    }

    /// The next prompt-terminated segment: (is a note, text).
    fn next_segment(&mut self, deadline: Instant) -> Option<(bool, String)> {
        loop {
            let buf = &self.data[self.pos..];
            let at = (0..buf.len().saturating_sub(1))
                .find(|&i| &buf[i..i + 2] == b"> " && (i == 0 || buf[i - 1] == b'\n'));
            if let Some(i) = at {
                let text = clean(&buf[..i]);
                self.pos += i + 2;
                let note = text.starts_with('\n');
                return Some((note, text.trim_matches('\n').to_string()));
            }
            if !self.fill(deadline) && (self.eof || Instant::now() >= deadline) {
                return None;
            }
        }
    }

    /// The next answer (notes set aside), or `None` on timeout or EOF.
    fn answer(&mut self, timeout: Duration) -> Option<String> {
        if let Some(a) = self.answers.pop_front() {
            return Some(a);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_segment(deadline)? {
                (true, text) => self.notes.extend(text.lines().map(str::to_string)),
                (false, text) => return Some(text),
            }
        }
    }

    /// Sends a line and returns its answer (`None`: no answer, or the
    /// connection closed).
    fn command(&mut self, line: &str) -> Option<String> {
        self.send_line(line).ok()?;
        self.answer(ANSWER_TIMEOUT)
    }

    /// Waits for a note containing `needle`.
    fn wait_note(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(i) = self.notes.iter().position(|l| l.contains(needle)) {
            return Some(self.notes.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_segment(deadline)? {
                (true, text) => {
                    let lines: Vec<String> = text.lines().map(str::to_string).collect();
                    let found = lines.iter().position(|l| l.contains(needle));
                    self.notes.extend(lines);
                    if found.is_some() {
                        let i = self.notes.iter().position(|l| l.contains(needle))?;
                        return Some(self.notes.remove(i));
                    }
                }
                (false, text) => self.answers.push_back(text),
            }
        }
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Reads until `done(text not yet taken)` holds, then until nothing
    /// more arrives for 300 ms; takes and returns that text and the raw
    /// bytes that carried it.
    fn exchange(&mut self, send: &[u8], done: impl Fn(&str) -> bool) -> (String, Vec<u8>) {
        let (raw_mark, mark) = (self.raw.len(), self.pos);
        if !send.is_empty() {
            self.send(send).expect("telnet write");
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while !done(&clean(&self.data[mark..])) {
            if !self.fill(deadline) && (self.eof || Instant::now() >= deadline) {
                break;
            }
        }
        loop {
            if !self.fill(Instant::now() + Duration::from_millis(300)) {
                break;
            }
        }
        self.pos = self.data.len();
        (clean(&self.data[mark..]), self.raw[raw_mark..].to_vec())
    }

    /// Reads until the connection closes (`None` if it does not within
    /// `timeout`); takes and returns the text left.
    fn read_to_eof(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            if !self.fill(deadline) && !self.eof && Instant::now() >= deadline {
                return None;
            }
        }
        let rest = self.rest();
        self.pos = self.data.len();
        Some(rest)
    }
}

/// Text as a player reads it: UTF-8 (lossy), without CR and NUL.
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace(['\r', '\0'], "")
}

/// Ends with the prompt.
fn prompted(text: &str) -> bool {
    text == "> " || text.ends_with("\n> ")
}

/// The telnet commands in `raw`, each as its bytes (IAC included).
fn iac_commands(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != IAC || i + 1 >= raw.len() {
            i += 1;
            continue;
        }
        let start = i;
        match raw[i + 1] {
            IAC => {
                i += 2;
                continue;
            }
            251..=254 => i += 3,
            SB => {
                i += 2;
                while i + 1 < raw.len() && !(raw[i] == IAC && raw[i + 1] == SE) {
                    i += 1;
                }
                i += 2;
            }
            _ => i += 2,
        }
        out.push(raw[start..i.min(raw.len())].to_vec());
    }
    out
}

// -------------------------------------------------- 1. the rolling update

/// One command's answer time.
#[derive(Clone, Debug)]
struct Sample {
    cmd: &'static str,
    /// Since the players started.
    sent: Duration,
    latency: Duration,
}

/// What one player thread did.
struct Run {
    name: String,
    tn: Tn,
    /// Where the player stands between its steps (its lane).
    home: Where,
    samples: Vec<Sample>,
    /// Every `where` answer, with when it was sent.
    wheres: Vec<(Duration, Where)>,
    notes: Vec<String>,
    problems: Vec<String>,
}

const CYCLE: [&str; 4] = ["east", "west", "look", "where"];

/// East, west, look, where, with 150 ms pauses, until `stop`; every answer
/// is checked for its kind, and every `where` for the player's lane.
fn play(mut run: Run, stop: Arc<AtomicBool>, t0: Instant) -> Run {
    'play: while !stop.load(Ordering::Relaxed) {
        for cmd in CYCLE {
            let sent = Instant::now();
            let answer = run.tn.command(cmd);
            let latency = sent.elapsed();
            let at = sent - t0;
            let Some(answer) = answer else {
                let rest = run.tn.read_to_eof(Duration::from_secs(1));
                run.problems.push(format!(
                    "{}: `{cmd}` sent {:.2} s into the run got no answer within {ANSWER_TIMEOUT:?} \
                     (connection closed: {}); received after the last prompt: {:?}",
                    run.name,
                    at.as_secs_f64(),
                    run.tn.eof,
                    rest.unwrap_or_else(|| run.tn.rest())
                ));
                break 'play;
            };
            run.samples.push(Sample {
                cmd,
                sent: at,
                latency,
            });
            let lower = answer.to_lowercase();
            let ok = match cmd {
                "east" => answer.starts_with("You walk east"),
                "west" => answer.starts_with("You walk west"),
                "look" => answer.contains("Market Square"),
                _ => match Where::parse(&answer) {
                    Some(w) => {
                        let off = w.distance_xz(&run.home);
                        if off >= 0.5 {
                            run.problems.push(format!(
                                "{}: `where` sent {:.2} s into the run puts the player {off:.2} m \
                                 from its lane {:?}: {answer:?}",
                                run.name,
                                at.as_secs_f64(),
                                run.home
                            ));
                        }
                        run.wheres.push((at, w));
                        true
                    }
                    None => false,
                },
            };
            if !ok || lower.contains("goodbye") || lower.contains("idle too long") {
                run.problems.push(format!(
                    "{}: `{cmd}` sent {:.2} s into the run was answered {answer:?} after {} ms",
                    run.name,
                    at.as_secs_f64(),
                    latency.as_millis()
                ));
            }
            for note in run.tn.take_notes() {
                let lower = note.to_lowercase();
                if lower.contains("goodbye") || lower.contains("idle too long") {
                    run.problems.push(format!(
                        "{}: a note around {:.2} s into the run: {note:?}",
                        run.name,
                        at.as_secs_f64()
                    ));
                }
                run.notes.push(format!("{:.2} s: {note}", at.as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    run
}

/// A restart of one router, as the players lived it.
struct Window {
    router: String,
    /// Since the players started: SIGTERM, and when the gateway had
    /// resumed the router's players (or 15 s later) plus one second.
    start: Duration,
    end: Duration,
    exited_ms: u128,
    registered_ms: u128,
    /// From SIGTERM until `tessera_gateway_resumes_total` had gone up by
    /// the router's players.
    resumed_ms: Option<u128>,
    players_on_router: f64,
    resumes: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The reason for the gateway: a rolling update of the routers (SIGTERM on
/// each in turn, restarted with the same id, ports and data dir) while four
/// text players play through the gateway. Nobody's connection closes, no
/// farewell or idle notice arrives, every command gets its answer and a
/// prompt, nobody moves from their lane (in particular not between the
/// `where` right before and right after each restart), the gateway counts
/// a resume for every player of a stopped router, and the players hear each
/// other afterwards.
#[test]
fn telnet_players_ride_through_a_rolling_update_of_every_router() {
    let test_started = Instant::now();
    let mut c = gateway_cluster(false);
    // Each player gets a lane of its own, 3 m apart from the next (south of
    // the spawn, where the world is kept clear), so their steps east and
    // west never bump into each other. Created last-lane first, so nobody
    // walks through another's lane.
    let names = ["Rida", "Ridb", "Ridc", "Ridd"];
    let mut runs: Vec<Run> = Vec::new();
    for (i, name) in names.iter().enumerate().rev() {
        let mut tn = Tn::create(c.telnet(GATEWAY), name);
        for _ in 0..i {
            let a = tn.command("south").expect("an answer to south");
            assert!(a.starts_with("You walk south."), "{name}: south: {a:?}");
        }
        runs.push(Run {
            name: name.to_string(),
            tn,
            home: Where {
                x: 0.0,
                y: 0.0,
                z: 0.0,
                cell: String::new(),
                shard: String::new(),
            },
            samples: Vec::new(),
            wheres: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
        });
    }
    runs.reverse();
    std::thread::sleep(Duration::from_millis(400));
    for run in &mut runs {
        let text = run.tn.command("where").expect("where");
        run.home = Where::parse(&text).unwrap_or_else(|| panic!("where: {text:?}"));
        eprintln!("rollout: {} stands at {:?}", run.name, run.home);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let players: Vec<_> = runs
        .into_iter()
        .map(|run| {
            let stop = stop.clone();
            std::thread::spawn(move || play(run, stop, t0))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let mut windows = Vec::new();
    let gateway_metrics = c.metrics(GATEWAY);
    for id in ["router-1", "router-2"] {
        let on_router = router_connections(c.metrics(id));
        let resumes_before = gateway_resumes(gateway_metrics);
        let start = t0.elapsed();
        let (exited, registered) = restart_router(&mut c, id);
        let sigterm = t0 + start;
        let mut resumes = 0.0;
        eventually(Duration::from_secs(15), || {
            resumes = gateway_resumes(gateway_metrics) - resumes_before;
            (resumes >= on_router.min(names.len() as f64)).then_some(())
        });
        let resumed_ms =
            (resumes >= on_router.min(names.len() as f64)).then(|| sigterm.elapsed().as_millis());
        std::thread::sleep(Duration::from_secs(1));
        let end = t0.elapsed();
        eprintln!(
            "rollout: {id} ({on_router} players on it) exited {} ms after SIGTERM, was \
             registered again after {} ms; the gateway counted {resumes} resumes (done after \
             {resumed_ms:?} ms)",
            exited.as_millis(),
            registered.as_millis()
        );
        windows.push(Window {
            router: id.to_string(),
            start,
            end,
            exited_ms: exited.as_millis(),
            registered_ms: registered.as_millis(),
            resumed_ms,
            players_on_router: on_router,
            resumes,
        });
        // The next router goes once the gateway could have seen this one
        // come back (as Kubernetes waits for readiness).
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut runs: Vec<Run> = players
        .into_iter()
        .map(|h| h.join().expect("a player thread panicked"))
        .collect();

    // The latencies, for the docs.
    let mut all: Vec<Duration> = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.latency))
        .collect();
    all.sort();
    let mut window_rows = Vec::new();
    let mut moved = Vec::new();
    for w in &windows {
        let inside: Vec<(&str, &Sample)> = runs
            .iter()
            .flat_map(|r| r.samples.iter().map(move |s| (r.name.as_str(), s)))
            .filter(|(_, s)| s.sent + s.latency >= w.start && s.sent <= w.end)
            .collect();
        let worst = inside.iter().max_by_key(|(_, s)| s.latency);
        // `where` right before SIGTERM and right after the restarted router
        // registered again, per player.
        let registered_at = w.start + Duration::from_millis(w.registered_ms as u64);
        let mut before_after = Vec::new();
        for r in &runs {
            let before = r.wheres.iter().rev().find(|(t, _)| *t < w.start);
            let after = r.wheres.iter().find(|(t, _)| *t > registered_at);
            if let (Some((_, b)), Some((_, a))) = (before, after) {
                let d = a.distance_xz(b);
                before_after.push(serde_json::json!({"player": r.name, "metres": d}));
                if d >= 0.5 {
                    moved.push(format!(
                        "{}: `where` before {}'s restart {b:?} and after it {a:?} are \
                         {d:.2} m apart",
                        r.name, w.router
                    ));
                }
            }
        }
        window_rows.push(serde_json::json!({
            "router": w.router,
            "exited_after_sigterm_ms": w.exited_ms,
            "registered_again_after_sigterm_ms": w.registered_ms,
            "resumed_after_sigterm_ms": w.resumed_ms,
            "players_on_router": w.players_on_router,
            "resumes_counted": w.resumes,
            "commands_in_window": inside.len(),
            "worst_latency_ms": worst.map(|(_, s)| s.latency.as_secs_f64() * 1000.0),
            "worst_command": worst.map(|(n, s)| format!("{n}: {}", s.cmd)),
            "where_before_to_after_m": before_after,
        }));
    }
    // The gateway's own reading of the resumes (from the router's close to
    // the new router's welcome back).
    let gw_metrics = common::scrape(gateway_metrics);
    let sample = |name: &str| -> f64 {
        common::metric_samples(&gw_metrics, name)
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    let (resume_sum, resume_count) = (
        sample("tessera_gateway_resume_seconds_sum"),
        sample("tessera_gateway_resume_seconds_count"),
    );
    let resume_failures = sample("tessera_gateway_resume_failures_total");
    let measured = serde_json::json!({
        "test": "telnet_players_ride_through_a_rolling_update_of_every_router",
        "gateway_resume_ms_mean": (resume_count > 0.0).then(|| resume_sum / resume_count * 1000.0),
        "gateway_resumes": resume_count,
        "players": names.len(),
        "pause_between_commands_ms": 150,
        "commands": all.len(),
        "latency_ms": {
            "p50": percentile(&all, 0.5).as_secs_f64() * 1000.0,
            "p99": percentile(&all, 0.99).as_secs_f64() * 1000.0,
            "worst": all.last().map(|d| d.as_secs_f64() * 1000.0),
        },
        "restarts": window_rows,
    });
    let record = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-rollout.json");
    std::fs::write(&record, format!("{measured:#}\n")).expect("write the latency record");
    eprintln!("rollout: {measured:#}\nwritten to {}", record.display());
    for r in &runs {
        if !r.notes.is_empty() {
            eprintln!("rollout: {} read between prompts: {:?}", r.name, r.notes);
        }
    }

    // Whatever arrived after the last answer.
    for r in &mut runs {
        r.tn.fill(Instant::now() + Duration::from_millis(100));
        let mut late = r.tn.take_notes();
        late.push(r.tn.rest());
        for note in late {
            let lower = note.to_lowercase();
            if lower.contains("goodbye") || lower.contains("idle too long") {
                r.problems
                    .push(format!("{}: read after the last answer: {note:?}", r.name));
            }
        }
    }
    let problems: Vec<&String> = runs
        .iter()
        .flat_map(|r| r.problems.iter())
        .chain(moved.iter())
        .collect();
    assert!(
        problems.is_empty(),
        "the players noticed the rolling update:\n{}\ngateway stderr:\n{}",
        problems
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        c.role(GATEWAY).stderr_tail(40)
    );
    for r in &runs {
        assert!(
            r.samples.len() > 20,
            "{} sent only {} commands",
            r.name,
            r.samples.len()
        );
        assert!(!r.tn.eof, "{}'s connection closed", r.name);
    }
    for w in &windows {
        assert!(
            w.resumes >= w.players_on_router.min(names.len() as f64),
            "{} had {} players (tessera_router_connections) but the gateway counted {} resumes",
            w.router,
            w.players_on_router,
            w.resumes
        );
    }
    assert_eq!(
        resume_failures, 0.0,
        "the gateway gave up resuming a player (tessera_gateway_resume_failures_total)"
    );
    let total: f64 = windows.iter().map(|w| w.resumes).sum();
    assert!(total >= 1.0, "tessera_gateway_resumes_total never went up");
    assert!(c.try_exit(GATEWAY).is_none(), "the gateway exited");

    // They still hear each other (the first two stand 3 m apart).
    let (first, rest) = runs.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut rest[0]);
    let said = a.tn.command("say Still here after the update?");
    assert_eq!(
        said.as_deref(),
        Some("You say, \"Still here after the update?\"")
    );
    let heard = b.tn.wait_note(&format!("{} says,", a.name), ANSWER_TIMEOUT);
    assert_eq!(
        heard,
        Some(format!("{} says, \"Still here after the update?\"", a.name))
    );
    let said = b.tn.command("say Not a thing changed.");
    assert_eq!(said.as_deref(), Some("You say, \"Not a thing changed.\""));
    let heard = a.tn.wait_note(&format!("{} says,", b.name), ANSWER_TIMEOUT);
    assert_eq!(
        heard,
        Some(format!("{} says, \"Not a thing changed.\"", b.name))
    );
    eprintln!(
        "rollout: the whole test took {} ms",
        test_started.elapsed().as_millis()
    );
}

// ------------------------------------------- 2. the same telnet as a router

/// What one connection saw on the way through the telnet a router speaks.
#[derive(Debug, Default)]
struct Tour {
    /// (text, telnet commands) per step, keyed by the step's name.
    steps: Vec<(&'static str, String, Vec<Vec<u8>>)>,
    closed: bool,
}

impl Tour {
    /// The GMCP messages of the whole tour that do not depend on timing
    /// (`Char.Status` and `Tessera.Nearby` follow the world's clock), in
    /// order; `Room.Info` as its name and keys, as the position differs.
    fn gmcp(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|(_, _, commands)| commands)
            .filter(|c| c.starts_with(&[IAC, SB, GMCP]) && c.len() >= 5)
            .map(|c| String::from_utf8_lossy(&c[3..c.len() - 2]).into_owned())
            .filter(|m| !m.starts_with("Char.Status ") && !m.starts_with("Tessera.Nearby "))
            .map(|m| match m.split_once(' ') {
                Some(("Room.Info", json)) => {
                    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
                    let keys: Vec<&String> = v.as_object().expect("an object").keys().collect();
                    format!("Room.Info {} {keys:?}", v["name"])
                }
                _ => m,
            })
            .collect()
    }

    fn text(&self, step: &str) -> &str {
        &self
            .steps
            .iter()
            .find(|(s, _, _)| *s == step)
            .expect("a step")
            .1
    }

    fn commands(&self, step: &str) -> &[Vec<u8>] {
        &self
            .steps
            .iter()
            .find(|(s, _, _)| *s == step)
            .expect("a step")
            .2
    }
}

/// A line that is not a command: telnet option negotiation, a window size,
/// an interrupt, an escaped 0xFF, AYT, NOP, invalid UTF-8 and control bytes.
const GARBAGE: &[u8] = b"\xff\xfb\x18\xff\xfd\x03\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0\
half\xff\xf4junk \xff\xff\xfe\x00\x01\x02\x7f\x80\xc3\x28\xff\xf1 \x1b[31mred\xff\xf6 \
\xff\xfa\x18\x00ANSI\xff\xf0 tail\r\n";

/// The same steps on one telnet connection; `name` is the character it
/// creates; `known` an existing account it fails to log in to.
fn tour(addr: SocketAddr, known: &str, name: &str) -> Tour {
    let mut t = Tn::connect(addr);
    let mut tour = Tour::default();
    let mut step = |t: &mut Tn, label: &'static str, send: &[u8], done: &dyn Fn(&str) -> bool| {
        let (text, raw) = t.exchange(send, done);
        tour.steps
            .push((label, text.replace(name, "<name>"), iac_commands(&raw)));
    };
    step(&mut t, "banner", b"", &prompted);
    step(&mut t, "help", b"help\r\n", &prompted);
    step(
        &mut t,
        "connect without a password",
        format!("connect {known}\r\n").as_bytes(),
        &|s: &str| s.ends_with("Password: "),
    );
    step(&mut t, "wrong password", b"not-the-password\r\n", &prompted);
    // A MUD client turns GMCP on and enables modules, then creates.
    let mut create = vec![IAC, DO, GMCP, IAC, SB, GMCP];
    create.extend_from_slice(br#"Core.Supports.Set ["Char 1", "Room 1", "Comm 1"]"#);
    create.extend_from_slice(&[IAC, SE]);
    create.extend_from_slice(format!("create {name} {PW}\r\n").as_bytes());
    step(&mut t, "create", &create, &prompted);
    step(&mut t, "look", b"look\r\n", &prompted);
    step(&mut t, "say", b"say hi over gmcp\r\n", &prompted);
    // GMCP that trails its answer arrives by the next prompt.
    step(&mut t, "look again", b"look\r\n", &prompted);
    step(&mut t, "unknown command", b"xyzzy plugh\r\n", &prompted);
    let mut long = vec![b'a'; 1500];
    long.extend_from_slice(b"\r\n");
    step(&mut t, "too long", &long, &prompted);
    step(&mut t, "garbage", GARBAGE, &prompted);
    step(&mut t, "look after garbage", b"look\r\n", &prompted);
    let raw_mark = t.raw.len();
    t.send(b"quit\r\n").expect("send quit");
    let bye = t.read_to_eof(ANSWER_TIMEOUT);
    tour.closed = bye.is_some();
    tour.steps.push((
        "quit",
        bye.unwrap_or_else(|| t.rest()),
        iac_commands(&t.raw[raw_mark..]),
    ));
    tour
}

/// The gateway runs the router's telnet codec and pre-login parser and
/// forwards the rest: a player cannot tell them apart. One connection
/// straight to router 1 and one to the gateway go through the same steps;
/// the texts (telnet commands stripped) must be the same, except names and
/// what depends on where a character stands (there: the first line), and
/// so must the telnet commands that carry the banner and the hidden
/// password prompt.
#[test]
fn the_gateway_speaks_the_routers_telnet() {
    let started = Instant::now();
    let c = gateway_cluster(false);
    let mut ames = Tn::create(c.telnet("router-1"), "Ames");
    ames.command("quit");
    let direct = tour(c.telnet("router-1"), "Ames", "Tdir");
    let relayed = tour(c.telnet(GATEWAY), "Ames", "Tgat");
    for (label, text, commands) in &direct.steps {
        eprintln!("telnet: router  {label}: {text:?} {commands:?}");
        eprintln!(
            "telnet: gateway {label}: {:?} {:?}",
            relayed.text(label),
            relayed.commands(label)
        );
    }

    let mut differences = Vec::new();
    let first_line = |s: &str| {
        s.trim_start_matches('\n')
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    for (label, text, _) in &direct.steps {
        let other = relayed.text(label);
        let (a, b) = match *label {
            // Where the character stands and who is around differ.
            "create" | "look" | "look after garbage" | "look again" => {
                (first_line(text), first_line(other))
            }
            _ => (text.clone(), other.to_string()),
        };
        if a != b {
            differences.push(format!("{label}: router {a:?}, gateway {b:?}"));
        }
    }
    // GMCP, through both the same (names aside).
    let (gmcp_direct, gmcp_relayed) = (direct.gmcp(), relayed.gmcp());
    eprintln!("telnet: router  GMCP {gmcp_direct:?}");
    eprintln!("telnet: gateway GMCP {gmcp_relayed:?}");
    let unnamed = |list: Vec<String>, name: &str| -> Vec<String> {
        list.into_iter()
            .map(|m| m.replace(name, "<name>"))
            .collect()
    };
    if unnamed(gmcp_direct.clone(), "Tdir") != unnamed(gmcp_relayed, "Tgat") {
        differences.push("GMCP differs (above)".into());
    }
    for package in [
        "Char.Name {\"fullname\":\"Tdir\",\"name\":\"Tdir\"}",
        "Comm.Channel.Text {\"channel\":\"say\",\"talker\":\"Tdir\",\"text\":\"hi over gmcp\"}",
    ] {
        if !gmcp_direct.iter().any(|m| m == package) {
            differences.push(format!("router: no {package} in {gmcp_direct:?}"));
        }
    }
    if !gmcp_direct
        .iter()
        .any(|m| m.starts_with("Room.Info \"Market Square\""))
    {
        differences.push(format!("router: no Room.Info in {gmcp_direct:?}"));
    }
    for label in ["banner", "connect without a password"] {
        if direct.commands(label) != relayed.commands(label) {
            differences.push(format!(
                "{label}: telnet commands: router {:?}, gateway {:?}",
                direct.commands(label),
                relayed.commands(label)
            ));
        }
    }
    // Echo off for the password, through both.
    for (who, t) in [("router", &direct), ("gateway", &relayed)] {
        let will_echo = vec![IAC, 251, 1];
        if !t
            .commands("connect without a password")
            .contains(&will_echo)
        {
            differences.push(format!(
                "{who}: no IAC WILL ECHO before the password prompt: {:?}",
                t.commands("connect without a password")
            ));
        }
        let look = t.text("look after garbage");
        if !look.contains("Market Square") {
            differences.push(format!(
                "{who}: no `look` answer after the garbage: {look:?}"
            ));
        }
        if !t.closed {
            differences.push(format!("{who}: the connection stayed open after quit"));
        }
        if !t.text("quit").contains("Goodbye. Your position is saved.") {
            differences.push(format!("{who}: quit: {:?}", t.text("quit")));
        }
        if !t.text("too long").contains("too long") {
            differences.push(format!("{who}: too long: {:?}", t.text("too long")));
        }
    }
    assert!(
        differences.is_empty(),
        "the gateway's telnet differs from the router's:\n{}",
        differences.join("\n")
    );
    // The same world over TLS through the gateway: Ames hears it.
    let mut ames = Tn::open(c.telnet("router-1"));
    let back = ames.command(&format!("connect Ames {PW}"));
    assert!(
        back.as_deref().is_some_and(|b| b.contains("Ames")),
        "connect Ames: {back:?}"
    );
    let out = common::tls_session(
        c.telnet_tls(GATEWAY).expect("the gateway serves TLS"),
        &c.path().join("gateway-tls.pem"),
        "mud.example.org",
        "Tls",
        PW,
        "over TLS through the gateway",
    );
    assert!(out.contains("Welcome to Tessera, Tls"), "{out}");
    let heard = ames.wait_note("Tls says,", ANSWER_TIMEOUT);
    assert_eq!(
        heard.as_deref(),
        Some("Tls says, \"over TLS through the gateway\""),
        "{:?}",
        ames.rest()
    );
    eprintln!("telnet: took {} ms", started.elapsed().as_millis());
}

// ------------------------------------------------ 3. only members may relay

/// `ClientMsg::Relay` makes the router trust the sender's word about a
/// player's address; a client without a certificate from the cluster CA
/// (any 3D client) is refused with an error, stays a plain client and can
/// still log in as one (it gets snapshots, which a relayed text session
/// does not).
#[test]
fn only_a_cluster_member_may_relay() {
    use tessera_proto::frame;
    use tessera_proto::msg::{ClientMsg, ServerMsg};
    let started = Instant::now();
    let c = gateway_cluster(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let quic = c.quic("router-1");
    let der = std::fs::read(c.router_cert()).expect("the router's certificate");
    let der_again = der.clone();
    let (client, bytes) = rt.block_on(async {
        let ep = tessera_client::endpoint(rustls::pki_types::CertificateDer::from(der))
            .expect("an endpoint");
        let mut client = tessera_client::Client::connect(&ep, quic)
            .await
            .expect("QUIC connect to router 1");
        let relay = ClientMsg::Relay {
            client: "203.0.113.9:4242".parse().unwrap(),
        };
        let bytes = frame::encode_frame(&relay, frame::MAX_CONTROL_FRAME).expect("encode");
        client.write_raw(&bytes).await.expect("send Relay");
        let answer = tokio::time::timeout(Duration::from_secs(10), client.read_direct()).await;
        match answer {
            Ok(Ok(ServerMsg::Error { code, message })) => {
                eprintln!("relay: refused with {code:?}: {message:?}");
                if !message.to_lowercase().contains("cluster") {
                    eprintln!("relay: (the refusal does not mention the cluster)");
                }
            }
            other => panic!(
                "a Relay from a client without a cluster certificate was answered {other:?}, \
                 not with an error"
            ),
        }
        let me = client
            .create("Quin", PW)
            .await
            .expect("a plain login after the refused Relay");
        eprintln!(
            "relay: then logged in as a 3D client: {} at {:?}",
            me.name, me.pos
        );
        (client, bytes)
    });
    // The client's tasks run on the runtime's workers while this thread waits.
    eventually(Duration::from_secs(5), || {
        (client.world.lock().snapshots > 0).then_some(())
    })
    .expect(
        "no snapshot within 5 s of a plain login: is the session a relayed text session after \
         all?",
    );

    rt.block_on(async {
        // A cluster member of another role (here a shard's certificate) may not relay
        // either: the router checks the role its certificate names.
        let ca = tessera_coordinator::pki::ClusterCa::load(&c.ca).expect("the CA");
        let shard_identity = ca
            .member(tessera_coordinator::identity::MemberRole::Shard, "shard-x")
            .expect("a shard's certificate")
            .chain_and_key();
        let ep = tessera_client::endpoint_as(
            rustls::pki_types::CertificateDer::from(der_again),
            Some(shard_identity),
            Duration::from_secs(30),
        )
        .expect("an endpoint with a member certificate");
        let mut member = tessera_client::Client::connect(&ep, quic)
            .await
            .expect("QUIC connect as a shard");
        member.write_raw(&bytes).await.expect("send Relay");
        match tokio::time::timeout(Duration::from_secs(10), member.read_direct()).await {
            Ok(Ok(ServerMsg::Error { message, .. })) => {
                assert!(message.contains("role gateway"), "{message}")
            }
            other => panic!("a shard's Relay was answered {other:?}, not refused"),
        }
    });
    drop(client);
    eprintln!("relay: took {} ms", started.elapsed().as_millis());
}

// ------------------------------------------------------- 4. a gateway drain

/// SIGTERM on the gateway: it closes its listener at once (new connections
/// are refused) and says it is not ready, keeps serving the player it has
/// until the player quits, then exits 0.
#[test]
fn a_draining_gateway_keeps_its_players_and_refuses_new_ones() {
    let started = Instant::now();
    let mut c = gateway_cluster(false);
    let (telnet, metrics) = (c.telnet(GATEWAY), c.metrics(GATEWAY));
    let mut dru = Tn::create(telnet, "Dru");
    let sigterm = Instant::now();
    c.sigterm(GATEWAY);
    let within = Duration::from_secs(2);
    let (mut refused, mut not_ready) = (None, None);
    let mut other_errors = Vec::new();
    eventually(within, || {
        // Only what was tried within 2 s of SIGTERM counts.
        if refused.is_none() && sigterm.elapsed() < within {
            match TcpStream::connect_timeout(&telnet, Duration::from_millis(300)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    refused = Some(sigterm.elapsed())
                }
                Err(e) => other_errors.push(e.to_string()),
                Ok(s) => drop(s),
            }
        }
        if not_ready.is_none() && sigterm.elapsed() < within {
            if let Some((503, _)) = try_get(metrics, "/readyz") {
                not_ready = Some(sigterm.elapsed());
            }
        }
        (refused.is_some() && not_ready.is_some()).then_some(())
    });
    eprintln!(
        "drain: connections refused after {refused:?}, /readyz 503 after {not_ready:?} \
         (other connect errors: {other_errors:?})"
    );
    assert!(
        refused.is_some(),
        "the draining gateway still accepted connections 2 s after SIGTERM ({other_errors:?})"
    );
    assert!(
        not_ready.is_some(),
        "/readyz did not answer 503 within 2 s of SIGTERM: {:?}",
        try_get(metrics, "/readyz")
    );
    // It keeps the player (and does not exit) while the player stays.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.try_exit(GATEWAY).is_none(),
        "the gateway exited with a player still in the world"
    );
    let look = dru.command("look");
    assert!(
        look.as_deref().is_some_and(|l| l.contains("Market Square")),
        "look while the gateway drains: {look:?}"
    );
    let w = dru.command("where");
    assert!(
        w.as_deref().and_then(Where::parse).is_some(),
        "where while the gateway drains: {w:?}"
    );
    dru.send_line("quit").expect("send quit");
    let bye = dru.read_to_eof(ANSWER_TIMEOUT);
    assert!(
        bye.as_deref()
            .is_some_and(|b| b.contains("Goodbye. Your position is saved.")),
        "quit while the gateway drains: {bye:?}"
    );
    let quit = Instant::now();
    // Within 5 s of its last player's quit (else a panic with its stderr).
    let (status, _) = c.wait_exit(GATEWAY, Duration::from_secs(5));
    eprintln!(
        "drain: the gateway exited ({status}) {} ms after the last player quit",
        quit.elapsed().as_millis()
    );
    assert!(status.success(), "the gateway exited with {status}");
    eprintln!("drain: took {} ms", started.elapsed().as_millis());
}

// ------------------------------------------ 5. the player's address counts

/// The routers rate-limit failed logins per address (tessera-auth's
/// `RateLimits::per_address`, 20 a minute by default). Through the gateway,
/// the address is the player's: a player at 127.0.0.2 guessing names is
/// refused after the limit, while a player at 127.0.0.3 logs in through
/// the same gateway. (Were the gateway's own address used, both would come
/// from it and the second login would be refused too.) The routers share
/// one auth service here, so one limiter sees every attempt whichever
/// router the gateway picks.
#[test]
fn login_limits_see_the_players_address_not_the_gateways() {
    let started = Instant::now();
    let c = gateway_cluster(true);
    let gateway = c.telnet(GATEWAY);
    let mut lima = Tn::create(gateway, "Lima");
    lima.send_line("quit").expect("quit");
    lima.read_to_eof(ANSWER_TIMEOUT).expect("quit closes");

    let guesser: IpAddr = "127.0.0.2".parse().unwrap();
    let mut g = Tn::open_from(gateway, guesser);
    let mut limited = None;
    for k in 0..30 {
        let answer = g
            .command(&format!("connect Guess{k:02} wrong-password-{k}"))
            .unwrap_or_else(|| panic!("no answer to guess {k}: {:?}", g.rest()));
        if answer.contains("Too many failed logins") {
            limited = Some((k, answer));
            break;
        }
        assert!(
            answer.contains("Wrong name or password."),
            "guess {k}: {answer:?}"
        );
    }
    let (k, answer) = limited.expect("30 failed logins from one address were never rate limited");
    eprintln!("limits: guess {k} from {guesser} was answered {answer:?}");
    assert!(
        answer.contains("try again in"),
        "the refusal says when: {answer:?}"
    );
    // From there, not even the right password of another account.
    let answer = g.command(&format!("connect Lima {PW}"));
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.contains("Too many failed logins")),
        "Lima's right password from the limited address: {answer:?}"
    );
    // From another address, through the same gateway: in.
    let mut owner = Tn::open_from(gateway, "127.0.0.3".parse().unwrap());
    let answer = owner.command(&format!("connect Lima {PW}"));
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.contains("Welcome back, Lima.")),
        "Lima from 127.0.0.3 through the gateway: {answer:?}"
    );

    // The gateway caps connections per player address (3 here), the
    // routers do not count its relayed ones.
    let crowded: IpAddr = "127.0.0.4".parse().unwrap();
    let held: Vec<Tn> = (0..3).map(|_| Tn::open_from(gateway, crowded)).collect();
    let mut refused = Tn::connect_from(gateway, crowded);
    let text = refused
        .read_to_eof(ANSWER_TIMEOUT)
        .expect("refused and closed");
    assert!(
        text.contains("Too many connections from your address (at most 3)"),
        "{text:?}"
    );
    drop(held);
    eprintln!("limits: took {} ms", started.elapsed().as_millis());
}

// ---------------------------------------------- 6. a router killed outright

/// SIGKILL on a router: no goodbye, no draining mark. Its players go quiet
/// only until the gateway's link to it times out (5 s), then go on on the
/// other router where they stood, told that their last command may not
/// have run.
#[test]
fn players_of_a_killed_router_go_on_within_seconds() {
    let mut c = gateway_cluster(false);
    // Two players: the gateway puts them on different routers.
    let mut players: Vec<(String, Tn)> = ["Kara", "Kobe"]
        .iter()
        .map(|n| (n.to_string(), Tn::create(c.telnet(GATEWAY), n)))
        .collect();
    let before: Vec<Where> = players
        .iter_mut()
        .map(|(n, t)| {
            let text = t
                .command("where")
                .unwrap_or_else(|| panic!("{n}: no where"));
            Where::parse(&text).unwrap_or_else(|| panic!("{n}: where {text:?}"))
        })
        .collect();
    let killed = Instant::now();
    c.kill("router-1");
    for (i, (name, tn)) in players.iter_mut().enumerate() {
        // Each player keeps asking; a command sent to the dead router gets
        // no answer, the next one does once the gateway resumed the player.
        // 20 s is well below the 30 s players' idle timeout.
        let (asking, within) = (Instant::now(), Duration::from_secs(20));
        let text = eventually(within, || {
            // Only what was asked within the 20 s counts.
            if asking.elapsed() >= within {
                return None;
            }
            tn.send_line("where")
                .expect("the gateway keeps the connection");
            tn.answer(Duration::from_secs(3))
                .as_deref()
                .and_then(Where::parse)
        })
        .unwrap_or_else(|| panic!("{name} got no answer within 20 s of the kill"));
        assert!(
            (text.x - before[i].x).abs() < 0.5 && (text.z - before[i].z).abs() < 0.5,
            "{name} was at {:?} and is now at {text:?}",
            before[i]
        );
        let notes = tn.take_notes();
        assert!(
            !notes.iter().any(|n| n.contains("Goodbye")),
            "{name} was sent away: {notes:?}"
        );
    }
    eprintln!(
        "killed router: both players answered again {} ms after SIGKILL",
        killed.elapsed().as_millis()
    );
}
