//! Operators on the command line: where the services that act on operator requests find the
//! operators (`--etcd` or the CA directory's `operators/`), `tessera ca operator NAME` (a key
//! pair, and the first operators vouched for by the CA), and `tessera ctl operator
//! add|list|revoke|keygen` (docs/security.md).

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_coordinator::operators::{OperatorKey, OperatorRecord, Operators, Voucher};
use tessera_coordinator::pki::ClusterCa;
use tessera_coordinator::ClusterStore;

/// Where a service that acts on operator requests (`tessera auth`, `tessera persistence`,
/// `tessera assets`) reads the operators and records used nonces.
#[derive(Args, Debug, Clone)]
pub struct OperatorsArgs {
    /// etcd endpoints of the cluster (the operators are under `<prefix>operators/`). Without
    /// it, the operators are the files in `<cluster-ca>/operators/` and this process alone
    /// remembers used requests (one replica only).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub etcd_tls: crate::EtcdTlsArgs,
    /// Key prefix in etcd.
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    pub prefix: String,
}

impl OperatorsArgs {
    /// The operators, trusting the CA certificate in `cluster_ca`.
    pub async fn operators(&self, cluster_ca: &Path) -> anyhow::Result<Operators> {
        let trusted = tessera_coordinator::pki::load_trust(cluster_ca)?;
        if self.etcd.is_empty() {
            return Ok(Operators::in_dir(cluster_ca.join("operators"), trusted));
        }
        let store: Arc<dyn ClusterStore> =
            Arc::new(crate::connect_etcd(&self.etcd, &self.etcd_tls).await?);
        Ok(Operators::in_store(store, &self.prefix, trusted))
    }
}

/// `tessera ca operator NAME`: a new key pair in a credential file, and, with the CA key at
/// hand, the operator's record vouched for by the CA (in etcd with `--etcd`, else in
/// `<cluster-ca>/operators/` for `tessera up`).
pub async fn ca_operator(
    name: String,
    cluster_ca: PathBuf,
    out: Option<PathBuf>,
    revouch: bool,
    store: OperatorsArgs,
) -> anyhow::Result<()> {
    let ca = ClusterCa::load(&cluster_ca)?;
    let operators = store.operators(&cluster_ca).await?;
    let existing = operators.records().get(&name).await?;
    if revouch {
        // After a CA rotation: the same public key, vouched for by this CA.
        let existing = existing.with_context(|| format!("there is no operator called {name:?}"))?;
        anyhow::ensure!(
            existing.revoked.is_none(),
            "operator {name} is revoked; make a new one instead"
        );
        anyhow::ensure!(out.is_none(), "--revouch writes no credential; drop --out");
        let record = OperatorRecord::new(&name, &existing.public_key, &Voucher::Ca(&ca))?;
        operators.records().put(&record).await?;
        println!(
            "operator {name}: public key {} vouched for again by the CA in {}",
            record.public_key,
            cluster_ca.display()
        );
        return Ok(());
    }
    if let Some(existing) = existing {
        anyhow::ensure!(
            existing.revoked.is_some(),
            "operator {name} exists already ({:?}); revoke it first to give it a new key, \
             or vouch for its key with this CA with --revouch",
            operators.records()
        );
    }
    let key = OperatorKey::generate(&name)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("operator-{name}.json")));
    key.save(&out)?;
    let record = OperatorRecord::new(&name, &key.public_hex(), &Voucher::Ca(&ca))?;
    operators.records().put(&record).await?;
    println!(
        "operator {name}: credential written to {} (keep it private; pass it with \
         --credential or TESSERA_CREDENTIAL); public key {} vouched for by the CA in {:?}",
        out.display(),
        key.public_hex(),
        operators.records()
    );
    Ok(())
}

/// `tessera ctl operator ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum OperatorCommand {
    /// Make a key pair for a new operator (give them the credential file; they keep it).
    Keygen {
        name: String,
        /// The credential file to write (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Add an operator, vouched for by your credential.
    Add {
        name: String,
        /// The new operator's public key, 64 hex digits (`ctl operator keygen` prints it).
        #[arg(long)]
        public_key: String,
    },
    /// List the operators and whether each is valid now.
    List,
    /// Revoke an operator: the servers refuse its requests from the next one on.
    Revoke { name: String },
}

/// Runs `tessera ctl operator`: `operators` is where they are kept (built from ctl's
/// `--etcd` or, with `--local`, the CA directory), `credential` the caller's key (for add and
/// revoke).
pub async fn ctl_operator(
    command: &OperatorCommand,
    operators: impl std::future::Future<Output = anyhow::Result<Operators>>,
    credential: Option<&OperatorKey>,
) -> anyhow::Result<()> {
    if let OperatorCommand::Keygen { name, out } = command {
        let key = OperatorKey::generate(name)?;
        key.save(out)?;
        println!(
            "credential for {name} written to {}; add them with: tessera ctl operator add {name} \
             --public-key {}",
            out.display(),
            key.public_hex()
        );
        return Ok(());
    }
    let operators = operators.await?;
    let need_credential = || {
        credential.context(
            "this command needs an operator credential: --credential FILE or \
             TESSERA_CREDENTIAL (the first operator: `tessera ca operator NAME`)",
        )
    };
    match command {
        OperatorCommand::Keygen { .. } => unreachable!("handled above"),
        OperatorCommand::List => {
            let records = operators.records().list().await?;
            println!(
                "{:<20} {:<10} {:<20} public key",
                "operator", "status", "added by"
            );
            for record in records {
                match record {
                    Ok(r) => {
                        let status = match operators.valid_key(&r.name).await {
                            Ok(_) => "valid".to_string(),
                            Err(_) if r.revoked.is_some() => "revoked".to_string(),
                            Err(e) => format!("invalid ({e})"),
                        };
                        println!(
                            "{:<20} {:<10} {:<20} {}",
                            r.name, status, r.added_by, r.public_key
                        );
                    }
                    Err(e) => println!("(unreadable record: {e})"),
                }
            }
        }
        OperatorCommand::Add { name, public_key } => {
            let me = need_credential()?;
            // Refuse early what the servers would refuse later.
            operators
                .valid_key(me.name())
                .await
                .with_context(|| format!("you ({}) cannot vouch for anyone", me.name()))?;
            if let Some(existing) = operators.records().get(name).await? {
                anyhow::ensure!(
                    existing.revoked.is_some(),
                    "operator {name} exists already; revoke it first to give it a new key"
                );
            }
            let record = OperatorRecord::new(name, public_key, &Voucher::Operator(me))?;
            operators.records().put(&record).await?;
            println!("operator {name} added, vouched for by {}", me.name());
        }
        OperatorCommand::Revoke { name } => {
            let me = need_credential()?;
            operators
                .valid_key(me.name())
                .await
                .with_context(|| format!("you ({}) cannot revoke anyone", me.name()))?;
            let mut record = operators
                .records()
                .get(name)
                .await?
                .with_context(|| format!("there is no operator called {name}"))?;
            anyhow::ensure!(record.revoked.is_none(), "{name} is revoked already");
            record.revoke(&Voucher::Operator(me))?;
            operators.records().put(&record).await?;
            println!(
                "operator {name} revoked by {}: servers refuse its requests from now on, and \
                 those of operators only it vouched for",
                me.name()
            );
        }
    }
    Ok(())
}

/// Loads the caller's operator key from `--credential` / `TESSERA_CREDENTIAL`.
pub fn load_credential(path: Option<&Path>) -> anyhow::Result<OperatorKey> {
    let path = path.context(
        "this command needs an operator credential: --credential FILE or TESSERA_CREDENTIAL \
         (create one with `tessera ca operator NAME`)",
    )?;
    Ok(OperatorKey::load(path)?)
}
