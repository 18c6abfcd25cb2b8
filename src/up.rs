//! `tessera up`: every role in one process, wired through the in-process
//! cluster store and bus. The same role libraries run as separate processes
//! in a cluster.

use crate::UpArgs;
use anyhow::Context;
use std::sync::Arc;
use tessera_auth::Auth;
use tessera_coordinator::{cellmap, placement, Bus, CellMap, ClusterStore, LocalBus, MemStore};
use tessera_persistence::Database;
use tessera_proto::{RouterId, ShardId};
use tessera_router::{Router, RouterConfig};
use tessera_shard::ShardConfig;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let merge_below = tessera_coordinator::rebalance::RebalanceConfig::default().merge_below;
    let above = args.split_above.partial_cmp(&merge_below) == Some(std::cmp::Ordering::Greater);
    if !args.no_split && !above {
        anyhow::bail!(
            "--split-above ({}) must be above the merge threshold ({merge_below}): a region \
             would split and merge back in turn",
            args.split_above
        );
    }
    // Checks --etcd-ca, --etcd-cert and --etcd-key against --etcd (they
    // need it, and https:// needs them).
    args.etcd_tls.config(&args.etcd)?;
    if !args.etcd.is_empty() {
        return run_on_etcd(args).await;
    }
    // Metrics first, so every role records from the start.
    let metrics_addr = crate::metrics_http::install(args.metrics).await?;

    let world = tessera_shard::worldfile::load_world_dir(&args.world)
        .with_context(|| format!("cannot load the world from {}", args.world.display()))?;
    let world = Arc::new(world);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let db = Database::open_redb(&args.data_dir.join("tessera.redb"))
        .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?;
    let auth = Arc::new(
        Auth::with_limits(
            db.clone(),
            &args.data_dir.join("auth-signing.key"),
            args.abuse.rate_limits(),
        )
        .context("cannot open auth")?,
    );
    tokio::spawn(tessera_auth::sweep_revoked_every(
        auth.clone(),
        tessera_auth::REVOKED_SWEEP_INTERVAL,
    ));

    // Coordinator: place every cell of the world on the shards.
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let prefix = tessera_coordinator::DEFAULT_PREFIX;
    let shard_ids: Vec<ShardId> = (1..=args.shards)
        .map(|i| ShardId::new(format!("shard-{i}")))
        .collect();
    let cells: Vec<_> = world.extent.cells().collect();
    let plan = placement::stripes(&cells, &shard_ids);
    cellmap::place_unowned(&*store, prefix, &plan).await?;
    let map = CellMap::watch(store.clone(), prefix).await?;

    let bus = LocalBus::new();
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let mut shards = Vec::new();
    // The cluster CA (in <data-dir>/cluster-ca): the chat service's TLS and
    // the operators' credentials (`tessera ca operator NAME --cluster-ca ...`).
    let ca_dir = args.data_dir.join("cluster-ca");
    let ca = tessera_coordinator::pki::ClusterCa::load_or_create(&ca_dir)?;
    // Operators are files in the CA directory's operators/ (`tessera ca
    // operator NAME --cluster-ca data/cluster-ca` adds one).
    let operators = tessera_coordinator::operators::Operators::in_dir(
        ca_dir.join("operators"),
        ca.trust().to_vec(),
    );
    let (assets_url, assets_addr) = serve_assets(&args, &db, operators.clone(), &world).await?;

    // Every migration, split and merge request is checked here as in a
    // cluster: members' certificates against the CA, operators' keys.
    let cluster_key = tessera_coordinator::authority::ClusterTrust::new(ca.trust().to_vec())
        .with_operators(
            tessera_coordinator::operators::OperatorCache::follow(operators.clone()).await,
        );
    let mut script_updates = Vec::new();
    let mut registrations = Vec::new();
    for id in &shard_ids {
        let inbox = bus.add_shard(id.clone());
        let mut config = ShardConfig::new(id.clone());
        config.tick_hz = args.tick_hz;
        let (tx, rx) = crossbeam_channel::unbounded();
        script_updates.push(tx);
        config.script_updates = Some(rx);
        // The world persists across restarts: cells reopen from their checkpoints.
        config.checkpoints = Some(tessera_shard::checkpoint::Checkpointing {
            db: db.clone(),
            interval: std::time::Duration::from_secs(1),
        });
        // A cluster member like any shard: it follows migrations, is
        // registered under a lease and reports its load, so the
        // coordinator below can rebalance, split and merge.
        let board = tessera_coordinator::migration::MigrationBoard::watch(
            store.clone(),
            prefix,
            Some(cluster_key.clone()),
        )
        .await?;
        let (notice_tx, notices) = tokio::sync::mpsc::unbounded_channel();
        let sim = tessera_shard::Shard::new(config, world.clone(), dyn_bus.clone(), map.clone())
            .with_context(|| format!("cannot start {id}"))?
            .with_migrations(board, notice_tx);
        let handle =
            tessera_shard::spawn_shard(sim, inbox).with_context(|| format!("cannot start {id}"))?;
        tessera_shard::member::record_restored(
            store.clone(),
            prefix.to_string(),
            id.clone(),
            notices,
        );
        let registration = tessera_coordinator::membership::ShardRegistration {
            addr: ([127, 0, 0, 1], 0).into(),
            node: "tessera-up".into(),
            capacity: 1,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let reg = tessera_coordinator::membership::Registration::register(
            store.clone(),
            tessera_coordinator::membership::shard_key(prefix, id),
            serde_json::to_vec(&registration)?,
            std::time::Duration::from_secs(3),
        )
        .await?;
        tessera_shard::member::publish_load(
            store.clone(),
            tessera_coordinator::membership::load_key(prefix, id),
            reg.lease,
            handle.load.clone(),
        );
        registrations.push(reg);
        shards.push(handle);
    }
    // The coordinator: failover, rebalancing, splits and merges, with the
    // same policy as in a cluster (`--no-rebalance` and `--no-split` turn
    // parts of it off).
    let rebalance = (!args.no_rebalance).then(|| {
        let mut r = tessera_coordinator::rebalance::RebalanceConfig {
            max_depth: tessera_coordinator::reshape::max_depth(
                world.cell_size,
                tessera_coordinator::reshape::MIN_REGION_SIDE,
            ),
            ..Default::default()
        };
        r.split_above = args.split_above;
        if args.no_split {
            r.split_above = f64::INFINITY;
            r.merge_below = f64::NEG_INFINITY;
        }
        r
    });
    let coordinator = tokio::spawn(tessera_coordinator::control::run(
        tessera_coordinator::control::CoordinatorConfig {
            id: "coordinator-up".into(),
            prefix: prefix.to_string(),
            cells: cells.clone(),
            lease_ttl: std::time::Duration::from_secs(3),
            interval: std::time::Duration::from_millis(250),
            settle: std::time::Duration::ZERO,
            authority: Some(cluster_key.with_identity(Arc::new(ca.member(
                tessera_coordinator::identity::MemberRole::Coordinator,
                "coordinator-up",
            )?))),
            rebalance,
            grid: tessera_proto::Grid::new(world.cell_size),
            min_region_side: tessera_coordinator::reshape::MIN_REGION_SIDE,
            // Shards here are threads of this process: they die with it.
            liveness: None,
        },
        store.clone(),
        shutdown_signal(),
    ));
    // One manifest poller for every shard of this process.
    crate::services::watch_scripts(assets_url, &world.scripts, script_updates)?;

    let router_id = RouterId("router-1".into());
    let mut rc = RouterConfig::new(router_id.clone(), args.data_dir.clone());
    rc.telnet = args.telnet;
    rc.telnet_tls = args.telnet_tls.config();
    rc.quic = args.quic;
    rc.tick_hz = args.tick_hz;
    rc.max_connections = args.max_connections;
    rc.idle_timeout = std::time::Duration::from_secs(args.idle_timeout_secs.max(1));
    rc.login_timeout = std::time::Duration::from_secs(args.login_timeout_secs);
    rc.connections_per_address = args.abuse.connections_per_address;
    rc.limit_exempt = args.abuse.limit_exempt.clone();
    rc.spawn_radius = args.spawn_radius.max(0.0);
    args.web.apply(&mut rc, Some(crate::UP_WEB_ADDR));
    let router_inbox = bus.add_router(router_id);
    // The chat service, in this process but over real QUIC like anywhere
    // else; the account service on a loopback port too, for `tessera ctl
    // role` (the router itself keeps using the same accounts in process).
    let (auth_server, chat) = front_services(&ca, auth.clone(), operators.clone(), &db)?;
    let chat_link = crate::services::chat_client(
        &ca.member(
            tessera_coordinator::identity::MemberRole::Router,
            "router-1",
        )?,
        chat.local_addr()?,
        "router-1",
    )?;
    let router = Router::new(
        rc,
        world.clone(),
        dyn_bus.clone(),
        map.clone(),
        tessera_auth::Accounts::local(auth),
        Some(chat_link),
        db,
    );
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let router_task = tokio::spawn(tessera_router::run(
        router,
        router_inbox,
        ready_tx,
        shutdown_signal(),
    ));
    let addrs = match ready_rx.await {
        Ok(a) => a,
        Err(_) => {
            // The router failed before binding; its error says why.
            return match router_task.await {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(())) => Err(anyhow::anyhow!("router stopped before it was ready")),
                Err(e) => Err(e.into()),
            };
        }
    };
    println!(
        "Tessera is up: world '{}', {} cells on {} shards, {} Hz.",
        world.name,
        cells.len(),
        shard_ids.len(),
        args.tick_hz
    );
    println!(
        "telnet listening on {}   (try: telnet {} {})",
        addrs.telnet,
        connect_host(addrs.telnet),
        addrs.telnet.port()
    );
    if let Some(a) = addrs.telnet_tls {
        println!(
            "telnet over TLS listening on {a}   (try: openssl s_client -connect {}:{}; \
             plain telnet is cleartext)",
            connect_host(a),
            a.port()
        );
    }
    println!(
        "quic listening on {}   (certificate to pin: {})",
        addrs.quic,
        addrs.cert_path.display()
    );
    if let Some(web) = addrs.web {
        println!(
            "play in a browser: {}   (the web client; scripts/build-web.sh builds it)",
            tessera_router::web::page_url(web)
        );
    }
    println!("metrics on http://{metrics_addr}/metrics");
    println!(
        "auth on {}, chat on {}   (cluster CA {})",
        auth_server.local_addr()?,
        chat.local_addr()?,
        ca_dir.display(),
    );
    println!(
        "operators: tessera ca operator ops --cluster-ca {} --out ops.json writes ops.json, the \
         credential that `ctl asset put` and every other ctl command that changes something \
         needs (--credential ops.json)",
        ca_dir.display()
    );
    println!("Press Ctrl-C to stop; state is saved on the way out.");
    up_announcement(&addrs, metrics_addr, assets_addr)
        .addr("auth", auth_server.local_addr()?)
        .addr("chat", chat.local_addr()?)
        .announce()?;
    router_task.await??;
    auth_server.close();
    chat.close();
    coordinator.abort();
    for s in shards {
        s.stop();
    }
    for r in registrations {
        r.revoke().await;
    }
    println!("Tessera stopped; state saved.");
    Ok(())
}

/// The account and chat services of `tessera up`, on loopback ports, with
/// certificates from the cluster CA `ca`.
fn front_services(
    ca: &tessera_coordinator::pki::ClusterCa,
    auth: Arc<Auth>,
    operators: tessera_coordinator::operators::Operators,
    db: &Database,
) -> anyhow::Result<(tessera_auth::remote::AuthServer, tessera_chat::ChatServer)> {
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let auth = tessera_auth::remote::AuthServer::start(
        auth,
        operators,
        loopback,
        ca.member(tessera_coordinator::identity::MemberRole::Auth, "auth")?
            .server_config_for(tessera_auth::remote::AUTH_ALPN)?,
        false,
    )?;
    let chat = tessera_chat::ChatServer::start(
        db.clone(),
        loopback,
        ca.member(tessera_coordinator::identity::MemberRole::Chat, "chat")?
            .server_config_for(tessera_chat::CHAT_ALPN)?,
        tessera_chat::ChatLimits::default(),
    )?;
    Ok((auth, chat))
}

/// Starts the asset service on `--assets-listen` (uploads signed by
/// operators of the CA in `ca_dir`, scripts checked against `world`);
/// returns its URL for the shards and the address it got.
async fn serve_assets(
    args: &UpArgs,
    db: &Database,
    operators: tessera_coordinator::operators::Operators,
    world: &tessera_proto::world::WorldDef,
) -> anyhow::Result<(String, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(args.assets_listen)
        .await
        .with_context(|| format!("cannot listen for assets on {}", args.assets_listen))?;
    let addr = listener.local_addr()?;
    let url = format!(
        "http://{}:{}",
        if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        },
        addr.port()
    );
    let config = crate::services::asset_config(operators, Some(world));
    publish_world(db, &args.world).await?;
    let db = db.clone();
    tokio::spawn(async move {
        if let Err(e) = tessera_asset::serve(listener, db, config).await {
            tracing::error!(error = %e, "asset service stopped");
        }
    });
    println!(
        "assets on {url}   (upload: tessera ctl --credential ops.json asset --assets {url} put \
         scripts/NAME.rhai FILE)"
    );
    Ok((url, addr))
}

/// Puts the world definition's `world.toml` into the asset store, so 3D
/// clients fetch what the shards simulate (`GET /v1/assets/world.toml`).
/// Writes nothing when the stored copy is already the same.
async fn publish_world(db: &Database, world_dir: &std::path::Path) -> anyhow::Result<()> {
    let path = world_dir.join("world.toml");
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let store = tessera_asset::AssetStore::new(db.clone());
    let name = tessera_asset::AssetName::parse("world.toml").map_err(anyhow::Error::msg)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    tokio::task::spawn_blocking(move || store.put(&name, &text, "tessera-up", now_ms))
        .await?
        .context("cannot publish world.toml to the asset store")?;
    Ok(())
}

/// The registration lease of the members `tessera up --etcd` runs (`tessera shard`'s default).
const MEMBER_LEASE: std::time::Duration = std::time::Duration::from_secs(20);

/// `tessera up --etcd URL`: the cluster roles, each a real member (QUIC
/// bus with mutual TLS, registrations under leases, signed migrations), in
/// one process against a real etcd. The cluster CA is created in
/// `<data-dir>/cluster-ca` if missing; the persistence service serves
/// `<data-dir>/tessera.redb` to the shards (checkpoints) and the router.
async fn run_on_etcd(args: UpArgs) -> anyhow::Result<()> {
    use std::time::Duration;
    use tessera_coordinator::identity::MemberRole;
    use tessera_coordinator::member::Membership;
    use tessera_coordinator::pki::ClusterCa;
    let metrics_addr = crate::metrics_http::install(args.metrics).await?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let ca_dir = args.data_dir.join("cluster-ca");
    let ca = ClusterCa::load_or_create(&ca_dir)?;
    let db = Database::open_redb(&args.data_dir.join("tessera.redb"))
        .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?;
    // The front services, each on its own QUIC port with the cluster's TLS.
    let accounts = Arc::new(Auth::with_limits(
        db.clone(),
        &args.data_dir.join("auth-signing.key"),
        args.abuse.rate_limits(),
    )?);
    tokio::spawn(tessera_auth::sweep_revoked_every(
        accounts.clone(),
        tessera_auth::REVOKED_SWEEP_INTERVAL,
    ));
    // The operators are in etcd, as for any cluster.
    let operators = crate::operator::OperatorsArgs {
        etcd: args.etcd.clone(),
        etcd_tls: args.etcd_tls.clone(),
        prefix: tessera_coordinator::DEFAULT_PREFIX.to_string(),
    }
    .operators(&ca_dir)
    .await?;
    let (auth, chat) = front_services(&ca, accounts, operators.clone(), &db)?;
    let auth_addr = auth.local_addr()?;
    let chat_addr = chat.local_addr()?;
    let world = Arc::new(
        tessera_shard::worldfile::load_world_dir(&args.world)
            .with_context(|| format!("cannot load the world from {}", args.world.display()))?,
    );
    let (assets_url, assets_addr) = serve_assets(&args, &db, operators.clone(), &world).await?;
    let persistence = tessera_persistence::remote::PersistenceServer::start(
        db,
        "127.0.0.1:0".parse()?,
        ca.member(
            tessera_coordinator::identity::MemberRole::Persistence,
            "persistence",
        )?
        .server_config_for(tessera_persistence::remote::PERSISTENCE_ALPN)?,
        Some(operators.clone()),
        // This process's router keeps its accounts in process; members joining from
        // elsewhere get their roles' keys only.
        tessera_persistence::spaces::KeySpaces::default(),
    )?;
    let store_addr = persistence.local_addr()?;

    // Each role is the same library member a cluster runs, given its config here.
    let etcd = args.etcd.join(",");
    let store: Arc<dyn ClusterStore> =
        Arc::new(crate::connect_etcd(&args.etcd, &args.etcd_tls).await?);
    let trust = tessera_coordinator::authority::ClusterTrust::new(ca.trust().to_vec())
        .with_operators(tessera_coordinator::operators::OperatorCache::follow(operators).await);
    let member = |role: MemberRole, name: &str| -> anyhow::Result<Arc<_>> {
        Ok(Arc::new(ca.member(role, name)?))
    };
    let membership = |identity| Membership {
        store: store.clone(),
        prefix: args.prefix.clone(),
        identity,
        listen: "127.0.0.1:0".parse().expect("an address"),
        advertise: None,
        lease_ttl: MEMBER_LEASE,
        cluster_format: tessera_coordinator::transport::CLUSTER_FORMAT,
    };
    let mut roles = tokio::task::JoinSet::new();
    let coordinator = crate::roles::coordinator_config(
        "coordinator-up".into(),
        args.prefix.clone(),
        &world,
        crate::roles::Timing {
            lease_ttl: Duration::from_secs(3),
            settle: Duration::from_millis(500),
        },
        trust
            .clone()
            .with_identity(member(MemberRole::Coordinator, "coordinator-up")?),
        Some(tessera_coordinator::rebalance::RebalanceConfig::default()),
        tessera_coordinator::reshape::MIN_REGION_SIDE,
    )?;
    let leader_store = store.clone();
    roles.spawn(async move {
        tessera_coordinator::control::run(coordinator, leader_store, shutdown_signal()).await?;
        Ok(())
    });
    for i in 1..=args.shards {
        let id = ShardId::new(format!("shard-{i}"));
        let identity = member(MemberRole::Shard, &id.0)?;
        let db = crate::roles::persistence_client(&identity, store_addr)?;
        let shard = crate::roles::shard_config(
            id,
            args.tick_hz,
            Some(db),
            Duration::from_secs(1),
            Some(&assets_url),
            &world,
        )?;
        let config = tessera_shard::member::MemberConfig {
            shard,
            world: world.clone(),
            trust: trust.clone().with_identity(identity.clone()),
            membership: membership(identity),
            capacity: 1,
            node: "localhost".into(),
            // Everything stops together: nowhere to drain to.
            drain_timeout: Duration::ZERO,
        };
        let (state, _) = tokio::sync::watch::channel(tessera_shard::member::ShardState::Starting);
        roles.spawn(async move {
            tessera_shard::member::run(config, shutdown_signal(), state).await?;
            Ok(())
        });
    }
    let router_id = RouterId("router-1".into());
    let identity = member(MemberRole::Router, &router_id.0)?;
    let (db, accounts, chat_link) = crate::roles::router_services(
        &identity,
        &router_id,
        &args.data_dir,
        crate::roles::Backends {
            persistence: Some(store_addr),
            auth: Some(auth_addr),
            chat: Some(chat_addr),
        },
        args.abuse.rate_limits(),
    )?;
    let mut rc = RouterConfig::new(router_id, args.data_dir.clone());
    rc.telnet = args.telnet;
    rc.telnet_tls = args.telnet_tls.config();
    rc.quic = args.quic;
    rc.tick_hz = args.tick_hz;
    rc.login_timeout = Duration::from_secs(args.login_timeout_secs);
    rc.connections_per_address = args.abuse.connections_per_address;
    rc.limit_exempt = args.abuse.limit_exempt.clone();
    args.web.apply(&mut rc, Some(crate::UP_WEB_ADDR));
    let router = tessera_router::member::MemberConfig {
        router: rc,
        world: world.clone(),
        membership: membership(identity),
        accounts,
        chat: chat_link,
        db,
    };
    let (state, mut serving) =
        tokio::sync::watch::channel(tessera_router::member::RouterState::Starting);
    roles.spawn(async move {
        tessera_router::member::run(router, shutdown_signal(), state).await?;
        Ok(())
    });
    tokio::spawn(async move {
        if serving
            .wait_for(|s| matches!(s, tessera_router::member::RouterState::Serving { .. }))
            .await
            .is_ok()
        {
            if let tessera_router::member::RouterState::Serving { addrs, .. } = &*serving.borrow() {
                println!("{addrs}");
                up_announcement(addrs, metrics_addr, assets_addr)
                    .addr("persistence", store_addr)
                    .addr("auth", auth_addr)
                    .addr("chat", chat_addr)
                    .announce_or_log();
            }
        }
    });
    println!(
        "Tessera is up on etcd {etcd} (prefix {}): a coordinator, {} shards, a router, \
         persistence at {store_addr}, auth at {auth_addr}, chat at {chat_addr}; cluster CA in \
         {}; metrics on http://{metrics_addr}/metrics",
        args.prefix,
        args.shards,
        ca_dir.display()
    );
    // Every role stops on Ctrl-C or SIGTERM; the first failure stops the rest.
    let mut result = Ok(());
    while let Some(done) = roles.join_next().await {
        let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            if result.is_ok() {
                result = Err(e);
                roles.abort_all();
            }
        }
    }
    chat.close();
    auth.close();
    persistence.close();
    if result.is_ok() {
        println!("Tessera stopped; state saved.");
    }
    result
}

/// What `tessera up` announces in its ready file, either way it runs: the router's ports and
/// certificate, metrics and assets (the callers add the services they started).
fn up_announcement(
    addrs: &tessera_router::RouterAddrs,
    metrics: std::net::SocketAddr,
    assets: std::net::SocketAddr,
) -> crate::ready::Announcement {
    crate::ready::Announcement::new("up", "tessera")
        .addr("telnet", addrs.telnet)
        .addr_opt("telnet_tls", addrs.telnet_tls)
        .addr("quic", addrs.quic)
        .addr_opt("web", addrs.web)
        .addr("metrics", metrics)
        .addr("assets_listen", assets)
        .file("quic_cert", &addrs.cert_path)
}

fn connect_host(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        "localhost".into()
    } else {
        addr.ip().to_string()
    }
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
