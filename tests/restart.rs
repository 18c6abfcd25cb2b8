//! Positions survive a restart: one player quits before the server stops,
//! another is still connected when SIGINT arrives; after a restart on the
//! same data dir both log in where they were.

mod common;

use common::{Server, TelnetClient, TestDir, Where};
use std::time::Duration;

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
