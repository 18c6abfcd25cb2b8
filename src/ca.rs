//! `tessera ca`: the cluster CA, kept on the operator's machine, and what it issues (member
//! certificates, the first operator, the Kubernetes Secrets). docs/security.md says what each
//! credential can do.

use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::pki::{ClusterCa, MEMBER_CERT_FILE, MEMBER_KEY_FILE, TRUST_FILE};

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new cluster CA in DIR (ca-cert.pem, ca-key.pem). Keep DIR on the operator's
    /// machine; members get certificates from `tessera ca issue`.
    Init { dir: PathBuf },
    /// Issue a member certificate: writes member-cert.pem, member-key.pem (mode 0600) and the
    /// trust bundle ca-cert.pem into --out, the directory that member's --cluster-ca names.
    Issue {
        /// What the member is: coordinator, shard, router, gateway (a telnet gateway),
        /// persistence, auth, chat, asset, or ctl (an operator's `tessera ctl`).
        #[arg(long)]
        role: MemberRole,
        /// The member's name, shown in peers' logs (one name may serve many replicas).
        #[arg(long)]
        name: String,
        /// The cluster CA directory (with its private key).
        #[arg(long)]
        cluster_ca: PathBuf,
        /// Where to write the member's files (created; must not hold a member already).
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Make an operator: an ed25519 key pair (the credential file, for `tessera ctl`) whose
    /// public key the CA vouches for, in etcd with --etcd, else in DIR/operators/ (`tessera
    /// up`). Run it where the CA key is; later operators can be added by operators (`tessera
    /// ctl operator add`).
    ///
    /// Under `tessera up`, once it has started (it creates the CA in <data-dir>/cluster-ca):
    /// `tessera ca operator ops --cluster-ca data/cluster-ca --out ops.json`; the running
    /// world accepts the new operator at once. Then give `--credential ops.json` (or set
    /// TESSERA_CREDENTIAL) to the `tessera ctl` commands that change something, such as
    /// `tessera ctl --credential ops.json asset put scripts/NAME.rhai FILE` (`tessera ctl
    /// --help` lists them). Keep the credential private: it is the operator's private key.
    Operator {
        /// The operator's name, shown in logs of every request they make.
        name: String,
        /// The cluster CA directory (with its private key); `tessera up` keeps it in
        /// <data-dir>/cluster-ca.
        #[arg(long)]
        cluster_ca: PathBuf,
        /// Where to write the credential, readable only by you (default: operator-NAME.json
        /// in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Vouch again for the operator's existing public key with this CA (after a CA
        /// rotation), instead of making a new key pair; no credential is written.
        #[arg(long)]
        revouch: bool,
        #[command(flatten)]
        store: crate::operator::OperatorsArgs,
    },
    /// Create in DIR what a Kubernetes deployment needs (the cluster CA, a member certificate
    /// per role, the auth signing key, the routers' QUIC certificate; existing files are kept,
    /// certificates near expiry or from a CA no longer trusted are issued again) and print
    /// the Secrets: `tessera ca k8s-secret secrets/ | kubectl apply -f -` (docs/deploy.md).
    /// The CA key stays in DIR, in no Secret.
    K8sSecret {
        dir: PathBuf,
        /// The Secrets' namespace (default: none; kubectl's current one).
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Runs a `tessera ca` command.
pub fn run(command: CaCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir } => {
            ClusterCa::create(&dir)?;
            println!(
                "cluster CA created in {} (keep its {} private; issue members with `tessera ca issue`)",
                dir.display(),
                tessera_coordinator::pki::CA_KEY_FILE
            );
            Ok(())
        }
        CaCommand::Issue {
            role,
            name,
            cluster_ca,
            out,
            days,
        } => issue(role, &name, &cluster_ca, &out, days),
        CaCommand::Operator {
            name,
            cluster_ca,
            out,
            revouch,
            store,
        } => runtime.block_on(crate::operator::ca_operator(
            name, cluster_ca, out, revouch, store,
        )),
        CaCommand::K8sSecret { dir, namespace } => {
            print!("{}", crate::k8s_secret::render(&dir, namespace.as_deref())?);
            eprintln!(
                "secret files kept in {} (the CA key among them: keep that directory private); \
                 clients pin {}",
                dir.display(),
                dir.join("quic-cert.der").display()
            );
            Ok(())
        }
    }
}

/// `tessera ca issue`.
fn issue(
    role: MemberRole,
    name: &str,
    cluster_ca: &std::path::Path,
    out: &std::path::Path,
    days: u32,
) -> anyhow::Result<()> {
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let ca = ClusterCa::load(cluster_ca)?;
    let identity = ca.issue(role, name, Duration::from_secs(u64::from(days) * 24 * 3600))?;
    identity.save(out)?;
    println!(
        "{role} {name:?}: {MEMBER_CERT_FILE}, {MEMBER_KEY_FILE} and {TRUST_FILE} written to {}, \
         valid for {days} days; start the member with --cluster-ca {}",
        out.display(),
        out.display()
    );
    Ok(())
}
