//! One telnet player through the gateway: bytes between the TCP
//! connection and the pure dialogue, and the relayed session on a router,
//! resumed on another router when that one stops or is lost.

use crate::routers::Placement;
use crate::{Gateway, Phase, DRAIN_WARNING};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_client::{Client, ClientError, ClientEvent};
use tessera_proto::msg::{render_chat, ErrorCode};
use tessera_router::command::{self, Command};
use tessera_router::dialogue::{self, Action, Dialogue};
use tessera_router::telnet_gateway::{Deadlines, Reader, Writer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// What a player reads when no router can be reached.
const UNREACHABLE: &str = "The world is not reachable right now; please try again later.";

/// How long one attempt to reach a router (connect, relay) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Between two attempts to resume a player.
const RESUME_RETRY: Duration = Duration::from_millis(250);

/// Says `text` and closes: a connection the gateway cannot take.
pub(crate) async fn refuse(mut out: Writer, text: &str) {
    let _ = out.write_all(format!("{text}\r\n").as_bytes()).await;
    let _ = out.shutdown().await;
}

/// A relayed text session on one router.
struct Link {
    client: Client,
    place: Placement,
}

impl Link {
    fn is_closed(&self) -> bool {
        self.client.connection().close_reason().is_some()
    }

    /// The next event from the router; `None` once the connection is gone.
    async fn next_event(&mut self) -> Option<ClientEvent> {
        loop {
            match self.client.next_event(Duration::from_secs(3600)).await {
                Some(ev) => return Some(ev),
                None if self.is_closed() => return None,
                None => {}
            }
        }
    }
}

struct Conn {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    dialogue: Dialogue,
    out: Writer,
    link: Option<Link>,
    /// The session's token while the player is in the world.
    token: Option<String>,
    name: String,
    in_world: bool,
    /// Commands sent to the router and not answered yet, oldest first.
    unanswered: VecDeque<String>,
    /// The player typed `quit`; its answer is their last line.
    quitting: bool,
    /// The drain warning was given.
    warned: bool,
    /// MCCP2, once the client agreed.
    compressor: tessera_router::telnet::Compressor,
    /// The GMCP modules the router was last told of on this link (the
    /// router sends their packages; `ClientMsg::GmcpModules`).
    gmcp_told: Vec<String>,
}

enum Input {
    Read(std::io::Result<usize>),
    Idle,
    Event(Option<ClientEvent>),
    Phase,
}

/// Serves one telnet connection until it closes.
pub(crate) async fn serve(
    gw: Arc<Gateway>,
    mut input: Reader,
    out: Writer,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let mut c = Conn {
        dialogue: Dialogue::new(gw.config.max_line),
        gw,
        peer,
        out,
        link: None,
        token: None,
        name: String::new(),
        in_world: false,
        unanswered: VecDeque::new(),
        quitting: false,
        warned: false,
        compressor: tessera_router::telnet::Compressor::default(),
        gmcp_told: Vec::new(),
    };
    // A router first: its welcome names the world, and nobody should type
    // a password into a gateway that cannot reach any router.
    match c.open_link(None).await {
        Ok(link) => c.link = Some(link),
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "no router for a new telnet connection");
            c.write(format!("{UNREACHABLE}\r\n").as_bytes()).await?;
            let _ = c.out.shutdown().await;
            return Ok(());
        }
    }
    tracing::info!(peer = %peer, "telnet connection");
    let world = c.gw.world_name.lock().clone();
    let start = c.dialogue.start(&world);
    c.write(&start).await?;
    let result = c.run(&mut input).await;
    c.finish();
    result
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let bytes = self.compressor.encode(bytes);
        self.out.write_all(&bytes).await?;
        // TLS keeps records until flushed; plain TCP flushes at once.
        self.out.flush().await
    }

    /// Connects to a router (not `avoid` if another is there) and opens a
    /// relayed text session for this player.
    async fn open_link(&self, avoid: Option<&str>) -> Result<Link, ClientError> {
        let place = self
            .gw
            .routers
            .place(avoid)
            .ok_or_else(|| ClientError::Connect("no router is available".into()))?;
        let attempt = async {
            let mut client = Client::connect(&self.gw.endpoint, place.router.addr).await?;
            client.relay(self.peer).await?;
            Ok::<_, ClientError>(client)
        };
        let client = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(ClientError::Timeout))?;
        if !client.world_name.is_empty() {
            *self.gw.world_name.lock() = client.world_name.clone();
        }
        tracing::debug!(peer = %self.peer, router = %place.router.id, "relayed session opened");
        Ok(Link { client, place })
    }

    async fn run(&mut self, input: &mut Reader) -> std::io::Result<()> {
        let mut buf = vec![0u8; 4096];
        let mut last_input = Instant::now();
        let deadlines = Deadlines::new(
            last_input,
            self.gw.config.idle_timeout,
            self.gw.config.login_timeout,
        );
        let mut phase = self.gw.phase.subscribe();
        loop {
            let deadline = deadlines.next(last_input, self.dialogue.is_playing());
            // While draining, wake for the warning and for the end.
            let drain_wake = match *phase.borrow_and_update() {
                Phase::Draining { until } if !self.warned => {
                    Some(until.checked_sub(DRAIN_WARNING).unwrap_or(until))
                }
                Phase::Draining { until } => Some(until),
                Phase::Serving => None,
            };
            if let Some(at) = drain_wake {
                if Instant::now() >= at {
                    if !self.drain_tick().await? {
                        return Ok(());
                    }
                    continue;
                }
            }
            let playing = self.dialogue.is_playing();
            let event = {
                let link = self.link.as_mut();
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, input.read(&mut buf)) => match r {
                        Ok(n) => Input::Read(n),
                        Err(_) => Input::Idle,
                    },
                    ev = async {
                        match link {
                            Some(l) => l.next_event().await,
                            None => std::future::pending().await,
                        }
                    }, if playing => Input::Event(ev),
                    _ = phase.changed() => Input::Phase,
                    _ = async {
                        match drain_wake {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => Input::Phase,
                }
            };
            let go_on = match event {
                Input::Read(Err(e)) => return Err(e),
                Input::Read(Ok(0)) => return Ok(()),
                Input::Read(Ok(n)) => {
                    last_input = Instant::now();
                    let actions = self.dialogue.feed(&buf[..n]);
                    self.tell_gmcp_modules().await;
                    self.act(actions).await?
                }
                Input::Idle => {
                    let why = deadlines.reason(Instant::now(), self.dialogue.is_playing());
                    let bye = self.dialogue.goodbye(why);
                    self.write(&bye).await?;
                    false
                }
                Input::Event(Some(ClientEvent::Closed(_))) | Input::Event(None) => {
                    self.recover().await?
                }
                Input::Event(Some(ev)) => self.on_event(ev).await?,
                Input::Phase => true,
            };
            if !go_on {
                let _ = self.out.shutdown().await;
                return Ok(());
            }
        }
    }

    /// The drain reached its warning time or its end: warns, or says
    /// goodbye. False at the end.
    async fn drain_tick(&mut self) -> std::io::Result<bool> {
        if !self.warned {
            self.warned = true;
            let text = self.dialogue.notify(
                "[This gateway closes for maintenance in a minute. Your position is saved; connect again to go on where you are.]",
            );
            self.write(&text).await?;
            return Ok(true);
        }
        let bye = self
            .dialogue
            .goodbye("The gateway is shutting down for maintenance; your position is saved");
        self.write(&bye).await?;
        let _ = self.out.shutdown().await;
        Ok(false)
    }

    /// Carries out what the dialogue asks; false once the connection is to
    /// close.
    async fn act(&mut self, actions: Vec<Action>) -> std::io::Result<bool> {
        let mut queue: VecDeque<Action> = actions.into();
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
                    let bytes = self.dialogue.mssp(&self.gw.mssp_info(), text);
                    self.write(&bytes).await?;
                }
                Action::LogIn {
                    create,
                    name,
                    password,
                } => {
                    let more = self.log_in(create, &name, &password).await?;
                    for a in more.into_iter().rev() {
                        queue.push_front(a);
                    }
                }
                Action::Command(line) => {
                    if matches!(command::parse_command(&line), Ok(Command::Quit)) {
                        self.quitting = true;
                    }
                    self.send_command(line).await;
                }
            }
        }
        Ok(true)
    }

    /// Tells the router the GMCP modules the client enabled, when they
    /// changed since it was last told (a lost message is told again with the
    /// next change or the next router).
    async fn tell_gmcp_modules(&mut self) {
        let modules = self.dialogue.gmcp_modules();
        if modules == self.gmcp_told {
            return;
        }
        if let Some(link) = self.link.as_mut() {
            if link.client.send_gmcp_modules(modules.clone()).await.is_ok() {
                self.gmcp_told = modules;
            }
        }
    }

    /// Sends a command to the router. A command the broken link did not
    /// take waits with the unanswered ones for the next router.
    async fn send_command(&mut self, line: String) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.client.send_command(&line).await {
                tracing::debug!(peer = %self.peer, error = %e, "command not sent; the router link is down");
            }
        }
        self.unanswered.push_back(line);
    }

    /// Logs in (on a fresh router if the one the connection had is gone);
    /// what the dialogue says next.
    async fn log_in(
        &mut self,
        create: bool,
        name: &str,
        password: &str,
    ) -> std::io::Result<Vec<Action>> {
        for attempt in 0..2 {
            if self.link.as_ref().is_none_or(Link::is_closed) {
                self.link = None;
                match self.open_link(None).await {
                    Ok(link) => self.link = Some(link),
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, error = %e, "no router for a login");
                        return Ok(self.dialogue.refused(UNREACHABLE));
                    }
                }
            }
            let Some(link) = self.link.as_mut() else {
                continue;
            };
            let result = if create {
                link.client.create(name, password).await
            } else {
                link.client.login(name, password).await
            };
            match result {
                Ok(me) => {
                    self.token = Some(me.token);
                    self.name = me.name;
                    self.in_world = true;
                    self.gw.count_player(true);
                    tracing::info!(peer = %self.peer, player = %self.name, router = %link.place.router.id, "player entered through the gateway");
                    let look = link.client.command("look").await.unwrap_or_default();
                    let greeting = dialogue::welcome(create, &self.name);
                    return Ok(self.dialogue.entered(&format!("{greeting}\n\n{look}")));
                }
                Err(ClientError::Refused { message, .. }) => {
                    return Ok(self.dialogue.refused(&message));
                }
                Err(e) if attempt == 0 => {
                    // The router went away under the login: try another.
                    tracing::info!(peer = %self.peer, error = %e, "login interrupted; trying another router");
                    self.link = None;
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, error = %e, "login failed");
                }
            }
        }
        Ok(self
            .dialogue
            .refused("Login is not available right now; please try again later."))
    }

    /// Shows what the router sent; false once the connection is to close.
    async fn on_event(&mut self, ev: ClientEvent) -> std::io::Result<bool> {
        let line = match ev {
            ClientEvent::Text(text) => {
                let asked = self.unanswered.pop_front();
                let quit =
                    asked.is_some_and(|l| matches!(command::parse_command(&l), Ok(Command::Quit)));
                if quit {
                    // The router logged the player out and closes.
                    self.token = None;
                    let bytes = self.dialogue.last_words(&text);
                    self.write(&bytes).await?;
                    return Ok(false);
                }
                let bytes = self.dialogue.answer(&text);
                self.write(&bytes).await?;
                return Ok(true);
            }
            ClientEvent::Notice(text) => text,
            ClientEvent::Gmcp { package, data } => {
                if let Some(bytes) = self.dialogue.gmcp(&package, &data) {
                    self.write(&bytes).await?;
                }
                return Ok(true);
            }
            ClientEvent::Chat {
                from,
                entity,
                text,
                emote,
            } => tessera_router::style::heard(
                &from,
                &text,
                emote,
                entity.is_some_and(tessera_router::style::is_npc),
            ),
            ClientEvent::ChatLine {
                kind,
                from,
                to,
                text,
            } => render_chat(&kind, &from, to.as_deref(), &text, &self.name),
            ClientEvent::Error { code, message } => match code {
                ErrorCode::Kicked | ErrorCode::AlreadyLoggedIn | ErrorCode::Lagged => {
                    // The session ended, moved to another connection, or
                    // (lagged) ends when this connection does.
                    if code != ErrorCode::Lagged {
                        self.token = None;
                    }
                    let bytes = self.dialogue.goodbye(&message);
                    self.write(&bytes).await?;
                    return Ok(false);
                }
                _ => format!("[{message}]"),
            },
            ClientEvent::Closed(_) => return self.recover().await,
            ClientEvent::Appeared(_)
            | ClientEvent::Gone(_)
            | ClientEvent::CellChanged { .. }
            | ClientEvent::Pong(_) => return Ok(true),
        };
        let bytes = self.dialogue.notify(&line);
        self.write(&bytes).await?;
        Ok(true)
    }

    /// The router link broke: resumes the player on another router.
    /// Commands a stopping router left unanswered never ran and are sent
    /// again; after a loss they may have run, and the player is told.
    /// False when the player cannot go on.
    async fn recover(&mut self) -> std::io::Result<bool> {
        let Some(link) = self.link.take() else {
            return Ok(true);
        };
        // The client library reports the end only once the close frame
        // (which may trail the end of the control stream) is in.
        let restarted = link.client.router_restarted();
        let lost = link.place.router.id.clone();
        drop(link);
        if self.quitting {
            return Ok(false);
        }
        let Some(token) = self.token.clone() else {
            // Not in the world: the next login opens a new link.
            return Ok(true);
        };
        tracing::info!(peer = %self.peer, player = %self.name, router = %lost, restarted, "router link lost; resuming");
        let started = Instant::now();
        let deadline = started + self.gw.config.resume_within;
        loop {
            match self.open_link(Some(&lost)).await {
                Ok(mut link) => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, link.client.resume(&token)).await {
                        Ok(Ok(_)) => {
                            let took = started.elapsed();
                            metrics::counter!("tessera_gateway_resumes_total").increment(1);
                            metrics::histogram!("tessera_gateway_resume_seconds")
                                .record(took.as_secs_f64());
                            tracing::info!(peer = %self.peer, player = %self.name, from = %lost, to = %link.place.router.id, ms = took.as_millis() as u64, "player resumed on another router");
                            self.link = Some(link);
                            // The new router has not been told.
                            self.gmcp_told.clear();
                            self.tell_gmcp_modules().await;
                            break;
                        }
                        Ok(Err(ClientError::Refused {
                            code: ErrorCode::BadCredentials,
                            message,
                        })) => {
                            self.token = None;
                            let bytes = self.dialogue.goodbye(&format!(
                                "Your session has ended ({message}); please log in again"
                            ));
                            self.write(&bytes).await?;
                            return Ok(false);
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %self.peer, error = %e, "resume refused; retrying")
                        }
                        Err(_) => tracing::debug!(peer = %self.peer, "resume timed out; retrying"),
                    }
                }
                Err(e) => tracing::debug!(peer = %self.peer, error = %e, "no router yet; retrying"),
            }
            if Instant::now() >= deadline {
                metrics::counter!("tessera_gateway_resume_failures_total").increment(1);
                tracing::warn!(peer = %self.peer, player = %self.name, "no router took the player back in time");
                let bytes = self
                    .dialogue
                    .goodbye("The world cannot be reached right now; your position is saved");
                self.write(&bytes).await?;
                return Ok(false);
            }
            tokio::time::sleep(RESUME_RETRY).await;
        }
        let pending = std::mem::take(&mut self.unanswered);
        if restarted {
            for line in pending {
                self.send_command(line).await;
            }
        } else if !pending.is_empty() {
            let bytes = self.dialogue.notify(
                "[The connection to the world was lost for a moment; your last command may not have been carried out.]",
            );
            self.write(&bytes).await?;
        }
        Ok(true)
    }

    /// The connection is over: a player still in the world logs out (as a
    /// telnet player leaving a router does), in the background.
    fn finish(&mut self) {
        if self.in_world {
            self.gw.count_player(false);
        }
        let (Some(_), Some(link)) = (self.token.take(), self.link.take()) else {
            return;
        };
        let Link { client, place } = link;
        let player = self.name.clone();
        tokio::spawn(async move {
            client.logout().await;
            tracing::info!(player = %player, "player left through the gateway");
            drop(place);
        });
    }
}
