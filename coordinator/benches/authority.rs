//! `cargo bench -p tessera-coordinator --bench authority`: what checking a migration request's
//! signature costs the servers that act on it (docs/security.md). Shards check each request
//! they see, and each pending one again every second; the coordinator checks each it finds.
//!
//! - a member's request: the certificate parsed and verified against the trust bundle
//!   (webpki: chain, validity, usage), the role read, then the ECDSA P-256 signature;
//! - an operator's request: the ed25519 signature against the cached public key;
//! - signing a member's request (ECDSA P-256).

use std::sync::Arc;
use tessera_coordinator::authority::{ClusterTrust, Signer};
use tessera_coordinator::identity::MemberRole;
use tessera_coordinator::migration::{Migration, MigrationState};
use tessera_coordinator::operators::{OperatorCache, OperatorKey};
use tessera_coordinator::pki::ClusterCa;
use tessera_proto::{CellId, Epoch, RegionId, ShardId};

fn main() {
    divan::main();
}

const CELL: RegionId = RegionId::cell(CellId::new(3, -1));

fn request() -> Migration {
    Migration {
        from: ShardId::new("shard-1"),
        to: ShardId::new("shard-2"),
        epoch: Epoch(7),
        state: MigrationState::Requested,
        requested_unix_ms: 1_800_000_000_000,
        authority: None,
        cancelled_unix_ms: None,
    }
}

struct Setup {
    trust: ClusterTrust,
    member: Migration,
    operator: Migration,
    signer: Signer,
}

fn setup() -> Setup {
    let ca = ClusterCa::generate().expect("a CA");
    let alice = OperatorKey::generate("alice").expect("a key");
    let trust = ClusterTrust::new(ca.trust().to_vec()).with_operators(OperatorCache::fixed([(
        "alice".to_string(),
        alice.verifying_key(),
    )]));
    let signer = Signer::member(
        Arc::new(ca.member(MemberRole::Coordinator, "c").expect("a member")),
        "coordinator:c".into(),
    );
    let mut member = request();
    member.authority = Some(signer.sign("/tessera/", CELL, &member));
    let mut operator = request();
    operator.authority = Some(Signer::operator(alice).sign("/tessera/", CELL, &operator));
    Setup {
        trust,
        member,
        operator,
        signer,
    }
}

#[divan::bench]
fn verify_member_request(bencher: divan::Bencher) {
    let s = setup();
    bencher.bench(|| {
        s.trust
            .verify("/tessera/", CELL, divan::black_box(&s.member))
            .expect("verifies")
    });
}

#[divan::bench]
fn verify_operator_request(bencher: divan::Bencher) {
    let s = setup();
    bencher.bench(|| {
        s.trust
            .verify("/tessera/", CELL, divan::black_box(&s.operator))
            .expect("verifies")
    });
}

#[divan::bench]
fn sign_member_request(bencher: divan::Bencher) {
    let s = setup();
    let m = request();
    bencher.bench(|| s.signer.sign("/tessera/", CELL, divan::black_box(&m)));
}
