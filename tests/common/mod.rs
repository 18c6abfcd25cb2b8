//! Shared helpers for the real-process tests: start and stop the `tessera`
//! binary on free loopback ports, talk telnet to it, scrape its metrics and
//! connect QUIC clients. Everything started here is killed on drop, even when
//! a test panics.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default world shipped in the repository.
pub const DEFAULT_WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/worlds/default");

/// How long the server may take to print its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound for one telnet answer (argon2id logins included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ test dir

/// A temporary directory that outlives server processes, so a server can be
/// restarted on the same data. Holds `data/` (the server's data dir) and one
/// stderr log per server start.
pub struct TestDir {
    root: tempfile::TempDir,
    starts: AtomicU32,
}

impl TestDir {
    pub fn new() -> TestDir {
        let root = tempfile::Builder::new()
            .prefix("tessera-test-")
            .tempdir()
            .expect("create a temp dir");
        fs::create_dir_all(root.path().join("data")).expect("create the data dir");
        TestDir {
            root,
            starts: AtomicU32::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn next_log(&self) -> PathBuf {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        self.root.path().join(format!("server-{n}.stderr.log"))
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

// -------------------------------------------------------------------- server

/// Flags for one server start.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub world: PathBuf,
    pub shards: Option<u32>,
    pub tick_hz: Option<u32>,
    /// The QUIC address (default: any free loopback port), for a server
    /// restarted where its clients expect it.
    pub quic: Option<SocketAddr>,
    /// The web client's page (default: any free loopback port), for a page
    /// that must find its server again after a restart.
    pub web: Option<SocketAddr>,
    /// Any further flags.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the server; its stderr goes to a file in the test dir.
    pub rust_log: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            world: PathBuf::from(DEFAULT_WORLD),
            shards: None,
            tick_hz: None,
            quic: None,
            web: None,
            extra_args: Vec::new(),
            // TESSERA_TEST_RUST_LOG=debug makes the logs useful for diagnosis.
            rust_log: std::env::var("TESSERA_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }
}

/// A running `tessera up` process.
pub struct Server {
    child: Child,
    pub telnet: SocketAddr,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The web client's page (`--web`), once printed.
    pub web: Option<SocketAddr>,
    pub cert_path: PathBuf,
    pub stderr_log: PathBuf,
    stdout: Arc<Mutex<String>>,
    stdout_thread: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts the server on the default world with the data in `dir`.
    pub fn start(dir: &TestDir) -> Server {
        Server::start_with(dir, &ServerOptions::default())
    }

    pub fn start_with(dir: &TestDir, opts: &ServerOptions) -> Server {
        let stderr_log = dir.next_log();
        let stderr = fs::File::create(&stderr_log).expect("create the stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        let quic = opts.quic.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let web = opts.web.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        cmd.args(["--telnet", "127.0.0.1:0"])
            .args(["--quic", &quic.to_string()])
            .args(["--metrics", "127.0.0.1:0"])
            .args(["--assets-listen", "127.0.0.1:0"])
            .args(["--web", &web.to_string()])
            .arg("--data-dir")
            .arg(dir.data_dir())
            .arg("--world")
            .arg(&opts.world);
        if let Some(n) = opts.shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        if let Some(hz) = opts.tick_hz {
            cmd.args(["--tick-hz", &hz.to_string()]);
        }
        cmd.args(&opts.extra_args);
        cmd.current_dir(dir.path())
            .env("RUST_LOG", &opts.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("start the tessera binary");

        let stdout_pipe = child.stdout.take().expect("piped stdout");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let kept = stdout.clone();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut s = kept.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
                let _ = tx.send(line);
            }
        });

        // From here on the child is killed on drop, even if we panic.
        let mut server = Server {
            child,
            telnet: SocketAddr::from(([0, 0, 0, 0], 0)),
            quic: SocketAddr::from(([0, 0, 0, 0], 0)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
            web: None,
            cert_path: PathBuf::new(),
            stderr_log,
            stdout,
            stdout_thread: Some(stdout_thread),
            exit: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (mut telnet, mut quic, mut metrics) = (None, None, None);
        while telnet.is_none() || quic.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "the server did not print its addresses ({e:?}); stdout:\n{}\nstderr:\n{}",
                    server.stdout(),
                    server.stderr_tail(40)
                ),
            };
            if let Some(rest) = line.strip_prefix("telnet listening on ") {
                telnet = Some(parse_addr(rest.split_whitespace().next().unwrap_or("")));
            } else if let Some(rest) = line.strip_prefix("quic listening on ") {
                quic = Some(parse_addr(rest.split_whitespace().next().unwrap_or("")));
                let cert = rest
                    .split_once("certificate to pin: ")
                    .map(|(_, p)| p.trim().trim_end_matches(')'))
                    .expect("the quic line names the certificate");
                server.cert_path = PathBuf::from(cert);
            } else if let Some(rest) = line.strip_prefix("play in a browser: http://") {
                let addr = rest.split_whitespace().next().unwrap_or("");
                server.web = Some(parse_addr(addr.trim_end_matches('/')));
            } else if let Some(rest) = line.strip_prefix("metrics on http://") {
                metrics = Some(parse_addr(rest.trim().trim_end_matches("/metrics")));
            }
        }
        server.telnet = telnet.unwrap();
        server.quic = quic.unwrap();
        server.metrics = metrics.unwrap();
        server.wait_until_ticking(deadline);
        server
    }

    /// Ready means every shard has ticked a few times, so the router's view
    /// of the world holds a frame of every cell (the addresses are printed
    /// as soon as the sockets are bound, which can be before the first tick).
    fn wait_until_ticking(&mut self, deadline: Instant) {
        let shards: usize = self
            .stdout()
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("Tessera is up: ")?;
                let (_, after) = rest.split_once(" cells on ")?;
                after.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(1);
        loop {
            let text = scrape(self.metrics);
            let ticks = metric_samples(&text, "tessera_shard_tick_seconds_count");
            if ticks.len() >= shards && ticks.iter().all(|(_, n)| *n >= 3.0) {
                return;
            }
            if Instant::now() > deadline || !self.is_running() {
                panic!(
                    "the shards did not start ticking (running: {}); stderr:\n{}",
                    self.is_running(),
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The whole stderr log so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        let all = self.stderr();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Stops the server with SIGINT and waits for it to exit; returns its
    /// exit status. Panics if it does not stop in time (it is then killed).
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("-INT")
    }

    /// Stops the server with the given `kill` signal flag (`-INT`, `-TERM`)
    /// and waits for it to exit.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                self.exit = Some(status);
                if let Some(t) = self.stdout_thread.take() {
                    let _ = t.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the server did not stop within {STOP_TIMEOUT:?} of kill {signal}; stderr:\n{}",
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- server stderr ({}), last lines ----\n{}\n---- end ----",
                self.stderr_log.display(),
                self.stderr_tail(60)
            );
        }
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("cannot parse address {s:?}: {e}"))
}

// -------------------------------------------------------------------- telnet

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IacState {
    Data,
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option byte follows.
    Option,
    Sub,
    SubIac,
}

/// Strips telnet commands from the server's output.
#[derive(Debug)]
struct IacStripper {
    state: IacState,
}

impl IacStripper {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            self.state = match (self.state, b) {
                (IacState::Data, IAC) => IacState::Iac,
                (IacState::Data, _) => {
                    out.push(b);
                    IacState::Data
                }
                (IacState::Iac, IAC) => {
                    out.push(IAC);
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
}

/// A parsed `where` answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Where {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    /// e.g. `-1,0`
    pub cell: String,
    /// e.g. `shard-1`
    pub shard: String,
}

impl Where {
    /// Parses `x y z\ncell cx,cz shard id`, strictly.
    pub fn parse(text: &str) -> Option<Where> {
        let mut lines = text.lines();
        let nums: Vec<f32> = lines
            .next()?
            .split_whitespace()
            .map(|n| n.parse::<f32>())
            .collect::<Result<_, _>>()
            .ok()?;
        if nums.len() != 3 {
            return None;
        }
        let second = lines.next()?;
        let rest = second.strip_prefix("cell ")?;
        let (cell, shard) = rest.split_once(" shard ")?;
        Some(Where {
            x: nums[0],
            y: nums[1],
            z: nums[2],
            cell: cell.trim().to_string(),
            shard: shard.trim().to_string(),
        })
    }

    pub fn distance_xz(&self, other: &Where) -> f32 {
        ((self.x - other.x).powi(2) + (self.z - other.z).powi(2)).sqrt()
    }
}

/// A telnet connection that reads the server's output as prompt-terminated
/// segments. The server ends every answer with the prompt `> `; something
/// that happens while the player sits at the prompt (speech) arrives as
/// `\r\n<text>\r\n> `, so a segment that starts with a line break is a
/// notification, and anything else is the answer to a command.
pub struct TelnetClient {
    stream: TcpStream,
    stripper: IacStripper,
    /// Text received but not yet split into segments.
    buf: Vec<u8>,
    /// Notification lines not yet consumed by `wait_for`.
    notes: VecDeque<String>,
    /// Answers read while waiting for a notification.
    answers: VecDeque<String>,
    eof: bool,
    pub name: Option<String>,
}

impl TelnetClient {
    /// Connects and reads the banner (up to the first prompt).
    pub fn connect(addr: SocketAddr) -> TelnetClient {
        let mut c = TelnetClient::connect_raw(addr);
        let banner = c.read_until_prompt(ANSWER_TIMEOUT);
        assert!(
            banner.contains("Welcome to Tessera"),
            "unexpected banner: {banner:?}"
        );
        c
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> TelnetClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("telnet connect to {addr}: {e}"));
        TelnetClient::over(stream)
    }

    /// Connects from the local address `from` (any of 127.0.0.0/8 works on
    /// loopback: another player's machine, as the server sees it) and reads
    /// the banner.
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> TelnetClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("telnet connect from {from} to {addr}: {e}"));
        let mut c = TelnetClient::over(socket.into());
        let banner = c.read_until_prompt(ANSWER_TIMEOUT);
        assert!(banner.contains("Welcome to Tessera"), "{banner:?}");
        c
    }

    fn over(stream: TcpStream) -> TelnetClient {
        stream.set_nodelay(true).ok();
        TelnetClient {
            stream,
            stripper: IacStripper {
                state: IacState::Data,
            },
            buf: Vec::new(),
            notes: VecDeque::new(),
            answers: VecDeque::new(),
            eof: false,
            name: None,
        }
    }

    /// Connects and creates a character; panics unless it enters the world.
    pub fn create(addr: SocketAddr, name: &str, password: &str) -> TelnetClient {
        let mut c = TelnetClient::connect(addr);
        let text = c.command(&format!("create {name} {password}"));
        assert!(
            text.contains(&format!("Welcome to Tessera, {name}!")),
            "create {name} failed: {text:?}"
        );
        c.name = Some(name.to_string());
        c
    }

    /// Connects and logs in to an existing character; panics unless it
    /// enters the world.
    pub fn login(addr: SocketAddr, name: &str, password: &str) -> TelnetClient {
        let mut c = TelnetClient::connect(addr);
        let text = c.command(&format!("connect {name} {password}"));
        assert!(
            text.contains(&format!("Welcome back, {name}.")),
            "connect {name} failed: {text:?}"
        );
        c.name = Some(name.to_string());
        c
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("telnet write: {e}"));
    }

    /// Sends a line terminated by CR LF.
    pub fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes);
    }

    /// Sends a line and returns its answer.
    pub fn command(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_until_prompt(ANSWER_TIMEOUT)
    }

    /// `where`, parsed; panics on an answer of the wrong shape.
    pub fn where_(&mut self) -> Where {
        let text = self.command("where");
        Where::parse(&text).unwrap_or_else(|| panic!("unexpected `where` answer: {text:?}"))
    }

    /// Reads more bytes into the buffer; false on timeout or EOF.
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
                self.stripper.feed(&chunk[..n], &mut self.buf);
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

    /// Takes the next prompt-terminated segment out of the buffer:
    /// `(is_notification, text)`.
    fn take_segment(&mut self) -> Option<(bool, String)> {
        let mut at = None;
        for i in 0..self.buf.len().saturating_sub(1) {
            if &self.buf[i..i + 2] == b"> " && (i == 0 || self.buf[i - 1] == b'\n') {
                at = Some(i);
                break;
            }
        }
        let i = at?;
        let raw: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
        let text = String::from_utf8_lossy(&raw).replace('\r', "");
        let notification = text.starts_with('\n');
        Some((notification, text.trim_matches('\n').to_string()))
    }

    /// The next segment, waiting until `deadline`.
    fn next_segment(&mut self, deadline: Instant) -> Option<(bool, String)> {
        loop {
            if let Some(s) = self.take_segment() {
                return Some(s);
            }
            if !self.fill(deadline) && (self.eof || Instant::now() >= deadline) {
                return None;
            }
        }
    }

    /// The next answer (text before the next prompt, notifications set
    /// aside), or `None` on timeout or EOF.
    pub fn try_read_until_prompt(&mut self, timeout: Duration) -> Option<String> {
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

    /// Like [`Self::try_read_until_prompt`] but panics on timeout or EOF.
    pub fn read_until_prompt(&mut self, timeout: Duration) -> String {
        match self.try_read_until_prompt(timeout) {
            Some(t) => t,
            None => panic!(
                "no prompt within {timeout:?} (eof: {}); buffered: {:?}",
                self.eof,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Waits for a line containing `needle` (typically an asynchronous
    /// notification such as speech) and returns it.
    pub fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        while let Some(line) = self.notes.pop_front() {
            if line.contains(needle) {
                return Some(line);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (notification, text) = self.next_segment(deadline)?;
            let mut lines = text.lines().map(str::to_string);
            if let Some(found) = lines.by_ref().find(|l| l.contains(needle)) {
                if notification {
                    self.notes.extend(lines);
                }
                return Some(found);
            }
            if !notification {
                self.answers.push_back(text);
            }
        }
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        match self.try_wait_for(needle, timeout) {
            Some(l) => l,
            None => panic!(
                "no line containing {needle:?} within {timeout:?} (eof: {}); buffered: {:?}",
                self.eof,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads until the server closes the connection; returns everything
    /// left (telnet commands stripped). Panics on timeout.
    pub fn read_to_eof(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            if !self.fill(deadline) && !self.eof && Instant::now() >= deadline {
                panic!(
                    "the connection was not closed within {timeout:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
        let rest = std::mem::take(&mut self.buf);
        String::from_utf8_lossy(&rest).replace('\r', "")
    }

    /// Sends `quit` and reads until the server closes the connection.
    pub fn quit(&mut self) -> String {
        self.send_line("quit");
        self.read_to_eof(ANSWER_TIMEOUT)
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }
}

/// Retries `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------- metrics

/// A GET of `path` on an HTTP address: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot reach {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read the response");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}{path}: {resp:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// `GET /metrics`: the Prometheus text.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "metrics answered {status}: {body}");
    body
}

/// Every sample of metric `name`: `(labels, value)`, labels as written
/// between the braces (empty without labels).
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l.to_string(), v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            (String::new(), rest)
        } else {
            continue; // a longer metric name with this prefix
        };
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push((labels, v));
        }
    }
    out
}

/// The sum of `tessera_shard_entities` over every cell: the world's entity
/// count.
pub fn entity_count(addr: SocketAddr) -> f64 {
    metric_samples(&scrape(addr), "tessera_shard_entities")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// The entity count once it is stable: two reads 300 ms apart agree.
pub fn settled_entity_count(addr: SocketAddr, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = entity_count(addr);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = entity_count(addr);
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the entity count did not settle within {timeout:?} (last {last}, now {now})"
        );
        last = now;
    }
}

/// `tessera_shard_tick_seconds_count` for one shard.
pub fn tick_count(addr: SocketAddr, shard: &str) -> f64 {
    let label = format!("shard=\"{shard}\"");
    metric_samples(&scrape(addr), "tessera_shard_tick_seconds_count")
        .into_iter()
        .filter(|(l, _)| l.contains(&label))
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------------- quic

/// A free loopback TCP port (for a server restarted on the same address).
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

/// A free loopback UDP port (for a server or service restarted on the same
/// address).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// A QUIC client endpoint pinned to the server's certificate.
pub fn quic_endpoint(server: &Server) -> quinn::Endpoint {
    let der = fs::read(&server.cert_path)
        .unwrap_or_else(|e| panic!("read the certificate {}: {e}", server.cert_path.display()));
    tessera_client::endpoint(rustls::pki_types::CertificateDer::from(der))
        .expect("create a QUIC endpoint")
}

/// A connected QUIC client (hello/welcome done, not logged in).
pub async fn quic_connect(ep: &quinn::Endpoint, server: &Server) -> tessera_client::Client {
    tessera_client::Client::connect(ep, server.quic)
        .await
        .unwrap_or_else(|e| panic!("QUIC connect to {}: {e}", server.quic))
}

/// A QUIC client that created `name` and is in the world.
pub async fn quic_player(
    ep: &quinn::Endpoint,
    server: &Server,
    name: &str,
    password: &str,
) -> (tessera_client::Client, tessera_client::LoggedIn) {
    let mut client = quic_connect(ep, server).await;
    let me = client
        .create(name, password)
        .await
        .unwrap_or_else(|e| panic!("QUIC create {name}: {e}"));
    (client, me)
}

/// Runs blocking test code (telnet, metrics) from inside a multi-threaded
/// tokio test without stalling the runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Creates `name` over telnet-over-TLS (trusting `ca`, checking the name `host`),
/// says `text`, asks `where`, quits; returns everything the server sent.
/// Panics with Python's error if the handshake or login fails.
pub fn tls_session(
    addr: SocketAddr,
    ca: &Path,
    host: &str,
    name: &str,
    password: &str,
    text: &str,
) -> String {
    let script = r#"
import socket, ssl, sys, time
port, ca, host, name, pw, text = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
s = ctx.wrap_socket(raw, server_hostname=host)
out = b""
def until(marker, t=10):
    global out
    end = time.time() + t
    while marker not in out and time.time() < end:
        d = s.recv(65536)
        if not d:
            break
        out += d
    if marker not in out:
        sys.exit("did not see %r in %r" % (marker, out))
until(b"> ")
s.sendall(("create %s %s\r\n" % (name, pw)).encode())
until(("Welcome to Tessera, %s" % name).encode())
s.sendall(("say %s\r\n" % text).encode())
until(b"You say")
s.sendall(b"where\r\n")
until(b"shard")
s.sendall(b"quit\r\n")
until(b"Goodbye")
sys.stdout.write(out.decode("utf-8", "replace"))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(addr.port().to_string())
        .arg(ca)
        .arg(host)
        .arg(name)
        .arg(password)
        .arg(text)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "TLS session failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
