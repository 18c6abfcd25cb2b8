//! Telnet over TLS (`--telnet-tls`): a player logs in with Python's `ssl`
//! module, as a MUD client with TLS would, against the router's own
//! certificate and against one given with `--telnet-tls-cert/-key`; a
//! plain-telnet player in the same world hears them; garbage and a client
//! that never finishes its handshake do not disturb the port.

mod common;

use common::{tls_session, Server, ServerOptions, TelnetClient, TestDir, ANSWER_TIMEOUT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const PW: &str = "correct-horse";

/// The address of the TLS port, from the server's start-up lines.
fn tls_addr(server: &Server) -> SocketAddr {
    let line = server
        .stdout()
        .lines()
        .find_map(|l| {
            l.strip_prefix("telnet over TLS listening on ")
                .map(String::from)
        })
        .expect("the server prints its telnet-over-TLS address");
    line.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address")
}

#[test]
fn a_player_logs_in_over_tls_and_a_plain_telnet_player_hears_them() {
    let dir = TestDir::new();
    let server = Server::start_with(
        &dir,
        &ServerOptions {
            extra_args: vec!["--telnet-tls".into(), "127.0.0.1:0".into()],
            ..Default::default()
        },
    );
    let tls = tls_addr(&server);
    let mut bob = TelnetClient::create(server.telnet, "Bob", PW);

    // Garbage, and a client that opens the port and never says anything:
    // neither takes the port from the players.
    let mut junk = TcpStream::connect(tls).expect("connect");
    junk.write_all(b"create Eve hunter2\r\n\xff\xfb\x01")
        .expect("write");
    let mut buf = [0u8; 256];
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = junk.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("Welcome"),
        "plain text on the TLS port was answered in the clear"
    );
    let _silent = TcpStream::connect(tls).expect("connect");

    // The router's own certificate (what QUIC clients pin) by default.
    let pem = dir.data_dir().join("quic-cert.pem");
    let out = tls_session(tls, &pem, "localhost", "Ann", PW, "hello from TLS");
    assert!(out.contains("You say, \"hello from TLS\""), "{out}");
    assert!(out.contains("shard"), "where answered: {out}");
    let heard = bob.wait_for("Ann says,", ANSWER_TIMEOUT);
    assert_eq!(heard, "Ann says, \"hello from TLS\"");

    // A client that trusts only some other CA refuses the handshake.
    let other = dir.path().join("other-ca.pem");
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other, other_ca.cert.pem()).unwrap();
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
try:
    ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
except ssl.SSLCertVerificationError:
    sys.exit(0)
sys.exit("the handshake succeeded against an untrusted certificate")
"#;
    let status = Command::new("python3")
        .args(["-c", script, &tls.port().to_string()])
        .arg(&other)
        .status()
        .expect("python3");
    assert!(status.success());
}

#[test]
fn an_operators_certificate_is_served_when_given() {
    let dir = TestDir::new();
    let ck = rcgen::generate_simple_self_signed(vec!["mud.example.org".to_string()]).unwrap();
    let cert = dir.path().join("mud.pem");
    let key = dir.path().join("mud-key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let server = Server::start_with(
        &dir,
        &ServerOptions {
            extra_args: vec![
                "--telnet-tls".into(),
                "127.0.0.1:0".into(),
                "--telnet-tls-cert".into(),
                cert.display().to_string(),
                "--telnet-tls-key".into(),
                key.display().to_string(),
            ],
            ..Default::default()
        },
    );
    let out = tls_session(
        tls_addr(&server),
        &cert,
        "mud.example.org",
        "Cleo",
        PW,
        "named",
    );
    assert!(out.contains("Welcome to Tessera, Cleo"), "{out}");
}

#[test]
fn a_missing_certificate_file_is_a_clear_error() {
    let dir = TestDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["up", "--telnet", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .args(["--web", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0", "--assets-listen", "127.0.0.1:0"])
        .args(["--telnet-tls", "127.0.0.1:0"])
        .args(["--telnet-tls-cert", "/nonexistent/cert.pem"])
        .args(["--telnet-tls-key", "/nonexistent/key.pem"])
        .arg("--data-dir")
        .arg(dir.data_dir())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tessera up");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the telnet TLS certificate /nonexistent/cert.pem"),
        "{stderr}"
    );
}
