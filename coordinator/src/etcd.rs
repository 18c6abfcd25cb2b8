//! The cluster store on a real etcd (v3 API, through the `etcd-client`
//! crate). Same semantics as [`MemStore`](crate::MemStore); the conformance
//! suite (`conformance.rs`) runs against both.
//!
//! Mapping to etcd:
//! - `compare_and_put` is one etcd transaction: `create_revision == 0` for
//!   [`Expect::Absent`], `mod_revision == rev` (and the key exists) for
//!   [`Expect::ModRevision`], the put in the success branch. The revision
//!   returned is the transaction's header revision, which is the new
//!   `mod_revision` of the key.
//! - Leases have a whole-second TTL on etcd: a [`Duration`] is rounded up to
//!   whole seconds, and etcd raises anything below its minimum (about 2 s with
//!   the default heartbeat and election timeout).
//! - A watch is one etcd watch stream read by a spawned task. The channel
//!   closes when the stream breaks (etcd restarted, connection lost, watch
//!   canceled by compaction or leader loss): callers must then list and watch
//!   again (subscribe first, then list, as [`CellMap::watch`] does). Events
//!   between the break and the new watch are not replayed.
//!
//! Every etcd failure is [`StoreError::Unavailable`], except an unknown or
//! expired lease, which is [`StoreError::LeaseNotFound`], and a request
//! etcd's auth refused, which is [`StoreError::PermissionDenied`] naming the
//! user (the client certificate's Common Name) and the key.
//!
//! Users and roles: with auth on, etcd lets each client touch only the key
//! ranges its user's role grants; [`apply_roles`] sets up one user and role
//! per Tessera role ([`MEMBER_GRANTS`], docs/security.md, "etcd users and
//! roles").
//!
//! Transport: plain HTTP/2 (`http://`, for development), or TLS
//! (`https://`) with [`EtcdTls`]: the CA that signed etcd's certificate and
//! the client certificate etcd checks (`--client-cert-auth`). A connection
//! that fails is dialled again directly to say why (refused, not TLS, which
//! side's certificate was rejected); see [`EtcdConnectError`].
//!
//! [`CellMap::watch`]: crate::CellMap::watch

mod roles;
mod tls;

pub use roles::{
    apply_roles, Access, AuthChange, EtcdRolesError, Grant, MemberGrants, ETCD_ROOT, MEMBER_GRANTS,
};
pub use tls::{ClientCert, EtcdTls};

use crate::store::{
    BoxFuture, ClusterStore, Expect, KeyValue, LeaseId, LeaseTtl, StoreError, WatchEvent,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Default bound on one etcd request (etcdctl uses the same).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys fetched per range request when listing a prefix; larger prefixes are
/// read in pages at one revision, so a list is still a consistent snapshot.
const LIST_PAGE: i64 = 1000;

/// Why [`EtcdStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConnectError {
    /// Settings that cannot work: no endpoint, an `https://` endpoint
    /// without TLS settings, TLS settings with an `http://` endpoint.
    #[error("{0}")]
    Settings(String),
    /// A TLS file is missing, unreadable, or not what it should be.
    #[error("cannot use {what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// etcd and this client do not agree on TLS: one refused the other's
    /// certificate, or only one of them speaks TLS. Retrying will not help.
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Tls { endpoints: String, reason: String },
    /// etcd does not answer (not running, unreachable, no leader).
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
}

/// The cluster store backed by etcd. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The endpoints as given, with `http://` added where no scheme was.
    endpoints: Vec<String>,
    /// Who etcd's auth takes this client for: its certificate's Common Name.
    user: Option<String>,
    request_timeout: Duration,
    list_page: i64,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("request_timeout", &self.request_timeout)
            .field("list_page", &self.list_page)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers within `timeout`.
    ///
    /// `endpoints` are URLs (`https://etcd:2379`, `http://127.0.0.1:2379`)
    /// or `host:port`, which means `https://` with `tls` and `http://`
    /// without. With `tls`, every endpoint must be `https://`, and its files
    /// are read first (an error names the file); without, every endpoint
    /// must be `http://`. When etcd does not answer, the error says why as
    /// far as dialling it directly can tell ([`EtcdConnectError`]). Later
    /// requests are each bounded by [`DEFAULT_REQUEST_TIMEOUT`] (see
    /// [`EtcdStore::with_request_timeout`]).
    pub async fn connect(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
        timeout: Duration,
    ) -> Result<EtcdStore, EtcdConnectError> {
        if endpoints.is_empty() {
            return Err(EtcdConnectError::Settings("no etcd endpoints given".into()));
        }
        let shown: Vec<String> = endpoints
            .iter()
            .map(|e| with_scheme(e, tls.is_some()))
            .collect();
        for endpoint in &shown {
            match (endpoint.starts_with("https://"), tls.is_some()) {
                (true, false) => {
                    return Err(EtcdConnectError::Settings(format!(
                        "etcd endpoint {endpoint} is https://, but no CA to check etcd's \
                         certificate and no client certificate were given"
                    )))
                }
                (false, true) => {
                    return Err(EtcdConnectError::Settings(format!(
                        "etcd endpoint {endpoint} is not https://, but TLS settings were given: \
                         use https://{}",
                        endpoint
                            .split_once("://")
                            .map_or(endpoint.as_str(), |(_, a)| a)
                    )))
                }
                _ => {}
            }
        }
        let tls = tls.map(tls::LoadedTls::load).transpose()?;
        let unreachable = |reason: String| EtcdConnectError::Unreachable {
            endpoints: shown.join(", "),
            reason,
        };
        // No per-request timeout in the client: it would also apply to the
        // long-lived watch and keep-alive streams. Requests are bounded here
        // instead (`EtcdStore::call`).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // Watches on a member without a leader are canceled instead of
            // going silent, so a partitioned reader notices.
            .with_require_leader(true);
        if let Some(tls) = &tls {
            options = options.with_tls(tls.options());
        }
        let client = Client::connect(&shown, Some(options))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The client connects lazily: ask for the status to know etcd is there.
        let mut maintenance = client.maintenance_client();
        let failure = match tokio::time::timeout(timeout, maintenance.status()).await {
            Ok(Ok(status)) => {
                tracing::debug!(endpoints = ?shown, version = status.version(), "connected to etcd");
                None
            }
            // etcd 3.6 with auth on answers the status to root only: the
            // refusal is an answer all the same.
            Ok(Err(e)) if is_permission_denied(&e) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        if let Some(failure) = failure {
            // The client's error for a refused connection or a rejected
            // certificate is a long debug dump, or only a timeout; dialling
            // etcd directly usually says it in a few words.
            return Err(match tls::diagnose(&shown, tls.as_ref(), timeout).await {
                Some((reason, true)) => EtcdConnectError::Tls {
                    endpoints: shown.join(", "),
                    reason,
                },
                Some((reason, false)) if failure.starts_with("no answer") => {
                    unreachable(format!("{failure} ({reason})"))
                }
                Some((reason, false)) => unreachable(reason),
                None => unreachable(failure),
            });
        }
        Ok(EtcdStore {
            client,
            endpoints: shown,
            user: tls.as_ref().and_then(|t| t.user().map(str::to_string)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            list_page: LIST_PAGE,
        })
    }

    /// Bounds each later request (not watch streams) by `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.request_timeout = timeout;
        self
    }

    /// Keys fetched per range request by `list` (default 1000; at least 1).
    pub fn with_list_page(mut self, keys: usize) -> EtcdStore {
        self.list_page = i64::try_from(keys).unwrap_or(i64::MAX).max(1);
        self
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The etcd user this client is when etcd's auth is on: the Common Name
    /// of its client certificate (none without TLS).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The user as the errors name it.
    fn user_shown(&self) -> String {
        match &self.user {
            Some(user) => user.clone(),
            None => "(no client certificate)".into(),
        }
    }

    /// Runs one etcd request under the request timeout and maps its error.
    /// `target` is what it touches (`/tessera/cells/0,0`, `the keys under
    /// /tessera/`), for a refusal; `lease` is the lease the request names,
    /// so "lease not found" can be reported as [`StoreError::LeaseNotFound`].
    async fn call<T>(
        &self,
        op: &str,
        target: &str,
        lease: Option<LeaseId>,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(match lease {
                Some(id) if is_lease_not_found(&e) => StoreError::LeaseNotFound(id),
                _ if is_permission_denied(&e) => StoreError::PermissionDenied {
                    user: self.user_shown(),
                    op: op.to_string(),
                    target: target.to_string(),
                },
                _ => StoreError::Unavailable(format!("etcd {op} failed: {e}")),
            }),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {op} got no answer within {:?} from {}",
                self.request_timeout,
                self.endpoints.join(", ")
            ))),
        }
    }
}

impl ClusterStore for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let mut resp = self.call("get", key, None, kv.get(key, None)).await?;
            Ok(resp.take_kvs().into_iter().next().map(to_key_value))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let end = prefix_range_end(prefix.as_bytes());
            // etcd rejects an empty key; "\0" is the smallest key there is.
            let mut start = if prefix.is_empty() {
                vec![0]
            } else {
                prefix.as_bytes().to_vec()
            };
            let mut revision = 0; // 0: the newest; then pinned to the first page's.
            let mut out = Vec::new();
            loop {
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(self.list_page)
                    .with_revision(revision);
                let mut resp = self
                    .call(
                        "list",
                        &keys_under(prefix),
                        None,
                        kv.get(start.clone(), Some(options)),
                    )
                    .await?;
                if revision == 0 {
                    revision = header_revision(resp.header().map(|h| h.revision()), "list")?;
                }
                let more = resp.more();
                let page = resp.take_kvs();
                let Some(last) = page.last() else { break };
                start = last.key().to_vec();
                start.push(0); // the next key after `last`
                out.extend(page.into_iter().map(to_key_value));
                if !more {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let resp = self
                .call("put", key, lease, kv.put(key, value, put_options(lease)))
                .await?;
            header_revision(resp.header().map(|h| h.revision()), "put")
        })
    }

    fn compare_and_put<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let compare = match expect {
                // A missing key has create_revision 0 in etcd's comparisons.
                Expect::Absent => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
                // A missing key would also compare equal to mod_revision 0:
                // require that it exists, as MemStore does.
                Expect::ModRevision(rev) => vec![
                    Compare::mod_revision(key, CompareOp::Equal, rev),
                    Compare::create_revision(key, CompareOp::Greater, 0),
                ],
            };
            let txn =
                Txn::new()
                    .when(compare)
                    .and_then(vec![TxnOp::put(key, value, put_options(lease))]);
            let mut kv = self.client.kv_client();
            let resp = self
                .call("compare-and-put", key, lease, kv.txn(txn))
                .await?;
            if !resp.succeeded() {
                return Ok(None);
            }
            header_revision(resp.header().map(|h| h.revision()), "compare-and-put").map(Some)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let resp = self.call("delete", key, None, kv.delete(key, None)).await?;
            Ok(resp.deleted() > 0)
        })
    }

    /// Waits until etcd has created the watch, so every change after this
    /// returns is delivered. The channel closes when the watch breaks; see
    /// the module documentation.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError>> {
        Box::pin(async move {
            let mut watch = self.client.watch_client();
            let start = async {
                let mut stream = watch
                    .watch(prefix, Some(WatchOptions::new().with_prefix()))
                    .await?;
                match stream.message().await? {
                    Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                    Some(resp) => Err(etcd_client::Error::WatchError(format!(
                        "etcd refused the watch: {}",
                        resp.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError(
                        "watch stream ended before the watch was created".into(),
                    )),
                }
            };
            let stream = self.call("watch", &keys_under(prefix), None, start).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(forward_watch(prefix.to_string(), stream, tx));
            Ok(rx)
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            let mut leases = self.client.lease_client();
            let resp = self
                .call(
                    "lease grant",
                    "a new lease",
                    None,
                    leases.grant(seconds, None),
                )
                .await?;
            if !resp.error().is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "etcd lease grant failed: {}",
                    resp.error()
                )));
            }
            if resp.ttl() != seconds {
                tracing::debug!(
                    lease = resp.id(),
                    asked = seconds,
                    granted = resp.ttl(),
                    "etcd changed the lease TTL"
                );
            }
            Ok(resp.id())
        })
    }

    /// One keep-alive round trip on a fresh keep-alive stream.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut leases = self.client.lease_client();
            // etcd-client sends one request and reads one answer; an answer
            // with TTL 0 (etcd's way of saying "no such lease") is its
            // `LeaseKeepAliveError("lease not found")`. Dropping the keeper
            // and the stream ends the round.
            match tokio::time::timeout(self.request_timeout, leases.keep_alive(lease)).await {
                Ok(Ok((_keeper, _stream))) => Ok(()),
                Ok(Err(e)) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(lease)),
                Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                    "etcd lease keep-alive failed: {e}"
                ))),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "etcd lease keep-alive got no answer within {:?} from {}",
                    self.request_timeout,
                    self.endpoints.join(", ")
                ))),
            }
        })
    }

    /// Revoking a lease that is already gone is not an error (as in
    /// `MemStore`): the lease and its keys are gone either way.
    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut leases = self.client.lease_client();
            match self
                .call(
                    "lease revoke",
                    &format!("lease {lease} (and every key under it)"),
                    Some(lease),
                    leases.revoke(lease),
                )
                .await
            {
                Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn lease_time_to_live(
        &self,
        lease: LeaseId,
    ) -> BoxFuture<'_, Result<Option<LeaseTtl>, StoreError>> {
        Box::pin(async move {
            let mut leases = self.client.lease_client();
            let resp = match self
                .call(
                    "lease time-to-live",
                    &format!("lease {lease}"),
                    Some(lease),
                    leases.time_to_live(lease, None),
                )
                .await
            {
                Ok(r) => r,
                Err(StoreError::LeaseNotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            // etcd answers TTL -1 for a lease it does not know (expired or revoked).
            if resp.ttl() < 0 {
                return Ok(None);
            }
            let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
            Ok(Some(LeaseTtl {
                remaining: secs(resp.ttl()),
                granted: secs(resp.granted_ttl()),
            }))
        })
    }
}

/// Forwards one etcd watch stream into the channel until the receiver is
/// dropped or the stream ends, breaks or is canceled. Dropping the stream
/// cancels the watch on etcd.
async fn forward_watch(
    prefix: String,
    mut stream: WatchStream,
    tx: mpsc::UnboundedSender<WatchEvent>,
) {
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            message = stream.message() => message,
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                tracing::warn!(%prefix, "etcd watch stream ended; closing the watch");
                return;
            }
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "etcd watch broke; closing the watch");
                return;
            }
        };
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let event = match event.event_type() {
                EventType::Put => WatchEvent::Put(to_key_value(kv.clone())),
                // A delete event carries the key with mod_revision set to the
                // revision of the deletion.
                EventType::Delete => WatchEvent::Delete {
                    key: key_string(kv.key()),
                    revision: kv.mod_revision(),
                },
            };
            if tx.send(event).is_err() {
                return;
            }
        }
        if resp.canceled() {
            tracing::warn!(
                %prefix,
                reason = resp.cancel_reason(),
                compact_revision = resp.compact_revision(),
                "etcd canceled the watch; closing it"
            );
            return;
        }
    }
}

fn to_key_value(kv: etcd_client::KeyValue) -> KeyValue {
    let mod_revision = kv.mod_revision();
    let lease = kv.lease();
    let (key, value) = kv.into_key_value();
    KeyValue {
        key: key_string(&key),
        value,
        mod_revision,
        lease: (lease != 0).then_some(lease),
    }
}

/// Our keys are strings; a non-UTF-8 key written by another tool is shown
/// with replacement characters rather than failing a whole list or watch.
fn key_string(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

fn header_revision(revision: Option<i64>, op: &str) -> Result<i64, StoreError> {
    revision.ok_or_else(|| StoreError::Unavailable(format!("etcd {op} answered without a header")))
}

/// etcd says "etcdserver: requested lease not found" (gRPC NotFound) for a
/// put, txn or revoke naming an unknown lease; etcd-client says "lease not
/// found" for a keep-alive answered with TTL 0.
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(msg) => msg.contains("lease not found"),
        _ => false,
    }
}

/// etcd's auth refused the request: "etcdserver: permission denied" (no
/// role of the user grants it, or no user has the certificate's name), or
/// "user name is empty" (a client without a certificate or token), and a
/// watch cancelled for the same reason.
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    let message = match e {
        etcd_client::Error::GRpcStatus(status) => status.message(),
        etcd_client::Error::WatchError(msg) => msg.as_str(),
        _ => return false,
    };
    message.contains("permission denied") || message.contains("user name is empty")
}

/// A prefix as the errors name it.
fn keys_under(prefix: &str) -> String {
    format!("the keys under {prefix}")
}

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix); `[0]` means "to the end" when there is none.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The endpoint as a URL: `https://` (with TLS) or `http://` added where
/// it has no scheme.
fn with_scheme(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_of_prefix() {
        assert_eq!(prefix_range_end(b"/t/"), b"/t0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            with_scheme("127.0.0.1:2379", false),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            with_scheme("127.0.0.1:2379", true),
            "https://127.0.0.1:2379"
        );
        assert_eq!(with_scheme("https://etcd:2379", false), "https://etcd:2379");
    }

    #[tokio::test]
    async fn unreachable_etcd_is_a_clear_error() {
        // A port nobody listens on: bind, note it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = EtcdStore::connect(
            std::slice::from_ref(&endpoint),
            None,
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, EtcdConnectError::Unreachable { .. })
                && msg.contains(&format!("cannot reach etcd at {endpoint}: "))
                && msg.to_lowercase().contains("connection refused"),
            "{msg}"
        );
    }
}
