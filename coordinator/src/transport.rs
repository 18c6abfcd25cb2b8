//! The networked bus: cluster messages between processes over QUIC with
//! mutual TLS (ALPN `tessera-cluster/<format>`).
//!
//! Only cluster members can connect: every member holds a certificate
//! issued by a CA of the cluster's trust bundle ([`crate::pki`]: `tessera ca
//! issue`; in k8s a Secret per role) and both ends of every connection verify
//! the other's against it; each message is then checked against the sender's
//! role ([`crate::identity`]).
//!
//! Delivery: one long-lived unidirectional stream per (sender, receiver)
//! pair carries length-prefixed bincode [`Envelope`]s, so messages from one
//! sender to one receiver arrive in order (the invariant the router and the
//! shards rely on). Messages to a member that is unreachable wait in its
//! queue while the link reconnects with backoff; a message being written
//! when a connection breaks is sent again on the next one, and since it may
//! have arrived already, every message of a link has a number and a receiver
//! delivers each number once ([`StreamHeader`]; a hand-off delivered twice
//! would put its entity in the world twice once it walked on). A link checks
//! the member's address in the directory before every message and
//! reconnects when it changed (a member restarted under the same id), so
//! nothing is written into a dead process's connection once its successor
//! has registered.
//!
//! Formats: the connection's ALPN names the cluster format both ends speak
//! (the newest both know, [`CLUSTER_FORMAT`]; a member started with an
//! older maximum offers only up to it), so members of two releases share a
//! world during a rolling update. Format 1 (the releases before numbering)
//! has no stream header and no message numbers; format 2 starts each stream
//! with a [`StreamHeader`].
//!
//! Queues are bounded ([`LINK_QUEUE_BYTES`] a peer): a peer that stops reading (frozen,
//! stuck, or on a full disk) must not make its senders grow until they run out of memory.
//! When a link's queue is full, what is only ever superseded (cell frames to routers, ghost
//! sets to shards) gives way, oldest first, and everything else (hand-offs, migrations,
//! player commands and events) is refused at once with [`BusError::Full`], which the sender
//! handles as it handles an unreachable peer (a hand-off keeps its entity, a command is
//! answered "the world did not answer").

use crate::bus::{Bus, BusError};
use crate::identity::{MemberRole, Peer};
use crate::pki::{MemberIdentity, PkiError, CLUSTER_NAME};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::cluster::{CellFrame, Envelope, StreamHeader, ToRouter, ToShard};
use tessera_proto::frame::{self, FrameBuffer, MAX_CLUSTER_FRAME};
use tessera_proto::{RouterId, ShardId};
use tokio::sync::mpsc;

/// Most bytes of messages waiting for one peer.
pub const LINK_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Whether a message is only ever superseded by the next of its kind (a cell's frame, a
/// region's ghost set), so it may be dropped when its link's queue is full.
fn droppable(env: &Envelope) -> bool {
    matches!(
        env,
        Envelope::Router {
            msg: ToRouter::Frame(_),
            ..
        } | Envelope::Shard {
            msg: ToShard::Ghosts { .. },
            ..
        }
    )
}

/// The messages waiting for one peer, bounded in bytes ([`LINK_QUEUE_BYTES`]).
struct LinkQueue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
    limit: usize,
}

#[derive(Default)]
struct QueueState {
    items: std::collections::VecDeque<(Arc<Vec<u8>>, bool)>,
    bytes: usize,
}

/// A link's queue is full of messages that may not be dropped.
struct QueueFull {
    queued: usize,
}

impl LinkQueue {
    fn new(limit: usize) -> LinkQueue {
        LinkQueue {
            state: Mutex::new(QueueState::default()),
            ready: tokio::sync::Notify::new(),
            limit,
        }
    }

    /// Queues `bytes`; when that would pass the limit, drops the oldest droppable messages
    /// first, and then the new one if it is droppable itself, or refuses it.
    fn push(&self, bytes: Arc<Vec<u8>>, droppable: bool, to: &str) -> Result<(), QueueFull> {
        let mut st = self.state.lock();
        let len = bytes.len();
        while st.bytes + len > self.limit {
            match st.items.iter().position(|(_, d)| *d) {
                Some(i) => {
                    let (old, _) = st.items.remove(i).expect("an index from position");
                    st.bytes -= old.len();
                    metrics::counter!("tessera_cluster_link_dropped_total", "to" => to.to_string())
                        .increment(1);
                }
                None if droppable => {
                    metrics::counter!("tessera_cluster_link_dropped_total", "to" => to.to_string())
                        .increment(1);
                    return Ok(());
                }
                None => return Err(QueueFull { queued: st.bytes }),
            }
        }
        st.bytes += len;
        st.items.push_back((bytes, droppable));
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// The next message, waiting for one.
    async fn pop(&self) -> Arc<Vec<u8>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.state.lock();
                if let Some((bytes, _)) = st.items.pop_front() {
                    st.bytes -= bytes.len();
                    return bytes;
                }
            }
            notified.await;
        }
    }

    fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// QUIC close code of a member that stops ([`QuicBus::close`]).
pub const CLOSE_STOPPING: u32 = 0;
/// The newest cluster format this release speaks (docs/protocol.md, "Compatibility").
pub const CLUSTER_FORMAT: u16 = 2;
/// The oldest cluster format this release still speaks.
pub const OLDEST_CLUSTER_FORMAT: u16 = 1;

/// The ALPN of cluster format `format`.
pub fn cluster_alpn(format: u16) -> Vec<u8> {
    format!("tessera-cluster/{format}").into_bytes()
}

/// The ALPNs a member speaking formats up to `max_format` offers, newest (preferred) first.
pub fn cluster_alpns(max_format: u16) -> Vec<Vec<u8>> {
    (OLDEST_CLUSTER_FORMAT..=max_format.clamp(OLDEST_CLUSTER_FORMAT, CLUSTER_FORMAT))
        .rev()
        .map(cluster_alpn)
        .collect()
}

/// The cluster format a connection's handshake settled on.
pub fn negotiated_format(conn: &quinn::Connection) -> Option<u16> {
    let data = conn
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    std::str::from_utf8(data.protocol.as_deref()?)
        .ok()?
        .strip_prefix("tessera-cluster/")?
        .parse()
        .ok()
}

/// How long a receiver remembers a link it has not heard from (its message numbers).
const LINK_MEMORY: Duration = Duration::from_secs(600);

/// The next message number a receiver expects from each link ([`StreamHeader::link`]).
#[derive(Default)]
struct Delivered {
    links: HashMap<u64, (u64, std::time::Instant)>,
}

impl Delivered {
    /// Whether message `seq` of `link` is new (and so to be delivered): a number below one
    /// already delivered is a copy sent again after a broken connection.
    fn first_time(&mut self, link: u64, seq: u64) -> bool {
        let now = std::time::Instant::now();
        if self.links.len() >= 1024 && !self.links.contains_key(&link) {
            self.links
                .retain(|_, (_, seen)| now.duration_since(*seen) < LINK_MEMORY);
        }
        let (next, seen) = self.links.entry(link).or_insert((0, now));
        *seen = now;
        if seq < *next {
            return false;
        }
        *next = seq + 1;
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// Whether `peer` may send `env` (its role, [`crate::identity::may_send`]); a refusal is
/// counted and logged (at most once a second per kind, so a misbehaving member cannot fill
/// the log).
fn allowed(peer: &Peer, env: &Envelope) -> bool {
    let ok = crate::identity::peer_may_send(peer, env);
    if !ok {
        let kind = crate::identity::kind(env);
        let role = peer.role().map_or("none", MemberRole::as_str);
        metrics::counter!("tessera_cluster_messages_refused_total", "from_role" => role, "kind" => kind)
            .increment(1);
        static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
        let mut last = LAST.lock();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                peer = peer.name(),
                role,
                kind,
                "cluster message refused: that role may not send it"
            );
        }
    }
    ok
}

pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            Duration::from_secs(5)
                .try_into()
                .expect("5 s is a valid idle timeout"),
        ))
        .max_concurrent_uni_streams(64u32.into());
    t
}

/// Who a bus belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Member {
    Shard(ShardId),
    Router(RouterId),
}

impl Member {
    fn key(&self) -> String {
        match self {
            Member::Shard(id) => format!("shard/{id}"),
            Member::Router(id) => format!("router/{id}"),
        }
    }
}

/// Where members listen, kept current by membership (etcd registrations).
#[derive(Clone, Default)]
pub struct Directory {
    addrs: Arc<RwLock<HashMap<Member, (SocketAddr, i64)>>>,
}

impl Directory {
    /// `member` listens at `addr` (a registration without an incarnation: tests, benches).
    pub fn set(&self, member: Member, addr: SocketAddr) {
        self.register(member, addr, 0);
    }

    /// `member` listens at `addr` in its `incarnation`: the lease it registered under, new
    /// for every start, so a member restarted on the same address is a new peer and links
    /// to it reconnect instead of writing into the dead process's connection.
    pub fn register(&self, member: Member, addr: SocketAddr, incarnation: i64) {
        self.addrs.write().insert(member, (addr, incarnation));
    }

    /// Makes this directory equal to `other` in one step.
    pub fn replace_with(&self, other: &Directory) {
        let fresh = other.addrs.read().clone();
        *self.addrs.write() = fresh;
    }

    pub fn remove(&self, member: &Member) {
        self.addrs.write().remove(member);
    }

    pub fn get(&self, member: &Member) -> Option<SocketAddr> {
        self.entry(member).map(|(addr, _)| addr)
    }

    /// Where `member` listens and its incarnation ([`Directory::register`]).
    pub fn entry(&self, member: &Member) -> Option<(SocketAddr, i64)> {
        self.addrs.read().get(member).copied()
    }

    pub fn routers(&self) -> Vec<RouterId> {
        self.addrs
            .read()
            .keys()
            .filter_map(|m| match m {
                Member::Router(id) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Where messages for this process go once they arrive.
#[derive(Clone)]
pub enum LocalInbox {
    Shard(ShardId, crossbeam_channel::Sender<ToShard>),
    Router(RouterId, mpsc::Sender<ToRouter>),
}

/// The networked [`Bus`].
pub struct QuicBus {
    inbox: LocalInbox,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    directory: Directory,
    links: Mutex<HashMap<Member, Arc<LinkQueue>>>,
    runtime: tokio::runtime::Handle,
    /// Bytes a link may queue ([`LINK_QUEUE_BYTES`]; smaller in tests).
    link_limit: std::sync::atomic::AtomicUsize,
    /// Message numbers delivered, per incoming link.
    delivered: Mutex<Delivered>,
}

impl QuicBus {
    /// Listens on `listen` for cluster connections and delivers what
    /// arrives for this member into `inbox`. Must be called inside a tokio
    /// runtime.
    pub fn start(
        identity: &MemberIdentity,
        listen: SocketAddr,
        inbox: LocalInbox,
        directory: Directory,
    ) -> Result<Arc<QuicBus>, TransportError> {
        Self::start_speaking(identity, listen, inbox, directory, CLUSTER_FORMAT)
    }

    /// [`QuicBus::start`], speaking cluster formats up to `max_format` only (a member of a
    /// newer release that must still talk like the previous one: `--cluster-format`).
    pub fn start_speaking(
        identity: &MemberIdentity,
        listen: SocketAddr,
        inbox: LocalInbox,
        directory: Directory,
        max_format: u16,
    ) -> Result<Arc<QuicBus>, TransportError> {
        let mut endpoint =
            quinn::Endpoint::server(identity.cluster_server_config(max_format)?, listen).map_err(
                |e| TransportError::Bind {
                    addr: listen,
                    reason: e.to_string(),
                },
            )?;
        let client = identity.cluster_client_config(max_format)?;
        endpoint.set_default_client_config(client.clone());
        let bus = Arc::new(QuicBus {
            inbox,
            endpoint: endpoint.clone(),
            client,
            directory,
            links: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            link_limit: std::sync::atomic::AtomicUsize::new(LINK_QUEUE_BYTES),
            delivered: Mutex::new(Delivered::default()),
        });
        let b = bus.clone();
        tokio::spawn(async move { b.accept_loop().await });
        Ok(bus)
    }

    /// Closes every cluster connection of this member, telling its peers (so they reconnect
    /// at once instead of writing into a connection nobody reads until it times out), and
    /// frees its port; waits at most a second for the peers to be told.
    pub async fn close(&self) {
        self.endpoint
            .close(CLOSE_STOPPING.into(), b"cluster member stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// The address cluster peers should dial.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let bus = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster connection refused (not a cluster member?)");
                        return;
                    }
                };
                // The handshake verified the chain; the certificate says the role.
                let Some(peer) = Peer::of(&conn) else {
                    tracing::warn!(addr = %conn.remote_address(), "cluster connection closed: its certificate names no member role we know");
                    conn.close(1u32.into(), b"unknown member role");
                    return;
                };
                let peer = Arc::new(peer);
                // rustls refuses a client that offers no format we speak.
                let format = negotiated_format(&conn).unwrap_or(OLDEST_CLUSTER_FORMAT);
                while let Ok(stream) = conn.accept_uni().await {
                    metrics::counter!("tessera_cluster_streams_total", "format" => format.to_string())
                        .increment(1);
                    let (bus, peer) = (bus.clone(), peer.clone());
                    tokio::spawn(async move { bus.read_stream(stream, &peer, format).await });
                }
            });
        }
    }

    async fn read_stream(&self, mut stream: quinn::RecvStream, peer: &Peer, format: u16) {
        let mut buf = FrameBuffer::new(MAX_CLUSTER_FRAME);
        let mut chunk = vec![0u8; 64 * 1024];
        // Format 2 and later: the link and number of the next message, from the header.
        let mut numbering: Option<(u64, u64)> = None;
        loop {
            loop {
                match buf.next_frame() {
                    Ok(Some(payload)) if format >= 2 && numbering.is_none() => {
                        match frame::decode::<StreamHeader>(&payload, MAX_CLUSTER_FRAME) {
                            Ok(h) if h.format == format => numbering = Some((h.link, h.first_seq)),
                            Ok(h) => {
                                tracing::error!(header = h.format, connection = format, "cluster stream in a format its connection did not agree; closing the stream");
                                return;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "malformed cluster stream header; closing the stream");
                                return;
                            }
                        }
                    }
                    Ok(Some(payload)) => {
                        match frame::decode::<Envelope>(&payload, MAX_CLUSTER_FRAME) {
                            Ok(env) => {
                                let first_time = match &mut numbering {
                                    Some((link, seq)) => {
                                        let fresh = self.delivered.lock().first_time(*link, *seq);
                                        *seq += 1;
                                        fresh
                                    }
                                    None => true,
                                };
                                if !first_time {
                                    metrics::counter!("tessera_cluster_duplicates_dropped_total")
                                        .increment(1);
                                    tracing::info!(kind = crate::identity::kind(&env), "cluster message delivered before dropped (sent again after a broken connection)");
                                } else if allowed(peer, &env) {
                                    self.deliver_local(env).await;
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "malformed cluster message; closing the stream");
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "bad cluster frame; closing the stream");
                        return;
                    }
                }
            }
            match stream.read(&mut chunk).await {
                Ok(Some(n)) => buf.extend(&chunk[..n]),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Puts a message that arrived into this member's inbox. When the inbox is full, what is
    /// only ever superseded (ghost sets, cell frames) is dropped, and anything else waits for
    /// room: the stream is not read meanwhile, so QUIC's flow control holds the sender back,
    /// whose link queue then fills and refuses (`BusError::Full`) instead of a hand-off being
    /// lost here.
    async fn deliver_local(&self, env: Envelope) {
        match (env, &self.inbox) {
            (Envelope::Shard { to, msg }, LocalInbox::Shard(me, tx)) if &to == me => {
                let mut msg = msg;
                let mut pause = Duration::from_millis(1);
                loop {
                    match tx.try_send(msg) {
                        Ok(()) => return,
                        Err(crossbeam_channel::TrySendError::Full(ToShard::Ghosts { .. })) => {
                            metrics::counter!("tessera_shard_inbox_dropped_total", "shard" => me.0.clone())
                                .increment(1);
                            return;
                        }
                        Err(crossbeam_channel::TrySendError::Full(m)) => {
                            msg = m;
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(20));
                        }
                        Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
                    }
                }
            }
            (Envelope::Router { to, msg }, LocalInbox::Router(me, tx)) if &to == me => {
                match tx.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(ToRouter::Frame(_))) => {
                        metrics::counter!("tessera_router_inbox_dropped_total", "router" => me.0.clone())
                            .increment(1);
                    }
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        let _ = tx.send(m).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            (env, _) => {
                tracing::warn!(to = ?envelope_target(&env), "cluster message for another member dropped")
            }
        }
    }

    fn link(&self, to: &Member) -> Arc<LinkQueue> {
        let mut links = self.links.lock();
        if let Some(q) = links.get(to) {
            return q.clone();
        }
        let limit = self.link_limit.load(std::sync::atomic::Ordering::Relaxed);
        let queue = Arc::new(LinkQueue::new(limit));
        links.insert(to.clone(), queue.clone());
        let link = Link {
            to: to.clone(),
            endpoint: self.endpoint.clone(),
            client: self.client.clone(),
            directory: self.directory.clone(),
            id: rand::random(),
        };
        self.runtime.spawn(link.run(queue.clone()));
        queue
    }

    /// Bytes waiting for `to` (tests, and the `tessera_cluster_link_queued_bytes` gauge).
    pub fn queued_bytes(&self, to: &Member) -> usize {
        self.links.lock().get(to).map_or(0, |q| q.queued_bytes())
    }

    /// Links made from now on queue at most `bytes` (tests).
    #[cfg(test)]
    fn set_link_limit(&self, bytes: usize) {
        self.link_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn send(&self, to: Member, env: &Envelope) -> Result<(), BusError> {
        let bytes = match frame::encode_frame(env, MAX_CLUSTER_FRAME) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode cluster message");
                return Ok(());
            }
        };
        let missing = || match &to {
            Member::Shard(id) => BusError::NoShard(id.clone()),
            Member::Router(id) => BusError::NoRouter(id.clone()),
        };
        if self.directory.get(&to).is_none() {
            return Err(missing());
        }
        let key = to.key();
        let queue = self.link(&to);
        let result = queue.push(bytes, droppable(env), &key);
        metrics::gauge!("tessera_cluster_link_queued_bytes", "to" => key.clone())
            .set(queue.queued_bytes() as f64);
        result.map_err(|full| {
            tracing::warn!(to = %key, queued = full.queued, "cluster link full; message refused");
            BusError::Full {
                to: key,
                queued_bytes: full.queued,
            }
        })
    }
}

fn envelope_target(env: &Envelope) -> String {
    match env {
        Envelope::Shard { to, .. } => format!("shard {to}"),
        Envelope::Router { to, .. } => format!("router {to}"),
    }
}

/// One outgoing link: connects, opens a stream, writes queued frames in
/// order; reconnects with backoff when the connection breaks.
struct Link {
    to: Member,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    directory: Directory,
    /// [`StreamHeader::link`].
    id: u64,
}

impl Link {
    async fn run(self, queue: Arc<LinkQueue>) {
        // The message being written and its number; numbers follow the order of writing.
        let mut pending: Option<(u64, Arc<Vec<u8>>)> = None;
        let mut next_seq = 0u64;
        let mut backoff = Duration::from_millis(50);
        loop {
            if pending.is_none() {
                pending = Some((next_seq, queue.pop().await));
                next_seq += 1;
            }
            let Some(registered) = self.directory.entry(&self.to) else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            let addr = registered.0;
            let first_seq = pending.as_ref().map_or(next_seq, |(seq, _)| *seq);
            let stream = async {
                let conn = self
                    .endpoint
                    .connect_with(self.client.clone(), addr, CLUSTER_NAME)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let format = negotiated_format(&conn).unwrap_or(OLDEST_CLUSTER_FORMAT);
                let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                if format >= 2 {
                    let header = StreamHeader {
                        format,
                        link: self.id,
                        first_seq,
                    };
                    let bytes = frame::encode_frame(&header, MAX_CLUSTER_FRAME)
                        .map_err(|e| e.to_string())?;
                    stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>((stream, format))
            };
            let (mut stream, format) = match tokio::time::timeout(Duration::from_secs(5), stream)
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(to = %self.to.key(), addr = %addr, error = %e, "cluster link cannot connect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    tracing::warn!(to = %self.to.key(), addr = %addr, "cluster link connect timed out; retrying");
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            tracing::debug!(to = %self.to.key(), addr = %addr, format, "cluster link up");
            // Write the pending frame, then everything that follows.
            loop {
                let Some((seq, bytes)) = pending.take() else {
                    pending = Some((next_seq, queue.pop().await));
                    next_seq += 1;
                    continue;
                };
                // A member that left, or came back (a restarted shard under
                // the same id, elsewhere or on the same address: a new
                // incarnation), is not behind this connection any more:
                // writes into it would vanish. Reconnect.
                if self.directory.entry(&self.to) != Some(registered) {
                    tracing::info!(to = %self.to.key(), old = %addr, "member left or moved; reconnecting");
                    pending = Some((seq, bytes));
                    break;
                }
                if let Err(e) = stream.write_all(&bytes).await {
                    tracing::warn!(to = %self.to.key(), error = %e, "cluster link broke; reconnecting");
                    pending = Some((seq, bytes));
                    break;
                }
            }
        }
    }
}

impl Bus for QuicBus {
    fn to_shard(&self, shard: &ShardId, msg: ToShard) -> Result<(), BusError> {
        if let LocalInbox::Shard(me, tx) = &self.inbox {
            if me == shard {
                return crate::bus::offer(tx, shard, msg);
            }
        }
        let env = Envelope::Shard {
            to: shard.clone(),
            msg,
        };
        self.send(Member::Shard(shard.clone()), &env)
    }

    fn to_router(&self, router: &RouterId, msg: ToRouter) -> Result<(), BusError> {
        if let LocalInbox::Router(me, tx) = &self.inbox {
            if me == router {
                return crate::bus::offer_router(tx, router, msg);
            }
        }
        let env = Envelope::Router {
            to: router.clone(),
            msg,
        };
        self.send(Member::Router(router.clone()), &env)
    }

    fn publish_frame(&self, frame: Arc<CellFrame>) {
        for router in self.directory.routers() {
            let _ = self.to_router(&router, ToRouter::Frame(frame.clone()));
        }
    }

    fn has_shard(&self, shard: &ShardId) -> bool {
        matches!(&self.inbox, LocalInbox::Shard(me, _) if me == shard)
            || self.directory.get(&Member::Shard(shard.clone())).is_some()
    }

    fn router_incarnation(&self, router: &RouterId) -> Option<i64> {
        self.directory
            .entry(&Member::Router(router.clone()))
            .map(|(_, incarnation)| incarnation)
    }

    fn routers(&self) -> Vec<RouterId> {
        let mut ids = self.directory.routers();
        ids.sort();
        ids
    }

    fn shard_incarnation(&self, shard: &ShardId) -> Option<i64> {
        if matches!(&self.inbox, LocalInbox::Shard(me, _) if me == shard) {
            return Some(0);
        }
        self.directory
            .entry(&Member::Shard(shard.clone()))
            .map(|(_, incarnation)| incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;

    /// Shard "a" of `identity` listening on `addr`, registered in `directory`, and its inbox.
    fn shard_at(
        identity: &MemberIdentity,
        addr: SocketAddr,
        directory: &Directory,
    ) -> Result<(Arc<QuicBus>, crossbeam_channel::Receiver<ToShard>), TransportError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let a = ShardId::new("a");
        let bus = QuicBus::start(
            identity,
            addr,
            LocalInbox::Shard(a.clone(), tx),
            directory.clone(),
        )?;
        directory.set(Member::Shard(a), bus.local_addr().unwrap());
        Ok((bus, rx))
    }

    /// Router "r" of `identity` on loopback, registered in `directory`, and its inbox.
    fn router_on(
        identity: &MemberIdentity,
        directory: &Directory,
    ) -> (Arc<QuicBus>, mpsc::Receiver<ToRouter>) {
        let (tx, rx) = crate::bus::router_inbox();
        let r = RouterId("r".into());
        let bus = QuicBus::start(
            identity,
            "127.0.0.1:0".parse().unwrap(),
            LocalInbox::Router(r.clone(), tx),
            directory.clone(),
        )
        .unwrap();
        directory.set(Member::Router(r), bus.local_addr().unwrap());
        (bus, rx)
    }

    const ANY: &str = "127.0.0.1:0";

    /// A `Leave` of entity `i` from session `i` of router "r": a message whose number the
    /// receiving test can read back.
    fn leave(i: u64) -> ToShard {
        ToShard::Leave {
            entity: tessera_proto::EntityId(i),
            session: tessera_proto::cluster::SessionRef {
                router: RouterId("r".into()),
                session: tessera_proto::SessionId(i),
            },
        }
    }

    /// The next message of a shard inbox, waiting at most `within`.
    async fn received(
        rx: crossbeam_channel::Receiver<ToShard>,
        within: Duration,
    ) -> Result<ToShard, crossbeam_channel::RecvTimeoutError> {
        tokio::task::spawn_blocking(move || rx.recv_timeout(within))
            .await
            .unwrap()
    }

    /// A raw cluster connection of `identity` to `addr`, offering formats up to `max_format`,
    /// and the format the handshake chose.
    async fn raw_connection(
        identity: &MemberIdentity,
        addr: SocketAddr,
        max_format: u16,
    ) -> (quinn::Endpoint, quinn::Connection, u16) {
        let mut ep = quinn::Endpoint::client(ANY.parse().unwrap()).unwrap();
        ep.set_default_client_config(identity.cluster_client_config(max_format).unwrap());
        let conn = ep.connect(addr, CLUSTER_NAME).unwrap().await.unwrap();
        let format = negotiated_format(&conn).expect("a cluster format");
        (ep, conn, format)
    }

    /// Writes `frames` (a stream header or envelopes) on a new stream of `conn`, and finishes it.
    async fn write_stream(conn: &quinn::Connection, frames: &[Vec<u8>]) {
        let mut stream = conn.open_uni().await.unwrap();
        for f in frames {
            stream.write_all(f).await.unwrap();
        }
        stream.finish().unwrap();
        let _ = stream.stopped().await;
    }

    fn header_frame(link: u64, first_seq: u64) -> Vec<u8> {
        let header = StreamHeader {
            format: 2,
            link,
            first_seq,
        };
        frame::encode_frame(&header, MAX_CLUSTER_FRAME).unwrap()
    }

    fn leave_frame(to: &ShardId, i: u64) -> Vec<u8> {
        let env = Envelope::Shard {
            to: to.clone(),
            msg: leave(i),
        };
        frame::encode_frame(&env, MAX_CLUSTER_FRAME).unwrap()
    }

    /// The entity numbers of the `Leave`s that reach `rx` within `within`.
    async fn leaves(rx: crossbeam_channel::Receiver<ToShard>, within: Duration) -> Vec<u64> {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + within;
            let mut got = Vec::new();
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(ToShard::Leave { entity, .. }) => got.push(entity.0),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => break,
                }
            }
            got
        })
        .await
        .unwrap()
    }

    /// The entity numbers of the next `n` `Leave`s that reach `rx` (fewer if they do not come
    /// within 5 s).
    async fn taken(rx: &crossbeam_channel::Receiver<ToShard>, n: usize) -> Vec<u64> {
        let rx = rx.clone();
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map_while(|_| match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(ToShard::Leave { entity, .. }) => Some(entity.0),
                    _ => None,
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// A link that breaks while writing sends the message again on its next connection
    /// (issue 16, item 4): it may have arrived already, and a hand-off delivered twice puts
    /// its entity in the world twice once it walked on. The receiver delivers each number of
    /// a link once; another link's numbers are its own; a stream whose header is garbage is
    /// closed without delivering anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_sent_again_after_a_broken_connection_is_delivered_once() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        let a = ShardId::new("a");
        let shard = ca.member(MemberRole::Shard, "shard a").unwrap();
        let (bus, rx) = shard_at(&shard, ANY.parse().unwrap(), &directory).unwrap();
        let addr = bus.local_addr().unwrap();
        let router = ca.member(MemberRole::Router, "router r").unwrap();

        let (_ep, first, format) = raw_connection(&router, addr, CLUSTER_FORMAT).await;
        assert_eq!(format, 2, "two members of this release speak format 2");
        write_stream(
            &first,
            &[header_frame(7, 0), leave_frame(&a, 1), leave_frame(&a, 2)],
        )
        .await;
        // (Each stream is read by its own task: wait for what one delivers
        // before writing the next, as a real link only reconnects once its
        // connection is gone.)
        assert_eq!(taken(&rx, 2).await, vec![1, 2]);
        first.close(0u32.into(), b"broken");
        // The link reconnects and starts with the message it was writing (number 1).
        let (_ep2, second, _) = raw_connection(&router, addr, CLUSTER_FORMAT).await;
        write_stream(
            &second,
            &[header_frame(7, 1), leave_frame(&a, 2), leave_frame(&a, 3)],
        )
        .await;
        assert_eq!(
            taken(&rx, 1).await,
            vec![3],
            "number 1 came twice; once is delivered"
        );
        // Garbage where the header belongs: the stream is closed, nothing delivered.
        let garbage = frame::encode_frame(&"not a header", MAX_CLUSTER_FRAME).unwrap();
        write_stream(&second, &[garbage, leave_frame(&a, 99)]).await;
        // Another link (another sender, or the same one's link after a restart) counts anew.
        write_stream(&second, &[header_frame(8, 0), leave_frame(&a, 4)]).await;
        assert_eq!(leaves(rx, Duration::from_secs(2)).await, vec![4]);
    }

    /// A shard whose inbox is full does not drop what arrives over the network (a hand-off
    /// dropped there loses its entity): the stream waits for room, QUIC's flow control holds
    /// the sender back, and everything arrives, in order, once the shard reads again
    /// (issue 16, item 2). Ghost sets, superseded by the next, give way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_shard_inbox_holds_the_sender_back_instead_of_dropping() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        let a = ShardId::new("a");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let shard = QuicBus::start(
            &ca.member(MemberRole::Shard, "shard a").unwrap(),
            ANY.parse().unwrap(),
            LocalInbox::Shard(a.clone(), tx),
            directory.clone(),
        )
        .unwrap();
        directory.set(Member::Shard(a.clone()), shard.local_addr().unwrap());
        let (router, _router_rx) = router_on(
            &ca.member(MemberRole::Router, "router r").unwrap(),
            &directory,
        );
        for i in 0..100 {
            router.to_shard(&a, leave(i)).unwrap();
        }
        // The inbox fills and stays full while nobody reads it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(rx.len(), 4);
        assert_eq!(
            leaves(rx, Duration::from_secs(3)).await,
            (0..100).collect::<Vec<_>>()
        );
    }

    /// During a rolling update members of two releases share a world: a member that speaks
    /// only format 1 (the previous release: no stream header) and one that speaks 2 agree on
    /// format 1 in both directions, and a format-1 stream is read as the previous release
    /// wrote it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_of_the_previous_format_and_this_one_talk_in_the_older() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        let a = ShardId::new("a");
        let (s_tx, s_rx) = crossbeam_channel::unbounded();
        let old_shard = QuicBus::start_speaking(
            &ca.member(MemberRole::Shard, "shard a").unwrap(),
            ANY.parse().unwrap(),
            LocalInbox::Shard(a.clone(), s_tx),
            directory.clone(),
            1,
        )
        .unwrap();
        directory.set(Member::Shard(a.clone()), old_shard.local_addr().unwrap());
        let router = ca.member(MemberRole::Router, "router r").unwrap();
        let (router_bus, mut router_rx) = router_on(&router, &directory);

        // New router to old shard, and back.
        router_bus.to_shard(&a, leave(1)).unwrap();
        assert!(matches!(
            received(s_rx.clone(), Duration::from_secs(2)).await,
            Ok(ToShard::Leave { entity, .. }) if entity.0 == 1
        ));
        let r = RouterId("r".into());
        old_shard
            .to_router(
                &r,
                ToRouter::SavePlayer {
                    player: tessera_proto::PlayerId(5),
                    pos: tessera_proto::Vec3::ZERO,
                },
            )
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(2), router_rx.recv()).await;
        assert!(
            matches!(back, Ok(Some(ToRouter::SavePlayer { player, .. })) if player.0 == 5),
            "{back:?}"
        );

        // What the handshakes choose, and a previous release's stream: bare envelopes.
        let (_ep, conn, format) =
            raw_connection(&router, old_shard.local_addr().unwrap(), CLUSTER_FORMAT).await;
        assert_eq!(
            format, 1,
            "a member speaking only format 1 makes its peers speak it"
        );
        write_stream(&conn, &[leave_frame(&a, 2), leave_frame(&a, 2)]).await;
        assert_eq!(
            leaves(s_rx, Duration::from_secs(1)).await,
            vec![2, 2],
            "format 1 has no numbers: what comes twice is delivered twice"
        );
        let (_ep, _conn, format) =
            raw_connection(&router, router_bus.local_addr().unwrap(), 1).await;
        assert_eq!(
            format, 1,
            "a previous-release client is answered in its format"
        );
    }

    /// A member that stops closes its connections, so a peer's next message goes to its
    /// successor on the same address at once instead of into the old connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_closes_its_bus_lets_a_successor_on_its_port_take_over() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        let a = ShardId::new("a");
        let shard = ca.member(MemberRole::Shard, "shard a").unwrap();
        let (first, first_rx) = shard_at(&shard, ANY.parse().unwrap(), &directory).unwrap();
        let addr = first.local_addr().unwrap();
        let (router, _router_rx) = router_on(
            &ca.member(MemberRole::Router, "router r").unwrap(),
            &directory,
        );
        router.to_shard(&a, leave(1)).unwrap();
        assert!(received(first_rx, Duration::from_secs(2)).await.is_ok());
        first.close().await;
        drop(first);
        // The port is free once the closed endpoint's tasks have let go of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let (second, second_rx) = loop {
            match shard_at(&shard, addr, &directory) {
                Ok(started) => break started,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        router.to_shard(&a, leave(2)).unwrap();
        let got = received(second_rx, Duration::from_secs(2)).await;
        assert!(
            matches!(got, Ok(ToShard::Leave { entity, .. }) if entity.0 == 2),
            "the successor did not get the message: {got:?}"
        );
        second.close().await;
    }

    /// A member killed without closing anything (kill -9: its runtime vanishes) and started
    /// again on the same address registers anew, with a new lease: a peer's next message goes
    /// to the new process at once, not into the dead one's connection, where it would be lost
    /// (issue 16, item 10: the registration's lease is its incarnation).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_killed_and_restarted_on_its_port_gets_the_next_message() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        let a = ShardId::new("a");
        let shard = ca.member(MemberRole::Shard, "shard a").unwrap();
        // The first process: its own runtime, dropped without a word to its peers.
        let doomed = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (first_tx, first_rx) = crossbeam_channel::unbounded();
        let first = {
            let _in = doomed.enter();
            QuicBus::start(
                &shard,
                ANY.parse().unwrap(),
                LocalInbox::Shard(a.clone(), first_tx),
                directory.clone(),
            )
            .unwrap()
        };
        let addr = first.local_addr().unwrap();
        directory.register(Member::Shard(a.clone()), addr, 1);
        let (router, _router_rx) = router_on(
            &ca.member(MemberRole::Router, "router r").unwrap(),
            &directory,
        );
        router.to_shard(&a, leave(1)).unwrap();
        let got = received(first_rx, Duration::from_secs(5)).await;
        assert!(got.is_ok(), "{got:?}");
        // kill -9.
        drop(first);
        doomed.shutdown_background();
        // The new process binds the same port and registers under a new lease.
        let (second_tx, second_rx) = crossbeam_channel::unbounded();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let second = loop {
            match QuicBus::start(
                &shard,
                addr,
                LocalInbox::Shard(a.clone(), second_tx.clone()),
                directory.clone(),
            ) {
                Ok(bus) => break bus,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        directory.register(Member::Shard(a.clone()), addr, 2);
        router.to_shard(&a, leave(2)).unwrap();
        let got = received(second_rx, Duration::from_secs(3)).await;
        assert!(
            matches!(got, Ok(ToShard::Leave { entity, .. }) if entity.0 == 2),
            "the restarted member did not get the message: {got:?}"
        );
        second.close().await;
    }

    /// A peer that accepts the connection but never reads (frozen, stuck) fills its link's
    /// queue up to the limit and no further: ghost sets (superseded by the next) give way,
    /// oldest first, and once only hand-offs are left a new one is refused with a clear
    /// error instead of growing the sender without bound (issue 16, item 2).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_never_reads_gets_a_bounded_queue() {
        let ca = ClusterCa::generate().unwrap();
        let directory = Directory::default();
        // The stalled peer: it accepts the connection and the stream, and reads nothing.
        let stalled = quinn::Endpoint::server(
            ca.member(MemberRole::Shard, "stalled")
                .unwrap()
                .server_config()
                .unwrap(),
            ANY.parse().unwrap(),
        )
        .unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let (ep, keep) = (stalled.clone(), held.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                if let Ok(conn) = incoming.await {
                    if let Ok(stream) = conn.accept_uni().await {
                        keep.lock().push((conn, stream));
                    }
                }
            }
        });
        let a = ShardId::new("a");
        directory.set(Member::Shard(a.clone()), stalled.local_addr().unwrap());
        let (tx, _rx) = crossbeam_channel::unbounded();
        let sender = QuicBus::start(
            &ca.member(MemberRole::Shard, "b").unwrap(),
            ANY.parse().unwrap(),
            LocalInbox::Shard(ShardId::new("b"), tx),
            directory.clone(),
        )
        .unwrap();
        const LIMIT: usize = 1024 * 1024;
        sender.set_link_limit(LIMIT);
        let ghosts = |tick: u64| ToShard::Ghosts {
            from: tessera_proto::CellId::new(0, 0).into(),
            to: tessera_proto::CellId::new(1, 0).into(),
            tick,
            ghosts: vec![
                tessera_proto::cluster::GhostState {
                    id: tessera_proto::EntityId(tick),
                    kind: tessera_proto::msg::EntityKind::Npc,
                    pos: tessera_proto::Vec3::ZERO,
                    yaw: 0.0,
                };
                40
            ],
        };
        let handoff = |i: u64| ToShard::Handoff {
            to: tessera_proto::CellId::new(0, 0).into(),
            epoch: tessera_proto::Epoch(1),
            entity: tessera_proto::cluster::EntityTransfer {
                id: tessera_proto::EntityId(i),
                kind: tessera_proto::msg::EntityKind::Npc,
                name: "x".repeat(900),
                description: String::new(),
                pos: tessera_proto::Vec3::ZERO,
                vel: tessera_proto::Vec3::ZERO,
                yaw: 0.0,
                home: tessera_proto::Vec3::ZERO,
                player: None,
                session: None,
                input: Default::default(),
                walk_target: None,
                script: None,
            },
        };
        let member = Member::Shard(a.clone());
        // Ten times the limit of ghost sets: never refused, never more than the limit queued.
        for tick in 0..10_000u64 {
            sender
                .to_shard(&a, ghosts(tick))
                .expect("ghosts are never refused");
            assert!(sender.queued_bytes(&member) <= LIMIT);
        }
        // Hand-offs push the ghosts out, then are refused once they alone fill the queue.
        let mut refused = None;
        for i in 0..10_000u64 {
            match sender.to_shard(&a, handoff(i)) {
                Ok(()) => assert!(sender.queued_bytes(&member) <= LIMIT),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (sent, err) = refused.expect("a full link refused nothing");
        assert!(matches!(err, BusError::Full { .. }), "{err}");
        assert!(
            err.to_string().contains("is full") && err.to_string().contains("not keeping up"),
            "{err}"
        );
        assert!(sent > 100, "refused after only {sent} hand-offs");
        assert!(sender.queued_bytes(&member) <= LIMIT);
        drop(held);
    }

    /// During a CA rotation both CAs are in every member's bundle: a shard whose certificate
    /// the new CA issued and a router still carrying the old CA's talk both ways; a member
    /// that trusts only the old CA refuses the new one's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_of_two_cas_in_one_bundle_talk_during_a_rotation() {
        let old = ClusterCa::generate().unwrap();
        let new = ClusterCa::generate().unwrap().trusting(&old);
        let old = old.trusting(&new);
        let directory = Directory::default();
        let (a, r) = (ShardId::new("a"), RouterId("r".into()));
        let (shard_bus, shard_rx) = shard_at(
            &new.member(MemberRole::Shard, "shard a").unwrap(),
            ANY.parse().unwrap(),
            &directory,
        )
        .unwrap();
        let (router_bus, mut router_rx) = router_on(
            &old.member(MemberRole::Router, "router r").unwrap(),
            &directory,
        );
        let session = tessera_proto::cluster::SessionRef {
            router: r.clone(),
            session: tessera_proto::SessionId(1),
        };
        router_bus
            .to_shard(
                &a,
                ToShard::Leave {
                    entity: tessera_proto::EntityId(1),
                    session: session.clone(),
                },
            )
            .unwrap();
        let rx = shard_rx.clone();
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(matches!(got, Ok(ToShard::Leave { .. })), "{got:?}");
        shard_bus
            .to_router(
                &r,
                ToRouter::Player {
                    session: session.session,
                    event: tessera_proto::cluster::PlayerEvent::Replaced,
                },
            )
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), router_rx.recv()).await;
        assert!(matches!(back, Ok(Some(_))), "{back:?}");

        // A member that trusts the old CA alone does not accept the new CA's members.
        let only_old = ClusterCa::generate().unwrap();
        let lone = only_old.member(MemberRole::Shard, "lone").unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(lone.client_config().unwrap());
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect(shard_bus.local_addr().unwrap(), CLUSTER_NAME)
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(conn.is_err(), "a CA outside the bundle was trusted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_exchange_messages_in_order_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        let directory = Directory::default();
        let (a, r) = (ShardId::new("a"), RouterId("r".into()));
        let (shard_bus, shard_rx) = shard_at(
            &ca.member(MemberRole::Shard, "shard a").unwrap(),
            ANY.parse().unwrap(),
            &directory,
        )
        .unwrap();
        let (router_bus, _router_rx) = router_on(
            &ca.member(MemberRole::Router, "router r").unwrap(),
            &directory,
        );
        for i in 0..200u64 {
            router_bus
                .to_shard(
                    &a,
                    ToShard::Leave {
                        entity: tessera_proto::EntityId(i),
                        session: tessera_proto::cluster::SessionRef {
                            router: r.clone(),
                            session: tessera_proto::SessionId(i),
                        },
                    },
                )
                .unwrap();
        }
        let rx = shard_rx.clone();
        let got: Vec<u64> = tokio::task::spawn_blocking(move || {
            (0..200)
                .map(|_| match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(ToShard::Leave { entity, .. }) => entity.0,
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        })
        .await
        .unwrap();
        assert_eq!(got, (0..200).collect::<Vec<_>>(), "in order, none lost");

        // A member whose certificate says it is a telnet gateway may not send player traffic
        // to shards, which comes from routers (or shards forwarding it): refused at the
        // receiving shard, counted, nothing delivered.
        let (b_tx, _b_rx) = crossbeam_channel::unbounded();
        let impostor = QuicBus::start(
            &ca.member(MemberRole::Gateway, "gateway b").unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            LocalInbox::Shard(ShardId::new("b"), b_tx),
            directory.clone(),
        )
        .unwrap();
        for i in 1000..1005u64 {
            impostor.to_shard(&a, leave(i)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        router_bus.to_shard(&a, leave(7)).unwrap();
        let rx = shard_rx.clone();
        let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(
            matches!(first, Ok(ToShard::Leave { entity, .. }) if entity.0 == 7),
            "a gateway's player traffic was delivered: {first:?}"
        );
        assert!(shard_rx.try_recv().is_err());
        // A member of another cluster (another CA) cannot connect.
        let other_dir = tempfile::tempdir().unwrap();
        let stranger_ca = ClusterCa::create(other_dir.path()).unwrap();
        let stranger = stranger_ca.member(MemberRole::Shard, "stranger").unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(stranger.client_config().unwrap());
        let conn = ep
            .connect(shard_bus.local_addr().unwrap(), CLUSTER_NAME)
            .unwrap()
            .await;
        let refused = match conn {
            Err(_) => true,
            Ok(c) => {
                // TLS 1.3: the client may finish before the server rejects
                // its certificate; the connection then dies at once.
                let stream = c.open_uni().await;
                match stream {
                    Err(_) => true,
                    Ok(mut s) => {
                        let _ = s.write_all(b"hello").await;
                        tokio::time::timeout(Duration::from_secs(5), c.closed())
                            .await
                            .is_ok()
                    }
                }
            }
        };
        assert!(refused, "a stranger's connection was accepted");
    }
}
