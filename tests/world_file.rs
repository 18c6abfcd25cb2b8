//! A broken world.toml stops `tessera up` before it serves anything: exit
//! status 1 and one message naming the file, the line and the column of the
//! item at fault (docs/world-format.md, "Errors").

mod common;

use common::{TestDir, DEFAULT_WORLD};
use std::path::{Path, PathBuf};

/// A copy of the default world in `dir/name` whose world.toml has `from`
/// replaced by `to`.
fn broken_world(dir: &TestDir, name: &str, from: &str, to: &str) -> PathBuf {
    let src = Path::new(DEFAULT_WORLD);
    let dst = dir.path().join(name);
    std::fs::create_dir_all(dst.join("scripts")).expect("create the world dir");
    for entry in std::fs::read_dir(src.join("scripts")).expect("read scripts") {
        let path = entry.expect("script entry").path();
        std::fs::copy(&path, dst.join("scripts").join(path.file_name().unwrap()))
            .expect("copy a script");
    }
    let world = std::fs::read_to_string(src.join("world.toml")).expect("read world.toml");
    assert_eq!(
        world.matches(from).count(),
        1,
        "{from:?} once in world.toml"
    );
    std::fs::write(dst.join("world.toml"), world.replace(from, to)).expect("write world.toml");
    dst
}

/// The line and column of the value on the line that is `line_text`.
fn value_pos(world: &Path, line_text: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(world.join("world.toml")).expect("read world.toml");
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| *l == line_text)
        .expect("the edited line");
    (i + 1, line.find("= ").expect("a key = value line") + 3)
}

#[test]
fn a_broken_world_is_refused_with_its_line_once() {
    let dir = TestDir::new();
    let cases = [
        (
            "script = \"crier\"",
            "script = \"cryer\"",
            "npc \"Tobin\" uses script \"cryer\", but there is no scripts/cryer.rhai",
        ),
        (
            "name = \"Hilda\"",
            "name = \"mira\"",
            "two NPCs would both be called \"mira\"",
        ),
        ("spawn = [-5, 0, 5]", "spawn = [500, 0, 5]", "spawn ("),
    ];
    for (i, (from, to, message)) in cases.into_iter().enumerate() {
        let world = broken_world(&dir, &format!("world-{i}"), from, to);
        let (line, column) = value_pos(&world, to);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("up")
            .arg("--world")
            .arg(&world)
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{i}")))
            .args(["--metrics", "127.0.0.1:0"])
            // What a newcomer sees: no backtrace.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .expect("run tessera up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        let expected = format!(
            "{}: line {line}, column {column}: {message}",
            world.join("world.toml").display()
        );
        assert!(
            stderr.contains(&expected),
            "{to}: wanted {expected:?} in\n{stderr}"
        );
        let everything = format!("{stdout}{stderr}");
        assert_eq!(
            everything.matches(message).count(),
            1,
            "{to}: printed once\n{everything}"
        );
    }
}
