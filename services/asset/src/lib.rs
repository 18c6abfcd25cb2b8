//! Assets for Tessera: content-addressed files over HTTP (`tessera asset`).
//!
//! Assets are the world definition, NPC scripts (`scripts/<name>.rhai`), meshes and textures.
//! Operators upload them (`tessera ctl asset put`, [`AssetClient::put`]); shards poll the
//! manifest to hot-reload scripts, and 3D clients fetch blobs by hash and cache them forever.
//!
//! - [`router`] / [`serve`]: the HTTP service (axum). Replicas are stateless: everything lives
//!   in a [`tessera_persistence::Database`], so any number of them can run behind a load
//!   balancer.
//! - [`AssetClient`]: a blocking client (ureq) that checks what it downloads against its hash.
//! - [`AssetStore`]: the storage layout, blocking.
//!
//! **Storage.** A blob is stored once per content under `("asset", "blob", <blake3 hex>)` with
//! [`tessera_persistence::set_chunked`]; a name points at its current blob through a JSON
//! [`AssetRecord`] under `("asset", "name", <name>)`, keeps its changes (uploads, rollbacks,
//! removals) as [`HistoryEntry`] records, and `("asset", "manifest-version")` counts changes.
//! A put writes them in one transaction, and one transaction may write at most 10 MB, so
//! assets are limited to [`MAX_ASSET_BYTES`] (8 MiB). Blobs are never deleted, so a download
//! streams them a chunk per transaction ([`AssetStore::open_blob`], [`BlobReader`]) and a
//! rollback can point a name at an earlier blob again.
//!
//! **Scripts.** Uploads of NPC scripts (`*.rhai`) are checked before they are stored
//! ([`scripts`]): the name, whether an NPC of the world runs it, and whether it compiles with
//! the shards' engine; a broken version never replaces a good one. The running version of a
//! script is its current upload, else the world folder's file, which the service serves too
//! (`GET /v1/assets/scripts/<stem>.rhai`, `GET /v1/scripts`).
//!
//! **Limits.** [`http_server::serve_http`] caps connections and bounds how long a client may take
//! to send a request head or to take an answer; the asset service and every role's metrics
//! endpoint run on it. Uploads are bounded in size, time and number ([`AssetConfig`]).
//!
//! **HTTP.** Everything is under `/v1`; errors are JSON `{"error": "..."}`. See
//! `docs/assets.md` for the full API, the caching rules and the upload signature
//! ([`upload_auth`]).
//!
//! This crate must not depend on the shard, router or client crates (the router uses its HTTP
//! server): it serves bytes, and checks scripts through the [`scripts::ScriptCompiler`] the
//! `tessera` binary gives it (the shards' engine).

mod blob_body;
mod client;
mod conditional;
mod error;
pub mod http_server;
mod name;
pub mod scripts;
mod server;
mod store;
pub mod upload_auth;

pub use client::{AssetClient, AssetContent, HistoryView, ManifestFetch, PutResult, RemoveResult};
pub use error::AssetError;
pub use name::{AssetName, MAX_NAME_LEN};
pub use server::{
    router, serve, AssetConfig, MetricsRender, MAX_CONCURRENT_UPLOADS, SOURCE_HEADER,
    UPLOAD_TIMEOUT,
};
pub use store::{
    AssetRecord, AssetStore, BlobReader, History, HistoryAction, HistoryEntry, Manifest,
    ManifestEntry, PutOutcome, HISTORY_FORMAT, HISTORY_LIMIT,
};

/// Largest asset, in bytes: a put writes the whole blob in one transaction, and transactions
/// are limited to 10 MB (`tessera_persistence::MAX_TRANSACTION_BYTES`).
pub const MAX_ASSET_BYTES: usize = 8 * 1024 * 1024;

/// The blake3 hash of `bytes`, lowercase hex: the address of a blob.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Whether `s` looks like a blob address (64 lowercase hex digits).
pub fn is_hash_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
