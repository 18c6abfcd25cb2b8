//! The cluster roles as separate processes: `tessera coordinator`,
//! `tessera shard`, `tessera router`, and `tessera ca init`. Each wires the
//! same role libraries `tessera up` uses to a real etcd and the QUIC cluster
//! bus.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::{Accounts, Auth};
use tessera_coordinator::authority::{ClusterTrust, Signer};
use tessera_coordinator::control::{self, CoordinatorConfig};
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::membership::{
    self, load_key, router_key, shard_key, Registration, RouterRegistration, ShardRegistration,
};
use tessera_coordinator::migration::{drain, mark_restored, MigrationBoard};
use tessera_coordinator::operators::{OperatorCache, OperatorKey, Operators};
use tessera_coordinator::pki::MemberIdentity;
use tessera_coordinator::rebalance::RebalanceConfig;
use tessera_coordinator::transport::{Directory, LocalInbox, QuicBus};
use tessera_coordinator::{Bus, CellMap, ClusterStore, EtcdStore};
use tessera_persistence::Database;
use tessera_proto::{RouterId, ShardId};
use tessera_router::{Router, RouterConfig};
use tessera_shard::ShardConfig;

/// Flags every cluster role takes.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// etcd endpoints, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_tls: crate::EtcdTlsArgs,
    /// Key prefix in etcd.
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    prefix: String,
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

fn positive_f64(s: &str) -> Result<f64, String> {
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
    fn config(&self) -> anyhow::Result<RebalanceConfig> {
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
    /// Accounts, player positions and the QUIC certificate.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
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
    let tls = args.etcd_tls.config(&args.etcd)?;
    let store = EtcdStore::connect(&args.etcd, tls.as_ref(), Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot reach etcd at {}", args.etcd.join(",")))?;
    Ok(Arc::new(store))
}

fn advertise(member: &MemberArgs, bound: SocketAddr) -> SocketAddr {
    member.advertise.unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), bound.port())
        } else {
            bound
        }
    })
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

/// What every cluster member sets up first: metrics, the world, etcd, its
/// certificate, and the directory of the other members.
struct Member {
    metrics: SocketAddr,
    world: Arc<tessera_proto::world::WorldDef>,
    store: Arc<dyn ClusterStore>,
    prefix: String,
    identity: Arc<MemberIdentity>,
    directory: Directory,
}

impl Member {
    async fn join(
        cluster: &ClusterArgs,
        member: &MemberArgs,
        role: MemberRole,
        name: &str,
    ) -> anyhow::Result<Member> {
        let metrics = crate::metrics_http::install(cluster.metrics).await?;
        let world = load_world(cluster)?;
        let store = connect_store(cluster).await?;
        let prefix = cluster.prefix.clone();
        let identity = Arc::new(MemberIdentity::load_or_mint(
            &member.cluster_ca,
            role,
            name,
        )?);
        let directory = Directory::default();
        membership::watch_directory(store.clone(), &prefix, directory.clone()).await?;
        Ok(Member {
            metrics,
            world,
            store,
            prefix,
            identity,
            directory,
        })
    }
}

/// Starts the member's cluster bus and follows the cell map. Returns the
/// bus, the address peers should dial, and the map.
async fn member_bus(
    identity: &tessera_coordinator::pki::MemberIdentity,
    member: &MemberArgs,
    inbox: LocalInbox,
    directory: Directory,
    store: &Arc<dyn ClusterStore>,
    prefix: &str,
) -> anyhow::Result<(Arc<QuicBus>, SocketAddr, CellMap)> {
    let bus = QuicBus::start(identity, member.cluster_listen, inbox, directory)?;
    let addr = advertise(member, bus.local_addr()?);
    let map = CellMap::watch(store.clone(), prefix).await?;
    Ok((bus, addr, map))
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
    println!(
        "persistence listening on {}   (store {}); metrics on http://{metrics}/metrics",
        server.local_addr()?,
        store
    );
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

/// The certificate `tessera ctl` shows a service: any member's in `cluster_ca` (a pod's, when
/// run inside one: the operator's signature is what the service checks), else one minted as
/// role `ctl` from the CA key there.
fn ctl_identity(cluster_ca: &Path, operator: &str) -> anyhow::Result<MemberIdentity> {
    if cluster_ca
        .join(tessera_coordinator::pki::MEMBER_CERT_FILE)
        .exists()
    {
        return Ok(MemberIdentity::load_any(cluster_ca)?);
    }
    Ok(MemberIdentity::load_or_mint(
        cluster_ca,
        MemberRole::Ctl,
        operator,
    )?)
}

/// The signer of an operator command, from `--credential`.
fn operator(args: &CtlArgs) -> anyhow::Result<Signer> {
    Ok(Signer::operator(operator_credential(args)?))
}

/// The operator key from `--credential`.
fn operator_credential(args: &CtlArgs) -> anyhow::Result<OperatorKey> {
    crate::operator::load_credential(args.credential.as_deref())
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
    // The rebalancer never plans a split below the minimum side.
    let rebalance = rebalance.map(|r| RebalanceConfig {
        max_depth: tessera_coordinator::reshape::max_depth(world.cell_size, args.min_region_side),
        ..r
    });
    let store = connect_store(&args.cluster).await?;
    println!(
        "coordinator {} running; metrics on http://{metrics}/metrics",
        args.id
    );
    let identity =
        MemberIdentity::load_or_mint(&args.cluster_ca, MemberRole::Coordinator, &args.id)?;
    let authority = cluster_authority(
        store.clone(),
        &args.cluster.prefix,
        &args.cluster_ca,
        Arc::new(identity),
    )
    .await?;
    let config = CoordinatorConfig {
        id: args.id,
        prefix: args.cluster.prefix,
        cells: world.extent.cells().collect(),
        lease_ttl: Duration::from_secs(args.lease_ttl_secs.max(1)),
        interval: Duration::from_millis(250),
        settle: Duration::from_millis(args.settle_ms),
        authority: Some(authority),
        rebalance,
        grid: tessera_proto::Grid::new(world.cell_size),
        min_region_side: args.min_region_side,
    };
    control::run(config, store, crate::up::shutdown_signal()).await?;
    println!("coordinator stopped.");
    Ok(())
}

/// A shard's `/readyz` states.
const SHARD_STARTING: u8 = 0;
const SHARD_REGISTERED: u8 = 1;
const SHARD_DRAINING: u8 = 2;

/// `tessera shard`.
pub async fn shard(args: ShardArgs) -> anyhow::Result<()> {
    let id = ShardId::new(args.id.clone());
    // Ready (k8s: a rolling update may stop the next old shard) once
    // registered, so the coordinator can give it cells; not while draining.
    let ready = Arc::new(std::sync::atomic::AtomicU8::new(SHARD_STARTING));
    let state = ready.clone();
    crate::metrics_http::set_readiness("shard", move || {
        match state.load(std::sync::atomic::Ordering::Relaxed) {
            SHARD_REGISTERED => Ok(()),
            SHARD_DRAINING => Err("draining".into()),
            _ => Err("not registered yet".into()),
        }
    });
    let Member {
        metrics,
        world,
        store,
        prefix,
        identity,
        directory,
    } = Member::join(&args.cluster, &args.member, MemberRole::Shard, &id.0).await?;
    let (tx, inbox) = crossbeam_channel::unbounded();
    let (bus, addr, map) = member_bus(
        &identity,
        &args.member,
        LocalInbox::Shard(id.clone(), tx),
        directory,
        &store,
        &prefix,
    )
    .await?;
    let mut config = ShardConfig::new(id.clone());
    config.tick_hz = args.tick_hz;
    match args.store.connect(&identity)? {
        Some(db) => {
            config.checkpoints = Some(tessera_shard::checkpoint::Checkpointing {
                db,
                interval: Duration::from_millis(args.checkpoint_interval_ms),
            })
        }
        None => tracing::warn!(
            shard = %id,
            "no --persistence: cells are not checkpointed; a failover reopens them from the world file"
        ),
    }
    if let Some(url) = &args.assets {
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::services::watch_scripts(url.clone(), &world.scripts, vec![tx])?;
        config.script_updates = Some(rx);
    }
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let cluster_key = cluster_authority(
        store.clone(),
        &prefix,
        &args.member.cluster_ca,
        identity.clone(),
    )
    .await?;
    let board = MigrationBoard::watch(store.clone(), &prefix, Some(cluster_key.clone())).await?;
    let (notice_tx, notices) = tokio::sync::mpsc::unbounded_channel();
    let sim =
        tessera_shard::Shard::new(config, world, dyn_bus, map)?.with_migrations(board, notice_tx);
    let handle = tessera_shard::spawn_shard(sim, inbox)?;
    record_restored(store.clone(), prefix.clone(), id.clone(), notices);
    // A (re)started shard takes cells again, whatever drain cordoned it.
    store
        .delete(&tessera_coordinator::migration::draining_key(&prefix, &id))
        .await?;
    let registration = ShardRegistration {
        addr,
        node: node_name(),
        capacity: args.capacity,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let reg = Registration::register(
        store.clone(),
        shard_key(&prefix, &id),
        serde_json::to_vec(&registration)?,
        Duration::from_secs(args.member.lease_ttl_secs.max(1)),
    )
    .await?;
    publish_load(
        store.clone(),
        load_key(&prefix, &id),
        reg.lease,
        handle.load.clone(),
    );
    ready.store(SHARD_REGISTERED, std::sync::atomic::Ordering::Relaxed);
    println!("shard {id} running; cluster address {addr}; metrics on http://{metrics}/metrics");
    let mut lost_rx = reg.lost.clone();
    let lost = tokio::select! {
        _ = crate::up::shutdown_signal() => false,
        _ = lost_rx.wait_for(|l| *l) => true,
    };
    if !lost && args.drain_timeout_secs > 0 {
        // Graceful drain: hand every cell to the other shards (live
        // migration, players stay connected), then stop.
        ready.store(SHARD_DRAINING, std::sync::atomic::Ordering::Relaxed);
        println!("shard {id} draining");
        match drain(
            &*store,
            &prefix,
            &id,
            Duration::from_secs(args.drain_timeout_secs),
            &cluster_key.member(format!("shard:{id}")),
        )
        .await
        {
            Ok(n) => println!("shard {id} drained: {n} cells moved"),
            Err(e) => eprintln!("shard {id}: drain incomplete: {e}"),
        }
        // Let forwarded messages reach the new owners.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handle.stop();
    if lost {
        anyhow::bail!("shard {id} lost its etcd lease and stopped simulating");
    }
    reg.revoke().await;
    // Unregistered now, so nothing can give it cells: drop the cordon too.
    // In Kubernetes a new pod never reuses the name, so it would stay forever.
    if let Err(e) = store
        .delete(&tessera_coordinator::migration::draining_key(&prefix, &id))
        .await
    {
        tracing::warn!(shard = %id, error = %e, "cannot remove the drain mark");
    }
    println!("shard {id} stopped.");
    Ok(())
}

/// Records in the cluster store the migrations the simulation reports
/// restored (the target's half of a live migration).
pub(crate) fn record_restored(
    store: Arc<dyn ClusterStore>,
    prefix: String,
    me: ShardId,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<tessera_shard::sim::ShardNotice>,
) {
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            let tessera_shard::sim::ShardNotice::Restored {
                region: cell,
                epoch,
            } = notice;
            for attempt in 0..20 {
                match mark_restored(&*store, &prefix, cell, &me, epoch).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(cell = %cell, attempt, error = %e, "cannot record a restored migration; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
    });
}

/// Publishes a shard's load report every second, under its registration
/// lease (the coordinator's rebalancer and `tessera ctl` read it).
pub(crate) fn publish_load(
    store: Arc<dyn ClusterStore>,
    key: String,
    lease: tessera_coordinator::store::LeaseId,
    board: tessera_shard::LoadBoard,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let report = board.lock().clone();
            if let Ok(value) = serde_json::to_vec(&report) {
                if let Err(e) = store.put(&key, value, Some(lease)).await {
                    tracing::debug!(error = %e, "load report not written");
                }
            }
        }
    });
}

/// `tessera router`.
pub async fn router(args: RouterArgs) -> anyhow::Result<()> {
    let id = RouterId(args.id.clone());
    let Member {
        metrics,
        world,
        store,
        prefix,
        identity,
        directory,
    } = Member::join(&args.cluster, &args.member, MemberRole::Router, &id.0).await?;
    let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
    let (bus, addr, map) = member_bus(
        &identity,
        &args.member,
        LocalInbox::Router(id.clone(), tx),
        directory,
        &store,
        &prefix,
    )
    .await?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let db = crate::services::service_store(
        &identity,
        args.store.persistence,
        &args.data_dir,
        "tessera.redb",
    )?;
    let accounts = match args.auth {
        Some(addr) => Accounts::remote(crate::services::auth_client(&identity, addr)?),
        None => Accounts::local(Arc::new(Auth::with_limits(
            db.clone(),
            &args.data_dir.join("auth-signing.key"),
            args.abuse.rate_limits(),
        )?)),
    };
    let mut rc = RouterConfig::new(id.clone(), args.data_dir.clone());
    rc.telnet = args.telnet;
    rc.telnet_tls = args.telnet_tls.config();
    rc.login_timeout = Duration::from_secs(args.login_timeout_secs);
    rc.connections_per_address = args.abuse.connections_per_address;
    rc.limit_exempt = args.abuse.limit_exempt.clone();
    rc.quic = args.quic;
    rc.tick_hz = args.tick_hz;
    rc.spawn_radius = args.spawn_radius.max(0.0);
    // Telnet gateways are cluster members: their certificates let them relay.
    rc.relay_cas = identity.roots().to_vec();
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let chat = args
        .chat
        .map(|addr| crate::services::chat_client(&identity, addr, &id.0))
        .transpose()?;
    let router = Router::new(rc, world, dyn_bus, map, accounts, chat, db);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let reg_value = move |telnet, quic, draining| RouterRegistration {
        addr,
        telnet,
        quic,
        version: env!("CARGO_PKG_VERSION").into(),
        draining,
    };
    // On SIGTERM the registration is marked draining first, so telnet
    // gateways resume its players elsewhere; it stays (shards still answer
    // the players' leaves) until the router has stopped.
    let (lease_tx, lease_rx) = tokio::sync::oneshot::channel::<(i64, SocketAddr, SocketAddr)>();
    let (draining_store, draining_key) = (store.clone(), router_key(&prefix, &id));
    let shutdown = async move {
        crate::up::shutdown_signal().await;
        if let Ok((lease, telnet, quic)) = lease_rx.await {
            let value = serde_json::to_vec(&reg_value(telnet, quic, true)).unwrap_or_default();
            if let Err(e) = draining_store.put(&draining_key, value, Some(lease)).await {
                tracing::warn!(error = %e, "cannot mark the router draining");
            }
        }
    };
    let task = tokio::spawn(tessera_router::run(router, inbox, ready_tx, shutdown));
    // Register first (shards send frames to registered routers only), then
    // wait for the router to be ready.
    let reg = Registration::register(
        store.clone(),
        router_key(&prefix, &id),
        serde_json::to_vec(&reg_value(args.telnet, args.quic, false))?,
        Duration::from_secs(args.member.lease_ttl_secs.max(1)),
    )
    .await?;
    let addrs = match ready_rx.await {
        Ok(a) => a,
        Err(_) => {
            reg.revoke().await;
            return match task.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(anyhow::anyhow!("router stopped before it was ready")),
            };
        }
    };
    // Record the real addresses (ports may have been 0).
    store
        .put(
            &router_key(&prefix, &id),
            serde_json::to_vec(&reg_value(addrs.telnet, addrs.quic, false))?,
            Some(reg.lease),
        )
        .await?;
    let _ = lease_tx.send((reg.lease, addrs.telnet, addrs.quic));
    println!("router {id} running; cluster address {addr}");
    println!("telnet listening on {}", addrs.telnet);
    if let Some(a) = addrs.telnet_tls {
        println!("telnet over TLS listening on {a}");
    }
    println!(
        "quic listening on {}   (certificate to pin: {})",
        addrs.quic,
        addrs.cert_path.display()
    );
    println!("metrics on http://{metrics}/metrics");
    task.await??;
    reg.revoke().await;
    println!("router {id} stopped; state saved.");
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    etcd: Vec<String>,
    /// The CA certificate (PEM) that signed etcd's server certificate:
    /// reach etcd over TLS (https://), showing --etcd-cert.
    #[arg(long, value_name = "FILE", global = true)]
    etcd_ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by a CA etcd trusts.
    #[arg(long, value_name = "FILE", global = true)]
    etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE", global = true)]
    etcd_key: Option<PathBuf>,
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX, global = true)]
    prefix: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Operator credential (`tessera ca operator NAME`), needed by the
    /// commands that change the cluster (move, drain).
    #[arg(long, env = "TESSERA_CREDENTIAL", global = true)]
    credential: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Leader, members, totals.
    Status,
    /// Operators: who may sign privileged requests (keygen, add, list,
    /// revoke; docs/security.md).
    Operator {
        #[command(subcommand)]
        command: crate::operator::OperatorCommand,
        /// The cluster CA directory (its certificate checks the operators).
        #[arg(long, global = true)]
        cluster_ca: Option<PathBuf>,
        /// The operators are files in <cluster-ca>/operators/ (`tessera up`
        /// without etcd) instead of in etcd.
        #[arg(long, global = true)]
        local: bool,
    },
    /// Copy everything in the persistence service (accounts, players, cell
    /// checkpoints) to FILE.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        store: BackupStore,
    },
    /// Replace everything in the persistence service with the backup FILE
    /// (run it with the cluster stopped).
    Restore {
        file: PathBuf,
        #[command(flatten)]
        store: BackupStore,
    },
    /// Give an account a role (`operator` may mute and kick players in
    /// chat; `player` takes that back). Takes effect at its next login.
    Role {
        /// The account's name.
        name: String,
        role: tessera_auth::Role,
        #[command(flatten)]
        service: AuthService,
    },
    /// Assets: upload (operators), list, download.
    Asset {
        /// The asset service's URL.
        #[arg(long, env = "TESSERA_ASSETS", default_value = "http://127.0.0.1:7400")]
        assets: String,
        #[command(subcommand)]
        command: AssetCommand,
    },
    /// Every shard: address, cells, entities, tick times.
    Shards,
    /// Every cell: owner, epoch, entities, players, tick p99.
    Cells,
    /// Move every cell of a shard to the other shards (live migration).
    Drain { shard: String },
    /// Split a region (a whole cell `x,z` or a region `x,z/q/...`) into its
    /// four quadrants, on the same shard, and wait until the map shows it
    /// (docs/regions.md).
    Split {
        #[arg(allow_hyphen_values = true)]
        region: tessera_proto::RegionId,
    },
    /// Merge a split region back into one (every region under it, however
    /// deep), moving them to one shard first, and wait until the map shows
    /// it.
    Merge {
        #[arg(allow_hyphen_values = true)]
        region: tessera_proto::RegionId,
        /// The shard the merged region goes to (default: the one that owns
        /// most of the regions under it).
        #[arg(long)]
        to: Option<String>,
    },
    /// Live-migrate a cell (`x,z`) or a region of a split cell
    /// (`x,z/q/...`) to a shard, and wait until it is there.
    Move {
        /// The cell, `x,z` (negative coordinates are fine: `-1,0`), or a
        /// region of a split one, `x,z/q/...` (docs/regions.md).
        #[arg(allow_hyphen_values = true)]
        cell: tessera_proto::RegionId,
        /// The target shard's id.
        shard: String,
    },
    /// Plan moves that relieve overloaded shards and fill shards that own
    /// less than their share, print the plan, and carry it out wave by
    /// wave (one migration per shard at a time) unless `--dry-run`.
    Rebalance {
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        planner: PlannerArgs,
    },
    /// A refreshing view of shards and the most expensive cells.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = positive_f64)]
        interval: f64,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        iterations: Option<u64>,
        /// How many cells to list.
        #[arg(long, default_value_t = 10)]
        cells: usize,
    },
}

/// Where `ctl backup` and `ctl restore` find the store.
#[derive(Args, Debug, Clone)]
pub struct BackupStore {
    /// The persistence service, host:port.
    #[arg(long, value_parser = service_addr)]
    persistence: SocketAddr,
    /// A member directory (any role's certificate: the service checks the operator's
    /// signature) or the cluster CA directory (a certificate is minted for ctl).
    #[arg(long)]
    cluster_ca: PathBuf,
}

impl BackupStore {
    /// The service as an operator: it checks the signature of every page and batch.
    fn connect(
        &self,
        args: &CtlArgs,
    ) -> anyhow::Result<tessera_persistence::remote::OperatorSession> {
        let credential = operator_credential(args)?;
        let identity = ctl_identity(&self.cluster_ca, credential.name())?;
        let config = identity.client_config_for(tessera_persistence::remote::PERSISTENCE_ALPN)?;
        let backend = tessera_persistence::remote::RemoteBackend::new(
            self.persistence,
            tessera_coordinator::pki::CLUSTER_NAME,
            config,
        )?;
        Ok(tessera_persistence::remote::OperatorSession::new(
            backend, credential,
        ))
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AssetCommand {
    /// Upload FILE as asset NAME (e.g. `scripts/guard.rhai`); shards running
    /// a script reload it within seconds.
    Put { name: String, file: PathBuf },
    /// Every asset: name, size, hash, last change.
    Ls,
    /// Download asset NAME to FILE (`-`: standard output).
    Get { name: String, file: PathBuf },
}

/// `tessera ctl asset ...`: blocking HTTP, off the async threads.
async fn ctl_asset(args: &CtlArgs, url: &str, command: &AssetCommand) -> anyhow::Result<()> {
    let client = tessera_asset::AssetClient::new(url);
    let credential = match command {
        AssetCommand::Put { .. } => Some(operator_credential(args)?),
        _ => None,
    };
    let (command, json) = (command.clone(), args.json);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match command {
            AssetCommand::Put { name, file } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let credential = credential.expect("an operator's credential");
                let put = client.put(&name, &bytes, &credential)?;
                println!(
                    "{} {} ({} bytes, blake3 {})",
                    if put.changed {
                        "uploaded"
                    } else {
                        "unchanged:"
                    },
                    put.name,
                    put.size,
                    put.hash
                );
            }
            AssetCommand::Ls => {
                let tessera_asset::ManifestFetch::Fresh { manifest, .. } = client.manifest(None)?
                else {
                    anyhow::bail!("the asset service answered 'not modified' to a plain request");
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&manifest)?);
                    return Ok(());
                }
                println!("manifest version {}", manifest.version);
                for (name, e) in &manifest.assets {
                    println!(
                        "{name:<40} {:>10} B  {}  {}",
                        e.size,
                        &e.hash[..16.min(e.hash.len())],
                        e.updated_unix_ms
                    );
                }
            }
            AssetCommand::Get { name, file } => {
                let bytes = client.get(&name)?;
                if file.as_os_str() == "-" {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                } else {
                    std::fs::write(&file, &bytes)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    eprintln!("wrote {} bytes to {}", bytes.len(), file.display());
                }
            }
        }
        Ok(())
    })
    .await?
}

/// Where `ctl role` finds the account service.
#[derive(Args, Debug, Clone)]
pub struct AuthService {
    /// The account service, host:port.
    #[arg(long, value_parser = service_addr)]
    auth: SocketAddr,
    /// A member directory (any role's certificate: the service checks the operator's
    /// signature) or the cluster CA directory (a certificate is minted for ctl).
    #[arg(long)]
    cluster_ca: PathBuf,
}

/// `tessera ctl role NAME ROLE`, for an operator of this cluster only.
async fn ctl_role(
    args: &CtlArgs,
    name: &str,
    role: tessera_auth::Role,
    service: &AuthService,
) -> anyhow::Result<()> {
    // The account service checks the signature; nothing is checked here.
    let credential = operator_credential(args)?;
    let identity = ctl_identity(&service.cluster_ca, credential.name())?;
    let client = crate::services::auth_client(&identity, service.auth)?;
    let account = client.set_role(name, role, &credential).await?;
    println!(
        "{} is now {} {role} (from their next login)",
        account.name,
        if role == tessera_auth::Role::Operator {
            "an"
        } else {
            "a"
        }
    );
    Ok(())
}

/// `tessera ctl backup|restore`: blocking file and store work, off the
/// async threads.
async fn ctl_backup(args: &CtlArgs) -> anyhow::Result<()> {
    use tessera_persistence::backup;
    let started = std::time::Instant::now();
    match &args.command {
        CtlCommand::Backup { file, store } => {
            let db = store.connect(args)?;
            let file = file.clone();
            let tmp = file.with_extension("partial");
            let n = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                // It holds every password hash: its owner's alone, from
                // the start (a partial file left by a crash is replaced,
                // not reused with its old mode).
                match std::fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("cannot replace {}", tmp.display()))
                    }
                    _ => {}
                }
                let f = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)
                }
                .with_context(|| format!("cannot create {}", tmp.display()))?;
                let mut out = std::io::BufWriter::new(f);
                let n = backup::dump(&db, &mut out)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                std::fs::rename(&tmp, &file)?;
                Ok(n)
            })
            .await??;
            println!(
                "backed up {n} entries in {} ms",
                started.elapsed().as_millis()
            );
        }
        CtlCommand::Restore { file, store } => {
            let db = store.connect(args)?;
            let file = file.clone();
            let n = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let mut open = || -> std::io::Result<Box<dyn std::io::BufRead>> {
                    Ok(Box::new(std::io::BufReader::new(std::fs::File::open(
                        &file,
                    )?)))
                };
                Ok(backup::restore(&db, &mut open)?)
            })
            .await??;
            println!(
                "restored {n} entries in {} ms",
                started.elapsed().as_millis()
            );
        }
        _ => unreachable!("only backup and restore come here"),
    }
    Ok(())
}

/// `tessera ctl`.
pub async fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    use tessera_coordinator::ctl;
    if matches!(
        args.command,
        CtlCommand::Backup { .. } | CtlCommand::Restore { .. }
    ) {
        return ctl_backup(&args).await;
    }
    if let CtlCommand::Role {
        name,
        role,
        service,
    } = &args.command
    {
        return ctl_role(&args, name, *role, service).await;
    }
    if let CtlCommand::Asset { assets, command } = &args.command {
        return ctl_asset(&args, assets, command).await;
    }
    if let CtlCommand::Operator {
        command,
        cluster_ca,
        local,
    } = &args.command
    {
        let credential = match &args.credential {
            Some(path) => Some(OperatorKey::load(path)?),
            None => None,
        };
        let operators = async {
            let cluster_ca = cluster_ca.as_deref().context(
                "this command needs --cluster-ca DIR (its certificate checks the operators)",
            )?;
            let store = crate::operator::OperatorsArgs {
                etcd: if *local {
                    Vec::new()
                } else {
                    args.etcd.clone()
                },
                etcd_tls: crate::EtcdTlsArgs {
                    etcd_ca: args.etcd_ca.clone(),
                    etcd_cert: args.etcd_cert.clone(),
                    etcd_key: args.etcd_key.clone(),
                },
                prefix: args.prefix.clone(),
            };
            store.operators(cluster_ca).await
        };
        return crate::operator::ctl_operator(command, operators, credential.as_ref()).await;
    }
    let tls = crate::EtcdTlsArgs {
        etcd_ca: args.etcd_ca.clone(),
        etcd_cert: args.etcd_cert.clone(),
        etcd_key: args.etcd_key.clone(),
    }
    .config(&args.etcd)?;
    let store = EtcdStore::connect(&args.etcd, tls.as_ref(), Duration::from_secs(3))
        .await
        .with_context(|| format!("cannot reach etcd at {}", args.etcd.join(",")))?;
    if let CtlCommand::Drain { shard } = &args.command {
        let signer = operator(&args)?;
        let started = std::time::Instant::now();
        let n = drain(
            &store,
            &args.prefix,
            &ShardId::new(shard.clone()),
            Duration::from_secs(60),
            &signer,
        )
        .await?;
        println!(
            "drained {shard}: {n} cells moved in {} ms",
            started.elapsed().as_millis()
        );
        return Ok(());
    }
    if let CtlCommand::Split { region } = &args.command {
        let signer = operator(&args)?;
        return ctl_reshape(&store, &args.prefix, *region, None, true, &signer).await;
    }
    if let CtlCommand::Merge { region, to } = &args.command {
        let signer = operator(&args)?;
        let to = to.clone().map(ShardId::new);
        return ctl_reshape(&store, &args.prefix, *region, to, false, &signer).await;
    }
    if let CtlCommand::Move { cell, shard } = &args.command {
        let signer = operator(&args)?;
        return ctl_move(
            &store,
            &args.prefix,
            *cell,
            &ShardId::new(shard.clone()),
            args.json,
            &signer,
        )
        .await;
    }
    if let CtlCommand::Rebalance { dry_run, planner } = &args.command {
        // Printing the plan is for anyone; carrying it out is an operator's.
        let signer = if *dry_run {
            None
        } else {
            Some(operator(&args)?)
        };
        return ctl_rebalance(
            &store,
            &args.prefix,
            planner.config()?,
            signer.as_ref(),
            args.json,
        )
        .await;
    }
    if let CtlCommand::Top {
        interval,
        iterations,
        cells,
    } = &args.command
    {
        return ctl_top(
            &store,
            &args.prefix,
            *interval,
            *iterations,
            *cells,
            args.json,
        )
        .await;
    }
    let snap = ctl::snapshot(&store, &args.prefix).await?;
    let out = match (&args.command, args.json) {
        (
            CtlCommand::Move { .. }
            | CtlCommand::Split { .. }
            | CtlCommand::Merge { .. }
            | CtlCommand::Backup { .. }
            | CtlCommand::Restore { .. }
            | CtlCommand::Role { .. }
            | CtlCommand::Asset { .. }
            | CtlCommand::Operator { .. }
            | CtlCommand::Drain { .. }
            | CtlCommand::Rebalance { .. }
            | CtlCommand::Top { .. },
            _,
        ) => unreachable!("handled above"),
        (CtlCommand::Status, false) => ctl::render_status(&snap),
        (CtlCommand::Shards, false) => ctl::render_shards(&snap),
        (CtlCommand::Cells, false) => ctl::render_cells(&snap),
        (CtlCommand::Status, true) => serde_json::to_string_pretty(&snap.status)? + "\n",
        (CtlCommand::Shards, true) => serde_json::to_string_pretty(&snap.status.shards)? + "\n",
        (CtlCommand::Cells, true) => serde_json::to_string_pretty(&snap.cells)? + "\n",
    };
    print!("{out}");
    Ok(())
}

/// `tessera ctl split` and `ctl merge`: requests the reshape and waits
/// until the map shows it, or the request is gone without it (refused:
/// the coordinator's log says why).
async fn ctl_reshape(
    store: &EtcdStore,
    prefix: &str,
    region: tessera_proto::RegionId,
    to: Option<ShardId>,
    split: bool,
    signer: &Signer,
) -> anyhow::Result<()> {
    use tessera_coordinator::reshape;
    let started = std::time::Instant::now();
    if split {
        reshape::request_split(store, prefix, region, signer).await?;
    } else {
        reshape::request_merge(store, prefix, region, to, signer).await?;
    }
    let key = tessera_coordinator::cellmap::cell_key(prefix, region.cell_id());
    let request = reshape::reshape_key(prefix, region);
    let deadline = started + Duration::from_millis(reshape::RESHAPE_TIMEOUT_MS + 5_000);
    loop {
        let pending = store.get(&request).await?.is_some();
        let tree = match store.get(&key).await? {
            Some(kv) => Some(tessera_coordinator::cellmap::parse_tree(
                &kv.key, &kv.value,
            )?),
            None => None,
        };
        let done = tree.as_ref().and_then(|t| {
            if split {
                let quadrants = region.children()?;
                let owner = t.get(quadrants[0])?;
                Some(format!(
                    "region {region} split into {} on {} (epoch {})",
                    quadrants.map(|q| q.to_string()).join(" "),
                    owner.owner,
                    owner.epoch
                ))
            } else {
                let owner = t.get(region)?;
                Some(format!(
                    "region {region} merged on {} (epoch {})",
                    owner.owner, owner.epoch
                ))
            }
        });
        if let Some(done) = done {
            println!("{done} in {} ms", started.elapsed().as_millis());
            return Ok(());
        }
        if !pending {
            anyhow::bail!(
                "the cluster refused the {} of region {region} (see the coordinator's log: \
                 a credential it does not accept, a region below the minimum side, or the map changed meanwhile)",
                if split { "split" } else { "merge" }
            );
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("region {region} was not reshaped in time (is a coordinator running?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tessera ctl move`: requests the migration and waits until the cell is
/// owned by the target, then reports the stall the target measured.
async fn ctl_move(
    store: &EtcdStore,
    prefix: &str,
    cell: tessera_proto::RegionId,
    to: &ShardId,
    json: bool,
    signer: &Signer,
) -> anyhow::Result<()> {
    use tessera_coordinator::membership::{load_key, ShardLoad};
    let started = std::time::Instant::now();
    let m = tessera_coordinator::migration::request_move(store, prefix, cell, to, signer).await?;
    let key = tessera_coordinator::cellmap::cell_key(prefix, cell.cell_id());
    let request = tessera_coordinator::migration::migration_key(prefix, cell);
    let deadline = started + Duration::from_secs(30);
    loop {
        // The request first: the coordinator flips the owner before it
        // deletes the request, so a missing request and an unchanged owner
        // mean the move was refused or cancelled.
        let record = store.get(&request).await?;
        let cancelled = record.as_ref().is_some_and(|kv| {
            serde_json::from_slice::<tessera_coordinator::migration::Migration>(&kv.value)
                .is_ok_and(|r| {
                    r.epoch == m.epoch
                        && r.state == tessera_coordinator::migration::MigrationState::Cancelled
                })
        });
        let pending = record.is_some() && !cancelled;
        let mut arrived = false;
        if let Some(kv) = store.get(&key).await? {
            let tree = tessera_coordinator::cellmap::parse_tree(&kv.key, &kv.value)?;
            arrived = tree
                .get(cell)
                .is_some_and(|o| &o.owner == to && o.epoch == m.epoch);
        }
        if arrived {
            break;
        }
        if !pending {
            anyhow::bail!(
                "the cluster refused or cancelled the move of region {cell} to {to} \
                 (see the coordinator's log: a credential it does not accept, or the region changed owner meanwhile)"
            );
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "region {cell} did not reach {to} within 30 s (is a coordinator running?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_ms = started.elapsed().as_millis() as u64;
    // The target reports the stall in its next load report (every second).
    let mut stall = None;
    for _ in 0..30 {
        if let Some(kv) = store.get(&load_key(prefix, to)).await? {
            let load: ShardLoad = serde_json::from_slice(&kv.value)?;
            if load.cells.iter().any(|c| {
                c.cell == cell.cell_id()
                    && c.region.as_deref().unwrap_or(&c.cell.to_string()) == cell.to_string()
                    && c.epoch == m.epoch
            }) {
                stall = load.last_migration_stall_ms;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "cell": cell, "from": m.from, "to": to, "epoch": m.epoch,
                "took_ms": took_ms, "stall_ms": stall,
            })
        );
    } else {
        let stall = stall
            .map(|s| format!("{s} ms"))
            .unwrap_or_else(|| "unknown".into());
        println!(
            "moved cell {cell} from {} to {to} (epoch {}) in {took_ms} ms; simulation stall {stall}",
            m.from, m.epoch
        );
    }
    Ok(())
}

/// `tessera ctl top`: clears the screen and shows shards and the hottest
/// cells every `interval` seconds; with `--json`, one JSON object per line
/// and refresh.
async fn ctl_top(
    store: &EtcdStore,
    prefix: &str,
    interval: f64,
    iterations: Option<u64>,
    cells: usize,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    use tessera_coordinator::ctl;
    let mut n = 0u64;
    loop {
        let top = ctl::top(&ctl::snapshot(store, prefix).await?, cells);
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&top)?)?;
        } else {
            // Clear the screen, cursor home.
            write!(out, "\x1b[2J\x1b[H")?;
            writeln!(
                out,
                "tessera top: every {interval} s (Ctrl-C to quit); LOAD = CELLS_MS / BUDGET_MS"
            )?;
            write!(out, "{}", ctl::render_top(&top))?;
        }
        out.flush()?;
        drop(out);
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(interval)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `tessera ctl rebalance`: plans on the current cluster with a one-shot
/// planner (one load report above the high watermark is enough: the
/// operator asked), prints the plan, and unless `dry_run` requests the
/// moves wave by wave, waiting for each wave like `ctl move` does.
async fn ctl_rebalance(
    store: &EtcdStore,
    prefix: &str,
    config: RebalanceConfig,
    signer: Option<&Signer>,
    json: bool,
) -> anyhow::Result<()> {
    let dry_run = signer.is_none();
    use tessera_coordinator::rebalance::{loads, plan_all};
    use tessera_coordinator::{ctl, migration};
    // For planning only: the servers check the moves (and cordons) themselves.
    let view = tessera_coordinator::control::read_cluster_view(store, prefix, None).await?;
    if !view.in_flight.is_empty() && !dry_run {
        anyhow::bail!(
            "{} migration(s) in flight; try again when they are done (or use --dry-run)",
            view.in_flight.len()
        );
    }
    let plan = plan_all(&config, &view, 256);
    let (now, after) = (loads(&view, &config), loads(&plan.projected, &config));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": dry_run,
                "waves": plan.waves,
                "reshapes": plan.reshapes,
                "blocked": plan.blocked,
                "loads_now": now,
                "loads_after": after,
            }))?
        );
    } else {
        print!("{}", ctl::render_plan(&plan, &now, &after));
    }
    let Some(signer) = signer else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let mut moved = 0;
    for wave in &plan.waves {
        let mut waiting = Vec::new();
        for m in wave {
            match migration::request_move(store, prefix, m.cell, &m.to, signer).await {
                Ok(req) => waiting.push((m, req.epoch)),
                Err(e) => eprintln!("cell {} not moved: {e}", m.cell),
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !waiting.is_empty() {
            let mut left = Vec::new();
            for (m, epoch) in waiting {
                let key = tessera_coordinator::cellmap::cell_key(prefix, m.cell.cell_id());
                let owner = match store.get(&key).await? {
                    Some(kv) => tessera_coordinator::cellmap::parse_tree(&kv.key, &kv.value)?
                        .get(m.cell)
                        .cloned(),
                    None => None,
                };
                if owner.is_some_and(|o| o.owner == m.to && o.epoch == epoch) {
                    moved += 1;
                    if !json {
                        println!(
                            "moved cell {} from {} to {} ({})",
                            m.cell, m.from, m.to, m.reason
                        );
                    }
                } else {
                    left.push((m, epoch));
                }
            }
            waiting = left;
            if waiting.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "cell {} did not reach {} within 30 s (is a coordinator running?)",
                    waiting[0].0.cell,
                    waiting[0].0.to
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if !json {
        println!(
            "rebalanced: {moved} cells moved in {} ms",
            started.elapsed().as_millis()
        );
    }
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
