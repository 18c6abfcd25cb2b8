//! The telnet gateway (`tessera telnet-gateway`): the process that holds
//! text players' telnet connections in a cluster and plays each of them as
//! a relayed text session on a router (QUIC, `ClientMsg::Relay`, mutual TLS
//! with the cluster CA). Routers can then restart or roll without dropping
//! a telnet player: when a router stops (close code `CLOSE_RESTART`) or is
//! lost, the gateway resumes the player's session on another router with
//! its token (docs/deploy.md, "The telnet gateway").
//!
//! The player reads exactly the screen a router's own telnet port shows:
//! both run the same pure [`tessera_router::dialogue::Dialogue`]; in the
//! world every line goes to the router as `ClientMsg::Command`. This crate
//! only moves bytes and picks routers; it never simulates and keeps no
//! state but its connections.
//!
//! The gateway drains rather than drops: on shutdown it stops accepting,
//! keeps its players until they leave, warns those still there a minute
//! before `drain_timeout`, and then lets them go with their positions
//! saved.
//!
//! A gateway whose accept loop dies (a panic) would only seem alive: it
//! registers nothing in the cluster store, so nothing else would notice.
//! [`run`] then stops at once with [`GatewayError::TaskDied`] (the process
//! exits non-zero and Kubernetes restarts it), closing its router links so
//! the routers take its players out of the world and save them now.

mod conn;
pub mod routers;

use parking_lot::Mutex;
use routers::RouterSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_router::caps::AddressCaps;
use tessera_router::telnet_gateway;
use tessera_router::{EssentialTasks, TaskDied};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How a gateway runs.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub id: String,
    /// Longest telnet line, bytes.
    pub max_line: usize,
    /// Connections beyond this are refused with a message.
    pub max_connections: usize,
    /// Connections whose player typed nothing this long are closed.
    pub idle_timeout: Duration,
    /// Connections not logged in this long after they opened are closed.
    pub login_timeout: Duration,
    /// After a shutdown begins, players may stay this long.
    pub drain_timeout: Duration,
    /// How long a player whose router stopped or was lost waits for
    /// another one before the gateway gives up on them.
    pub resume_within: Duration,
    /// Connections one client address (IPv6: /64) may hold at once (0: no
    /// cap).
    pub connections_per_address: usize,
    /// Addresses that cap leaves alone (loopback by default).
    pub limit_exempt: tessera_auth::AddressSet,
}

impl GatewayConfig {
    pub fn new(id: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            id: id.into(),
            max_line: 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30 * 60),
            login_timeout: tessera_router::LOGIN_TIMEOUT,
            drain_timeout: Duration::from_secs(3600),
            resume_within: Duration::from_secs(30),
            connections_per_address: tessera_router::caps::CONNECTIONS_PER_ADDRESS,
            limit_exempt: tessera_auth::AddressSet::default(),
        }
    }
}

/// How long before the end of a drain the players still here are warned.
pub const DRAIN_WARNING: Duration = Duration::from_secs(60);

/// Where a gateway is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Shutting down: no new connections; players may stay until the
    /// deadline.
    Draining {
        until: tokio::time::Instant,
    },
}

/// The shared state of one gateway.
pub struct Gateway {
    pub config: GatewayConfig,
    pub routers: RouterSet,
    /// The QUIC endpoint every relayed session uses (pinned to the routers'
    /// certificate, showing this member's certificate).
    endpoint: quinn::Endpoint,
    connections: AtomicUsize,
    phase: watch::Sender<Phase>,
    /// The world's name, from the newest router welcome.
    world_name: Mutex<String>,
    /// Open connections per client address.
    caps: Arc<AddressCaps>,
    /// Players in the world through this gateway.
    players: AtomicUsize,
    /// When the gateway started, Unix seconds (MSSP's UPTIME).
    started_unix: u64,
    /// The telnet and telnet-over-TLS ports it listens on, once it does.
    ports: std::sync::OnceLock<(u16, Option<u16>)>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        routers: RouterSet,
        endpoint: quinn::Endpoint,
    ) -> Arc<Gateway> {
        let caps = AddressCaps::new(config.connections_per_address, config.limit_exempt.clone());
        Arc::new(Gateway {
            caps,
            config,
            routers,
            endpoint,
            connections: AtomicUsize::new(0),
            phase: watch::channel(Phase::Serving).0,
            world_name: Mutex::new(String::new()),
            players: AtomicUsize::new(0),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ports: std::sync::OnceLock::new(),
        })
    }

    /// What MSSP tells a crawler: the world, the players in it through this
    /// gateway, since when it runs, and its telnet ports.
    pub fn mssp_info(&self) -> tessera_router::dialogue::MsspInfo {
        let (port, tls_port) = self.ports.get().copied().unwrap_or((0, None));
        tessera_router::dialogue::MsspInfo {
            name: self.world_name.lock().clone(),
            players: self.players.load(Ordering::Relaxed),
            started_unix: self.started_unix,
            port,
            tls_port,
        }
    }

    /// A player entered (`true`) or left the world through this gateway.
    pub(crate) fn count_player(&self, entered: bool) {
        if entered {
            self.players.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("tessera_gateway_players").increment(1.0);
        } else {
            self.players.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("tessera_gateway_players").decrement(1.0);
        }
    }

    /// Telnet connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Draining { .. })
    }

    /// Why this gateway cannot take players now, if it cannot.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: this gateway is shutting down".into());
        }
        if self.routers.available() == 0 {
            return Err("no router is registered (or every one is draining)".into());
        }
        Ok(())
    }
}

/// Counts a connection while it lives.
struct ConnectionSlot(Arc<Gateway>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("tessera_gateway_connections").decrement(1.0);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A task the gateway cannot serve without ended while it was serving; it stopped at once.
    #[error("the telnet gateway stopped because {0}")]
    TaskDied(TaskDied),
}

/// Serves telnet on `listener` (and telnet over TLS on `tls`, if given)
/// until `shutdown` resolves, then drains: closes the listeners, keeps the
/// players it has until they leave or the drain timeout passes, and
/// returns. If an accept loop dies first, it stops at once and says which
/// (see the crate documentation).
pub async fn run(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), GatewayError> {
    metrics::gauge!("tessera_gateway_draining").set(0.0);
    let _ = gateway.ports.set((
        listener.local_addr().map_or(0, |a| a.port()),
        tls.as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port()),
    ));
    let mut accepting = EssentialTasks::default();
    let gw = gateway.clone();
    accepting.spawn("telnet accept loop", async move {
        accept_loop(gw, listener, None).await
    });
    if let Some((listener, acceptor)) = tls {
        let gw = gateway.clone();
        accepting.spawn("telnet-over-TLS accept loop", async move {
            accept_loop(gw, listener, Some(acceptor)).await
        });
    }
    let gauge = {
        let gw = gateway.clone();
        tokio::spawn(async move {
            loop {
                metrics::gauge!("tessera_gateway_routers").set(gw.routers.available() as f64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let died = tokio::select! {
        _ = shutdown => None,
        died = accepting.first_ended() => Some(died),
    };
    if let Some(died) = died {
        tracing::error!(gateway = %gateway.config.id, task = died.task, how = %died.how, players = gateway.connections(), "an essential task ended; the telnet gateway stops at once");
        metrics::counter!("tessera_gateway_task_deaths_total", "task" => died.task).increment(1);
        accepting.abort_all();
        gauge.abort();
        // The routers see the relayed sessions end now (not after their idle timeout):
        // each takes its player out of the world and saves the position.
        gateway.endpoint.close(0u32.into(), b"gateway failed");
        // Briefly, for the close to reach the routers before the process is gone.
        let _ =
            tokio::time::timeout(Duration::from_millis(250), gateway.endpoint.wait_idle()).await;
        return Err(GatewayError::TaskDied(died));
    }
    // Closing the listener refuses new connections at once; the players
    // here stay (their TCP connections do not go through the listener).
    accepting.shutdown().await;
    let until = tokio::time::Instant::now() + gateway.config.drain_timeout;
    let _ = gateway.phase.send(Phase::Draining { until });
    metrics::gauge!("tessera_gateway_draining").set(1.0);
    tracing::info!(
        gateway = %gateway.config.id,
        players = gateway.connections(),
        drain_secs = gateway.config.drain_timeout.as_secs(),
        "telnet gateway draining: no new connections; players stay until they leave"
    );
    // Connections end themselves at the deadline; give them a moment more
    // to say goodbye and log out.
    let hard_stop = until + Duration::from_secs(5);
    while gateway.connections() > 0 && tokio::time::Instant::now() < hard_stop {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gauge.abort();
    gateway.endpoint.close(0u32.into(), b"gateway stopped");
    tracing::info!(gateway = %gateway.config.id, left = gateway.connections(), "telnet gateway stopped");
    Ok(())
}

/// Fault injection for the fault tests (cargo feature `fault-injection`, which only test
/// builds turn on): a gateway started with `TESSERA_FAULT_GATEWAY_PANIC_AT_CONNECTION=N` has
/// its (plain) telnet accept loop panic when it accepts its N-th connection.
#[cfg(feature = "fault-injection")]
mod fault {
    pub fn panic_at_connection() -> Option<u64> {
        std::env::var("TESSERA_FAULT_GATEWAY_PANIC_AT_CONNECTION")
            .ok()
            .and_then(|v| v.parse().ok())
    }
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    #[cfg(feature = "fault-injection")]
    let (mut accepted, panic_at) = (0u64, fault::panic_at_connection().filter(|_| tls.is_none()));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                #[cfg(feature = "fault-injection")]
                {
                    accepted += 1;
                    if panic_at == Some(accepted) {
                        panic!("injected fault: the gateway's telnet accept loop dies at connection {accepted}");
                    }
                }
                let transport = if tls.is_some() {
                    "telnet-tls"
                } else {
                    "telnet"
                };
                let Some(address_slot) =
                    tessera_router::caps::admit(&gateway.caps, peer.ip(), transport)
                else {
                    tokio::spawn(telnet_gateway::refuse_over_cap(
                        stream,
                        tls.is_none(),
                        gateway.caps.per_address(),
                    ));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let n = gateway.connections.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!("tessera_gateway_connections").increment(1.0);
                let slot = ConnectionSlot(gateway.clone());
                let gw = gateway.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = (slot, address_slot);
                    let (input, out) = match tls {
                        None => telnet_gateway::plain(stream),
                        Some(acceptor) => {
                            match telnet_gateway::accept_tls(&acceptor, stream, peer).await {
                                Some(halves) => halves,
                                None => return,
                            }
                        }
                    };
                    if n > gw.config.max_connections {
                        conn::refuse(out, "The server is full; please try again later.").await;
                        return;
                    }
                    if let Err(e) = conn::serve(gw, input, out, peer).await {
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
