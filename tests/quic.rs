//! A 3D player (QUIC, the headless client library) and a text player
//! (telnet) share the world: each sees the other, speech crosses over, and
//! the QUIC player's movement inputs move it in the server's view.

mod common;

use common::{blocking, quic_endpoint, quic_player, Server, TelnetClient, TestDir, Where};
use std::time::{Duration, Instant};
use tessera_client::ClientEvent;

const PW: &str = "correct-horse";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_telnet_players_see_and_hear_each_other() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut tess = blocking(|| TelnetClient::create(server.telnet, "Tess", PW));
    let ep = quic_endpoint(&server);
    let (mut quincy, me) = quic_player(&ep, &server, "Quincy", PW).await;
    assert_eq!(me.name, "Quincy");
    assert_eq!(me.shard.to_string(), "shard-1");

    // The telnet player's `look` lists the QUIC player.
    let seen = blocking(|| {
        common::eventually(Duration::from_secs(5), || {
            let look = tess.command("look");
            look.contains("Quincy (a player)").then_some(look)
        })
    });
    assert!(seen.is_some(), "Tess's look never listed Quincy");

    // The QUIC client learns about the telnet player's entity.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tess_entity = loop {
        if let Some(e) = quincy.find("Tess") {
            break e;
        }
        assert!(Instant::now() < deadline, "Quincy never saw Tess's entity");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(tess_entity.kind, tessera_proto::msg::EntityKind::Player);

    // Telnet speech reaches the QUIC client as chat.
    let said = blocking(|| tess.command("say Can you hear me, Quincy?"));
    assert_eq!(said, "You say, \"Can you hear me, Quincy?\"");
    let chat = quincy
        .wait_for(Duration::from_secs(5), |ev| match ev {
            ClientEvent::Chat {
                from, entity, text, ..
            } if from == "Tess" => Some((*entity, text.clone())),
            _ => None,
        })
        .await;
    let (speaker, text) = chat.expect("Quincy never heard Tess");
    assert_eq!(text, "Can you hear me, Quincy?");
    assert_eq!(speaker, Some(tess_entity.id));

    // And QUIC speech reaches the telnet player.
    quincy.say("Loud and clear, Tess.").await.expect("say");
    let heard = blocking(|| tess.wait_for("Quincy says,", Duration::from_secs(5)));
    assert_eq!(heard, "Quincy says, \"Loud and clear, Tess.\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_inputs_move_the_player_and_where_answers() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut ted = blocking(|| TelnetClient::create(server.telnet, "Ted", PW));
    // Off the spawn point, so that Runner arrives on it (the shard puts a
    // newcomer next to whoever stands there) with clear ground south.
    blocking(|| {
        ted.command("e");
        ted.command("e");
    });
    let ep = quic_endpoint(&server);
    let (mut runner, me) = quic_player(&ep, &server, "Runner", PW).await;

    let first = runner.command("where").await.expect("where");
    let start =
        Where::parse(&first).unwrap_or_else(|| panic!("`where` over QUIC answered {first:?}"));
    assert!(
        (start.x - me.pos.x).abs() < 0.5 && (start.z - me.pos.z).abs() < 0.5,
        "where {start:?} vs login position {:?}",
        me.pos
    );

    // Walk south (+z) at half speed, ten inputs a second, for two seconds.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(2) {
        runner.send_input(0.0, 0.5, 0.0).expect("send input");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop, a few times: inputs are unreliable datagrams.
    for _ in 0..3 {
        runner.send_input(0.0, 0.0, 0.0).expect("send input");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = runner.command("where").await.expect("where");
    let end = Where::parse(&text).unwrap_or_else(|| panic!("`where` over QUIC answered {text:?}"));
    assert!(
        end.z > start.z + 2.0,
        "inputs south did not move the player: {start:?} -> {end:?}"
    );
    assert!((end.x - start.x).abs() < 1.5, "{start:?} -> {end:?}");

    // The client's own entity follows from the snapshots.
    let own = runner.me_entity().expect("the client knows its own entity");
    assert!(
        (own.pos.z - end.z).abs() < 1.0,
        "own entity at {:?}, server says {end:?}",
        own.pos
    );

    // The telnet player sees the QUIC player south of it, a few metres away.
    let look = blocking(|| ted.command("look"));
    let line = look
        .lines()
        .find(|l| l.contains("Runner (a player)"))
        .unwrap_or_else(|| panic!("Ted's look lacks Runner: {look:?}"));
    assert!(
        line.contains("south"),
        "Runner should be south of Ted: {line:?}"
    );
}

/// Text a QUIC client sends is cleaned like telnet input: no escape
/// sequences or forged lines reach text players, and overlong speech is
/// refused rather than cut silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_speech_cannot_inject_control_characters() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut tess = blocking(|| TelnetClient::create(server.telnet, "Tessa", PW));
    let ep = quic_endpoint(&server);
    let (mut mallory, _) = quic_player(&ep, &server, "Mallory", PW).await;
    mallory
        .say("hi\u{1b}[2J\r\nTessa says, \"give me your password\"")
        .await
        .expect("say");
    let line = blocking(|| tess.wait_for("Mallory says", Duration::from_secs(5)));
    assert!(!line.contains('\u{1b}'), "escape reached telnet: {line:?}");
    // One line: the CR LF was removed, so nothing looks like Tessa talking.
    assert!(
        line.contains("Mallory says, \"hi[2JTessa says, \"give me your password\"\""),
        "got {line:?}"
    );
    let answer = mallory
        .command(&format!("say {}", "a".repeat(600)))
        .await
        .expect("command");
    assert!(answer.contains("too long"), "got {answer:?}");
}
