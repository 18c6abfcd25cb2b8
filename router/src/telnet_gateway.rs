//! The telnet gateway: accepts TCP connections and runs each through the
//! telnet codec, the command parser and the shared session model. This file
//! only moves bytes and sequences prompts; the protocol and the parsing are
//! pure state machines in `telnet.rs` and `command.rs`.

use crate::command::{self, PreLogin, PRELOGIN_HELP};
use crate::play;
use crate::session::{self, Player};
use crate::telnet::{encode_text, TelnetCodec, TelnetEvent};
use crate::{Router, RouterError};
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_auth::AuthError;
use tessera_proto::cluster::PlayerEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

const PROMPT: &str = "> ";

/// Accepts connections until the task is aborted.
pub async fn serve(router: Arc<Router>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let r = router.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = Connection::run(r, stream, peer).await {
                        tracing::debug!(peer = %peer, error = %e, "telnet connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "telnet accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

enum Stage {
    Login,
    /// Waiting for a password typed with echo off.
    Password {
        create: bool,
        name: String,
    },
    Playing(Box<Player>),
    Closing,
}

struct Connection {
    router: Arc<Router>,
    peer: SocketAddr,
    codec: TelnetCodec,
    out: OwnedWriteHalf,
    session: tessera_proto::SessionId,
    /// Text is wrapped to this many columns (NAWS, else 80).
    width: usize,
    /// The session's event receiver while not playing (the player owns it
    /// once in the world).
    events: Option<tokio::sync::mpsc::Receiver<PlayerEvent>>,
}

impl Connection {
    async fn run(router: Arc<Router>, stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let (mut input, out) = stream.into_split();
        let Some((session, events)) = router.open_session() else {
            let mut out = out;
            out.write_all(b"The server is full; please try again later.\r\n")
                .await?;
            return Ok(());
        };
        let mut conn = Connection {
            codec: TelnetCodec::new(router.config.max_line),
            router: router.clone(),
            peer,
            out,
            session,
            events: Some(events),
            width: 80,
        };
        tracing::info!(peer = %peer, session = %session, "telnet connection");
        let result = conn.serve(&mut input).await;
        router.close_session(session);
        result
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes).await
    }

    /// Writes text followed by the prompt.
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let mut s = String::new();
        if !text.is_empty() {
            s.push_str(&crate::text::wrap(text, self.width - 1));
            s.push('\n');
        }
        s.push_str(PROMPT);
        let mut bytes = encode_text(&s);
        bytes.extend_from_slice(self.codec.prompt_end());
        self.write(&bytes).await
    }

    /// Prints something that happened while the player was at the prompt.
    async fn notify(&mut self, text: &str) -> std::io::Result<()> {
        let text = crate::text::wrap(text, self.width - 1);
        let mut bytes = encode_text(&format!("\n{text}\n{PROMPT}"));
        bytes.extend_from_slice(self.codec.prompt_end());
        self.write(&bytes).await
    }

    async fn serve(&mut self, input: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<()> {
        let greeting = self.codec.greeting();
        self.write(&greeting).await?;
        let banner = format!(
            "Welcome to Tessera, world '{}'.\n\n{}",
            self.router.world.name,
            PRELOGIN_HELP.trim_end()
        );
        self.reply(&banner).await?;
        let mut stage = Stage::Login;
        let mut buf = vec![0u8; 4096];
        let idle = self.router.config.idle_timeout;
        // Only the player's own input counts as activity, not chatter they
        // receive.
        let mut last_input = tokio::time::Instant::now();
        loop {
            let deadline = last_input + idle;
            let event = match &mut stage {
                Stage::Playing(player) => {
                    tokio::select! {
                        n = tokio::time::timeout_at(deadline, input.read(&mut buf)) => Input::Read(n),
                        ev = player.next_event() => Input::Event(ev),
                    }
                }
                _ => Input::Read(tokio::time::timeout_at(deadline, input.read(&mut buf)).await),
            };
            if let Input::Event(Some(ev)) = &event {
                if let Some((_, text)) = crate::farewell(ev) {
                    let _ = self
                        .write(&encode_text(&format!("\n{text}. Goodbye.\n")))
                        .await;
                    break;
                }
            }
            match event {
                Input::Read(Err(_)) => {
                    let _ = self
                        .write(&encode_text("\nYou have been idle too long. Goodbye.\n"))
                        .await;
                    break;
                }
                Input::Read(Ok(Err(e))) => {
                    self.finish(stage).await;
                    return Err(e);
                }
                Input::Read(Ok(Ok(0))) => break,
                Input::Read(Ok(Ok(n))) => {
                    last_input = tokio::time::Instant::now();
                    let feed = self.codec.feed(&buf[..n]);
                    if !feed.reply.is_empty() {
                        self.write(&feed.reply).await?;
                    }
                    for ev in feed.events {
                        stage = self.on_event(stage, ev).await?;
                        if matches!(stage, Stage::Closing) {
                            let _ = self.out.shutdown().await;
                            return Ok(());
                        }
                    }
                }
                Input::Event(Some(PlayerEvent::Chat {
                    kind,
                    from,
                    to,
                    text,
                    ..
                })) => {
                    let viewer = match &stage {
                        Stage::Playing(p) => p.name().to_string(),
                        _ => String::new(),
                    };
                    let line = tessera_proto::msg::render_chat(
                        &kind,
                        &from,
                        to.as_deref(),
                        &text,
                        &viewer,
                    );
                    self.notify(&line).await?
                }
                Input::Event(Some(ev)) => self.on_player_event(ev).await?,
                Input::Event(None) => break,
            }
        }
        self.finish(stage).await;
        Ok(())
    }

    async fn finish(&mut self, stage: Stage) {
        if let Stage::Playing(player) = stage {
            player.leave().await;
        }
    }

    async fn on_player_event(&mut self, ev: PlayerEvent) -> std::io::Result<()> {
        match ev {
            PlayerEvent::Heard {
                name, text, emote, ..
            } => {
                if emote {
                    self.notify(&format!("{name} {text}")).await
                } else {
                    self.notify(&format!("{name} says, \"{text}\"")).await
                }
            }
            PlayerEvent::Error { message } => self.notify(&format!("[{message}]")).await,
            _ => Ok(()),
        }
    }

    async fn on_event(&mut self, stage: Stage, ev: TelnetEvent) -> std::io::Result<Stage> {
        match ev {
            TelnetEvent::Line(line) => self.on_line(stage, line).await,
            TelnetEvent::LineTooLong { len } => {
                let limit = self.router.config.max_line;
                if let Stage::Password { .. } = stage {
                    let on = self.codec.echo_on();
                    self.write(&on).await?;
                    self.reply(&format!("\nThat line was too long ({len} bytes; the limit is {limit}) and was ignored.")).await?;
                    return Ok(Stage::Login);
                }
                self.reply(&format!(
                    "That line was too long ({len} bytes; the limit is {limit}) and was ignored."
                ))
                .await?;
                Ok(stage)
            }
            TelnetEvent::AreYouThere => {
                self.write(&encode_text("\n[Yes, Tessera is here.]\n"))
                    .await?;
                Ok(stage)
            }
            TelnetEvent::WindowSize { width, .. } => {
                // 0 means unknown; keep sane bounds for tiny or huge windows.
                if width > 0 {
                    self.width = usize::from(width).clamp(40, 250);
                }
                Ok(stage)
            }
            TelnetEvent::TerminalType(_) | TelnetEvent::Interrupt => Ok(stage),
        }
    }

    async fn on_line(&mut self, stage: Stage, line: String) -> std::io::Result<Stage> {
        match stage {
            Stage::Login => match command::parse_prelogin(&line) {
                Ok(PreLogin::Empty) => {
                    self.reply("").await?;
                    Ok(Stage::Login)
                }
                Ok(PreLogin::Help) => {
                    self.reply(PRELOGIN_HELP.trim_end()).await?;
                    Ok(Stage::Login)
                }
                Ok(PreLogin::Quit) => {
                    self.write(&encode_text("Goodbye.\n")).await?;
                    Ok(Stage::Closing)
                }
                Ok(PreLogin::Create { name, password }) => {
                    self.credentials(true, name, password).await
                }
                Ok(PreLogin::Connect { name, password }) => {
                    self.credentials(false, name, password).await
                }
                Err(e) => {
                    self.reply(&e.to_string()).await?;
                    Ok(Stage::Login)
                }
            },
            Stage::Password { create, name } => {
                let on = self.codec.echo_on();
                self.write(&on).await?;
                self.write(b"\r\n").await?;
                if line.is_empty() {
                    self.reply("No password given.").await?;
                    return Ok(Stage::Login);
                }
                self.log_in(create, name, line).await
            }
            Stage::Playing(mut player) => {
                let cmd = match command::parse_command(&line) {
                    Ok(cmd) => cmd,
                    Err(e) => {
                        self.reply(&e.to_string()).await?;
                        return Ok(Stage::Playing(player));
                    }
                };
                let outcome = play::execute(&mut player, cmd).await;
                if outcome.quit {
                    player.leave().await;
                    self.write(&encode_text(&format!("{}\n", outcome.text)))
                        .await?;
                    return Ok(Stage::Closing);
                }
                self.reply(&outcome.text).await?;
                Ok(Stage::Playing(player))
            }
            Stage::Closing => Ok(Stage::Closing),
        }
    }

    async fn credentials(
        &mut self,
        create: bool,
        name: String,
        password: Option<String>,
    ) -> std::io::Result<Stage> {
        if let Err(e) = tessera_auth::validate_name(&name) {
            self.reply(&e.to_string()).await?;
            return Ok(Stage::Login);
        }
        match password {
            Some(p) => self.log_in(create, name, p).await,
            None => {
                let off = self.codec.echo_off();
                self.write(&off).await?;
                let ask = if create {
                    format!("Choose a password for {name}: ")
                } else {
                    "Password: ".to_string()
                };
                let mut bytes = encode_text(&ask);
                bytes.extend_from_slice(self.codec.prompt_end());
                self.write(&bytes).await?;
                Ok(Stage::Password { create, name })
            }
        }
    }

    async fn log_in(
        &mut self,
        create: bool,
        name: String,
        password: String,
    ) -> std::io::Result<Stage> {
        let account =
            match session::login(&self.router, create, &name, &password, self.peer.ip()).await {
                Ok(a) => a,
                Err(e) => {
                    let msg = match e {
                        AuthError::Storage(_) | AuthError::Key(_) | AuthError::Unavailable(_) => {
                            tracing::error!(error = %e, "login failed");
                            "Login is not available right now; please try again later.".to_string()
                        }
                        other => other.to_string(),
                    };
                    self.reply(&msg).await?;
                    return Ok(Stage::Login);
                }
            };
        let Some(events) = self.events.take() else {
            self.reply("You are already in the world.").await?;
            return Ok(Stage::Login);
        };
        match Player::enter(self.router.clone(), self.session, events, account).await {
            Ok(mut player) => {
                let greeting = if create {
                    format!(
                        "Welcome to Tessera, {}! Type 'help' to see what you can do.",
                        player.name()
                    )
                } else {
                    format!("Welcome back, {}.", player.name())
                };
                let look = play::execute(&mut player, command::Command::Look).await;
                self.reply(&format!("{greeting}\n\n{}", look.text)).await?;
                Ok(Stage::Playing(Box::new(player)))
            }
            Err((e, events)) => {
                self.events = Some(events);
                let msg = match e {
                    RouterError::AlreadyPlaying => "That character is already playing.".to_string(),
                    other => format!("You cannot enter the world right now: {other}."),
                };
                self.reply(&msg).await?;
                Ok(Stage::Login)
            }
        }
    }
}

enum Input {
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    Event(Option<PlayerEvent>),
}
