//! `tessera etcd-auth`: gives each Tessera role its own etcd user and role,
//! granted only the keys that role uses, and turns etcd's auth on
//! (`tessera_coordinator::etcd::apply_roles`; docs/security.md, "etcd users
//! and roles"). Run once per cluster as etcd's root user (the client
//! certificate with CN `root`), before the roles start; run again, it
//! changes nothing and says so.

use anyhow::Context;
use clap::Args;
use std::time::Duration;
use tessera_coordinator::etcd::{apply_roles, MEMBER_GRANTS};
use tessera_coordinator::EtcdStore;

#[derive(Args, Debug, Clone)]
pub struct EtcdAuthArgs {
    /// etcd endpoints, comma separated (`https://etcd:2379`).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The root user's certificate: --etcd-cert must have CN root.
    #[command(flatten)]
    etcd_tls: crate::EtcdTlsArgs,
    /// Key prefix of the cluster in etcd: the roles are granted ranges under it.
    #[arg(long, default_value = tessera_coordinator::DEFAULT_PREFIX)]
    prefix: String,
}

/// Applies the roles and prints what changed.
pub async fn run(args: EtcdAuthArgs) -> anyhow::Result<()> {
    let tls = args.etcd_tls.config(&args.etcd)?.context(
        "tessera etcd-auth needs --etcd-ca, --etcd-cert and --etcd-key: etcd knows its users \
         by their client certificates, and this command runs as root (a certificate with CN root)",
    )?;
    let endpoints = args.etcd.join(",");
    let store = EtcdStore::connect(&args.etcd, Some(&tls), Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot reach etcd at {endpoints}"))?;
    let changes = apply_roles(&store, &args.prefix)
        .await
        .with_context(|| format!("cannot set up etcd's users and roles at {endpoints}"))?;
    for change in &changes {
        println!("{change}");
    }
    let users: Vec<&str> = MEMBER_GRANTS.iter().map(|m| m.user).collect();
    if changes.is_empty() {
        println!(
            "nothing to change: etcd at {endpoints} has every Tessera user and role for prefix \
             {} and auth is on",
            args.prefix
        );
    } else {
        println!(
            "etcd at {endpoints}: {} change(s); auth is on. Each role's client certificate must \
             have CN tessera-<role> ({})",
            changes.len(),
            users.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: EtcdAuthArgs,
    }

    #[test]
    fn takes_the_etcd_flags_and_a_prefix() {
        let cli = Cli::try_parse_from([
            "etcd-auth",
            "--etcd",
            "https://127.0.0.1:2379",
            "--etcd-ca",
            "ca.pem",
            "--etcd-cert",
            "root.pem",
            "--etcd-key",
            "root-key.pem",
        ])
        .unwrap();
        assert_eq!(cli.args.prefix, tessera_coordinator::DEFAULT_PREFIX);
        assert!(cli.args.etcd_tls.config(&cli.args.etcd).unwrap().is_some());
        assert!(
            Cli::try_parse_from(["etcd-auth"]).is_err(),
            "--etcd is required"
        );
    }

    #[tokio::test]
    async fn refuses_to_run_without_a_certificate() {
        let cli = Cli::try_parse_from(["etcd-auth", "--etcd", "http://127.0.0.1:1"]).unwrap();
        let err = run(cli.args).await.unwrap_err().to_string();
        assert!(
            err.contains("needs --etcd-ca, --etcd-cert and --etcd-key"),
            "{err}"
        );
    }
}
