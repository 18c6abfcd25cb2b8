//! Positions survive a restart: one player quits before the server stops,
//! another is still connected when SIGINT arrives; after a restart on the
//! same data dir both log in where they were.

mod common;

use common::{
    blocking, free_udp, quic_endpoint, quic_player, Server, ServerOptions, TelnetClient, TestDir,
    Where,
};
use std::time::Duration;
use tessera_client::{Client, ClientError, ClientEvent};
use tessera_proto::msg::ErrorCode;

const PW: &str = "correct-horse";

/// Walks the given steps and returns where the player ends up, once the
/// position has settled (two equal `where` answers in a row).
fn walk(client: &mut TelnetClient, steps: &[&str]) -> Where {
    for step in steps {
        let answer = client.command(step);
        assert!(answer.starts_with("You walk "), "{step}: {answer:?}");
    }
    let mut last = client.where_();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = client.where_();
        if now.distance_xz(&last) < 0.01 {
            return now;
        }
        last = now;
    }
    panic!("the position did not settle: {last:?}");
}

#[test]
fn positions_survive_a_restart_for_quitters_and_connected_players() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir);

    let mut quitter = TelnetClient::create(server.telnet, "Quitter", PW);
    let mut stayer = TelnetClient::create(server.telnet, "Stayer", PW);
    let spawn = quitter.where_();
    // Different ways, so neither blocks the other.
    let q_pos = walk(&mut quitter, &["w", "w", "w"]);
    let s_pos = walk(&mut stayer, &["s", "s", "e"]);
    assert!(q_pos.distance_xz(&spawn) > 6.0, "{spawn:?} -> {q_pos:?}");
    assert!(s_pos.distance_xz(&spawn) > 4.0, "{spawn:?} -> {s_pos:?}");

    let bye = quitter.quit();
    assert!(bye.contains("Goodbye"), "quit: {bye:?}");

    // Stop with the stayer still connected.
    let status = server.stop();
    assert!(status.success(), "the server exited with {status:?}");
    assert!(
        server.stdout().contains("Tessera stopped; state saved."),
        "stdout: {}",
        server.stdout()
    );
    // The stayer's connection is gone with the server.
    let rest = stayer.read_to_eof(Duration::from_secs(5));
    drop(rest);
    drop(server);

    let server = Server::start(&dir);
    let mut quitter = TelnetClient::login(server.telnet, "Quitter", PW);
    let mut stayer = TelnetClient::login(server.telnet, "Stayer", PW);
    let q_again = quitter.where_();
    let s_again = stayer.where_();
    assert!(
        q_again.distance_xz(&q_pos) < 0.2 && (q_again.y - q_pos.y).abs() < 0.2,
        "the quitter was at {q_pos:?} and is back at {q_again:?}"
    );
    assert!(
        s_again.distance_xz(&s_pos) < 0.2 && (s_again.y - s_pos.y).abs() < 0.2,
        "the connected player was at {s_pos:?} and is back at {s_again:?}"
    );
    assert_eq!(q_again.cell, q_pos.cell);
    assert_eq!(s_again.cell, s_pos.cell);
}

#[test]
fn a_wrong_password_after_restart_is_refused() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir);
    let ren = TelnetClient::create(server.telnet, "Ren", PW);
    drop(ren);
    assert!(server.stop().success());
    drop(server);

    let server = Server::start(&dir);
    let mut guest = TelnetClient::connect(server.telnet);
    let answer = guest.command("connect Ren not-the-password");
    assert_eq!(answer, "Wrong name or password.");
    let taken = guest.command("create Ren another-password");
    assert_eq!(taken, "That name is taken.");
    let text = guest.command(&format!("connect Ren {PW}"));
    assert!(text.contains("Welcome back, Ren."), "{text:?}");
}

#[test]
fn sigterm_also_stops_cleanly_and_saves_connected_players() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir);
    let mut tam = TelnetClient::create(server.telnet, "Tam", PW);
    let pos = walk(&mut tam, &["n", "n", "w"]);
    let status = server.stop_with("-TERM");
    assert!(status.success(), "the server exited with {status:?}");
    assert!(
        server.stdout().contains("Tessera stopped; state saved."),
        "stdout: {}",
        server.stdout()
    );
    drop(tam);
    drop(server);

    let server = Server::start(&dir);
    let mut tam = TelnetClient::login(server.telnet, "Tam", PW);
    let again = tam.where_();
    assert!(
        again.distance_xz(&pos) < 0.2,
        "Tam was at {pos:?} and is back at {again:?}"
    );
}

/// A restart of the router is a hiccup, not a logout, for a 3D player: the
/// router closes with `CLOSE_RESTART`, keeps the session, and the client
/// logs in again with its token (`Resume`) where it was, as a rolling
/// update of routers needs. A session logged out cannot be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_player_resumes_after_the_router_restarts() {
    let dir = TestDir::new();
    let port = free_udp();
    let opts = ServerOptions {
        quic: Some(port),
        ..ServerOptions::default()
    };
    let mut server = blocking(|| Server::start_with(&dir, &opts));
    let ep = quic_endpoint(&server);
    let (mut rhea, me) = quic_player(&ep, &server, "Rhea", PW).await;
    // Walk south for a second, then stop.
    for _ in 0..10 {
        rhea.send_input(0.0, 1.0, 0.0).expect("send input");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        rhea.send_input(0.0, 0.0, 0.0).expect("send input");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = rhea.command("where").await.expect("where");
    let before = Where::parse(&text).unwrap_or_else(|| panic!("where: {text:?}"));
    assert!(before.z > me.pos.z + 2.0, "Rhea walked south: {before:?}");

    let status = blocking(|| server.stop_with("-TERM"));
    assert!(status.success(), "the server exited with {status:?}");
    // The client sees why the connection closed.
    let closed = rhea
        .wait_for(Duration::from_secs(5), |ev| {
            matches!(ev, ClientEvent::Closed(_)).then_some(())
        })
        .await;
    assert!(closed.is_some(), "the client saw no close");
    assert!(rhea.router_restarted(), "closed as a restart");
    drop(server);

    let server = blocking(|| Server::start_with(&dir, &opts));
    let (mut again, back) = Client::reconnect(&ep, server.quic, &me.token, Duration::from_secs(20))
        .await
        .expect("the session resumes on the restarted router");
    assert_eq!((back.name.as_str(), back.entity), ("Rhea", me.entity));
    let text = again.command("where").await.expect("where");
    let after = Where::parse(&text).unwrap_or_else(|| panic!("where: {text:?}"));
    assert!(
        (after.x - before.x).abs() < 0.3 && (after.z - before.z).abs() < 0.3,
        "Rhea was at {before:?} and resumed at {after:?}"
    );

    // Logging out ends the session: its token no longer resumes.
    again.logout().await;
    let refused = Client::reconnect(&ep, server.quic, &me.token, Duration::from_secs(5)).await;
    match refused {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::BadCredentials);
            assert_eq!(message, "That session has ended; please log in again.");
        }
        Err(e) => panic!("a logged-out session: {e}"),
        Ok(_) => panic!("a logged-out session resumed"),
    }
}

/// A swarm of QUIC bots through a restart of the server on the same
/// address: every bot resumes its session, none is counted lost.
#[test]
fn quic_bots_ride_through_a_restart() {
    let dir = TestDir::new();
    let port = free_udp();
    let opts = ServerOptions {
        quic: Some(port),
        ..ServerOptions::default()
    };
    let mut server = Server::start_with(&dir, &opts);
    let report = dir.path().join("report");
    let bots = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bots", "--quic", "8", "--telnet", "0", "--duration", "14"])
        .args(["--ramp", "50", "--scenario", "wander"])
        .args(["--quic-addr", &port.to_string()])
        .arg("--cert")
        .arg(&server.cert_path)
        .args(["--max-errors", "0", "--no-progress"])
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tessera bots");
    std::thread::sleep(Duration::from_secs(5));
    let status = server.stop_with("-TERM");
    assert!(status.success(), "the server exited with {status:?}");
    drop(server);
    let _server = Server::start_with(&dir, &opts);
    let out = bots.wait_with_output().expect("tessera bots ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bots: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("errors and disconnects: none"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        r["counts"]["resumes"], 8,
        "every bot resumed: {}",
        r["counts"]
    );
}

/// A client that comes back (`Resume`) before the router noticed its old
/// connection is gone takes the session over at once instead of waiting
/// out the idle timeout; the old connection is told and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_connection_that_is_not_gone_yet() {
    let dir = TestDir::new();
    let server = blocking(|| Server::start(&dir));
    let ep = quic_endpoint(&server);
    let (mut old, me) = quic_player(&ep, &server, "Tove", PW).await;
    let (mut new, back) = Client::reconnect(&ep, server.quic, &me.token, Duration::from_secs(10))
        .await
        .expect("the resume takes over");
    assert_eq!(back.entity, me.entity);
    let told = old
        .wait_for(Duration::from_secs(5), |ev| match ev {
            ClientEvent::Error { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        told,
        Some((
            ErrorCode::AlreadyLoggedIn,
            "Your session was resumed from another connection; this one closes".to_string()
        ))
    );
    let text = new.command("where").await.expect("where");
    assert!(Where::parse(&text).is_some(), "where: {text:?}");
}
