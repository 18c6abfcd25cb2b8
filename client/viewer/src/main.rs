//! `tessera-client`: the 3D viewer. Logs in over QUIC (pinned certificate),
//! draws the world with macroquad, moves with client-side prediction and
//! draws others interpolated (`tessera_client::{predict, interp}`).
//! docs/client.md describes it.

mod app;
mod net;
mod world;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tessera_proto::msg::Secret;

#[derive(Parser, Debug, Clone)]
#[command(name = "tessera-client", version, about = "The Tessera 3D client")]
pub struct Args {
    /// The router's QUIC address, as `tessera up` prints it
    /// ("quic listening on ..."); the port defaults to 4433.
    #[arg(long, default_value = "127.0.0.1:4433", env = "TESSERA_QUIC")]
    pub quic: String,
    /// The router's certificate to pin (DER; "certificate to pin: ...").
    #[arg(long, default_value = "data/quic-cert.der", env = "TESSERA_CERT")]
    pub cert: PathBuf,
    /// Character name; without it the window asks.
    #[arg(long)]
    pub name: Option<String>,
    /// Password (or TESSERA_PASSWORD); without it the window asks.
    /// `Debug` shows `<redacted>`.
    #[arg(long, env = "TESSERA_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,
    /// Create the character instead of logging in to it.
    #[arg(long)]
    pub create: bool,
    /// The world definition (a world.toml or its directory). Without it the
    /// viewer fetches world.toml from --assets, then tries worlds/default.
    #[arg(long)]
    pub world: Option<PathBuf>,
    /// The asset service (`tessera up` prints "assets on http://...").
    #[arg(long, default_value = "http://127.0.0.1:7400", env = "TESSERA_ASSETS")]
    pub assets: String,
    /// Render, save a PNG to FILE and exit (with --after).
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<PathBuf>,
    /// Seconds after the first snapshot to take the screenshot.
    #[arg(long, default_value_t = 3.0)]
    pub after: f32,
    /// Connect, log in, wait for a snapshot, print one line and exit
    /// (no window). Exit codes: 0 ok, 2 bad address or certificate file,
    /// 3 server down, 4 certificate mismatch, 5 login refused, 1 other.
    #[arg(long)]
    pub headless_check: bool,
    /// Turn the camera towards this entity when it first appears.
    #[arg(long, value_name = "NAME")]
    pub look_at: Option<String>,
    /// Walk straight ahead for this many seconds after the first snapshot
    /// (for scripted screenshots and measuring prediction on a real link).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub walk: f32,
    /// Show the debug overlay (F3) from the start.
    #[arg(long)]
    pub debug: bool,
    /// Seconds to wait for the server to answer.
    #[arg(long, default_value_t = 5.0)]
    pub connect_timeout: f32,
    #[arg(long, default_value_t = 1024)]
    pub width: i32,
    #[arg(long, default_value_t = 640)]
    pub height: i32,
}

impl Args {
    pub fn login(&self, name: String, password: Secret) -> net::Login {
        net::Login {
            addr: self.quic.clone(),
            cert: self.cert.clone(),
            name,
            password,
            create: self.create,
            connect_timeout: Duration::from_secs_f32(self.connect_timeout.max(0.1)),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.headless_check {
        return headless_check(&args);
    }
    if args.screenshot.is_some() && (args.name.is_none() || args.password.is_none()) {
        eprintln!("tessera-client: --screenshot needs --name and --password");
        return ExitCode::from(2);
    }
    let world = load_world(&args);
    let conf = macroquad::window::Conf {
        window_title: "Tessera".to_string(),
        window_width: args.width,
        window_height: args.height,
        high_dpi: false,
        ..Default::default()
    };
    macroquad::Window::from_config(conf, app::run(args, world));
    ExitCode::SUCCESS
}

/// The world definition, from wherever it can be had; `None` draws only
/// the ground (with 64 m cells).
fn load_world(args: &Args) -> Option<tessera_proto::world::WorldDef> {
    if let Some(path) = &args.world {
        match world::load_local(path) {
            Ok(w) => return Some(w),
            Err(e) => eprintln!("tessera-client: {e}"),
        }
        return None;
    }
    match world::fetch(&args.assets) {
        Ok(w) => return Some(w),
        Err(e) => eprintln!("tessera-client: {e}; trying worlds/default"),
    }
    match world::load_local(std::path::Path::new("worlds/default")) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("tessera-client: {e}; drawing the ground only (pass --world)");
            None
        }
    }
}

fn headless_check(args: &Args) -> ExitCode {
    let (Some(name), Some(password)) = (args.name.clone(), args.password.clone()) else {
        eprintln!("tessera-client: --headless-check needs --name and --password");
        return ExitCode::from(2);
    };
    let login = args.login(name, password);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-client: cannot start tokio: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let started = Instant::now();
        let (client, me, _endpoint) = net::start(&login).await?;
        // Wait for a snapshot that carries the own entity.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let summary = {
                let w = client.world.lock();
                w.self_updated.map(|_| {
                    let rtt = client.connection().rtt();
                    let pos = w.entities.get(&me.entity).map(|e| e.pos).unwrap_or(me.pos);
                    format!(
                        "ok: logged in as {} (entity {}) at {:.1} {:.1} {:.1}, cell {} on {}, {} entities in view, {} snapshots, rtt {} ms, {} ms to first snapshot",
                        me.name,
                        me.entity.0,
                        pos.x,
                        pos.y,
                        pos.z,
                        w.cell.unwrap_or(me.cell),
                        w.shard.as_ref().unwrap_or(&me.shard),
                        w.entities.len(),
                        w.snapshots,
                        rtt.as_millis(),
                        started.elapsed().as_millis()
                    )
                })
            };
            if let Some(line) = summary {
                client.logout().await;
                return Ok(line);
            }
            if Instant::now() > deadline {
                return Err(net::StartError::Other(format!(
                    "logged in as {}, but no snapshot arrived within 10 s (are UDP datagrams blocked?)",
                    me.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera-client: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_out_the_password() {
        let args = Args::try_parse_from([
            "tessera-client",
            "--name",
            "Ann",
            "--password",
            "hunter2-pw",
        ])
        .unwrap();
        let login = args.login("Ann".into(), args.password.clone().unwrap());
        let shown = format!("{args:?} {args:#?} {login:?} {login:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: Some(\"<redacted>\")"), "{shown}");
        assert!(shown.contains("password: \"<redacted>\""), "{shown}");
        assert_eq!(login.password.expose(), "hunter2-pw");
    }
}
