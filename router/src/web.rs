//! The web client's page (docs/client.md, "The web client"): the router
//! serves the built bundle (`client/web/dist`, made by
//! `scripts/build-web.sh`) and `/tessera.json`, which tells the page where
//! to open its WebTransport session, the certificate hash to accept in
//! development, and the world to draw. So `tessera up` alone is enough to
//! play in a browser.
//!
//! The files are read once, at start, and kept in memory with a gzip copy;
//! only the files of the bundle's top directory are served, by exact name.
//! The HTTP side has the same limits as every other HTTP port
//! (`tessera_asset::http_server`). A browser opens WebTransport only from a
//! secure context: `http://localhost` and `http://127.0.0.1` are one; any
//! other host needs the page over HTTPS (a TLS-terminating ingress in
//! Kubernetes, docs/deploy.md).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{webtransport, Router, RouterError};

/// Largest bundle the router serves (the three.js bundle is well under a
/// megabyte).
pub const MAX_BUNDLE_BYTES: u64 = 32 * 1024 * 1024;

/// Where the page is served, and from which files.
#[derive(Clone, Debug)]
pub struct WebPage {
    /// The HTTP address of the page.
    pub addr: SocketAddr,
    /// The built bundle (`index.html`, `app.js`, ...).
    pub dir: PathBuf,
    /// The WebTransport URL the page is told, when browsers reach the QUIC
    /// port by another name or port than the page's (a load balancer);
    /// default `https://<the page's host>:<the QUIC port>/tessera`.
    pub public_url: Option<String>,
}

struct File {
    body: Vec<u8>,
    gzip: Vec<u8>,
    content_type: &'static str,
}

/// The bundle, read at start.
pub struct Page {
    files: HashMap<String, File>,
    /// The bundle was missing: `/` says how to build it.
    missing: Option<PathBuf>,
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

impl Page {
    /// Reads the bundle in `dir`. A missing bundle is not an error (the
    /// page then says how to build it); an unreadable or oversized one is.
    pub fn load(dir: &Path) -> Result<Page, RouterError> {
        if !dir.join("index.html").is_file() {
            return Ok(Page {
                files: HashMap::new(),
                missing: Some(dir.to_path_buf()),
            });
        }
        let io = |p: &Path, e: std::io::Error| {
            RouterError::WebClient(format!("cannot read {}: {e}", p.display()))
        };
        let mut files = HashMap::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| io(&path, e))?;
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !meta.is_file() || name.starts_with('.') {
                continue;
            }
            total += meta.len();
            if total > MAX_BUNDLE_BYTES {
                return Err(RouterError::WebClient(format!(
                    "the bundle in {} is over {MAX_BUNDLE_BYTES} bytes",
                    dir.display()
                )));
            }
            let body = std::fs::read(&path).map_err(|e| io(&path, e))?;
            files.insert(
                name.to_string(),
                File {
                    gzip: gzip(&body),
                    body,
                    content_type: content_type(name),
                },
            );
        }
        Ok(Page {
            files,
            missing: None,
        })
    }

    /// The bundle's size: (bytes, gzip bytes) of every file but source maps.
    pub fn size(&self) -> (usize, usize) {
        self.files
            .iter()
            .filter(|(name, _)| !name.ends_with(".map"))
            .fold((0, 0), |(raw, gz), (_, f)| {
                (raw + f.body.len(), gz + f.gzip.len())
            })
    }

    /// Whether the bundle was found.
    pub fn is_built(&self) -> bool {
        self.missing.is_none()
    }
}

struct App {
    router: Arc<Router>,
    page: Page,
    public_url: Option<String>,
}

/// Serves the page on `listener` until the task is dropped.
pub async fn serve(
    router: Arc<Router>,
    listener: tokio::net::TcpListener,
    page: Page,
    public_url: Option<String>,
) {
    let app = Arc::new(App {
        router,
        page,
        public_url,
    });
    let routes = axum::Router::new()
        .route("/tessera.json", axum::routing::get(tessera_json))
        .fallback(axum::routing::get(file))
        .with_state(app);
    let limits = tessera_asset::http_server::HttpLimits::asset();
    if let Err(e) = tessera_asset::http_server::serve_http(listener, routes, "web", limits).await {
        tracing::error!(error = %e, "the web client's HTTP server stopped");
    }
}

/// The host part of a URL that reaches `addr` from this machine: the
/// address itself, or the loopback of its family when it is unspecified
/// (which browsers count as a secure context).
fn url_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => "127.0.0.1".to_string(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => "[::1]".to_string(),
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// The URL to open for the page served on `addr`.
pub fn page_url(addr: SocketAddr) -> String {
    format!("http://{}:{}/", url_host(addr), addr.port())
}

/// The host part of a `Host` header (`example.org:8080` → `example.org`,
/// `[::1]:8080` → `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The WebTransport URL for a page served to `host`.
fn transport_url(host: Option<&str>, quic: SocketAddr) -> String {
    let name = match host.map(host_name).filter(|h| !h.is_empty()) {
        Some(name) => name.to_string(),
        None => url_host(quic),
    };
    format!("https://{name}:{}{}", quic.port(), webtransport::PATH)
}

async fn tessera_json(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let router = &app.router;
    let (Some(addrs), Some(cert)) = (router.listening.get(), router.web_cert()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this router does not take browser players",
        )
            .into_response();
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let url = app
        .public_url
        .clone()
        .unwrap_or_else(|| transport_url(host, addrs.quic));
    let mut world = (*router.world).clone();
    // The world's scripts are the builders' business, not the players'.
    world.scripts.clear();
    let body = serde_json::json!({
        "protocol_version": tessera_proto::PROTOCOL_VERSION,
        "world_name": world.name,
        "server": format!("tessera {}", env!("CARGO_PKG_VERSION")),
        "webtransport": {
            "url": url,
            "certificate_hashes": cert.hashes().iter().map(webtransport::hash_base64).collect::<Vec<_>>(),
        },
        "world": world,
    });
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

async fn file(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(dir) = &app.page.missing {
        let text = format!(
            "The web client is not built: no index.html in {}.\n\
             Build it with scripts/build-web.sh (node and npm), then restart.\n",
            dir.display()
        );
        return (StatusCode::NOT_FOUND, text).into_response();
    }
    let name = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        name => name,
    };
    let Some(f) = app.page.files.get(name) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = if gzip_ok {
        let mut r = f.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        f.body.clone().into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(f.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_url_follows_the_page_host() {
        let quic: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        assert_eq!(
            transport_url(Some("play.example.org:8080"), quic),
            "https://play.example.org:4433/tessera"
        );
        assert_eq!(
            transport_url(Some("[::1]:8080"), quic),
            "https://[::1]:4433/tessera"
        );
        assert_eq!(
            transport_url(Some("localhost"), quic),
            "https://localhost:4433/tessera"
        );
        assert_eq!(transport_url(None, quic), "https://127.0.0.1:4433/tessera");
        let v6: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        assert_eq!(
            transport_url(None, v6),
            "https://[2001:db8::1]:4433/tessera"
        );
    }

    #[test]
    fn a_bundle_is_read_with_its_types_and_a_missing_one_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Page::load(dir.path()).unwrap();
        assert!(!missing.is_built());
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dir.path().join("app.js"), "x".repeat(10_000)).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let page = Page::load(dir.path()).unwrap();
        assert!(page.is_built());
        assert_eq!(page.files.len(), 2, "only the top directory's files");
        assert_eq!(
            page.files["app.js"].content_type,
            "text/javascript; charset=utf-8"
        );
        let (raw, gz) = page.size();
        assert_eq!(raw, 10_015);
        assert!(gz < 200, "{gz}");
    }
}
