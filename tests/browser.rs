//! A real browser plays against a real `tessera up`: headless Chromium
//! (Debian's `chromium`, software GL) opens the web client the router
//! serves, creates a character, walks, sees a telnet player standing at the
//! spawn on screen, and says a line the telnet player hears.
//!
//! The browser is driven by `client/web/test/browser.mjs` (playwright-core),
//! which reads the page's `window.tessera` hook and writes a JSON result and
//! a screenshot; this test checks both. The screenshot is kept as
//! `target/tmp/browser.png` for a human to look at.
//!
//! Needs the built web client, its npm packages, node and Chromium:
//! `scripts/build-web.sh` makes the first three, `scripts/test.sh` installs
//! Chromium. Missing, the test fails and says so; it never skips.

mod common;

use common::{free_tcp, free_udp, Server, ServerOptions, TelnetClient, TestDir, ANSWER_TIMEOUT};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The browser's viewport, which the screenshot has.
const WIDTH: u32 = 1024;
const HEIGHT: u32 = 640;
/// browser.mjs gives up by itself after 90 s; this is the backstop.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
const SAID: &str = "hello from the browser";

fn web_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client/web")
}

/// Fails, saying what to run, when something the browser needs is missing.
fn require_browser_tools() {
    let web = web_client();
    for (path, what) in [
        (web.join("dist/index.html"), "the built web client"),
        (web.join("dist/app.js"), "the built web client"),
        (
            web.join("node_modules/playwright-core/package.json"),
            "the web client's npm packages (playwright-core)",
        ),
    ] {
        assert!(
            path.exists(),
            "{} ({what}) is missing: run scripts/build-web.sh (scripts/test.sh does before the tests)",
            path.display()
        );
    }
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: run scripts/build-web.sh (it installs node and npm)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (`apt-get install chromium`; \
         scripts/test.sh does)"
    );
}

/// `node client/web/test/browser.mjs`, stopped on drop (SIGTERM first, so
/// playwright closes the browser it started).
struct BrowserRun {
    child: Child,
    log: PathBuf,
}

impl BrowserRun {
    fn start(page: &str, out: &Path, extra: &[&str]) -> BrowserRun {
        let log = out.with_extension("log");
        let log_file = fs::File::create(&log).expect("create the browser log");
        let child = Command::new("node")
            .arg(web_client().join("test/browser.mjs"))
            .args(["--url", page, "--say", SAID])
            .args(extra)
            .args(["--size", &format!("{WIDTH}x{HEIGHT}")])
            .args(["--chromium", CHROMIUM])
            .arg("--out")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .expect("start node");
        BrowserRun { child, log }
    }

    /// Waits for the script to end; panics at the deadline.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "browser.mjs did not finish within {timeout:?}; its output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The width and height of a PNG file; panics if it is not one.
fn png_size(path: &Path) -> (u32, u32) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = png::Decoder::new(file)
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn a_browser_player_sees_a_telnet_player_on_screen_and_is_heard() {
    require_browser_tools();
    let dir = TestDir::new();
    let dist = web_client().join("dist");
    let server = Server::start_with(
        &dir,
        &ServerOptions {
            extra_args: vec!["--web-dir".into(), dist.to_string_lossy().into_owned()],
            ..ServerOptions::default()
        },
    );
    let web = server.web.expect("tessera up prints the page's address");

    // Tella stands at the spawn, where the browser player appears too.
    let mut tella = TelnetClient::create(server.telnet, "Tella", "secret12");
    let at = tella.where_();

    let out = dir.path().join("browser");
    let mut run = BrowserRun::start(&format!("http://{web}/"), &out, &["--look-for", "Tella"]);
    let status = run.wait(BROWSER_TIMEOUT);
    let result_path = out.join("result.json");
    let text = fs::read_to_string(&result_path).unwrap_or_else(|e| {
        panic!(
            "browser.mjs ({status}) wrote no {}: {e}; its output:\n{}",
            result_path.display(),
            run.output()
        )
    });
    let result: serde_json::Value = serde_json::from_str(&text).expect("result.json is JSON");
    let screenshot = out.join("browser.png");
    if screenshot.exists() {
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser.png");
        fs::copy(&screenshot, &kept).expect("keep the screenshot");
        eprintln!("screenshot: {}", kept.display());
    }
    let context = || {
        format!(
            "result.json:\n{text}\nbrowser.mjs output:\n{}",
            run.output()
        )
    };

    assert!(
        status.success() && result["ok"] == true,
        "browser.mjs failed ({status}): {}\n{}",
        result["failure"],
        context()
    );
    assert_eq!(result["state"], "playing", "{}", context());
    assert_eq!(
        result["console_errors"].as_array().map(Vec::len),
        Some(0),
        "the page logged errors\n{}",
        context()
    );
    // The browser player appeared at the spawn, as Tella did, and walked off.
    let me = &result["position"];
    let (mx, mz) = (
        me["x"].as_f64().expect("own x") as f32,
        me["z"].as_f64().expect("own z") as f32,
    );
    let walked = (mx - at.x).hypot(mz - at.z);
    assert!(
        walked > 3.0,
        "the browser player is {walked} m from the spawn after walking\n{}",
        context()
    );
    let entities = result["entities"].as_array().expect("entities");
    let seen = entities
        .iter()
        .find(|e| e["name"] == "Tella")
        .unwrap_or_else(|| panic!("Tella is not among the entities\n{}", context()));
    assert_eq!(seen["kind"], "Player", "{}", context());
    let (x, z) = (
        seen["pos"]["x"].as_f64().expect("x") as f32,
        seen["pos"]["z"].as_f64().expect("z") as f32,
    );
    assert!(
        (x - at.x).abs() < 0.5 && (z - at.z).abs() < 0.5,
        "Tella is drawn at ({x}, {z}), not where telnet says ({}, {})\n{}",
        at.x,
        at.z,
        context()
    );
    assert_eq!(
        seen["on_screen"],
        true,
        "Tella is not on screen\n{}",
        context()
    );
    assert_eq!(
        png_size(&screenshot),
        (WIDTH, HEIGHT),
        "the screenshot's size"
    );

    let name = result["name"].as_str().expect("the browser player's name");
    let heard = tella.wait_for(&format!("\"{SAID}\""), ANSWER_TIMEOUT);
    assert!(
        heard.contains(&format!("{name} says")),
        "Tella heard {heard:?}"
    );
}

/// Reads browser.mjs's result.json, panicking with its output if missing.
fn result_of(run: &BrowserRun, out: &Path, status: ExitStatus) -> serde_json::Value {
    let path = out.join("result.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "browser.mjs ({status}) wrote no {}: {e}; its output:\n{}",
            path.display(),
            run.output()
        )
    });
    serde_json::from_str(&text).expect("result.json is JSON")
}

#[test]
fn the_page_reconnects_by_itself_when_the_server_restarts() {
    require_browser_tools();
    let dir = TestDir::new();
    let dist = web_client().join("dist");
    let opts = ServerOptions {
        quic: Some(free_udp()),
        web: Some(free_tcp()),
        extra_args: vec!["--web-dir".into(), dist.to_string_lossy().into_owned()],
        ..ServerOptions::default()
    };
    let mut server = Server::start_with(&dir, &opts);
    let web = server.web.expect("the page's address");

    let out = dir.path().join("restart");
    let marker = dir.path().join("ready-for-restart");
    let mut run = BrowserRun::start(
        &format!("http://{web}/"),
        &out,
        &[
            "--look-for",
            "",
            "--then-restart",
            marker.to_str().expect("a UTF-8 path"),
        ],
    );
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while !marker.exists() {
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!(
                "browser.mjs ended ({status}) before the restart:\n{}",
                run.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the page did not get into the world in time:\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A restart: the router closes with CLOSE_RESTART, saves the player and
    // comes back on the same ports with a new development certificate.
    assert!(
        server.stop_with("-TERM").success(),
        "{}",
        server.stderr_tail(20)
    );
    let _server = Server::start_with(&dir, &opts);

    let status = run.wait(Duration::from_secs(150));
    let result = result_of(&run, &out, status);
    let context = || format!("{result:#}\nbrowser.mjs output:\n{}", run.output());
    assert!(
        status.success() && result["ok"] == true,
        "browser.mjs failed ({status}): {}",
        context()
    );
    assert_eq!(result["resumed"], true, "{}", context());
    assert_eq!(result["resumed_name"], result["name"], "{}", context());
    let (before, after) = (&result["position"], &result["resumed_position"]);
    let moved = (before["x"].as_f64().expect("x") - after["x"].as_f64().expect("x"))
        .hypot(before["z"].as_f64().expect("z") - after["z"].as_f64().expect("z"));
    assert!(
        moved < 1.0,
        "the player came back {moved} m from where the page left it\n{}",
        context()
    );
    // While the server is down the browser itself logs each refused fetch
    // of /tessera.json; the page's own code must log nothing.
    let errors: Vec<&str> = result["console_errors"]
        .as_array()
        .expect("console_errors")
        .iter()
        .filter_map(|e| e.as_str())
        .filter(|e| !e.starts_with("Failed to load resource: net::ERR_CONNECTION_REFUSED"))
        .collect();
    assert!(errors.is_empty(), "the page logged errors\n{}", context());
}
