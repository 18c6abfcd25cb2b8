//! The network side of the viewer: a tokio runtime on its own thread owns
//! the `tessera_client::Client`; the render loop talks to it through
//! channels and reads the shared `WorldState`. Inputs go straight out as
//! datagrams from the render thread (they carry the sequence numbers the
//! predictor needs).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tessera_client::{Client, ClientError, ClientEvent, LoggedIn, WorldState};
use tessera_proto::msg::{ClientDatagram, ErrorCode, Input, Secret};
use tokio::sync::mpsc;

/// How to reach the server and who to be. `Debug` shows the password as
/// `<redacted>`.
#[derive(Clone, Debug)]
pub struct Login {
    pub addr: String,
    pub cert: PathBuf,
    pub name: String,
    pub password: Secret,
    pub create: bool,
    pub connect_timeout: Duration,
}

/// Why a session could not start; each says what to do about it.
#[derive(Debug)]
pub enum StartError {
    BadAddress(String),
    NoCertificate(String),
    ServerDown(String),
    CertificateMismatch(String),
    LoginFailed(String),
    Other(String),
}

impl StartError {
    /// The process exit code for scripts (`--headless-check`).
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::BadAddress(_) | StartError::NoCertificate(_) => 2,
            StartError::ServerDown(_) => 3,
            StartError::CertificateMismatch(_) => 4,
            StartError::LoginFailed(_) => 5,
            StartError::Other(_) => 1,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::BadAddress(m)
            | StartError::NoCertificate(m)
            | StartError::ServerDown(m)
            | StartError::CertificateMismatch(m)
            | StartError::LoginFailed(m)
            | StartError::Other(m) => f.write_str(m),
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, StartError> {
    let with_port = if addr.contains(':') && !addr.ends_with(']') {
        addr.to_string()
    } else {
        format!("{addr}:4433")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| {
            StartError::BadAddress(format!("cannot resolve the server address {addr}: {e}"))
        })?
        .next()
        .ok_or_else(|| {
            StartError::BadAddress(format!("the server address {addr} resolves to nothing"))
        })
        .map(|mut a| {
            // `tessera up` prints the address it listens on, often 0.0.0.0.
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            a
        })
}

fn read_cert(path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|e| {
        StartError::NoCertificate(format!(
            "cannot read the server certificate {}: {e}. `tessera up` prints the file to pin \
             (\"certificate to pin: ./data/quic-cert.der\"); pass it with --cert",
            path.display()
        ))
    })
}

/// Connects and logs in; `Ok` holds the client, logged in.
pub async fn start(login: &Login) -> Result<(Client, LoggedIn, quinn::Endpoint), StartError> {
    let addr = resolve(&login.addr)?;
    let cert = read_cert(&login.cert)?;
    let endpoint = tessera_client::endpoint(cert.into())
        .map_err(|e| StartError::Other(format!("cannot open a QUIC endpoint: {e}")))?;
    let down = |why: String| {
        StartError::ServerDown(format!(
            "cannot reach the server at {addr} ({why}). Is `tessera up` running, and is this \
             the QUIC address it printed (\"quic listening on ...\")?"
        ))
    };
    let mut client =
        match tokio::time::timeout(login.connect_timeout, Client::connect(&endpoint, addr)).await {
            Err(_) | Ok(Err(ClientError::Timeout)) => {
                return Err(down(format!(
                    "no answer within {} s",
                    login.connect_timeout.as_secs_f32()
                )))
            }
            Ok(Err(ClientError::CertificateMismatch)) => {
                return Err(StartError::CertificateMismatch(format!(
                    "the server at {addr} is not the one pinned in {}: its certificate does not \
                     match. If the server's data directory was re-created, copy its new \
                     quic-cert.der; otherwise you may be talking to the wrong server",
                    login.cert.display()
                )))
            }
            Ok(Err(ClientError::Refused { message, .. })) => {
                return Err(StartError::Other(format!(
                    "the server refused the connection: {message}"
                )))
            }
            Ok(Err(ClientError::Lost(why))) => {
                return Err(StartError::Other(format!(
                    "the server at {addr} closed the connection right after the handshake \
                     ({why}); it may speak another protocol version than this client ({})",
                    tessera_proto::PROTOCOL_VERSION
                )))
            }
            Ok(Err(e)) => return Err(down(e.to_string())),
            Ok(Ok(c)) => c,
        };
    let result = if login.create {
        client.create(&login.name, login.password.expose()).await
    } else {
        client.login(&login.name, login.password.expose()).await
    };
    match result {
        Ok(me) => Ok((client, me, endpoint)),
        Err(ClientError::Refused { code, message }) => {
            let hint = match code {
                ErrorCode::BadCredentials => " (use --create to make a new character)",
                ErrorCode::NameTaken => " (log in without --create if it is yours)",
                _ => "",
            };
            Err(StartError::LoginFailed(format!(
                "login as {} failed: {message}{hint}",
                login.name
            )))
        }
        Err(ClientError::Timeout) => Err(StartError::LoginFailed(format!(
            "login as {} failed: the server did not answer in time",
            login.name
        ))),
        Err(e) => Err(StartError::Other(format!(
            "login as {} failed: {e}",
            login.name
        ))),
    }
}

/// What the render loop asks of the network thread.
#[derive(Debug)]
pub enum NetCmd {
    Say(String),
    Command(String),
    Quit,
}

/// What the network thread tells the render loop.
#[derive(Debug)]
pub enum NetEvent {
    LoggedIn(Box<LoggedIn>),
    /// Why, and the exit code for scripts.
    StartFailed(String, i32),
    Event(ClientEvent),
    /// The answer to a command.
    Answer(String),
    /// The router restarted and the session resumed on a new connection
    /// (`Client::reconnect`): draw from this session from now on.
    Resumed(Box<LoggedIn>, Box<Session>),
    Closed(String),
}

/// A running session, seen from the render thread.
pub struct Session {
    pub world: Arc<parking_lot::Mutex<WorldState>>,
    pub conn: quinn::Connection,
    seq: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.conn.remote_address())
            .finish()
    }
}

/// How long the viewer tries to resume a session whose router restarted.
const RESUME_WITHIN: Duration = Duration::from_secs(60);

impl Session {
    /// Sends one movement input; returns it (with its sequence number).
    pub fn send_input(&mut self, move_x: f32, move_z: f32, yaw: f32) -> Input {
        self.seq = self.seq.wrapping_add(1).max(1);
        let input = Input {
            seq: self.seq,
            move_x,
            move_z,
            yaw,
            jump: false,
        };
        if let Ok(bytes) = tessera_proto::frame::encode(&ClientDatagram::Input(input)) {
            // A full send buffer or a closed connection: the next input
            // (sent every tick) replaces this one anyway.
            let _ = self.conn.send_datagram(bytes.into());
        }
        input
    }
}

/// Starts the network thread: connects, logs in, then relays events.
/// The session arrives on the returned channel once logged in.
pub fn spawn(
    login: Login,
) -> (
    mpsc::UnboundedSender<NetCmd>,
    std_mpsc::Receiver<NetEvent>,
    std_mpsc::Receiver<Session>,
) {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<NetCmd>();
    let (ev_tx, ev_rx) = std_mpsc::channel();
    let (session_tx, session_rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ev_tx.send(NetEvent::StartFailed(format!("cannot start tokio: {e}"), 1));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut client, me, endpoint) = match start(&login).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ev_tx.send(NetEvent::StartFailed(e.to_string(), e.exit_code()));
                        return;
                    }
                };
                let _ = session_tx.send(Session {
                    world: client.world.clone(),
                    conn: client.connection().clone(),
                    seq: 0,
                });
                // The session's token, for resuming after a router restart.
                let token = me.token.clone();
                let _ = ev_tx.send(NetEvent::LoggedIn(Box::new(me)));
                loop {
                    tokio::select! {
                        cmd = cmd_rx.recv() => match cmd {
                            Some(NetCmd::Say(text)) => {
                                if let Err(e) = client.say(&text).await {
                                    let _ = ev_tx.send(NetEvent::Closed(e.to_string()));
                                    return;
                                }
                            }
                            Some(NetCmd::Command(line)) => match client.command(&line).await {
                                Ok(answer) => { let _ = ev_tx.send(NetEvent::Answer(answer)); }
                                Err(ClientError::Timeout) => {
                                    let _ = ev_tx.send(NetEvent::Answer(format!("{line}: no answer from the server")));
                                }
                                Err(e) => {
                                    let _ = ev_tx.send(NetEvent::Closed(e.to_string()));
                                    return;
                                }
                            },
                            Some(NetCmd::Quit) | None => {
                                client.logout().await;
                                return;
                            }
                        },
                        ev = client.next_event_timed(Duration::from_secs(1)) => match ev {
                            Some((_, ClientEvent::Closed(why))) => {
                                if client.router_restarted() {
                                    // A restart or rolling update of routers:
                                    // log in again with the session's token.
                                    let _ = ev_tx.send(NetEvent::Answer(
                                        "The server is restarting; reconnecting...".into(),
                                    ));
                                    let addr = client.connection().remote_address();
                                    match Client::reconnect(&endpoint, addr, &token, RESUME_WITHIN).await {
                                        Ok((resumed, me2)) => {
                                            let session = Session {
                                                world: resumed.world.clone(),
                                                conn: resumed.connection().clone(),
                                                seq: 0,
                                            };
                                            client = resumed;
                                            let _ = ev_tx.send(NetEvent::Resumed(Box::new(me2), Box::new(session)));
                                            continue;
                                        }
                                        Err(e) => {
                                            let _ = ev_tx.send(NetEvent::Closed(format!("{why}; could not reconnect: {e}")));
                                            return;
                                        }
                                    }
                                }
                                let _ = ev_tx.send(NetEvent::Closed(why));
                                return;
                            }
                            Some((_, ev)) => {
                                let _ = ev_tx.send(NetEvent::Event(ev));
                            }
                            None => {
                                if let Some(why) = client.connection().close_reason() {
                                    let _ = ev_tx.send(NetEvent::Closed(why.to_string()));
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        })
        .expect("spawn the network thread");
    (cmd_tx, ev_rx, session_rx)
}
