//! Headless Tessera client: connects to a router over QUIC (`tessera/1`),
//! logs in, sends movement inputs, and keeps a local view of the world from
//! the entity messages and snapshots it receives. Tests and bot swarms use
//! it; the 3D viewer builds on it. No graphics dependencies here.

pub mod interp;
pub mod predict;
#[cfg(test)]
mod simlink;

use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::frame::{self, FrameBuffer, MAX_CONTROL_FRAME, MAX_DATAGRAM};
use tessera_proto::msg::{
    ClientDatagram, ClientMsg, EntityKind, ErrorCode, Input, ServerDatagram, ServerMsg,
};
use tessera_proto::{snapshot, CellId, EntityId, PlayerId, ShardId, Vec3, ALPN, PROTOCOL_VERSION};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server's certificate does not match the pinned one")]
    CertificateMismatch,
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server refused: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("timed out waiting for the server")]
    Timeout,
}

/// Accepts exactly one certificate: the router's self-signed one.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A QUIC client endpoint pinned to one server certificate. One endpoint
/// (one UDP socket) can carry many connections.
pub fn endpoint(server_cert: CertificateDer<'static>) -> Result<quinn::Endpoint, ClientError> {
    endpoint_as(server_cert, None, Duration::from_secs(30))
}

/// A client's own certificate chain and key (a telnet gateway shows its
/// cluster member certificate, which lets it `Client::relay`).
pub type ClientIdentity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Like [`endpoint`], showing `identity` to the server when given, and
/// giving up on a silent server after `idle` (keep-alives go out five
/// times as often). Players use 30 s; a telnet gateway uses a few seconds,
/// so its players move off a dead router quickly.
pub fn endpoint_as(
    server_cert: CertificateDer<'static>,
    identity: Option<ClientIdentity>,
    idle: Duration,
) -> Result<quinn::Endpoint, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            cert: server_cert,
            provider,
        }));
    let mut tls = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::Connect(format!("bad client certificate: {e}")))?,
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = idle.max(Duration::from_secs(1));
    transport
        .keep_alive_interval(Some(idle / 5))
        .max_idle_timeout(Some(idle.try_into().map_err(|_| {
            ClientError::Connect(format!("idle timeout {idle:?} too long"))
        })?));
    cfg.transport_config(Arc::new(transport));
    let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid address"))
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// An entity this client knows about.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownEntity {
    pub id: EntityId,
    pub kind: EntityKind,
    pub name: String,
    pub pos: Vec3,
    pub vel: Vec3,
    pub yaw: f32,
    /// Server tick of the newest update.
    pub tick: u64,
    pub updated: Instant,
}

/// What the client has learnt about the world.
#[derive(Debug, Default)]
pub struct WorldState {
    pub entities: HashMap<EntityId, KnownEntity>,
    /// Which entity each snapshot slot names (from `EntityAppeared`, until
    /// its `EntityGone`).
    pub slots: HashMap<u16, EntityId>,
    /// Newest input the server has applied.
    pub ack_input: u32,
    /// When `ack_input` last went up (the snapshot that carried it arrived).
    pub ack_at: Option<Instant>,
    /// The player's own entity, once logged in.
    pub me: Option<EntityId>,
    /// When a snapshot last carried the player's own entity.
    pub self_updated: Option<Instant>,
    /// Gaps between consecutive snapshots carrying the player's own entity,
    /// not yet taken by [`WorldState::take_self_gaps`] (at most 1,024 kept).
    pub self_gaps: Vec<Duration>,
    pub cell: Option<CellId>,
    pub shard: Option<ShardId>,
    pub bytes_in: u64,
    pub snapshots: u64,
}

impl WorldState {
    /// The gaps between own-entity updates seen since the last call.
    pub fn take_self_gaps(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.self_gaps)
    }
}

/// Things that happen, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    Chat {
        from: String,
        entity: Option<EntityId>,
        text: String,
        emote: bool,
    },
    Text(String),
    /// A line a text session prints as it is (`ServerMsg::Notice`).
    Notice(String),
    /// A GMCP package for a relayed text player (`ServerMsg::Gmcp`).
    Gmcp {
        package: String,
        data: String,
    },
    /// A line from the chat service (shout, tell, channel, notice).
    ChatLine {
        kind: tessera_proto::msg::ChatKind,
        from: String,
        to: Option<String>,
        text: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Appeared(EntityId),
    Gone(EntityId),
    CellChanged {
        cell: CellId,
        shard: ShardId,
    },
    Pong(u64),
    Closed(String),
}

/// The answer to a login. Its `Debug` leaves out the session token.
#[derive(Clone, PartialEq)]
pub struct LoggedIn {
    pub player: PlayerId,
    pub entity: EntityId,
    pub name: String,
    pub token: String,
    pub pos: Vec3,
    pub cell: CellId,
    pub shard: ShardId,
    pub tick_hz: u32,
}

impl std::fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn")
            .field("player", &self.player)
            .field("entity", &self.entity)
            .field("name", &self.name)
            .field("token", &tessera_proto::msg::REDACTED)
            .field("pos", &self.pos)
            .field("cell", &self.cell)
            .field("shard", &self.shard)
            .field("tick_hz", &self.tick_hz)
            .finish()
    }
}

/// A connection to a router.
pub struct Client {
    conn: quinn::Connection,
    send: quinn::SendStream,
    /// Control messages before login are read here directly; afterwards a
    /// background task owns the stream.
    recv: Option<(quinn::RecvStream, FrameBuffer)>,
    pub world: Arc<Mutex<WorldState>>,
    /// Events with the time they arrived.
    events: Option<mpsc::UnboundedReceiver<(Instant, ClientEvent)>>,
    pub me: Option<LoggedIn>,
    input_seq: u32,
    /// The world's name, from the router's `Welcome`.
    pub world_name: String,
}

impl Client {
    /// Connects and exchanges hello/welcome.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<Client, ClientError> {
        let connecting = endpoint
            .connect(addr, "localhost")
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(quinn::ConnectionError::TransportError(e)))
                if e.to_string().contains("certificate") =>
            {
                return Err(ClientError::CertificateMismatch)
            }
            Ok(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            Ok(Ok(c)) => c,
        };
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        let mut client = Client {
            conn,
            send,
            recv: Some((recv, FrameBuffer::new(MAX_CONTROL_FRAME))),
            world: Arc::new(Mutex::new(WorldState::default())),
            events: None,
            me: None,
            input_seq: 0,
            world_name: String::new(),
        };
        client
            .write(&ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                client: format!("tessera-client {}", env!("CARGO_PKG_VERSION")),
            })
            .await?;
        match client.read_direct().await? {
            ServerMsg::Welcome { world, .. } => {
                client.world_name = world;
                Ok(client)
            }
            ServerMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    /// Sends raw bytes on the control stream (for tests of bad input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// Sends a raw datagram (for tests of bad input).
    pub fn send_raw_datagram(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.conn
            .send_datagram(bytes.into())
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    async fn write(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let bytes = frame::encode_frame(msg, MAX_CONTROL_FRAME)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.write_raw(&bytes).await
    }

    /// Reads one control message before the background reader runs.
    pub async fn read_direct(&mut self) -> Result<ServerMsg, ClientError> {
        let (recv, buf) = self
            .recv
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("already logged in".into()))?;
        read_msg(recv, buf).await
    }

    /// Creates an account and enters the world.
    pub async fn create(&mut self, name: &str, password: &str) -> Result<LoggedIn, ClientError> {
        self.write(&ClientMsg::Create {
            name: name.into(),
            password: password.into(),
        })
        .await?;
        self.await_login().await
    }

    /// Logs in to an existing account and enters the world.
    pub async fn login(&mut self, name: &str, password: &str) -> Result<LoggedIn, ClientError> {
        self.write(&ClientMsg::Connect {
            name: name.into(),
            password: password.into(),
        })
        .await?;
        self.await_login().await
    }

    /// Declares this connection a relayed text session for the telnet
    /// client at `client` (a telnet gateway; needs a cluster member
    /// certificate, see [`endpoint_as`]).
    pub async fn relay(&mut self, client: SocketAddr) -> Result<(), ClientError> {
        self.write(&ClientMsg::Relay { client }).await?;
        let msg = tokio::time::timeout(Duration::from_secs(10), self.read_direct())
            .await
            .map_err(|_| ClientError::Timeout)??;
        match msg {
            ServerMsg::Relaying => Ok(()),
            ServerMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Relaying, got {other:?}"
            ))),
        }
    }

    /// Sends a text command without waiting for its answer, which arrives
    /// as the next [`ClientEvent::Text`] (answers come in order).
    pub async fn send_command(&mut self, line: &str) -> Result<(), ClientError> {
        self.write(&ClientMsg::Command { line: line.into() }).await
    }

    /// Tells the router which GMCP modules the relayed player's MUD client
    /// enabled (a telnet gateway; `ClientMsg::GmcpModules`).
    pub async fn send_gmcp_modules(&mut self, modules: Vec<String>) -> Result<(), ClientError> {
        self.write(&ClientMsg::GmcpModules { modules }).await
    }

    /// Logs in again with the token of an earlier [`LoggedIn`] (after a
    /// lost connection or a router restart) and enters the world where the
    /// player was.
    pub async fn resume(&mut self, token: &str) -> Result<LoggedIn, ClientError> {
        self.write(&ClientMsg::Resume {
            token: token.into(),
        })
        .await?;
        self.await_login().await
    }

    /// Connects to `addr` and resumes the session of `token`, retrying every
    /// 250 ms until `within` has passed: what a client does when its router
    /// restarts ([`Client::router_restarted`]). A refusal of the token
    /// (the session ended or expired) is not retried.
    pub async fn reconnect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        token: &str,
        within: Duration,
    ) -> Result<(Client, LoggedIn), ClientError> {
        let deadline = Instant::now() + within;
        loop {
            let attempt = async {
                let mut client = Client::connect(endpoint, addr).await?;
                let me = client.resume(token).await?;
                Ok::<_, ClientError>((client, me))
            };
            // A router that is not up yet may not answer at all: give each
            // attempt a short time of its own.
            let result = tokio::time::timeout(Duration::from_secs(2), attempt)
                .await
                .unwrap_or(Err(ClientError::Timeout));
            match result {
                Ok(done) => return Ok(done),
                Err(
                    e @ ClientError::Refused {
                        code: ErrorCode::BadCredentials,
                        ..
                    },
                ) => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Whether the router closed this connection because it is stopping
    /// (a restart or a rolling update); the session is kept for
    /// [`Client::reconnect`].
    pub fn router_restarted(&self) -> bool {
        matches!(
            self.conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(tessera_proto::msg::CLOSE_RESTART)
        )
    }

    async fn await_login(&mut self) -> Result<LoggedIn, ClientError> {
        let msg = tokio::time::timeout(Duration::from_secs(30), self.read_direct())
            .await
            .map_err(|_| ClientError::Timeout)??;
        match msg {
            ServerMsg::LoggedIn {
                player,
                entity,
                name,
                token,
                pos,
                cell,
                shard,
                tick_hz,
            } => {
                let me = LoggedIn {
                    player,
                    entity,
                    name,
                    token,
                    pos,
                    cell,
                    shard,
                    tick_hz,
                };
                {
                    let mut w = self.world.lock();
                    w.cell = Some(cell);
                    w.shard = Some(me.shard.clone());
                    w.me = Some(me.entity);
                }
                self.me = Some(me.clone());
                self.start_reader();
                Ok(me)
            }
            ServerMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected LoggedIn, got {other:?}"
            ))),
        }
    }

    fn start_reader(&mut self) {
        let Some((mut recv, mut buf)) = self.recv.take() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(rx);
        let world = self.world.clone();
        let tx2 = tx.clone();
        let control_conn = self.conn.clone();
        tokio::spawn(async move {
            loop {
                match read_msg(&mut recv, &mut buf).await {
                    Ok(msg) => {
                        if let Some(ev) = apply_msg(&world, msg) {
                            let _ = tx.send((Instant::now(), ev));
                        }
                    }
                    Err(e) => {
                        // A stopping router finishes the control stream
                        // just before it closes the connection: wait for
                        // the close, so `router_restarted` can tell.
                        let _ = tokio::time::timeout(Duration::from_secs(1), control_conn.closed())
                            .await;
                        let _ = tx.send((Instant::now(), ClientEvent::Closed(e.to_string())));
                        break;
                    }
                }
            }
        });
        let conn = self.conn.clone();
        let world = self.world.clone();
        tokio::spawn(async move {
            while let Ok(bytes) = conn.read_datagram().await {
                let len = bytes.len() as u64;
                match frame::decode::<ServerDatagram>(&bytes, MAX_DATAGRAM) {
                    Ok(ServerDatagram::Snapshot {
                        tick,
                        ack_input,
                        origin,
                        entities,
                    }) => {
                        let entities = match snapshot::decode_updates(origin, &entities) {
                            Ok(u) => u,
                            Err(e) => {
                                tracing::debug!(error = %e, "bad snapshot datagram");
                                continue;
                            }
                        };
                        let mut w = world.lock();
                        w.bytes_in += len;
                        w.snapshots += 1;
                        let now = Instant::now();
                        if ack_input > w.ack_input {
                            w.ack_input = ack_input;
                            w.ack_at = Some(now);
                        }
                        let me = w.me;
                        let mine = |u: &snapshot::EntityUpdate| {
                            me.is_some() && w.slots.get(&u.slot).copied() == me
                        };
                        if entities.iter().any(mine) {
                            if let Some(last) = w.self_updated {
                                if w.self_gaps.len() < 1024 {
                                    w.self_gaps.push(now - last);
                                }
                            }
                            w.self_updated = Some(now);
                        }
                        for u in entities {
                            let Some(id) = w.slots.get(&u.slot).copied() else {
                                continue;
                            };
                            if let Some(e) = w.entities.get_mut(&id) {
                                if tick >= e.tick {
                                    e.pos = u.pos();
                                    e.vel = u.vel();
                                    e.yaw = u.yaw();
                                    e.tick = tick;
                                    e.updated = now;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "bad snapshot datagram"),
                }
            }
            drop(tx2);
        });
    }

    /// Sends a movement intent (unreliable); returns its sequence number.
    pub fn send_input(&mut self, move_x: f32, move_z: f32, yaw: f32) -> Result<u32, ClientError> {
        self.input_seq = self.input_seq.wrapping_add(1);
        let input = Input {
            seq: self.input_seq,
            move_x,
            move_z,
            yaw,
            jump: false,
        };
        let bytes = frame::encode(&ClientDatagram::Input(input))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_raw_datagram(bytes)?;
        Ok(self.input_seq)
    }

    pub async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        self.write(&ClientMsg::Say { text: text.into() }).await
    }

    /// Runs a text command (`who`, `where`, `look`, ...) and returns its
    /// answer. Other events that arrive meanwhile are kept.
    pub async fn command(&mut self, line: &str) -> Result<String, ClientError> {
        self.write(&ClientMsg::Command { line: line.into() })
            .await?;
        let mut kept = Vec::new();
        let result = loop {
            match self.next_event_timed(Duration::from_secs(10)).await {
                Some((_, ClientEvent::Text(t))) => break Ok(t),
                Some((_, ClientEvent::Closed(e))) => break Err(ClientError::Lost(e)),
                Some(other) => kept.push(other),
                None => break Err(ClientError::Timeout),
            }
        };
        self.requeue(kept);
        result
    }

    fn requeue(&mut self, kept: Vec<(Instant, ClientEvent)>) {
        if kept.is_empty() {
            return;
        }
        // Put the kept events back in front of any newer ones.
        let Some(mut rx) = self.events.take() else {
            return;
        };
        let (tx, new_rx) = mpsc::unbounded_channel();
        for ev in kept {
            let _ = tx.send(ev);
        }
        while let Ok(ev) = rx.try_recv() {
            let _ = tx.send(ev);
        }
        // Forward the rest of the old channel into the new one.
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        self.events = Some(new_rx);
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        self.next_event_timed(timeout).await.map(|(_, ev)| ev)
    }

    /// The next event and when it arrived, or `None` after `timeout`.
    pub async fn next_event_timed(&mut self, timeout: Duration) -> Option<(Instant, ClientEvent)> {
        let rx = self.events.as_mut()?;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an event `pick` accepts, discarding others.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next_event(left).await?;
            if let Some(t) = pick(&ev) {
                return Some(t);
            }
        }
    }

    /// The entity named `name`, if in view.
    pub fn find(&self, name: &str) -> Option<KnownEntity> {
        self.world
            .lock()
            .entities
            .values()
            .find(|e| e.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    /// This player's own entity as last seen.
    pub fn me_entity(&self) -> Option<KnownEntity> {
        let id = self.me.as_ref()?.entity;
        self.world.lock().entities.get(&id).cloned()
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Logs out and closes the connection.
    pub async fn logout(mut self) {
        let _ = self.write(&ClientMsg::Logout).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
        self.conn.close(0u32.into(), b"bye");
    }
}

async fn read_msg(
    recv: &mut quinn::RecvStream,
    buf: &mut FrameBuffer,
) -> Result<ServerMsg, ClientError> {
    loop {
        if let Some(payload) = buf
            .next_frame()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            return frame::decode(&payload, MAX_CONTROL_FRAME)
                .map_err(|e| ClientError::Protocol(e.to_string()));
        }
        let mut chunk = [0u8; 4096];
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend(&chunk[..n]),
            Ok(None) => return Err(ClientError::Lost("control stream finished".into())),
            Err(quinn::ReadError::ConnectionLost(why)) => {
                // Says the server's close code and reason ("too many
                // connections from your address"), not just "connection lost".
                return Err(ClientError::Lost(why.to_string()));
            }
            Err(e) => return Err(ClientError::Lost(e.to_string())),
        }
    }
}

fn apply_msg(world: &Mutex<WorldState>, msg: ServerMsg) -> Option<ClientEvent> {
    match msg {
        ServerMsg::EntityAppeared {
            entity,
            slot,
            kind,
            name,
            pos,
        } => {
            let mut w = world.lock();
            w.slots.insert(slot, entity);
            w.entities.insert(
                entity,
                KnownEntity {
                    id: entity,
                    kind,
                    name,
                    pos,
                    vel: Vec3::ZERO,
                    yaw: 0.0,
                    tick: 0,
                    updated: Instant::now(),
                },
            );
            Some(ClientEvent::Appeared(entity))
        }
        ServerMsg::EntityGone { entity } => {
            let mut w = world.lock();
            w.entities.remove(&entity);
            w.slots.retain(|_, e| *e != entity);
            Some(ClientEvent::Gone(entity))
        }
        ServerMsg::Chat {
            from,
            entity,
            text,
            emote,
        } => Some(ClientEvent::Chat {
            from,
            entity,
            text,
            emote,
        }),
        ServerMsg::Text { text } => Some(ClientEvent::Text(text)),
        ServerMsg::Notice { text } => Some(ClientEvent::Notice(text)),
        ServerMsg::Gmcp { package, data } => Some(ClientEvent::Gmcp { package, data }),
        ServerMsg::ChatLine {
            kind,
            from,
            to,
            text,
            ..
        } => Some(ClientEvent::ChatLine {
            kind,
            from,
            to,
            text,
        }),
        ServerMsg::Error { code, message } => Some(ClientEvent::Error { code, message }),
        ServerMsg::CellChanged { cell, shard } => {
            let mut w = world.lock();
            w.cell = Some(cell);
            w.shard = Some(shard.clone());
            Some(ClientEvent::CellChanged { cell, shard })
        }
        ServerMsg::Pong { nonce } => Some(ClientEvent::Pong(nonce)),
        ServerMsg::Welcome { .. } | ServerMsg::LoggedIn { .. } | ServerMsg::Relaying => None,
    }
}
