//! `cargo bench -p tessera-asset --bench http`: the asset service over HTTP on loopback.
//!
//! `tessera_asset::serve` on a tokio runtime (2 workers) with a redb store in a temporary
//! directory; the blocking `AssetClient` on the main thread, one request at a time on one
//! keep-alive agent. A 1 MiB and an 8 MiB asset of random bytes are put first. Measured:
//!
//! - GET of each blob by hash (`/v1/blobs/<hash>`; the client checks the blake3 hash of
//!   what it read): latency and MB/s (bytes over the mean latency);
//! - a manifest poll with the current ETag, answered 304 (what every shard does, every few
//!   seconds);
//! - a signed 1 MiB put of new content each time (so the store writes a new blob).
//!
//! Without `--bench` (as `cargo test --benches` runs it) every loop is a few iterations.

#[path = "../../bench_support/latency.rs"]
mod latency;

use latency::{histogram, micros, Table};
use std::time::Instant;

use tessera_asset::{serve, AssetClient, AssetConfig, ManifestFetch};
use tessera_coordinator::operators::{OperatorKey, OperatorRecord, Operators, Voucher};
use tessera_coordinator::pki::ClusterCa;
use tessera_coordinator::{ClusterStore, MemStore};
use tessera_persistence::Database;

const MIB: usize = 1024 * 1024;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (gets, big_gets, polls, puts) = if quick {
        (3, 2, 5, 2)
    } else {
        (200, 40, 1000, 50)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::open_redb(&dir.path().join("assets.redb")).expect("store");
    // One operator, vouched for by a throwaway CA, in an in-process cluster store (what a
    // cluster keeps in etcd): every put is checked as in production.
    let ca = ClusterCa::create(&dir.path().join("ca")).expect("CA");
    let cluster: std::sync::Arc<dyn ClusterStore> = std::sync::Arc::new(MemStore::new());
    let operators = Operators::in_store(cluster, "/bench/", vec![ca.cert().clone()]);
    let operator = OperatorKey::generate("ops").expect("key");
    let record =
        OperatorRecord::new("ops", &operator.public_hex(), &Voucher::Ca(&ca)).expect("record");
    runtime
        .block_on(operators.records().put(&record))
        .expect("operator record");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listener");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    runtime.spawn(serve(listener, db, AssetConfig::new(operators)));
    let client = AssetClient::new(&url);

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let one = random_bytes(MIB, &mut seed);
    let eight = random_bytes(8 * MIB, &mut seed);
    let one_hash = client
        .put("bench/one.bin", &one, &operator)
        .expect("put 1 MiB")
        .hash;
    let t = Instant::now();
    let eight_hash = client
        .put("bench/eight.bin", &eight, &operator)
        .expect("put 8 MiB")
        .hash;
    let eight_put = t.elapsed();

    println!("asset service on loopback (redb), one client, one request at a time");
    let table = Table::start(36, Some("MB/s"));

    for (label, hash, size, n) in [
        ("GET 1 MiB blob", &one_hash, MIB, gets),
        ("GET 8 MiB blob", &eight_hash, 8 * MIB, big_gets),
    ] {
        let mut hist = histogram();
        for _ in 0..n {
            let t = Instant::now();
            let body = client.blob(hash).expect("blob");
            hist.record(micros(t.elapsed())).expect("record");
            assert_eq!(body.len(), size);
        }
        let mb_per_s = size as f64 / 1e6 / (hist.mean() / 1e6);
        table.row_with(
            &format!("{label} ({n} GETs)"),
            &hist,
            Some(format!("{mb_per_s:.0}")),
        );
    }

    let etag = match client.manifest(None).expect("manifest") {
        ManifestFetch::Fresh { etag, .. } => etag,
        ManifestFetch::NotModified => panic!("a first poll cannot be 304"),
    };
    let mut hist = histogram();
    for _ in 0..polls {
        let t = Instant::now();
        let answer = client.manifest(Some(&etag)).expect("manifest");
        hist.record(micros(t.elapsed())).expect("record");
        assert_eq!(answer, ManifestFetch::NotModified);
    }
    table.row(&format!("manifest poll, 304 ({polls} polls)"), &hist);

    let mut hist = histogram();
    let mut content = one.clone();
    for i in 0..puts {
        // New content every time, so the store writes a new blob.
        content[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        let put = client
            .put("bench/put.bin", &content, &operator)
            .expect("put");
        hist.record(micros(t.elapsed())).expect("record");
        assert!(put.changed);
    }
    let mb_per_s = MIB as f64 / 1e6 / (hist.mean() / 1e6);
    table.row_with(
        &format!("PUT 1 MiB, new content ({puts} puts)"),
        &hist,
        Some(format!("{mb_per_s:.0}")),
    );
    println!(
        "\nthe one 8 MiB put of the setup took {:.1} ms",
        eight_put.as_secs_f64() * 1000.0
    );
    drop(runtime);
}

/// `len` bytes of xorshift64 output: incompressible, and no extra dependency.
fn random_bytes(len: usize, state: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
