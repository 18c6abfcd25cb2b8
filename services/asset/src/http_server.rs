//! HTTP/1 serving that strangers cannot lock up: the asset API ([`crate::serve`]) and every
//! role's metrics endpoint (the `tessera` binary's `metrics_http`) run their axum routers
//! through [`serve_http`].
//!
//! `axum::serve` takes no limits, so connections are driven by hyper's HTTP/1 server directly:
//!
//! - **Connection cap.** At most [`HttpLimits::max_connections`] connections are served at
//!   once. One more is answered `503 Service Unavailable` with `Retry-After: 1` and closed at
//!   once, and counted in `tessera_http_connections_refused_total{server}`; nobody waits in a
//!   queue behind connections that do nothing.
//! - **Header read timeout.** A request head must arrive whole within
//!   [`HttpLimits::header_read_timeout`] of the connection's start or of the end of the
//!   previous answer (hyper's `header_read_timeout`), so a client that sends its headers a
//!   byte a minute, or nothing at all, is closed; so is an idle keep-alive connection.
//! - **Send timeout.** A client that accepts no byte of an answer for
//!   [`HttpLimits::send_timeout`] (a slow reader) is closed.
//!
//! Request bodies are the routes' business: the asset service bounds uploads in size, time
//! and number (docs/assets.md); the metrics endpoint never reads one.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long a client may take to send a request head, and how long a keep-alive connection may
/// sit idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may accept no byte of an answer before its connection is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections the asset service serves at once.
pub const ASSET_MAX_CONNECTIONS: usize = 1024;
/// Connections one address may hold on the asset port (a shard or a client fetching a few
/// blobs at once needs a handful).
pub const ASSET_PER_ADDRESS: usize = 64;
/// Connections one address may hold on a metrics endpoint (Prometheus scrapes with one).
pub const METRICS_PER_ADDRESS: usize = 16;

/// Connections a metrics endpoint serves at once: it is only scraped by Prometheus and probed
/// by health checks.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// How long a refused connection is given to read its 503 before it is dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What one HTTP server allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections one client address (IPv4 address, or IPv6 /64) may hold at once; more
    /// are answered 503 and closed, so one address cannot take every slot (0: no cap).
    pub per_address: usize,
    /// Time for a request head to arrive whole, from the connection's start or the end of the
    /// previous answer (which bounds idle keep-alive connections too).
    pub header_read_timeout: Duration,
    /// Time a client may accept no byte of an answer.
    pub send_timeout: Duration,
}

impl HttpLimits {
    /// The asset service's defaults.
    pub fn asset() -> HttpLimits {
        HttpLimits {
            max_connections: ASSET_MAX_CONNECTIONS,
            per_address: ASSET_PER_ADDRESS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
        }
    }

    /// A metrics endpoint's defaults.
    pub fn metrics() -> HttpLimits {
        HttpLimits {
            max_connections: METRICS_MAX_CONNECTIONS,
            per_address: METRICS_PER_ADDRESS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
        }
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "tessera_http_connections",
        "Open HTTP connections, by server (asset, metrics)"
    );
    metrics::describe_counter!(
        "tessera_http_connections_refused_total",
        "HTTP connections answered 503 and closed: the server held its maximum (reason total) or the client's address its share (reason per_address)"
    );
    metrics::describe_counter!(
        "tessera_http_timeouts_total",
        "HTTP connections closed by a timeout, by server and kind (header: no whole request \
         head in time, or idle; send: the client read nothing of an answer)"
    );
}

/// Serves `app` on `listener` with `limits` until the task is dropped or aborted (it never
/// returns otherwise). `server` labels the metrics: `asset` or `metrics`.
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    server: &'static str,
    limits: HttpLimits,
) -> io::Result<()> {
    describe_metrics();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address =
        tessera_auth::AddressCaps::new(limits.per_address, tessera_auth::AddressSet::none());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. Pause so that a persistent error does not spin.
                tracing::debug!(server, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            metrics::counter!("tessera_http_connections_refused_total", "server" => server, "reason" => "per_address")
                .increment(1);
            tracing::debug!(server, %peer, "too many HTTP connections from one address; refused one");
            tokio::spawn(refuse(
                stream,
                format!(
                    "your address already holds {} connections, the most one address may",
                    limits.per_address
                ),
            ));
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("tessera_http_connections_refused_total", "server" => server, "reason" => "total")
                .increment(1);
            tracing::debug!(server, %peer, "too many HTTP connections; refused one");
            tokio::spawn(refuse(
                stream,
                format!(
                    "the server already holds its maximum of {} connections",
                    limits.max_connections
                ),
            ));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            let open = metrics::gauge!("tessera_http_connections", "server" => server);
            open.increment(1.0);
            let io = TokioIo::new(SendDeadline::new(stream, limits.send_timeout));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, service)
                .await;
            open.decrement(1.0);
            if let Err(e) = served {
                if let Some(kind) = timeout_kind(&e) {
                    metrics::counter!(
                        "tessera_http_timeouts_total",
                        "server" => server,
                        "kind" => kind
                    )
                    .increment(1);
                }
                tracing::debug!(server, %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Which of our timeouts ended a connection, if one did.
fn timeout_kind(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        return Some("header");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return Some("send");
        }
        source = s.source();
    }
    None
}

/// Answers a connection over the cap with a 503 and closes it. The request (if any arrived) is
/// read and dropped for a moment first, so that closing does not reset the connection before
/// the client has read the answer.
async fn refuse(mut stream: TcpStream, why: String) {
    let body = format!("{{\"error\":\"{why}; try again\"}}");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// A connection whose writes fail with [`io::ErrorKind::TimedOut`] once the peer has accepted
/// no byte for `timeout`. Reads are left alone: hyper bounds waiting for a request head, and
/// routes bound request bodies.
struct SendDeadline {
    io: TcpStream,
    timeout: Duration,
    /// Armed while a write waits for the peer; cleared by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SendDeadline {
    fn new(io: TcpStream, timeout: Duration) -> SendDeadline {
        SendDeadline {
            io,
            timeout,
            stalled: None,
        }
    }

    /// Called with the result of a write-side poll: keeps it, or turns a wait longer than the
    /// timeout into an error.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stall = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {} s", timeout.as_secs_f64()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}
