//! The QUIC gateway (ALPN `tessera/1`, docs/protocol.md): a control stream
//! the client opens first, carrying length-prefixed bincode frames (login,
//! chat, entity appear/gone), and unreliable datagrams for inputs and
//! position snapshots. Interest management happens here: each client gets
//! only the entities within the interest radius.

use crate::command;
use crate::interest::{Interest, SnapshotClock};
use crate::play;
use crate::session::{self, Player};
use crate::{webtransport, Router, RouterError};
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::AuthError;
use tessera_proto::cluster::PlayerEvent;
use tessera_proto::frame::{self, FrameBuffer, FrameError, MAX_CONTROL_FRAME, MAX_DATAGRAM};
use tessera_proto::msg::{
    clean_text, ClientDatagram, ClientMsg, ErrorCode, ServerMsg, MAX_LINE_BYTES, MAX_SAY_CHARS,
};
use tessera_proto::{RegionId, PROTOCOL_VERSION};
use web_transport_quinn::{Session, SessionError};

/// Application close codes.
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_PROTOCOL: u32 = 1;
pub const CLOSE_VERSION: u32 = 2;
pub const CLOSE_FULL: u32 = 3;
/// The client's address holds its cap of connections already
/// (`RouterConfig::connections_per_address`).
pub const CLOSE_TOO_MANY: u32 = 5;
pub use tessera_proto::msg::CLOSE_RESTART;

/// Text answers are cut to fit one control frame (a `who` of thousands of
/// players would not).
fn clip_text(mut text: String) -> String {
    const MAX: usize = MAX_CONTROL_FRAME - 512;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[...]");
    }
    text
}

/// Whether `conn` is a telnet gateway of the cluster (see
/// `ClientConn::is_gateway`).
fn is_gateway(router: &Router, conn: &quinn::Connection) -> bool {
    use tessera_coordinator::identity::{MemberRole, Peer};
    !router.config.relay_cas.is_empty()
        && Peer::of(conn).is_some_and(|p| p.may_be(MemberRole::Gateway))
}

/// A client must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN `conn` agreed on.
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The WebTransport session a browser opens on `conn` (HTTP/3 settings,
/// then a CONNECT to [`webtransport::PATH`]; another path gets 404).
async fn web_session(conn: quinn::Connection) -> Result<Session, String> {
    let request = web_transport_quinn::Request::accept(conn)
        .await
        .map_err(|e| format!("WebTransport handshake: {e}"))?;
    if request.url.path() != webtransport::PATH {
        let path = request.url.path().to_string();
        let conn = request.conn().clone();
        let _ = request
            .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
            .await;
        // Give the 404 time to arrive before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return Err(format!("WebTransport request for {path}"));
    }
    request
        .ok()
        .await
        .map_err(|e| format!("WebTransport handshake: {e}"))
}

/// Accepts connections until the endpoint closes: native clients and
/// telnet gateways (ALPN `tessera/1`) and browsers (WebTransport, `h3`),
/// which then speak the same protocol.
pub async fn serve(router: Arc<Router>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let r = router.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let peer = conn.remote_address();
            let browser = alpn(&conn).as_deref() == Some(webtransport::ALPN_H3);
            // Cluster members (telnet gateways relaying many players) are
            // not capped by address: their gateway caps each player's.
            let member = !browser && is_gateway(&r, &conn);
            let transport = if browser { "webtransport" } else { "quic" };
            let _slot = if member {
                None
            } else {
                match crate::caps::admit(&r.caps, peer.ip(), transport) {
                    Some(slot) => Some(slot),
                    None => {
                        conn.close(
                            CLOSE_TOO_MANY.into(),
                            b"too many connections from your address",
                        );
                        return;
                    }
                }
            };
            let conn = if browser {
                match tokio::time::timeout(HELLO_TIMEOUT, web_session(conn.clone())).await {
                    Ok(Ok(session)) => session,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "WebTransport session refused");
                        conn.close(CLOSE_PROTOCOL.into(), b"not a Tessera WebTransport session");
                        return;
                    }
                    Err(_) => {
                        conn.close(CLOSE_PROTOCOL.into(), b"no WebTransport session in time");
                        return;
                    }
                }
            } else {
                Session::raw(conn)
            };
            let Some((session, events)) = r.open_session() else {
                conn.close(CLOSE_FULL, b"server full; try again later");
                return;
            };
            tracing::info!(peer = %peer, session = %session, transport, "QUIC connection");
            let mut c = ClientConn {
                router: r.clone(),
                conn: conn.clone(),
                session,
                events: Some(events),
                ctl: None,
                relay: None,
                gmcp_modules: None,
                gmcp: crate::gmcp::GmcpTracker::default(),
                stop: r.stopping(),
            };
            match c.run().await {
                Ok(()) => conn.close(CLOSE_NORMAL, b"bye"),
                Err(ConnError::Protocol(msg)) => {
                    tracing::info!(peer = %peer, error = %msg, "closing QUIC connection: protocol error");
                    conn.close(CLOSE_PROTOCOL, msg.as_bytes());
                }
                Err(ConnError::Version) => conn.close(CLOSE_VERSION, b"protocol version"),
                Err(ConnError::Restart) => conn.close(CLOSE_RESTART, b"server restarting"),
                Err(ConnError::Closed(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "QUIC connection closed")
                }
            }
            r.close_session(session);
        });
    }
}

#[derive(Debug)]
enum ConnError {
    Protocol(String),
    Version,
    Closed(String),
    /// The router is stopping; the player (if any) has left the world.
    Restart,
}

impl From<SessionError> for ConnError {
    fn from(e: SessionError) -> Self {
        ConnError::Closed(e.to_string())
    }
}

/// The control stream: framed, size-limited messages.
struct Control {
    send: web_transport_quinn::SendStream,
    recv: web_transport_quinn::RecvStream,
    buf: FrameBuffer,
}

impl Control {
    async fn write(&mut self, msg: &ServerMsg) -> Result<(), ConnError> {
        let bytes = frame::encode_frame(msg, MAX_CONTROL_FRAME)
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| ConnError::Closed(e.to_string()))
    }

    /// Reads the next message. Garbage is a protocol error.
    async fn read(&mut self) -> Result<ClientMsg, ConnError> {
        loop {
            match self.buf.next_frame() {
                Ok(Some(payload)) => {
                    return frame::decode::<ClientMsg>(&payload, MAX_CONTROL_FRAME)
                        .map_err(|e| ConnError::Protocol(e.to_string()));
                }
                Ok(None) => {}
                Err(e @ FrameError::TooLarge { .. }) => {
                    return Err(ConnError::Protocol(e.to_string()))
                }
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            match self.recv.read(&mut chunk).await {
                Ok(Some(n)) => self.buf.extend(&chunk[..n]),
                Ok(None) => return Err(ConnError::Closed("control stream finished".into())),
                Err(e) => return Err(ConnError::Closed(e.to_string())),
            }
        }
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), ConnError> {
        self.write(&ServerMsg::Error {
            code,
            message: message.into(),
        })
        .await
    }
}

struct ClientConn {
    router: Arc<Router>,
    /// A native QUIC connection (`Session::raw`) or a browser's
    /// WebTransport session: the same streams and datagrams either way.
    conn: Session,
    session: tessera_proto::SessionId,
    events: Option<tokio::sync::mpsc::Receiver<PlayerEvent>>,
    ctl: Option<Control>,
    /// The telnet client a gateway relays on this connection: a text
    /// session (`ClientMsg::Relay`).
    relay: Option<std::net::SocketAddr>,
    /// The GMCP modules the relayed player's client enabled, once its
    /// gateway said (`ClientMsg::GmcpModules`), and what GMCP last told it.
    gmcp_modules: Option<std::collections::BTreeSet<String>>,
    gmcp: crate::gmcp::GmcpTracker,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// A relayed text player may sit at the login prompt as long as its
/// gateway keeps it (the gateway has its own idle timeout).
const RELAY_LOGIN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl ClientConn {
    async fn run(&mut self) -> Result<(), ConnError> {
        let (send, recv) = tokio::time::timeout(HELLO_TIMEOUT, self.conn.accept_bi())
            .await
            .map_err(|_| ConnError::Protocol("no control stream".into()))??;
        let mut ctl = Control {
            send,
            recv,
            buf: FrameBuffer::new(MAX_CONTROL_FRAME),
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, ctl.read())
            .await
            .map_err(|_| ConnError::Protocol("no hello".into()));
        let hello = match hello.and_then(|r| r) {
            Ok(h) => h,
            Err(ConnError::Protocol(msg)) => {
                let _ = ctl.error(ErrorCode::Malformed, msg.clone()).await;
                return Err(ConnError::Protocol(msg));
            }
            Err(e) => return Err(e),
        };
        match hello {
            ClientMsg::Hello { version, .. } if version == PROTOCOL_VERSION => {}
            ClientMsg::Hello { version, .. } => {
                ctl.error(
                    ErrorCode::VersionMismatch,
                    format!(
                        "this server speaks protocol version {PROTOCOL_VERSION}, not {version}"
                    ),
                )
                .await?;
                let _ = ctl.send.finish();
                return Err(ConnError::Version);
            }
            _ => {
                ctl.error(ErrorCode::Malformed, "the first message must be Hello")
                    .await?;
                return Err(ConnError::Protocol("no hello".into()));
            }
        }
        ctl.write(&ServerMsg::Welcome {
            version: PROTOCOL_VERSION,
            server: format!("tessera {}", env!("CARGO_PKG_VERSION")),
            world: self.router.world.name.clone(),
        })
        .await?;
        self.ctl = Some(ctl);
        let Some(mut player) = self.login().await? else {
            return Ok(());
        };
        // A QUIC client holds its token: unless it logs out (or is
        // kicked), a lost connection or a router restart keeps its session
        // for `Resume`.
        player.keep_session = true;
        let result = self.play(&mut player).await;
        player.leave().await;
        if matches!(result, Err(ConnError::Restart)) {
            // Deliver every answer already written before the connection
            // closes: a client resuming elsewhere then knows that each
            // command without an answer was never run.
            if let Some(ctl) = self.ctl.as_mut() {
                let _ = ctl.send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), ctl.send.stopped()).await;
            }
        }
        result
    }

    fn ctl(&mut self) -> &mut Control {
        self.ctl
            .as_mut()
            .expect("control stream is open after hello")
    }

    /// Whether this connection is a telnet gateway of the cluster: a
    /// certificate from the cluster CA (rustls verified it during the
    /// handshake) whose role is `gateway` (`tessera_coordinator::identity`).
    fn is_gateway(&self) -> bool {
        self.conn.request().is_none() && is_gateway(&self.router, &self.conn)
    }

    /// Runs the login exchange until the player is in the world.
    async fn login(&mut self) -> Result<Option<Player>, ConnError> {
        let mut deadline = tokio::time::Instant::now() + self.router.config.login_timeout;
        loop {
            let mut stop = self.stop.clone();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.ctl().read()) => r,
                _ = crate::until_stopping(&mut stop) => return Err(ConnError::Restart),
            };
            let msg = match read {
                Err(_) => return Err(ConnError::Protocol("no login in time".into())),
                Ok(Ok(m)) => m,
                Ok(Err(ConnError::Protocol(msg))) => {
                    let _ = self.ctl().error(ErrorCode::Malformed, msg.clone()).await;
                    return Err(ConnError::Protocol(msg));
                }
                Ok(Err(e)) => return Err(e),
            };
            // Logins are rate limited by the player's address: a relayed
            // player's is the one its gateway vouches for.
            let peer = match self.relay {
                Some(client) => client.ip(),
                None => self.conn.remote_address().ip(),
            };
            let login = match msg {
                ClientMsg::Relay { client } => {
                    if self.relay.is_some() {
                        self.ctl()
                            .error(ErrorCode::Malformed, "this connection already relays")
                            .await?;
                    } else if self.is_gateway() {
                        tracing::info!(session = %self.session, gateway = %self.conn.remote_address(), client = %client, "relayed text session");
                        self.relay = Some(client);
                        deadline = tokio::time::Instant::now() + RELAY_LOGIN_TIMEOUT;
                        self.ctl().write(&ServerMsg::Relaying).await?;
                    } else {
                        self.ctl()
                            .error(
                                ErrorCode::Forbidden,
                                "only a telnet gateway of this cluster (a client certificate of role gateway from the cluster CA) may relay players",
                            )
                            .await?;
                    }
                    continue;
                }
                ClientMsg::GmcpModules { modules } if self.relay.is_some() => {
                    // The player's MUD client enabled them at the login
                    // prompt; packages follow once it is in the world.
                    self.gmcp_modules = Some(crate::gmcp::module_set(&modules));
                    continue;
                }
                ClientMsg::Create { name, password } => {
                    session::login(&self.router, true, &name, &password, peer).await
                }
                ClientMsg::Connect { name, password } => {
                    session::login(&self.router, false, &name, &password, peer).await
                }
                ClientMsg::Resume { token } => {
                    let resumed = session::resume(&self.router, &token).await;
                    if let Ok(s) = &resumed {
                        // The client came back before its old connection
                        // timed out here: the new one wins.
                        let player = tessera_proto::PlayerId(s.account.id);
                        self.router.take_over(player).await;
                    }
                    resumed
                }
                ClientMsg::Ping { nonce } => {
                    self.ctl().write(&ServerMsg::Pong { nonce }).await?;
                    continue;
                }
                ClientMsg::Logout => return Ok(None),
                _ => {
                    self.ctl()
                        .error(ErrorCode::NotLoggedIn, "log in first")
                        .await?;
                    continue;
                }
            };
            let login = match login {
                Ok(a) => a,
                Err(e) => {
                    let code = match &e {
                        AuthError::InvalidName(_) => ErrorCode::InvalidName,
                        AuthError::InvalidPassword(_) => ErrorCode::InvalidPassword,
                        AuthError::NameTaken => ErrorCode::NameTaken,
                        AuthError::BadCredentials
                        | AuthError::TokenInvalid
                        | AuthError::TokenExpired
                        | AuthError::SessionEnded => ErrorCode::BadCredentials,
                        AuthError::RateLimited { .. } => ErrorCode::RateLimited,
                        _ => ErrorCode::Unavailable,
                    };
                    self.ctl().error(code, crate::login_refusal(&e)).await?;
                    continue;
                }
            };
            let events = self
                .events
                .take()
                .expect("events are here until the player enters");
            let (account, token) = (login.account.clone(), login.token.clone());
            match Player::enter(self.router.clone(), self.session, events, login).await {
                Ok(player) => {
                    let msg = ServerMsg::LoggedIn {
                        player: tessera_proto::PlayerId(account.id),
                        entity: player.entity,
                        name: account.name.clone(),
                        token,
                        pos: player.pos,
                        cell: player.region.cell_id(),
                        shard: player.shard.clone(),
                        tick_hz: self.router.config.tick_hz,
                    };
                    self.ctl().write(&msg).await?;
                    return Ok(Some(player));
                }
                Err((e, events)) => {
                    self.events = Some(events);
                    let code = match e {
                        RouterError::AlreadyPlaying => ErrorCode::AlreadyLoggedIn,
                        _ => ErrorCode::Unavailable,
                    };
                    self.ctl().error(code, crate::enter_refusal(&e)).await?;
                }
            }
        }
    }

    async fn play(&mut self, player: &mut Player) -> Result<(), ConnError> {
        let mut ctl = self.ctl.take().expect("control stream");
        let period = Duration::from_secs_f64(1.0 / self.router.config.snapshot_hz.max(1) as f64);
        // Snapshots follow the frames of the player's region (SnapshotClock).
        let mut clock = SnapshotClock::new(period, std::time::Instant::now());
        let mut region = player.region;
        let mut frames = self.router.view.frames_of(region);
        // One timer, moved at each snapshot (a new one per loop turn cost
        // a timer-wheel insert and removal per datagram and event).
        let fallback = tokio::time::sleep_until(clock.deadline().into());
        tokio::pin!(fallback);
        let mut interest = Interest::default();
        // An input came since the last snapshot: the next frame may ack it.
        let mut input_waiting = false;
        // A relayed text player sees the world through `look`, not snapshots.
        let text = self.relay.is_some();
        let mut stop = self.stop.clone();
        // GMCP for a relayed player follows the world between commands too.
        let mut gmcp_tick = tokio::time::interval(crate::gmcp::NEARBY_EVERY);
        gmcp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = crate::until_stopping(&mut stop) => break Err(ConnError::Restart),
                _ = gmcp_tick.tick(), if self.gmcp_modules.is_some() => {
                    if let Err(e) = self.send_gmcp(player, &mut ctl).await {
                        break Err(e);
                    }
                }
                msg = ctl.read() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(ConnError::Protocol(m)) => {
                            let _ = ctl.error(ErrorCode::Malformed, m.clone()).await;
                            break Err(ConnError::Protocol(m));
                        }
                        Err(e) => break Err(e),
                    };
                    match self.on_message(player, &mut ctl, msg).await {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
                dg = self.conn.read_datagram() => {
                    match dg {
                        Ok(bytes) => match frame::decode::<ClientDatagram>(&bytes, MAX_DATAGRAM) {
                            Ok(ClientDatagram::Input(input)) => {
                                if player.input(input).is_ok() {
                                    input_waiting = true;
                                }
                            }
                            Err(e) => {
                                // A bad datagram is dropped; datagrams are
                                // unreliable anyway, so this is not fatal.
                                tracing::debug!(session = %self.session, error = %e, "bad datagram dropped");
                                metrics::counter!("tessera_router_bad_datagrams_total").increment(1);
                            }
                        },
                        Err(e) => break Err(e.into()),
                    }
                }
                ev = player.next_event() => {
                    let Some(ev) = ev else { break Ok(()) };
                    if let Some((code, text)) = crate::farewell(&ev) {
                        // A kick ends the session; a lag or a takeover keeps
                        // it for `Resume`.
                        if matches!(ev, PlayerEvent::Kicked { .. }) {
                            player.keep_session = false;
                        }
                        let _ = ctl.error(code, text).await;
                        break Ok(());
                    }
                    if let Some((package, data)) = crate::gmcp::event_package(&ev) {
                        if self.gmcp_wants(package) {
                            let gmcp = ServerMsg::Gmcp { package: package.into(), data };
                            if let Err(e) = ctl.write(&gmcp).await { break Err(e); }
                        }
                    }
                    let msg = match ev {
                        PlayerEvent::Heard { speaker, name, text, emote } => Some(ServerMsg::Chat { from: name, entity: Some(speaker), text, emote }),
                        PlayerEvent::OwnerChanged { region, shard } => Some(ServerMsg::CellChanged {
                            cell: region.cell_id(),
                            shard,
                        }),
                        PlayerEvent::Error { message } if text => Some(ServerMsg::Notice { text: format!("[{message}]") }),
                        PlayerEvent::Error { message } => Some(ServerMsg::Text { text: message }),
                        PlayerEvent::Chat { kind, from, to, text, at_unix_ms } => Some(ServerMsg::ChatLine { kind, from, to, text, at_unix_ms }),
                        _ => None,
                    };
                    if let Some(m) = msg {
                        if let Err(e) = ctl.write(&m).await { break Err(e); }
                    }
                }
                arrived = frames.changed(), if !text => {
                    if arrived.is_err() {
                        // Cannot happen while this receiver lives; wait on
                        // the region afresh rather than spin.
                        frames = self.router.view.frames_of(region);
                        continue;
                    }
                    if !clock.on_frame(std::time::Instant::now(), input_waiting) {
                        continue;
                    }
                    input_waiting = false;
                    fallback.as_mut().reset(clock.deadline().into());
                    if let Err(e) = self.tick(player, &mut ctl, &mut interest, &mut region, &mut frames).await {
                        break Err(e);
                    }
                }
                _ = &mut fallback, if !text => {
                    input_waiting = false;
                    clock.sent(std::time::Instant::now());
                    fallback.as_mut().reset(clock.deadline().into());
                    if let Err(e) = self.tick(player, &mut ctl, &mut interest, &mut region, &mut frames).await {
                        break Err(e);
                    }
                }
            }
        };
        self.ctl = Some(ctl);
        result
    }

    /// Handles one control message; false when the client logs out.
    async fn on_message(
        &mut self,
        player: &mut Player,
        ctl: &mut Control,
        msg: ClientMsg,
    ) -> Result<bool, ConnError> {
        match msg {
            ClientMsg::Say { text } => {
                let text = clean_text(&text);
                let text = text.as_str();
                if text.is_empty() {
                    return Ok(true);
                }
                if text.chars().count() > MAX_SAY_CHARS {
                    ctl.error(
                        ErrorCode::TooLong,
                        format!("say at most {MAX_SAY_CHARS} characters"),
                    )
                    .await?;
                    return Ok(true);
                }
                match player.say(text) {
                    Ok(()) => {}
                    // Muted, or speaking too fast: the text says which.
                    Err(RouterError::Refused(why)) => {
                        ctl.error(ErrorCode::RateLimited, why).await?
                    }
                    Err(e) => ctl.error(ErrorCode::Unavailable, e.to_string()).await?,
                }
            }
            ClientMsg::Command { line } => {
                if line.len() > MAX_LINE_BYTES {
                    ctl.error(
                        ErrorCode::TooLong,
                        format!("commands are at most {MAX_LINE_BYTES} bytes"),
                    )
                    .await?;
                    return Ok(true);
                }
                match command::parse_command(&clean_text(&line)) {
                    Ok(cmd) => {
                        let out = play::execute(player, cmd).await;
                        // GMCP first, as the router's own telnet port sends it.
                        if let Some((package, data)) = out.gmcp.clone() {
                            if self.gmcp_wants(package) {
                                ctl.write(&ServerMsg::Gmcp {
                                    package: package.into(),
                                    data,
                                })
                                .await?;
                            }
                        }
                        self.send_gmcp(player, ctl).await?;
                        ctl.write(&ServerMsg::Text {
                            // A relayed text session keeps the colour marks
                            // (its gateway renders them); a 3D client reads text.
                            text: clip_text(if self.relay.is_some() {
                                out.text
                            } else {
                                crate::style::strip(&out.text).into_owned()
                            }),
                        })
                        .await?;
                        if out.quit {
                            player.keep_session = false;
                            return Ok(false);
                        }
                    }
                    Err(e) => {
                        ctl.write(&ServerMsg::Text {
                            text: e.to_string(),
                        })
                        .await?
                    }
                }
            }
            ClientMsg::Ping { nonce } => ctl.write(&ServerMsg::Pong { nonce }).await?,
            ClientMsg::GmcpModules { modules } if self.relay.is_some() => {
                self.gmcp_modules = Some(crate::gmcp::module_set(&modules));
                self.send_gmcp(player, ctl).await?;
            }
            ClientMsg::GmcpModules { .. } => {
                ctl.error(
                    ErrorCode::Malformed,
                    "GMCP modules are for sessions a telnet gateway relays",
                )
                .await?;
            }
            ClientMsg::Logout => {
                player.keep_session = false;
                return Ok(false);
            }
            ClientMsg::Hello { .. }
            | ClientMsg::Create { .. }
            | ClientMsg::Connect { .. }
            | ClientMsg::Resume { .. }
            | ClientMsg::Relay { .. } => {
                ctl.error(ErrorCode::AlreadyLoggedIn, "already logged in")
                    .await?;
            }
        }
        Ok(true)
    }

    /// Whether the relayed player's client gets GMCP `package`.
    fn gmcp_wants(&self, package: &str) -> bool {
        self.gmcp_modules
            .as_ref()
            .is_some_and(|m| crate::gmcp::module_wants(m, package))
    }

    /// Sends a relayed player the GMCP packages that changed (where it is,
    /// what is around), as the router's own telnet port does.
    async fn send_gmcp(&mut self, player: &mut Player, ctl: &mut Control) -> Result<(), ConnError> {
        let Some(modules) = &self.gmcp_modules else {
            return Ok(());
        };
        let changed = self
            .gmcp
            .update_for(player, |p| crate::gmcp::module_wants(modules, p));
        for (package, data) in changed {
            ctl.write(&ServerMsg::Gmcp {
                package: package.into(),
                data,
            })
            .await?;
        }
        Ok(())
    }

    /// One snapshot's turn: notices a dead shard (a QUIC player may only
    /// send inputs, so this is where it shows), sends the snapshot, and
    /// follows the player's region (hand-offs, splits and merges change
    /// it) for the next frames.
    async fn tick(
        &mut self,
        player: &mut Player,
        ctl: &mut Control,
        interest: &mut Interest,
        region: &mut RegionId,
        frames: &mut tokio::sync::watch::Receiver<()>,
    ) -> Result<(), ConnError> {
        if let Ok(Some(text)) = player.ensure_in_world().await {
            ctl.write(&ServerMsg::Text { text }).await?;
        }
        self.snapshot(player, ctl, interest).await?;
        if player.region != *region {
            *region = player.region;
            *frames = self.router.view.frames_of(player.region);
        }
        Ok(())
    }

    /// Interest management (`interest.rs`): what this player can see, as
    /// reliable appear/gone messages and unreliable position datagrams.
    async fn snapshot(
        &mut self,
        player: &mut Player,
        ctl: &mut Control,
        interest: &mut Interest,
    ) -> Result<(), ConnError> {
        let router = &self.router;
        let (radius, limit) = (
            router.config.interest_radius,
            crate::interest::MAX_VISIBLE + 1,
        );
        // The player's own entity (at distance 0) and the nearest others,
        // around where the player last stood (a tick ago): one pass finds
        // both the player and what it sees. A player not found there (a
        // teleport, a hand-off under way) is looked for on its own.
        let last = player.pos;
        let (mut visible, seen) =
            router
                .view
                .nearest_to(&router.grid, last, radius, limit, Some(player.entity));
        let pos = match seen {
            Some((me, at)) => {
                player.saw(me, at);
                player.pos
            }
            None => {
                let pos = player.position();
                if pos != last {
                    visible = router.view.nearest(&router.grid, pos, radius, limit);
                }
                pos
            }
        };
        let plan = interest.plan(player.entity, pos, &visible);
        for (e, slot) in &plan.appeared {
            ctl.write(&ServerMsg::EntityAppeared {
                entity: e.id,
                slot: *slot,
                kind: e.kind,
                name: e.name.to_string(),
                pos: e.pos,
            })
            .await?;
        }
        for id in &plan.gone {
            ctl.write(&ServerMsg::EntityGone { entity: *id }).await?;
        }
        let tick = router.view.latest_tick();
        let ack = plan.ack_input;
        let max = match self.conn.max_datagram_size() {
            0 => MAX_DATAGRAM,
            n => n.min(MAX_DATAGRAM),
        };
        let mut sent = 0u64;
        for dg in crate::interest::encode_snapshot(tick, ack, pos, &plan.updates, max) {
            sent += self.send_datagram(dg)?;
        }
        metrics::counter!("tessera_router_snapshot_bytes_total").increment(sent);
        Ok(())
    }

    fn send_datagram(&self, bytes: Vec<u8>) -> Result<u64, ConnError> {
        let n = bytes.len() as u64;
        match self.conn.send_datagram(bytes.into()) {
            Ok(()) => Ok(n),
            Err(SessionError::SendDatagramError(quinn::SendDatagramError::ConnectionLost(e))) => {
                Err(ConnError::Closed(e.to_string()))
            }
            Err(e @ (SessionError::ConnectionError(_) | SessionError::WebTransportError(_))) => {
                Err(e.into())
            }
            Err(e) => {
                tracing::debug!(error = %e, "snapshot datagram not sent");
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_to_fit_a_frame() {
        let long = "é".repeat(20_000);
        let clipped = clip_text(long);
        let frame = frame::encode_frame(&ServerMsg::Text { text: clipped }, MAX_CONTROL_FRAME);
        assert!(frame.is_ok());
        assert_eq!(clip_text("short".into()), "short");
    }
}
