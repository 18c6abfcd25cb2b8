//! The front services as their own processes: `tessera auth` (and, beside
//! it, `tessera chat` and `tessera asset`). Each wires its service library to
//! the cluster CA, the persistence service and a metrics endpoint.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_auth::remote::{AuthServer, AUTH_ALPN};
use tessera_auth::Auth;
use tessera_coordinator::pki::{MemberIdentity, CLUSTER_NAME};
use tessera_persistence::Database;

#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// This member's directory: its certificate and key from `tessera ca issue --role auth`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// Only cluster members (routers, and `tessera ctl` for an operator) may connect.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Where to listen (QUIC, UDP).
    #[arg(long, default_value = "0.0.0.0:7200")]
    listen: SocketAddr,
    /// Share the listening port with other auth replicas on this host
    /// (SO_REUSEPORT); the kernel spreads connections over them.
    #[arg(long)]
    reuse_port: bool,
    /// The persistence service, host:port, where accounts live. Replicas
    /// must share it. Without it, accounts are kept in `<data-dir>/auth.redb`
    /// (one replica only).
    #[arg(long, value_parser = crate::roles::service_addr)]
    persistence: Option<SocketAddr>,
    /// The session signing key (ed25519; created if missing, mode 0600).
    /// Replicas must share it. Default: `<data-dir>/auth-signing.key`.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Health and Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// Where the operators are (who may change roles).
    #[command(flatten)]
    operators: crate::operator::OperatorsArgs,
    /// Player addresses the account-creation limits leave alone,
    /// comma-separated networks, or `none` (docs/security.md).
    #[arg(long, default_value = "127.0.0.0/8,::1")]
    limit_exempt: tessera_auth::AddressSet,
}

/// `/readyz` of role `role` fails while its store does not answer a read.
pub fn store_readiness(role: &str, db: &Database) {
    let probe = db.clone();
    crate::metrics_http::set_readiness(role, move || {
        probe
            .get(b"\x00readiness-probe")
            .map(|_| ())
            .map_err(|e| format!("store: {e}"))
    });
}

/// The store of a service or router: the persistence service if named, else a redb
/// file in its data dir.
pub(crate) fn service_store(
    identity: &MemberIdentity,
    persistence: Option<SocketAddr>,
    data_dir: &std::path::Path,
    file: &str,
) -> anyhow::Result<Database> {
    if let Some(addr) = persistence {
        return crate::roles::persistence_client(identity, addr);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let path = data_dir.join(file);
    Database::open_redb(&path).with_context(|| format!("cannot open the store {}", path.display()))
}

/// `tessera auth`: accounts, logins and sessions for the routers.
pub async fn auth(args: AuthArgs) -> anyhow::Result<()> {
    let metrics = crate::metrics_http::install(args.metrics).await?;
    let identity = MemberIdentity::load_or_mint(
        &args.cluster_ca,
        tessera_coordinator::identity::MemberRole::Auth,
        "auth",
    )?;
    let db = service_store(&identity, args.persistence, &args.data_dir, "auth.redb")?;
    let key = args
        .signing_key
        .clone()
        .unwrap_or_else(|| args.data_dir.join("auth-signing.key"));
    let limits = tessera_auth::RateLimits {
        exempt: args.limit_exempt.clone(),
        ..tessera_auth::RateLimits::default()
    };
    let auth = Arc::new(Auth::with_limits(db.clone(), &key, limits).context("cannot open auth")?);
    tokio::spawn(tessera_auth::sweep_revoked_every(
        auth.clone(),
        tessera_auth::REVOKED_SWEEP_INTERVAL,
    ));
    store_readiness("auth", &db);
    let config = identity.server_config_for(AUTH_ALPN)?;
    let operators = args.operators.operators(&args.cluster_ca).await?;
    let server = AuthServer::start(auth, operators, args.listen, config, args.reuse_port)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listening = server.local_addr()?;
    println!(
        "auth listening on {listening}   (store {}); metrics on http://{metrics}/metrics",
        db.describe()
    );
    crate::ready::Announcement::new("auth", "auth")
        .addr("listen", listening)
        .addr("metrics", metrics)
        .announce()?;
    crate::up::shutdown_signal().await;
    server.close();
    println!("auth stopped.");
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// This member's directory: its certificate and key from `tessera ca issue --role chat`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// Only routers may connect.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Where to listen (QUIC, UDP).
    #[arg(long, default_value = "0.0.0.0:7300")]
    listen: SocketAddr,
    /// The persistence service, host:port, where channel history and mutes
    /// live. Without it they are kept in `<data-dir>/chat.redb`.
    #[arg(long, value_parser = crate::roles::service_addr)]
    persistence: Option<SocketAddr>,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Messages a player may send at once.
    #[arg(long, default_value_t = 5)]
    burst: u32,
    /// Messages per second a player regains, up to the burst.
    #[arg(long, default_value_t = 1.0)]
    refill_per_second: f64,
    /// Health and Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
}

/// `tessera chat`: shouts, tells and channels across every router.
pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let metrics = crate::metrics_http::install(args.metrics).await?;
    let identity = MemberIdentity::load_or_mint(
        &args.cluster_ca,
        tessera_coordinator::identity::MemberRole::Chat,
        "chat",
    )?;
    let db = service_store(&identity, args.persistence, &args.data_dir, "chat.redb")?;
    store_readiness("chat", &db);
    let limits = tessera_chat::ChatLimits {
        burst: args.burst.max(1),
        refill_per_second: args.refill_per_second,
        ..tessera_chat::ChatLimits::default()
    };
    let config = identity.server_config_for(tessera_chat::CHAT_ALPN)?;
    let server = tessera_chat::ChatServer::start(db.clone(), args.listen, config, limits)?;
    let listening = server.local_addr()?;
    println!(
        "chat listening on {listening}   (store {}); metrics on http://{metrics}/metrics",
        db.describe()
    );
    crate::ready::Announcement::new("chat", "chat")
        .addr("listen", listening)
        .addr("metrics", metrics)
        .announce()?;
    crate::up::shutdown_signal().await;
    server.close();
    println!("chat stopped.");
    Ok(())
}

/// A client of the chat service at `addr` for router `router`, as cluster
/// member `identity`. It connects (and reconnects) in the background.
pub fn chat_client(
    identity: &MemberIdentity,
    addr: SocketAddr,
    router: &str,
) -> anyhow::Result<tessera_router::chat::ChatLink> {
    let config = identity.client_config_for(tessera_chat::CHAT_ALPN)?;
    Ok(tessera_chat::ChatClient::start(
        addr,
        CLUSTER_NAME,
        config,
        router.to_string(),
    ))
}

/// A client of the account service at `addr`, as cluster member `identity`.
pub fn auth_client(
    identity: &MemberIdentity,
    addr: SocketAddr,
) -> anyhow::Result<tessera_auth::AuthClient> {
    let config = identity.client_config_for(AUTH_ALPN)?;
    tessera_auth::AuthClient::new(addr, CLUSTER_NAME, config)
        .with_context(|| format!("cannot open a client of the auth service at {addr}"))
}

#[derive(Args, Debug, Clone)]
pub struct AssetArgs {
    /// This member's directory: its certificate and key from `tessera ca issue --role asset`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// Uploads must be signed by an operator the bundle's CA vouched for.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Where to serve HTTP (TCP).
    #[arg(long, default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// The persistence service, host:port, where assets live (replicas must
    /// share it). Without it they are kept in `<data-dir>/assets.redb`.
    #[arg(long, value_parser = crate::roles::service_addr)]
    persistence: Option<SocketAddr>,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Health and Prometheus metrics address (the asset port serves
    /// `/healthz`, `/readyz` and `/metrics` too).
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// Where the operators are (who may upload).
    #[command(flatten)]
    operators: crate::operator::OperatorsArgs,
    /// The world definition directory the shards run (world.toml and
    /// scripts/). Script uploads are checked against it: a script no NPC runs
    /// is refused (unless forced), and `ctl asset ls|get` show the world
    /// folder's scripts. Without it every script upload needs --force.
    #[arg(long, value_name = "DIR")]
    world: Option<PathBuf>,
}

/// `tessera asset`: content-addressed assets over HTTP.
pub async fn asset(args: AssetArgs) -> anyhow::Result<()> {
    let metrics = crate::metrics_http::install(args.metrics).await?;
    let identity = MemberIdentity::load_or_mint(
        &args.cluster_ca,
        tessera_coordinator::identity::MemberRole::Asset,
        "asset",
    )?;
    let world = match &args.world {
        Some(dir) => Some(
            tessera_shard::worldfile::load_world_dir(dir)
                .with_context(|| format!("cannot load the world from {}", dir.display()))?,
        ),
        None => {
            tracing::warn!(
                "no --world: the asset service cannot tell which scripts NPCs run, so every \
                 script upload needs --force"
            );
            None
        }
    };
    let db = service_store(&identity, args.persistence, &args.data_dir, "assets.redb")?;
    store_readiness("asset", &db);
    let operators = args.operators.operators(&args.cluster_ca).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "asset listening on http://{addr}   (store {}); metrics on http://{metrics}/metrics",
        db.describe()
    );
    crate::ready::Announcement::new("asset", "asset")
        .addr("listen", addr)
        .addr("metrics", metrics)
        .announce()?;
    tokio::select! {
        r = tessera_asset::serve(listener, db, asset_config(operators, world.as_ref())) => r.context("asset service failed")?,
        _ = crate::up::shutdown_signal() => {}
    }
    println!("asset stopped.");
    Ok(())
}

/// The asset service's settings: uploads checked against `operators`,
/// scripts against `world` and the shards' engine, `/metrics` from this
/// process's recorder.
pub fn asset_config(
    operators: tessera_coordinator::operators::Operators,
    world: Option<&tessera_proto::world::WorldDef>,
) -> tessera_asset::AssetConfig {
    let mut config = tessera_asset::AssetConfig::new(operators);
    config.metrics = Some(Arc::new(|| {
        crate::metrics_http::render().unwrap_or_default()
    }));
    config.scripts = tessera_asset::scripts::ScriptRules {
        world: world.map(world_scripts),
        compiler: Some(Arc::new(ShardCompiler::default())),
    };
    config
}

/// What the asset service needs of a world: the scripts its NPCs run and
/// the world folder's sources.
pub fn world_scripts(
    world: &tessera_proto::world::WorldDef,
) -> tessera_asset::scripts::WorldScripts {
    tessera_asset::scripts::WorldScripts::new(
        world.name.clone(),
        world.npcs.iter().map(|npc| npc.script.clone()),
        world.scripts.clone(),
    )
}

/// The shards' script engine with the shards' limits, as the asset
/// service's compiler: an upload is refused exactly when a shard would
/// refuse it.
struct ShardCompiler(tessera_shard::script::ScriptEngine);

impl Default for ShardCompiler {
    fn default() -> Self {
        ShardCompiler(tessera_shard::script::ScriptEngine::new(
            tessera_shard::ShardConfig::new(tessera_proto::ShardId::new("asset")).script_limits,
        ))
    }
}

impl tessera_asset::scripts::ScriptCompiler for ShardCompiler {
    fn check(&self, stem: &str, source: &str) -> Result<(), tessera_asset::scripts::CompileError> {
        use tessera_shard::script::ScriptError;
        self.0.check(stem, source).map_err(|e| match e {
            ScriptError::Compile {
                line,
                column,
                message,
                ..
            } => tessera_asset::scripts::CompileError {
                line,
                column,
                message,
            },
            other => tessera_asset::scripts::CompileError {
                line: None,
                column: None,
                message: other.to_string(),
            },
        })
    }
}

/// How often shards ask the asset service for a new manifest.
const SCRIPT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a manifest asks of the shards for one script.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ScriptChange {
    /// Load the uploaded version with this hash (a new upload or a rollback).
    Upload { script: String, hash: String },
    /// The upload was removed: load the world folder's version again.
    World {
        script: String,
        hash: String,
        source: String,
    },
    /// The upload of a script the world folder does not have was removed:
    /// nothing to go back to, the shards keep what they run.
    Forget { script: String },
}

/// Which version of each script the shards of this process run, and what
/// a manifest changes about it; pure ([`watch_scripts`] does the I/O). The
/// rule: a script's upload if the manifest has one, else the world
/// folder's version.
struct ScriptFollower {
    /// The world folder's sources, by script.
    world: std::collections::BTreeMap<String, String>,
    /// What the shards run, by script: the hash of its source.
    running: std::collections::HashMap<String, String>,
}

impl ScriptFollower {
    /// Shards that started with the world folder's scripts.
    fn new(world: &std::collections::BTreeMap<String, String>) -> ScriptFollower {
        let running = world
            .iter()
            .map(|(name, source)| (name.clone(), tessera_asset::hash_hex(source.as_bytes())))
            .collect();
        ScriptFollower {
            world: world.clone(),
            running,
        }
    }

    /// What `manifest` changes, in script order: uploads that differ from
    /// what runs, then removed uploads.
    fn changes(&self, manifest: &tessera_asset::Manifest) -> Vec<ScriptChange> {
        let mut uploaded = std::collections::HashSet::new();
        let mut changes = Vec::new();
        for (name, entry) in &manifest.assets {
            let Some(script) = tessera_asset::scripts::script_stem(name) else {
                continue;
            };
            uploaded.insert(script);
            if self.running.get(script) != Some(&entry.hash) {
                changes.push(ScriptChange::Upload {
                    script: script.to_string(),
                    hash: entry.hash.clone(),
                });
            }
        }
        let mut removed: Vec<&String> = self
            .running
            .keys()
            .filter(|script| !uploaded.contains(script.as_str()))
            .collect();
        removed.sort();
        for script in removed {
            match self.world.get(script) {
                None => changes.push(ScriptChange::Forget {
                    script: script.clone(),
                }),
                Some(source) => {
                    let hash = tessera_asset::hash_hex(source.as_bytes());
                    if self.running.get(script) != Some(&hash) {
                        changes.push(ScriptChange::World {
                            script: script.clone(),
                            hash,
                            source: source.clone(),
                        });
                    }
                }
            }
        }
        changes
    }

    /// The shards were sent version `hash` of `script` (or it was ignored
    /// for good).
    fn sent(&mut self, script: &str, hash: &str) {
        self.running.insert(script.to_string(), hash.to_string());
    }

    fn forget(&mut self, script: &str) {
        self.running.remove(script);
    }
}

/// Follows the asset service's manifest and sends the shards of this
/// process (one poller for all of them) every change of the version of a
/// script that should run ([`ScriptFollower`]): a new upload or a rollback
/// of `scripts/<name>.rhai` sends that version; a removal sends the world
/// folder's version back. `world_scripts` are the world folder's versions,
/// which the shards started with, so only real changes are sent; the first
/// poll (at once) brings the uploads in effect, so after a restart a shard
/// runs the world folder's version of an uploaded script only until that
/// poll is answered. Runs on its own thread until no shard listens any
/// more.
pub fn watch_scripts(
    url: String,
    world_scripts: &std::collections::BTreeMap<String, String>,
    mut updates: Vec<crossbeam_channel::Sender<tessera_shard::ScriptUpdate>>,
) -> std::io::Result<()> {
    let mut follower = ScriptFollower::new(world_scripts);
    std::thread::Builder::new()
        .name("script-watch".into())
        .spawn(move || {
            let client = tessera_asset::AssetClient::new(&url);
            let mut etag: Option<String> = None;
            let mut failing = false;
            // Sends `source` of `script` to every shard; false once none listens.
            let mut send = |script: &str, source: String| {
                let update = tessera_shard::ScriptUpdate {
                    name: script.to_string(),
                    source,
                };
                // A shard that stopped listening is forgotten.
                updates.retain(|tx| tx.send(update.clone()).is_ok());
                !updates.is_empty()
            };
            loop {
                match client.manifest(etag.as_deref()) {
                    Ok(tessera_asset::ManifestFetch::NotModified) => failing = false,
                    Ok(tessera_asset::ManifestFetch::Fresh { manifest, etag: e }) => {
                        failing = false;
                        let mut complete = true;
                        for change in follower.changes(&manifest) {
                            match change {
                                ScriptChange::Upload { script, hash } => {
                                    let source = match client.blob(&hash).map(String::from_utf8) {
                                        Ok(Ok(s)) => s,
                                        Ok(Err(_)) => {
                                            tracing::error!(script, "script is not UTF-8; ignored");
                                            follower.sent(&script, &hash);
                                            continue;
                                        }
                                        Err(e) => {
                                            tracing::warn!(script, error = %e, "cannot fetch a new script version");
                                            complete = false;
                                            continue;
                                        }
                                    };
                                    tracing::info!(script, hash = %hash, "new script version");
                                    if !send(&script, source) {
                                        return;
                                    }
                                    follower.sent(&script, &hash);
                                }
                                ScriptChange::World {
                                    script,
                                    hash,
                                    source,
                                } => {
                                    tracing::info!(script, hash = %hash, "script upload removed; back to the world folder's version");
                                    if !send(&script, source) {
                                        return;
                                    }
                                    follower.sent(&script, &hash);
                                }
                                ScriptChange::Forget { script } => {
                                    tracing::warn!(script, "the upload of a script the world folder does not have was removed; the shards keep the last version");
                                    follower.forget(&script);
                                }
                            }
                        }
                        // Fetch the manifest in full again until every change got through.
                        etag = complete.then_some(e);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(url = %url, error = %e, "cannot read the asset manifest; scripts stay as they are");
                        }
                        failing = true;
                    }
                }
                std::thread::sleep(SCRIPT_POLL);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_asset::{hash_hex, Manifest, ManifestEntry};

    fn manifest(scripts: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::default();
        m.assets.insert(
            "world.toml".into(),
            ManifestEntry {
                hash: hash_hex(b"world"),
                size: 5,
                content_type: String::new(),
                updated_unix_ms: 0,
            },
        );
        for (name, content) in scripts {
            m.assets.insert(
                format!("scripts/{name}.rhai"),
                ManifestEntry {
                    hash: hash_hex(content.as_bytes()),
                    size: content.len() as u64,
                    content_type: String::new(),
                    updated_unix_ms: 0,
                },
            );
        }
        m
    }

    /// Applies every change as `watch_scripts` does once the shards got it.
    fn apply(follower: &mut ScriptFollower, changes: &[ScriptChange]) {
        for change in changes {
            match change {
                ScriptChange::Upload { script, hash }
                | ScriptChange::World { script, hash, .. } => follower.sent(script, hash),
                ScriptChange::Forget { script } => follower.forget(script),
            }
        }
    }

    #[test]
    fn uploads_win_until_removed_and_then_the_world_folder_runs_again() {
        let world = std::collections::BTreeMap::from([
            ("greeter".to_string(), "world greeter".to_string()),
            ("guard".to_string(), "world guard".to_string()),
        ]);
        let mut f = ScriptFollower::new(&world);
        // Shards start with the world folder: nothing uploaded, nothing to do.
        assert!(f.changes(&manifest(&[])).is_empty());
        // An upload equal to the world folder's file changes nothing either.
        assert!(f.changes(&manifest(&[("guard", "world guard")])).is_empty());
        // After a restart, the first manifest brings the uploads in effect.
        let m = manifest(&[("greeter", "v2"), ("extra", "forced")]);
        let changes = f.changes(&m);
        assert_eq!(
            changes,
            [
                ScriptChange::Upload {
                    script: "extra".into(),
                    hash: hash_hex(b"forced")
                },
                ScriptChange::Upload {
                    script: "greeter".into(),
                    hash: hash_hex(b"v2")
                },
            ]
        );
        apply(&mut f, &changes);
        assert!(f.changes(&m).is_empty());
        // A rollback is a new hash like any upload.
        let m = manifest(&[("greeter", "v1"), ("extra", "forced")]);
        let changes = f.changes(&m);
        assert_eq!(
            changes,
            [ScriptChange::Upload {
                script: "greeter".into(),
                hash: hash_hex(b"v1")
            }]
        );
        apply(&mut f, &changes);
        // Removals: the world folder's version comes back; a script only
        // uploaded has nothing to come back to.
        let changes = f.changes(&manifest(&[]));
        assert_eq!(
            changes,
            [
                ScriptChange::Forget {
                    script: "extra".into()
                },
                ScriptChange::World {
                    script: "greeter".into(),
                    hash: hash_hex(b"world greeter"),
                    source: "world greeter".into()
                },
            ]
        );
        apply(&mut f, &changes);
        assert!(f.changes(&manifest(&[])).is_empty());
    }
}
