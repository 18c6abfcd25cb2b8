//! etcd users and roles: one etcd user and one role per Tessera role, each
//! granted only the key ranges that role's code touches (docs/security.md,
//! "etcd users and roles"; docs/cluster-keys.md, "Who may write what").
//!
//! etcd started with `--client-cert-auth` takes the Common Name of a
//! client's certificate for its user name, so a user needs no password:
//! the pods of role `router` show a certificate with CN `tessera-router`.
//! Once auth is on, etcd refuses every request that no role of the user
//! grants, and a certificate whose CN names no user may do nothing.
//!
//! What etcd checks (3.4 and 3.5): a get, list or watch needs read on the
//! whole range; a put or delete needs write on the key; a compare-and-put
//! needs read and write (the comparison reads the key); a put under a lease
//! and a lease revocation need write on every key already under that lease
//! (so a member keeps its own keys on its own lease); granting and renewing
//! leases needs nothing. Roles and users are etcd's own: only `root` may
//! change them, and [`apply_roles`] runs as root.

use super::{prefix_range_end, EtcdStore};
use etcd_client::{AuthClient, Permission, PermissionType, RoleRevokePermissionOptions};
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

/// etcd's administrator: the user with the `root` role, which may do
/// everything, change users and roles included. Its certificate (CN `root`)
/// stays with the operator, like the etcd CA's key.
pub const ETCD_ROOT: &str = "root";

/// How a role may use a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    /// Read and write: a compare-and-put reads the key it writes.
    ReadWrite,
}

impl Access {
    fn etcd(self) -> PermissionType {
        match self {
            Access::Read => PermissionType::Read,
            Access::ReadWrite => PermissionType::Readwrite,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::ReadWrite => "readwrite",
        })
    }
}

/// One key range a role may use: every key under `<prefix><dir>` (`dir`
/// empty: the whole prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    pub dir: &'static str,
}

const fn read(dir: &'static str) -> Grant {
    Grant {
        access: Access::Read,
        dir,
    }
}

const fn read_write(dir: &'static str) -> Grant {
    Grant {
        access: Access::ReadWrite,
        dir,
    }
}

/// What one Tessera role may do in etcd: the etcd user (the CN of the
/// role's client certificate) and the role of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberGrants {
    /// The Tessera role (`tessera <command>`; `ctl` for operators'
    /// `tessera ctl` and `tessera ca operator`).
    pub member: &'static str,
    /// The etcd user and role name, `tessera-<member>`.
    pub user: &'static str,
    pub grants: &'static [Grant],
}

/// Every Tessera role that uses etcd (the chat service does not) and the
/// key ranges its code needs; docs/cluster-keys.md, "Who may write what",
/// names the code behind each line.
pub const MEMBER_GRANTS: &[MemberGrants] = &[
    MemberGrants {
        member: "coordinator",
        user: "tessera-coordinator",
        grants: &[
            // Reads the registrations, loads, cordons, operators (control.rs,
            // operators.rs) and shows everything to the rebalancer.
            read(""),
            // Places cells, fails them over, splits and merges (control.rs,
            // reshape.rs): compare-and-put on the cell key.
            read_write("cells/"),
            // Leader election: compare-and-put on absence under its lease.
            read_write("coordinator/"),
            // Cancels, flips and deletes migrations; the rebalancer asks for
            // new ones (control.rs, migration.rs).
            read_write("migrations/"),
            // Deletes reshapes it carried out or refused; the rebalancer asks
            // for splits and merges (reshape.rs).
            read_write("reshapes/"),
            // Revokes the lease of a dead shard or router (liveness.rs); etcd lets
            // only a user who may write every key under a lease revoke it.
            read_write("shards/"),
            read_write("load/"),
            read_write("routers/"),
        ],
    },
    MemberGrants {
        member: "shard",
        user: "tessera-shard",
        grants: &[
            // Follows the whole prefix for the directory of members
            // (membership::watch_directory), the cell map, migrations, the
            // operators.
            read(""),
            // Its registration and load report, under its lease.
            read_write("shards/"),
            read_write("load/"),
            // Its own drain cordon: written on SIGTERM, deleted at start and
            // after the drain.
            read_write("draining/"),
            // The target marks a migration restored; a draining shard asks
            // for moves (migration.rs: compare-and-put).
            read_write("migrations/"),
        ],
    },
    MemberGrants {
        member: "router",
        user: "tessera-router",
        grants: &[
            // The directory of members (the whole prefix) and the cell map.
            read(""),
            // Its registration, under its lease, and the draining mark.
            read_write("routers/"),
        ],
    },
    MemberGrants {
        member: "gateway",
        user: "tessera-gateway",
        // The telnet gateway only follows the routers (gateway/src/routers.rs).
        grants: &[read("routers/")],
    },
    MemberGrants {
        member: "persistence",
        user: "tessera-persistence",
        grants: SERVICE_GRANTS,
    },
    MemberGrants {
        member: "auth",
        user: "tessera-auth",
        grants: SERVICE_GRANTS,
    },
    MemberGrants {
        member: "asset",
        user: "tessera-asset",
        grants: SERVICE_GRANTS,
    },
    MemberGrants {
        member: "ctl",
        user: "tessera-ctl",
        grants: &[
            // status, shards, cells, top, rebalance read everything
            // (ctl.rs snapshot lists the whole prefix); so does `tessera bots
            // --etcd`.
            read(""),
            // move, rebalance, drain: compare-and-put on absence.
            read_write("migrations/"),
            // split, merge.
            read_write("reshapes/"),
            // drain: the cordon.
            read_write("draining/"),
            // `ca operator`, `ctl operator add|revoke`.
            read_write("operators/"),
        ],
    },
];

/// The services that check operators' requests (persistence, auth, asset):
/// they read the operator records and record each request's nonce, created
/// only if absent, under a lease of its own (operators.rs).
const SERVICE_GRANTS: &[Grant] = &[read("operators/"), read_write("nonces/")];

/// A permission as etcd keeps it: type and key range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Range {
    fn under(prefix: &str, dir: &str) -> Range {
        let key = format!("{prefix}{dir}").into_bytes();
        let end = prefix_range_end(&key);
        Range { key, end }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = String::from_utf8_lossy(&self.key);
        if self.end.is_empty() {
            write!(f, "{key}")
        } else if self.end == prefix_range_end(&self.key) {
            write!(f, "{key}*")
        } else {
            write!(f, "[{key}, {})", String::from_utf8_lossy(&self.end))
        }
    }
}

/// One change [`apply_roles`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthChange {
    RoleAdded(String),
    Granted {
        role: String,
        access: Access,
        range: String,
    },
    /// A grant under the prefix that the table does not have.
    Revoked {
        role: String,
        range: String,
    },
    UserAdded(String),
    UserGranted {
        user: String,
        role: String,
    },
    /// A role the table does not give this user (a Tessera user has its own
    /// role only).
    UserRevoked {
        user: String,
        role: String,
    },
    AuthEnabled,
}

impl fmt::Display for AuthChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthChange::RoleAdded(role) => write!(f, "added role {role}"),
            AuthChange::Granted {
                role,
                access,
                range,
            } => write!(f, "granted role {role} {access} on {range}"),
            AuthChange::Revoked { role, range } => {
                write!(f, "revoked role {role}'s permission on {range}")
            }
            AuthChange::UserAdded(user) => {
                write!(f, "added user {user} (no password: its certificate's CN)")
            }
            AuthChange::UserGranted { user, role } => write!(f, "granted user {user} role {role}"),
            AuthChange::UserRevoked { user, role } => {
                write!(f, "revoked role {role} from user {user}")
            }
            AuthChange::AuthEnabled => write!(f, "enabled auth"),
        }
    }
}

/// Why [`apply_roles`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdRolesError {
    #[error("no key prefix: the roles grant ranges under one, such as /tessera/")]
    EmptyPrefix,
    #[error(
        "no client certificate: etcd's users without passwords are the Common Names of client \
         certificates; reach etcd over TLS with the certificate of its root user (CN root)"
    )]
    NoCertificate,
    /// Turning auth on would leave this client without the right to change
    /// it back.
    #[error(
        "turning etcd's auth on would lock this client out: its certificate's CN {user:?} is no \
         etcd user with the root role; use a certificate with CN root (docs/deploy.md, \"etcd \
         certificates\")"
    )]
    WouldLockOut { user: String },
    #[error(
        "etcd refused to {what}: permission denied for user {user} (only etcd's root user may \
         change users and roles: use the certificate with CN root)"
    )]
    PermissionDenied { user: String, what: String },
    #[error("etcd could not {what}: {reason}")]
    Etcd { what: String, reason: String },
}

/// Makes etcd's users and roles match [`MEMBER_GRANTS`] under `prefix` and
/// turns auth on, as etcd's `root` (the store's client certificate must
/// have CN `root`, or name another user with the root role). Returns what
/// it changed: nothing when etcd already matched.
///
/// Idempotent and converging: it adds missing roles, users and grants,
/// revokes grants of the Tessera roles under `prefix` that the table does
/// not have and roles their users should not have, and leaves alone
/// everything else (other users and roles, and grants under other
/// prefixes, for another cluster sharing the etcd). Makes sure user `root`
/// exists with role `root` before turning auth on, which etcd requires.
pub async fn apply_roles(
    store: &EtcdStore,
    prefix: &str,
) -> Result<Vec<AuthChange>, EtcdRolesError> {
    if prefix.is_empty() {
        return Err(EtcdRolesError::EmptyPrefix);
    }
    let Some(acting) = store.user() else {
        return Err(EtcdRolesError::NoCertificate);
    };
    let admin = Admin {
        store,
        auth: store.client.auth_client(),
    };
    let mut changes = Vec::new();
    let enabled = admin.auth_enabled().await?;
    if !enabled && acting != ETCD_ROOT && !admin.has_root_role(acting).await? {
        return Err(EtcdRolesError::WouldLockOut {
            user: acting.to_string(),
        });
    }
    let roles: BTreeSet<String> = admin
        .run("list the roles", |mut a| async move { a.role_list().await })
        .await?
        .roles()
        .iter()
        .cloned()
        .collect();
    for member in MEMBER_GRANTS {
        admin
            .converge_role(member, prefix, roles.contains(member.user), &mut changes)
            .await?;
    }
    let users: BTreeSet<String> = admin
        .run("list the users", |mut a| async move { a.user_list().await })
        .await?
        .users()
        .iter()
        .cloned()
        .collect();
    for member in MEMBER_GRANTS {
        admin
            .converge_user(
                member.user,
                member.user,
                users.contains(member.user),
                true,
                &mut changes,
            )
            .await?;
    }
    admin
        .converge_user(
            ETCD_ROOT,
            ETCD_ROOT,
            users.contains(ETCD_ROOT),
            false,
            &mut changes,
        )
        .await?;
    if !enabled {
        admin
            .run("turn auth on", |mut a| async move { a.auth_enable().await })
            .await?;
        changes.push(AuthChange::AuthEnabled);
    }
    Ok(changes)
}

/// The auth API of one store, each call bounded by its request timeout.
struct Admin<'a> {
    store: &'a EtcdStore,
    auth: AuthClient,
}

impl Admin<'_> {
    async fn run<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EtcdRolesError>
    where
        F: FnOnce(AuthClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.store.request_timeout;
        match tokio::time::timeout(timeout, call(self.auth.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if super::is_permission_denied(&e) => {
                Err(EtcdRolesError::PermissionDenied {
                    user: self.store.user_shown(),
                    what: what.to_string(),
                })
            }
            Ok(Err(e)) => Err(EtcdRolesError::Etcd {
                what: what.to_string(),
                reason: e.to_string(),
            }),
            Err(_) => Err(EtcdRolesError::Etcd {
                what: what.to_string(),
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// etcd 3.4 has no call that says whether auth is on; authenticating
    /// tells: "not enabled", or a refusal (no such user).
    async fn auth_enabled(&self) -> Result<bool, EtcdRolesError> {
        let mut auth = self.auth.clone();
        let probe = auth.authenticate(
            "tessera-auth-probe".to_string(),
            "not a password".to_string(),
        );
        match tokio::time::timeout(self.store.request_timeout, probe).await {
            Ok(Err(e)) if e.to_string().contains("authentication is not enabled") => Ok(false),
            Ok(Err(e)) if e.to_string().contains("authentication failed") => Ok(true),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(EtcdRolesError::Etcd {
                what: "tell whether auth is on".into(),
                reason: e.to_string(),
            }),
            Err(_) => Err(EtcdRolesError::Etcd {
                what: "tell whether auth is on".into(),
                reason: format!("no answer within {:?}", self.store.request_timeout),
            }),
        }
    }

    /// Whether `user` exists and has the root role.
    async fn has_root_role(&self, user: &str) -> Result<bool, EtcdRolesError> {
        let name = user.to_string();
        match self
            .run(&format!("read user {user}"), |mut a| async move {
                a.user_get(name).await
            })
            .await
        {
            Ok(resp) => Ok(resp.roles().iter().any(|r| r == ETCD_ROOT)),
            Err(EtcdRolesError::Etcd { reason, .. }) if reason.contains("user name not found") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn converge_role(
        &self,
        member: &MemberGrants,
        prefix: &str,
        exists: bool,
        changes: &mut Vec<AuthChange>,
    ) -> Result<(), EtcdRolesError> {
        let role = member.user;
        if !exists {
            self.run(&format!("add role {role}"), |mut a| async move {
                a.role_add(role).await
            })
            .await?;
            changes.push(AuthChange::RoleAdded(role.into()));
        }
        let current: Vec<(i32, Range)> = self
            .run(&format!("read role {role}"), |mut a| async move {
                a.role_get(role).await
            })
            .await?
            .permissions()
            .iter()
            .map(|p| {
                let range = Range {
                    key: p.key().to_vec(),
                    end: p.range_end().to_vec(),
                };
                (p.get_type(), range)
            })
            .collect();
        let wanted: Vec<(Access, Range)> = member
            .grants
            .iter()
            .map(|g| (g.access, Range::under(prefix, g.dir)))
            .collect();
        // Revoke first: etcd revokes by range, whatever the type, and a
        // grant on a range it has already only changes the type.
        for (_, range) in &current {
            let ours = range.key.starts_with(prefix.as_bytes());
            if ours && !wanted.iter().any(|(_, w)| w == range) {
                let (key, end) = (range.key.clone(), range.end.clone());
                self.run(
                    &format!("revoke role {role}'s permission on {range}"),
                    |mut a| async move {
                        let options = RoleRevokePermissionOptions::new().with_range_end(end);
                        a.role_revoke_permission(role, key, Some(options)).await
                    },
                )
                .await?;
                changes.push(AuthChange::Revoked {
                    role: role.into(),
                    range: range.to_string(),
                });
            }
        }
        for (access, range) in &wanted {
            let have = current
                .iter()
                .any(|(t, r)| r == range && *t == access.etcd() as i32);
            if have {
                continue;
            }
            let permission =
                Permission::new(access.etcd(), range.key.clone()).with_range_end(range.end.clone());
            self.run(
                &format!("grant role {role} {access} on {range}"),
                |mut a| async move { a.role_grant_permission(role, permission).await },
            )
            .await?;
            changes.push(AuthChange::Granted {
                role: role.into(),
                access: *access,
                range: range.to_string(),
            });
        }
        Ok(())
    }

    /// Makes `user` exist (without a password) with `role`; with `only`,
    /// with no other role.
    async fn converge_user(
        &self,
        user: &'static str,
        role: &'static str,
        exists: bool,
        only: bool,
        changes: &mut Vec<AuthChange>,
    ) -> Result<(), EtcdRolesError> {
        if !exists {
            self.run(&format!("add user {user}"), |mut a| async move {
                let options = etcd_client::UserAddOptions::new().with_no_pwd();
                a.user_add(user, "", Some(options)).await
            })
            .await?;
            changes.push(AuthChange::UserAdded(user.into()));
        }
        let roles: Vec<String> = self
            .run(&format!("read user {user}"), |mut a| async move {
                a.user_get(user).await
            })
            .await?
            .roles()
            .to_vec();
        if only {
            for other in roles.iter().filter(|r| *r != role) {
                let other_role = other.clone();
                self.run(
                    &format!("revoke role {other} from user {user}"),
                    |mut a| async move { a.user_revoke_role(user, other_role).await },
                )
                .await?;
                changes.push(AuthChange::UserRevoked {
                    user: user.into(),
                    role: other.clone(),
                });
            }
        }
        if !roles.iter().any(|r| r == role) {
            self.run(
                &format!("grant user {user} role {role}"),
                |mut a| async move { a.user_grant_role(user, role).await },
            )
            .await?;
            changes.push(AuthChange::UserGranted {
                user: user.into(),
                role: role.into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_user_named_after_it() {
        let mut users = BTreeSet::new();
        for m in MEMBER_GRANTS {
            assert_eq!(m.user, format!("tessera-{}", m.member));
            assert!(users.insert(m.user), "{} twice", m.user);
            assert!(!m.grants.is_empty(), "{} may do nothing", m.user);
            let dirs: BTreeSet<&str> = m.grants.iter().map(|g| g.dir).collect();
            assert_eq!(dirs.len(), m.grants.len(), "{}: a range twice", m.user);
        }
        assert!(
            !users.contains("tessera-chat"),
            "the chat service uses no etcd"
        );
    }

    #[test]
    fn only_the_coordinator_writes_the_cell_map_and_the_leader() {
        for m in MEMBER_GRANTS {
            for g in m.grants {
                let writes = g.access == Access::ReadWrite;
                if writes && (g.dir.is_empty() || g.dir == "cells/" || g.dir == "coordinator/") {
                    assert_eq!(m.member, "coordinator", "{} writes {:?}", m.user, g.dir);
                }
                if writes && g.dir == "operators/" {
                    assert_eq!(m.member, "ctl", "{} writes the operators", m.user);
                }
            }
        }
    }

    #[test]
    fn ranges_cover_the_directory_under_the_prefix() {
        let r = Range::under("/tessera/", "cells/");
        assert_eq!(r.key, b"/tessera/cells/");
        assert_eq!(r.end, b"/tessera/cells0");
        assert_eq!(r.to_string(), "/tessera/cells/*");
        assert_eq!(Range::under("/tessera/", "").to_string(), "/tessera/*");
        let odd = Range {
            key: b"a".to_vec(),
            end: b"c".to_vec(),
        };
        assert_eq!(odd.to_string(), "[a, c)");
    }
}
