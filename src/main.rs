//! `tessera`: the one command. It only parses flags and hands them to the
//! role libraries; `tessera up` (the default) wires every role into one
//! process.

mod bots;
mod gateway;
mod k8s_secret;
mod metrics_http;
mod roles;
mod services;
mod up;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a sharded spatial simulation cluster",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, `tessera` runs `up` with these flags.
    #[command(flatten)]
    up: UpArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole cluster in one process (coordinator, shards, router,
    /// auth, chat, asset, persistence) and print where to connect.
    Up(UpArgs),
    /// Run a coordinator: leader election and cell placement (against etcd).
    Coordinator(roles::CoordinatorArgs),
    /// Run a shard process that simulates the cells the coordinator gives it.
    Shard(roles::ShardArgs),
    /// Run a router process: the telnet and QUIC gateways.
    Router(roles::RouterArgs),
    /// Run a telnet gateway: holds telnet players' connections and plays
    /// them on the routers, so router restarts drop no text player.
    TelnetGateway(gateway::GatewayArgs),
    /// Run the persistence service (cell checkpoints, accounts, players) for the cluster.
    Persistence(roles::PersistenceArgs),
    /// Run the account service (accounts, logins, sessions) for the routers.
    Auth(services::AuthArgs),
    /// Run the chat service (shouts, tells, channels) for the routers.
    Chat(services::ChatArgs),
    /// Run the asset service (world, scripts, meshes over HTTP).
    Asset(services::AssetArgs),
    /// A headless bot swarm against a running Tessera: QUIC and telnet bots
    /// playing a scenario, measured (latencies, bytes, errors).
    Bots(bots::BotsArgs),
    /// Ask and steer the cluster: status, shards, cells, moves, drains,
    /// rebalancing, roles, assets, backups.
    Ctl(roles::CtlArgs),
    /// Manage the cluster certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new cluster CA in DIR (ca-cert.pem, ca-key.pem); give the
    /// directory to every role with --cluster-ca.
    Init { dir: PathBuf },
    /// Issue an operator credential (for `tessera ctl move|drain|rebalance`).
    Operator {
        /// The operator's name, shown in logs of every request they make.
        name: String,
        /// The cluster CA directory.
        #[arg(long)]
        cluster_ca: PathBuf,
        /// Where to write the credential (default: NAME.credential).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create every secret a Kubernetes deployment needs in DIR (the
    /// cluster CA, the auth signing key, the routers' QUIC certificate;
    /// existing files are kept) and print them as one Secret manifest:
    /// `tessera ca k8s-secret secrets/ | kubectl apply -f -` (docs/deploy.md).
    K8sSecret {
        dir: PathBuf,
        /// The Secret's name (the manifests in k8s/ mount `tessera-cluster`).
        #[arg(long, default_value = "tessera-cluster")]
        name: String,
        /// The Secret's namespace (default: none; kubectl's current one).
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Telnet over TLS (`tessera up`, `tessera router`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelnetTlsArgs {
    /// Also serve telnet over TLS on this address (plain telnet carries
    /// passwords in clear text).
    #[arg(long)]
    pub telnet_tls: Option<SocketAddr>,
    /// The PEM certificate chain for --telnet-tls (default: the router's
    /// self-signed certificate, quic-cert.pem in the data dir).
    #[arg(long, requires_all = ["telnet_tls", "telnet_tls_key"])]
    pub telnet_tls_cert: Option<PathBuf>,
    /// The PEM private key of --telnet-tls-cert.
    #[arg(long, requires_all = ["telnet_tls", "telnet_tls_cert"])]
    pub telnet_tls_key: Option<PathBuf>,
}

impl TelnetTlsArgs {
    /// The router's setting.
    pub fn config(&self) -> Option<tessera_router::TelnetTls> {
        let addr = self.telnet_tls?;
        let cert = match (&self.telnet_tls_cert, &self.telnet_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        };
        Some(tessera_router::TelnetTls { addr, cert })
    }

    /// The same flags again, for a role started from `tessera up --etcd`.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(a) = self.telnet_tls {
            flags.extend(["--telnet-tls".to_string(), a.to_string()]);
        }
        if let (Some(c), Some(k)) = (&self.telnet_tls_cert, &self.telnet_tls_key) {
            flags.extend([
                "--telnet-tls-cert".to_string(),
                c.display().to_string(),
                "--telnet-tls-key".to_string(),
                k.display().to_string(),
            ]);
        }
        flags
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Telnet gateway address.
    #[arg(long, default_value = "0.0.0.0:4000")]
    telnet: SocketAddr,
    #[command(flatten)]
    telnet_tls: TelnetTlsArgs,
    /// QUIC gateway address (UDP).
    #[arg(long, default_value = "0.0.0.0:4433")]
    quic: SocketAddr,
    /// Prometheus metrics address (serves /metrics and /healthz).
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// The asset service's HTTP address (upload with `tessera ctl asset
    /// put`; the shards reload changed scripts from it).
    #[arg(long, default_value = "0.0.0.0:7400")]
    assets_listen: SocketAddr,
    /// Where accounts, player positions and the QUIC certificate are kept.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The world definition directory.
    #[arg(long, default_value = "worlds/default")]
    world: PathBuf,
    /// Number of shards to split the world between.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
    /// Simulation ticks per second.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    tick_hz: u32,
    /// Refuse connections (telnet and QUIC together) beyond this many.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Close telnet connections idle this many seconds.
    #[arg(long, default_value_t = 1800)]
    idle_timeout_secs: u64,
    /// Close connections (telnet and QUIC) not logged in this many seconds
    /// after they opened.
    #[arg(long, default_value_t = tessera_router::LOGIN_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    login_timeout_secs: u64,
    /// New characters appear within this many metres of the world's spawn
    /// (0: on it), spread over the cells (and shards) around it.
    #[arg(long, default_value_t = 0.0)]
    spawn_radius: f32,
    /// Never move, split or merge cells on the coordinator's own
    /// initiative (in-process mode; with --etcd see `tessera coordinator`).
    #[arg(long)]
    pub no_rebalance: bool,
    /// Rebalance, but never split or merge regions (docs/regions.md).
    #[arg(long)]
    pub no_split: bool,
    /// Split a region whose own cost stays above this fraction of its
    /// shard's tick budget (in-process mode).
    #[arg(long, default_value_t = tessera_coordinator::rebalance::RebalanceConfig::default().split_above)]
    pub split_above: f64,
    /// Run the same roles against this etcd (comma-separated endpoints)
    /// instead of the in-process store: a coordinator, the shards, the
    /// router and the persistence service, each a cluster member that other
    /// processes (`tessera shard`, `tessera ctl`) can join or steer.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix in etcd (with --etcd).
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    prefix: String,
}

/// Makes every allocation of 1 MiB or more a mapping of its own, returned
/// to the system when freed.
///
/// glibc's default raises its mmap threshold to the size of the first large
/// block freed, so later blocks of that size are carved from the malloc
/// arenas instead, and each arena keeps what it carved. argon2id allocates
/// 19 MiB per password hash on whichever blocking thread runs it, so a
/// burst of logins left the server holding hundreds of MB it no longer used
/// (300 logins: 400 to 600 MB resident; with this, 50 MB; see
/// docs/performance.md, "Memory").
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> anyhow::Result<()> {
    return_large_blocks_to_the_system();
    let cli = Cli::parse();
    // A swarm's own output is its table; keep the log to what went wrong.
    let default_log = if matches!(cli.command, Some(Command::Bots(_))) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tessera-io")
        .build()?;
    match cli.command {
        None => runtime.block_on(up::run(cli.up)),
        Some(Command::Up(a)) => runtime.block_on(up::run(a)),
        Some(Command::Coordinator(a)) => runtime.block_on(roles::coordinator(a)),
        Some(Command::Shard(a)) => runtime.block_on(roles::shard(a)),
        Some(Command::Router(a)) => runtime.block_on(roles::router(a)),
        Some(Command::TelnetGateway(a)) => runtime.block_on(gateway::run(a)),
        Some(Command::Persistence(a)) => runtime.block_on(roles::persistence(a)),
        Some(Command::Auth(a)) => runtime.block_on(services::auth(a)),
        Some(Command::Chat(a)) => runtime.block_on(services::chat(a)),
        Some(Command::Asset(a)) => runtime.block_on(services::asset(a)),
        Some(Command::Bots(a)) => {
            let code = runtime.block_on(bots::run(a))?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Some(Command::Ctl(a)) => runtime.block_on(roles::ctl(a)),
        Some(Command::Ca {
            command: CaCommand::Init { dir },
        }) => roles::ca_init(dir),
        Some(Command::Ca {
            command:
                CaCommand::Operator {
                    name,
                    cluster_ca,
                    out,
                },
        }) => roles::ca_operator(name, cluster_ca, out),
        Some(Command::Ca {
            command:
                CaCommand::K8sSecret {
                    dir,
                    name,
                    namespace,
                },
        }) => {
            print!("{}", k8s_secret::render(&dir, &name, namespace.as_deref())?);
            eprintln!(
                "secret files kept in {}; clients pin {}",
                dir.display(),
                dir.join("quic-cert.der").display()
            );
            Ok(())
        }
    }
}
