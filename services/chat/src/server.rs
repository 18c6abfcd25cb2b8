//! The chat service: accepts router connections and moves bytes; [`Registry`] decides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tessera_persistence::Database;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::history::{self, HistoryLog};
use crate::registry::{Clock, Outcome, Registry, RouterKey};
use crate::rules;
use crate::wire::{Delivery, Reply, Request, MAX_DELIVERY, MAX_REQUEST};
use crate::{ChatError, ChatLimits, HISTORY_KEEP, REQUEST_TIMEOUT};

/// Deliveries queued for one router before new ones are dropped (a router that stops reading
/// must not grow the server without bound).
const ROUTER_QUEUE: usize = 4096;
/// How long a store call on the request path may take before the request goes on without it.
const STORE_WAIT: Duration = Duration::from_secs(2);

struct RouterLink {
    id: String,
    deliveries: mpsc::Sender<Delivery>,
}

struct Shared {
    db: Database,
    registry: parking_lot::Mutex<Registry>,
    routers: parking_lot::Mutex<HashMap<RouterKey, RouterLink>>,
    history: Arc<HistoryLog>,
    next_router: AtomicU64,
}

/// A running chat service.
pub struct ChatServer {
    endpoint: quinn::Endpoint,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ChatServer {
    /// Serves chat on `listen` with `config` (whose TLS must offer [`crate::CHAT_ALPN`]),
    /// keeping history and mutes in `db`. Must be called inside a tokio runtime; serves until
    /// [`ChatServer::close`].
    pub fn start(
        db: Database,
        listen: SocketAddr,
        config: quinn::ServerConfig,
        limits: ChatLimits,
    ) -> Result<ChatServer, ChatError> {
        describe_metrics();
        let endpoint = quinn::Endpoint::server(config, listen).map_err(|e| ChatError::Listen {
            addr: listen.to_string(),
            reason: e.to_string(),
        })?;
        let shared = Arc::new(Shared {
            db: db.clone(),
            history: Arc::new(HistoryLog::new(limits.history_buffer)),
            registry: parking_lot::Mutex::new(Registry::new(limits)),
            routers: parking_lot::Mutex::new(HashMap::new()),
            next_router: AtomicU64::new(1),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(shared.history.clone().run_writer(db, stop_rx));
        // Mutes survive restarts; load them without holding up the listener.
        let loader = shared.clone();
        tokio::spawn(async move {
            let db = loader.db.clone();
            match tokio::task::spawn_blocking(move || history::load_mutes(&db)).await {
                Ok(Ok(mutes)) => {
                    let mut reg = loader.registry.lock();
                    for (name, until) in mutes {
                        reg.load_mute(&name, until, true);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot load chat mutes; they load per player on Online")
                }
                Err(e) => tracing::warn!(error = %e, "loading chat mutes failed"),
            }
        });
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(serve_connection(shared.clone(), incoming));
            }
        });
        Ok(ChatServer { endpoint, stop })
    }

    /// Where the service listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection, stops accepting, and saves what history it can.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"chat service stopping");
        let _ = self.stop.send(true);
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "tessera_chat_messages_total",
        "Chat messages delivered, by kind (shout, tell, channel)"
    );
    metrics::describe_gauge!("tessera_chat_online_players", "Players online in chat");
    metrics::describe_counter!(
        "tessera_chat_rate_limited_total",
        "Chat messages refused by the per-player rate limit"
    );
    metrics::describe_gauge!(
        "tessera_chat_history_buffered",
        "Chat history lines waiting in memory for the store"
    );
    metrics::describe_counter!(
        "tessera_chat_history_dropped_total",
        "Chat history lines dropped because the memory buffer was full"
    );
    metrics::describe_counter!(
        "tessera_chat_deliveries_dropped_total",
        "Deliveries dropped because a router's queue was full"
    );
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "chat connection refused (not a cluster member?)");
            return;
        }
    };
    // Chat is the routers' (they speak for their players).
    use tessera_coordinator::identity::{MemberRole, Peer};
    if !Peer::of(&conn).is_some_and(|p| p.may_be(MemberRole::Router)) {
        tracing::warn!(addr = %conn.remote_address(), "chat connection closed: not a router's certificate");
        conn.close(1u32.into(), b"only routers use the chat service");
        return;
    }
    let key = shared.next_router.fetch_add(1, Ordering::Relaxed);
    let hello: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(
            shared.clone(),
            key,
            conn.clone(),
            hello.clone(),
            send,
            recv,
        ));
    }
    shared.routers.lock().remove(&key);
    let (gone, online) = {
        let mut reg = shared.registry.lock();
        (reg.router_closed(key), reg.online_count())
    };
    metrics::gauge!("tessera_chat_online_players").set(online as f64);
    let router = hello.get().map(String::as_str).unwrap_or("(no hello)");
    tracing::info!(
        router,
        players = gone,
        "router disconnected from chat; its players are offline"
    );
}

async fn serve_stream(
    shared: Arc<Shared>,
    key: RouterKey,
    conn: quinn::Connection,
    hello: Arc<OnceLock<String>>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, recv.read_to_end(MAX_REQUEST)).await {
        Err(_) => Reply::Failed(ChatError::Protocol(
            "the request did not arrive in time".into(),
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "unreadable chat request");
            let _ = recv.stop(1u32.into());
            Reply::Failed(ChatError::Protocol(format!("cannot read the request: {e}")))
        }
        Ok(Ok(bytes)) => match tessera_proto::frame::decode::<Request>(&bytes, MAX_REQUEST) {
            Err(e) => {
                tracing::warn!(error = %e, "malformed chat request");
                Reply::Failed(ChatError::Protocol(format!("malformed request: {e}")))
            }
            Ok(req) => serve_request(&shared, key, &conn, &hello, req).await,
        },
    };
    let bytes = match tessera_proto::frame::encode(&reply) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a chat reply");
            return;
        }
    };
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, send.stopped()).await;
    }
}

async fn serve_request(
    shared: &Shared,
    key: RouterKey,
    conn: &quinn::Connection,
    hello: &OnceLock<String>,
    req: Request,
) -> Reply {
    if let Request::Hello { router } = req {
        return greet(shared, key, conn, hello, router).await;
    }
    let Some(router) = hello.get() else {
        return Reply::Failed(ChatError::Protocol(
            "send Hello before any other request".into(),
        ));
    };
    let span = tracing::debug_span!(
        "chat_request",
        router = %router,
        kind = req.kind(),
        player = tracing::field::Empty,
        channel = tracing::field::Empty,
    );
    record_fields(&span, &req);
    serve_registered(shared, key, req).instrument(span).await
}

async fn serve_registered(shared: &Shared, key: RouterKey, req: Request) -> Reply {
    match req {
        Request::History {
            player,
            channel,
            limit,
        } => history_of(shared, player, &channel, limit).await,
        Request::Online { ref name, .. } => {
            // The store's mute for this name wins over what the cache has (it may be newer).
            let (db, folded) = (shared.db.clone(), rules::fold(&rules::clean(name)));
            let f = folded.clone();
            let loaded = tokio::time::timeout(
                STORE_WAIT,
                tokio::task::spawn_blocking(move || history::load_mute(&db, &f)),
            )
            .await;
            if let Ok(Ok(Ok(Some(until)))) = loaded {
                shared.registry.lock().load_mute(&folded, until, false);
            }
            carry_out(shared, key, req).await
        }
        req => carry_out(shared, key, req).await,
    }
}

fn record_fields(span: &tracing::Span, req: &Request) {
    let (player, channel) = match req {
        Request::Online { player, .. }
        | Request::Offline { player }
        | Request::Channels { player } => (Some(*player), None),
        Request::Shout { from, .. } | Request::Tell { from, .. } => (Some(*from), None),
        Request::Say { from, channel, .. } => (Some(*from), Some(channel)),
        Request::Join { player, channel }
        | Request::Leave { player, channel }
        | Request::History {
            player, channel, ..
        } => (Some(*player), Some(channel)),
        Request::Mute { by, .. } | Request::Unmute { by, .. } | Request::Kick { by, .. } => {
            (Some(*by), None)
        }
        Request::Hello { .. } => (None, None),
    };
    if let Some(p) = player {
        span.record("player", p);
    }
    if let Some(c) = channel {
        span.record("channel", c.as_str());
    }
}

/// Registers the router and opens its delivery stream.
async fn greet(
    shared: &Shared,
    key: RouterKey,
    conn: &quinn::Connection,
    hello: &OnceLock<String>,
    router: String,
) -> Reply {
    let router = rules::clean(&router);
    if hello.set(router.clone()).is_err() {
        return Reply::Failed(ChatError::Protocol("Hello was already sent".into()));
    }
    let stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            return Reply::Failed(ChatError::Protocol(format!(
                "cannot open the delivery stream: {e}"
            )))
        }
    };
    let (tx, rx) = mpsc::channel(ROUTER_QUEUE);
    tokio::spawn(write_deliveries(router.clone(), stream, rx));
    shared.routers.lock().insert(
        key,
        RouterLink {
            id: router.clone(),
            deliveries: tx,
        },
    );
    tracing::info!(router = %router, "router connected to chat");
    Reply::Ok
}

async fn write_deliveries(
    router: String,
    mut stream: quinn::SendStream,
    mut rx: mpsc::Receiver<Delivery>,
) {
    while let Some(d) = rx.recv().await {
        let bytes = match tessera_proto::frame::encode_frame(&d, MAX_DELIVERY) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(router = %router, error = %e, "cannot encode a chat delivery; skipped");
                continue;
            }
        };
        if let Err(e) = stream.write_all(&bytes).await {
            tracing::debug!(router = %router, error = %e, "delivery stream closed");
            return;
        }
    }
}

async fn history_of(shared: &Shared, player: u64, channel: &str, limit: u32) -> Reply {
    if !shared.registry.lock().is_online(player) {
        return Reply::Failed(ChatError::NotRegistered { player });
    }
    let channel = match rules::channel_name(channel) {
        Ok(c) => c,
        Err(e) => return Reply::Failed(e),
    };
    let limit = (limit as usize).min(HISTORY_KEEP);
    match shared.history.recent(&shared.db, &channel, limit).await {
        Ok(lines) => Reply::History(lines),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read chat history");
            Reply::Failed(ChatError::HistoryUnavailable)
        }
    }
}

/// Runs a request through the registry and carries out what it says.
async fn carry_out(shared: &Shared, key: RouterKey, req: Request) -> Reply {
    let kind = req.kind();
    let (outcome, online) = {
        let mut reg = shared.registry.lock();
        let outcome = reg.handle(key, req, Clock::now());
        (outcome, reg.online_count())
    };
    metrics::gauge!("tessera_chat_online_players").set(online as f64);
    let Outcome {
        reply,
        deliveries,
        history,
        mute,
    } = outcome;
    {
        let routers = shared.routers.lock();
        for (router, delivery) in deliveries {
            let Some(link) = routers.get(&router) else {
                continue;
            };
            if link.deliveries.try_send(delivery).is_err() {
                metrics::counter!("tessera_chat_deliveries_dropped_total").increment(1);
                tracing::warn!(router = %link.id, "router is not reading chat deliveries; one dropped");
            }
        }
    }
    for (channel, line) in history {
        shared.history.push(channel, line);
    }
    if let Some((name, until)) = mute {
        let db = shared.db.clone();
        let stored = tokio::time::timeout(
            STORE_WAIT,
            tokio::task::spawn_blocking(move || history::store_mute(&db, &name, until)),
        )
        .await;
        if !matches!(stored, Ok(Ok(Ok(())))) {
            tracing::warn!("cannot store a chat mute; it holds until this service restarts");
        }
    }
    match &reply {
        Reply::Delivered { .. } => {
            let kind = if kind == "say" { "channel" } else { kind };
            metrics::counter!("tessera_chat_messages_total", "kind" => kind).increment(1);
        }
        Reply::Failed(ChatError::RateLimited { .. }) => {
            metrics::counter!("tessera_chat_rate_limited_total").increment(1);
        }
        _ => {}
    }
    reply
}
