//! Member roles: every member certificate says which role its holder plays (the subject's
//! organizational unit, `OU=shard`), and the servers that receive cluster traffic check the
//! sender's role for each kind of message ([`may_send`]): only shards hand entities, ghosts,
//! speech and whole cells to shards, and send player events and cell frames to routers; only
//! routers send player traffic to shards; only telnet gateways relay players to routers.
//!
//! A certificate without a role (minted by a member from before roles) is let through with a
//! warning and counted (`tessera_cluster_legacy_peers_total`), so that a rolling update keeps
//! working; whoever could mint such a certificate holds the CA key and could mint any role.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use tessera_proto::cluster::{Envelope, ToShard};

/// What a cluster member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberRole {
    Coordinator,
    Shard,
    Router,
    /// A telnet gateway (`tessera telnet-gateway`).
    Gateway,
    Persistence,
    Auth,
    Chat,
    Asset,
    /// `tessera ctl`, for an operator (whose requests carry the operator's own signature).
    Ctl,
}

impl MemberRole {
    pub const ALL: [MemberRole; 9] = [
        MemberRole::Coordinator,
        MemberRole::Shard,
        MemberRole::Router,
        MemberRole::Gateway,
        MemberRole::Persistence,
        MemberRole::Auth,
        MemberRole::Chat,
        MemberRole::Asset,
        MemberRole::Ctl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Coordinator => "coordinator",
            MemberRole::Shard => "shard",
            MemberRole::Router => "router",
            MemberRole::Gateway => "gateway",
            MemberRole::Persistence => "persistence",
            MemberRole::Auth => "auth",
            MemberRole::Chat => "chat",
            MemberRole::Asset => "asset",
            MemberRole::Ctl => "ctl",
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberRole {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberRole, String> {
        MemberRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = MemberRole::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown member role {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Who is on the other end of a cluster connection, by its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A member certificate naming its role.
    Member { role: MemberRole, name: String },
    /// A certificate of the cluster CA without a role (a member from before roles).
    Legacy { name: String },
}

impl Peer {
    /// The peer of a connection whose TLS handshake verified its certificate chain (so only
    /// what the certificate says is read here). `None` if there is no certificate, or it does
    /// not parse, or it names an unknown role.
    pub fn of(conn: &quinn::Connection) -> Option<Peer> {
        let identity = conn.peer_identity()?;
        let chain = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
        Peer::from_cert(chain.first()?)
    }

    /// The peer a member certificate describes.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Peer> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        let ou: Option<Option<String>> = subject
            .iter_organizational_unit()
            .next()
            .map(|ou| ou.as_str().ok().map(str::to_string));
        let peer = match ou {
            None => Peer::Legacy { name },
            Some(ou) => Peer::Member {
                role: ou?.parse().ok()?,
                name,
            },
        };
        Some(peer)
    }

    /// The role, if the certificate names one.
    pub fn role(&self) -> Option<MemberRole> {
        match self {
            Peer::Member { role, .. } => Some(*role),
            Peer::Legacy { .. } => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Peer::Member { name, .. } | Peer::Legacy { name } => name,
        }
    }

    /// Whether this peer may play `role`: a member of that role, or a legacy one (counted).
    pub fn may_be(&self, role: MemberRole) -> bool {
        match self {
            Peer::Member { role: r, .. } => *r == role,
            Peer::Legacy { name } => {
                legacy(name);
                true
            }
        }
    }
}

fn legacy(name: &str) {
    metrics::counter!("tessera_cluster_legacy_peers_total").increment(1);
    tracing::debug!(
        peer = name,
        "a member certificate without a role (from before roles)"
    );
}

/// The kind of a cluster message, for logs and metrics.
pub fn kind(env: &Envelope) -> &'static str {
    match env {
        Envelope::Shard { msg, .. } => match msg {
            ToShard::Join { .. } => "join",
            ToShard::Input { .. } => "input",
            ToShard::Step { .. } => "step",
            ToShard::Say { .. } => "say",
            ToShard::Leave { .. } => "leave",
            ToShard::Handoff { .. } => "handoff",
            ToShard::Ghosts { .. } => "ghosts",
            ToShard::CellSnapshot { .. } => "cell_snapshot",
            ToShard::Speech { .. } => "speech",
        },
        Envelope::Router { .. } => "to_router",
    }
}

/// Whether `peer` may send `env`: [`may_send`] for its role; a legacy peer (no role) may
/// send anything, and is counted.
pub fn peer_may_send(peer: &Peer, env: &Envelope) -> bool {
    match peer {
        Peer::Member { role, .. } => may_send(*role, env),
        Peer::Legacy { name } => {
            legacy(name);
            true
        }
    }
}

/// Whether a member of `role` may send `env`: player traffic to shards comes from routers
/// (or from a shard forwarding it to the entity's new owner after a hand-off or migration);
/// hand-offs, ghosts, speech and migrated cells come from shards only; everything for
/// routers (player events, cell frames) comes from shards.
pub fn may_send(role: MemberRole, env: &Envelope) -> bool {
    match env {
        Envelope::Shard { msg, .. } => match msg {
            ToShard::Join { .. }
            | ToShard::Input { .. }
            | ToShard::Step { .. }
            | ToShard::Say { .. }
            | ToShard::Leave { .. } => matches!(role, MemberRole::Router | MemberRole::Shard),
            ToShard::Handoff { .. }
            | ToShard::Ghosts { .. }
            | ToShard::CellSnapshot { .. }
            | ToShard::Speech { .. } => role == MemberRole::Shard,
        },
        Envelope::Router { .. } => role == MemberRole::Shard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_kind_comes_from_its_roles_only() {
        use tessera_proto::cluster::SessionRef;
        use tessera_proto::{EntityId, RouterId, SessionId, ShardId};
        let to = ShardId::new("s");
        let leave = Envelope::Shard {
            to: to.clone(),
            msg: ToShard::Leave {
                entity: EntityId(1),
                session: SessionRef {
                    router: RouterId("r".into()),
                    session: SessionId(1),
                },
            },
        };
        // Routers send player traffic, and shards forward it after a hand-off.
        assert!(may_send(MemberRole::Router, &leave));
        assert!(may_send(MemberRole::Shard, &leave));
        for role in [
            MemberRole::Gateway,
            MemberRole::Auth,
            MemberRole::Coordinator,
        ] {
            assert!(!may_send(role, &leave), "{role}");
        }
        let speech = Envelope::Shard {
            to,
            msg: ToShard::Speech {
                regions: Vec::new(),
                origin: tessera_proto::Vec3::ZERO,
                radius: 1.0,
                speaker: tessera_proto::EntityId(2),
                name: "a".into(),
                text: "hi".into(),
                emote: false,
            },
        };
        assert!(may_send(MemberRole::Shard, &speech));
        assert!(!may_send(MemberRole::Router, &speech));
    }

    #[test]
    fn roles_parse_and_print() {
        for role in MemberRole::ALL {
            assert_eq!(role.as_str().parse::<MemberRole>().unwrap(), role);
        }
        let err = "admin".parse::<MemberRole>().unwrap_err();
        assert!(err.contains("unknown member role \"admin\""), "{err}");
    }
}
