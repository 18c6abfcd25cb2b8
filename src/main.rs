//! `tessera`: the one command. It only parses flags and hands them to the
//! role libraries; `tessera up` (the default) wires every role into one
//! process.

mod bots;
mod ca;
mod ctl;
mod etcd_auth;
mod gateway;
mod k8s_secret;
mod metrics_http;
mod operator;
mod ready;
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
    /// Once ready, write what this role is and every address it serves here as one JSON
    /// object (written to PATH.tmp, then renamed; a stale file is removed at start). For
    /// supervisors and tests: `coordinator`, `shard`, `router`, `telnet-gateway`,
    /// `persistence`, `auth`, `chat` and `asset` write it (docs/operations.md, "Ready files").
    #[arg(long, global = true, env = "TESSERA_READY_FILE", value_name = "PATH")]
    ready_file: Option<PathBuf>,
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
    Router(Box<roles::RouterArgs>),
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
    ///
    /// Commands that change something are signed with an operator credential, `--credential
    /// FILE` (or TESSERA_CREDENTIAL): asset put, asset rollback, asset rm, role, move, drain,
    /// split, merge, rebalance (but not --dry-run), backup, restore, and operator add and
    /// revoke. The others (status, shards, cells, top, asset ls and get, ...) need none.
    ///
    /// Make a credential with `tessera ca operator NAME --cluster-ca DIR --out FILE`, where
    /// DIR is the cluster CA with its key: under `tessera up`, <data-dir>/cluster-ca
    /// (./data/cluster-ca by default; its banner prints the command); for a cluster on etcd,
    /// add --etcd (`tessera ca operator --help`, docs/security.md).
    Ctl(ctl::CtlArgs),
    /// Give each role its own etcd user and role (only the keys it uses)
    /// and turn etcd's auth on; run once, as etcd's root user.
    EtcdAuth(etcd_auth::EtcdAuthArgs),
    /// Manage the cluster certificate authority.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
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
}

/// Browser players (`tessera up`, `tessera router`; docs/client.md).
#[derive(clap::Args, Debug, Clone)]
pub struct WebArgs {
    /// Serve the web client's page (and /tessera.json) over HTTP on this
    /// address. Browsers open WebTransport only from a secure context:
    /// http://localhost or http://127.0.0.1, otherwise HTTPS (docs/client.md).
    #[arg(long, value_name = "ADDR")]
    pub web: Option<SocketAddr>,
    /// The built web client (`scripts/build-web.sh` makes it).
    #[arg(long, value_name = "DIR", default_value = "client/web/dist")]
    pub web_dir: PathBuf,
    /// The WebTransport URL the page is told, when browsers reach the QUIC
    /// port under another name or port (default: https://<the page's
    /// host>:<the QUIC port>/tessera).
    #[arg(long, value_name = "URL")]
    pub web_transport_url: Option<String>,
    /// The PEM certificate chain browsers are shown on the QUIC port, from
    /// a CA they trust (default: a development certificate valid 10 days,
    /// renewed daily, which the page accepts by its hash).
    #[arg(long, value_name = "FILE", requires = "web_key")]
    pub web_cert: Option<PathBuf>,
    /// The PEM private key of --web-cert.
    #[arg(long, value_name = "FILE", requires = "web_cert")]
    pub web_key: Option<PathBuf>,
    /// Turn browsers away: no WebTransport on the QUIC port, and no page
    /// (--web is then ignored).
    #[arg(long, conflicts_with = "web_cert")]
    pub no_webtransport: bool,
}

impl WebArgs {
    /// Sets the router's WebTransport and page from these flags; `web` is
    /// where the page is served when --web is not given.
    pub fn apply(&self, rc: &mut tessera_router::RouterConfig, web: Option<SocketAddr>) {
        rc.web_transport = (!self.no_webtransport).then(|| tessera_router::WebTransportConfig {
            cert: self.web_cert.clone().zip(self.web_key.clone()),
        });
        rc.web_page = self
            .web
            .or(web)
            .filter(|_| !self.no_webtransport)
            .map(|addr| tessera_router::web::WebPage {
                addr,
                dir: self.web_dir.clone(),
                public_url: self.web_transport_url.clone(),
            });
    }
}

/// The address `tessera up` serves the web client's page on by default.
pub const UP_WEB_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    8080,
));

/// Where a role finds the cluster store: etcd's endpoints, how to reach them, and the key
/// prefix of this cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub etcd_tls: EtcdTlsArgs,
    /// Key prefix in etcd.
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    pub prefix: String,
}

impl EtcdArgs {
    /// Connects to etcd (see [`connect_etcd`]).
    pub async fn connect(&self) -> anyhow::Result<tessera_coordinator::EtcdStore> {
        connect_etcd(&self.etcd, &self.etcd_tls).await
    }
}

/// Connects to etcd at `endpoints` over `tls` (checked against them first), saying where it
/// failed.
pub async fn connect_etcd(
    endpoints: &[String],
    tls: &EtcdTlsArgs,
) -> anyhow::Result<tessera_coordinator::EtcdStore> {
    use anyhow::Context;
    let config = tls.config(endpoints)?;
    tessera_coordinator::EtcdStore::connect(
        endpoints,
        config.as_ref(),
        std::time::Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("cannot reach etcd at {}", endpoints.join(",")))
}

/// etcd over TLS with a client certificate (every command that takes
/// `--etcd`; docs/operations.md, "etcd over TLS").
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdTlsArgs {
    /// The CA certificate (PEM) that signed etcd's server certificate:
    /// reach etcd over TLS (https://), showing --etcd-cert.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by a CA etcd trusts (its
    /// --trusted-ca-file).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// The TLS settings for `endpoints`, checked against them: all three
    /// files or none, https:// endpoints only with them, http:// only
    /// without.
    pub fn config(
        &self,
        endpoints: &[String],
    ) -> anyhow::Result<Option<tessera_coordinator::EtcdTls>> {
        let tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => {
                Some(tessera_coordinator::EtcdTls::new(ca, cert, key))
            }
            _ => anyhow::bail!(
                "--etcd-ca, --etcd-cert and --etcd-key go together: give all three (etcd over \
                 TLS) or none (plain etcd)"
            ),
        };
        if tls.is_none() {
            if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://")) {
                anyhow::bail!(
                    "etcd endpoint {e} is https://: give --etcd-ca (the CA that signed etcd's \
                     certificate), --etcd-cert and --etcd-key (this client's certificate)"
                );
            }
        } else if let Some(e) = endpoints.iter().find(|e| e.starts_with("http://")) {
            anyhow::bail!(
                "--etcd-ca, --etcd-cert and --etcd-key are for etcd over TLS, but endpoint {e} \
                 is http://: use https://"
            );
        } else if endpoints.is_empty() {
            anyhow::bail!("--etcd-ca, --etcd-cert and --etcd-key need --etcd");
        }
        Ok(tls)
    }
}

/// Per-address abuse limits of the roles players connect to (`tessera up`,
/// `tessera router`, `tessera telnet-gateway`; docs/security.md).
#[derive(clap::Args, Debug, Clone)]
pub struct AbuseArgs {
    /// Connections one client address (IPv6: one /64) may hold at once,
    /// telnet and QUIC together (0: no cap).
    #[arg(long, default_value_t = tessera_router::caps::CONNECTIONS_PER_ADDRESS)]
    pub connections_per_address: usize,
    /// Networks the per-address limits (connections, account creation)
    /// leave alone, comma-separated, or `none`. Loopback by default, for
    /// local bot swarms; set `none` when a proxy on this host forwards
    /// players.
    #[arg(long, default_value = "127.0.0.0/8,::1")]
    pub limit_exempt: tessera_auth::AddressSet,
}

impl AbuseArgs {
    /// The account limits with these exemptions.
    pub fn rate_limits(&self) -> tessera_auth::RateLimits {
        tessera_auth::RateLimits {
            exempt: self.limit_exempt.clone(),
            ..tessera_auth::RateLimits::default()
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Telnet gateway address.
    #[arg(long, default_value = "0.0.0.0:4000")]
    telnet: SocketAddr,
    #[command(flatten)]
    telnet_tls: TelnetTlsArgs,
    #[command(flatten)]
    abuse: AbuseArgs,
    /// QUIC gateway address (UDP): native 3D clients, and browsers over
    /// WebTransport.
    #[arg(long, default_value = "0.0.0.0:4433")]
    quic: SocketAddr,
    /// Browser players: the page is served on --web, 0.0.0.0:8080 unless
    /// given.
    #[command(flatten)]
    web: WebArgs,
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
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
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
    // Only the long-running roles announce readiness: a `tessera ctl` run with the variable
    // set must not remove a running role's file.
    let announces = matches!(
        cli.command,
        None | Some(
            Command::Up(_)
                | Command::Coordinator(_)
                | Command::Shard(_)
                | Command::Router(_)
                | Command::TelnetGateway(_)
                | Command::Persistence(_)
                | Command::Auth(_)
                | Command::Chat(_)
                | Command::Asset(_)
        )
    );
    if announces {
        ready::configure(cli.ready_file.clone())?;
    }
    match cli.command {
        None => runtime.block_on(up::run(cli.up)),
        Some(Command::Up(a)) => runtime.block_on(up::run(a)),
        Some(Command::Coordinator(a)) => runtime.block_on(roles::coordinator(a)),
        Some(Command::Shard(a)) => runtime.block_on(roles::shard(a)),
        Some(Command::Router(a)) => runtime.block_on(roles::router(*a)),
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
        Some(Command::Ctl(a)) => runtime.block_on(ctl::ctl(a)),
        Some(Command::EtcdAuth(a)) => runtime.block_on(etcd_auth::run(a)),
        Some(Command::Ca { command }) => ca::run(command, &runtime),
    }
}

#[cfg(test)]
mod tests {
    use super::EtcdTlsArgs;
    use clap::Parser;

    /// `tessera coordinator` with these flags after the required ones.
    fn parse(flags: &[&str]) -> Result<EtcdTlsArgs, clap::Error> {
        #[derive(Parser)]
        struct Role {
            #[arg(long, value_delimiter = ',')]
            etcd: Vec<String>,
            #[command(flatten)]
            tls: EtcdTlsArgs,
        }
        Role::try_parse_from(std::iter::once("role").chain(flags.iter().copied())).map(|r| r.tls)
    }

    #[test]
    fn etcd_tls_flags_go_together_and_match_the_endpoints() {
        let all = [
            "--etcd-ca",
            "ca.pem",
            "--etcd-cert",
            "c.pem",
            "--etcd-key",
            "k.pem",
        ];
        let tls = parse(&all).unwrap();
        let https = vec!["https://etcd:2379".to_string()];
        let config = tls.config(&https).unwrap().expect("TLS");
        assert_eq!(
            config,
            tessera_coordinator::EtcdTls::new("ca.pem", "c.pem", "k.pem")
        );
        // Two of three: refused by clap.
        assert!(parse(&all[..4]).is_err());
        // https:// without them, http:// with them, them without --etcd.
        let none = parse(&[]).unwrap();
        assert_eq!(
            none.config(&["http://127.0.0.1:2379".into()]).unwrap(),
            None
        );
        let err = none.config(&https).unwrap_err().to_string();
        assert!(err.contains("is https://: give --etcd-ca"), "{err}");
        let err = tls
            .config(&["http://etcd:2379".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("use https://"), "{err}");
        let err = tls.config(&[]).unwrap_err().to_string();
        assert!(err.contains("need --etcd"), "{err}");
        // host:port means https:// with them.
        assert!(tls.config(&["etcd:2379".into()]).unwrap().is_some());
    }
}
