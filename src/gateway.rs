//! `tessera telnet-gateway`: wires the telnet gateway library to etcd (the
//! routers' registrations), the cluster CA (its client certificate for the
//! routers) and the routers' pinned QUIC certificate.

use anyhow::Context;
use clap::Args;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_coordinator::pki::MemberIdentity;
use tessera_coordinator::ClusterStore;
use tessera_gateway::routers::RouterSet;
use tessera_gateway::{Gateway, GatewayConfig};

/// How long a silent router link lives.
const ROUTER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The cluster store: the routers are found under `<prefix>routers/`.
    #[command(flatten)]
    store: crate::EtcdArgs,
    /// This member's directory: its certificate and key from `tessera ca issue --role gateway`
    /// (member-cert.pem, member-key.pem) and the trust bundle (ca-cert.pem); or a CA directory,
    /// and a certificate is minted at start.
    /// The routers let a gateway's certificate relay players.
    #[arg(long)]
    cluster_ca: PathBuf,
    /// The routers' QUIC certificate (DER or PEM) to pin; every router of
    /// the cluster shares it.
    #[arg(long)]
    router_cert: PathBuf,
    /// This gateway's name (in logs and on its certificate).
    #[arg(long, default_value = "gateway-1")]
    id: String,
    /// Where players connect with telnet.
    #[arg(long, default_value = "0.0.0.0:4000")]
    telnet: SocketAddr,
    /// Telnet over TLS: a gateway has no certificate of its own, so
    /// --telnet-tls needs --telnet-tls-cert and --telnet-tls-key.
    #[command(flatten)]
    telnet_tls: crate::TelnetTlsArgs,
    #[command(flatten)]
    abuse: crate::AbuseArgs,
    /// Prometheus metrics address (also `/healthz` and `/readyz`).
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: SocketAddr,
    /// Longest telnet line, bytes.
    #[arg(long, default_value_t = 1024)]
    max_line: usize,
    /// Refuse connections beyond this many.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Close connections idle this many seconds.
    #[arg(long, default_value_t = 1800)]
    idle_timeout_secs: u64,
    /// Close connections not logged in this many seconds after they
    /// opened.
    #[arg(long, default_value_t = tessera_router::LOGIN_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    login_timeout_secs: u64,
    /// On SIGTERM, keep the players this many seconds at most while they
    /// leave by themselves (new connections are refused at once).
    #[arg(long, default_value_t = 3600)]
    drain_timeout_secs: u64,
    /// How long to look for another router after losing one, seconds.
    #[arg(long, default_value_t = 30)]
    resume_within_secs: u64,
}

fn load_cert(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(&bytes)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))
    } else {
        Ok(CertificateDer::from(bytes))
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let tls_acceptor = match args.telnet_tls.config() {
        None => None,
        Some(tessera_router::TelnetTls {
            addr,
            cert: Some((cert, key)),
        }) => Some((
            addr,
            tessera_router::tls::telnet_acceptor_from_pem(&cert, &key)?,
        )),
        Some(_) => anyhow::bail!(
            "--telnet-tls needs --telnet-tls-cert and --telnet-tls-key on a telnet gateway \
             (it has no certificate of its own)"
        ),
    };
    let metrics = crate::metrics_http::install(args.metrics).await?;
    let router_cert = load_cert(&args.router_cert)?;
    let identity = MemberIdentity::load_or_mint(
        &args.cluster_ca,
        tessera_coordinator::identity::MemberRole::Gateway,
        &args.id,
    )?;
    // A router that dies without a word is given up after 5 s (players
    // keep the 30 s default): its players resume elsewhere that soon.
    let endpoint = tessera_client::endpoint_as(
        router_cert,
        Some(identity.chain_and_key()),
        ROUTER_IDLE_TIMEOUT,
    )
    .context("cannot open the QUIC endpoint")?;
    let store: Arc<dyn ClusterStore> = Arc::new(args.store.connect().await?);
    let routers = RouterSet::default();
    routers
        .follow(store, &args.store.prefix)
        .await
        .context("cannot read the routers' registrations")?;
    let mut config = GatewayConfig::new(args.id.clone());
    config.max_line = args.max_line.max(64);
    config.max_connections = args.max_connections;
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs.max(1));
    config.login_timeout = Duration::from_secs(args.login_timeout_secs);
    config.connections_per_address = args.abuse.connections_per_address;
    config.limit_exempt = args.abuse.limit_exempt.clone();
    config.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    config.resume_within = Duration::from_secs(args.resume_within_secs.max(1));
    let gateway = Gateway::new(config, routers, endpoint);
    {
        let gw = gateway.clone();
        crate::metrics_http::set_readiness("telnet gateway", move || gw.readiness());
    }
    let listener = tokio::net::TcpListener::bind(args.telnet)
        .await
        .with_context(|| format!("cannot listen on {}", args.telnet))?;
    let bound = listener.local_addr()?;
    let tls = match tls_acceptor {
        Some((addr, acceptor)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some((l, acceptor))
        }
        None => None,
    };
    let tls_bound = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    println!(
        "telnet gateway {} running; {} router(s) known",
        args.id,
        gateway.routers.available()
    );
    println!("telnet listening on {bound}");
    if let Some(a) = tls_bound {
        println!("telnet over TLS listening on {a}");
    }
    println!("metrics on http://{metrics}/metrics");
    crate::ready::Announcement::new("telnet-gateway", args.id.clone())
        .addr("telnet", bound)
        .addr_opt("telnet_tls", tls_bound)
        .addr("metrics", metrics)
        .announce()?;
    // An accept loop that dies ends the process non-zero at once (the gateway holds no
    // lease; Kubernetes restarts it).
    tessera_gateway::run(gateway.clone(), listener, tls, crate::up::shutdown_signal()).await?;
    println!("telnet gateway {} stopped", args.id);
    Ok(())
}
