//! The telnet gateway: accepts TCP connections and runs each through the
//! telnet dialogue and the shared session model. This file only moves
//! bytes; the conversation (codec, login prompts, echo) is the pure state
//! machine in `dialogue.rs`, and parsing is `command.rs`.

use crate::command;
use crate::dialogue::{self, Action, Dialogue};
use crate::play;
use crate::session::{self, Player};
use crate::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::cluster::PlayerEvent;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client of the TLS port has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The reading half of a telnet connection, plain or TLS.
pub type Reader = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The writing half of a telnet connection, plain or TLS.
pub type Writer = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// When a telnet connection is closed for want of input: idle for the
/// idle timeout, or not logged in by its login deadline however much it
/// types. Shared by the router's telnet and the telnet gateway.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    idle: Duration,
    login_by: tokio::time::Instant,
}

impl Deadlines {
    /// For a connection that opened at `opened`.
    pub fn new(opened: tokio::time::Instant, idle: Duration, login_timeout: Duration) -> Deadlines {
        Deadlines {
            idle,
            login_by: opened + login_timeout,
        }
    }

    /// When to stop waiting for input, the player's last input being at
    /// `last_input`.
    pub fn next(&self, last_input: tokio::time::Instant, logged_in: bool) -> tokio::time::Instant {
        let idle_by = last_input + self.idle;
        if logged_in {
            idle_by
        } else {
            idle_by.min(self.login_by)
        }
    }

    /// Why the connection closes when the wait ended at `now`.
    pub fn reason(&self, now: tokio::time::Instant, logged_in: bool) -> &'static str {
        if !logged_in && now >= self.login_by {
            crate::LOGIN_TIMEOUT_TEXT
        } else {
            "You have been idle too long"
        }
    }
}

/// The halves of a plain TCP connection.
pub fn plain(stream: TcpStream) -> (Reader, Writer) {
    let (i, o) = stream.into_split();
    (Box::new(i), Box::new(o))
}

/// The halves of a TLS connection once `acceptor` has completed its
/// handshake within [`TLS_HANDSHAKE_TIMEOUT`]; None if it failed (logged).
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Reader, Writer)> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let (i, o) = tokio::io::split(s);
            Some((Box::new(i), Box::new(o)))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "telnet TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "telnet TLS handshake timed out");
            None
        }
    }
}

/// Accepts plain telnet connections until the task is aborted.
pub async fn serve(router: Arc<Router>, listener: TcpListener) {
    accept_loop(router, listener, None).await
}

/// Accepts telnet-over-TLS connections until the task is aborted: the same
/// conversation inside TLS (Mudlet, TinTin++ `#ssl`, `openssl s_client`).
pub async fn serve_tls(
    router: Arc<Router>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    accept_loop(router, listener, Some(acceptor)).await
}

async fn accept_loop(
    router: Arc<Router>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let r = router.clone();
                let tls = tls.clone();
                let transport = if tls.is_some() {
                    "telnet-tls"
                } else {
                    "telnet"
                };
                let Some(slot) = crate::caps::admit(&router.caps, peer.ip(), transport) else {
                    tokio::spawn(refuse_over_cap(
                        stream,
                        tls.is_none(),
                        router.caps.per_address(),
                    ));
                    continue;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = stream.set_nodelay(true);
                    let (input, out) = match tls {
                        None => plain(stream),
                        Some(acceptor) => match accept_tls(&acceptor, stream, peer).await {
                            Some(halves) => halves,
                            None => return,
                        },
                    };
                    if let Err(e) = Connection::run(r, input, out, peer).await {
                        tracing::debug!(peer = %peer, error = %e, "telnet connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "telnet accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes a connection over its address's cap, telling a plain-telnet
/// client why (a TLS client is not sent cleartext; it sees the close).
pub async fn refuse_over_cap(mut stream: tokio::net::TcpStream, plain: bool, per_address: usize) {
    if plain {
        let text = crate::caps::refusal_text(per_address);
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(text.as_bytes())).await;
    }
    let _ = stream.shutdown().await;
}

struct Connection {
    router: Arc<Router>,
    peer: SocketAddr,
    dialogue: Dialogue,
    out: Writer,
    session: tessera_proto::SessionId,
    /// The session's event receiver while not playing (the player owns it
    /// once in the world).
    events: Option<tokio::sync::mpsc::Receiver<PlayerEvent>>,
    player: Option<Box<Player>>,
    /// MCCP2, once the client agreed.
    compressor: crate::telnet::Compressor,
    /// What GMCP last told the client.
    gmcp: crate::gmcp::GmcpTracker,
}

impl Connection {
    async fn run(
        router: Arc<Router>,
        mut input: Reader,
        out: Writer,
        peer: SocketAddr,
    ) -> std::io::Result<()> {
        let Some((session, events)) = router.open_session() else {
            let mut out = out;
            out.write_all(b"The server is full; please try again later.\r\n")
                .await?;
            out.shutdown().await?;
            return Ok(());
        };
        let mut conn = Connection {
            dialogue: Dialogue::new(router.config.max_line),
            router: router.clone(),
            peer,
            out,
            session,
            events: Some(events),
            player: None,
            compressor: crate::telnet::Compressor::default(),
            gmcp: crate::gmcp::GmcpTracker::default(),
        };
        tracing::info!(peer = %peer, session = %session, "telnet connection");
        let result = conn.serve(&mut input).await;
        if let Some(player) = conn.player.take() {
            player.leave().await;
        }
        router.close_session(session);
        result
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let bytes = self.compressor.encode(bytes);
        self.out.write_all(&bytes).await?;
        // TLS keeps records until flushed; plain TCP flushes at once.
        self.out.flush().await
    }

    async fn serve(&mut self, input: &mut Reader) -> std::io::Result<()> {
        let start = self.dialogue.start(&self.router.world.name);
        self.write(&start).await?;
        let mut buf = vec![0u8; 4096];
        let idle = self.router.config.idle_timeout;
        // Only the player's own input counts as activity, not chatter they
        // receive.
        let mut last_input = tokio::time::Instant::now();
        // Not logged in by the login deadline: closed (a connection that
        // only holds a slot, or types forever without logging in).
        let deadlines = Deadlines::new(last_input, idle, self.router.config.login_timeout);
        let mut stop = self.router.stopping();
        // GMCP's view of the world (Char.Status, Tessera.Nearby) follows it
        // between commands too.
        let mut gmcp_tick = tokio::time::interval(crate::gmcp::NEARBY_EVERY);
        gmcp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = deadlines.next(last_input, self.player.is_some());
            let event = match &mut self.player {
                Some(player) => {
                    tokio::select! {
                        n = tokio::time::timeout_at(deadline, input.read(&mut buf)) => Input::Read(n),
                        ev = player.next_event() => Input::Event(ev),
                        _ = crate::until_stopping(&mut stop) => Input::Stop,
                        _ = gmcp_tick.tick() => Input::Tick,
                    }
                }
                None => tokio::select! {
                    n = tokio::time::timeout_at(deadline, input.read(&mut buf)) => Input::Read(n),
                    _ = crate::until_stopping(&mut stop) => Input::Stop,
                },
            };
            match event {
                Input::Stop => {
                    // A TCP connection cannot follow the player to another
                    // router (a telnet gateway's players do: docs/deploy.md).
                    let bye = self.dialogue.goodbye(RESTART_TEXT);
                    let _ = self.write(&bye).await;
                    return Ok(());
                }
                Input::Read(Err(_)) => {
                    let why = deadlines.reason(tokio::time::Instant::now(), self.player.is_some());
                    let bye = self.dialogue.goodbye(why);
                    let _ = self.write(&bye).await;
                    return Ok(());
                }
                Input::Read(Ok(Err(e))) => return Err(e),
                Input::Read(Ok(Ok(0))) => return Ok(()),
                Input::Read(Ok(Ok(n))) => {
                    last_input = tokio::time::Instant::now();
                    let actions = self.dialogue.feed(&buf[..n]);
                    if !self.act(actions).await? {
                        let _ = self.out.shutdown().await;
                        return Ok(());
                    }
                }
                Input::Event(Some(ev)) => {
                    if let Some((_, text)) = crate::farewell(&ev) {
                        let bye = self.dialogue.goodbye(&text);
                        let _ = self.write(&bye).await;
                        return Ok(());
                    }
                    if let Some((package, json)) = crate::gmcp::event_package(&ev) {
                        if let Some(bytes) = self.dialogue.gmcp(package, &json) {
                            self.write(&bytes).await?;
                        }
                    }
                    if let Some(line) = self.event_line(ev) {
                        let bytes = self.dialogue.notify(&line);
                        self.write(&bytes).await?;
                    }
                }
                Input::Event(None) => return Ok(()),
                Input::Tick => self.send_gmcp().await?,
            }
        }
    }

    /// Sends the GMCP packages that changed (where the player is, what is
    /// around), if the client wants any.
    async fn send_gmcp(&mut self) -> std::io::Result<()> {
        let Some(player) = self.player.as_mut() else {
            return Ok(());
        };
        let dialogue = &self.dialogue;
        let changed = self.gmcp.update_for(player, |p| dialogue.gmcp_wants(p));
        let mut bytes = Vec::new();
        for (package, json) in changed {
            bytes.extend(self.dialogue.gmcp(package, &json).unwrap_or_default());
        }
        if !bytes.is_empty() {
            self.write(&bytes).await?;
        }
        Ok(())
    }

    /// How a player event reads on the screen, if it shows at all.
    fn event_line(&self, ev: PlayerEvent) -> Option<String> {
        match ev {
            PlayerEvent::Chat {
                kind,
                from,
                to,
                text,
                ..
            } => {
                let viewer = self.player.as_ref().map(|p| p.name()).unwrap_or_default();
                Some(tessera_proto::msg::render_chat(
                    &kind,
                    &from,
                    to.as_deref(),
                    &text,
                    viewer,
                ))
            }
            PlayerEvent::Heard {
                speaker,
                name,
                text,
                emote,
            } => Some(crate::style::heard(
                &name,
                &text,
                emote,
                crate::style::is_npc(speaker),
            )),
            PlayerEvent::Error { message } => Some(format!("[{message}]")),
            _ => None,
        }
    }

    /// Carries out what the dialogue asks for; false once the connection
    /// is to close.
    async fn act(&mut self, actions: Vec<Action>) -> std::io::Result<bool> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(bytes) => self.write(&bytes).await?,
                Action::Close => return Ok(false),
                Action::Compress(on) => {
                    let end = self.compressor.set(on);
                    self.out.write_all(&end).await?;
                    self.out.flush().await?;
                }
                Action::Mssp { text } => {
                    let bytes = self.dialogue.mssp(&self.router.mssp_info(), text);
                    self.write(&bytes).await?;
                }
                Action::LogIn {
                    create,
                    name,
                    password,
                } => {
                    let more = self.log_in(create, name, password).await;
                    for a in more.into_iter().rev() {
                        queue.push_front(a);
                    }
                }
                Action::Command(line) => {
                    let Some(player) = self.player.as_mut() else {
                        continue;
                    };
                    let cmd = match command::parse_command(&line) {
                        Ok(cmd) => cmd,
                        Err(e) => {
                            let bytes = self.dialogue.answer(&e.to_string());
                            self.write(&bytes).await?;
                            continue;
                        }
                    };
                    let outcome = play::execute(player, cmd).await;
                    if outcome.quit {
                        if let Some(player) = self.player.take() {
                            player.leave().await;
                        }
                        let bytes = self.dialogue.last_words(&outcome.text);
                        self.write(&bytes).await?;
                        return Ok(false);
                    }
                    // GMCP first, so a client's windows are current when
                    // the prompt's marker fires its triggers.
                    if let Some((package, json)) = &outcome.gmcp {
                        if let Some(bytes) = self.dialogue.gmcp(package, json) {
                            self.write(&bytes).await?;
                        }
                    }
                    self.send_gmcp().await?;
                    let bytes = self.dialogue.answer(&outcome.text);
                    self.write(&bytes).await?;
                }
            }
        }
        Ok(true)
    }

    /// Logs in and enters the world; what the dialogue says next.
    async fn log_in(&mut self, create: bool, name: String, password: String) -> Vec<Action> {
        let account =
            match session::login(&self.router, create, &name, &password, self.peer.ip()).await {
                Ok(a) => a,
                Err(e) => return self.dialogue.refused(&crate::login_refusal(&e)),
            };
        let Some(events) = self.events.take() else {
            return self.dialogue.refused("You are already in the world.");
        };
        match Player::enter(self.router.clone(), self.session, events, account).await {
            Ok(mut player) => {
                let greeting = dialogue::welcome(create, player.name());
                let look = play::execute(&mut player, command::Command::Look).await;
                self.player = Some(Box::new(player));
                let _ = self.send_gmcp().await;
                self.dialogue
                    .entered(&format!("{greeting}\n\n{}", look.text))
            }
            Err((e, events)) => {
                self.events = Some(events);
                self.dialogue.refused(&crate::enter_refusal(&e))
            }
        }
    }
}

enum Input {
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    Event(Option<PlayerEvent>),
    Stop,
    /// Time to send GMCP that changed between commands.
    Tick,
}

/// What a telnet player connected straight to a stopping router reads.
const RESTART_TEXT: &str =
    "The server is restarting; your position is saved, please reconnect in a moment";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_not_logged_in_is_closed_at_its_login_deadline_however_busy() {
        let t0 = tokio::time::Instant::now();
        let idle = Duration::from_secs(1800);
        let d = Deadlines::new(t0, idle, Duration::from_secs(120));
        let busy = t0 + Duration::from_secs(119);
        assert_eq!(d.next(busy, false), t0 + Duration::from_secs(120));
        assert_eq!(d.next(busy, true), busy + idle);
        let at = t0 + Duration::from_secs(120);
        assert_eq!(d.reason(at, false), crate::LOGIN_TIMEOUT_TEXT);
        assert_eq!(d.reason(at, true), "You have been idle too long");
    }
}
