//! Text players against the real binary: speech between players, `who`,
//! walking across a cell border and a shard border (without losing or
//! duplicating entities), an NPC that answers, `help` and unknown commands.

mod common;

use common::{
    eventually, settled_entity_count, Server, TelnetClient, TestDir, Where, ANSWER_TIMEOUT,
};
use std::time::Duration;

const PW: &str = "correct-horse";

#[test]
fn players_hear_each_other_and_who_lists_both() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut ann = TelnetClient::create(server.telnet, "Ann", PW);
    let mut bob = TelnetClient::create(server.telnet, "Bob", PW);

    let said = ann.command("say Hello there, Bob!");
    assert_eq!(said, "You say, \"Hello there, Bob!\"");
    let heard = bob.wait_for("Ann says,", ANSWER_TIMEOUT);
    assert_eq!(heard, "Ann says, \"Hello there, Bob!\"");

    // Speech goes one way only: the speaker does not hear herself.
    assert!(
        ann.try_wait_for("Ann says,", Duration::from_millis(300))
            .is_none(),
        "the speaker heard her own words as someone else's"
    );

    for client in [&mut ann, &mut bob] {
        let who = client.command("who");
        assert!(who.starts_with("Online (2): "), "who: {who:?}");
        let names: Vec<&str> = who["Online (2): ".len()..].split(", ").collect();
        assert!(
            names.contains(&"Ann") && names.contains(&"Bob"),
            "who: {who:?}"
        );
    }
}

/// `where`, asked again until it differs from `from` by more than 1 m (the
/// answer may lag a step by a tick; see
/// `where_right_after_a_step_shows_the_new_position`).
fn where_after_move(client: &mut TelnetClient, from: &Where) -> Where {
    let mut last = None;
    let moved = eventually(Duration::from_secs(3), || {
        let w = client.where_();
        let done = w.distance_xz(from) > 1.0;
        last = Some(w.clone());
        done.then_some(w)
    });
    moved.unwrap_or_else(|| panic!("`where` did not change after a step: {from:?} -> {last:?}"))
}

/// Walks `steps` times in `dir`, checking each step answers and moves.
fn walk(client: &mut TelnetClient, dir: &str, steps: usize) -> Where {
    let mut here = client.where_();
    for _ in 0..steps {
        let answer = client.command(dir);
        assert!(answer.starts_with("You walk "), "{dir}: {answer:?}");
        here = where_after_move(client, &here);
    }
    here
}

#[test]
fn walking_across_cell_and_shard_borders_keeps_every_entity() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut walker = TelnetClient::create(server.telnet, "Walker", PW);
    let mut watcher = TelnetClient::create(server.telnet, "Watcher", PW);
    // Both spawn on the same spot; the watcher steps aside so the walker's
    // way back to the spawn is free.
    let aside = watcher.command("w");
    assert!(aside.starts_with("You walk west"), "{aside:?}");

    let before = settled_entity_count(server.metrics, Duration::from_secs(10));
    assert!(
        before >= 2.0,
        "the entity count should include both players: {before}"
    );

    let start = walker.where_();
    assert_eq!(
        (start.cell.as_str(), start.shard.as_str()),
        ("-1,0", "shard-1")
    );

    // North across z = 0: another cell on the same shard.
    let north = walk(&mut walker, "n", 3);
    assert!(
        north.z < start.z - 8.0,
        "north is -z: {start:?} -> {north:?}"
    );
    assert!((north.x - start.x).abs() < 1.0, "{start:?} -> {north:?}");
    assert_eq!(
        (north.cell.as_str(), north.shard.as_str()),
        ("-1,-1", "shard-1")
    );

    // Back south into the spawn cell.
    let back = walk(&mut walker, "s", 3);
    assert_eq!(
        (back.cell.as_str(), back.shard.as_str()),
        ("-1,0", "shard-1")
    );

    // East across x = 0: the shard border.
    let east = walk(&mut walker, "e", 3);
    assert!(east.x > back.x + 8.0, "east is +x: {back:?} -> {east:?}");
    assert!(east.x > 1.0, "{east:?}");
    assert_eq!(
        (east.cell.as_str(), east.shard.as_str()),
        ("0,0", "shard-2")
    );

    // The player still works on the new shard.
    let look = walker.command("look");
    assert!(look.contains("Market Square"), "look: {look:?}");

    let after = settled_entity_count(server.metrics, Duration::from_secs(10));
    assert_eq!(
        before, after,
        "the world's entity count changed across the hand-offs"
    );
}

#[test]
fn mira_answers_when_greeted() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut cara = TelnetClient::create(server.telnet, "Cara", PW);
    let look = cara.command("look");
    assert!(look.contains("Mira (a local)"), "look: {look:?}");
    let said = cara.command("say hello Mira");
    assert_eq!(said, "You say, \"hello Mira\"");
    let answer = cara.wait_for("Mira says,", ANSWER_TIMEOUT);
    assert!(answer.starts_with("Mira says, \""), "{answer:?}");
    assert!(
        answer.contains("Cara"),
        "Mira should greet by name: {answer:?}"
    );
}

#[test]
fn help_and_unknown_commands() {
    let dir = TestDir::new();
    let server = Server::start(&dir);

    // Before login.
    let mut guest = TelnetClient::connect(server.telnet);
    let help = guest.command("help");
    assert!(help.contains("create <name>"), "pre-login help: {help:?}");
    let unknown = guest.command("dance");
    assert!(unknown.starts_with("Unknown command"), "{unknown:?}");

    // In the world.
    let mut dan = TelnetClient::create(server.telnet, "Dan", PW);
    let help = dan.command("help");
    assert!(help.starts_with("Commands:"), "help: {help:?}");
    for verb in ["look", "say", "who", "where", "map", "quit"] {
        assert!(help.contains(verb), "help lacks {verb}: {help:?}");
    }
    let unknown = dan.command("xyzzy plugh");
    assert!(unknown.starts_with("Unknown command"), "{unknown:?}");
    assert!(unknown.contains("xyzzy"), "{unknown:?}");
    // Still in the world afterwards.
    let w = dan.where_();
    assert_eq!(w.shard, "shard-1");
    let map = dan.command("map");
    assert!(map.contains('@'), "map: {map:?}");
    let bye = dan.quit();
    assert!(bye.contains("Goodbye"), "quit: {bye:?}");
}

/// Regression: the router used to prefer its last world frame over the
/// shard's answer to a step, although that frame predated the step, so a
/// MUD client that sends `w` and `where` together was told the old
/// position. `where` after an answered step must show the position that
/// step reached.
#[test]
fn where_right_after_a_step_shows_the_new_position() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut fay = TelnetClient::create(server.telnet, "Fay", PW);
    let mut before = fay.where_();
    let mut stale = Vec::new();
    for _ in 0..4 {
        // Both lines in one packet, as a MUD client's command stacking
        // sends them.
        fay.send_raw(b"w\r\nwhere\r\n");
        let walked = fay.read_until_prompt(ANSWER_TIMEOUT);
        assert_eq!(walked, "You walk west.");
        let text = fay.read_until_prompt(ANSWER_TIMEOUT);
        let now = Where::parse(&text).unwrap_or_else(|| panic!("`where`: {text:?}"));
        // Let the world catch up, then ask again: this is where the player is.
        std::thread::sleep(Duration::from_millis(200));
        let settled = fay.where_();
        assert!(
            settled.x < before.x - 2.5,
            "a step west should move 3 m: {before:?} -> {settled:?}"
        );
        if now.distance_xz(&settled) >= 0.2 {
            stale.push(format!(
                "`where` right after a step from x = {:.1} says x = {:.1}, the player is at x = {:.1}",
                before.x, now.x, settled.x
            ));
        }
        before = settled;
    }
    assert!(
        stale.is_empty(),
        "`where` is stale right after an answered step:\n{}",
        stale.join("\n")
    );
}

/// Regression, like the test above, across the shard border: the router
/// used to learn the new shard only from a later hand-off notice, so `where`
/// right after the step named the old cell and shard. The step's answer now
/// says where the player is simulated.
#[test]
fn where_right_after_crossing_the_shard_border_names_the_new_shard() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let mut gil = TelnetClient::create(server.telnet, "Gil", PW);
    gil.send_raw(b"e\r\ne\r\ne\r\nwhere\r\n");
    for _ in 0..3 {
        let walked = gil.read_until_prompt(ANSWER_TIMEOUT);
        assert_eq!(walked, "You walk east.");
    }
    let text = gil.read_until_prompt(ANSWER_TIMEOUT);
    let now = Where::parse(&text).unwrap_or_else(|| panic!("`where`: {text:?}"));
    std::thread::sleep(Duration::from_millis(300));
    let settled = gil.where_();
    assert_eq!(
        (settled.cell.as_str(), settled.shard.as_str()),
        ("0,0", "shard-2"),
        "three steps east from the spawn end on shard-2: {settled:?}"
    );
    assert_eq!(
        (now.cell.as_str(), now.shard.as_str()),
        ("0,0", "shard-2"),
        "`where` right after three answered steps east shows {now:?}, \
         but the player is at {settled:?}"
    );
}
