//! Which keys each cluster role may read and write through the persistence service, so that a
//! compromised member reaches only its own part of the store: a router cannot rewrite
//! accounts (and so cannot promote one) unless it keeps the accounts itself, a shard only
//! touches checkpoints, the chat service only chat, and so on.
//!
//! | role | key spaces |
//! |---|---|
//! | shard | `("checkpoint", ..)` |
//! | router | `player/...`; `("auth", ..)` too with [`KeySpaces::router_accounts`] (routers without an auth service) |
//! | auth | `("auth", ..)` |
//! | chat | `("chat", ..)` |
//! | asset | `("asset", ..)` |
//! | coordinator, gateway, persistence, ctl | none |
//!
//! Every role may read [`READINESS_PROBE`] (what `/readyz` asks). Backups and restores are not
//! bound by roles: an operator signs each page and batch (`remote.rs`). A certificate without
//! a role (from before roles) is bound by nothing, as on the cluster bus.

use crate::keys::{key, prefix_range};
use tessera_coordinator::identity::MemberRole;

/// The key every service's readiness check reads.
pub const READINESS_PROBE: &[u8] = b"\x00readiness-probe";

/// The role policy of one persistence service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySpaces {
    /// Routers may read and write accounts (`("auth", ..)`): for clusters whose routers keep
    /// the accounts themselves, without an auth service.
    pub router_accounts: bool,
}

impl KeySpaces {
    /// The key prefixes `role` may use.
    pub fn prefixes(&self, role: MemberRole) -> Vec<Vec<u8>> {
        let tuple = |space: &[u8]| key(&[space]);
        match role {
            MemberRole::Shard => vec![tuple(b"checkpoint")],
            MemberRole::Router if self.router_accounts => {
                vec![b"player/".to_vec(), tuple(b"auth")]
            }
            MemberRole::Router => vec![b"player/".to_vec()],
            MemberRole::Auth => vec![tuple(b"auth")],
            MemberRole::Chat => vec![tuple(b"chat")],
            MemberRole::Asset => vec![tuple(b"asset")],
            MemberRole::Coordinator
            | MemberRole::Gateway
            | MemberRole::Persistence
            | MemberRole::Ctl => Vec::new(),
        }
    }

    /// Whether `role` may read or write `k`.
    pub fn key(&self, role: MemberRole, k: &[u8]) -> bool {
        self.prefixes(role).iter().any(|p| k.starts_with(p))
    }

    /// Whether `role` may read `k` (its keys, and the readiness probe).
    pub fn read(&self, role: MemberRole, k: &[u8]) -> bool {
        k == READINESS_PROBE || self.key(role, k)
    }

    /// Whether the range `[begin, end)` lies inside one of `role`'s key spaces.
    pub fn range(&self, role: MemberRole, begin: &[u8], end: &[u8]) -> bool {
        if begin >= end {
            // An empty range touches nothing, but must still start in a space of the role.
            return self.key(role, begin);
        }
        self.prefixes(role).iter().any(|p| {
            let (lo, hi) = prefix_range(p);
            begin >= lo.as_slice() && end <= hi.as_slice()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_reaches_its_own_keys_only() {
        let strict = KeySpaces::default();
        let account = key(&[b"auth", b"account", &7u64.to_be_bytes()]);
        let checkpoint = key(&[b"checkpoint", b"3,4", b"state"]);
        assert!(strict.key(MemberRole::Auth, &account));
        assert!(!strict.key(MemberRole::Router, &account));
        assert!(!strict.key(MemberRole::Shard, &account));
        assert!(strict.key(MemberRole::Shard, &checkpoint));
        assert!(!strict.key(MemberRole::Chat, &checkpoint));
        assert!(strict.key(MemberRole::Router, b"player/00000000000000000007"));
        assert!(!strict.key(MemberRole::Router, b"players"));
        for role in MemberRole::ALL {
            assert!(strict.read(role, READINESS_PROBE), "{role}");
            assert!(
                !strict.key(role, READINESS_PROBE),
                "{role} may write the probe"
            );
        }
        for role in [
            MemberRole::Coordinator,
            MemberRole::Gateway,
            MemberRole::Ctl,
        ] {
            assert!(strict.prefixes(role).is_empty());
        }
        let lenient = KeySpaces {
            router_accounts: true,
        };
        assert!(lenient.key(MemberRole::Router, &account));
    }

    #[test]
    fn a_range_must_stay_inside_one_space() {
        let spaces = KeySpaces::default();
        let (lo, hi) = prefix_range(&key(&[b"chat", b"mute"]));
        assert!(spaces.range(MemberRole::Chat, &lo, &hi));
        let (all_lo, all_hi) = prefix_range(&key(&[b"chat"]));
        assert!(spaces.range(MemberRole::Chat, &all_lo, &all_hi));
        // Running past the end of the space, or starting before it, is refused.
        assert!(!spaces.range(MemberRole::Chat, &lo, b"\xff"));
        assert!(!spaces.range(MemberRole::Chat, b"", &hi));
        assert!(!spaces.range(MemberRole::Auth, &lo, &hi));
        // The whole store is nobody's.
        for role in MemberRole::ALL {
            assert!(!spaces.range(role, b"", b"\xff"), "{role}");
        }
    }
}
