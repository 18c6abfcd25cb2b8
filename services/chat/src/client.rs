//! The router's side of chat: one connection to the service, kept up in the background.
//!
//! The client remembers which players it registered and which channels they joined through
//! it, and after every (re)connect sends `Hello` and then `Online` for each of them before
//! serving requests, so a restarted service learns again who is online without any player
//! doing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::frame::FrameBuffer;
use tokio::sync::{mpsc, watch};

use crate::rules;
use crate::wire::{Delivery, Reply, Request, MAX_DELIVERY, MAX_REPLY};
use crate::{ChatError, REQUEST_TIMEOUT};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a request waits for a connection in progress before answering `Unavailable`.
const WAIT_FOR_LINK: Duration = Duration::from_millis(800);

#[derive(Clone, Debug)]
struct Remembered {
    name: String,
    operator: bool,
    channels: BTreeSet<String>,
}

#[derive(Default)]
struct Players {
    /// Bumped on every change, so re-registration knows whether it sent the latest.
    version: u64,
    players: BTreeMap<u64, Remembered>,
}

struct Inner {
    router: String,
    players: parking_lot::Mutex<Players>,
    /// The live connection, once `Hello` and the re-registration are done.
    link: watch::Sender<Option<quinn::Connection>>,
}

/// A router's connection to the chat service. Dropping it (or [`ChatClient::close`]) stops the
/// reconnecting and closes the connection.
pub struct ChatClient {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

impl ChatClient {
    /// Starts connecting to the service at `addr` (certificate name `server_name`) as router
    /// `router_id`, and keeps reconnecting (100 ms doubling to 2 s) until dropped. Never fails:
    /// while the service is down, requests answer [`ChatError::Unavailable`]. Deliveries for
    /// this router's players arrive on the returned receiver. Call inside a tokio runtime.
    pub fn start(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        router_id: String,
    ) -> (ChatClient, mpsc::UnboundedReceiver<Delivery>) {
        let (deliveries, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            router: router_id,
            players: parking_lot::Mutex::new(Players::default()),
            link: watch::Sender::new(None),
        });
        tokio::spawn(keep_connected(
            inner.clone(),
            addr,
            server_name.to_string(),
            config,
            deliveries,
            stop_rx,
        ));
        (ChatClient { inner, stop }, rx)
    }

    /// Whether a connection is up (requests may still fail if it just broke).
    pub fn is_connected(&self) -> bool {
        live(&self.inner.link.borrow()).is_some()
    }

    /// Registers a player who came online on this router, and remembers it for reconnects.
    pub async fn online(&self, player: u64, name: &str, operator: bool) -> Result<(), ChatError> {
        self.request(Request::Online {
            player,
            name: name.to_string(),
            operator,
            channels: Vec::new(),
        })
        .await
        .map(drop)
    }

    /// The player left this router.
    pub async fn offline(&self, player: u64) -> Result<(), ChatError> {
        self.request(Request::Offline { player }).await.map(drop)
    }

    /// Sends one request. A [`Reply::Failed`] answer comes back as `Err`. `Online`/`Offline`
    /// are remembered even when the service is down (and sent on reconnect); `Join`/`Leave`
    /// are remembered once the service accepted them.
    pub async fn request(&self, req: Request) -> Result<Reply, ChatError> {
        let req = match req {
            Request::Hello { .. } => {
                return Err(ChatError::Protocol("the client sends Hello itself".into()))
            }
            Request::Online {
                player,
                name,
                operator,
                channels,
            } => {
                let mut p = self.inner.players.lock();
                let entry = p.players.entry(player).or_insert(Remembered {
                    name: name.clone(),
                    operator,
                    channels: BTreeSet::new(),
                });
                entry.name = name.clone();
                entry.operator = operator;
                entry.channels.extend(
                    channels
                        .iter()
                        .filter_map(|c| rules::joinable_channel(c).ok()),
                );
                let channels = entry.channels.iter().cloned().collect();
                p.version += 1;
                Request::Online {
                    player,
                    name,
                    operator,
                    channels,
                }
            }
            Request::Offline { player } => {
                let mut p = self.inner.players.lock();
                p.players.remove(&player);
                p.version += 1;
                req
            }
            req => req,
        };
        let conn = self.connection().await?;
        let reply = exchange(&conn, &req).await.map_err(|e| {
            tracing::debug!(error = %e, "chat request failed");
            ChatError::Unavailable
        })?;
        if let Reply::Failed(e) = reply {
            return Err(e);
        }
        match &req {
            Request::Join { player, channel } | Request::Leave { player, channel } => {
                if let Ok(channel) = rules::channel_name(channel) {
                    let mut p = self.inner.players.lock();
                    if let Some(r) = p.players.get_mut(player) {
                        if matches!(req, Request::Join { .. }) {
                            r.channels.insert(channel);
                        } else {
                            r.channels.remove(&channel);
                        }
                    }
                    p.version += 1;
                }
            }
            _ => {}
        }
        Ok(reply)
    }

    /// Stops reconnecting and closes the connection.
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    async fn connection(&self) -> Result<quinn::Connection, ChatError> {
        if let Some(c) = live(&self.inner.link.borrow()) {
            return Ok(c);
        }
        let mut rx = self.inner.link.subscribe();
        let waited = tokio::time::timeout(WAIT_FOR_LINK, rx.wait_for(|c| live(c).is_some())).await;
        let conn = match waited {
            Ok(Ok(c)) => live(&c),
            _ => None,
        };
        conn.ok_or(ChatError::Unavailable)
    }
}

fn live(c: &Option<quinn::Connection>) -> Option<quinn::Connection> {
    c.as_ref().filter(|c| c.close_reason().is_none()).cloned()
}

/// One request on its own stream, within [`REQUEST_TIMEOUT`].
async fn exchange(conn: &quinn::Connection, req: &Request) -> Result<Reply, String> {
    let bytes = tessera_proto::frame::encode(req).map_err(|e| e.to_string())?;
    let call = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv
            .read_to_end(MAX_REPLY)
            .await
            .map_err(|e| e.to_string())?;
        tessera_proto::frame::decode::<Reply>(&answer, MAX_REPLY)
            .map_err(|e| format!("malformed reply: {e}"))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

async fn keep_connected(
    inner: Arc<Inner>,
    addr: SocketAddr,
    server_name: String,
    config: quinn::ClientConfig,
    deliveries: mpsc::UnboundedSender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut backoff = MIN_BACKOFF;
    let endpoint = loop {
        match quinn::Endpoint::client(bind) {
            Ok(mut ep) => {
                ep.set_default_client_config(config);
                break ep;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the chat client socket; retrying");
                if stopped(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    loop {
        if *stop.borrow() {
            break;
        }
        match connect(&inner, &endpoint, addr, &server_name, &deliveries).await {
            Ok(conn) => {
                backoff = MIN_BACKOFF;
                tracing::info!(router = %inner.router, %addr, "connected to chat");
                tokio::select! {
                    e = conn.closed() => {
                        tracing::warn!(router = %inner.router, error = %e, "lost the chat connection; reconnecting");
                    }
                    _ = stop.changed() => {
                        conn.close(0u32.into(), b"router leaving chat");
                    }
                }
                inner.link.send_replace(None);
            }
            Err(e) => {
                tracing::debug!(router = %inner.router, %addr, error = %e, "cannot reach chat");
            }
        }
        if stopped(&mut stop, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    inner.link.send_replace(None);
    endpoint.close(0u32.into(), b"router leaving chat");
}

/// Waits `delay`; true if the client was stopped (or dropped) meanwhile.
async fn stopped(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// Connects, says Hello, starts reading deliveries and re-registers every remembered player;
/// publishes the connection only when the service knows all of them.
async fn connect(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    deliveries: &mpsc::UnboundedSender<Delivery>,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(REQUEST_TIMEOUT, connecting)
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = Request::Hello {
        router: inner.router.clone(),
    };
    match exchange(&conn, &hello).await? {
        Reply::Ok => {}
        other => return Err(format!("Hello refused: {other:?}")),
    }
    tokio::spawn(read_deliveries(conn.clone(), deliveries.clone()));
    loop {
        let (version, players) = {
            let p = inner.players.lock();
            (p.version, p.players.clone())
        };
        for (player, r) in players {
            let online = Request::Online {
                player,
                name: r.name.clone(),
                operator: r.operator,
                channels: r.channels.iter().cloned().collect(),
            };
            if let Reply::Failed(e) = exchange(&conn, &online).await? {
                tracing::warn!(router = %inner.router, player, error = %e, "chat refused a player on reconnect");
            }
        }
        let p = inner.players.lock();
        if p.version == version {
            // Under the lock: a change after this sees the live link and sends itself.
            inner.link.send_replace(Some(conn.clone()));
            return Ok(conn);
        }
    }
}

async fn read_deliveries(conn: quinn::Connection, out: mpsc::UnboundedSender<Delivery>) {
    let mut stream = match conn.accept_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut frames = FrameBuffer::new(MAX_DELIVERY);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(Some(n)) => frames.extend(&buf[..n]),
            Ok(None) | Err(_) => return,
        }
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad chat delivery frame; reconnecting");
                    conn.close(1u32.into(), b"bad delivery frame");
                    return;
                }
            };
            match tessera_proto::frame::decode::<Delivery>(&frame, MAX_DELIVERY) {
                Ok(d) => {
                    let _ = out.send(d);
                }
                Err(e) => tracing::warn!(error = %e, "malformed chat delivery skipped"),
            }
        }
    }
}
