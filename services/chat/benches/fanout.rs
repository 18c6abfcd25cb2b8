//! `cargo bench -p tessera-chat --bench fanout`: how long a line takes to reach the routers.
//!
//! One `ChatServer` on loopback (QUIC with the cluster's mutual TLS, a redb store in a
//! temporary directory, a rate limit too generous to matter) and two `ChatClient`s playing
//! two routers, each with N players online (N = 10, 100, 1000 per router). Measured:
//!
//! - a shout: from sending the request until BOTH routers have received the delivery (each
//!   router gets one delivery naming all its players), senders rotating over every player;
//! - a tell from a player on one router to a player on the other: from sending the request
//!   until the recipient's router has it.
//!
//! Deliveries are timestamped by a task per router as they come off the client's channel.
//! Without `--bench` (as `cargo test --benches` runs it) it sends a few lines with N = 10.

#[path = "../../bench_support/latency.rs"]
mod latency;

use latency::{histogram, micros, Table};
use std::time::{Duration, Instant};

use tessera_chat::{ChatClient, ChatLimits, ChatServer, Delivery, LineKind, Request, CHAT_ALPN};
use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
use tessera_persistence::Database;
use tokio::sync::mpsc;

/// Which router saw a line, its text (which carries the sequence number) and when.
type Seen = (usize, LineKind, String, Instant);

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (sizes, lines): (&[u64], usize) = if quick {
        (&[10], 5)
    } else {
        (&[10, 100, 1000], 200)
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
    let server_config = member.server_config_for(CHAT_ALPN).expect("server TLS");
    let client_config = member.client_config_for(CHAT_ALPN).expect("client TLS");

    println!("chat service on loopback, two routers, {lines} lines per row");
    let table = Table::start(34, None);
    for (round, &per_router) in sizes.iter().enumerate() {
        runtime.block_on(async {
            let db =
                Database::open_redb(&dir.path().join(format!("chat-{round}.redb"))).expect("store");
            let limits = ChatLimits {
                burst: 1_000_000,
                refill_per_second: 1e6,
                ..ChatLimits::default()
            };
            let server = ChatServer::start(
                db,
                "127.0.0.1:0".parse().expect("address"),
                server_config.clone(),
                limits,
            )
            .expect("chat server");
            let addr = server.local_addr().expect("address");
            let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
            let mut routers = Vec::new();
            for r in 0..2usize {
                let (client, mut rx) =
                    ChatClient::start(addr, CLUSTER_NAME, client_config.clone(), format!("r{r}"));
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    while let Some(d) = rx.recv().await {
                        let at = Instant::now();
                        if let Delivery::Deliver { line, .. } = d {
                            let _ = seen_tx.send((r, line.kind, line.text, at));
                        }
                    }
                });
                let deadline = Instant::now() + Duration::from_secs(10);
                while !client.is_connected() {
                    assert!(Instant::now() < deadline, "router {r} cannot connect");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                for p in 0..per_router {
                    let id = player_id(r, p, per_router);
                    client
                        .online(id, &format!("P{id}"), false)
                        .await
                        .expect("online");
                }
                routers.push(client);
            }

            let mut shouts = histogram();
            for i in 0..lines {
                let sender = i as u64 % (2 * per_router);
                let (r, p) = ((sender / per_router) as usize, sender % per_router);
                let text = format!("s{i}");
                let t = Instant::now();
                routers[r]
                    .request(Request::Shout {
                        from: player_id(r, p, per_router),
                        text: text.clone(),
                    })
                    .await
                    .expect("shout");
                let mut got = [None, None];
                while got.iter().any(Option::is_none) {
                    let (router, kind, seen_text, at) = next(&mut seen).await;
                    if kind == LineKind::Shout && seen_text == text {
                        got[router] = Some(at);
                    }
                }
                let last = got.iter().flatten().max().expect("both routers");
                shouts
                    .record(micros(last.duration_since(t)))
                    .expect("record");
            }
            table.row(&format!("shout to 2 x {per_router} players"), &shouts);

            let mut tells = histogram();
            for i in 0..lines {
                let (from_router, to_router) = (i % 2, 1 - i % 2);
                let p = i as u64 % per_router;
                let from = player_id(from_router, p, per_router);
                let to = player_id(to_router, (p + 1) % per_router, per_router);
                let text = format!("t{i}");
                let t = Instant::now();
                routers[from_router]
                    .request(Request::Tell {
                        from,
                        to_name: format!("P{to}"),
                        text: text.clone(),
                    })
                    .await
                    .expect("tell");
                loop {
                    let (router, kind, seen_text, at) = next(&mut seen).await;
                    if router == to_router && kind == LineKind::Tell && seen_text == text {
                        tells.record(micros(at.duration_since(t))).expect("record");
                        break;
                    }
                }
            }
            table.row(
                &format!("tell across routers ({per_router}/router)"),
                &tells,
            );

            for r in &routers {
                r.close();
            }
            server.close();
        });
    }
}

/// Players of router `r` are numbered 1 + r * n ..= n + r * n.
fn player_id(r: usize, p: u64, per_router: u64) -> u64 {
    1 + r as u64 * per_router + p
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("a delivery in time")
        .expect("the routers are up")
}
