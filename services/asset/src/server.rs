//! The HTTP service: axum handlers that move bytes between HTTP and [`AssetStore`], and check
//! script uploads against [`ScriptRules`] before they are stored.

use crate::blob_body::BlobBody;
use crate::conditional::{self, RangeRequest};
use crate::http_server::{serve_http, HttpLimits};
use crate::scripts::{self, ScriptRefusal, ScriptRules, ScriptSource, UploadVersion};
use crate::store::BlobReader;
use crate::upload_auth::{Claim, Refusal, SignedRequest, SCHEME};
use crate::{
    hash_hex, is_hash_hex, AssetError, AssetName, AssetStore, PutOutcome, MAX_ASSET_BYTES,
};
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_coordinator::operators::Operators;
use tessera_persistence::{Database, StoreError};
use tokio::sync::Semaphore;

/// Renders the metrics page (`GET /metrics`), typically a Prometheus exporter's handle.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// How long an upload's body may take to arrive whole (8 MiB in 120 s is 70 KB/s).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Uploads whose bodies are read at once; more get 503. Each holds up to
/// [`MAX_ASSET_BYTES`] in memory until it is stored, and anyone with a well-formed (not
/// necessarily valid) credential can send one, since the signature covers the body's hash.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// What the asset service needs besides its store.
#[derive(Clone)]
pub struct AssetConfig {
    /// Checks operators' upload signatures (and remembers used ones).
    pub operators: Operators,
    /// Serves `GET /metrics`; `None` answers 404.
    pub metrics: Option<MetricsRender>,
    /// Largest accepted upload; capped at [`MAX_ASSET_BYTES`].
    pub max_asset_bytes: usize,
    /// Connection cap and timeouts of [`serve`].
    pub http: HttpLimits,
    /// How long an upload's body may take to arrive whole; then 408.
    pub upload_timeout: Duration,
    /// Uploads read at once; more get 503.
    pub max_concurrent_uploads: usize,
    /// What script uploads are checked against (the world and the shards' compiler); by
    /// default neither, which refuses every script.
    pub scripts: ScriptRules,
}

impl AssetConfig {
    /// No metrics page, the largest possible assets, no script rules (scripts are refused).
    pub fn new(operators: Operators) -> AssetConfig {
        AssetConfig {
            operators,
            metrics: None,
            max_asset_bytes: MAX_ASSET_BYTES,
            http: HttpLimits::asset(),
            upload_timeout: UPLOAD_TIMEOUT,
            max_concurrent_uploads: MAX_CONCURRENT_UPLOADS,
            scripts: ScriptRules::default(),
        }
    }
}

impl std::fmt::Debug for AssetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetConfig")
            .field("metrics", &self.metrics.is_some())
            .field("max_asset_bytes", &self.max_asset_bytes)
            .field("http", &self.http)
            .field("upload_timeout", &self.upload_timeout)
            .field("max_concurrent_uploads", &self.max_concurrent_uploads)
            .field("scripts", &self.scripts)
            .finish_non_exhaustive()
    }
}

struct App {
    store: AssetStore,
    operators: Operators,
    metrics: Option<MetricsRender>,
    max_asset_bytes: usize,
    upload_timeout: Duration,
    /// One permit per upload being read.
    uploads: Arc<Semaphore>,
    max_concurrent_uploads: usize,
    scripts: ScriptRules,
}

impl App {
    /// The world folder's source of asset `name`, if it is a script of the world.
    fn world_source(&self, name: &AssetName) -> Option<&str> {
        let stem = scripts::script_stem(name.as_str())?;
        self.scripts.world.as_ref()?.source(stem)
    }
}

type Shared = Arc<App>;

/// Serves the asset API on `listener` with `config.http`'s connection cap and timeouts until
/// the task is dropped or aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: Database,
    config: AssetConfig,
) -> std::io::Result<()> {
    tracing::info!(
        addr = %listener.local_addr()?,
        store = %db.describe(),
        "asset service listening"
    );
    let limits = config.http;
    serve_http(listener, router(db, config), "asset", limits).await
}

/// The asset API as a router, for embedding or for tests.
pub fn router(db: Database, config: AssetConfig) -> Router {
    describe_metrics();
    let max_asset_bytes = config.max_asset_bytes.min(MAX_ASSET_BYTES);
    let app = Arc::new(App {
        store: AssetStore::new(db),
        operators: config.operators,
        metrics: config.metrics,
        max_asset_bytes,
        upload_timeout: config.upload_timeout,
        uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
        max_concurrent_uploads: config.max_concurrent_uploads,
        scripts: config.scripts,
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/v1/manifest", get(manifest))
        .route("/v1/blobs/{hash}", get(blob))
        .route("/v1/scripts", get(list_scripts))
        .route("/v1/history/{*name}", get(history))
        .route("/v1/rollback/{*name}", post(rollback))
        .route(
            "/v1/assets/{*name}",
            get(get_asset).put(put_asset).delete(remove_asset),
        )
        .route_layer(middleware::from_fn(count_requests))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

fn describe_metrics() {
    metrics::describe_counter!(
        "tessera_asset_requests_total",
        "HTTP requests answered by the asset service, by route and status"
    );
    metrics::describe_counter!(
        "tessera_asset_bytes_sent_total",
        metrics::Unit::Bytes,
        "Asset content bytes sent in response bodies"
    );
    metrics::describe_counter!(
        "tessera_asset_uploads_total",
        "Accepted asset uploads, by outcome (changed or unchanged)"
    );
    metrics::describe_counter!(
        "tessera_asset_script_refusals_total",
        "Script uploads and rollbacks refused by the script checks, by code (script-name, \
         unknown-script, script-compile, no-script-compiler)"
    );
    metrics::describe_counter!(
        "tessera_asset_changes_total",
        "Accepted rollbacks and removals, by action"
    );
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(req).await;
    count(route, response.status());
    response
}

fn count(route: String, status: StatusCode) {
    metrics::counter!(
        "tessera_asset_requests_total",
        "route" => route,
        "status" => status.as_str().to_owned()
    )
    .increment(1);
}

/// An error answer: `{"error": message, ...details}` with `status`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// More fields of the body (a script refusal's `code`, `line`, `known`, ...).
    details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.details.insert(key.to_string(), value.into());
        self
    }

    fn too_large(size: Option<u64>, max: usize) -> ApiError {
        let size = size.map_or_else(|| "larger".to_string(), |s| format!("{s} bytes,"));
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the asset is {size} more than the limit of {max} bytes ({} MiB); split it \
                 into smaller assets",
                max / (1024 * 1024)
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), self.message.into());
        let mut response = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(SCHEME));
        }
        response
    }
}

impl From<AssetError> for ApiError {
    fn from(err: AssetError) -> ApiError {
        let status = match &err {
            AssetError::InvalidName { .. } => StatusCode::BAD_REQUEST,
            AssetError::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
            AssetError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AssetError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %err, "asset request failed");
        }
        ApiError::new(status, err.to_string())
    }
}

impl From<ScriptRefusal> for ApiError {
    fn from(refusal: ScriptRefusal) -> ApiError {
        metrics::counter!("tessera_asset_script_refusals_total", "code" => refusal.code())
            .increment(1);
        let status = match &refusal {
            ScriptRefusal::Misplaced { .. } => StatusCode::BAD_REQUEST,
            ScriptRefusal::Unknown { .. } | ScriptRefusal::Compile { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ScriptRefusal::NoCompiler => StatusCode::NOT_IMPLEMENTED,
        };
        let error = ApiError::new(status, refusal.to_string()).with("code", refusal.code());
        match refusal {
            ScriptRefusal::Misplaced { suggestion, .. } => error.with("suggestion", suggestion),
            ScriptRefusal::Unknown { known, closest, .. } => error
                .with("known", known)
                .with("suggestion", closest.map(|c| scripts::script_name(&c))),
            ScriptRefusal::Compile { error: e, .. } => error
                .with("line", e.line)
                .with("column", e.column)
                .with("message", e.message),
            ScriptRefusal::NoCompiler => error,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Missing(message) => ApiError::new(StatusCode::UNAUTHORIZED, message),
            Refusal::Bad(message) => ApiError::new(StatusCode::FORBIDDEN, message),
            Refusal::Unavailable(message) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
            }
        }
    }
}

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AssetError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(err) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the store call failed: {err}"),
        )),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn readyz(State(app): State<Shared>) -> Result<&'static str, ApiError> {
    let store = app.store.clone();
    blocking(move || store.check()).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the asset store is not readable: {}", e.message),
        )
    })?;
    Ok("ready")
}

async fn metrics_page(State(app): State<Shared>) -> Result<Response, ApiError> {
    let render = app.metrics.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this asset service exports no metrics page",
        )
    })?;
    let page = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response())
}

async fn not_found(req: Request) -> ApiError {
    count("unmatched".into(), StatusCode::NOT_FOUND);
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} (the API lives under /v1)",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}

async fn manifest(State(app): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let manifest = blocking(move || store.manifest()).await?;
    let body = serde_json::to_vec(&manifest)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let etag = format!("\"{}-{}\"", manifest.version, &hash_hex(&body)[..16]);
    let mut response = if header_str(&headers, header::IF_NONE_MATCH)
        .is_some_and(|inm| conditional::none_match(inm, &etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn blob(
    State(app): State<Shared>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = hash.to_ascii_lowercase();
    if !is_hash_hex(&hash) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a blob address (64 hex digits of blake3)"),
        ));
    }
    let etag = format!("\"{hash}\"");
    let store = app.store.clone();
    let wanted = hash.clone();
    let not_modified = header_str(&headers, header::IF_NONE_MATCH)
        .is_some_and(|inm| conditional::none_match(inm, &etag));
    let content = blocking(move || {
        if not_modified {
            // Blobs are immutable: existing is all a revalidation needs.
            return Ok(store.has_blob(&wanted)?.then_some(None));
        }
        Ok(store.open_blob(&wanted)?.map(Some))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no blob {hash}")))?;
    Ok(content_response(
        &headers,
        content,
        &etag,
        IMMUTABLE,
        "application/octet-stream",
    ))
}

async fn get_asset(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let store = app.store.clone();
    let wanted = name.clone();
    let inm = header_str(&headers, header::IF_NONE_MATCH).map(str::to_owned);
    let world = app.world_source(&name).map(str::to_owned);
    let found = blocking(move || {
        let Some(record) = store.record(&wanted)? else {
            // A script the world folder has and no upload overrides: that version runs.
            let Some(source) = world else {
                return Ok(None);
            };
            let hash = hash_hex(source.as_bytes());
            let etag = format!("\"{hash}\"");
            let content = (!inm.is_some_and(|inm| conditional::none_match(&inm, &etag)))
                .then(|| store.reader_of(source.into_bytes()));
            let content_type = wanted.content_type().to_string();
            return Ok(Some((ScriptSource::World, hash, content_type, content)));
        };
        let etag = format!("\"{}\"", record.hash);
        if inm.is_some_and(|inm| conditional::none_match(&inm, &etag)) {
            return Ok(Some((
                ScriptSource::Upload,
                record.hash,
                record.content_type,
                None,
            )));
        }
        let content = store.open_blob(&record.hash)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "asset {wanted} points at blob {} which is missing",
                record.hash
            ))
        })?;
        Ok(Some((
            ScriptSource::Upload,
            record.hash,
            record.content_type,
            Some(content),
        )))
    })
    .await?;
    let (source, hash, content_type, content) = found
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no asset named {name}")))?;
    let mut response = content_response(
        &headers,
        content,
        &format!("\"{hash}\""),
        NO_CACHE,
        &content_type,
    );
    response
        .headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static(source.as_str()));
    Ok(response)
}

/// Says where a named asset's bytes come from: `upload` (the store) or `world` (a script of
/// the world folder that no upload overrides).
pub const SOURCE_HEADER: &str = "tessera-source";

fn parse_name(name: &str) -> Result<AssetName, ApiError> {
    AssetName::parse(name).map_err(|reason| {
        ApiError::from(AssetError::InvalidName {
            name: name.to_string(),
            reason,
        })
    })
}

/// The answer for content with `etag`: 304 if the client has it (`content` is `None`), else
/// the content or the requested range of it, streamed from the store (a HEAD reads nothing).
fn content_response(
    headers: &HeaderMap,
    content: Option<BlobReader>,
    etag: &str,
    cache_control: &'static str,
    content_type: &str,
) -> Response {
    let mut response = match content {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(content) => {
            let total = content.len();
            let range = match header_str(headers, header::RANGE) {
                Some(range)
                    if conditional::if_range_allows(
                        header_str(headers, header::IF_RANGE),
                        etag,
                    ) =>
                {
                    conditional::parse_range(range, total)
                }
                _ => RangeRequest::Full,
            };
            let (status, body, content_range) = match range {
                RangeRequest::Full => (StatusCode::OK, content, None),
                RangeRequest::Partial { start, end } => (
                    StatusCode::PARTIAL_CONTENT,
                    content.range(start, end),
                    Some(format!("bytes {start}-{end}/{total}")),
                ),
                RangeRequest::Unsatisfiable => {
                    let mut r = ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        format!(
                            "the range {:?} lies outside the {total} bytes",
                            header_str(headers, header::RANGE).unwrap_or_default()
                        ),
                    )
                    .into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return with_cache_headers(r, etag, cache_control);
                }
            };
            // The body counts tessera_asset_bytes_sent_total as it is sent.
            let mut r = (status, Body::new(BlobBody::new(body))).into_response();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    response
        .headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    with_cache_headers(response, etag, cache_control)
}

fn with_cache_headers(mut response: Response, etag: &str, cache_control: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// An upload's body, whole: at most `max_asset_bytes`, arrived within `upload_timeout`.
async fn read_upload(app: &App, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let max = app.max_asset_bytes;
    let read = Limited::new(body, max).collect();
    let collected = tokio::time::timeout(app.upload_timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload did not arrive within {} s",
                    app.upload_timeout.as_secs_f64()
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(ApiError::too_large(None, max)),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the upload: {err}"),
        )),
    }
}

/// The query of a PUT: `?force=true` lets a script no NPC runs through (signed).
#[derive(Debug, Default, Deserialize)]
struct PutParams {
    #[serde(default)]
    force: bool,
}

/// What a PUT is checked for before its body is read: the name (a script's too), the
/// credential's form and time, and the declared size.
struct Upload {
    name: AssetName,
    claim: Claim,
    force: bool,
    /// The stem, if the asset is a script.
    script: Option<String>,
}

impl FromRequestParts<Shared> for Upload {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Upload, ApiError> {
        let Change { name, claim } = Change::from_request_parts(parts, app).await?;
        let Query(params) = Query::<PutParams>::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let declared =
            header_str(&parts.headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared.filter(|&s| s > app.max_asset_bytes as u64) {
            return Err(ApiError::too_large(Some(size), app.max_asset_bytes));
        }
        // Cheap, so before the body is read.
        let script = scripts::check_name(&app.scripts, &name, params.force)?;
        Ok(Upload {
            name,
            claim,
            force: params.force,
            script,
        })
    }
}

/// A signed request that changes a name (an upload, a rollback, a removal): its credential, checked for form
/// and time, and the name.
struct Change {
    name: AssetName,
    claim: Claim,
}

impl FromRequestParts<Shared> for Change {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Change, ApiError> {
        let claim = Claim::parse(
            header_str(&parts.headers, header::AUTHORIZATION),
            now_unix_ms(),
        )?;
        let Path(name) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        Ok(Change {
            name: parse_name(&name)?,
            claim,
        })
    }
}

/// Compiles script content off the async workers.
async fn check_script(
    app: &Shared,
    name: &AssetName,
    stem: &str,
    content: axum::body::Bytes,
) -> Result<(), ApiError> {
    let (app, name, stem) = (app.clone(), name.to_string(), stem.to_string());
    tokio::task::spawn_blocking(move || {
        scripts::check_content(&app.scripts, &name, &stem, &content)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(ApiError::from)
}

async fn put_asset(
    State(app): State<Shared>,
    upload: Upload,
    body: Body,
) -> Result<Response, ApiError> {
    // Held until the content is stored: it bounds the memory uploads hold.
    let _slot = app.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this service already reads {} uploads at once, its maximum; try again",
                app.max_concurrent_uploads
            ),
        )
    })?;
    let body = read_upload(&app, body).await?;
    let hash = hash_hex(&body);
    upload
        .claim
        .verify(
            &app.operators,
            &SignedRequest::Put {
                name: upload.name.as_str(),
                hash: &hash,
                force: upload.force,
            },
        )
        .await?;
    if let Some(stem) = &upload.script {
        check_script(&app, &upload.name, stem, body.clone()).await?;
    }
    let by = format!("operator:{}", upload.claim.sig.operator);
    let store = app.store.clone();
    let name = upload.name.clone();
    let outcome = blocking(move || store.put(&name, &body, &by, now_unix_ms())).await?;
    let (status, record, outcome_label) = match outcome {
        PutOutcome::Changed(record) => (StatusCode::CREATED, record, "changed"),
        PutOutcome::Unchanged(record) => (StatusCode::OK, record, "unchanged"),
    };
    metrics::counter!("tessera_asset_uploads_total", "outcome" => outcome_label).increment(1);
    tracing::info!(
        asset = %upload.name,
        hash = %record.hash,
        size = record.size,
        operator = %upload.claim.sig.operator,
        outcome = outcome_label,
        forced = upload.force,
        "asset upload"
    );
    Ok((
        status,
        Json(serde_json::json!({
            "name": upload.name.as_str(),
            "hash": record.hash,
            "size": record.size,
        })),
    )
        .into_response())
}

/// The query of a rollback: the version to make current.
#[derive(Debug, Deserialize)]
struct RollbackParams {
    hash: String,
}

/// `POST /v1/rollback/<name>?hash=<hex>`: makes a version of the name's history current
/// again (a script is compiled again first: the engine may have changed since).
async fn rollback(
    State(app): State<Shared>,
    change: Change,
    params: Result<Query<RollbackParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(RollbackParams { hash }) = params.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "a rollback names the version to make current: ?hash=<64 hex digits> \
             (tessera ctl asset history NAME lists them)",
        )
    })?;
    let hash = hash.to_ascii_lowercase();
    if !is_hash_hex(&hash) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a version (64 hex digits of blake3)"),
        ));
    }
    let Change { name, claim } = change;
    claim
        .verify(
            &app.operators,
            &SignedRequest::Rollback {
                name: name.as_str(),
                hash: &hash,
            },
        )
        .await?;
    if let Some(stem) = scripts::script_stem(name.as_str()) {
        let store = app.store.clone();
        let wanted = hash.clone();
        let content = blocking(move || store.blob(&wanted)).await?;
        if let Some(content) = content {
            check_script(&app, &name, stem, content.into()).await?;
        }
    }
    let by = format!("operator:{}", claim.sig.operator);
    let store = app.store.clone();
    let (wanted, target) = (name.clone(), hash.clone());
    let outcome = blocking(move || store.rollback(&wanted, &target, &by, now_unix_ms())).await?;
    let (changed, record) = match outcome {
        PutOutcome::Changed(record) => (true, record),
        PutOutcome::Unchanged(record) => (false, record),
    };
    if changed {
        metrics::counter!("tessera_asset_changes_total", "action" => "rollback").increment(1);
    }
    tracing::info!(
        asset = %name,
        hash = %record.hash,
        operator = %claim.sig.operator,
        changed,
        "asset rollback"
    );
    Ok(Json(serde_json::json!({
        "name": name.as_str(),
        "hash": record.hash,
        "size": record.size,
        "changed": changed,
    }))
    .into_response())
}

/// `DELETE /v1/assets/<name>`: removes the name's current upload; a script's world folder
/// version runs again.
async fn remove_asset(State(app): State<Shared>, change: Change) -> Result<Response, ApiError> {
    let Change { name, claim } = change;
    claim
        .verify(
            &app.operators,
            &SignedRequest::Remove {
                name: name.as_str(),
            },
        )
        .await?;
    let by = format!("operator:{}", claim.sig.operator);
    let store = app.store.clone();
    let wanted = name.clone();
    let removed = blocking(move || store.remove(&wanted, &by, now_unix_ms()))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no upload of {name} to remove"),
            )
        })?;
    metrics::counter!("tessera_asset_changes_total", "action" => "remove").increment(1);
    let world = app.world_source(&name).map(scripts::WorldVersion::of);
    tracing::info!(
        asset = %name,
        hash = %removed.hash,
        operator = %claim.sig.operator,
        world = world.is_some(),
        "asset removed"
    );
    Ok(Json(serde_json::json!({
        "name": name.as_str(),
        "removed": removed.hash,
        "in_effect": world.map(|w| serde_json::json!({
            "source": ScriptSource::World,
            "hash": w.hash,
            "size": w.size,
        })),
    }))
    .into_response())
}

/// `GET /v1/history/<name>`: the name's current version, the world folder's (for a script),
/// every change oldest first, and what a rollback without a hash would go back to.
async fn history(
    State(app): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let store = app.store.clone();
    let wanted = name.clone();
    let history = blocking(move || store.history(&wanted)).await?;
    let world = app.world_source(&name).map(scripts::WorldVersion::of);
    if history.entries.is_empty() && history.current.is_none() && world.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no asset named {name} was ever uploaded"),
        ));
    }
    let in_effect = match (&history.current, &world) {
        (Some(_), _) => Some(ScriptSource::Upload),
        (None, Some(_)) => Some(ScriptSource::World),
        (None, None) => None,
    };
    Ok(Json(serde_json::json!({
        "name": name.as_str(),
        "in_effect": in_effect,
        "current": history.current,
        "world": world,
        "previous": history.previous().and_then(|e| e.hash.clone()),
        "entries": history.entries,
    }))
    .into_response())
}

/// `GET /v1/scripts`: every script the world runs or an operator uploaded, and which version
/// of each is in effect.
async fn list_scripts(State(app): State<Shared>) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let (_, records) = blocking(move || store.records()).await?;
    let uploads: BTreeMap<String, UploadVersion> = records
        .into_iter()
        .filter(|(name, _)| scripts::script_stem(name).is_some())
        .map(|(name, r)| {
            let upload = UploadVersion {
                hash: r.hash,
                size: r.size,
                updated_unix_ms: r.updated_unix_ms,
                by: r.by,
            };
            (name, upload)
        })
        .collect();
    let view = scripts::scripts_view(app.scripts.world.as_ref(), &uploads);
    Ok(Json(view).into_response())
}
