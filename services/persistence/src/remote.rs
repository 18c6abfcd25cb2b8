//! The persistence service: this crate's storage API over QUIC, so that every shard, router and
//! service of a cluster shares one store (`tessera persistence`).
//!
//! **Model.** The server owns a [`Database`] (redb) and a commit version that goes up by one with
//! every commit. Clients run transactions optimistically, as FoundationDB does:
//!
//! - reads go to the server and record a *read conflict range*; the first read fixes the
//!   transaction's read version (the server's commit version when it served that read);
//! - writes stay in the client (reads see them) until commit;
//! - commit sends the read version, the read conflict ranges and the ordered writes. The server
//!   refuses the commit with [`StoreError::Conflict`] if any key in a read range was written by
//!   a commit newer than the read version, so committed transactions are serialisable, and
//!   [`Database::transact`] runs the closure again. Write-only transactions never conflict.
//!
//! Reads inside one transaction are not a snapshot: a later read may see a newer commit than an
//! earlier one. Such a transaction can never commit (its reads conflict), but its closure may
//! see the inconsistent values before that, so closures must not panic on them.
//!
//! The server remembers the write ranges of the last [`CONFLICT_WINDOW`]; a transaction whose
//! read version is older than that is refused as a conflict too (FoundationDB's "transaction too
//! old"), so transactions must be short.
//!
//! **Wire.** One QUIC bidirectional stream per request (ALPN [`PERSISTENCE_ALPN`]); the request
//! and the response are each one bincode message (`tessera_proto::frame`) read to the end of the
//! stream under a size limit. TLS is whatever the caller's quinn configs say; Tessera uses the
//! cluster CA with client certificates, so only cluster members reach the store.
//!
//! **Failures.** An unreachable server is [`StoreError::Unavailable`], never retried silently
//! by `transact`. A commit whose answer is lost may or may not have been applied; it is reported
//! as `Unavailable` with that said.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spaces::KeySpaces;
use crate::{Backend, Database, KeyValue, StoreError, Transaction, MAX_TRANSACTION_BYTES};
use tessera_coordinator::identity::Peer;
use tessera_coordinator::operators::{OperatorKey, OperatorSig, Operators};

/// ALPN of the persistence protocol.
pub const PERSISTENCE_ALPN: &[u8] = b"tessera-persistence/1";

/// How long the server remembers what commits wrote; older read versions are refused.
pub const CONFLICT_WINDOW: Duration = Duration::from_secs(5);

/// Largest request: a commit carries at most a transaction's worth of writes plus its read
/// ranges and framing.
const MAX_REQUEST: usize = MAX_TRANSACTION_BYTES + 2 * 1024 * 1024;

/// Largest response. A range read that would return more fails with a clear error; read it in
/// pages with a limit.
pub const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// How long a client waits for one answer before calling the service unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Get {
        key: Vec<u8>,
    },
    GetRange {
        begin: Vec<u8>,
        end: Vec<u8>,
        limit: u64,
    },
    Commit {
        read_version: Option<u64>,
        reads: Vec<(Vec<u8>, Vec<u8>)>,
        mutations: Vec<Mutation>,
    },
    /// A backup page: up to `limit` entries from `begin` on, for an operator (kind `backup`,
    /// body [`dump_body`]), read from `snapshot` (`None`: take a new snapshot of the store
    /// now; the answer names it, and the backup's later pages read the same one).
    Dump {
        begin: Vec<u8>,
        limit: u64,
        snapshot: Option<u64>,
        sig: OperatorSig,
    },
    /// A restore batch, for an operator (kind `restore`, body [`restore_body`]): with
    /// `clear_all`, the whole store is cleared first, in the same transaction. Refused while
    /// shards are checkpointing into the store, unless `force`.
    Restore {
        clear_all: bool,
        force: bool,
        entries: Vec<KeyValue>,
        sig: OperatorSig,
    },
}

/// What an operator signs for a backup page.
pub fn dump_body(begin: &[u8], limit: u64, snapshot: Option<u64>) -> Vec<u8> {
    let hex: String = begin.iter().map(|b| format!("{b:02x}")).collect();
    let snapshot = snapshot.map_or("new".to_string(), |s| s.to_string());
    format!("{hex}|{limit}|{snapshot}").into_bytes()
}

/// What an operator signs for a restore batch: the SHA-256 of the batch, hex.
pub fn restore_body(clear_all: bool, force: bool, entries: &[KeyValue]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[u8::from(clear_all), u8::from(force)]);
    for (k, v) in entries {
        ctx.update(&(k.len() as u64).to_be_bytes());
        ctx.update(k);
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes()
}

/// Whether `mutations` clear the whole key space: only a signed restore may.
fn wipes_everything(mutations: &[Mutation]) -> bool {
    mutations.iter().any(|m| {
        matches!(m, Mutation::ClearRange { begin, end } if begin.is_empty() && end.as_slice() >= b"\xff".as_slice())
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Mutation {
    Set { key: Vec<u8>, value: Vec<u8> },
    Clear { key: Vec<u8> },
    ClearRange { begin: Vec<u8>, end: Vec<u8> },
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Value {
        version: u64,
        value: Option<Vec<u8>>,
    },
    Range {
        version: u64,
        entries: Vec<KeyValue>,
    },
    Committed {
        version: u64,
    },
    /// A backup page and the snapshot it was read from.
    Page {
        snapshot: u64,
        entries: Vec<KeyValue>,
    },
    Failed(WireError),
}

/// [`StoreError`] as it crosses the wire.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    KeyTooLarge { len: u64, max: u64 },
    ValueTooLarge { len: u64, max: u64 },
    TransactionTooLarge { len: u64, max: u64 },
    ReservedKey,
    Conflict,
    Corrupt(String),
    Backend(String),
    NotAuthorized(String),
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> WireError {
        match e {
            StoreError::KeyTooLarge { len, max } => WireError::KeyTooLarge {
                len: len as u64,
                max: max as u64,
            },
            StoreError::ValueTooLarge { len, max } => WireError::ValueTooLarge {
                len: len as u64,
                max: max as u64,
            },
            StoreError::TransactionTooLarge { len, max } => WireError::TransactionTooLarge {
                len: len as u64,
                max: max as u64,
            },
            StoreError::ReservedKey => WireError::ReservedKey,
            StoreError::Conflict | StoreError::RetriesExhausted { .. } => WireError::Conflict,
            StoreError::Corrupt(s) => WireError::Corrupt(s),
            StoreError::Backend(s) => WireError::Backend(s),
            StoreError::Unavailable(s) => WireError::Backend(s),
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> StoreError {
        match e {
            WireError::KeyTooLarge { len, max } => StoreError::KeyTooLarge {
                len: len as usize,
                max: max as usize,
            },
            WireError::ValueTooLarge { len, max } => StoreError::ValueTooLarge {
                len: len as usize,
                max: max as usize,
            },
            WireError::TransactionTooLarge { len, max } => StoreError::TransactionTooLarge {
                len: len as usize,
                max: max as usize,
            },
            WireError::ReservedKey => StoreError::ReservedKey,
            WireError::Conflict => StoreError::Conflict,
            WireError::Corrupt(s) => StoreError::Corrupt(s),
            WireError::Backend(s) => StoreError::Backend(format!("persistence service: {s}")),
            WireError::NotAuthorized(s) => {
                StoreError::Backend(format!("the persistence service refused: {s}"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conflict detection: a pure state machine, tested without sockets.

/// What recent commits wrote, to decide whether a transaction's reads are still current.
#[derive(Debug)]
struct ConflictLog {
    /// The newest committed version.
    committed: u64,
    /// Write ranges `[begin, end)` of recent commits, oldest first, with their version and when
    /// they were committed.
    writes: VecDeque<(u64, Instant, Vec<u8>, Vec<u8>)>,
    /// Versions at or below this are forgotten: reads at them cannot be checked.
    floor: u64,
    window: Duration,
}

/// The smallest key after `key`: `[key, after(key))` holds exactly `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

impl Mutation {
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Mutation::Set { key, .. } | Mutation::Clear { key } => (key.clone(), after(key)),
            Mutation::ClearRange { begin, end } => (begin.clone(), end.clone()),
        }
    }
}

impl ConflictLog {
    fn new(window: Duration) -> ConflictLog {
        ConflictLog {
            committed: 0,
            writes: VecDeque::new(),
            floor: 0,
            window,
        }
    }

    /// Whether a transaction that read `reads` at `read_version` may commit.
    fn check(&self, read_version: u64, reads: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        if read_version < self.floor {
            return Err(StoreError::Conflict);
        }
        for (version, _, wb, we) in self.writes.iter().rev() {
            if *version <= read_version {
                break;
            }
            if reads.iter().any(|(rb, re)| rb < we && wb < re) {
                return Err(StoreError::Conflict);
            }
        }
        Ok(())
    }

    /// Records a commit's writes; returns its version.
    fn record(&mut self, mutations: &[Mutation], now: Instant) -> u64 {
        self.committed += 1;
        let v = self.committed;
        for m in mutations {
            let (b, e) = m.range();
            self.writes.push_back((v, now, b, e));
        }
        while let Some((version, at, _, _)) = self.writes.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            self.floor = self.floor.max(*version);
            self.writes.pop_front();
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Server.

struct ServerState {
    db: Database,
    log: parking_lot::Mutex<ConflictLog>,
    operators: Option<Operators>,
    spaces: KeySpaces,
    /// Snapshots backups are reading, by id.
    snapshots: parking_lot::Mutex<Snapshots>,
    /// When a shard last committed (a cell checkpoint): a restore then would be overwritten
    /// by the running cluster, and is refused unless forced.
    last_shard_commit: parking_lot::Mutex<Option<Instant>>,
}

/// Whether `entries` fit in one answer ([`MAX_RESPONSE`], with room for the framing); else
/// their size, bytes.
fn fits_one_answer(entries: &[KeyValue]) -> Result<(), usize> {
    let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    if bytes > MAX_RESPONSE - 1024 {
        Err(bytes)
    } else {
        Ok(())
    }
}

/// A restore is refused while a shard committed within this long.
pub const SHARDS_LIVE_WITHIN: Duration = Duration::from_secs(10);
/// A backup's snapshot is dropped when no page was read from it for this long.
pub const SNAPSHOT_IDLE: Duration = Duration::from_secs(60);
/// Most snapshots held at once (each keeps old versions of the store alive).
pub const MAX_SNAPSHOTS: usize = 4;

/// The snapshots backups are reading.
#[derive(Default)]
struct Snapshots {
    next: u64,
    open: std::collections::HashMap<u64, (Arc<dyn crate::Snapshot>, Instant)>,
}

impl Snapshots {
    /// Lets go of snapshots unused for [`SNAPSHOT_IDLE`]: while one is held, the store keeps
    /// every version it can still see (redb cannot reuse the pages: the file grows).
    fn sweep(&mut self, now: Instant) {
        self.open
            .retain(|_, (_, used)| now.duration_since(*used) < SNAPSHOT_IDLE);
    }

    /// A backup read past its last page: its snapshot goes at once.
    fn finish(&mut self, id: u64) {
        self.open.remove(&id);
    }

    fn take(
        &mut self,
        db: &Database,
        now: Instant,
    ) -> Result<(u64, Arc<dyn crate::Snapshot>), WireError> {
        self.sweep(now);
        if self.open.len() >= MAX_SNAPSHOTS {
            return Err(WireError::Backend(format!(
                "{MAX_SNAPSHOTS} backups are already running; try again when one has finished"
            )));
        }
        let snapshot = db.snapshot().map_err(WireError::from)?;
        self.next += 1;
        self.open.insert(self.next, (snapshot.clone(), now));
        Ok((self.next, snapshot))
    }

    fn get(&mut self, id: u64, now: Instant) -> Result<Arc<dyn crate::Snapshot>, WireError> {
        match self.open.get_mut(&id) {
            Some((snapshot, used)) if now.duration_since(*used) < SNAPSHOT_IDLE => {
                *used = now;
                Ok(snapshot.clone())
            }
            _ => {
                self.open.remove(&id);
                Err(WireError::Backend(format!(
                    "backup snapshot {id} is gone (unused for {} s, or the service restarted): \
                     run the backup again",
                    SNAPSHOT_IDLE.as_secs()
                )))
            }
        }
    }
}

impl ServerState {
    fn serve(&self, req: Request) -> Response {
        match req {
            Request::Get { key } => {
                let version = self.log.lock().committed;
                match self.db.get(&key) {
                    Ok(value) => Response::Value { version, value },
                    Err(e) => Response::Failed(e.into()),
                }
            }
            Request::GetRange { begin, end, limit } => {
                let version = self.log.lock().committed;
                match self.db.get_range(&begin, &end, limit as usize) {
                    Ok(entries) => match fits_one_answer(&entries) {
                        Ok(()) => Response::Range { version, entries },
                        Err(bytes) => Response::Failed(WireError::Backend(format!(
                            "the range read returns {bytes} bytes, more than the {MAX_RESPONSE} \
                             bytes one answer may carry; read it in pages with a limit"
                        ))),
                    },
                    Err(e) => Response::Failed(e.into()),
                }
            }
            Request::Commit {
                read_version,
                reads,
                mutations,
            } => {
                // One commit at a time: check, apply and record atomically.
                let mut log = self.log.lock();
                if let Some(rv) = read_version {
                    if let Err(e) = log.check(rv, &reads) {
                        return Response::Failed(e.into());
                    }
                }
                let applied = self.db.transact(|tx| {
                    for m in &mutations {
                        match m {
                            Mutation::Set { key, value } => tx.set(key, value)?,
                            Mutation::Clear { key } => tx.clear(key)?,
                            Mutation::ClearRange { begin, end } => tx.clear_range(begin, end),
                        }
                    }
                    Ok(())
                });
                match applied {
                    Ok(()) => Response::Committed {
                        version: log.record(&mutations, Instant::now()),
                    },
                    Err(e) => Response::Failed(e.into()),
                }
            }
            // Authorised in `serve_stream`.
            Request::Dump {
                begin,
                limit,
                snapshot,
                ..
            } => {
                let now = Instant::now();
                let taken = match snapshot {
                    None => self.snapshots.lock().take(&self.db, now),
                    Some(id) => self.snapshots.lock().get(id, now).map(|s| (id, s)),
                };
                let (id, snap) = match taken {
                    Ok(t) => t,
                    Err(e) => return Response::Failed(e),
                };
                match snap.get_range(&begin, b"\xff", limit as usize) {
                    Ok(entries) if entries.is_empty() => {
                        // Past the last page (how a backup ends): the snapshot goes now.
                        self.snapshots.lock().finish(id);
                        Response::Page {
                            snapshot: id,
                            entries,
                        }
                    }
                    Ok(entries) => match fits_one_answer(&entries) {
                        Ok(()) => Response::Page {
                            snapshot: id,
                            entries,
                        },
                        Err(bytes) => Response::Failed(WireError::Backend(format!(
                            "the backup page holds {bytes} bytes, more than the {MAX_RESPONSE} \
                             bytes one answer may carry; ask for fewer entries a page"
                        ))),
                    },
                    Err(e) => Response::Failed(e.into()),
                }
            }
            Request::Restore {
                clear_all,
                force,
                entries,
                ..
            } => {
                if !force {
                    if let Some(at) = *self.last_shard_commit.lock() {
                        let ago = at.elapsed();
                        if ago < SHARDS_LIVE_WITHIN {
                            tracing::warn!(
                                ago_ms = ago.as_millis() as u64,
                                "restore refused: shards are live"
                            );
                            return Response::Failed(WireError::NotAuthorized(format!(
                                "shards are checkpointing into this store (the last {} ms ago): \
                                 the running cluster would overwrite what is restored. Stop the \
                                 shards first (docs/operations.md, \"Backup and restore\"), or \
                                 restore anyway with --force",
                                ago.as_millis()
                            )));
                        }
                    }
                }
                let mut mutations = Vec::with_capacity(entries.len() + 1);
                if clear_all {
                    mutations.push(Mutation::ClearRange {
                        begin: Vec::new(),
                        end: vec![0xFF],
                    });
                }
                mutations.extend(
                    entries
                        .into_iter()
                        .map(|(key, value)| Mutation::Set { key, value }),
                );
                self.serve(Request::Commit {
                    read_version: None,
                    reads: Vec::new(),
                    mutations,
                })
            }
        }
    }
}

/// Whether `peer` may touch every key `req` names: its role's key spaces ([`KeySpaces`]).
/// Backups and restores are an operator's (checked in [`authorize`]); a certificate without a
/// role is bound by nothing (counted on the bus side).
fn within(spaces: &KeySpaces, peer: &Peer, req: &Request) -> Result<(), WireError> {
    let Some(role) = peer.role() else {
        return Ok(());
    };
    let ok = match req {
        Request::Get { key } => spaces.read(role, key),
        Request::GetRange { begin, end, .. } => spaces.range(role, begin, end),
        Request::Commit {
            reads, mutations, ..
        } => {
            reads.iter().all(|(b, e)| spaces.range(role, b, e))
                && mutations.iter().all(|m| match m {
                    Mutation::Set { key, .. } | Mutation::Clear { key } => spaces.key(role, key),
                    Mutation::ClearRange { begin, end } => spaces.range(role, begin, end),
                })
        }
        Request::Dump { .. } | Request::Restore { .. } => true,
    };
    if ok {
        return Ok(());
    }
    metrics::counter!("tessera_persistence_refused_total", "role" => role.as_str()).increment(1);
    tracing::warn!(
        peer = peer.name(),
        %role,
        "a request for keys outside the member's key spaces was refused"
    );
    Err(WireError::NotAuthorized(format!(
        "a {role} may not touch these keys (docs/security.md, \"Persistence key spaces\")"
    )))
}

/// Checks what needs an operator, here in the service: backups and restores carry an
/// operator's signature; a plain commit may not clear the whole store.
async fn authorize(operators: Option<&Operators>, req: &Request) -> Result<(), WireError> {
    let (kind, body, sig) = match req {
        Request::Commit { mutations, .. } if wipes_everything(mutations) => {
            tracing::warn!("a commit that clears the whole store was refused");
            return Err(WireError::NotAuthorized(
                "clearing the whole store is a restore, which an operator signs (tessera ctl \
                 restore)"
                    .into(),
            ));
        }
        Request::Dump {
            begin,
            limit,
            snapshot,
            sig,
        } => ("backup", dump_body(begin, *limit, *snapshot), sig),
        Request::Restore {
            clear_all,
            force,
            entries,
            sig,
        } => ("restore", restore_body(*clear_all, *force, entries), sig),
        _ => return Ok(()),
    };
    let Some(operators) = operators else {
        return Err(WireError::NotAuthorized(
            "this persistence service knows no operators (start it with --etcd)".into(),
        ));
    };
    match operators.check(kind, &body, Some(sig)).await {
        Ok(operator) => {
            tracing::info!(operator, kind, "operator request authorised");
            Ok(())
        }
        Err(e) if e.is_refusal() => {
            tracing::warn!(operator = sig.operator, kind, error = %e, "operator request refused");
            Err(WireError::NotAuthorized(e.to_string()))
        }
        Err(e) => Err(WireError::Backend(e.to_string())),
    }
}

/// A running persistence service.
pub struct PersistenceServer {
    endpoint: quinn::Endpoint,
}

impl PersistenceServer {
    /// Serves `db` on `listen` with `config` (whose TLS must offer [`PERSISTENCE_ALPN`]). Must be
    /// called inside a tokio runtime; requests are served until [`PersistenceServer::close`].
    /// Backups and restores must carry the signature of an operator in `operators` (`None`:
    /// none are possible); every other request stays in its sender's role's `spaces`.
    pub fn start(
        db: Database,
        listen: SocketAddr,
        config: quinn::ServerConfig,
        operators: Option<Operators>,
        spaces: KeySpaces,
    ) -> Result<PersistenceServer, StoreError> {
        let endpoint = quinn::Endpoint::server(config, listen)
            .map_err(|e| StoreError::backend(format!("listening on {listen}"), e))?;
        let state = Arc::new(ServerState {
            db,
            log: parking_lot::Mutex::new(ConflictLog::new(CONFLICT_WINDOW)),
            operators,
            spaces,
            snapshots: parking_lot::Mutex::new(Snapshots::default()),
            last_shard_commit: parking_lot::Mutex::new(None),
        });
        // Snapshots of backups that stopped half-way go after SNAPSHOT_IDLE, backup or not.
        let sweeping = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SNAPSHOT_IDLE / 6);
            loop {
                every.tick().await;
                let Some(state) = sweeping.upgrade() else {
                    return;
                };
                state.snapshots.lock().sweep(Instant::now());
            }
        });
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "persistence connection refused (not a cluster member?)");
                            return;
                        }
                    };
                    // The handshake verified the certificate; its role bounds the keys.
                    // (A connection without any client certificate exists only where the
                    // server's TLS asks for none, in tests: nothing to bound it by.)
                    let peer = match Peer::of(&conn) {
                        Some(peer) => peer,
                        None if conn.peer_identity().is_none() => Peer::Legacy {
                            name: "(no client certificate)".into(),
                        },
                        None => {
                            tracing::warn!("persistence connection closed: its certificate names no member role");
                            conn.close(1u32.into(), b"unknown member role");
                            return;
                        }
                    };
                    let peer = Arc::new(peer);
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let state = state.clone();
                        tokio::spawn(serve_stream(state, peer.clone(), send, recv));
                    }
                });
            }
        });
        Ok(PersistenceServer { endpoint })
    }

    /// Where the service listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting requests and closes every connection.
    pub fn close(&self) {
        self.endpoint
            .close(0u32.into(), b"persistence service stopping");
    }
}

async fn serve_stream(
    state: Arc<ServerState>,
    peer: Arc<Peer>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let response = match recv.read_to_end(MAX_REQUEST).await {
        Err(e) => Response::Failed(WireError::Backend(format!("cannot read the request: {e}"))),
        Ok(bytes) => match tessera_proto::frame::decode::<Request>(&bytes, MAX_REQUEST) {
            Err(e) => {
                tracing::warn!(error = %e, "malformed persistence request");
                Response::Failed(WireError::Backend(format!("malformed request: {e}")))
            }
            Ok(req) => match async {
                within(&state.spaces, &peer, &req)?;
                authorize(state.operators.as_ref(), &req).await
            }
            .await
            {
                Err(refused) => Response::Failed(refused),
                Ok(())
                    if matches!(req, Request::Commit { ref mutations, .. } if !mutations.is_empty())
                        && peer.role()
                            == Some(tessera_coordinator::identity::MemberRole::Shard) =>
                {
                    *state.last_shard_commit.lock() = Some(Instant::now());
                    match tokio::task::spawn_blocking(move || state.serve(req)).await {
                        Ok(r) => r,
                        Err(e) => {
                            Response::Failed(WireError::Backend(format!("request failed: {e}")))
                        }
                    }
                }
                // redb calls block: keep them off the I/O threads.
                Ok(()) => match tokio::task::spawn_blocking(move || state.serve(req)).await {
                    Ok(r) => r,
                    Err(e) => Response::Failed(WireError::Backend(format!("request failed: {e}"))),
                },
            },
        },
    };
    let bytes = match tessera_proto::frame::encode(&response) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a persistence response");
            return;
        }
    };
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
        // Wait until the client has the answer (or is gone) before dropping the stream.
        let _ = send.stopped().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

type Job = (
    Request,
    std::sync::mpsc::Sender<Result<Response, StoreError>>,
);

/// A [`Backend`] that runs transactions against a persistence service.
pub struct RemoteBackend {
    addr: SocketAddr,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl RemoteBackend {
    /// A client of the service at `addr`, whose certificate must name `server_name`. It connects
    /// on first use and reconnects after failures; it runs its own I/O thread, so its blocking
    /// calls work from any thread (from async code, call them in `spawn_blocking`, as for redb).
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<RemoteBackend, StoreError> {
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::backend("starting the persistence client", e))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = {
            let _guard = runtime.enter();
            let mut ep = quinn::Endpoint::client(bind)
                .map_err(|e| StoreError::backend("opening the persistence client socket", e))?;
            ep.set_default_client_config(config);
            ep
        };
        let name = server_name.to_string();
        std::thread::Builder::new()
            .name("persistence-client".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let link = Arc::new(Link {
                        addr,
                        name,
                        endpoint,
                        conn: tokio::sync::Mutex::new(None),
                    });
                    while let Some((req, reply)) = rx.recv().await {
                        let link = link.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(link.call(req).await);
                        });
                    }
                    link.endpoint.close(0u32.into(), b"client dropped");
                })
            })
            .map_err(|e| StoreError::backend("starting the persistence client thread", e))?;
        Ok(RemoteBackend { addr, jobs })
    }

    /// A [`Database`] on this backend.
    pub fn database(self) -> Database {
        Database::new(Arc::new(self))
    }

    fn call(&self, req: Request) -> Result<Response, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs.send((req, tx)).map_err(|_| {
            StoreError::Unavailable(format!("persistence client for {} has stopped", self.addr))
        })?;
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "persistence service at {} did not answer within {} s",
                self.addr,
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }
}

struct Link {
    addr: SocketAddr,
    name: String,
    endpoint: quinn::Endpoint,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl Link {
    async fn connection(&self) -> Result<quinn::Connection, StoreError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "persistence service at {} is unreachable: {e}",
                self.addr
            ))
        };
        let connecting = self
            .endpoint
            .connect(self.addr, &self.name)
            .map_err(|e| unavailable(&e))?;
        let c = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| unavailable(&"connection timed out"))?
            .map_err(|e| unavailable(&e))?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Sends one request; a request that cannot have reached the server (or a read) is tried
    /// once more on a fresh connection.
    async fn call(&self, req: Request) -> Result<Response, StoreError> {
        let bytes = tessera_proto::frame::encode(&req)
            .map_err(|e| StoreError::backend("encoding a persistence request", e))?;
        // Only reads are sent twice: a commit may have been applied, and a signed request's
        // nonce is used up by the first attempt.
        let is_commit = !matches!(req, Request::Get { .. } | Request::GetRange { .. });
        let mut last = None;
        for _ in 0..2 {
            let conn = self.connection().await?;
            match self.exchange(&conn, &bytes).await {
                Ok(r) => return Ok(r),
                Err((sent, e)) => {
                    conn.close(0u32.into(), b"request failed");
                    if sent && is_commit {
                        return Err(StoreError::Unavailable(format!(
                            "lost the answer of a commit to {}; it may or may not have been \
                             applied: {e}",
                            self.addr
                        )));
                    }
                    last = Some(e);
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "persistence service at {}: {}",
            self.addr,
            last.unwrap_or_default()
        )))
    }

    /// One request on its own stream. On failure says whether the request may have been sent.
    async fn exchange(
        &self,
        conn: &quinn::Connection,
        bytes: &[u8],
    ) -> Result<Response, (bool, String)> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| (false, e.to_string()))?;
        send.write_all(bytes)
            .await
            .map_err(|e| (true, e.to_string()))?;
        send.finish().map_err(|e| (true, e.to_string()))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, recv.read_to_end(MAX_RESPONSE))
            .await
            .map_err(|_| (true, "no answer in time".to_string()))?
            .map_err(|e| (true, e.to_string()))?;
        tessera_proto::frame::decode::<Response>(&answer, MAX_RESPONSE)
            .map_err(|e| (true, format!("malformed answer: {e}")))
    }
}

/// The persistence service as an operator: backup pages and restore batches signed with the
/// operator's key, which the service checks (`tessera ctl backup|restore`).
pub struct OperatorSession {
    backend: RemoteBackend,
    key: OperatorKey,
    /// Restore even while shards are live (`tessera ctl restore --force`).
    force: bool,
}

impl OperatorSession {
    pub fn new(backend: RemoteBackend, key: OperatorKey) -> OperatorSession {
        OperatorSession {
            backend,
            key,
            force: false,
        }
    }

    /// Restores even while shards are checkpointing into the store.
    pub fn forcing(self, force: bool) -> OperatorSession {
        OperatorSession { force, ..self }
    }
}

/// The pages of one backup through the service: the first asks for a snapshot, the rest read
/// the same one.
struct ServicePages<'a> {
    session: &'a OperatorSession,
    snapshot: Option<u64>,
}

impl crate::backup::PageReader for ServicePages<'_> {
    fn page(&mut self, begin: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let limit = limit as u64;
        let sig = self
            .session
            .key
            .sign_request("backup", &dump_body(begin, limit, self.snapshot));
        match self.session.backend.call(Request::Dump {
            begin: begin.to_vec(),
            limit,
            snapshot: self.snapshot,
            sig,
        })? {
            Response::Page { snapshot, entries } => {
                self.snapshot = Some(snapshot);
                Ok(entries)
            }
            Response::Failed(e) => Err(e.into()),
            other => Err(unexpected(&other)),
        }
    }
}

impl crate::backup::BackupStore for OperatorSession {
    fn pages(&self) -> Result<Box<dyn crate::backup::PageReader + '_>, StoreError> {
        Ok(Box::new(ServicePages {
            session: self,
            snapshot: None,
        }))
    }

    fn write_batch(&self, clear_all: bool, batch: &[KeyValue]) -> Result<(), StoreError> {
        let sig = self
            .key
            .sign_request("restore", &restore_body(clear_all, self.force, batch));
        match self.backend.call(Request::Restore {
            clear_all,
            force: self.force,
            entries: batch.to_vec(),
            sig,
        })? {
            Response::Committed { .. } => Ok(()),
            Response::Failed(e) => Err(e.into()),
            other => Err(unexpected(&other)),
        }
    }
}

/// One attempt of a transaction on the client: reads from the server, writes kept here.
struct RemoteTxn<'a> {
    backend: &'a RemoteBackend,
    read_version: Option<u64>,
    reads: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys this transaction set (`Some`) or cleared (`None`).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges this transaction cleared; `writes` holds what was set in them afterwards.
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    mutations: Vec<Mutation>,
}

impl RemoteTxn<'_> {
    fn note_version(&mut self, version: u64) {
        self.read_version.get_or_insert(version);
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    fn touches(&self, begin: &[u8], end: &[u8]) -> bool {
        self.writes
            .range(begin.to_vec()..end.to_vec())
            .next()
            .is_some()
            || self
                .cleared
                .iter()
                .any(|(b, e)| b.as_slice() < end && begin < e.as_slice())
    }
}

impl Transaction for RemoteTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if self.is_cleared(key) {
            return Ok(None);
        }
        match self.backend.call(Request::Get { key: key.to_vec() })? {
            Response::Value { version, value } => {
                self.note_version(version);
                self.reads.push((key.to_vec(), after(key)));
                Ok(value)
            }
            Response::Failed(e) => Err(e.into()),
            other => Err(unexpected(&other)),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        self.mutations.push(Mutation::Set {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), None);
        self.mutations.push(Mutation::Clear { key: key.to_vec() });
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        self.writes
            .retain(|k, _| !(begin <= k.as_slice() && k.as_slice() < end));
        self.cleared.push((begin.to_vec(), end.to_vec()));
        self.mutations.push(Mutation::ClearRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
        });
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        // With local writes in the range the server's first `limit` entries may not be the
        // merged first `limit`: read the whole range then.
        let local = self.touches(begin, end);
        let server_limit = if local { 0 } else { limit as u64 };
        let entries = match self.backend.call(Request::GetRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
            limit: server_limit,
        })? {
            Response::Range { version, entries } => {
                self.note_version(version);
                self.reads.push((begin.to_vec(), end.to_vec()));
                entries
            }
            Response::Failed(e) => return Err(e.into()),
            other => return Err(unexpected(&other)),
        };
        if !local {
            return Ok(entries);
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = entries
            .into_iter()
            .filter(|(k, _)| !self.is_cleared(k))
            .collect();
        for (k, v) in self.writes.range(begin.to_vec()..end.to_vec()) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        let take = if limit == 0 { usize::MAX } else { limit };
        Ok(merged.into_iter().take(take).collect())
    }
}

fn unexpected(r: &Response) -> StoreError {
    StoreError::Backend(format!(
        "persistence service answered out of turn: {}",
        match r {
            Response::Value { .. } => "a value",
            Response::Range { .. } => "a range",
            Response::Committed { .. } => "a commit",
            Response::Page { .. } => "a backup page",
            Response::Failed(_) => "an error",
        }
    ))
}

impl Backend for RemoteBackend {
    fn attempt(
        &self,
        body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut tx = RemoteTxn {
            backend: self,
            read_version: None,
            reads: Vec::new(),
            writes: BTreeMap::new(),
            cleared: Vec::new(),
            mutations: Vec::new(),
        };
        body(&mut tx)?;
        if tx.mutations.is_empty() {
            return Ok(());
        }
        match self.call(Request::Commit {
            read_version: tx.read_version,
            reads: tx.reads,
            mutations: tx.mutations,
        })? {
            Response::Committed { .. } => Ok(()),
            Response::Failed(e) => Err(e.into()),
            other => Err(unexpected(&other)),
        }
    }

    fn describe(&self) -> String {
        format!("persistence service at {}", self.addr)
    }

    fn snapshot(&self) -> Result<Arc<dyn crate::Snapshot>, StoreError> {
        Err(StoreError::Backend(
            "a persistence service's snapshots are read by operators only (tessera ctl backup)"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    /// A backup's snapshot keeps old versions of the store alive (found by the soak: the
    /// file grew from 1 to 480 MB after one backup): it goes once the backup read past its end,
    /// and one left half-read goes after SNAPSHOT_IDLE without waiting for another backup.
    #[test]
    fn backup_snapshots_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("s.redb")).unwrap();
        let mut snaps = Snapshots::default();
        let t0 = Instant::now();
        let (id, _) = snaps.take(&db, t0).unwrap();
        snaps.finish(id);
        assert!(snaps.open.is_empty());
        snaps.take(&db, t0).unwrap();
        snaps.sweep(t0 + SNAPSHOT_IDLE / 2);
        assert_eq!(
            snaps.open.len(),
            1,
            "a backup still reading keeps its snapshot"
        );
        snaps.sweep(t0 + SNAPSHOT_IDLE);
        assert!(
            snaps.open.is_empty(),
            "an abandoned backup's snapshot stayed"
        );
    }
    use super::*;

    fn set(k: &[u8]) -> Mutation {
        Mutation::Set {
            key: k.to_vec(),
            value: vec![1],
        }
    }

    #[test]
    fn reads_conflict_only_with_newer_overlapping_writes() {
        let mut log = ConflictLog::new(Duration::from_secs(5));
        let now = Instant::now();
        let v1 = log.record(&[set(b"a")], now);
        let read = vec![(b"a".to_vec(), after(b"a"))];
        assert!(log.check(v1, &read).is_ok(), "read after the write");
        assert!(log.check(v1 - 1, &read).is_err(), "read before the write");
        let other = vec![(b"b".to_vec(), after(b"b"))];
        assert!(log.check(0, &other).is_ok(), "a different key");
        log.record(
            &[Mutation::ClearRange {
                begin: b"m".to_vec(),
                end: b"p".to_vec(),
            }],
            now,
        );
        let inside = vec![(b"n".to_vec(), after(b"n"))];
        assert!(log.check(v1, &inside).is_err(), "key in a cleared range");
        let range = vec![(b"o".to_vec(), b"z".to_vec())];
        assert!(log.check(v1, &range).is_err(), "overlapping ranges");
        let touching = vec![(b"p".to_vec(), b"z".to_vec())];
        assert!(log.check(v1, &touching).is_ok(), "ranges are half-open");
    }

    #[test]
    fn forgotten_versions_are_refused() {
        let mut log = ConflictLog::new(Duration::from_millis(10));
        let t0 = Instant::now();
        log.record(&[set(b"a")], t0);
        let v2 = log.record(&[set(b"b")], t0 + Duration::from_secs(1));
        // The first write fell out of the window: a read at version 0 can no longer be checked.
        assert!(log.check(0, &[(b"z".to_vec(), after(b"z"))]).is_err());
        assert!(log.check(v2, &[(b"a".to_vec(), after(b"a"))]).is_ok());
    }
}

#[cfg(test)]
mod service_tests {
    //! The conformance suite against a real service on loopback (QUIC, TLS, a redb file).
    use super::*;
    use crate::conformance;

    const NAME: &str = "persistence.test";

    /// TLS for the tests: a self-signed server certificate the client pins. (The cluster uses
    /// its CA with client certificates; see `tessera persistence`.)
    fn tls() -> (quinn::ServerConfig, quinn::ClientConfig) {
        let cert = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![PERSISTENCE_ALPN.to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![PERSISTENCE_ALPN.to_vec()];
        (
            quinn::ServerConfig::with_crypto(Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap(),
            )),
            quinn::ClientConfig::new(Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap(),
            )),
        )
    }

    /// A service on a fresh redb file, on its own runtime; dropped with the returned guard.
    struct Service {
        _dir: tempfile::TempDir,
        _runtime: tokio::runtime::Runtime,
        server: PersistenceServer,
        client: quinn::ClientConfig,
    }

    impl Service {
        fn start() -> Service {
            Service::start_with(None)
        }

        fn start_with(operators: Option<Operators>) -> Service {
            let (server_cfg, client) = tls();
            Service::start_tls(server_cfg, client, operators, KeySpaces::default())
        }

        fn start_tls(
            server_cfg: quinn::ServerConfig,
            client: quinn::ClientConfig,
            operators: Option<Operators>,
            spaces: KeySpaces,
        ) -> Service {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = {
                let _g = runtime.enter();
                PersistenceServer::start(
                    db,
                    ([127, 0, 0, 1], 0).into(),
                    server_cfg,
                    operators,
                    spaces,
                )
                .unwrap()
            };
            Service {
                _dir: dir,
                _runtime: runtime,
                server,
                client,
            }
        }

        fn database(&self) -> Database {
            RemoteBackend::new(self.server.local_addr().unwrap(), NAME, self.client.clone())
                .unwrap()
                .database()
        }
    }

    #[test]
    fn whole_suite_over_quic() {
        let service = Service::start();
        // Every `open` is a new client of the same service.
        conformance::run_all(&|| service.database());
    }

    /// Each member reaches only its role's keys: a router cannot write an account (so cannot
    /// promote one) unless the service lets routers keep accounts, a shard reads no account, a
    /// chat service cannot sweep the whole store; everyone may read the readiness probe.
    #[test]
    fn each_member_reaches_only_its_roles_keys() {
        use crate::keys::key;
        use tessera_coordinator::identity::MemberRole;
        use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
        let ca = ClusterCa::generate().unwrap();
        let server_cfg = |ca: &ClusterCa| {
            ca.member(MemberRole::Persistence, "p")
                .unwrap()
                .server_config_for(PERSISTENCE_ALPN)
                .unwrap()
        };
        let client = |role| {
            ca.member(role, "m")
                .unwrap()
                .client_config_for(PERSISTENCE_ALPN)
                .unwrap()
        };
        let as_role = |service: &Service, role| {
            RemoteBackend::new(
                service.server.local_addr().unwrap(),
                CLUSTER_NAME,
                client(role),
            )
            .unwrap()
            .database()
        };
        let refused = |r: Result<(), StoreError>| {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("may not touch these keys"), "{e}");
        };
        let account = key(&[b"auth", b"account", &1u64.to_be_bytes()]);
        let promoted = br#"{"name":"mallory","role":"operator"}"#;
        let service = Service::start_tls(
            server_cfg(&ca),
            client(MemberRole::Auth),
            None,
            KeySpaces::default(),
        );
        let auth = as_role(&service, MemberRole::Auth);
        auth.set(&account, b"{}").unwrap();
        let router = as_role(&service, MemberRole::Router);
        refused(router.set(&account, promoted));
        refused(router.get(&account).map(|_| ()));
        router.set(b"player/00000000000000000001", b"{}").unwrap();
        assert!(router.get(crate::spaces::READINESS_PROBE).is_ok());
        let shard = as_role(&service, MemberRole::Shard);
        refused(shard.get(&account).map(|_| ()));
        shard
            .set(&key(&[b"checkpoint", b"0,0", b"state"]), b"s")
            .unwrap();
        let chat = as_role(&service, MemberRole::Chat);
        refused(chat.get_range(b"", b"\xff", 0).map(|_| ()));
        refused(chat.transact(|tx| {
            tx.set(&key(&[b"chat", b"mute", b"x"]), b"1")?;
            tx.set(&account, promoted)?;
            Ok(())
        }));
        assert_eq!(auth.get(&account).unwrap().as_deref(), Some(&b"{}"[..]));
        // A service that lets routers keep the accounts (no auth service in the cluster).
        let lenient = Service::start_tls(
            server_cfg(&ca),
            client(MemberRole::Router),
            None,
            KeySpaces {
                router_accounts: true,
            },
        );
        as_role(&lenient, MemberRole::Router)
            .set(&account, b"{}")
            .unwrap();
    }

    /// A backup through the service is the store at one moment: what a shard and a router
    /// write between its pages is not in it. A restore is refused while shards checkpoint
    /// into the store (the cluster would overwrite it), and runs when the operator forces it
    /// (issue 16, item 11).
    #[test]
    fn a_backup_is_one_snapshot_and_a_restore_waits_for_the_shards() {
        use crate::backup::{dump_in_pages, restore};
        use crate::keys::key;
        use std::io::{BufRead, Write};
        use tessera_coordinator::identity::MemberRole;
        use tessera_coordinator::operators::{OperatorRecord, Voucher};
        use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
        use tessera_coordinator::{ClusterStore, MemStore};

        let ca = ClusterCa::generate().unwrap();
        let cluster: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(cluster, "/t/", vec![ca.cert().clone()]);
        let root = OperatorKey::generate("root").unwrap();
        let record = OperatorRecord::new("root", &root.public_hex(), &Voucher::Ca(&ca)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(operators.records().put(&record)).unwrap();
        let client = |role| {
            ca.member(role, "m")
                .unwrap()
                .client_config_for(PERSISTENCE_ALPN)
                .unwrap()
        };
        let service = Service::start_tls(
            ca.member(MemberRole::Persistence, "p")
                .unwrap()
                .server_config_for(PERSISTENCE_ALPN)
                .unwrap(),
            client(MemberRole::Ctl),
            Some(operators),
            KeySpaces::default(),
        );
        let addr = service.server.local_addr().unwrap();
        let link = |role| RemoteBackend::new(addr, CLUSTER_NAME, client(role)).unwrap();
        let router = link(MemberRole::Router).database();
        for i in 0..6u8 {
            router
                .set(format!("player/{i:020}").as_bytes(), &[i])
                .unwrap();
        }
        let checkpoint = |cell: &str| key(&[b"checkpoint", cell.as_bytes(), b"state"]);
        let shard = link(MemberRole::Shard).database();
        let ops = OperatorSession::new(link(MemberRole::Ctl), root.clone());
        // What the router sees; the shard's checkpoint is checked on its own.
        let everything = || router.get_range(b"player/", b"player0", 0).unwrap();
        let before = everything();
        assert_eq!(before.len(), 6);

        // The writes land while the dump is between its pages (two entries a page).
        struct Meddling<F: FnMut()> {
            out: Vec<u8>,
            writes: usize,
            meddle: Option<F>,
        }
        impl<F: FnMut()> Write for Meddling<F> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.writes += 1;
                if self.writes == 3 {
                    if let Some(mut f) = self.meddle.take() {
                        f();
                    }
                }
                self.out.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut file = Meddling {
            out: Vec::new(),
            writes: 0,
            meddle: Some(|| {
                router
                    .set(b"player/00000000000000000005", b"moved")
                    .unwrap();
                router.set(b"player/00000000000000000009", b"new").unwrap();
                shard.set(&checkpoint("0,0"), b"tick 2").unwrap();
            }),
        };
        assert_eq!(dump_in_pages(&ops, &mut file, 2).unwrap(), 6);
        assert_ne!(everything(), before, "the meddling writes happened");
        let bytes = file.out;
        let mut open =
            move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn BufRead>);
        let scratch = tempfile::tempdir().unwrap();
        let copy = Database::open_redb(&scratch.path().join("copy.redb")).unwrap();
        restore(&copy, &mut open).unwrap();
        assert_eq!(
            copy.get_range(b"", b"\xff", 0).unwrap(),
            before,
            "the backup mixed in writes made while it ran"
        );

        // A shard just checkpointed: the restore is refused, and the store is untouched.
        let during = everything();
        let err = restore(&ops, &mut open).unwrap_err().to_string();
        assert!(
            err.contains("shards are checkpointing into this store") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(everything(), during);
        // Forced, it runs.
        let forced = OperatorSession::new(link(MemberRole::Ctl), root).forcing(true);
        assert_eq!(restore(&forced, &mut open).unwrap(), 6);
        assert_eq!(everything(), before);
        assert_eq!(shard.get(&checkpoint("0,0")).unwrap(), None);
    }

    #[test]
    fn two_clients_see_each_others_commits() {
        let service = Service::start();
        let (a, b) = (service.database(), service.database());
        a.set(b"shared", b"1").unwrap();
        assert_eq!(b.get(b"shared").unwrap().as_deref(), Some(&b"1"[..]));
        conformance::concurrent_increments_are_exact(&a, 4, 25);
    }

    #[test]
    fn a_stale_read_conflicts_and_the_retry_sees_the_new_value() {
        let service = Service::start();
        let (a, b) = (service.database(), service.database());
        a.set(b"k", b"old").unwrap();
        let mut attempts = 0;
        let seen = a
            .transact(|tx| {
                attempts += 1;
                let v = tx.get(b"k")?;
                if attempts == 1 {
                    // Another client commits between our read and our commit.
                    b.set(b"k", b"new").unwrap();
                }
                tx.set(b"copy", v.as_deref().unwrap_or_default())?;
                Ok(v)
            })
            .unwrap();
        assert_eq!(attempts, 2, "the first attempt must conflict");
        assert_eq!(seen.as_deref(), Some(&b"new"[..]));
        assert_eq!(a.get(b"copy").unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_dead_service_is_a_clear_unavailable_error() {
        let service = Service::start();
        let db = service.database();
        db.set(b"k", b"v").unwrap();
        service.server.close();
        let err = db.get(b"k").unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("unavailable"), "{err}");
    }

    /// Backups and restores are checked by the service itself: a member certificate alone
    /// cannot wipe or dump the store; a stranger's, replayed or revoked signature is refused.
    #[test]
    fn backups_and_restores_need_an_operator_whom_the_service_checks() {
        use crate::backup::{dump, restore};
        use std::io::BufRead;
        use tessera_coordinator::operators::{OperatorRecord, Voucher};
        use tessera_coordinator::pki::ClusterCa;
        use tessera_coordinator::{ClusterStore, MemStore};

        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let cluster: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(cluster, "/t/", vec![ca.cert().clone()]);
        let root = OperatorKey::generate("root").unwrap();
        let record = OperatorRecord::new("root", &root.public_hex(), &Voucher::Ca(&ca)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(operators.records().put(&record)).unwrap();
        let service = Service::start_with(Some(operators.clone()));
        let addr = service.server.local_addr().unwrap();
        let backend = || RemoteBackend::new(addr, NAME, service.client.clone()).unwrap();
        let db = service.database();
        db.set(b"k1", b"v1").unwrap();
        db.set(b"k2", b"v2").unwrap();
        let everything = || db.get_range(b"", b"\xff", 0).unwrap();
        let before = everything();

        // A member cannot wipe the store with a plain commit.
        let err = db
            .transact(|tx| {
                tx.clear_range(b"", b"\xff");
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a restore"), "{err}");

        // An operator backs up and restores.
        let session = OperatorSession::new(backend(), root.clone());
        let mut file = Vec::new();
        assert_eq!(dump(&session, &mut file).unwrap(), 2);
        db.set(b"k3", b"written after the backup").unwrap();
        let bytes = file.clone();
        let mut open =
            move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn BufRead>);
        assert_eq!(restore(&session, &mut open).unwrap(), 2);
        assert_eq!(everything(), before);

        // A key the cluster does not know: neither a backup nor a restore.
        let stranger = OperatorSession::new(backend(), OperatorKey::generate("root").unwrap());
        let err = dump(&stranger, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        let err = restore(&stranger, &mut open).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");

        // A signed batch replayed: refused.
        let link = backend();
        let entries = vec![(b"k9".to_vec(), b"v9".to_vec())];
        let sig = root.sign_request("restore", &restore_body(false, false, &entries));
        let restore_once = || {
            link.call(Request::Restore {
                clear_all: false,
                force: false,
                entries: entries.clone(),
                sig: sig.clone(),
            })
            .unwrap()
        };
        assert!(matches!(restore_once(), Response::Committed { .. }));
        match restore_once() {
            Response::Failed(WireError::NotAuthorized(why)) => {
                assert!(why.contains("already used"), "{why}")
            }
            other => panic!("a replay was served: {other:?}"),
        }
        db.clear(b"k9").unwrap();

        // Revoked: refused from the next request on; the store is unchanged throughout.
        let mut record = rt
            .block_on(operators.records().get("root"))
            .unwrap()
            .unwrap();
        record.revoke(&Voucher::Ca(&ca)).unwrap();
        rt.block_on(operators.records().put(&record)).unwrap();
        let err = restore(&session, &mut open).unwrap_err().to_string();
        assert!(err.contains("revoked"), "{err}");
        assert_eq!(everything(), before);
    }

    #[test]
    fn garbage_requests_get_an_error_and_the_service_keeps_serving() {
        let service = Service::start();
        let db = service.database();
        db.set(b"k", b"v").unwrap();
        let addr = service.server.local_addr().unwrap();
        let client = service.client.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(async move {
            let mut ep = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
            ep.set_default_client_config(client);
            let conn = ep.connect(addr, NAME).unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0xFF; 64]).await.unwrap();
            send.finish().unwrap();
            let bytes = recv.read_to_end(MAX_RESPONSE).await.unwrap();
            tessera_proto::frame::decode::<Response>(&bytes, MAX_RESPONSE).unwrap()
        });
        match answer {
            Response::Failed(WireError::Backend(msg)) => {
                assert!(msg.contains("malformed request"), "{msg}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn random_operations_match_a_btreemap_over_quic() {
        // The client keeps writes locally and merges them into range reads: the model check is
        // what shows that merge right.
        let service = Service::start();
        let db = service.database();
        conformance::random_operations_match_a_btreemap(&db, 64);
    }
}
