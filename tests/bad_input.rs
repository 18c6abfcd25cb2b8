//! Bad input gets a clear error and changes nothing (DESIGN.md, invariant 7):
//! telnet garbage, oversize lines, malformed QUIC frames, wrong passwords and
//! a runaway NPC script. Meanwhile the server keeps serving everyone else.

mod common;

use common::{
    blocking, quic_connect, quic_endpoint, quic_player, tick_count, Server, ServerOptions,
    TelnetClient, TestDir, Where, ANSWER_TIMEOUT, DEFAULT_WORLD,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_client::{ClientError, ClientEvent};
use tessera_proto::msg::{ErrorCode, ServerMsg};

const PW: &str = "correct-horse";

/// How quickly a bystander's `where` must be answered while someone else
/// misbehaves. Generous: this is about being served at all, not latency.
const PROMPT_ANSWER: Duration = Duration::from_secs(5);

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DO: u8 = 253;
const DONT: u8 = 254;
/// Option: MUD Client Compression Protocol v2.
const MCCP2: u8 = 86;

/// A bystander asks `where` and must be answered promptly.
fn still_served(bystander: &mut TelnetClient, when: &str) {
    bystander.send_line("where");
    let text = bystander
        .try_read_until_prompt(PROMPT_ANSWER)
        .unwrap_or_else(|| panic!("the bystander got no answer to `where` {when}"));
    assert!(
        Where::parse(&text).is_some(),
        "the bystander's `where` {when} answered {text:?}"
    );
}

/// A raw TCP connection whose output is drained (and kept) by a thread, so
/// the server never blocks writing to it while we flood it.
struct Flood {
    stream: TcpStream,
    received: Arc<Mutex<Vec<u8>>>,
    closed: Arc<AtomicBool>,
}

impl Flood {
    fn connect(addr: std::net::SocketAddr) -> Flood {
        let stream = TcpStream::connect(addr).expect("connect");
        let mut reader = stream.try_clone().expect("clone the stream");
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (r, c) = (received.clone(), closed.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => r.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            c.store(true, Ordering::SeqCst);
        });
        Flood {
            stream,
            received,
            closed,
        }
    }

    /// Sends bytes; false once the server has closed the connection.
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn received_len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn received_since(&self, offset: usize) -> String {
        let r = self.received.lock().unwrap();
        String::from_utf8_lossy(&r[offset.min(r.len())..]).into_owned()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

#[test]
fn telnet_garbage_does_not_disturb_other_players() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut bystander = TelnetClient::create(server.telnet, "Bystander", PW);
    let mut rng = StdRng::seed_from_u64(0x7E55_E4A0);

    let mut flood = Flood::connect(server.telnet);
    let mut chunks: Vec<(&str, Vec<u8>)> = Vec::new();

    // Random bytes, IAC included wherever it falls.
    let mut random = vec![0u8; 256 * 1024];
    rng.fill(&mut random[..]);
    chunks.push(("random bytes", random));

    // Truncated commands: IAC at the very end of a write, then IAC WILL.
    chunks.push(("a lone IAC", vec![b'a', b'b', IAC]));
    chunks.push(("IAC WILL without an option", vec![IAC, WILL]));
    chunks.push(("IAC DO without an option", vec![IAC, DO]));

    // Random two- and three-byte commands.
    let mut commands = Vec::new();
    for _ in 0..5000 {
        commands.push(IAC);
        commands.push(rng.gen());
        if rng.gen_bool(0.5) {
            commands.push(rng.gen());
        }
    }
    chunks.push(("random IAC commands", commands));

    // A subnegotiation that never ends, then a huge one.
    chunks.push((
        "IAC SB without SE",
        vec![IAC, SB, 24, 0, b'x', b't', b'e', b'r', b'm'],
    ));
    let mut huge = vec![IAC, SB, 31];
    huge.extend(std::iter::repeat_n(b'z', 1 << 20));
    chunks.push(("a 1 MiB subnegotiation", huge));
    // Malformed NAWS and TTYPE payloads, properly ended.
    chunks.push((
        "malformed subnegotiations",
        vec![
            IAC, SE, IAC, SB, 31, 1, IAC, SE, IAC, SB, 24, 9, 9, 9, IAC, SE, IAC, SB, IAC, SE,
        ],
    ));
    // Random bytes with many IACs.
    let mut iac_heavy = vec![0u8; 64 * 1024];
    rng.fill(&mut iac_heavy[..]);
    for b in iac_heavy.iter_mut() {
        if rng.gen_bool(0.3) {
            *b = IAC;
        }
    }
    chunks.push(("IAC-heavy random bytes", iac_heavy));

    still_served(&mut bystander, "before the garbage");
    for (what, bytes) in &chunks {
        if !flood.send(bytes) {
            // The server may hang up on an abusive client; that is fine.
            break;
        }
        still_served(&mut bystander, &format!("after {what}"));
    }

    // Close whatever is open and ask for help: the connection either still
    // answers or the server has hung up; both are acceptable. The random
    // commands may have said DO MCCP2 (a client that does gets compression):
    // DONT MCCP2 ends the zlib stream, and the answer comes as text again.
    let offset = flood.received_len();
    let _ = flood.send(&[IAC, SE, IAC, DONT, MCCP2, b'\r', b'\n']);
    let _ = flood.send(b"help\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if flood.received_since(offset).contains("create <name>") || flood.is_closed() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the garbage connection neither answers `help` nor was closed; it got {:?}",
            flood.received_since(offset)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(flood);

    still_served(&mut bystander, "after the garbage connection ended");
    let mut newcomer = TelnetClient::create(server.telnet, "Newcomer", PW);
    assert_eq!(newcomer.where_().shard, "shard-1");
}

const TOO_LONG_PREFIX: &str = "That line was too long (";
const TOO_LONG_SUFFIX: &str = "bytes; the limit is 1024) and was ignored.";

#[test]
fn a_one_mebibyte_line_is_refused_and_the_connection_stays_usable() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut bystander = TelnetClient::create(server.telnet, "Watcher", PW);
    let mut long = TelnetClient::create(server.telnet, "Longwind", PW);

    let mut line = vec![b'a'; 1 << 20];
    line.extend_from_slice(b"\r\n");
    long.send_raw(&line);
    let answer = long.read_until_prompt(ANSWER_TIMEOUT);
    assert!(
        answer.starts_with(TOO_LONG_PREFIX) && answer.ends_with(TOO_LONG_SUFFIX),
        "answer to a 1 MiB line: {answer:?}"
    );
    assert_eq!(
        answer,
        format!("{TOO_LONG_PREFIX}1048576 {TOO_LONG_SUFFIX}"),
        "the message should give the line's length"
    );
    let help = long.command("help");
    assert!(
        help.starts_with("Commands:"),
        "help after the long line: {help:?}"
    );
    assert_eq!(long.where_().shard, "shard-1");
    still_served(&mut bystander, "after the long line");

    // Before login too.
    let mut guest = TelnetClient::connect(server.telnet);
    guest.send_raw(&line);
    let answer = guest.read_until_prompt(ANSWER_TIMEOUT);
    assert!(
        answer.starts_with(TOO_LONG_PREFIX) && answer.ends_with(TOO_LONG_SUFFIX),
        "answer to a 1 MiB line before login: {answer:?}"
    );
    let help = guest.command("help");
    assert!(help.contains("create <name>"), "{help:?}");
}

/// The server's reaction to garbage on a connection that has not logged in:
/// a `Malformed` error, or the connection closed (the error frame may be
/// lost when the server closes right after writing it).
async fn expect_malformed_or_closed(client: &mut tessera_client::Client, what: &str) {
    match tokio::time::timeout(Duration::from_secs(5), client.read_direct()).await {
        Ok(Ok(ServerMsg::Error { code, message })) => {
            assert_eq!(code, ErrorCode::Malformed, "{what}: {message}");
        }
        Ok(Ok(other)) => panic!("{what}: expected a Malformed error, got {other:?}"),
        Ok(Err(ClientError::Lost(_) | ClientError::Protocol(_))) => {}
        Ok(Err(e)) => panic!("{what}: unexpected client error {e}"),
        Err(_) => panic!("{what}: the server neither answered nor closed within 5 s"),
    }
    // Garbage ends the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), client.connection().closed()).await;
    assert!(closed.is_ok(), "{what}: the connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_quic_frames_get_an_error_and_hurt_no_one_else() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut bystander = blocking(|| TelnetClient::create(server.telnet, "Onlooker", PW));
    let ep = quic_endpoint(&server);
    let (mut steady, _) = quic_player(&ep, &server, "Steady", PW).await;

    // A valid length prefix followed by junk that is no message.
    let mut junk = quic_connect(&ep, &server).await;
    let mut bytes = 8u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xFF; 8]);
    junk.write_raw(&bytes).await.expect("write junk");
    expect_malformed_or_closed(&mut junk, "junk after a valid length").await;

    // A length prefix far over the limit.
    let mut huge = quic_connect(&ep, &server).await;
    huge.write_raw(&[0xFF, 0xFF, 0xFF, 0xFF])
        .await
        .expect("write the length");
    expect_malformed_or_closed(&mut huge, "a 4 GiB length prefix").await;

    // Garbage from a player already in the world.
    let (mut mallory, _) = quic_player(&ep, &server, "Mallory", PW).await;
    let mut bytes = 5u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0x13, 0x37]);
    mallory.write_raw(&bytes).await.expect("write junk");
    let reaction = mallory
        .wait_for(Duration::from_secs(5), |ev| match ev {
            ClientEvent::Error { code, .. } => Some(Some(*code)),
            ClientEvent::Closed(_) => Some(None),
            _ => None,
        })
        .await;
    match reaction {
        Some(Some(code)) => assert_eq!(code, ErrorCode::Malformed),
        Some(None) => {}
        None => panic!("a logged-in client's junk got no reaction within 5 s"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), mallory.connection().closed()).await;
    assert!(closed.is_ok(), "the junk sender's connection stayed open");

    // Malformed datagrams are dropped without ending anything.
    steady
        .send_raw_datagram(vec![0xFF; 64])
        .expect("send a junk datagram");

    // Everyone else is fine.
    let text = steady.command("where").await.expect("where over QUIC");
    assert!(Where::parse(&text).is_some(), "{text:?}");
    blocking(|| still_served(&mut bystander, "after the malformed frames"));
    let (mut late, me) = quic_player(&ep, &server, "Latecomer", PW).await;
    assert_eq!(me.name, "Latecomer");
    // The junk sender has left the world; the others are still in it.
    let mut who = String::new();
    for _ in 0..30 {
        who = late.command("who").await.expect("who over QUIC");
        if !who.contains("Mallory") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        who.contains("Steady") && who.contains("Onlooker") && !who.contains("Mallory"),
        "who: {who:?}"
    );
}

const WRONG: &str = "Wrong name or password.";
const LIMITED: &str = "Too many failed logins; try again in ";

#[test]
fn wrong_passwords_are_rate_limited_per_account() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    for name in ["Victim", "Other"] {
        let bye = TelnetClient::create(server.telnet, name, PW).quit();
        assert!(bye.contains("Goodbye"), "{bye:?}");
    }

    let mut guesser = TelnetClient::connect(server.telnet);
    let mut answers = Vec::new();
    for i in 0..10 {
        let answer = guesser.command(&format!("connect Victim guess{i}"));
        assert!(
            !answer.contains('\n'),
            "attempt {i}: the error should be one line: {answer:?}"
        );
        assert!(
            answer == WRONG || (answer.starts_with(LIMITED) && answer.ends_with('.')),
            "attempt {i}: {answer:?}"
        );
        answers.push(answer);
    }
    let limited = answers.iter().filter(|a| a.starts_with(LIMITED)).count();
    assert!(
        answers[..5].iter().all(|a| a == WRONG),
        "the first five failures are plain: {answers:#?}"
    );
    assert!(
        limited >= 5,
        "ten failures in a row must hit the limit: {answers:#?}"
    );

    // The right password is refused while the limit holds (60 s).
    let answer = guesser.command(&format!("connect Victim {PW}"));
    assert!(
        answer.starts_with(LIMITED) && !answer.contains('\n'),
        "the right password while rate limited: {answer:?}"
    );
    // The connection is still usable, and another account logs in fine,
    // on this connection and on a new one from the same address.
    let text = guesser.command(&format!("connect Other {PW}"));
    assert!(text.contains("Welcome back, Other."), "{text:?}");
    assert_eq!(guesser.where_().shard, "shard-1");
    let mut fresh = TelnetClient::connect(server.telnet);
    let text = fresh.command(&format!("create Third {PW}"));
    assert!(text.contains("Welcome to Tessera, Third!"), "{text:?}");
}

/// Copies the default world to `dir/world` and adds an NPC whose script
/// never returns.
fn runaway_world(dir: &TestDir) -> std::path::PathBuf {
    let src = std::path::Path::new(DEFAULT_WORLD);
    let dst = dir.path().join("world");
    std::fs::create_dir_all(dst.join("scripts")).expect("create the world dir");
    for entry in std::fs::read_dir(src.join("scripts")).expect("read scripts") {
        let path = entry.expect("script entry").path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, dst.join("scripts").join(path.file_name().unwrap()))
                .expect("copy a script");
        }
    }
    let mut world = std::fs::read_to_string(src.join("world.toml")).expect("read world.toml");
    world.push_str(
        "\n[[npc]]\nname = \"Looper\"\n\
         description = \"A figure lost in thought, forever.\"\n\
         pos = [-8, 0, 8]\nscript = \"runaway\"\n",
    );
    std::fs::write(dst.join("world.toml"), world).expect("write world.toml");
    std::fs::write(
        dst.join("scripts").join("runaway.rhai"),
        "// Never returns: the script host must stop it.\nfn on_tick() { loop { } }\n",
    )
    .expect("write runaway.rhai");
    dst
}

#[test]
fn a_runaway_npc_script_is_disabled_and_the_shard_keeps_ticking() {
    let dir = TestDir::new();
    let opts = ServerOptions {
        world: runaway_world(&dir),
        ..ServerOptions::default()
    };
    let server = Server::start_with(&dir, &opts);
    let mut player = TelnetClient::create(server.telnet, "Patience", PW);
    let look = player.command("look");
    assert!(look.contains("Looper (a local)"), "look: {look:?}");

    let disabled = common::eventually(Duration::from_secs(10), || {
        let log = server.stderr();
        log.contains("script disabled").then_some(log)
    });
    let log = disabled.unwrap_or_else(|| {
        panic!(
            "the server never logged 'script disabled'; stderr:\n{}",
            server.stderr_tail(40)
        )
    });
    let line = log
        .lines()
        .find(|l| l.contains("script disabled"))
        .unwrap_or_default();
    assert!(
        line.contains("runaway"),
        "the log line names the script: {line}"
    );

    // Players are served and the shard ticks at about its rate (30 Hz).
    still_served(&mut player, "with a runaway script in the world");
    let before = tick_count(server.metrics, "shard-1");
    std::thread::sleep(Duration::from_secs(1));
    let after = tick_count(server.metrics, "shard-1");
    assert!(
        after - before > 15.0,
        "shard-1 ticked {} times in a second ({before} -> {after})",
        after - before
    );
    still_served(&mut player, "a second later");
    let said = player.command("say still here");
    assert_eq!(said, "You say, \"still here\"");
}

/// Connections beyond `--max-connections` get a clear message and are
/// closed; those already in are served as before.
#[test]
fn connections_beyond_the_limit_are_refused_politely() {
    let dir = TestDir::new();
    let opts = ServerOptions {
        extra_args: vec!["--max-connections".into(), "2".into()],
        ..ServerOptions::default()
    };
    let server = Server::start_with(&dir, &opts);
    let mut first = TelnetClient::create(server.telnet, "Firstin", PW);
    let _second = TelnetClient::connect(server.telnet);
    let mut third = TelnetClient::connect_raw(server.telnet);
    let refused = third.read_to_eof(ANSWER_TIMEOUT);
    assert!(
        refused.contains("The server is full"),
        "third connection got: {refused:?}"
    );
    still_served(&mut first, "after refusing a connection");
}

/// A split threshold at or below the merge threshold would split a region
/// and merge it back in turn: `tessera up` refuses it before it starts.
#[test]
fn a_split_threshold_below_the_merge_threshold_is_refused() {
    let dir = TestDir::new();
    for bad in ["0.05", "0.1", "NaN"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("up")
            .args(["--split-above", bad])
            .arg("--data-dir")
            .arg(dir.path().join("fresh"))
            .output()
            .expect("run tessera up");
        assert!(!out.status.success(), "{bad} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("must be above the merge threshold (0.1)"),
            "{bad}: {stderr}"
        );
        assert!(
            !dir.path().join("fresh").exists(),
            "{bad}: nothing is created before the flags are checked"
        );
    }
}

/// A connection that does not log in within `--login-timeout-secs` is
/// closed, whether it says nothing or types without end; a player who
/// logged in stays.
#[test]
fn a_connection_that_does_not_log_in_in_time_is_closed() {
    let dir = TestDir::new();
    let server = Server::start_with(
        &dir,
        &ServerOptions {
            extra_args: vec!["--login-timeout-secs".into(), "2".into()],
            ..Default::default()
        },
    );
    let mut player = TelnetClient::create(server.telnet, "Stays", PW);
    let mut silent = TcpStream::connect(server.telnet).expect("connect");
    let mut chatty = TcpStream::connect(server.telnet).expect("connect");
    let started = Instant::now();
    // The chatty one types a line every 300 ms: never idle, never in.
    let mut chatty_read = chatty.try_clone().unwrap();
    let typing = std::thread::spawn(move || {
        for _ in 0..40 {
            if chatty.write_all(b"help\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    for (who, stream) in [("silent", &mut silent), ("chatty", &mut chatty_read)] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{who}: not closed: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.contains("You took too long to log in"),
            "{who}: {text}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    typing.join().unwrap();
    // Past the deadline, the player who logged in is still served.
    let at = player.command("where");
    assert!(at.contains("shard"), "{at}");
}

/// Local speech is rate limited per player: a burst of five lines, then
/// one a second; the flood beyond it is refused and heard by nobody.
#[test]
fn a_say_flood_is_cut_off_at_the_burst() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut flooder = TelnetClient::create(server.telnet, "Flood", PW);
    let mut ear = TelnetClient::create(server.telnet, "Ear", PW);
    let answers: Vec<String> = (0..12)
        .map(|i| flooder.command(&format!("say line {i}")))
        .collect();
    let said = answers.iter().filter(|a| a.starts_with("You say")).count();
    let refused = answers
        .iter()
        .filter(|a| a.contains("You are speaking too fast"))
        .count();
    // Five at once, and perhaps one more refilled while the twelve went.
    assert!((5..=7).contains(&said), "{answers:?}");
    assert_eq!(said + refused, 12, "{answers:?}");
    let mut heard = 0;
    while ear
        .try_wait_for("Flood says, \"line", Duration::from_millis(700))
        .is_some()
    {
        heard += 1;
    }
    assert_eq!(heard, said, "what was refused was not heard");
    // The allowance comes back.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(flooder.command("say again").starts_with("You say"));
}

/// With loopback not exempt (`--limit-exempt none`), 127.0.0.1 is one
/// player's address and 127.0.0.2 another's.
fn limits_on_loopback(extra: &[&str]) -> ServerOptions {
    let mut extra_args = vec!["--limit-exempt".to_string(), "none".to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    ServerOptions {
        extra_args,
        ..ServerOptions::default()
    }
}

#[test]
fn an_account_creation_flood_is_cut_off_while_others_log_in() {
    let dir = TestDir::new();
    let server = Server::start_with(&dir, &limits_on_loopback(&[]));
    let spammer_ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let regular_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut regular = TelnetClient::connect_from(server.telnet, regular_ip);
    let text = regular.command(&format!("create Regular {PW}"));
    assert!(text.contains("Welcome to Tessera, Regular!"), "{text:?}");
    regular.quit();

    // A thousand creations within a minute from one address.
    let started = Instant::now();
    let mut spammer = TelnetClient::connect_from(server.telnet, spammer_ip);
    let (mut created, mut refused) = (Vec::new(), 0);
    for i in 0..1000 {
        let name = format!("Spam{i}");
        let answer = spammer.command(&format!("create {name} {PW}"));
        if answer.contains(&format!("Welcome to Tessera, {name}!")) {
            created.push(name);
            spammer.quit();
            spammer = TelnetClient::connect_from(server.telnet, spammer_ip);
        } else {
            assert!(
                answer.starts_with("Too many new accounts from your address; try again in ")
                    && !answer.contains('\n'),
                "attempt {i}: {answer:?}"
            );
            refused += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the flood must fit in a minute to mean anything ({:?})",
        started.elapsed()
    );
    assert_eq!(created.len(), 10, "the limit per address: {created:?}");
    assert_eq!(refused, 990);

    // Meanwhile other addresses are served: a login and a new account.
    let mut back = TelnetClient::connect_from(server.telnet, regular_ip);
    let text = back.command(&format!("connect Regular {PW}"));
    assert!(text.contains("Welcome back, Regular."), "{text:?}");
    let mut newcomer = TelnetClient::connect_from(server.telnet, "127.0.0.2".parse().unwrap());
    let text = newcomer.command(&format!("create Newcomer {PW}"));
    assert!(text.contains("Welcome to Tessera, Newcomer!"), "{text:?}");
    // The spammer's address may still log in to the accounts it made.
    let text = spammer.command(&format!("connect {} {PW}", created[0]));
    assert!(text.contains("Welcome back"), "{text:?}");
    assert!(
        common::metric_samples(
            &common::scrape(server.metrics),
            "tessera_accounts_refused_total"
        )
        .iter()
        .any(|(labels, v)| labels.contains("per_address") && *v == 990.0),
        "the refusals are counted"
    );
}

#[test]
fn one_address_holds_at_most_its_cap_of_connections() {
    let dir = TestDir::new();
    let server = Server::start_with(
        &dir,
        &limits_on_loopback(&["--connections-per-address", "3"]),
    );
    let here: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = vec![
        TelnetClient::connect_from(server.telnet, here),
        TelnetClient::connect_from(server.telnet, here),
    ];
    let text = held[0].command(&format!("create Holder {PW}"));
    assert!(text.contains("Welcome to Tessera, Holder!"), "{text:?}");
    // QUIC and telnet count together: the third place goes to a QUIC client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = {
        let _in = rt.enter();
        quic_endpoint(&server)
    };
    let quic = rt.block_on(quic_connect(&ep, &server));

    let mut fourth = TelnetClient::connect_raw(server.telnet);
    let refused = fourth.read_to_eof(ANSWER_TIMEOUT);
    assert!(
        refused.contains("Too many connections from your address (at most 3)"),
        "{refused:?}"
    );
    let err = rt
        .block_on(tessera_client::Client::connect(&ep, server.quic))
        .err()
        .expect("a fourth connection over QUIC is refused too");
    assert!(
        err.to_string()
            .contains("too many connections from your address"),
        "{err}"
    );
    // Another address is served as usual.
    let mut other = TelnetClient::connect_from(server.telnet, "127.0.0.2".parse().unwrap());
    let text = other.command(&format!("create Other {PW}"));
    assert!(text.contains("Welcome to Tessera, Other!"), "{text:?}");
    // Closing one frees its place.
    held.pop().unwrap().quit();
    drop(quic);
    let again = common::eventually(Duration::from_secs(10), || {
        let mut c = TelnetClient::connect_raw(server.telnet);
        let text = c.try_read_until_prompt(ANSWER_TIMEOUT)?;
        text.contains("Welcome to Tessera").then_some(c)
    });
    assert!(
        again.is_some(),
        "a place freed by a closed connection is reused"
    );
    still_served(&mut held[0], "after refusing connections");
}

#[test]
fn a_command_flood_is_paced_and_bothers_no_one_else() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut flooder = TelnetClient::create(server.telnet, "Spammy", PW);
    let mut bystander = TelnetClient::create(server.telnet, "Calm", PW);
    // 120 commands in one write, as a script gone wrong sends them: the
    // first 60 at once, the rest at 20 a second; every one is answered.
    let started = Instant::now();
    flooder.send_raw("where\r\n".repeat(120).as_bytes());
    let mut first_paced = None;
    for i in 0..120 {
        let answer = flooder.read_until_prompt(ANSWER_TIMEOUT);
        assert!(answer.contains("shard shard-1"), "answer {i}: {answer:?}");
        if i == 59 {
            first_paced = Some(started.elapsed());
        }
        if i == 80 {
            still_served(&mut bystander, "during a command flood");
        }
    }
    let (burst, all) = (first_paced.unwrap(), started.elapsed());
    // 60 paced commands at 20 a second take 3 s; the burst takes almost none.
    assert!(
        all >= burst + Duration::from_millis(2500),
        "the flood was not paced: 60 in {burst:?}, 120 in {all:?}"
    );
    assert!(
        common::metric_samples(
            &common::scrape(server.metrics),
            "tessera_router_commands_paced_total"
        )
        .iter()
        .any(|(_, v)| *v >= 1.0),
        "pacing is counted"
    );
}
