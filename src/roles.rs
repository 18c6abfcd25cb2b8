//! The cluster roles as separate processes: `tessera coordinator`, `shard`, `router` and
//! `persistence`. Each turns its flags into the typed config of its library
//! (`tessera_coordinator::control`, `tessera_shard::member`, `tessera_router::member`,
//! `tessera_persistence::remote`) and runs it against etcd and the QUIC cluster bus; `tessera
//! up --etcd` builds the same configs itself.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::{Accounts, Auth};
use tessera_coordinator::authority::ClusterTrust;
use tessera_coordinator::control::{self, CoordinatorConfig};
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::liveness::LivenessConfig;
use tessera_coordinator::member::Membership;
use tessera_coordinator::operators::{OperatorCache, Operators};
use tessera_coordinator::pki::MemberIdentity;
use tessera_coordinator::rebalance::RebalanceConfig;
use tessera_coordinator::ClusterStore;
use tessera_persistence::Database;
use tessera_proto::{RouterId, ShardId};
use tessera_router::member::RouterState;
use tessera_router::RouterConfig;
use tessera_shard::member::ShardState;
use tessera_shard::ShardConfig;

/// Flags every cluster role takes.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    store: crate::EtcdArgs,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// The world definition directory.
    #[arg(long, default_value = "worlds/default")]
    world: PathBuf,
}

/// Flags of roles that speak the cluster protocol.
#[derive(Args, Debug, Clone)]
pub struct MemberArgs {
    /// This member's directory: its certificate and key from `tessera ca issue --role shard|router`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Where to listen for cluster (QUIC) connections.
    #[arg(long, default_value = "0.0.0.0:7000")]
    cluster_listen: SocketAddr,
    /// The address peers should dial (default: the listen address, with
    /// 127.0.0.1 for an unspecified IP).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Lease TTL of this member's registration, seconds. A dead member's
    /// cells fail over after about this long; an etcd outage shorter than
    /// three quarters of it is ridden out.
    #[arg(long, default_value_t = 20)]
    lease_ttl_secs: u64,
    /// The newest cluster wire format to speak (1 or 2; default the newest, 2). During a
    /// rolling update peers agree on the newest both speak, so this is only for talking
    /// like the previous release (docs/protocol.md, "Compatibility").
    #[arg(long, default_value_t = tessera_coordinator::transport::CLUSTER_FORMAT,
          value_parser = clap::value_parser!(u16).range(
              tessera_coordinator::transport::OLDEST_CLUSTER_FORMAT as i64
                  ..=tessera_coordinator::transport::CLUSTER_FORMAT as i64))]
    cluster_format: u16,
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This coordinator's name (leader election).
    #[arg(long, default_value = "coordinator")]
    id: String,
    /// Wait this long after the first shard registers before placing cells,
    /// so shards starting together share the world.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    #[arg(long, default_value_t = 3)]
    lease_ttl_secs: u64,
    /// This member's directory: its certificate and key from `tessera ca issue --role coordinator`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// The bundle checks members' signatures on migrations; the key signs the coordinator's.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Move cells to relieve overloaded shards and to fill shards that join
    /// (the default).
    #[arg(long, overrides_with = "no_rebalance")]
    rebalance: bool,
    /// Never move cells on the coordinator's own initiative.
    #[arg(long, overrides_with = "rebalance")]
    no_rebalance: bool,
    /// Consecutive load reports (one a second) above the high watermark
    /// before a shard counts as overloaded.
    #[arg(long, default_value_t = 3)]
    sustain_reports: u32,
    /// No split makes regions narrower than this many metres
    /// (docs/regions.md).
    #[arg(long, default_value_t = tessera_coordinator::reshape::MIN_REGION_SIDE, value_parser = positive_f32)]
    min_region_side: f32,
    #[command(flatten)]
    planner: PlannerArgs,
}

/// How the rebalancer judges load (docs/operations.md).
#[derive(Args, Debug, Clone)]
pub struct PlannerArgs {
    /// Tick budget (ms) loads are measured against, instead of each shard's
    /// own (1000 / its tick rate).
    #[arg(long, value_parser = positive_f64)]
    tick_budget_ms: Option<f64>,
    /// A shard whose cells cost more than this fraction of its tick budget
    /// is overloaded.
    #[arg(long, default_value_t = 0.8, value_parser = positive_f64)]
    high_watermark: f64,
    /// A cell moves only to a shard that stays under this fraction of its
    /// budget with it.
    #[arg(long, default_value_t = 0.6, value_parser = positive_f64)]
    low_watermark: f64,
    /// A region whose own cost stays above this fraction of its shard's
    /// budget is split into quadrants (docs/regions.md).
    #[arg(long, default_value_t = tessera_coordinator::rebalance::RebalanceConfig::default().split_above, value_parser = positive_f64)]
    split_above: f64,
    /// Four sibling regions whose summed cost stays below this fraction of
    /// a budget are merged.
    #[arg(long, default_value_t = tessera_coordinator::rebalance::RebalanceConfig::default().merge_below, value_parser = positive_f64)]
    merge_below: f64,
}

pub(crate) fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

fn positive_f32(s: &str) -> Result<f32, String> {
    positive_f64(s).map(|v| v as f32)
}

/// A service address, `IP:PORT` or `HOST:PORT`: a name (a Kubernetes
/// Service such as `persistence:7100`) is resolved once, when the flags are
/// read; the first address it resolves to is used.
pub(crate) fn service_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {s:?} (expected HOST:PORT): {e}")),
    }
}

impl PlannerArgs {
    pub(crate) fn config(&self) -> anyhow::Result<RebalanceConfig> {
        if self.low_watermark >= self.high_watermark {
            anyhow::bail!(
                "--low-watermark ({}) must be below --high-watermark ({})",
                self.low_watermark,
                self.high_watermark
            );
        }
        if self.merge_below >= self.split_above {
            anyhow::bail!(
                "--merge-below ({}) must be below --split-above ({})",
                self.merge_below,
                self.split_above
            );
        }
        Ok(RebalanceConfig {
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            tick_budget_ms: self.tick_budget_ms,
            split_above: self.split_above,
            merge_below: self.merge_below,
            ..RebalanceConfig::default()
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    member: MemberArgs,
    /// The shard's id (unique in the cluster).
    #[arg(long)]
    id: String,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    tick_hz: u32,
    /// Relative capacity of this machine.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// On SIGTERM, wait this long for the cells to move to other shards
    /// (0: stop at once; the cells then fail over from their checkpoints).
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    #[command(flatten)]
    store: StoreArgs,
    /// Checkpoint every cell to persistence this often, milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    checkpoint_interval_ms: u64,
    /// The asset service's URL (`http://host:port`): new versions of NPC
    /// scripts uploaded there (`scripts/<name>.rhai`) are loaded within a
    /// second or two, without a restart.
    #[arg(long)]
    assets: Option<String>,
    /// How long the avatar of a player whose router is gone (crashed) stays in the world,
    /// waiting for the player to come back through another router, before it is removed;
    /// seconds.
    #[arg(long, default_value_t = 60)]
    linkdead_secs: u64,
}

/// Where a member keeps durable state.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The persistence service (`tessera persistence`), as host:port. Without it a shard
    /// cannot checkpoint its cells (a failover reopens them from the world file) and a router
    /// keeps accounts and players in its own data dir.
    #[arg(long, value_parser = crate::roles::service_addr)]
    persistence: Option<SocketAddr>,
}

impl StoreArgs {
    /// A client of the persistence service, if one was named.
    fn connect(
        &self,
        identity: &tessera_coordinator::pki::MemberIdentity,
    ) -> anyhow::Result<Option<Database>> {
        self.persistence
            .map(|addr| persistence_client(identity, addr))
            .transpose()
    }
}

/// A client of the persistence service at `addr`, as the cluster member
/// `identity` (the service admits cluster members only).
pub(crate) fn persistence_client(
    identity: &tessera_coordinator::pki::MemberIdentity,
    addr: SocketAddr,
) -> anyhow::Result<Database> {
    let config = identity.client_config_for(tessera_persistence::remote::PERSISTENCE_ALPN)?;
    let backend = tessera_persistence::remote::RemoteBackend::new(
        addr,
        tessera_coordinator::pki::CLUSTER_NAME,
        config,
    )?;
    Ok(backend.database())
}

#[derive(Args, Debug, Clone)]
pub struct PersistenceArgs {
    /// This member's directory: its certificate and key from `tessera ca issue --role persistence`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// Only cluster members (certificates from a CA of the bundle) may connect.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// Where to listen (QUIC, UDP).
    #[arg(long, default_value = "0.0.0.0:7100")]
    listen: SocketAddr,
    /// Where the store file (`persistence.redb`) lives.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// Store in the FoundationDB cluster this cluster file names, instead of
    /// `<data-dir>/persistence.redb`. Only in builds with the cargo feature `fdb`.
    #[cfg(feature = "fdb")]
    #[arg(long)]
    fdb_cluster_file: Option<PathBuf>,
    /// Where the operators are (who may back up and restore).
    #[command(flatten)]
    operators: crate::operator::OperatorsArgs,
    /// Let routers read and write the accounts: for clusters whose routers keep accounts
    /// themselves (routers without `--auth`). Without it only the auth service may, so a
    /// compromised router cannot promote an account (docs/security.md).
    #[arg(long)]
    router_accounts: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RouterArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    member: MemberArgs,
    #[arg(long, default_value = "router-1")]
    id: String,
    #[arg(long, default_value = "0.0.0.0:4000")]
    telnet: SocketAddr,
    #[command(flatten)]
    telnet_tls: crate::TelnetTlsArgs,
    #[command(flatten)]
    abuse: crate::AbuseArgs,
    /// Close connections (telnet and QUIC) not logged in this many seconds
    /// after they opened.
    #[arg(long, default_value_t = tessera_router::LOGIN_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    login_timeout_secs: u64,
    #[arg(long, default_value = "0.0.0.0:4433")]
    quic: SocketAddr,
    #[command(flatten)]
    web: crate::WebArgs,
    /// Accounts, player positions and the QUIC certificate.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Serve this QUIC certificate (DER or PEM; what clients and telnet
    /// gateways pin) instead of `<data-dir>/quic-cert.der`: give every
    /// router of a cluster the same one.
    #[arg(long, value_name = "FILE", requires = "quic_key")]
    quic_cert: Option<PathBuf>,
    /// The private key of --quic-cert (DER or PEM).
    #[arg(long, value_name = "FILE", requires = "quic_cert")]
    quic_key: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    tick_hz: u32,
    #[command(flatten)]
    store: StoreArgs,
    /// The account service (`tessera auth`), host:port. Without it the
    /// router keeps accounts itself (in the persistence service if named,
    /// else in its data dir), signing sessions with its own key.
    #[arg(long, value_parser = crate::roles::service_addr)]
    auth: Option<SocketAddr>,
    /// The chat service (`tessera chat`), host:port. Without it `shout`,
    /// `tell` and channels answer that chat is unavailable.
    #[arg(long, value_parser = crate::roles::service_addr)]
    chat: Option<SocketAddr>,
    /// New characters appear within this many metres of the world's spawn
    /// (0: on it).
    #[arg(long, default_value_t = 0.0)]
    spawn_radius: f32,
}

async fn connect_store(args: &ClusterArgs) -> anyhow::Result<Arc<dyn ClusterStore>> {
    Ok(Arc::new(args.store.connect().await?))
}

fn load_world(args: &ClusterArgs) -> anyhow::Result<Arc<tessera_proto::world::WorldDef>> {
    let world = tessera_shard::worldfile::load_world_dir(&args.world)
        .with_context(|| format!("cannot load the world from {}", args.world.display()))?;
    Ok(Arc::new(world))
}

fn node_name() -> String {
    std::env::var("NODE_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// What every member on the cluster bus sets up first: metrics, the world, etcd and its
/// certificate. The role library joins the bus with the [`Membership`].
struct Member {
    metrics: SocketAddr,
    world: Arc<tessera_proto::world::WorldDef>,
    membership: Membership,
}

impl Member {
    async fn start(
        cluster: &ClusterArgs,
        member: &MemberArgs,
        role: MemberRole,
        name: &str,
    ) -> anyhow::Result<Member> {
        // The certificate first: a wrong one is said at once, without waiting for etcd.
        let identity = Arc::new(MemberIdentity::load_or_mint(
            &member.cluster_ca,
            role,
            name,
        )?);
        let metrics = crate::metrics_http::install(cluster.metrics).await?;
        let world = load_world(cluster)?;
        let store = connect_store(cluster).await?;
        Ok(Member {
            metrics,
            world,
            membership: Membership {
                store,
                prefix: cluster.store.prefix.clone(),
                identity,
                listen: member.cluster_listen,
                advertise: member.advertise,
                lease_ttl: Duration::from_secs(member.lease_ttl_secs.max(1)),
                cluster_format: member.cluster_format,
            },
        })
    }
}

/// `tessera persistence`: the storage API as a service for the cluster.
pub async fn persistence(args: PersistenceArgs) -> anyhow::Result<()> {
    let metrics = crate::metrics_http::install(args.metrics).await?;
    let identity =
        MemberIdentity::load_or_mint(&args.cluster_ca, MemberRole::Persistence, "persistence")?;
    let db = persistence_store(&args)?;
    crate::services::store_readiness("persistence", &db);
    let store = db.describe();
    let config = identity.server_config_for(tessera_persistence::remote::PERSISTENCE_ALPN)?;
    let operators = args.operators.operators(&args.cluster_ca).await?;
    let server = tessera_persistence::remote::PersistenceServer::start(
        db,
        args.listen,
        config,
        Some(operators),
        tessera_persistence::spaces::KeySpaces {
            router_accounts: args.router_accounts,
        },
    )?;
    let listening = server.local_addr()?;
    println!("persistence listening on {listening}   (store {store}); metrics on http://{metrics}/metrics");
    crate::ready::Announcement::new("persistence", "persistence")
        .addr("listen", listening)
        .addr("metrics", metrics)
        .announce()?;
    crate::up::shutdown_signal().await;
    server.close();
    println!("persistence stopped.");
    Ok(())
}

/// The service's store: the FoundationDB cluster of `--fdb-cluster-file` (feature `fdb`), or
/// else `<data-dir>/persistence.redb`.
fn persistence_store(args: &PersistenceArgs) -> anyhow::Result<Database> {
    #[cfg(feature = "fdb")]
    if let Some(cluster_file) = &args.fdb_cluster_file {
        return Database::open_fdb(Some(cluster_file)).with_context(|| {
            format!(
                "cannot open FoundationDB with cluster file {}",
                cluster_file.display()
            )
        });
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let path = args.data_dir.join("persistence.redb");
    Database::open_redb(&path).with_context(|| format!("cannot open the store {}", path.display()))
}

/// What checks migration, split and merge requests for a member, and signs its own: the
/// cluster's trust bundle (members' certificates), the operators in the cluster store (read
/// again every second), and the member's identity.
pub async fn cluster_authority(
    store: Arc<dyn ClusterStore>,
    prefix: &str,
    cluster_ca: &Path,
    identity: Arc<MemberIdentity>,
) -> anyhow::Result<ClusterTrust> {
    let trust = tessera_coordinator::pki::load_trust(cluster_ca)?;
    let operators = Operators::in_store(store, prefix, trust.clone());
    Ok(ClusterTrust::new(trust)
        .with_operators(OperatorCache::follow(operators).await)
        .with_identity(identity))
}

/// `tessera coordinator`.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let rebalance = if args.no_rebalance {
        None
    } else {
        Some(RebalanceConfig {
            sustain: args.sustain_reports.max(1),
            ..args.planner.config()?
        })
    };
    let metrics = crate::metrics_http::install(args.cluster.metrics).await?;
    let world = load_world(&args.cluster)?;
    let identity =
        MemberIdentity::load_or_mint(&args.cluster_ca, MemberRole::Coordinator, &args.id)?;
    let store = connect_store(&args.cluster).await?;
    println!(
        "coordinator {} running; metrics on http://{metrics}/metrics",
        args.id
    );
    crate::ready::Announcement::new("coordinator", args.id.clone())
        .addr("metrics", metrics)
        .announce()?;
    let authority = cluster_authority(
        store.clone(),
        &args.cluster.store.prefix,
        &args.cluster_ca,
        Arc::new(identity),
    )
    .await?;
    let config = coordinator_config(
        args.id,
        args.cluster.store.prefix,
        &world,
        Timing {
            lease_ttl: Duration::from_secs(args.lease_ttl_secs.max(1)),
            settle: Duration::from_millis(args.settle_ms),
        },
        authority,
        rebalance,
        args.min_region_side,
    )?;
    control::run(config, store, crate::up::shutdown_signal()).await?;
    println!("coordinator stopped.");
    Ok(())
}

/// A coordinator's leadership lease and how long it waits after the first shard registers
/// before placing cells.
pub(crate) struct Timing {
    pub lease_ttl: Duration,
    pub settle: Duration,
}

/// What a coordinator of `world` runs with; the rebalancer never plans a split below
/// `min_region_side`.
pub(crate) fn coordinator_config(
    id: String,
    prefix: String,
    world: &tessera_proto::world::WorldDef,
    timing: Timing,
    authority: ClusterTrust,
    rebalance: Option<RebalanceConfig>,
    min_region_side: f32,
) -> anyhow::Result<CoordinatorConfig> {
    let rebalance = rebalance.map(|r| RebalanceConfig {
        max_depth: tessera_coordinator::reshape::max_depth(world.cell_size, min_region_side),
        ..r
    });
    // The liveness watchdog connects with the identity the coordinator signs with.
    let liveness = authority
        .identity()
        .map(|identity| LivenessConfig::new(identity))
        .transpose()?;
    Ok(CoordinatorConfig {
        id,
        prefix,
        cells: world.extent.cells().collect(),
        lease_ttl: timing.lease_ttl,
        interval: Duration::from_millis(250),
        settle: timing.settle,
        authority: Some(authority),
        rebalance,
        grid: tessera_proto::Grid::new(world.cell_size),
        min_region_side,
        liveness,
    })
}

/// A shard's simulation: checkpointed to `db` every `interval` (without one, a failover
/// reopens its cells from the world file), reloading scripts uploaded to the asset service at
/// `assets`.
pub(crate) fn shard_config(
    id: ShardId,
    tick_hz: u32,
    db: Option<Database>,
    interval: Duration,
    assets: Option<&str>,
    world: &tessera_proto::world::WorldDef,
) -> anyhow::Result<ShardConfig> {
    let mut shard = ShardConfig::new(id.clone());
    shard.tick_hz = tick_hz;
    match db {
        Some(db) => {
            shard.checkpoints = Some(tessera_shard::checkpoint::Checkpointing { db, interval })
        }
        None => tracing::warn!(
            shard = %id,
            "no --persistence: cells are not checkpointed; a failover reopens them from the world file"
        ),
    }
    if let Some(url) = assets {
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::services::watch_scripts(url.to_string(), &world.scripts, vec![tx])?;
        shard.script_updates = Some(rx);
    }
    Ok(shard)
}

/// `tessera shard`: a [`tessera_shard::member`] with its flags.
pub async fn shard(args: ShardArgs) -> anyhow::Result<()> {
    let id = ShardId::new(args.id.clone());
    // Ready (k8s: a rolling update may stop the next old shard) once
    // registered, so the coordinator can give it cells; not while draining.
    let (state_tx, state) = tokio::sync::watch::channel(ShardState::Starting);
    crate::metrics_http::set_readiness("shard", move || match *state.borrow() {
        ShardState::Serving { .. } => Ok(()),
        ShardState::Draining => Err("draining".into()),
        ShardState::Starting => Err("not registered yet".into()),
    });
    let Member {
        metrics,
        world,
        membership,
    } = Member::start(&args.cluster, &args.member, MemberRole::Shard, &id.0).await?;
    let db = args.store.connect(&membership.identity)?;
    let mut shard = shard_config(
        id.clone(),
        args.tick_hz,
        db,
        Duration::from_millis(args.checkpoint_interval_ms),
        args.assets.as_deref(),
        &world,
    )?;
    shard.linkdead = Duration::from_secs(args.linkdead_secs);
    let trust = cluster_authority(
        membership.store.clone(),
        &membership.prefix,
        &args.member.cluster_ca,
        membership.identity.clone(),
    )
    .await?;
    let config = tessera_shard::member::MemberConfig {
        shard,
        world,
        membership,
        trust,
        capacity: args.capacity,
        node: node_name(),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };
    let mut watch = state_tx.subscribe();
    let says = id.clone();
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let now = *watch.borrow();
            match now {
                ShardState::Serving { addr } => {
                    println!(
                        "shard {says} running; cluster address {addr}; metrics on http://{metrics}/metrics"
                    );
                    crate::ready::Announcement::new("shard", says.0.clone())
                        .addr("cluster", addr)
                        .addr("metrics", metrics)
                        .announce_or_log();
                }
                ShardState::Draining => println!("shard {says} draining"),
                ShardState::Starting => {}
            }
        }
    });
    let stopped =
        tessera_shard::member::run(config, crate::up::shutdown_signal(), state_tx).await?;
    match stopped.drained {
        Some(Ok(n)) => println!("shard {id} drained: {n} cells moved"),
        Some(Err(e)) => eprintln!("shard {id}: drain incomplete: {e}"),
        None => {}
    }
    println!("shard {id} stopped.");
    Ok(())
}

/// The services a router uses, by address; each `None` is kept by the router itself.
pub(crate) struct Backends {
    pub persistence: Option<SocketAddr>,
    pub auth: Option<SocketAddr>,
    pub chat: Option<SocketAddr>,
}

/// A router's store (the persistence service, else `<data_dir>/tessera.redb`), accounts (the
/// auth service, else its own, signed with `<data_dir>/auth-signing.key`) and chat link.
pub(crate) fn router_services(
    identity: &MemberIdentity,
    id: &RouterId,
    data_dir: &Path,
    backends: Backends,
    limits: tessera_auth::RateLimits,
) -> anyhow::Result<(Database, Accounts, Option<tessera_router::chat::ChatLink>)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let db =
        crate::services::service_store(identity, backends.persistence, data_dir, "tessera.redb")?;
    let accounts = match backends.auth {
        Some(addr) => Accounts::remote(crate::services::auth_client(identity, addr)?),
        None => {
            let auth = Arc::new(Auth::with_limits(
                db.clone(),
                &data_dir.join("auth-signing.key"),
                limits,
            )?);
            tokio::spawn(tessera_auth::sweep_revoked_every(
                auth.clone(),
                tessera_auth::REVOKED_SWEEP_INTERVAL,
            ));
            Accounts::local(auth)
        }
    };
    let chat = backends
        .chat
        .map(|addr| crate::services::chat_client(identity, addr, &id.0))
        .transpose()?;
    Ok((db, accounts, chat))
}

/// `tessera router`: a [`tessera_router::member`] with its flags.
pub async fn router(args: RouterArgs) -> anyhow::Result<()> {
    let id = RouterId(args.id.clone());
    let Member {
        metrics,
        world,
        membership,
    } = Member::start(&args.cluster, &args.member, MemberRole::Router, &id.0).await?;
    let (db, accounts, chat) = router_services(
        &membership.identity,
        &id,
        &args.data_dir,
        Backends {
            persistence: args.store.persistence,
            auth: args.auth,
            chat: args.chat,
        },
        args.abuse.rate_limits(),
    )?;
    let mut rc = RouterConfig::new(id.clone(), args.data_dir.clone());
    rc.telnet = args.telnet;
    rc.telnet_tls = args.telnet_tls.config();
    rc.login_timeout = Duration::from_secs(args.login_timeout_secs);
    rc.connections_per_address = args.abuse.connections_per_address;
    rc.limit_exempt = args.abuse.limit_exempt.clone();
    rc.quic = args.quic;
    rc.quic_cert = args.quic_cert.clone().zip(args.quic_key.clone());
    rc.tick_hz = args.tick_hz;
    rc.spawn_radius = args.spawn_radius.max(0.0);
    args.web.apply(&mut rc, None);
    let config = tessera_router::member::MemberConfig {
        router: rc,
        world,
        membership,
        accounts,
        chat,
        db,
    };
    let (state_tx, mut state) = tokio::sync::watch::channel(RouterState::Starting);
    let says = id.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let RouterState::Serving { cluster, addrs } = state.borrow().clone() else {
                continue;
            };
            println!("router {says} running; cluster address {cluster}");
            println!("{addrs}");
            println!("metrics on http://{metrics}/metrics");
            crate::ready::Announcement::new("router", says.0.clone())
                .addr("cluster", cluster)
                .addr("telnet", addrs.telnet)
                .addr_opt("telnet_tls", addrs.telnet_tls)
                .addr("quic", addrs.quic)
                .addr_opt("web", addrs.web)
                .addr("metrics", metrics)
                .file("quic_cert", &addrs.cert_path)
                .announce_or_log();
        }
    });
    tessera_router::member::run(config, crate::up::shutdown_signal(), state_tx).await?;
    println!("router {id} stopped; state saved.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::service_addr;

    #[test]
    fn service_addresses_take_ips_and_names() {
        assert_eq!(
            service_addr("10.0.0.2:7100").unwrap(),
            "10.0.0.2:7100".parse().unwrap()
        );
        let local = service_addr("localhost:7100").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7100, "{local}");
        assert!(service_addr("persistence").is_err(), "no port");
        assert!(service_addr("no-such-host.invalid:7100").is_err());
    }
}
