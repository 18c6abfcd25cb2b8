//! A minimal HTTP/1.1 endpoint for `/metrics` (Prometheus text) and
//! `/healthz`. Written here rather than using the exporter's listener so the
//! bound address (port 0 in tests) can be printed.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, handle));
    Ok(bound)
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut len = 0;
            // Read the request head (bounded); the body is ignored.
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", handle.render()),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" => match readiness().await {
                    Ok(()) => ("200 OK", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("not ready\n{why}\n")),
                },
                _ => ("404 Not Found", "not found; try /metrics\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
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
