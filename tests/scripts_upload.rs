//! Script uploads against a real `tessera up`, driven by `tessera ctl asset` as an operator
//! would: the service refuses what would not run (a broken script, with its line; a misspelled
//! name, with the known ones), and one rule decides which version an NPC runs: the last good
//! upload, until it is rolled back or removed (then the world folder's), across a restart too.
//! The NPC's answer to a player shows which version runs.

mod common;

use common::{Server, ServerOptions, TelnetClient, TestDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PW: &str = "hunter22-baker";

/// The line of the world's greeter that answers a second greeting.
const AGAIN: &str =
    "say(`You again, ${speaker}? That's ${state.greeted} greetings so far. I'm flattered.`);";

/// `tessera up` with a ready file (where the asset service listens), and the operator
/// credential its CA vouches for.
struct Up {
    server: Server,
    ready: PathBuf,
}

impl Up {
    fn start(dir: &TestDir) -> Up {
        let ready = dir.path().join("up.ready.json");
        let server = Server::start_with(
            dir,
            &ServerOptions {
                extra_args: vec!["--ready-file".into(), ready.display().to_string()],
                ..ServerOptions::default()
            },
        );
        Up { server, ready }
    }

    /// The asset service's URL, from the ready file.
    fn assets(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON ready file");
                let addr = v["addrs"]["assets_listen"].as_str().expect("assets_listen");
                return format!("http://{addr}");
            }
            assert!(Instant::now() < deadline, "no ready file");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `tessera ctl --credential CREDENTIAL asset --assets URL args...`: whether it succeeded, and
/// everything it printed.
fn ctl(credential: &Path, url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("ctl")
        .arg("--credential")
        .arg(credential)
        .args(["asset", "--assets", url])
        .args(args)
        .output()
        .expect("run tessera ctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Greets Mira until her answer contains `needle` (a hot reload takes a poll or two).
fn mira_says(ann: &mut TelnetClient, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        // Her answer may come before the prompt, or after it.
        let answer = ann.command("say hello Mira");
        let said = answer
            .lines()
            .find(|l| l.contains("Mira says,"))
            .map(str::to_string)
            .or_else(|| ann.try_wait_for("Mira says,", Duration::from_secs(5)));
        if let Some(said) = said {
            if said.contains(needle) {
                return said;
            }
            last = said;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("Mira never said {needle:?}; last: {last}");
}

#[test]
fn uploads_are_checked_and_the_last_good_one_runs_until_rolled_back_or_removed() {
    let dir = TestDir::new();
    let up = Up::start(&dir);
    let url = up.assets();
    let credential = dir.path().join("ops.json");
    let made = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "operator", "ops", "--cluster-ca"])
        .arg(dir.data_dir().join("cluster-ca"))
        .arg("--out")
        .arg(&credential)
        .status()
        .expect("tessera ca operator");
    assert!(made.success());
    let world =
        std::fs::read_to_string(format!("{}/scripts/greeter.rhai", common::DEFAULT_WORLD)).unwrap();
    assert!(world.contains(AGAIN), "the greeter script changed");
    let version = |answer: &str| {
        let file = dir.path().join(format!("greeter-{}.rhai", answer.len()));
        std::fs::write(&file, world.replace(AGAIN, &format!("say(`{answer}`);"))).unwrap();
        file.display().to_string()
    };
    let put = |name: &str, file: &str| ctl(&credential, &url, &["put", name, file]);

    let mut ann = TelnetClient::create(up.server.telnet, "Ann", PW);
    mira_says(&mut ann, "Good day, Ann!");
    mira_says(&mut ann, "You again, Ann?");

    // `ls` lists the world folder's scripts before anything was uploaded; `get` serves them.
    let (ok, ls) = ctl(&credential, &url, &["ls"]);
    assert!(ok, "{ls}");
    for script in ["crier", "greeter", "guard", "wanderer"] {
        let row = ls
            .lines()
            .find(|l| l.starts_with(&format!("scripts/{script}.rhai")))
            .unwrap_or_else(|| panic!("{script} is not listed:\n{ls}"));
        assert!(row.contains(" world ") && row.contains(" yes "), "{row}");
    }
    let (ok, got) = ctl(&credential, &url, &["get", "scripts/greeter.rhai", "-"]);
    assert!(ok && got.starts_with(&world), "{got}");

    // A good upload runs.
    let (ok, text) = put("scripts/greeter.rhai", &version("Version two."));
    assert!(
        ok && text.contains("uploaded scripts/greeter.rhai"),
        "{text}"
    );
    mira_says(&mut ann, "Version two.");

    // A broken one is refused with its line; version two keeps answering.
    let broken = dir.path().join("broken.rhai");
    std::fs::write(&broken, "fn on_hear(speaker, text) {\n    say(`hi`\n}\n").unwrap();
    let (ok, text) = put("scripts/greeter.rhai", &broken.display().to_string());
    assert!(!ok, "{text}");
    assert!(
        text.contains("does not compile at line 3, column 1"),
        "{text}"
    );
    assert!(mira_says(&mut ann, "Version").contains("Version two."));

    // A misspelled name is refused with the known ones; a name outside scripts/ with a hint.
    let (ok, text) = put("scripts/gretter.rhai", &version("Version two."));
    assert!(!ok, "{text}");
    assert!(text.contains("crier, greeter, guard, wanderer"), "{text}");
    assert!(
        text.contains("did you mean scripts/greeter.rhai?"),
        "{text}"
    );
    let (ok, text) = put("greeter.rhai", &version("Version two."));
    assert!(
        !ok && text.contains("upload it as scripts/greeter.rhai"),
        "{text}"
    );
    // --force lets a script for an NPC the world has not got yet through.
    let (ok, text) = ctl(
        &credential,
        &url,
        &["put", "--force", "scripts/warden.rhai", &version("Halt.")],
    );
    assert!(ok, "{text}");

    // `ls` shows the upload in effect over the world folder's version.
    let (_, ls) = ctl(&credential, &url, &["ls"]);
    let rows: Vec<&str> = ls
        .lines()
        .filter(|l| l.starts_with("scripts/greeter.rhai"))
        .collect();
    assert_eq!(rows.len(), 2, "{ls}");
    assert!(
        rows[0].contains(" upload ") && rows[0].contains(" yes "),
        "{ls}"
    );
    assert!(
        rows[1].contains(" world ") && rows[1].contains(" no "),
        "{ls}"
    );
    assert!(rows[0].contains("by operator:ops"), "{ls}");

    // Version three, then back one: version two answers again.
    let (ok, text) = put("scripts/greeter.rhai", &version("Version three!"));
    assert!(ok, "{text}");
    mira_says(&mut ann, "Version three!");
    let (ok, history) = ctl(&credential, &url, &["history", "scripts/greeter.rhai"]);
    assert!(ok, "{history}");
    assert_eq!(uploads(&history).len(), 2, "{history}");
    assert!(history.contains("<- in effect"), "{history}");
    let (ok, text) = ctl(&credential, &url, &["rollback", "scripts/greeter.rhai"]);
    assert!(
        ok && text.contains("rolled back scripts/greeter.rhai"),
        "{text}"
    );
    mira_says(&mut ann, "Version two.");

    // Removed: the world folder's version answers again, keeping Mira's count.
    let (ok, text) = ctl(&credential, &url, &["rm", "scripts/greeter.rhai"]);
    assert!(
        ok && text.contains("world folder's version runs again"),
        "{text}"
    );
    mira_says(&mut ann, "greetings so far");
    let (_, got) = ctl(&credential, &url, &["get", "scripts/greeter.rhai", "-"]);
    assert!(got.starts_with(&world), "{got}");

    // The rule holds across a restart: the last good upload runs again within a poll.
    let (ok, text) = ctl(
        &credential,
        &url,
        &["rollback", "scripts/greeter.rhai", &sha_of(&history, 2)],
    );
    assert!(ok, "{text}");
    mira_says(&mut ann, "Version three!");
    drop(ann);
    let mut up = up;
    assert!(up.server.stop().success());
    let up = Up::start(&dir);
    let mut ann = TelnetClient::login(up.server.telnet, "Ann", PW);
    mira_says(&mut ann, "Version three!");
}

/// The hashes of the uploads a `ctl asset history` listing shows (rows `# ACTION BLAKE3 ...`).
fn uploads(history: &str) -> Vec<String> {
    history
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|row| row.len() > 2 && row[0].parse::<u64>().is_ok() && row[1] == "upload")
        .map(|row| row[2].to_string())
        .collect()
}

/// The hash of the `n`th upload (1-based) a `ctl asset history` listing shows.
fn sha_of(history: &str, n: usize) -> String {
    uploads(history)
        .get(n - 1)
        .cloned()
        .unwrap_or_else(|| panic!("no upload {n} in:\n{history}"))
}
