//! Every role's HTTP endpoint for `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//! Written here rather than using the exporter's listener so the bound address (port 0 in
//! tests) can be printed, and so it runs with the connection cap and timeouts of
//! [`tessera_asset::http_server`] (docs/operations.md, "HTTP limits").

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_asset::http_server::{serve_http, HttpLimits};
use tokio::net::TcpListener;

static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// A readiness check: `Err(reason)` while the role cannot serve.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

static READINESS: std::sync::Mutex<Vec<(String, Check)>> = std::sync::Mutex::new(Vec::new());

/// How long `/readyz` waits for all checks.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// This process's metrics in the Prometheus text format, once installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

/// Adds a check that `/readyz` runs (blocking is fine: checks run off the
/// async threads). With none, `/readyz` answers like `/healthz`.
pub fn set_readiness(name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
    let mut checks = READINESS.lock().unwrap_or_else(|e| e.into_inner());
    checks.retain(|(n, _)| n != name);
    checks.push((name.to_string(), Arc::new(check)));
}

/// Runs every readiness check; the failures, one line each.
async fn readiness() -> Result<(), String> {
    let checks: Vec<(String, Check)> = READINESS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let run = tokio::task::spawn_blocking(move || {
        let failures: Vec<String> = checks
            .iter()
            .filter_map(|(name, check)| check().err().map(|e| format!("{name}: {e}")))
            .collect();
        failures
    });
    match tokio::time::timeout(READINESS_TIMEOUT, run).await {
        Ok(Ok(failures)) if failures.is_empty() => Ok(()),
        Ok(Ok(failures)) => Err(failures.join("\n")),
        Ok(Err(e)) => Err(format!("readiness check failed: {e}")),
        Err(_) => Err(format!(
            "readiness checks did not finish within {} s",
            READINESS_TIMEOUT.as_secs()
        )),
    }
}

/// Installs the global metrics recorder (duration histograms with buckets
/// around the tick budget) once per process, describes Tessera's metrics and
/// serves them on `addr` (every call serves the same metrics on one more
/// address: `tessera up --etcd` runs several roles in one process). Returns
/// the bound address.
pub async fn install(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = match HANDLE.get() {
        Some(h) => h.clone(),
        None => {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.1, 0.25, 0.5,
                        1.0,
                    ],
                )
                .context("metrics buckets")?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
            describe_metrics();
            HANDLE.get_or_init(|| handle).clone()
        }
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen for metrics on {addr} (another role on this machine? give each \
                 its own --metrics ADDR, such as 127.0.0.1:0 for any free port)"
        )
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, handle, HttpLimits::metrics()));
    Ok(bound)
}

/// Serves [`routes`] on `listener` with `limits` until the task is dropped.
async fn serve(listener: TcpListener, handle: PrometheusHandle, limits: HttpLimits) {
    let addr = listener.local_addr().ok();
    if let Err(e) = serve_http(listener, routes(handle), "metrics", limits).await {
        tracing::error!(?addr, error = %e, "the metrics endpoint stopped");
    }
}

/// `/metrics`, `/healthz` and `/readyz`; 404 for anything else.
fn routes(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let page = handle.render();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { text(StatusCode::OK, "ok\n".into()) }),
        )
        .route(
            "/readyz",
            get(|| async {
                match readiness().await {
                    Ok(()) => text(StatusCode::OK, "ok\n".into()),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready\n{why}\n"),
                    ),
                }
            }),
        )
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found; try /metrics\n".into()) })
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "tessera_gateway_connections",
        "Telnet connections a telnet gateway holds"
    );
    metrics::describe_gauge!(
        "tessera_gateway_players",
        "Telnet players in the world through a telnet gateway"
    );
    metrics::describe_gauge!(
        "tessera_gateway_routers",
        "Routers a telnet gateway may put players on (registered, not draining)"
    );
    metrics::describe_gauge!(
        "tessera_gateway_draining",
        "1 while a telnet gateway drains (refuses new connections)"
    );
    metrics::describe_counter!(
        "tessera_gateway_resumes_total",
        "Players a telnet gateway resumed on another router after theirs stopped or was lost"
    );
    metrics::describe_counter!(
        "tessera_gateway_resume_failures_total",
        "Players a telnet gateway could not resume on any router in time"
    );
    metrics::describe_histogram!(
        "tessera_gateway_resume_seconds",
        metrics::Unit::Seconds,
        "From losing a player's router to the player resumed on another"
    );
    metrics::describe_histogram!(
        "tessera_shard_tick_seconds",
        metrics::Unit::Seconds,
        "Time to simulate one tick of all of a shard's cells"
    );
    metrics::describe_gauge!("tessera_shard_entities", "Entities owned by a cell");
    metrics::describe_gauge!("tessera_shard_players", "Players in a cell");
    metrics::describe_gauge!(
        "tessera_shard_ghosts",
        "Ghost copies of neighbours' entities in a cell"
    );
    metrics::describe_gauge!("tessera_shard_cells", "Cells the shard owns now");
    metrics::describe_histogram!(
        "tessera_shard_migration_stall_seconds",
        metrics::Unit::Seconds,
        "Time a live-migrated cell was frozen, from the source's freeze to the target's open"
    );
    metrics::describe_gauge!(
        "tessera_shard_tick_utilization_ratio",
        "Mean tick time over the last 300 ticks as a fraction of the tick budget"
    );
    metrics::describe_counter!(
        "tessera_shard_handoffs_total",
        "Entities handed to a neighbour cell (kind: local on this shard, remote to another)"
    );
    metrics::describe_counter!(
        "tessera_shard_tick_overruns_total",
        "Ticks skipped because the shard fell behind"
    );
    metrics::describe_gauge!(
        "tessera_router_connections",
        "Open player connections (telnet and QUIC)"
    );
    metrics::describe_counter!(
        "tessera_router_snapshot_bytes_total",
        "Bytes of snapshot datagrams sent to QUIC clients"
    );
    metrics::describe_counter!(
        "tessera_router_bad_datagrams_total",
        "Malformed datagrams dropped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// An endpoint with `limits` on a free loopback port; it stops with the runtime.
    fn start(limits: HttpLimits) -> (tokio::runtime::Runtime, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = PrometheusBuilder::new().build_recorder().handle();
        runtime.spawn(serve(listener, handle, limits));
        (runtime, addr)
    }

    /// A GET on a new connection: status, content type and body; `None` if the connection
    /// failed.
    fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Some((status, content_type, body.to_string()))
    }

    /// Whether the server closes `stream` within `within` (reading whatever it sends).
    fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let (_runtime, addr) = start(HttpLimits::metrics());
        let (status, content_type, _) = get(addr, "/metrics").unwrap();
        assert_eq!(
            (status, content_type.as_str()),
            (200, "text/plain; version=0.0.4")
        );
        assert_eq!(get(addr, "/healthz").unwrap().2, "ok\n");
        let (status, _, body) = get(addr, "/nothing").unwrap();
        assert_eq!((status, body.as_str()), (404, "not found; try /metrics\n"));
    }

    #[test]
    fn slow_clients_do_not_lock_the_metrics_endpoint() {
        let patience = Duration::from_secs(10);
        let (_runtime, addr) = start(HttpLimits {
            max_connections: 4,
            per_address: 0,
            header_read_timeout: Duration::from_millis(500),
            send_timeout: Duration::from_secs(60),
        });
        // Three times the cap: connections that send nothing, and connections that send a
        // request head a byte every 100 ms and never finish it.
        let mut silent: Vec<TcpStream> =
            (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let dribblers: Vec<_> = (0..6)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                std::thread::spawn(move || {
                    let head = format!("GET /healthz HTTP/1.1\r\nX-Slow: {}", "a".repeat(600));
                    let deadline = Instant::now() + patience;
                    for byte in head.bytes() {
                        if s.write_all(&[byte]).is_err() {
                            return true;
                        }
                        if Instant::now() > deadline {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    false
                })
            })
            .collect();
        // A scraper still gets an answer soon: the cap refuses what is over it, and the header
        // timeout closes the slow connections it holds.
        let deadline = Instant::now() + patience;
        let answered = loop {
            match get(addr, "/healthz") {
                Some((200, _, body)) => break Some(body),
                _ if Instant::now() > deadline => break None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        assert_eq!(answered.as_deref(), Some("ok\n"));
        for (i, s) in silent.iter_mut().enumerate() {
            assert!(
                closed_within(s, patience),
                "silent connection {i} stayed open"
            );
        }
        for (i, d) in dribblers.into_iter().enumerate() {
            assert!(d.join().unwrap(), "dribbling connection {i} stayed open");
        }
    }
}
