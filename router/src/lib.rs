//! The router: the players' gateway. It terminates telnet (RFC 854) and QUIC
//! (`tessera/1`) connections, logs players in through auth, and routes each
//! player's traffic to the shard that owns the player's cell, following the
//! player across cell and shard borders. It never simulates anything.
//!
//! Both gateways share one session model ([`session::Player`]), so a text
//! player and a 3D player are the same thing to the rest of the cluster.

pub mod caps;
pub mod chat;
pub mod command;
pub mod dialogue;
pub mod gmcp;
pub mod interest;
pub mod member;
pub mod play;
pub mod quic;
pub mod session;
pub mod style;
pub mod telnet;
pub mod telnet_gateway;
pub mod text;
pub mod tls;
pub mod udp;
pub mod view;
pub mod web;
pub mod webtransport;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::{Accounts, AuthError};
use tessera_coordinator::{Bus, CellMap};
use tessera_persistence::{Database, StoreError};
use tessera_proto::cluster::{PlayerEvent, ToRouter, ToShard};
use tessera_proto::msg::ErrorCode;
use tessera_proto::world::WorldDef;
use tessera_proto::{EntityId, Grid, PlayerId, RouterId, SessionId, ShardId, Vec3};
use tokio::sync::mpsc;

pub use view::WorldView;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("web client: {0}")]
    WebClient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Unavailable(String),
    #[error("that character is already playing")]
    AlreadyPlaying,
    /// The player may not do this now (muted, too fast); the text says why.
    #[error("{0}")]
    Refused(String),
    /// A task the router cannot serve without ended while it was serving; it stopped at once.
    #[error("the router stopped because {0}")]
    TaskDied(TaskDied),
}

/// How a router runs.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub id: RouterId,
    pub telnet: SocketAddr,
    pub quic: SocketAddr,
    /// Where the QUIC certificate is kept.
    pub data_dir: PathBuf,
    /// Longest telnet line, bytes.
    pub max_line: usize,
    /// Connections (telnet and QUIC together) beyond this are refused with
    /// a message.
    pub max_connections: usize,
    /// Telnet connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Players see entities this far away, metres.
    pub interest_radius: f32,
    /// Snapshots per second to QUIC clients.
    pub snapshot_hz: u32,
    /// The shards' tick rate (told to clients).
    pub tick_hz: u32,
    /// Speech carries this far (for help texts; shards enforce it).
    pub hearing_radius: f32,
    /// How often online players' positions are saved.
    pub save_interval: Duration,
    /// New characters appear anywhere within this many metres of the
    /// world's spawn (0: on it). Spreads a crowd of newcomers over several
    /// cells, and so over several shards.
    pub spawn_radius: f32,
    /// The cluster's trust bundle, whose members (telnet gateways) may relay
    /// text players (`ClientMsg::Relay`); empty: no connection may.
    pub relay_cas: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Telnet over TLS for players (plain telnet carries passwords in
    /// clear): where to listen, and the certificate to serve.
    pub telnet_tls: Option<TelnetTls>,
    /// The QUIC certificate and key files to serve (DER or PEM); `None`:
    /// `<data_dir>/quic-cert.der` and `quic-key.der`, created if missing.
    pub quic_cert: Option<(PathBuf, PathBuf)>,
    /// A connection that has not logged in this long after it opened is
    /// closed (telnet and QUIC; relayed text players excepted: their
    /// gateway keeps its own deadline).
    pub login_timeout: Duration,
    /// Connections one client address (IPv6: /64) may hold at once over
    /// telnet and QUIC together (0: no cap; relayed text players are
    /// capped by their gateway).
    pub connections_per_address: usize,
    /// Addresses the per-address connection cap leaves alone (loopback by
    /// default, for local bot swarms).
    pub limit_exempt: tessera_auth::AddressSet,
    /// Browser players: WebTransport (HTTP/3) on the QUIC port, with the
    /// certificate browsers are shown; `None` turns browsers away.
    pub web_transport: Option<WebTransportConfig>,
    /// The web client's page and `/tessera.json` over HTTP (`web.rs`).
    pub web_page: Option<web::WebPage>,
}

/// WebTransport for browsers on the QUIC port (docs/client.md).
#[derive(Clone, Debug, Default)]
pub struct WebTransportConfig {
    /// A PEM certificate chain and key from a CA browsers trust; without
    /// them a short-lived development certificate, published by hash
    /// (`webtransport.rs`).
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// The telnet-over-TLS port (docs/operations.md, "Telnet over TLS").
#[derive(Clone, Debug)]
pub struct TelnetTls {
    pub addr: SocketAddr,
    /// A PEM certificate chain and its PEM private key; without them the
    /// router serves its own self-signed certificate (`quic-cert.pem` in
    /// the data dir, the one QUIC clients pin).
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl RouterConfig {
    pub fn new(id: RouterId, data_dir: PathBuf) -> RouterConfig {
        RouterConfig {
            id,
            telnet: "0.0.0.0:4000".parse().expect("valid address"),
            quic: "0.0.0.0:4433".parse().expect("valid address"),
            data_dir,
            max_line: 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30 * 60),
            interest_radius: 100.0,
            snapshot_hz: 20,
            tick_hz: 30,
            hearing_radius: 30.0,
            save_interval: Duration::from_secs(5),
            spawn_radius: 0.0,
            relay_cas: Vec::new(),
            telnet_tls: None,
            quic_cert: None,
            login_timeout: LOGIN_TIMEOUT,
            connections_per_address: caps::CONNECTIONS_PER_ADDRESS,
            limit_exempt: tessera_auth::AddressSet::default(),
            web_transport: Some(WebTransportConfig::default()),
            web_page: None,
        }
    }
}

/// How long a new connection may take to log in, by default.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a connection that took too long to log in is told.
pub const LOGIN_TIMEOUT_TEXT: &str = "You took too long to log in";

/// Resolves once `stopping` (from [`Router::stopping`]) turns true.
pub async fn until_stopping(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        // The router is gone: nothing will ever stop this wait otherwise.
        std::future::pending::<()>().await;
    }
}

/// Runs `task` (one the router can serve without) until it ends or the
/// router starts stopping.
fn spawn_until_stopping(
    router: &Router,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut stop = router.stopping();
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = until_stopping(&mut stop) => {}
        }
    });
}

/// Where a new character `player` appears: within `radius` of `spawn`,
/// spread evenly over the disc by account id (the same place every time).
pub fn spawn_point(spawn: Vec3, radius: f32, player: PlayerId) -> Vec3 {
    if radius <= 0.0 {
        return spawn;
    }
    // Golden-angle spiral over 1,024 places, in an order scrambled by a
    // multiplicative hash so consecutive ids land far apart.
    const PLACES: u64 = 1024;
    let k = (player.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % PLACES;
    let r = radius * ((k as f32 + 0.5) / PLACES as f32).sqrt();
    let a = k as f32 * 2.399_963;
    Vec3::new(spawn.x + r * a.cos(), spawn.y, spawn.z + r * a.sin())
}

/// A player's saved record (`player/<id>` in persistence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlayerRecord {
    pub pos: Vec3,
    pub last_seen_unix: u64,
}

impl PlayerRecord {
    /// A record of `pos`, seen now.
    fn now(pos: Vec3) -> PlayerRecord {
        PlayerRecord {
            pos,
            last_seen_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// Players saved per transaction: a record is under 100 bytes, so a batch
/// is far under FoundationDB's 10 MB a transaction.
pub const SAVE_BATCH: usize = 1000;

fn player_key(id: PlayerId) -> Vec<u8> {
    format!("player/{:020}", id.0).into_bytes()
}

/// Shared state of one router.
pub struct Router {
    pub config: RouterConfig,
    pub world: Arc<WorldDef>,
    pub grid: Grid,
    pub view: WorldView,
    pub accounts: Accounts,
    /// The chat service, if this router has one.
    pub chat: Option<tessera_chat::ChatClient>,
    /// Its deliveries, until `run` starts handing them out.
    chat_deliveries: Mutex<Option<mpsc::UnboundedReceiver<tessera_chat::Delivery>>>,
    bus: Arc<dyn Bus>,
    map: CellMap,
    db: Database,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    next_session: AtomicU64,
    /// Player records the store refused (it was down), newest per player.
    unsaved: Mutex<HashMap<PlayerId, PlayerRecord>>,
    /// Players the chat service says are muted, until when (unix ms): their
    /// local speech is refused here too (`Player::say`).
    mutes: Mutex<HashMap<PlayerId, u64>>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Open connections per client address.
    pub caps: Arc<caps::AddressCaps>,
    /// When the router started, Unix seconds (MSSP's UPTIME).
    started_unix: u64,
    /// Where it listens, once it does.
    listening: std::sync::OnceLock<RouterAddrs>,
    /// What browsers are shown on the QUIC port, once it listens.
    web_cert: std::sync::OnceLock<Arc<webtransport::WebCert>>,
}

struct SessionEntry {
    tx: EventSender,
    playing: Option<Playing>,
}

#[derive(Clone)]
struct Playing {
    player: PlayerId,
    name: String,
    entity: EntityId,
    shard: ShardId,
    pos: Vec3,
}

impl Router {
    pub fn new(
        config: RouterConfig,
        world: Arc<WorldDef>,
        bus: Arc<dyn Bus>,
        map: CellMap,
        accounts: Accounts,
        chat: Option<chat::ChatLink>,
        db: Database,
    ) -> Arc<Router> {
        let (chat, chat_deliveries) = match chat {
            Some((client, rx)) => (Some(client), Some(rx)),
            None => (None, None),
        };
        let grid = Grid::new(world.cell_size);
        let caps =
            caps::AddressCaps::new(config.connections_per_address, config.limit_exempt.clone());
        Arc::new(Router {
            caps,
            config,
            world,
            grid,
            view: WorldView::default(),
            accounts,
            chat,
            chat_deliveries: Mutex::new(chat_deliveries),
            bus,
            map,
            db,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            unsaved: Mutex::new(HashMap::new()),
            mutes: Mutex::new(HashMap::new()),
            stopping: tokio::sync::watch::channel(false).0,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            listening: std::sync::OnceLock::new(),
            web_cert: std::sync::OnceLock::new(),
        })
    }

    /// What MSSP tells a crawler: the world, the players online on this
    /// router, since when it runs, and its telnet ports.
    pub fn mssp_info(&self) -> dialogue::MsspInfo {
        let addrs = self.listening.get();
        dialogue::MsspInfo {
            name: self.world.name.clone(),
            players: self.online().len(),
            started_unix: self.started_unix,
            port: addrs.map_or(self.config.telnet.port(), |a| a.telnet.port()),
            tls_port: addrs.and_then(|a| a.telnet_tls.map(|t| t.port())),
        }
    }

    /// What browsers are shown on the QUIC port (and the hashes their page
    /// needs), once the router listens; `None` while it does not, or when
    /// it turns browsers away.
    pub fn web_cert(&self) -> Option<Arc<webtransport::WebCert>> {
        self.web_cert.get().cloned()
    }

    /// Turns true when the router starts stopping: every connection then
    /// takes its player out of the world (saving the position) before it
    /// closes, so a client resuming on another router finds the position
    /// already saved.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Registers a connection; its player events arrive on the receiver.
    /// `None` when the router is full.
    pub fn open_session(&self) -> Option<(SessionId, mpsc::Receiver<PlayerEvent>)> {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let tx = EventSender(tx);
        {
            let mut sessions = self.sessions.lock();
            if sessions.len() >= self.config.max_connections {
                metrics::counter!("tessera_router_refused_connections_total").increment(1);
                return None;
            }
            sessions.insert(id, SessionEntry { tx, playing: None });
        }
        metrics::gauge!("tessera_router_connections").increment(1.0);
        Some((id, rx))
    }

    pub fn close_session(&self, id: SessionId) {
        if self.sessions.lock().remove(&id).is_some() {
            metrics::gauge!("tessera_router_connections").decrement(1.0);
        }
    }

    /// The chat service muted `player` until `until_unix_ms` (`None`:
    /// unmuted).
    pub(crate) fn set_muted(&self, player: PlayerId, until_unix_ms: Option<u64>) {
        let mut mutes = self.mutes.lock();
        match until_unix_ms {
            Some(until) => {
                mutes.insert(player, until);
            }
            None => {
                mutes.remove(&player);
            }
        }
    }

    /// How much longer `player` is muted at `now_unix_ms`, if at all.
    pub(crate) fn muted_for(&self, player: PlayerId, now_unix_ms: u64) -> Option<u64> {
        let mut mutes = self.mutes.lock();
        let until = *mutes.get(&player)?;
        if until <= now_unix_ms {
            mutes.remove(&player);
            return None;
        }
        Some(until - now_unix_ms)
    }

    /// Names of the players online on this router, sorted.
    pub fn online(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sessions
            .lock()
            .values()
            .filter_map(|s| s.playing.as_ref().map(|p| p.name.clone()))
            .collect();
        names.sort_by_key(|n| n.to_lowercase());
        names
    }

    /// Ends this router's other connections playing `player` (a `Resume`
    /// arriving before the router noticed the old connection is gone) and
    /// waits up to 5 s for them to leave the world.
    pub(crate) async fn take_over(&self, player: PlayerId) {
        let others: Vec<EventSender> = self
            .sessions
            .lock()
            .values()
            .filter(|s| s.playing.as_ref().is_some_and(|p| p.player == player))
            .map(|s| s.tx.clone())
            .collect();
        if others.is_empty() {
            return;
        }
        tracing::info!(player = %player, "a resumed session takes over an older connection");
        for tx in &others {
            tx.send(PlayerEvent::Replaced);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.is_playing(player) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_playing(&self, player: PlayerId) -> bool {
        self.sessions
            .lock()
            .values()
            .any(|s| s.playing.as_ref().is_some_and(|p| p.player == player))
    }

    fn set_playing(&self, id: SessionId, playing: Option<Playing>) -> Result<(), RouterError> {
        let mut sessions = self.sessions.lock();
        if let Some(p) = &playing {
            let taken = sessions.iter().any(|(sid, s)| {
                *sid != id && s.playing.as_ref().is_some_and(|q| q.player == p.player)
            });
            if taken {
                return Err(RouterError::AlreadyPlaying);
            }
        }
        if let Some(s) = sessions.get_mut(&id) {
            s.playing = playing;
        }
        Ok(())
    }

    fn update_playing(&self, id: SessionId, f: impl FnOnce(&mut Playing)) {
        if let Some(p) = self
            .sessions
            .lock()
            .get_mut(&id)
            .and_then(|s| s.playing.as_mut())
        {
            f(p);
        }
    }

    fn to_shard(&self, shard: &ShardId, msg: ToShard) -> Result<(), RouterError> {
        self.bus.to_shard(shard, msg).map_err(|e| {
            RouterError::Unavailable(format!("the world is not reachable right now ({e})"))
        })
    }

    /// The saved position of a player, if any: the one this router could
    /// not write yet, else the stored one.
    pub fn load_player(&self, id: PlayerId) -> Result<Option<PlayerRecord>, RouterError> {
        if let Some(rec) = self.unsaved.lock().get(&id) {
            return Ok(Some(rec.clone()));
        }
        let key = player_key(id);
        let bytes = self.db.transact(|tx| tx.get(&key))?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Saves a player's position. When the store cannot take it, the record
    /// is kept and written by the next [`Router::save_all`] (and served by
    /// [`Router::load_player`] meanwhile), so a position the player saw is
    /// not lost while persistence is down.
    pub fn save_player(&self, id: PlayerId, pos: Vec3) -> Result<(), RouterError> {
        self.write_players(&[(id, PlayerRecord::now(pos))])
    }

    /// Writes player records in one transaction (one commit, one fsync
    /// with redb). When the store cannot take them, they are kept for the
    /// next [`Router::save_all`].
    fn write_players(&self, records: &[(PlayerId, PlayerRecord)]) -> Result<(), RouterError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(id, rec)| {
                let value = serde_json::to_vec(rec).expect("player record serialises");
                (player_key(*id), value)
            })
            .collect();
        let written = self.db.transact(|tx| {
            for (key, value) in &encoded {
                tx.set(key, value)?;
            }
            Ok(())
        });
        let mut unsaved = self.unsaved.lock();
        let result = match written {
            Ok(()) => {
                for (id, _) in records {
                    unsaved.remove(id);
                }
                Ok(())
            }
            Err(e) => {
                for (id, rec) in records {
                    unsaved.insert(*id, rec.clone());
                }
                Err(e.into())
            }
        };
        metrics::gauge!("tessera_router_unsaved_players").set(unsaved.len() as f64);
        result
    }

    /// Writes the records of players who left while the store was down.
    fn retry_unsaved(&self) {
        let waiting: Vec<(PlayerId, PlayerRecord)> = self
            .unsaved
            .lock()
            .iter()
            .map(|(id, rec)| (*id, rec.clone()))
            .collect();
        // Taken apart from the unsaved records' lock: `is_playing` locks the
        // sessions, and no lock here is held while taking another.
        let waiting: Vec<(PlayerId, PlayerRecord)> = waiting
            .into_iter()
            .filter(|(id, _)| !self.is_playing(*id)) // saved with the online players
            .collect();
        for batch in waiting.chunks(SAVE_BATCH) {
            if self.write_players(batch).is_err() {
                break; // still down; try again next time
            }
        }
    }

    /// Saves the position of every player online, from the newest view,
    /// and the records still waiting for the store: [`SAVE_BATCH`] players
    /// a transaction, so a full router costs a few commits, not one per
    /// player (600 commits every 5 s once stalled a one-core router for
    /// 300 to 500 ms; docs/performance.md, "Capacity per core").
    pub fn save_all(&self) {
        self.retry_unsaved();
        let playing: Vec<Playing> = self
            .sessions
            .lock()
            .values()
            .filter_map(|s| s.playing.clone())
            .collect();
        let records: Vec<(PlayerId, PlayerRecord)> = playing
            .iter()
            .map(|p| {
                let pos = self
                    .view
                    .find(&self.grid, p.entity, p.pos)
                    .map(|e| e.pos)
                    .unwrap_or(p.pos);
                (p.player, PlayerRecord::now(pos))
            })
            .collect();
        let newest: HashMap<PlayerId, Vec3> =
            records.iter().map(|(id, rec)| (*id, rec.pos)).collect();
        for s in self.sessions.lock().values_mut() {
            if let Some(p) = s.playing.as_mut() {
                if let Some(pos) = newest.get(&p.player) {
                    p.pos = *pos;
                }
            }
        }
        for batch in records.chunks(SAVE_BATCH) {
            if let Err(e) = self.write_players(batch) {
                tracing::error!(players = batch.len(), error = %e, "cannot save players");
            }
        }
    }

    /// Delivers what the bus brings: frames into the view, player events to
    /// their sessions.
    fn dispatch(&self, msg: ToRouter) {
        match msg {
            ToRouter::Frame(frame) => self.view.update(frame),
            ToRouter::Player { session, event } => {
                let sessions = self.sessions.lock();
                match sessions.get(&session) {
                    Some(s) => s.tx.send(event),
                    None => tracing::debug!(session = %session, "event for a closed session"),
                }
            }
            // A shard keeps a linkdead avatar's position through us: written with the next
            // save round, unless the player is back online here (that session's own
            // position wins, `retry_unsaved`).
            ToRouter::SavePlayer { player, pos } => {
                self.unsaved.lock().insert(player, PlayerRecord::now(pos));
            }
        }
    }
}

/// Most events a session's queue holds. A player whose connection reads
/// slower than events arrive for this long is disconnected
/// ([`PlayerEvent::Lagged`]), so a stalled client cannot make the router
/// hold its events without limit.
pub const EVENT_QUEUE: usize = 1024;

/// The events that end a connection, as both gateways tell them: the error
/// code a QUIC client gets and the line (a telnet player reads it followed
/// by `. Goodbye.`). None for every other event.
pub(crate) fn farewell(ev: &PlayerEvent) -> Option<(ErrorCode, String)> {
    match ev {
        PlayerEvent::Kicked { by, reason } => {
            Some((ErrorCode::Kicked, chat::kicked_text(by, reason)))
        }
        PlayerEvent::Replaced => Some((ErrorCode::AlreadyLoggedIn, REPLACED_TEXT.into())),
        PlayerEvent::Lagged => Some((ErrorCode::Lagged, LAGGED_TEXT.into())),
        _ => None,
    }
}

/// What a player is told when a login is refused: the reason, except for
/// trouble behind the router (storage, keys, an unreachable account
/// service), which is logged and told as a plain "not now". Both gateways
/// (and so telnet players behind a telnet gateway) print exactly this.
pub fn login_refusal(e: &AuthError) -> String {
    match e {
        AuthError::Storage(_) | AuthError::Key(_) | AuthError::Unavailable(_) => {
            tracing::error!(error = %e, "login failed");
            "Login is not available right now; please try again later.".to_string()
        }
        other => other.to_string(),
    }
}

/// What a player is told when a logged-in character cannot enter the world.
pub fn enter_refusal(e: &RouterError) -> String {
    match e {
        RouterError::AlreadyPlaying => "That character is already playing.".to_string(),
        other => format!("You cannot enter the world right now: {other}."),
    }
}

/// What a connection whose session was resumed elsewhere is told.
pub(crate) const REPLACED_TEXT: &str =
    "Your session was resumed from another connection; this one closes";

/// What a lagged player is told before the connection closes.
pub(crate) const LAGGED_TEXT: &str =
    "You fell too far behind the world (too many messages waiting); reconnect to go on";

/// The sending side of a session's bounded event queue.
#[derive(Clone)]
pub(crate) struct EventSender(mpsc::Sender<PlayerEvent>);

impl EventSender {
    /// Queues `event`; when only one place is left, queues
    /// [`PlayerEvent::Lagged`] instead, which ends the session, and drops
    /// whatever comes after it.
    pub(crate) fn send(&self, event: PlayerEvent) {
        let event = match self.0.capacity() {
            0 => {
                metrics::counter!("tessera_router_dropped_events_total").increment(1);
                return;
            }
            1 => {
                metrics::counter!("tessera_router_lagged_sessions_total").increment(1);
                tracing::warn!("a session's event queue is full: disconnecting it");
                PlayerEvent::Lagged
            }
            _ => event,
        };
        if self.0.try_send(event).is_err() {
            metrics::counter!("tessera_router_dropped_events_total").increment(1);
        }
    }
}

/// How long a stopping router waits for its connections to take their
/// players out of the world (one shard round trip and a save each).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where a running router listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterAddrs {
    pub telnet: SocketAddr,
    /// The telnet-over-TLS port, if configured.
    pub telnet_tls: Option<SocketAddr>,
    pub quic: SocketAddr,
    pub cert_path: PathBuf,
    /// The web client's page, if served.
    pub web: Option<SocketAddr>,
}

/// The lines a router prints when it listens: where players connect, and the certificate 3D
/// clients pin.
impl std::fmt::Display for RouterAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "telnet listening on {}", self.telnet)?;
        if let Some(a) = self.telnet_tls {
            writeln!(f, "telnet over TLS listening on {a}")?;
        }
        write!(
            f,
            "quic listening on {}   (certificate to pin: {})",
            self.quic,
            self.cert_path.display()
        )?;
        if let Some(web) = self.web {
            write!(f, "\nplay in a browser: {}", web::page_url(web))?;
        }
        Ok(())
    }
}

/// Binds both gateways and serves until `shutdown` resolves; then saves
/// every online player's position.
pub async fn run(
    router: Arc<Router>,
    inbox: mpsc::Receiver<ToRouter>,
    ready: tokio::sync::oneshot::Sender<RouterAddrs>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RouterError> {
    // Ready means the world is visible: wait (briefly) for a frame of every
    // cell, so the first player does not find an empty world.
    let mut inbox = inbox;
    let expected = router.world.extent.cells().count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while router.view.cell_count() < expected {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(msg)) => router.dispatch(msg),
            _ => {
                tracing::warn!(
                    have = router.view.cell_count(),
                    expected,
                    "not every cell has reported yet; starting anyway"
                );
                break;
            }
        }
    }
    let telnet = tokio::net::TcpListener::bind(router.config.telnet)
        .await
        .map_err(|source| RouterError::Bind {
            addr: router.config.telnet,
            source,
        })?;
    let identity = match &router.config.quic_cert {
        Some((cert, key)) => tls::load(cert, key)?,
        None => tls::load_or_create(&router.config.data_dir)?,
    };
    let web_cert = match &router.config.web_transport {
        Some(WebTransportConfig {
            cert: Some((cert, key)),
        }) => Some(Arc::new(webtransport::WebCert::from_pem(cert, key)?)),
        Some(WebTransportConfig { cert: None }) => {
            Some(Arc::new(webtransport::WebCert::development()?))
        }
        None => None,
    };
    if let Some(cert) = &web_cert {
        let _ = router.web_cert.set(cert.clone());
    }
    let server_config = tls::server_config(&identity, &router.config.relay_cas, web_cert.clone())?;
    let telnet_tls = match &router.config.telnet_tls {
        Some(t) => {
            let acceptor = tls::telnet_acceptor(&identity, t.cert.as_ref())?;
            let listener = tokio::net::TcpListener::bind(t.addr)
                .await
                .map_err(|source| RouterError::Bind {
                    addr: t.addr,
                    source,
                })?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let bind_error = |source| RouterError::Bind {
        addr: router.config.quic,
        source,
    };
    let socket = udp::bind(router.config.quic).map_err(bind_error)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)?;
    let web_page = match &router.config.web_page {
        Some(w) => {
            let page = web::Page::load(&w.dir)?;
            if page.is_built() {
                let (raw, gz) = page.size();
                tracing::info!(dir = %w.dir.display(), bytes = raw, gzip_bytes = gz, "web client loaded");
            } else {
                tracing::warn!(dir = %w.dir.display(), "the web client is not built (scripts/build-web.sh); its page says so");
            }
            let listener = tokio::net::TcpListener::bind(w.addr)
                .await
                .map_err(|source| RouterError::Bind {
                    addr: w.addr,
                    source,
                })?;
            Some((listener, page, w.public_url.clone()))
        }
        None => None,
    };
    let addrs = RouterAddrs {
        web: web_page.as_ref().and_then(|(l, _, _)| l.local_addr().ok()),
        telnet: telnet.local_addr().map_err(|source| RouterError::Bind {
            addr: router.config.telnet,
            source,
        })?,
        quic: endpoint.local_addr().map_err(|source| RouterError::Bind {
            addr: router.config.quic,
            source,
        })?,
        cert_path: identity.cert_path.clone(),
        telnet_tls: telnet_tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
    };
    tracing::info!(router = %router.config.id, telnet = %addrs.telnet, telnet_tls = ?addrs.telnet_tls, quic = %addrs.quic, "router listening");
    let _ = router.listening.set(addrs.clone());
    let _ = ready.send(addrs);

    let mut tasks = EssentialTasks::default();
    let r = router.clone();
    let pump = async move {
        let mut sampled = std::time::Instant::now();
        while let Some(msg) = inbox.recv().await {
            r.dispatch(msg);
            if sampled.elapsed() >= Duration::from_millis(100) {
                sampled = std::time::Instant::now();
                metrics::gauge!("tessera_router_inbox_queued").set(inbox.len() as f64);
            }
        }
    };
    #[cfg(feature = "fault-injection")]
    let pump = fault::doomed(fault::pump_panics_after(), pump);
    tasks.spawn("bus inbox pump", pump);
    if let Some(rx) = router.chat_deliveries.lock().take() {
        tasks.spawn("chat delivery pump", chat::pump(router.clone(), rx));
    }
    let r = router.clone();
    tasks.spawn("telnet accept loop", async move {
        telnet_gateway::serve(r, telnet).await
    });
    if let Some((listener, acceptor)) = telnet_tls {
        let r = router.clone();
        tasks.spawn("telnet-over-TLS accept loop", async move {
            telnet_gateway::serve_tls(r, listener, acceptor).await
        });
    }
    let r = router.clone();
    let ep = endpoint.clone();
    tasks.spawn("QUIC accept loop", async move { quic::serve(r, ep).await });
    if let Some((listener, page, public_url)) = web_page {
        let r = router.clone();
        spawn_until_stopping(&router, web::serve(r, listener, page, public_url));
    }
    if let Some(cert) = web_cert {
        spawn_until_stopping(&router, webtransport::renew_every_day(cert));
    }
    let r = router.clone();
    tasks.spawn("periodic save", async move {
        let mut every = tokio::time::interval(r.config.save_interval);
        every.tick().await;
        loop {
            every.tick().await;
            let r2 = r.clone();
            let _ = tokio::task::spawn_blocking(move || r2.save_all()).await;
        }
    });
    let died = tokio::select! {
        _ = shutdown => None,
        died = tasks.first_ended() => Some(died),
    };
    if let Some(died) = died {
        // A router without one of these only seems alive (a dead inbox pump: no frames, no
        // player events). Stop at once: the caller gives up the registration, so shards
        // see the router gone and keep its players' avatars linkdead, and the clients,
        // told to reconnect (CLOSE_RESTART), resume on another router and find them there.
        tracing::error!(router = %router.config.id, task = died.task, how = %died.how, "an essential task ended; the router stops at once");
        metrics::counter!("tessera_router_task_deaths_total", "task" => died.task).increment(1);
        endpoint.close(quic::CLOSE_RESTART.into(), b"router failed");
        tasks.abort_all();
        return Err(RouterError::TaskDied(died));
    }
    tracing::info!(router = %router.config.id, "router stopping; taking players out of the world");
    // Every connection takes its player out of the world and saves the
    // position, then closes: QUIC ones with CLOSE_RESTART, keeping their
    // sessions for `Resume` on this router's successor or another router,
    // which then finds the saved position (docs/protocol.md, section 3).
    let _ = router.stopping.send(true);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while !router.sessions.lock().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = router.sessions.lock().len();
    if left > 0 {
        tracing::warn!(router = %router.config.id, sessions = left, "sessions still open when the router stopped");
    }
    endpoint.close(quic::CLOSE_RESTART.into(), b"server restarting");
    let r = router.clone();
    let _ = tokio::task::spawn_blocking(move || r.save_all()).await;
    tasks.abort_all();
    Ok(())
}

/// The tasks a running router cannot serve without (the bus inbox pump, the accept loops,
/// ...), each with a name. None of them ends while the router serves; one that does (it
/// returned or panicked) is watched for with [`EssentialTasks::first_ended`]. The telnet
/// gateway watches its own the same way.
#[derive(Default)]
pub struct EssentialTasks {
    set: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

/// An essential task that ended: which, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDied {
    pub task: &'static str,
    /// `returned`, `panicked: <message>` or `was cancelled`.
    pub how: String,
}

impl std::fmt::Display for TaskDied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "its {} {}", self.task, self.how)
    }
}

impl EssentialTasks {
    /// Runs `task` (on the current tokio runtime) as the essential task `name`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits until one of the tasks ends, and says which and how; never resolves when
    /// there are none.
    pub async fn first_ended(&mut self) -> TaskDied {
        let (id, how) = match self.set.join_next_with_id().await {
            None => return std::future::pending().await,
            Some(Ok((id, ()))) => (id, "returned".to_string()),
            Some(Err(e)) if e.is_panic() => {
                let id = e.id();
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                (id, format!("panicked: {text}"))
            }
            Some(Err(e)) => (e.id(), "was cancelled".to_string()),
        };
        TaskDied {
            task: self.names.get(&id).copied().unwrap_or("unnamed task"),
            how,
        }
    }

    /// Stops every task (at its next await).
    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }

    /// Stops every task and waits until they are gone (with what they held: a listener is
    /// closed once this returns).
    pub async fn shutdown(&mut self) {
        self.set.shutdown().await;
    }
}

/// Fault injection for the fault tests (cargo feature `fault-injection`, which only test
/// builds turn on): a router started with `TESSERA_FAULT_ROUTER_PANIC_AFTER_MS=N` has its
/// bus inbox pump panic N ms after it starts.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::time::Duration;

    pub fn pump_panics_after() -> Option<Duration> {
        std::env::var("TESSERA_FAULT_ROUTER_PANIC_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    }

    /// `task`, made to panic after `after` if it has not ended by then.
    pub async fn doomed<F: std::future::Future>(after: Option<Duration>, task: F) -> F::Output {
        let Some(after) = after else {
            return task.await;
        };
        tokio::select! {
            out = task => out,
            _ = tokio::time::sleep(after) => {
                panic!("injected fault: the router's bus inbox pump dies after {after:?}")
            }
        }
    }
}

#[cfg(test)]
mod essential_tests {
    use super::EssentialTasks;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_how_it_ended() {
        let mut tasks = EssentialTasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("doomed", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("boom");
        });
        let died = tasks.first_ended().await;
        assert_eq!(died.task, "doomed");
        assert_eq!(died.how, "panicked: boom");
        assert_eq!(died.to_string(), "its doomed panicked: boom");
        tasks.spawn("quitter", async {});
        assert_eq!(tasks.first_ended().await.how, "returned");
        tasks.abort_all();
        assert_eq!(tasks.first_ended().await.how, "was cancelled");
    }

    #[tokio::test]
    async fn with_no_task_nothing_ends() {
        let mut tasks = EssentialTasks::default();
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.first_ended()).await;
        assert!(waited.is_err());
    }
}

#[cfg(test)]
mod spawn_tests {
    use super::*;

    #[test]
    fn newcomers_spread_over_the_spawn_disc_and_always_land_in_the_same_place() {
        let spawn = Vec3::new(-5.0, 0.0, 5.0);
        assert_eq!(spawn_point(spawn, 0.0, PlayerId(7)), spawn);
        let points: Vec<Vec3> = (1..=400)
            .map(|id| spawn_point(spawn, 100.0, PlayerId(id)))
            .collect();
        assert!(points.iter().all(|p| p.distance_xz(spawn) <= 100.0));
        assert_eq!(spawn_point(spawn, 100.0, PlayerId(3)), points[2]);
        // Spread: about as many in the outer half of the disc's area as in
        // the inner half, and consecutive ids not side by side.
        let inner = points
            .iter()
            .filter(|p| p.distance_xz(spawn) < 100.0 / 2f32.sqrt())
            .count();
        assert!(
            (150..250).contains(&inner),
            "{inner} of 400 in the inner half"
        );
        assert!(points[0].distance_xz(points[1]) > 5.0);
    }
}

#[cfg(test)]
mod event_queue_tests {
    use super::*;

    fn heard(k: usize) -> PlayerEvent {
        PlayerEvent::Heard {
            speaker: EntityId(1),
            name: "Ann".into(),
            text: format!("line {k}"),
            emote: false,
        }
    }

    #[test]
    fn a_session_that_does_not_read_gets_lagged_and_nothing_more() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let tx = EventSender(tx);
        for k in 0..EVENT_QUEUE + 50 {
            tx.send(heard(k));
        }
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            got.push(ev);
        }
        assert_eq!(got.len(), EVENT_QUEUE, "bounded");
        assert_eq!(
            got[..EVENT_QUEUE - 1],
            (0..EVENT_QUEUE - 1).map(heard).collect::<Vec<_>>()[..]
        );
        assert_eq!(
            got.last(),
            Some(&PlayerEvent::Lagged),
            "the last place ends the session"
        );
    }

    #[test]
    fn a_session_that_reads_never_lags() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let tx = EventSender(tx);
        for k in 0..EVENT_QUEUE * 3 {
            tx.send(heard(k));
            assert_eq!(rx.try_recv().ok(), Some(heard(k)));
        }
    }
}
