//! The 3D viewer (`tessera-client`, package tessera-viewer) against a real
//! `tessera up`: a screenshot under Xvfb with Mesa's software GL shows a
//! telnet player standing next to the spawn, and `--headless-check` gives
//! clear errors for a server that is down, a certificate that does not
//! match, and a wrong password.

mod common;

use common::{free_udp, Server, ServerOptions, TelnetClient, TestDir, DEFAULT_WORLD};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `tessera-client` is built into the same directory as `tessera`
/// (scripts/test.sh builds the whole workspace first).
fn viewer_bin() -> PathBuf {
    let tessera = PathBuf::from(env!("CARGO_BIN_EXE_tessera"));
    let viewer = tessera.with_file_name(format!("tessera-client{}", std::env::consts::EXE_SUFFIX));
    assert!(
        viewer.exists(),
        "{} is missing: build it first with `cargo build -p tessera-viewer --bin tessera-client` \
         (scripts/test.sh builds the whole workspace before the tests)",
        viewer.display()
    );
    viewer
}

/// A private X server (Xvfb) on a free display number; killed on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        for n in 90..250 {
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
            let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
            if socket.exists() || lock.exists() {
                continue;
            }
            let child = match Command::new("Xvfb")
                .arg(format!(":{n}"))
                .args(["-screen", "0", "1024x768x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!(
                    "cannot start Xvfb ({e}): install it with `apt-get install xvfb libgl1-mesa-dri` \
                     (scripts/test.sh does)"
                ),
            };
            let mut x = Xvfb {
                child,
                display: format!(":{n}"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if socket.exists() {
                    return x;
                }
                if let Ok(Some(_)) = x.child.try_wait() {
                    break; // lost a race for this display; try the next
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = x.child.kill();
            let _ = x.child.wait();
        }
        panic!("no free X display between :90 and :249 for Xvfb");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tessera-client");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for tessera-client"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("tessera-client did not finish within {timeout:?}");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// RGBA pixels of a PNG file.
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open the screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!(info.color_type, png::ColorType::Rgba, "RGBA screenshot");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// The colour the viewer draws other players in (app::OTHER_PLAYER).
const OTHER_PLAYER_RGB: [i32; 3] = [242, 115, 25];

#[test]
fn screenshot_shows_a_telnet_player_next_to_the_spawn() {
    let viewer = viewer_bin();
    let dir = TestDir::new();
    let server = Server::start(&dir);
    // A telnet player 6 m north of the spawn.
    let mut tess = TelnetClient::create(server.telnet, "Tess", "secret1");
    tess.command("north");
    tess.command("north");
    let at = tess.where_();
    assert!(
        (at.z - -1.0).abs() < 1.0 && (at.x - -5.0).abs() < 1.0,
        "{at:?}"
    );
    tess.command("say hello from telnet");

    let x = Xvfb::start();
    let shot = dir.path().join("client.png");
    let mut cmd = Command::new(&viewer);
    cmd.env("DISPLAY", &x.display)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .arg("--quic")
        .arg(server.quic.to_string())
        .arg("--cert")
        .arg(&server.cert_path)
        .args(["--name", "Viewer", "--password", "secret2", "--create"])
        .arg("--world")
        .arg(DEFAULT_WORLD)
        // Walk 3 m towards Tess first: inputs, prediction and reconciliation
        // against the real shard.
        .args(["--look-at", "Tess", "--walk", "0.5", "--after", "2"])
        .args(["--width", "640", "--height", "400"])
        .arg("--screenshot")
        .arg(&shot)
        .current_dir(dir.path());
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("saved"),
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{}", stdout.trim());
    // A clean loopback link: the prediction never had to snap.
    assert!(stdout.contains(", 0 snaps"), "{}", text(&out));

    let (w, h, px) = read_png(&shot);
    assert_eq!((w, h), (640, 400));
    // Not blank: many colours, not all one.
    let mut colours = std::collections::HashSet::new();
    for p in px.chunks(4) {
        colours.insert([p[0], p[1], p[2]]);
    }
    assert!(
        colours.len() > 50,
        "only {} colours: a blank frame?",
        colours.len()
    );
    // The telnet player, straight ahead (--look-at), in the middle third.
    let mut hits = 0;
    for y in 0..h {
        for x in 0..w {
            let i = ((y * w + x) * 4) as usize;
            let near = (0..3).all(|c| (px[i + c] as i32 - OTHER_PLAYER_RGB[c]).abs() <= 12);
            if near && x > w / 3 && x < 2 * w / 3 && y > h / 6 && y < 5 * h / 6 {
                hits += 1;
            }
        }
    }
    println!("{hits} pixels of the other player's colour in the middle of the frame");
    assert!(
        hits > 50,
        "the other player is not in the middle of the screenshot ({hits} pixels)"
    );
    // Keep it for a look (TESSERA_KEEP_SCREENSHOT=path).
    if let Ok(keep) = std::env::var("TESSERA_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy the screenshot");
    }
}

fn headless(server_quic: &str, cert: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(viewer_bin());
    cmd.args([
        "--headless-check",
        "--connect-timeout",
        "3",
        "--quic",
        server_quic,
    ])
    .arg("--cert")
    .arg(cert)
    .args(extra);
    run_with_timeout(cmd, Duration::from_secs(60))
}

#[test]
fn headless_check_logs_in_and_explains_failures() {
    let dir = TestDir::new();
    let server = Server::start(&dir);
    let quic = server.quic.to_string();

    let ok = headless(
        &quic,
        &server.cert_path,
        &["--create", "--name", "Checker", "--password", "pw1234"],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let line = String::from_utf8_lossy(&ok.stdout);
    assert!(
        line.starts_with("ok: logged in as Checker"),
        "{}",
        text(&ok)
    );
    assert_eq!(line.lines().count(), 1, "{}", text(&ok));

    let bad = headless(
        &quic,
        &server.cert_path,
        &["--name", "Checker", "--password", "wrong1"],
    );
    assert_eq!(bad.status.code(), Some(5), "{}", text(&bad));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("login as Checker failed: Wrong name or password."),
        "{}",
        text(&bad)
    );

    // Another certificate than the server's.
    let mut der = std::fs::read(&server.cert_path).expect("read the certificate");
    let last = der.len() - 1;
    der[last] ^= 0xff;
    let other = dir.path().join("other-cert.der");
    std::fs::write(&other, der).expect("write a certificate");
    let mismatch = headless(
        &quic,
        &other,
        &["--name", "Checker", "--password", "pw1234"],
    );
    assert_eq!(mismatch.status.code(), Some(4), "{}", text(&mismatch));
    assert!(
        String::from_utf8_lossy(&mismatch.stderr).contains("certificate does not match"),
        "{}",
        text(&mismatch)
    );

    let missing = headless(
        &quic,
        &dir.path().join("nope.der"),
        &["--name", "Checker", "--password", "pw1234"],
    );
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read the server certificate"),
        "{}",
        text(&missing)
    );

    // Nobody on this port.
    let down_addr = free_udp().to_string();
    let started = Instant::now();
    let down = headless(
        &down_addr,
        &server.cert_path,
        &["--name", "Checker", "--password", "pw1234"],
    );
    assert_eq!(down.status.code(), Some(3), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot reach the server"),
        "{}",
        text(&down)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// The server restarts under a running viewer (as a rolling update of
/// routers would): the viewer resumes its session by itself and goes on to
/// take its screenshot.
#[test]
fn the_viewer_resumes_by_itself_when_the_server_restarts() {
    let viewer = viewer_bin();
    let dir = TestDir::new();
    let port = free_udp();
    let opts = ServerOptions {
        quic: Some(port),
        ..ServerOptions::default()
    };
    let mut server = Server::start_with(&dir, &opts);
    let cert = server.cert_path.clone();
    let x = Xvfb::start();
    let shot = dir.path().join("resumed.png");
    let mut cmd = Command::new(&viewer);
    cmd.env("DISPLAY", &x.display)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .arg("--quic")
        .arg(port.to_string())
        .arg("--cert")
        .arg(&cert)
        .args(["--name", "Rover", "--password", "secret3", "--create"])
        .arg("--world")
        .arg(DEFAULT_WORLD)
        .args(["--after", "10", "--width", "320", "--height", "200"])
        .arg("--screenshot")
        .arg(&shot)
        .current_dir(dir.path());
    // Restart the server while the viewer waits for its screenshot.
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        let status = server.stop_with("-TERM");
        assert!(status.success(), "the server exited with {status:?}");
        drop(server);
        let again = Server::start_with(&dir, &opts);
        (dir, again)
    });
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let (_dir, _server) = restarter.join().expect("the restart");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("resumed the session after a router restart"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("saved"), "{}", text(&out));
}
