//! Random bytes into every port a stranger or a member can reach, on a real
//! cluster (etcd, a coordinator, a shard and a router, each its own
//! process): the router's telnet port (several connections of random
//! bytes, IAC floods, a 1 MiB line without a newline, NUL bytes, invalid
//! UTF-8, and random lines from a logged-in player), its QUIC player
//! endpoint and the cluster bus ports of the router and the shard (random
//! UDP datagrams, many shaped like QUIC long and short headers), the
//! player endpoint's control stream and datagrams after a real handshake,
//! and the cluster bus's streams from a connection that holds a member
//! certificate. Afterwards every process still runs, none logged a panic,
//! the player who was connected all along is still served, the garbage
//! connections are all gone, the shard still ticks, and a new player logs
//! in over telnet and over QUIC and is answered.
//!
//! The bytes come from one seeded generator: the seed is printed, and
//! `TESSERA_RANDOM_BYTES_SEED=N` replays a run.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, TelnetClient, TestDir, Where};
use etcd::EtcdServer;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support_cluster::*;
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::pki::{MemberIdentity, CLUSTER_NAME};

const DEFAULT_SEED: u64 = 0x7E55_E4AB_17E5;

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const NAWS: u8 = 31;
const DONT: u8 = 254;
/// Option: MUD Client Compression Protocol v2.
const MCCP2: u8 = 86;

/// How long one write of garbage may block before we call the connection
/// stalled (the server stopped reading it: back-pressure, not a failure).
const WRITE_STALL: Duration = Duration::from_secs(2);

/// Datagrams sent to each UDP port.
const DATAGRAMS_PER_PORT: usize = 1500;

/// Streams of garbage opened on each cluster bus by a member connection.
const BUS_STREAMS: usize = 40;

#[test]
fn random_bytes_on_every_port_leave_the_cluster_serving() {
    let seed = std::env::var("TESSERA_RANDOM_BYTES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("random bytes seed: {seed} (replay with TESSERA_RANDOM_BYTES_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = TestDir::new();
    let etcd = EtcdServer::start();
    let ca = ca_init(dir.path(), &etcd);
    let mut coordinator = coordinator(
        dir.path(),
        &ca,
        &CoordinatorSpec::local(&etcd, "coordinator-a"),
    );
    let mut shard = shard(dir.path(), &ca, &ShardSpec::local(&etcd, "shard-1"));
    let mut router = router(dir.path(), &ca, &RouterSpec::local(&etcd));
    let shard_bus = shard.role.wait_ready(READY_TIMEOUT).addr("cluster");
    let router_bus = router.role.wait_ready(READY_TIMEOUT).addr("cluster");
    wait_ticking(&[shard.metrics], 10.0);
    eprintln!(
        "telnet {}, QUIC {}, router bus {router_bus}, shard bus {shard_bus}",
        router.telnet, router.quic
    );

    // Someone who plays through it all.
    let mut bystander = TelnetClient::create(router.telnet, "Bystander", PW);
    assert!(Where::parse(&bystander.command("where")).is_some());
    let baseline = router_connections(router.metrics);
    assert_eq!(baseline, 1.0, "only the bystander is connected");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let der = std::fs::read(&router.cert).expect("the router's certificate");
    let player_ep = {
        let _in = rt.enter();
        tessera_client::endpoint(rustls::pki_types::CertificateDer::from(der))
            .expect("a QUIC endpoint")
    };

    let started = Instant::now();
    // Telnet garbage, one thread per connection, while UDP datagrams fly.
    let mut pours = Vec::new();
    for (label, chunks, probe) in telnet_garbage(&mut rng) {
        let addr = router.telnet;
        pours.push(std::thread::spawn(move || {
            let stream = TcpStream::connect(addr).expect("connect to the telnet port");
            pour(stream, &label, chunks, probe)
        }));
    }
    // A logged-in player types random lines.
    let garbler = TelnetClient::create(router.telnet, "Garbler", PW);
    let garbler_stream = garbler.stream().try_clone().expect("clone the stream");
    drop(garbler);
    let lines = random_lines(&mut rng, 16 * 1024);
    pours.push(std::thread::spawn(move || {
        pour(
            garbler_stream,
            "logged-in random lines",
            lines,
            Probe::Answer,
        )
    }));
    // At the QUIC player endpoint and both cluster buses.
    let udp_targets = [router.quic, router_bus, shard_bus];
    let udp_seed: u64 = rng.gen();
    let udp = std::thread::spawn(move || spray_udp(&udp_targets, udp_seed));

    // QUIC garbage past the handshakes: on the player endpoint's control
    // stream and datagrams, and on the cluster buses' streams.
    let quic_seed: u64 = rng.gen();
    rt.block_on(quic_player_garbage(&player_ep, router.quic, quic_seed));
    let router_as_member = member_dir(&ca, "router");
    let shard_as_member = member_dir(&ca, "shard");
    let bus_seed: u64 = rng.gen();
    rt.block_on(async {
        bus_garbage(shard_bus, &router_as_member, MemberRole::Router, bus_seed).await;
        bus_garbage(
            router_bus,
            &shard_as_member,
            MemberRole::Shard,
            bus_seed ^ 1,
        )
        .await;
    });

    let mut total = 0;
    for p in pours {
        let poured = p.join().expect("a telnet garbage thread panicked");
        eprintln!("{poured}");
        total += poured.sent;
    }
    let datagrams = udp.join().expect("the UDP thread panicked");
    eprintln!(
        "sent {total} bytes over telnet and {datagrams} datagrams in {:?}",
        started.elapsed()
    );
    assert!(
        total > 1_500_000,
        "too little garbage reached telnet: {total} bytes"
    );

    // Every process is alive and none panicked (a panic in a task of a
    // tokio runtime does not end the process, so the logs are read too).
    let mut roles = [&mut coordinator, &mut shard.role, &mut router.role];
    for role in roles.iter_mut() {
        if let Some(status) = role.try_exit() {
            panic!(
                "{} exited after the garbage ({status}); stderr:\n{}",
                role.name,
                role.stderr_tail(40)
            );
        }
        let log = role.stderr();
        assert!(
            !log.contains("panicked at"),
            "{} panicked; stderr:\n{}",
            role.name,
            role.stderr_tail(60)
        );
    }

    // The QUIC player's random datagrams reached the router's decoder (and
    // were dropped there, the connection staying open).
    let bad = common::metric_samples(
        &common::scrape(router.metrics),
        "tessera_router_bad_datagrams_total",
    );
    assert!(
        bad.iter().any(|(_, n)| *n > 0.0),
        "no bad datagram was counted: {bad:?}"
    );

    // The player who was there all along is still served.
    let text = bystander.command("where");
    let here = Where::parse(&text).unwrap_or_else(|| panic!("bystander's where: {text:?}"));
    assert_eq!(here.shard, "shard-1");

    // The garbage connections are all gone (none leaked a session).
    let left = eventually(Duration::from_secs(15), || {
        let n = router_connections(router.metrics);
        (n == baseline).then_some(n)
    });
    assert!(
        left.is_some(),
        "connections after the garbage: {} (only the bystander should be left)",
        router_connections(router.metrics)
    );

    // The shard still ticks.
    let before = ticks(shard.metrics);
    let ticking = eventually(Duration::from_secs(5), || {
        (ticks(shard.metrics) >= before + 10.0).then_some(())
    });
    assert!(ticking.is_some(), "the shard stopped ticking at {before}");

    // A newcomer logs in over telnet and is answered.
    let mut newcomer = TelnetClient::create(router.telnet, "Newcomer", PW);
    let look = newcomer.command("look");
    assert!(look.contains("Mira (a local)"), "look: {look:?}");
    let text = newcomer.command("where");
    let at = Where::parse(&text).unwrap_or_else(|| panic!("newcomer's where: {text:?}"));
    assert_eq!(at.shard, "shard-1");

    // And over QUIC.
    rt.block_on(async {
        let mut quic = tessera_client::Client::connect(&player_ep, router.quic)
            .await
            .unwrap_or_else(|e| panic!("QUIC connect after the garbage: {e}"));
        let me = quic
            .create("Quicksilver", PW)
            .await
            .unwrap_or_else(|e| panic!("QUIC create after the garbage: {e}"));
        assert_eq!(me.shard.to_string(), "shard-1");
        let text = quic.command("where").await.expect("where over QUIC");
        assert!(Where::parse(&text).is_some(), "where over QUIC: {text:?}");
        let look = quic.command("look").await.expect("look over QUIC");
        assert!(look.contains("Bystander"), "look over QUIC: {look:?}");
    });
    eprintln!(
        "all checks passed {:?} after the garbage began",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ telnet

/// How a garbage connection ends, once its garbage is written.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// End any subnegotiation and line, then send an unknown verb: the
    /// server must answer `Unknown command '<verb>'` (after everything
    /// before it, paced commands included) or have closed the connection.
    /// Either way it read all the garbage.
    Answer,
    /// Hold the connection open this long, then hang up mid-line.
    Hold(Duration),
}

/// How long a probe may wait for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What one garbage connection did.
struct Poured {
    label: String,
    sent: usize,
    received: usize,
    /// The server closed the connection (or reset it).
    closed: bool,
    /// A write blocked for [`WRITE_STALL`]: the server stopped reading.
    stalled: bool,
    /// The probe's answer came.
    answered: bool,
}

impl std::fmt::Display for Poured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "telnet {}: sent {} bytes, received {}{}{}{}",
            self.label,
            self.sent,
            self.received,
            if self.answered {
                ", answered the probe"
            } else {
                ""
            },
            if self.closed {
                ", closed by the server"
            } else {
                ""
            },
            if self.stalled { ", stalled" } else { "" },
        )
    }
}

/// Writes `chunks` to `stream` while a thread drains what the server sends
/// (so it never blocks writing to us), then ends with `probe` and closes
/// the connection. Panics if the probe finds the connection neither
/// answering nor closed: a session the garbage wedged.
fn pour(stream: TcpStream, label: &str, chunks: Vec<Vec<u8>>, probe: Probe) -> Poured {
    let received = Arc::new(Mutex::new(Vec::new()));
    let eof = Arc::new(AtomicBool::new(false));
    let mut reader = stream.try_clone().expect("clone the stream");
    let (kept, ended) = (received.clone(), eof.clone());
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            kept.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        ended.store(true, Ordering::SeqCst);
    });
    let mut writer = stream;
    writer.set_write_timeout(Some(WRITE_STALL)).ok();
    let (mut sent, mut closed, mut stalled) = (0, false, false);
    let mut write = |bytes: &[u8], sent: &mut usize| match writer.write_all(bytes) {
        Ok(()) => {
            *sent += bytes.len();
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(true),
        Err(_) => Err(false),
    };
    for chunk in &chunks {
        if let Err(stall) = write(chunk, &mut sent) {
            (stalled, closed) = (stall, !stall);
            break;
        }
    }
    let mut answered = false;
    if !closed {
        if let Probe::Hold(hold) = probe {
            std::thread::sleep(hold);
        } else {
            let marker = "endofgarbage";
            // The garbage may have said DO MCCP2 (compression starts for a client that
            // does): DONT MCCP2 ends the zlib stream, and the answer comes as text.
            let mut ask = vec![IAC, SE, IAC, DONT, MCCP2, b'\r', b'\n'];
            ask.extend_from_slice(marker.as_bytes());
            ask.extend_from_slice(b"\r\n");
            let answer = format!("Unknown command '{marker}'");
            if write(&ask, &mut sent).is_ok() {
                let deadline = Instant::now() + PROBE_TIMEOUT;
                loop {
                    let text = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
                    if text.contains(&answer) {
                        answered = true;
                        break;
                    }
                    if eof.load(Ordering::SeqCst) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "telnet {label}: no answer to the probe {marker:?} and not closed \
                         within {PROBE_TIMEOUT:?} of the garbage; its last output: {:?}",
                        tail(&text, 300)
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        closed = eof.load(Ordering::SeqCst);
    }
    let _ = writer.shutdown(Shutdown::Both);
    drain.join().expect("the drain thread");
    let received = received.lock().unwrap().len();
    Poured {
        label: label.to_string(),
        sent,
        received,
        closed,
        stalled,
        answered,
    }
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

/// Splits `bytes` into chunks of 1 to 8 KiB, as separate writes.
fn chunked(rng: &mut StdRng, bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=8192).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// The telnet connections' garbage, by label, and how each ends.
fn telnet_garbage(rng: &mut StdRng) -> Vec<(String, Vec<Vec<u8>>, Probe)> {
    let mut conns = Vec::new();
    for i in 0..4 {
        let mut bytes = vec![0u8; 96 * 1024];
        rng.fill(&mut bytes[..]);
        conns.push((
            format!("random bytes #{i}"),
            chunked(rng, bytes),
            Probe::Answer,
        ));
    }

    // IAC with every command byte, options or not, escaped IACs, and a
    // subnegotiation that never ends.
    let mut iac = Vec::new();
    for _ in 0..20_000 {
        iac.push(IAC);
        iac.push(rng.gen_range(236..=255));
        if rng.gen_bool(0.5) {
            iac.push(rng.gen());
        }
    }
    iac.extend_from_slice(&[IAC, SB, NAWS]);
    iac.extend((0..32 * 1024).map(|_| rng.gen::<u8>() | 1));
    conns.push(("IAC flood".to_string(), chunked(rng, iac), Probe::Answer));

    // A mebibyte line that never ends: the connection hangs up mid-line.
    // And one that the probe's line end ends.
    for (label, probe) in [
        (
            "1 MiB line, no newline",
            Probe::Hold(Duration::from_secs(2)),
        ),
        ("1 MiB line, then a line end", Probe::Answer),
    ] {
        let long: Vec<u8> = (0..1 << 20).map(|_| rng.gen_range(b'a'..=b'z')).collect();
        conns.push((label.to_string(), chunked(rng, long), probe));
    }

    // NUL bytes, with line ends among them (CR NUL is a telnet line end).
    let mut nul = vec![0u8; 64 * 1024];
    for i in (0..nul.len()).step_by(1000) {
        nul[i] = b'\r';
        if rng.gen_bool(0.5) && i + 1 < nul.len() {
            nul[i + 1] = b'\n';
        }
    }
    conns.push(("NUL bytes".to_string(), chunked(rng, nul), Probe::Answer));

    // Invalid UTF-8 everywhere a name, a password or a command goes.
    const INVALID: [&[u8]; 8] = [
        b"\xc0\x80",         // overlong NUL
        b"\xed\xa0\x80",     // a surrogate
        b"\xf5\x80\x80\x80", // beyond U+10FFFF
        b"\x80\xbf",         // lone continuation bytes
        b"\xe2\x82",         // a truncated sequence
        b"\xfe\xff",         // never valid
        b"\xf0\x9f\x98",     // a truncated emoji
        b"\xc3\x28",         // a bad continuation
    ];
    let mut utf8 = Vec::new();
    while utf8.len() < 32 * 1024 {
        let verb: &[u8] =
            [&b"create "[..], b"connect ", b"say ", b"help ", b""][rng.gen_range(0..5)];
        utf8.extend_from_slice(verb);
        for _ in 0..rng.gen_range(1..6) {
            utf8.extend_from_slice(INVALID[rng.gen_range(0..INVALID.len())]);
            if rng.gen_bool(0.3) {
                utf8.push(b' ');
            }
        }
        utf8.extend_from_slice(if rng.gen_bool(0.5) { b"\r\n" } else { b"\n" });
    }
    conns.push((
        "invalid UTF-8".to_string(),
        chunked(rng, utf8),
        Probe::Answer,
    ));
    conns
}

/// Random lines of about `size` bytes, 150 bytes long on average (few
/// enough that the router's command pacing gets through them in a few
/// seconds): mostly printable, some control bytes, an IAC now and then.
fn random_lines(rng: &mut StdRng, size: usize) -> Vec<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        let b = match rng.gen_range(0..1500) {
            0..=9 => b'\n',
            10..=1199 => rng.gen_range(b' '..=b'~'),
            1200..=1349 => rng.gen_range(0..32),
            1350..=1399 => IAC,
            _ => rng.gen(),
        };
        bytes.push(b);
    }
    chunked(rng, bytes)
}

// --------------------------------------------------------------------- UDP

/// Sends [`DATAGRAMS_PER_PORT`] random datagrams to each target, from a
/// few source ports; returns how many were sent.
fn spray_udp(targets: &[SocketAddr], seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let sockets: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a UDP socket"))
        .collect();
    let mut sent = 0;
    for i in 0..DATAGRAMS_PER_PORT {
        for (j, addr) in targets.iter().enumerate() {
            let datagram = quic_shaped(&mut rng);
            if sockets[(i + j) % sockets.len()]
                .send_to(&datagram, addr)
                .is_ok()
            {
                sent += 1;
            }
        }
        if i % 100 == 99 {
            // Let the receivers drain their buffers now and then.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sent
}

/// Appends `n` as a QUIC variable-length integer.
fn varint(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=63 => out.push(n as u8),
        64..=16_383 => out.extend_from_slice(&(0x4000 | n as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | n as u32).to_be_bytes()),
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// A random datagram up to 1500 bytes: plain noise, or shaped like a QUIC
/// packet (an Initial of version 1 padded to 1200 bytes, another long
/// header, an unknown version, a short header) with a random body.
fn quic_shaped(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..6) {
        0 => {
            let n = rng.gen_range(1..=1500);
            random_bytes(rng, n)
        }
        1 => {
            // An Initial: header as RFC 9000 17.2.2 says, a random body.
            let mut p = vec![0xC0 | rng.gen_range(0..4)];
            p.extend_from_slice(&1u32.to_be_bytes());
            let dcid = rng.gen_range(8..=20);
            p.push(dcid as u8);
            p.extend(random_bytes(rng, dcid));
            let scid = rng.gen_range(0..=20);
            p.push(scid as u8);
            p.extend(random_bytes(rng, scid));
            let token = if rng.gen_bool(0.2) {
                rng.gen_range(1..40)
            } else {
                0
            };
            varint(&mut p, token as u64);
            p.extend(random_bytes(rng, token));
            let total = rng.gen_range(1200..=1500);
            let body = total - p.len() - 2;
            varint(&mut p, body as u64);
            p.extend(random_bytes(rng, body));
            p
        }
        2 => {
            // Another long-header type (0-RTT, Handshake, Retry) of version 1.
            let mut p = vec![0xC0 | (rng.gen_range(1..4) << 4) | rng.gen_range(0..16)];
            p.extend_from_slice(&1u32.to_be_bytes());
            let n = rng.gen_range(1..=1400);
            p.extend(random_bytes(rng, n));
            p
        }
        3 => {
            // An unknown version: the endpoint may answer with a version
            // negotiation.
            let mut p = vec![0x80 | rng.gen::<u8>()];
            p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
            let dcid = rng.gen_range(0..=20);
            p.push(dcid as u8);
            p.extend(random_bytes(rng, dcid));
            let scid = rng.gen_range(0..=20);
            p.push(scid as u8);
            p.extend(random_bytes(rng, scid));
            let pad = rng.gen_range(0..=1200);
            p.extend(random_bytes(rng, pad));
            p
        }
        4 => {
            // A short header to a connection id nobody has.
            let mut p = vec![0x40 | rng.gen_range(0..0x40)];
            let n = rng.gen_range(20..=1400);
            p.extend(random_bytes(rng, n));
            p
        }
        _ => {
            // Almost nothing.
            let n = rng.gen_range(0..=4);
            random_bytes(rng, n)
        }
    }
}

// -------------------------------------------------------------------- QUIC

/// Garbage past the player endpoint's handshake: random bytes on the
/// control stream of connections that said hello, and random datagrams
/// from a player in the world (some decode as inputs with wild numbers).
async fn quic_player_garbage(ep: &quinn::Endpoint, addr: SocketAddr, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut junk = Vec::new();
    for _ in 0..4 {
        let mut c = tessera_client::Client::connect(ep, addr)
            .await
            .unwrap_or_else(|e| panic!("QUIC connect before the garbage: {e}"));
        for _ in 0..20 {
            let n = rng.gen_range(1..=1100);
            if c.send_raw_datagram(random_bytes(&mut rng, n)).is_err() {
                break;
            }
        }
        let n = rng.gen_range(1..=16 * 1024);
        let bytes = random_bytes(&mut rng, n);
        let _ = tokio::time::timeout(Duration::from_secs(2), c.write_raw(&bytes)).await;
        junk.push(c);
    }
    let mut noisy = tessera_client::Client::connect(ep, addr)
        .await
        .unwrap_or_else(|e| panic!("QUIC connect before the garbage: {e}"));
    noisy
        .create("Noisy", PW)
        .await
        .unwrap_or_else(|e| panic!("QUIC create before the garbage: {e}"));
    for i in 0..500 {
        let datagram = if i % 2 == 0 {
            // ClientDatagram::Input's tag, then random fields.
            let mut d = vec![0u8];
            d.extend(random_bytes(&mut rng, 17));
            d.truncate(rng.gen_range(1..=18));
            d
        } else {
            let n = rng.gen_range(1..=1100);
            random_bytes(&mut rng, n)
        };
        if noisy.send_raw_datagram(datagram).is_err() {
            break;
        }
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let bytes = random_bytes(&mut rng, 8 * 1024);
    let _ = tokio::time::timeout(Duration::from_secs(2), noisy.write_raw(&bytes)).await;
    junk.push(noisy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in junk {
        c.connection().close(0u32.into(), b"done");
    }
}

/// Garbage from a connection with a member certificate of `role` (from
/// `member_dir`) to the cluster bus at `addr`: [`BUS_STREAMS`] streams,
/// each one random frame (noise, a valid length with a random payload, a
/// payload that starts like an envelope, a length over the limit, a
/// truncated frame).
async fn bus_garbage(addr: SocketAddr, member_dir: &Path, role: MemberRole, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let identity = MemberIdentity::load(member_dir, role)
        .unwrap_or_else(|e| panic!("load the member identity in {}: {e}", member_dir.display()));
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a QUIC client endpoint");
    ep.set_default_client_config(identity.client_config().expect("a cluster client config"));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(addr, CLUSTER_NAME).expect("connect"),
    )
    .await
    .unwrap_or_else(|_| panic!("the cluster bus at {addr} did not answer the handshake"))
    .unwrap_or_else(|e| panic!("a member could not connect to the cluster bus at {addr}: {e}"));
    let mut streams = 0;
    for _ in 0..BUS_STREAMS {
        let mut frame = Vec::new();
        match rng.gen_range(0..5) {
            0 => {
                let n = rng.gen_range(1..=4096);
                frame.extend(random_bytes(&mut rng, n));
            }
            1 => {
                let n = rng.gen_range(1..=4096);
                frame.extend_from_slice(&(n as u32).to_be_bytes());
                frame.extend(random_bytes(&mut rng, n));
            }
            2 => {
                // Envelope::Shard or ::Router, then noise.
                let n = rng.gen_range(2..=512);
                frame.extend_from_slice(&(n as u32).to_be_bytes());
                frame.push(rng.gen_range(0..2));
                frame.extend(random_bytes(&mut rng, n - 1));
            }
            3 => {
                let n = rng.gen_range(64 * 1024 * 1024 + 1..=u32::MAX);
                frame.extend_from_slice(&n.to_be_bytes());
                frame.extend(random_bytes(&mut rng, 16));
            }
            _ => {
                frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
                let n = rng.gen_range(0..=1024);
                frame.extend(random_bytes(&mut rng, n));
            }
        }
        let Ok(mut stream) = conn.open_uni().await else {
            break;
        };
        // The bus stops a stream at its first bad frame: errors are fine.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await;
        let _ = stream.finish();
        streams += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!(
        "cluster bus {addr}: {streams} streams of garbage as a {}; connection {}",
        role.as_str(),
        match conn.close_reason() {
            Some(reason) => format!("closed: {reason}"),
            None => "still open".to_string(),
        }
    );
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
}
