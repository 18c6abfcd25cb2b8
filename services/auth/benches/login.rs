//! `cargo bench -p tessera-auth --bench login`: what a login costs through the account
//! service, as a router sees it.
//!
//! One `AuthServer` on loopback (QUIC with the cluster's mutual TLS, a redb store in a
//! temporary directory) and `AuthClient`s in the same process. Measured:
//!
//! - the latency of one login at a time (argon2id dominates), next to the round trip of a
//!   request that does no work (`verifying_key`), which is the cost of QUIC and the framing;
//! - logins per second with 2 and 8 clients (each its own connection) logging in back to
//!   back: the server runs at most one argon2id per core, so this shows the ceiling;
//! - `verify_token_with`, the local check a router makes on every token it is handed.
//!
//! Every login comes from its own address (10.x.y.z) so the rate limiter never counts two
//! attempts together. Without `--bench` (as `cargo test --benches` runs it) every loop is
//! a few iterations only.

#[path = "../../bench_support/latency.rs"]
mod latency;

use latency::{histogram, micros, Table};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tessera_auth::remote::{AuthClient, AuthServer, AUTH_ALPN};
use tessera_auth::{verify_token_with, Auth};
use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
use tessera_persistence::Database;

const NAME: &str = "Bench";
const PASSWORD: &str = "correct horse battery";

/// A fresh source address for every attempt: 10.0.0.1, 10.0.0.2, ...
static NEXT_ADDRESS: AtomicU32 = AtomicU32::new(1);

fn next_address() -> IpAddr {
    let n = NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (serial, per_client_total, verifies) = if quick {
        (3, 8, 1_000)
    } else {
        (100, 96, 100_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let member = ClusterCa::create(&dir.path().join("ca"))
        .expect("cluster CA")
        .member(tessera_coordinator::identity::MemberRole::Router, "x")
        .expect("identity");
    let db = Database::open_redb(&dir.path().join("auth.redb")).expect("store");
    let auth = Arc::new(Auth::open(db, &dir.path().join("token.key")).expect("auth"));
    let client_config = member.client_config_for(AUTH_ALPN).expect("client TLS");
    let server = runtime.block_on(async {
        AuthServer::start(
            auth,
            // No operators: the bench changes no roles.
            tessera_coordinator::operators::Operators::in_dir(
                dir.path().join("operators"),
                Vec::new(),
            ),
            "127.0.0.1:0".parse().expect("address"),
            member.server_config_for(AUTH_ALPN).expect("server TLS"),
            false,
        )
        .expect("auth server")
    });
    let addr = server.local_addr().expect("address");
    let new_client = || {
        let _guard = runtime.enter();
        AuthClient::new(addr, CLUSTER_NAME, client_config.clone()).expect("client")
    };

    let client = new_client();
    let (key, token) = runtime.block_on(async {
        let session = client
            .create_account(NAME, PASSWORD, IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
            .expect("account");
        let key = client.verifying_key().await.expect("verifying key");
        (key, session.token)
    });

    println!("auth service on loopback, {} cores", cores());
    let table = Table::start(44, None);

    // A request that does no work: the floor under every call.
    let mut rtt = histogram();
    runtime.block_on(async {
        for _ in 0..serial {
            let t = Instant::now();
            client.verifying_key().await.expect("verifying key");
            rtt.record(micros(t.elapsed())).expect("record");
        }
    });
    table.row(&format!("verifying_key round trip ({serial} calls)"), &rtt);

    let mut one = histogram();
    runtime.block_on(async {
        for _ in 0..serial {
            let t = Instant::now();
            client
                .login(NAME, PASSWORD, next_address())
                .await
                .expect("login");
            one.record(micros(t.elapsed())).expect("record");
        }
    });
    table.row(&format!("login, one at a time ({serial} logins)"), &one);

    let mut rates = Vec::new();
    for clients in [2usize, 8] {
        let each = (per_client_total / clients).max(1);
        let handles: Vec<AuthClient> = (0..clients).map(|_| new_client()).collect();
        let (hist, elapsed) = runtime.block_on(async {
            // Connect every client before the clock starts.
            for c in &handles {
                c.verifying_key().await.expect("connect");
            }
            let start = Instant::now();
            let tasks: Vec<_> = handles
                .iter()
                .cloned()
                .map(|c| {
                    tokio::spawn(async move {
                        let mut hist = histogram();
                        for _ in 0..each {
                            let t = Instant::now();
                            c.login(NAME, PASSWORD, next_address())
                                .await
                                .expect("login");
                            hist.record(micros(t.elapsed())).expect("record");
                        }
                        hist
                    })
                })
                .collect();
            let mut all = histogram();
            for task in tasks {
                all.add(task.await.expect("client task")).expect("merge");
            }
            (all, start.elapsed())
        });
        let logins = each * clients;
        table.row(
            &format!("login, {clients} clients at once ({logins} logins)"),
            &hist,
        );
        rates.push((clients, logins as f64 / elapsed.as_secs_f64()));
    }

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut check = histogram();
    let start = Instant::now();
    for _ in 0..verifies {
        let t = Instant::now();
        let claims = verify_token_with(&key, std::hint::black_box(&token), now).expect("valid");
        std::hint::black_box(claims);
        check.record(t.elapsed().as_nanos() as u64).expect("record");
    }
    let mean_ns = start.elapsed().as_nanos() as f64 / verifies as f64;

    println!();
    for (clients, rate) in rates {
        println!("throughput with {clients} clients: {rate:.1} logins/s");
    }
    println!(
        "verify_token_with ({verifies} calls): p50 {} ns, p99 {} ns, max {} ns, mean {mean_ns:.0} ns",
        check.value_at_quantile(0.5),
        check.value_at_quantile(0.99),
        check.max()
    );
    server.close();
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
