//! `tessera etcd-auth`: gives each Tessera role its own etcd user and role,
//! granted only the keys that role uses, and turns etcd's auth on
//! (`tessera_coordinator::etcd::apply_roles`; docs/security.md, "etcd users
//! and roles"). Run once per cluster as etcd's root user (the client
//! certificate with CN `root`), before the roles start; run again, it
//! changes nothing and says so.

use anyhow::Context;
use clap::Args;

use tessera_coordinator::etcd::{apply_roles, MEMBER_GRANTS};

#[derive(Args, Debug, Clone)]
pub struct EtcdAuthArgs {
    /// etcd (`https://etcd:2379`) as its root user (--etcd-cert must have CN root); the
    /// roles are granted ranges under the prefix.
    #[command(flatten)]
    store: crate::EtcdArgs,
}

/// Applies the roles and prints what changed.
pub async fn run(args: EtcdAuthArgs) -> anyhow::Result<()> {
    let crate::EtcdArgs {
        etcd,
        etcd_tls,
        prefix,
    } = &args.store;
    etcd_tls.config(etcd)?.context(
        "tessera etcd-auth needs --etcd-ca, --etcd-cert and --etcd-key: etcd knows its users \
         by their client certificates, and this command runs as root (a certificate with CN root)",
    )?;
    let endpoints = etcd.join(",");
    let store = args.store.connect().await?;
    let changes = apply_roles(&store, prefix)
        .await
        .with_context(|| format!("cannot set up etcd's users and roles at {endpoints}"))?;
    for change in &changes {
        println!("{change}");
    }
    let users: Vec<&str> = MEMBER_GRANTS.iter().map(|m| m.user).collect();
    if changes.is_empty() {
        println!(
            "nothing to change: etcd at {endpoints} has every Tessera user and role for prefix \
             {prefix} and auth is on",
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
        assert_eq!(cli.args.store.prefix, tessera_coordinator::DEFAULT_PREFIX);
        assert!(cli
            .args
            .store
            .etcd_tls
            .config(&cli.args.store.etcd)
            .unwrap()
            .is_some());
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
