//! MUD clients against the real binary (issue 17): TinTin++, a real MUD
//! client, logs in, walks and logs the GMCP it receives; a client that
//! speaks MCCP2 reads a look-heavy session through zlib and gets the same
//! text for far fewer bytes; MSSP answers a crawler.

mod common;

use common::{Server, TelnetClient, TestDir, ANSWER_TIMEOUT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PW: &str = "correct-horse";
const TT: &str = "/usr/games/tt++";

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const MSSP: u8 = 70;
const MCCP2: u8 = 86;

/// Runs `command` on a pseudo-terminal (TinTin++ needs one) for at most
/// `limit`; returns what it printed. Python's `pty` makes the terminal.
fn on_a_terminal(command: &[&str], limit: Duration) -> String {
    const RUN: &str = r#"
import os, pty, sys, time, select, fcntl, termios, struct, subprocess, signal
limit = float(sys.argv[1]); cmd = sys.argv[2:]
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                     env=dict(os.environ, TERM="xterm"), start_new_session=True)
os.close(slave)
out = bytearray(); deadline = time.time() + limit
while time.time() < deadline and p.poll() is None:
    if select.select([master], [], [], 0.2)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        out += data
if p.poll() is None:
    os.killpg(p.pid, signal.SIGKILL)
sys.stdout.buffer.write(out)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", RUN, &limit.as_secs_f64().to_string()])
        .args(command)
        .output()
        .expect("python3 runs (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TinTin++ (Debian `tintin++`) scripted as a player would set it up for
/// GMCP: it accepts GMCP, says hello, enables the Room, Char, Comm and
/// Tessera modules, creates a character, walks north twice and speaks; a
/// second player nearby speaks to it. Its log of the GMCP it received holds
/// every package the protocol promises, and its screen the game's text.
#[test]
fn tintin_logs_in_walks_and_receives_gmcp() {
    assert!(
        std::path::Path::new(TT).exists(),
        "TinTin++ is not installed ({TT}; scripts/test.sh installs Debian's tintin++)"
    );
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let log = dir.path().join("gmcp.log");
    let script = dir.path().join("player.tin");
    let port = server.telnet.port();
    std::fs::write(
        &script,
        format!(
            r#"#config {{log}} {{plain}}
#event {{IAC SB GMCP}} {{#line log {{{log}}} {{GMCP %0 %1}}}}
#event {{IAC WILL GMCP}} {{#send {{\xFF\xFD\xC9\}};#send {{\xFF\xFA\xC9Core.Hello {{"client":"TinTin++","version":"2"}}\xFF\xF0\}};#send {{\xFF\xFA\xC9Core.Supports.Set ["Room 1","Char 1","Comm 1","Tessera 1"]\xFF\xF0\}}}}
#event {{SESSION CONNECTED}} {{#delay {{0.5}} {{#send {{create Tina {PW}}}}}}}
#session tessera 127.0.0.1 {port}
#delay {{2.5}} {{n}}
#delay {{3.5}} {{n}}
#delay {{4.5}} {{say the fountain is dry}}
#delay {{8}} {{#end}}
"#,
            log = log.display(),
        ),
    )
    .expect("script written");
    let player = std::thread::spawn({
        let script = script.display().to_string();
        move || on_a_terminal(&[TT, "-G", &script], Duration::from_secs(20))
    });
    // Bob stands at the spawn and speaks once Tina is in the world.
    let mut bob = TelnetClient::create(server.telnet, "Bob", PW);
    std::thread::sleep(Duration::from_secs(4));
    bob.command("say hello Tina");
    let screen = without_escapes(&player.join().expect("TinTin++ ran"));
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = got.lines().collect();
    let has = |package: &str, needle: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("GMCP {package} ")) && l.contains(needle))
    };
    let shown = || format!("GMCP log:\n{got}\nscreen:\n{screen}");
    assert!(has("Char.Name", "{name}{Tina}"), "{}", shown());
    assert!(has("Comm.Channel.List", "{command}{say}"), "{}", shown());
    assert!(has("Room.Info", "{num}"), "{}", shown());
    assert!(has("Room.Info", "{exits}{{"), "{}", shown());
    assert!(has("Room.Info", "{name}{Market Square}"), "{}", shown());
    assert!(has("Char.Status", "{shard}{shard-"), "{}", shown());
    // Two steps north: the position in Char.Status changed at least twice.
    let statuses = lines
        .iter()
        .filter(|l| l.starts_with("GMCP Char.Status "))
        .count();
    assert!(statuses >= 3, "{}", shown());
    assert!(
        has("Comm.Channel.Text", "{talker}{Bob}{text}{hello Tina}"),
        "{}",
        shown()
    );
    assert!(
        has(
            "Comm.Channel.Text",
            "{talker}{Tina}{text}{the fountain is dry}"
        ),
        "{}",
        shown()
    );
    assert!(has("Tessera.Nearby", "{name}{Bob}"), "{}", shown());
    // The text game is there too, and no GMCP leaked onto the screen.
    assert!(screen.contains("Welcome to Tessera, Tina!"), "{}", shown());
    assert!(screen.contains("You walk north."), "{}", shown());
    assert!(!screen.contains("Room.Info"), "{}", shown());
}

/// `text` without ANSI escape sequences (TinTin++ draws with them, and
/// shows the server's colours).
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL.
            Some(']') => {
                for c in chars.by_ref() {
                    if c == '\x07' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Colour by what the client said: a client that reports an xterm with 256
/// colours gets names, the zone and the map in 256 colours; one that said
/// nothing gets the same screen without a single escape code; `color on`
/// gives it 16 colours.
#[test]
fn colour_only_for_clients_that_asked() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut ttype = vec![IAC, WILL, 24, IAC, SB, 24, 0];
    ttype.extend_from_slice(b"XTERM-256COLOR");
    ttype.extend_from_slice(&[IAC, SE]);
    let mut rich = RawClient::connect(server.telnet, &ttype);
    rich.command(&format!("create Colourful {PW}"));
    let from = rich.text.len();
    rich.command("look");
    rich.command("map");
    let shown = String::from_utf8_lossy(&rich.text[from..]).into_owned();
    assert!(
        shown.contains("\x1b[1;38;5;221mMarket Square\x1b[0m"),
        "{shown:?}"
    );
    assert!(shown.contains("\x1b[1;38;5;231m@\x1b[0m"), "{shown:?}");

    let mut bare = RawClient::connect(server.telnet, &[IAC, DONT, 201]);
    bare.command(&format!("create Greyish {PW}"));
    bare.command("look");
    bare.command("map");
    assert!(
        !bare.text.contains(&0x1b),
        "an escape code for a client that said nothing: {:?}",
        String::from_utf8_lossy(&bare.text)
    );
    assert!(String::from_utf8_lossy(&bare.text).contains("Market Square"));
    bare.command("color on");
    let from = bare.text.len();
    bare.command("look");
    let shown = String::from_utf8_lossy(&bare.text[from..]).into_owned();
    assert!(
        shown.contains("\x1b[1;33mMarket Square\x1b[0m"),
        "{shown:?}"
    );
}

/// A raw telnet client that answers the greeting as told and reads through
/// MCCP2 once the server starts it.
struct RawClient {
    stream: TcpStream,
    /// Bytes received on the wire.
    wire: usize,
    inflate: Option<flate2::Decompress>,
    /// Text (and commands) received, decompressed.
    text: Vec<u8>,
    /// Wire bytes of the compressed part not yet inflated.
    pending: Vec<u8>,
}

impl RawClient {
    fn connect(addr: SocketAddr, answers: &[u8]) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut c = RawClient {
            stream,
            wire: 0,
            inflate: None,
            text: Vec::new(),
            pending: Vec::new(),
        };
        c.read_until(b"> ", ANSWER_TIMEOUT);
        c.stream.write_all(answers).expect("answers");
        c
    }

    /// Reads until the decompressed text holds `needle` after `from`.
    fn read_until_from(&mut self, from: usize, needle: &[u8], limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 16 * 1024];
        while !self.text[from.min(self.text.len())..]
            .windows(needle.len())
            .any(|w| w == needle)
        {
            assert!(
                Instant::now() < deadline,
                "no {:?} in {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.text[from.min(self.text.len())..])
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("connection closed"),
                Ok(n) => {
                    self.wire += n;
                    self.take(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn read_until(&mut self, needle: &[u8], limit: Duration) {
        self.read_until_from(0, needle, limit)
    }

    /// Takes bytes off the wire: plain until the server's `IAC SB MCCP2 IAC
    /// SE`, then through zlib.
    fn take(&mut self, bytes: &[u8]) {
        let start = [IAC, SB, MCCP2, IAC, SE];
        match &mut self.inflate {
            None => {
                self.text.extend_from_slice(bytes);
                if let Some(at) = self.text.windows(5).position(|w| w == start) {
                    let rest = self.text.split_off(at + 5);
                    self.inflate = Some(flate2::Decompress::new(true));
                    self.take(&rest);
                }
            }
            Some(z) => {
                self.pending.extend_from_slice(bytes);
                let mut out = Vec::with_capacity(self.pending.len() * 8 + 1024);
                let before = z.total_in();
                z.decompress_vec(&self.pending, &mut out, flate2::FlushDecompress::Sync)
                    .expect("a valid zlib stream");
                let used = (z.total_in() - before) as usize;
                self.pending.drain(..used);
                self.text.extend_from_slice(&out);
            }
        }
    }

    fn command(&mut self, line: &str) {
        let from = self.text.len();
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.read_until_from(from, b"> ", ANSWER_TIMEOUT);
    }
}

/// The same look-heavy session with and without MCCP2: the compressed one
/// reads the same text through zlib for a fraction of the bytes. The ratio
/// is printed (docs/performance.md, "MCCP2").
#[test]
fn mccp2_compresses_a_look_heavy_session() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let session = |answers: &[u8], name: &str| {
        let mut c = RawClient::connect(server.telnet, answers);
        c.command(&format!("create {name} {PW}"));
        for _ in 0..30 {
            c.command("look");
            c.command("map");
        }
        c
    };
    let refuse_all = [
        IAC, DONT, MCCP2, IAC, DONT, 201, IAC, DONT, MSSP, IAC, DONT, 25,
    ];
    let plain = session(&refuse_all, "Plainly");
    assert!(plain.inflate.is_none());
    let accept = [
        IAC, DO, MCCP2, IAC, DONT, 201, IAC, DONT, MSSP, IAC, DONT, 25,
    ];
    let zipped = session(&accept, "Zipped");
    assert!(zipped.inflate.is_some(), "compression never started");
    let text = String::from_utf8_lossy(&zipped.text);
    assert!(text.contains("Market Square") && text.contains("You see:"));
    assert_eq!(
        text.matches("Market Square").count(),
        String::from_utf8_lossy(&plain.text)
            .matches("Market Square")
            .count(),
        "the compressed session read the same screens"
    );
    eprintln!(
        "MCCP2: 30 x (look + map): {} bytes plain, {} bytes compressed ({:.1} x smaller)",
        plain.wire,
        zipped.wire,
        plain.wire as f64 / zipped.wire as f64
    );
    assert!(
        zipped.wire * 3 < plain.wire,
        "{} compressed vs {} plain",
        zipped.wire,
        plain.wire
    );
}

/// A crawler's two ways to ask: the MSSP subnegotiation (IAC DO MSSP) and
/// the plain-text `MSSP-REQUEST` before login. PLAYERS and UPTIME are
/// integers.
#[test]
fn mssp_answers_a_crawler_both_ways() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let _ann = TelnetClient::create(server.telnet, "Ann", PW);
    let mut c = RawClient::connect(server.telnet, &[IAC, DO, MSSP]);
    c.read_until(&[IAC, SE], ANSWER_TIMEOUT);
    let start = c
        .text
        .windows(3)
        .position(|w| w == [IAC, SB, MSSP])
        .expect("an MSSP table");
    let table = &c.text[start + 3..];
    let end = table.windows(2).position(|w| w == [IAC, SE]).unwrap();
    let mut vars = std::collections::BTreeMap::new();
    for var in table[..end].split(|b| *b == 1).filter(|v| !v.is_empty()) {
        let mut parts = var.split(|b| *b == 2);
        let name = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
        let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        vars.insert(name, value);
    }
    assert_eq!(vars["NAME"], "Tessera Vale");
    assert_eq!(vars["PLAYERS"], "1");
    let uptime: u64 = vars["UPTIME"].parse().expect("UPTIME is an integer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(uptime <= now && uptime + 600 > now, "{uptime} vs {now}");
    assert_eq!(vars["PORT"], server.telnet.port().to_string());
    assert_eq!(vars["GMCP"], "1");

    let mut t = RawClient::connect(server.telnet, &[IAC, WILL, 0]);
    t.stream.write_all(b"MSSP-REQUEST\r\n").unwrap();
    t.read_until(b"MSSP-REPLY-END\r\n", ANSWER_TIMEOUT);
    let text = String::from_utf8_lossy(&t.text);
    assert!(
        text.contains("MSSP-REPLY-START\r\nNAME\tTessera Vale\r\nPLAYERS\t1\r\n"),
        "{text}"
    );
    assert!(text.contains("MSSP-REPLY-END"), "{text}");
}
