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
    /// commands that change the cluster (move, drain, ...) or its assets
    /// (asset put, rollback, rm).
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
    /// Assets: upload, roll back and remove (operators), list, download,
    /// history.
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
    /// a script reload it within seconds. The service refuses a script that
    /// does not compile (with its line and column), a name outside
    /// `scripts/<name>.rhai`, and a script no NPC of the world runs (unless
    /// --force). Needs an operator credential.
    Put {
        name: String,
        file: PathBuf,
        /// Accept a script no NPC of the world runs (e.g. for an NPC the next
        /// world adds); it is still compiled.
        #[arg(long)]
        force: bool,
    },
    /// Every script the world runs (from the world folder or an upload, and
    /// which one is in effect), then every other asset.
    Ls,
    /// Download the running version of asset NAME to FILE (`-`: standard
    /// output); for a script that no upload overrides, the world folder's.
    Get { name: String, file: PathBuf },
    /// The versions of asset NAME: uploads, rollbacks and removals, oldest
    /// first, and which one is in effect.
    History { name: String },
    /// Make an earlier version of NAME current again: HASH (or a unique
    /// prefix of it, from `history`), by default the version in effect
    /// before the current one. Needs an operator credential.
    Rollback { name: String, hash: Option<String> },
    /// Remove the upload of NAME; for a script the world folder's version
    /// runs again. Needs an operator credential.
    Rm { name: String },
}

/// What an upload or a rollback did, for `--json`.
fn put_result_json(r: &tessera_asset::PutResult) -> serde_json::Value {
    serde_json::json!({"name": r.name, "hash": r.hash, "size": r.size, "changed": r.changed})
}

/// `tessera ctl asset ...`: blocking HTTP, off the async threads.
async fn ctl_asset(args: &CtlArgs, url: &str, command: &AssetCommand) -> anyhow::Result<()> {
    let client = tessera_asset::AssetClient::new(url);
    let credential = match command {
        AssetCommand::Put { .. } | AssetCommand::Rollback { .. } | AssetCommand::Rm { .. } => {
            Some(operator_credential(args)?)
        }
        _ => None,
    };
    let (command, json) = (command.clone(), args.json);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let credential = || credential.as_ref().expect("an operator's credential");
        match command {
            AssetCommand::Put { name, file, force } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let put = if force {
                    client.put_forced(&name, &bytes, credential())
                } else {
                    client.put(&name, &bytes, credential())
                }
                .map_err(asset_error)?;
                if json {
                    println!("{}", put_result_json(&put));
                    return Ok(());
                }
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
                let scripts = client.scripts()?;
                if json {
                    // The manifest's fields, and the scripts.
                    let mut out = serde_json::to_value(&manifest)?;
                    out["scripts"] = serde_json::to_value(&scripts)?;
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    return Ok(());
                }
                print!("{}", asset_listing(&manifest, &scripts));
            }
            AssetCommand::Get { name, file } => {
                let got = client.get_running(&name)?;
                if file.as_os_str() == "-" {
                    use std::io::Write;
                    std::io::stdout().write_all(&got.bytes)?;
                } else {
                    std::fs::write(&file, &got.bytes)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    eprintln!(
                        "wrote {} bytes to {} (the {} version, blake3 {})",
                        got.bytes.len(),
                        file.display(),
                        got.source.as_str(),
                        short(&got.hash)
                    );
                }
            }
            AssetCommand::History { name } => {
                let history = client.history(&name)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&history_json(&history))?);
                    return Ok(());
                }
                print!("{}", history_listing(&history));
            }
            AssetCommand::Rollback { name, hash } => {
                let history = client.history(&name)?;
                let target = rollback_target(&history, hash.as_deref())?;
                let done = client
                    .rollback(&name, &target, credential())
                    .map_err(asset_error)?;
                if json {
                    println!("{}", put_result_json(&done));
                } else if done.changed {
                    println!(
                        "rolled back {} to {} ({} bytes)",
                        done.name, done.hash, done.size
                    );
                } else {
                    println!("unchanged: {} already runs {}", done.name, done.hash);
                }
            }
            AssetCommand::Rm { name } => {
                let removed = client.remove(&name, credential()).map_err(asset_error)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": removed.name, "removed": removed.removed,
                            "in_effect": removed.in_effect,
                        })
                    );
                } else {
                    match &removed.in_effect {
                        Some(world) => println!(
                            "removed the upload of {} ({}); the world folder's version runs \
                             again (blake3 {})",
                            removed.name,
                            short(&removed.removed),
                            short(&world.hash)
                        ),
                        None => println!("removed {} ({})", removed.name, short(&removed.removed)),
                    }
                }
            }
        }
        Ok(())
    })
    .await?
}

/// A refused script as the service explains it (what is wrong and what to
/// do), without the URL and status around it; anything else as it is.
fn asset_error(e: tessera_asset::AssetError) -> anyhow::Error {
    match e {
        tessera_asset::AssetError::ScriptRefused { message, .. } => {
            anyhow::anyhow!("the asset service refused it: {message}")
        }
        other => other.into(),
    }
}

/// The first 16 hex digits of a hash.
fn short(hash: &str) -> &str {
    &hash[..16.min(hash.len())]
}

/// `YYYY-MM-DD HH:MM:SSZ` (UTC) of unix milliseconds.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `ctl asset ls`: the scripts (each world and upload version, and which
/// is in effect), then the other assets.
fn asset_listing(
    manifest: &tessera_asset::Manifest,
    scripts: &tessera_asset::scripts::ScriptsView,
) -> String {
    use std::fmt::Write;
    use tessera_asset::scripts::ScriptSource;
    let mut out = String::new();
    match &scripts.world {
        Some(world) => {
            let _ = writeln!(out, "scripts of world {world:?}:");
        }
        None => {
            let _ = writeln!(
                out,
                "scripts (the asset service has no world: only uploads are listed):"
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<32} {:<7} {:<10} {:>9}  {:<16}  CHANGED",
        "NAME", "SOURCE", "IN EFFECT", "BYTES", "BLAKE3"
    );
    for script in &scripts.scripts {
        let mut rows = Vec::new();
        if let Some(upload) = &script.upload {
            rows.push((
                ScriptSource::Upload,
                upload.size,
                upload.hash.as_str(),
                format!("{} by {}", utc(upload.updated_unix_ms), upload.by),
            ));
        }
        if let Some(world) = &script.world {
            rows.push((
                ScriptSource::World,
                world.size,
                world.hash.as_str(),
                String::new(),
            ));
        }
        for (source, size, hash, changed) in rows {
            let in_effect = if source == script.in_effect {
                "yes"
            } else {
                "no"
            };
            let _ = writeln!(
                out,
                "{:<32} {:<7} {:<10} {size:>9}  {:<16}  {changed}",
                script.name,
                source.as_str(),
                in_effect,
                short(hash)
            );
        }
        if !script.used && scripts.world.is_some() {
            let _ = writeln!(out, "{:<32} (no NPC of the world runs it)", "");
        }
    }
    let others: Vec<_> = manifest
        .assets
        .iter()
        .filter(|(name, _)| tessera_asset::scripts::script_stem(name).is_none())
        .collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\nother assets:");
        for (name, e) in others {
            let _ = writeln!(
                out,
                "{name:<40} {:>9}  {:<16}  {}",
                e.size,
                short(&e.hash),
                utc(e.updated_unix_ms)
            );
        }
    }
    let _ = writeln!(out, "\nmanifest version {}", manifest.version);
    out
}

/// `ctl asset history NAME`.
fn history_listing(history: &tessera_asset::HistoryView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let in_effect = match (&history.in_effect, &history.current, &history.world) {
        (_, Some(current), _) => format!("the upload {}", short(&current.hash)),
        (_, None, Some(world)) => format!("the world folder's version {}", short(&world.hash)),
        _ => "nothing (removed)".to_string(),
    };
    let _ = writeln!(out, "{}: in effect: {in_effect}", history.name);
    if let Some(world) = &history.world {
        let _ = writeln!(
            out,
            "world folder: {} ({} bytes)",
            short(&world.hash),
            world.size
        );
    }
    if history.entries.is_empty() {
        let _ = writeln!(out, "never uploaded");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<8}  {:<64}  {:>9}  {:<20}  BY",
        "#", "ACTION", "BLAKE3", "BYTES", "WHEN"
    );
    let current = history.current.as_ref().map(|c| c.hash.as_str());
    let last_effect = history
        .entries
        .iter()
        .rposition(|e| e.hash.is_some() && e.hash.as_deref() == current);
    for (i, e) in history.entries.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>4}  {:<8}  {:<64}  {:>9}  {:<20}  {}{}",
            e.seq,
            e.action.as_str(),
            e.hash.as_deref().unwrap_or("-"),
            e.size.map_or("-".to_string(), |s| s.to_string()),
            utc(e.unix_ms),
            e.by,
            if Some(i) == last_effect {
                "  <- in effect"
            } else {
                ""
            }
        );
    }
    match &history.previous {
        Some(previous) => {
            let _ = writeln!(
                out,
                "`ctl asset rollback {}` goes back to {}",
                history.name,
                short(previous)
            );
        }
        None if history.current.is_none() && !history.entries.is_empty() => {
            let _ = writeln!(
                out,
                "no upload is in effect; `ctl asset rollback {} HASH` makes one of the \
                 versions above current again",
                history.name
            );
        }
        None => {}
    }
    out
}

fn history_json(history: &tessera_asset::HistoryView) -> serde_json::Value {
    serde_json::json!({
        "name": history.name,
        "in_effect": history.in_effect,
        "current": history.current,
        "world": history.world,
        "previous": history.previous,
        "entries": history.entries,
    })
}

/// The version `ctl asset rollback NAME [HASH]` goes to: the one of the
/// history `hash` starts (at least 4 hex digits, one version only), or the
/// version in effect before the current one.
fn rollback_target(
    history: &tessera_asset::HistoryView,
    hash: Option<&str>,
) -> anyhow::Result<String> {
    let Some(prefix) = hash else {
        return history
            .previous
            .clone()
            .ok_or_else(|| match &history.current {
                None => anyhow::anyhow!(
                    "no upload of {} is in effect; name the version to make current \
                 (`tessera ctl asset history {}` lists them)",
                    history.name,
                    history.name
                ),
                Some(_) => anyhow::anyhow!(
                    "{} has no version before the current one; `tessera ctl asset rm {}` \
                 brings back the world folder's",
                    history.name,
                    history.name
                ),
            });
    };
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < 4 {
        anyhow::bail!("give at least 4 hex digits of the version's hash");
    }
    let mut matches: Vec<&str> = history
        .entries
        .iter()
        .filter_map(|e| e.hash.as_deref())
        .filter(|h| h.starts_with(&prefix))
        .collect();
    matches.sort_unstable();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => anyhow::bail!(
            "{} has no version {prefix}… in its history (`tessera ctl asset history {}` lists them)",
            history.name,
            history.name
        ),
        _ => anyhow::bail!(
            "{prefix}… matches {} versions of {}; give more digits",
            matches.len(),
            history.name
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_asset::{HistoryAction, HistoryEntry, HistoryView};

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    fn history(hashes: &[&str], previous: Option<&str>, current: bool) -> HistoryView {
        HistoryView {
            name: "scripts/a.rhai".into(),
            in_effect: None,
            current: current.then(|| tessera_asset::AssetRecord {
                hash: hashes.last().unwrap().to_string(),
                size: 1,
                content_type: String::new(),
                updated_unix_ms: 0,
                by: String::new(),
            }),
            world: None,
            previous: previous.map(str::to_string),
            entries: hashes
                .iter()
                .enumerate()
                .map(|(i, h)| HistoryEntry {
                    format: 1,
                    seq: i as u64 + 1,
                    action: HistoryAction::Upload,
                    hash: Some(h.to_string()),
                    size: Some(1),
                    unix_ms: 0,
                    by: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_rollback_names_one_version_of_the_history() {
        let h = history(
            &["abcd1111", "abcd2222", "ef001111"],
            Some("abcd2222"),
            true,
        );
        assert_eq!(rollback_target(&h, None).unwrap(), "abcd2222");
        assert_eq!(rollback_target(&h, Some("EF00")).unwrap(), "ef001111");
        assert_eq!(rollback_target(&h, Some("abcd1")).unwrap(), "abcd1111");
        let err = rollback_target(&h, Some("abcd")).unwrap_err().to_string();
        assert!(err.contains("matches 2 versions"), "{err}");
        assert!(rollback_target(&h, Some("abc")).is_err());
        let err = rollback_target(&h, Some("9999")).unwrap_err().to_string();
        assert!(err.contains("no version 9999"), "{err}");
        let first = history(&["abcd1111"], None, true);
        let err = rollback_target(&first, None).unwrap_err().to_string();
        assert!(err.contains("asset rm"), "{err}");
        let removed = history(&["abcd1111"], None, false);
        let err = rollback_target(&removed, None).unwrap_err().to_string();
        assert!(err.contains("no upload"), "{err}");
    }
}
