//! `tessera ctl`: the operator's view of a running cluster (status, shards, cells, top) and
//! the requests that change it (move, split, merge, drain, rebalance, roles, assets, backups,
//! operators), each signed with the operator's credential and checked by the server that acts
//! on it (docs/operations.md, docs/security.md).

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_coordinator::authority::Signer;
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::migration::drain;
use tessera_coordinator::operators::OperatorKey;
use tessera_coordinator::pki::MemberIdentity;
use tessera_coordinator::rebalance::RebalanceConfig;
use tessera_coordinator::{ClusterStore, EtcdStore};
use tessera_proto::ShardId;

use crate::roles::{positive_f64, service_addr, PlannerArgs};

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
    /// Replace everything in the persistence service with the backup FILE.
    /// The service refuses while shards are checkpointing into it (the
    /// running cluster would overwrite what is restored): stop the shards
    /// first.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        store: BackupStore,
        /// Restore even while shards are live.
        #[arg(long)]
        force: bool,
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
    /// Move every cell of a shard to the other shards (live migration); the
    /// shard stays cordoned (given no cells) until it restarts or is uncordoned.
    Drain { shard: String },
    /// Lift a shard's drain mark, so the rebalancer gives it cells again.
    Uncordon { shard: String },
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
        CtlCommand::Restore { file, store, force } => {
            let db = store.connect(args)?.forcing(*force);
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
    };
    let store = crate::connect_etcd(&args.etcd, &tls).await?;
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
    if let CtlCommand::Uncordon { shard } = &args.command {
        let id = ShardId::new(shard.clone());
        if tessera_coordinator::migration::uncordon(&store, &args.prefix, &id).await? {
            println!("uncordoned {shard}: the rebalancer may give it cells again");
        } else {
            println!("{shard} was not cordoned");
        }
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
            | CtlCommand::Uncordon { .. }
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
