//! The asset service over real HTTP on loopback, with a redb store in a temporary directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tessera_asset::http_server::HttpLimits;
use tessera_asset::scripts::{CompileError, ScriptCompiler, ScriptRules, WorldScripts};
use tessera_asset::upload_auth::SignedRequest;
use tessera_asset::{
    hash_hex, serve, upload_auth, AssetClient, AssetConfig, AssetError, ManifestFetch,
};
use tessera_coordinator::operators::{OperatorKey, OperatorRecord, Operators, Voucher};
use tessera_coordinator::pki::ClusterCa;
use tessera_coordinator::{ClusterStore, MemStore};
use tessera_persistence::{key, set_chunked, Backend, Database, StoreError, Transaction};

struct AnythingCompiles;

impl ScriptCompiler for AnythingCompiles {
    fn check(&self, _: &str, _: &str) -> Result<(), CompileError> {
        Ok(())
    }
}

/// A plain upload of content `hash` as `name`.
fn put_request<'a>(name: &'a str, hash: &'a str) -> SignedRequest<'a> {
    SignedRequest::Put {
        name,
        hash,
        force: false,
    }
}

/// One asset service on a free loopback port; stops when dropped.
struct Service {
    url: String,
    /// An operator of this service's cluster.
    ann: OperatorKey,
    _runtime: tokio::runtime::Runtime,
    _dir: Option<tempfile::TempDir>,
}

impl Service {
    fn start() -> Service {
        Service::start_with(|_| {})
    }

    /// A service whose configuration `configure` changed (limits, mostly).
    fn start_with(configure: impl FnOnce(&mut AssetConfig)) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        Service::with_db(db, Some(dir), configure)
    }

    fn with_db(
        db: Database,
        dir: Option<tempfile::TempDir>,
        configure: impl FnOnce(&mut AssetConfig),
    ) -> Service {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // The operators, as a cluster keeps them in etcd: Ann, vouched for by a throwaway CA.
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(ca_dir.path()).unwrap();
        let cluster: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(cluster, "/t/", vec![ca.cert().clone()]);
        let ann = OperatorKey::generate("ann").unwrap();
        let record = OperatorRecord::new("ann", &ann.public_hex(), &Voucher::Ca(&ca)).unwrap();
        runtime.block_on(operators.records().put(&record)).unwrap();
        let mut config = AssetConfig::new(operators);
        // These tests are about HTTP: scripts `guard` and `a` are NPCs' and anything compiles
        // (tests/scripts.rs checks scripts with the shards' engine).
        config.scripts = ScriptRules {
            world: Some(WorldScripts::new(
                "test",
                ["guard".to_string(), "a".to_string()],
                Default::default(),
            )),
            compiler: Some(Arc::new(AnythingCompiles)),
        };
        configure(&mut config);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(serve(listener, db, config));
        Service {
            url,
            ann,
            _runtime: runtime,
            _dir: dir,
        }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    fn client(&self) -> AssetClient {
        AssetClient::new(&self.url)
    }

    /// A raw GET (or other method) with extra headers: status, headers, body.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = agent.run(request.body(()).unwrap()).unwrap();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body,
        }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers)
    }
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body))
        });
        v["error"].as_str().expect("no error field").to_string()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn put_get_list_and_revalidate() {
    let svc = Service::start();
    let client = svc.client();
    let ann = svc.ann.clone();
    let v1 = b"fn tick() { 1 }".to_vec();
    let put = client.put("scripts/guard.rhai", &v1, &ann).unwrap();
    assert!(put.changed);
    assert_eq!((put.hash.as_str(), put.size), (hash_hex(&v1).as_str(), 15));
    assert_eq!(client.get("scripts/guard.rhai").unwrap(), v1);
    assert_eq!(client.blob(&put.hash).unwrap(), v1);

    let ManifestFetch::Fresh { manifest, etag } = client.manifest(None).unwrap() else {
        panic!("no manifest");
    };
    assert_eq!(manifest.version, 1);
    let entry = &manifest.assets["scripts/guard.rhai"];
    assert_eq!(entry.hash, put.hash);
    assert_eq!(entry.content_type, "text/plain; charset=utf-8");
    assert!(
        etag.starts_with("\"1-") && etag.len() == 2 + 2 + 16,
        "{etag}"
    );
    assert_eq!(
        client.manifest(Some(&etag)).unwrap(),
        ManifestFetch::NotModified
    );

    // Named and blob answers carry the hash as ETag and revalidate to 304 without a body.
    let named = svc.get("/v1/assets/scripts/guard.rhai", &[]);
    assert_eq!(named.status, 200);
    assert_eq!(named.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(named.header("cache-control"), "no-cache");
    assert_eq!(named.header("accept-ranges"), "bytes");
    let tag = format!("\"{}\"", put.hash);
    assert_eq!(named.header("etag"), tag);
    let blob_path = format!("/v1/blobs/{}", put.hash);
    let blob = svc.get(&blob_path, &[]);
    assert_eq!(
        blob.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(blob.header("etag"), tag);
    for path in ["/v1/assets/scripts/guard.rhai", blob_path.as_str()] {
        let r = svc.get(path, &[("If-None-Match", &tag)]);
        assert_eq!((r.status, r.body.len()), (304, 0), "{path}");
        assert_eq!(r.header("etag"), tag);
        assert_eq!(svc.get(path, &[("If-None-Match", "\"other\"")]).status, 200);
    }
    let r = svc.get("/v1/manifest", &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    // HEAD: the headers of a GET, no body.
    let head = svc.request("HEAD", &blob_path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), "15");
    assert!(head.body.is_empty());

    // New content: new manifest ETag, new named content; the old blob stays.
    let v2 = b"fn tick() { 2 }".to_vec();
    assert!(client.put("scripts/guard.rhai", &v2, &ann).unwrap().changed);
    let ManifestFetch::Fresh {
        manifest,
        etag: etag2,
    } = client.manifest(Some(&etag)).unwrap()
    else {
        panic!("manifest not refreshed");
    };
    assert_ne!(etag, etag2);
    assert_eq!(manifest.version, 2);
    assert_eq!(client.get("scripts/guard.rhai").unwrap(), v2);
    assert_eq!(
        svc.get("/v1/assets/scripts/guard.rhai", &[("If-None-Match", &tag)])
            .status,
        200
    );
    assert_eq!(client.blob(&put.hash).unwrap(), v1);

    // The same content again changes nothing.
    let again = client.put("scripts/guard.rhai", &v2, &ann).unwrap();
    assert!(!again.changed);
    assert_eq!(
        client.manifest(Some(&etag2)).unwrap(),
        ManifestFetch::NotModified
    );
}

#[test]
fn single_ranges_are_served_exactly() {
    let svc = Service::start();
    let content: Vec<u8> = (0..100u8).collect();
    let hash = svc
        .client()
        .put("meshes/m.glb", &content, &svc.ann.clone())
        .unwrap()
        .hash;
    for path in [
        format!("/v1/blobs/{hash}"),
        "/v1/assets/meshes/m.glb".to_string(),
    ] {
        for (range, bytes, content_range) in [
            ("bytes=0-9", &content[0..10], "bytes 0-9/100"),
            ("bytes=10-", &content[10..], "bytes 10-99/100"),
            ("bytes=-5", &content[95..], "bytes 95-99/100"),
        ] {
            let r = svc.get(&path, &[("Range", range)]);
            assert_eq!(r.status, 206, "{path} {range}");
            assert_eq!(r.body, bytes, "{path} {range}");
            assert_eq!(r.header("content-range"), content_range);
        }
        let r = svc.get(&path, &[("Range", "bytes=999999-")]);
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), "bytes */100");
        assert!(r.error().contains("outside"), "{}", r.error());
        // Several ranges, or an If-Range naming another version: the whole content.
        let r = svc.get(&path, &[("Range", "bytes=0-1,5-6")]);
        assert_eq!((r.status, r.body.len()), (200, 100));
        let r = svc.get(&path, &[("Range", "bytes=0-1"), ("If-Range", "\"old\"")]);
        assert_eq!((r.status, r.body.len()), (200, 100));
    }
    let r = svc.get("/v1/assets/meshes/m.glb", &[]);
    assert_eq!(r.header("content-type"), "model/gltf-binary");
}

#[test]
fn uploads_need_a_fresh_credential_of_this_cluster() {
    let svc = Service::start();
    let body = b"[world]".to_vec();
    let hash = hash_hex(&body);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/v1/assets/world.toml", svc.url);
    let put = |auth: Option<String>| {
        let mut req = agent.put(&url);
        if let Some(auth) = auth {
            req = req.header("Authorization", &auth);
        }
        let mut r = req.send(&body[..]).unwrap();
        let status = r.status().as_u16();
        let www = r.headers().get("www-authenticate").cloned();
        let v: serde_json::Value =
            serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
        (status, v, www)
    };

    let (status, v, www) = put(None);
    assert_eq!(status, 401);
    assert!(
        v["error"].as_str().unwrap().contains("operator credential"),
        "{v}"
    );
    assert_eq!(www.unwrap(), "Tessera-Operator");

    // A key the cluster does not know, under Ann's name.
    let foreign = OperatorKey::generate("ann").unwrap();
    let auth = upload_auth::authorization(&foreign, &put_request("world.toml", &hash));
    let (status, v, _) = put(Some(auth));
    assert_eq!(status, 403);
    assert!(
        v["error"].as_str().unwrap().contains("does not verify"),
        "{v}"
    );

    let ann = svc.ann.clone();
    let stale = upload_auth::header(&ann.sign_request_at(
        upload_auth::KIND,
        &upload_auth::put_body("world.toml", &hash, false),
        now_ms() - 600_000,
    ));
    let (status, v, _) = put(Some(stale));
    assert_eq!(status, 403);
    assert!(v["error"].as_str().unwrap().contains("clock"), "{v}");

    // Signed for other content: refused.
    let other = upload_auth::authorization(&ann, &put_request("world.toml", &hash_hex(b"x")));
    assert_eq!(put(Some(other)).0, 403);

    let good = upload_auth::authorization(&ann, &put_request("world.toml", &hash));
    let (status, v, _) = put(Some(good.clone()));
    assert_eq!(status, 201);
    // The same request again is a replay: refused.
    let (status, replay, _) = put(Some(good));
    assert_eq!(status, 403);
    assert!(
        replay["error"].as_str().unwrap().contains("already used"),
        "{replay}"
    );
    assert_eq!(v["name"], "world.toml");
    assert_eq!(v["hash"], hash.as_str());
    assert_eq!(v["size"], 7);

    // Through the client, a foreign credential is an actionable Denied error.
    let err = svc.client().put("world.toml", &body, &foreign).unwrap_err();
    assert!(
        matches!(err, AssetError::Denied { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn bad_names_and_unknown_things_are_refused_with_reasons() {
    let svc = Service::start();
    let client = svc.client();
    let ann = svc.ann.clone();
    let long = "a".repeat(300);
    for (name, reason) in [
        ("../x", "\"..\" segment"),
        ("/abs", "starts with '/'"),
        ("a//b", "empty segment"),
        (long.as_str(), "300 characters"),
        ("a b", "' '"),
    ] {
        let err = client.put(name, b"x", &ann).unwrap_err();
        let AssetError::Rejected {
            status, message, ..
        } = &err
        else {
            panic!("{name:?}: {err}");
        };
        assert_eq!(*status, 400, "{name:?}: {err}");
        assert!(message.contains(reason), "{name:?}: {message}");
    }
    let err = client.get("scripts/missing.rhai").unwrap_err();
    assert!(matches!(err, AssetError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no asset named scripts/missing.rhai"),
        "{err}"
    );
    let err = client.blob(&hash_hex(b"never stored")).unwrap_err();
    assert!(matches!(err, AssetError::NotFound { .. }), "{err}");
    let r = svc.get("/v1/blobs/not-a-hash", &[]);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("64 hex digits"));
    let r = svc.get("/v2/nothing", &[]);
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/v1"));
    let r = svc.request("POST", "/v1/assets/x", &[]);
    assert_eq!(r.status, 405);
    assert!(r.error().contains("POST"));
    // A removal is an operator's signed request (tests/scripts.rs).
    let r = svc.request("DELETE", "/v1/assets/x", &[]);
    assert_eq!(r.status, 401);
}

#[test]
fn uploads_over_the_limit_get_413() {
    let svc = Service::start();
    let size = 9 * 1024 * 1024;
    // The client refuses before sending.
    let err = svc
        .client()
        .put("big.bin", &vec![7u8; size], &svc.ann.clone())
        .unwrap_err();
    assert!(matches!(err, AssetError::TooLarge { .. }), "{err}");
    // The server refuses on the declared length, before reading the body.
    let auth = upload_auth::authorization(&svc.ann, &put_request("big.bin", &hash_hex(b"")));
    let addr = svc.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /v1/assets/big.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("more than the limit of 8388608 bytes"),
        "{answer}"
    );
}

#[test]
fn a_chunked_asset_round_trips_and_ranges_cross_chunks() {
    let svc = Service::start();
    let client = svc.client();
    let content: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let put = client
        .put("textures/big.png", &content, &svc.ann.clone())
        .unwrap();
    assert_eq!(client.get("textures/big.png").unwrap(), content);
    assert_eq!(client.blob(&put.hash).unwrap(), content);
    // Chunks are 100 000 bytes: this range spans the first boundary.
    let r = svc.get(
        "/v1/assets/textures/big.png",
        &[("Range", "bytes=99990-100009")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &content[99_990..100_010]);
    assert_eq!(r.header("content-range"), "bytes 99990-100009/1048576");
    // The largest allowed asset also fits (one transaction under the store's limit), and is
    // streamed with its length announced.
    let max: Vec<u8> = (0..tessera_asset::MAX_ASSET_BYTES)
        .map(|i| (i % 249) as u8)
        .collect();
    client.put("max.bin", &max, &svc.ann.clone()).unwrap();
    assert_eq!(client.get("max.bin").unwrap(), max);
    let r = svc.get("/v1/assets/max.bin", &[]);
    assert_eq!(r.header("content-length"), "8388608");
    assert!(r.headers.get("transfer-encoding").is_none());
    assert!(r.body == max);
    let r = svc.get("/v1/assets/max.bin", &[("Range", "bytes=8000000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-length"), "388608");
    assert!(r.body == max[8_000_000..]);
    let head = svc.request("HEAD", "/v1/assets/max.bin", &[]);
    assert_eq!(head.header("content-length"), "8388608");
    assert!(head.body.is_empty());
}

/// Serves one canned HTTP answer to one connection.
fn fake_server(answer: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        stream.write_all(&answer).unwrap();
    });
    url
}

#[test]
fn the_client_detects_tampered_content_and_unreachable_services() {
    let wanted = hash_hex(b"hello");
    let url = fake_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhellO".to_vec(),
    );
    let err = AssetClient::new(&url).blob(&wanted).unwrap_err();
    assert!(matches!(err, AssetError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wanted), "{err}");

    let url = fake_server(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"{wanted}\"\r\n\
             Connection: close\r\n\r\nhellO"
        )
        .into_bytes(),
    );
    let err = AssetClient::new(&url).get("a.txt").unwrap_err();
    assert!(matches!(err, AssetError::HashMismatch { .. }), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = AssetClient::new(&url).manifest(None).unwrap_err();
    assert!(matches!(err, AssetError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach the asset service") && text.contains(&url),
        "{text}"
    );
}

/// A store that is down.
struct Down;

impl Backend for Down {
    fn attempt(
        &self,
        _body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("the test store is down".into()))
    }

    fn describe(&self) -> String {
        "a store that is down".into()
    }

    fn snapshot(&self) -> Result<Arc<dyn tessera_persistence::Snapshot>, StoreError> {
        Err(StoreError::Unavailable("the test store is down".into()))
    }
}

#[test]
fn health_readiness_and_metrics() {
    let svc = Service::with_db(Database::new(Arc::new(Down)), None, |config| {
        config.metrics = Some(Arc::new(|| "tessera_asset_up 1\n".to_string()));
    });
    let r = svc.get("/healthz", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let r = svc.get("/readyz", &[]);
    assert_eq!(r.status, 503);
    assert!(
        r.error().contains("the test store is down"),
        "{}",
        r.error()
    );
    let r = svc.get("/v1/manifest", &[]);
    assert_eq!(r.status, 503);
    assert!(r.error().contains("unavailable"), "{}", r.error());
    let r = svc.get("/metrics", &[]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"tessera_asset_up 1\n"[..])
    );

    let svc = Service::start();
    assert_eq!(svc.get("/readyz", &[]).status, 200);
    let r = svc.get("/metrics", &[]);
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no metrics"));
}

// ------------------------------------------------------------------ abuse limits

/// This test binary's metrics (installed once; counters add up over its tests, so tests
/// compare before and after).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

/// The sum of metric `name`'s samples that carry every label of `labels`.
fn sample(name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (found, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            labels
                .iter()
                .all(|(k, v)| found.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Whether the server has answered on `stream` already (without waiting).
fn answered(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let answered =
        !matches!(stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    answered
}

/// Retries `f` every 50 ms until it returns `Some` or `timeout` passes.
fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A GET on a new connection: the status and the body, or `None` if the connection failed.
fn raw_get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&answer[..split])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, answer[split + 4..].to_vec()))
}

/// What the server sends until it closes the connection; `Err` if it is still open after
/// `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open after {within:?}, {} bytes read",
                got.len()
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "still open after {within:?}, {} bytes read",
                    got.len()
                ))
            }
            // Reset by the server: closed too.
            Err(_) => return Ok(got),
        }
    }
}

/// A client that sends a request head a byte every 100 ms and never finishes it, on its own
/// thread. The thread returns once the server has closed the connection (a write fails), or
/// `Err` if it is still open after `within`.
fn dribble(addr: &str, within: Duration) -> std::thread::JoinHandle<Result<usize, String>> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "GET /v1/manifest HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}",
        "a".repeat(600)
    );
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        for (sent, byte) in head.bytes().enumerate() {
            if stream.write_all(&[byte]).is_err() {
                return Ok(sent);
            }
            if Instant::now() > deadline {
                return Err(format!("still open after {within:?}, {sent} bytes sent"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("sent the whole head a byte at a time and was never cut off".into())
    })
}

/// Limits for tests from one address (loopback): no per-address cap unless a test sets one.
fn limits(max_connections: usize, header_read_timeout: Duration) -> HttpLimits {
    HttpLimits {
        max_connections,
        per_address: 0,
        header_read_timeout,
        send_timeout: Duration::from_secs(60),
    }
}

#[test]
fn connections_over_the_cap_are_refused_with_503_and_counted() {
    let svc = Service::start_with(|c| c.http = limits(3, Duration::from_secs(60)));
    let refused = || {
        sample(
            "tessera_http_connections_refused_total",
            &[("server", "asset")],
        )
    };
    let before = refused();
    // Three connections that send nothing hold every slot (accepted in order, so before the
    // fourth).
    let holders: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(svc.addr()).unwrap())
        .collect();
    let mut extra = TcpStream::connect(svc.addr()).unwrap();
    write!(
        extra,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(10)).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("maximum of 3 connections"), "{answer}");
    assert!(refused() > before, "the refusal was not counted");
    // Once the holders go, others are served again.
    drop(holders);
    let served = eventually(Duration::from_secs(10), || {
        raw_get(svc.addr(), "/healthz").filter(|(status, _)| *status == 200)
    });
    assert!(served.is_some(), "nobody was served after the holders left");
}

/// One address holding its share of connections cannot take the others' slots: its next
/// connection is answered 503 at once, another address is served.
#[test]
fn one_address_cannot_take_every_slot() {
    let svc = Service::start_with(|c| {
        c.http = HttpLimits {
            per_address: 2,
            ..limits(64, Duration::from_secs(60))
        }
    });
    let connect_from = |from: &str| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::new(from.parse().unwrap(), 0).into())
            .unwrap();
        socket
            .connect(&svc.addr().parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        TcpStream::from(socket)
    };
    let held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect_from("127.0.0.1");
    write!(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut third, Duration::from_secs(10)).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("your address already holds 2 connections"),
        "{answer}"
    );
    // Another address is served while the first holds its two.
    let mut other = connect_from("127.0.0.2");
    write!(
        other,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = read_until_closed(&mut other, Duration::from_secs(10)).unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
}

#[test]
fn slow_clients_holding_the_asset_port_do_not_lock_others_out() {
    let patience = Duration::from_secs(10);
    // Below the cap: slow clients do not hold anybody up.
    let svc = Service::start_with(|c| c.http = limits(64, Duration::from_secs(60)));
    let content = b"print(1)".to_vec();
    svc.client()
        .put("scripts/a.rhai", &content, &svc.ann.clone())
        .unwrap();
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(svc.addr()).unwrap())
        .collect();
    let dribblers: Vec<_> = (0..10).map(|_| dribble(svc.addr(), patience)).collect();
    let (status, body) = raw_get(svc.addr(), "/v1/assets/scripts/a.rhai").unwrap();
    assert_eq!((status, body), (200, content.clone()));
    drop((silent, dribblers));

    // Twice as many slow clients as the cap: the cap refuses the rest, and the header timeout
    // closes those it holds, so a normal client is served soon.
    let svc = Service::start_with(|c| c.http = limits(4, Duration::from_millis(500)));
    svc.client()
        .put("scripts/a.rhai", &content, &svc.ann.clone())
        .unwrap();
    let timeouts = || {
        sample(
            "tessera_http_timeouts_total",
            &[("server", "asset"), ("kind", "header")],
        )
    };
    let before = timeouts();
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(svc.addr()).unwrap())
        .collect();
    let dribblers: Vec<_> = (0..4).map(|_| dribble(svc.addr(), patience)).collect();
    let served = eventually(patience, || {
        raw_get(svc.addr(), "/v1/assets/scripts/a.rhai").filter(|(status, _)| *status == 200)
    });
    assert_eq!(served.map(|(_, body)| body), Some(content));
    // Every slow client was closed by the server: the silent ones and the one-byte dribblers.
    for s in &mut silent {
        read_until_closed(s, patience).expect("a silent connection stayed open");
    }
    for d in dribblers {
        let sent = d
            .join()
            .unwrap()
            .expect("a dribbling connection stayed open");
        assert!(sent < 600, "{sent}");
    }
    // Which slow clients got a slot (and so timed out rather than being refused) depends on
    // when each dribbler thread connected: at least one did, and each is counted.
    assert!(
        timeouts() > before,
        "header timeouts counted: {} -> {}",
        before,
        timeouts()
    );
}

#[test]
fn a_client_that_reads_nothing_is_cut_off_after_the_send_timeout() {
    let svc = Service::start_with(|c| {
        c.http = HttpLimits {
            send_timeout: Duration::from_millis(500),
            ..limits(16, Duration::from_secs(60))
        }
    });
    // More than the kernel buffers on both sides hold (4 MiB at most here).
    let content = vec![5u8; tessera_asset::MAX_ASSET_BYTES];
    let hash = svc
        .client()
        .put("big.bin", &content, &svc.ann.clone())
        .unwrap()
        .hash;
    let timeouts = || {
        sample(
            "tessera_http_timeouts_total",
            &[("server", "asset"), ("kind", "send")],
        )
    };
    let before = timeouts();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = svc.addr().parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(
        stream,
        "GET /v1/blobs/{hash} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The client reads nothing; the server gives up on it.
    let counted = eventually(Duration::from_secs(10), || {
        (timeouts() > before).then_some(())
    });
    assert!(counted.is_some(), "no send timeout was counted");
    let got = read_until_closed(&mut stream, Duration::from_secs(10)).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < content.len(), "the whole blob arrived");
}

#[test]
fn uploads_that_trickle_get_408_and_only_a_few_are_read_at_once() {
    // The timeout leaves the second upload time to be refused even on a loaded machine (with
    // 2 s it once timed out first under the whole test suite).
    let svc = Service::start_with(|c| {
        c.upload_timeout = Duration::from_secs(5);
        c.max_concurrent_uploads = 1;
    });
    let ann = svc.ann.clone();
    // A credential of the right form and time is all it takes to get the body read: the
    // signature covers the body, so it is checked afterwards.
    let auth = upload_auth::authorization(&ann, &put_request("slow.bin", &hash_hex(b"x")));
    let start_slow = || {
        let mut slow = TcpStream::connect(svc.addr()).unwrap();
        write!(
            slow,
            "PUT /v1/assets/slow.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Content-Length: 1000\r\n\r\n0123456789"
        )
        .unwrap();
        slow
    };
    let mut slow = start_slow();
    // While it holds the only upload slot, another upload is refused. The first tries can
    // race the slow upload's headers for the slot: when the other upload won (the slow one
    // was answered 503 at once), the slow one starts again.
    let mut last = String::new();
    let busy = eventually(Duration::from_secs(8), || {
        match svc.client().put("other.bin", b"other", &ann) {
            Err(AssetError::Rejected {
                status: 503,
                message,
                ..
            }) => Some(message),
            other => {
                last = format!("{other:?}");
                if answered(&mut slow) {
                    slow = start_slow();
                }
                None
            }
        }
    })
    .unwrap_or_else(|| {
        panic!("a second upload was not refused while the slot was taken; the last answer: {last}")
    });
    assert!(busy.contains("already reads 1 uploads at once"), "{busy}");
    let answer = read_until_closed(&mut slow, Duration::from_secs(10)).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 5 s"), "{answer}");
    // The slot is free again.
    assert!(
        svc.client()
            .put("third.bin", b"third", &ann)
            .unwrap()
            .changed
    );
}

#[test]
fn blobs_written_by_earlier_releases_still_serve() {
    // The layout of docs/assets.md, written key by key as earlier releases did, in a data
    // dir that is closed and opened again.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assets.redb");
    let small = b"[world]\nname = \"old\"\n".to_vec();
    let large: Vec<u8> = (0..300_001u32).map(|i| (i % 241) as u8).collect();
    {
        let db = Database::open_redb(&path).unwrap();
        db.transact(|tx| {
            for (name, content) in [("world.toml", &small), ("meshes/old.glb", &large)] {
                let hash = hash_hex(content);
                set_chunked(tx, &key(&[b"asset", b"blob", hash.as_bytes()]), content)?;
                let record = serde_json::json!({
                    "hash": hash,
                    "size": content.len(),
                    "content_type": "application/octet-stream",
                    "updated_unix_ms": 1,
                    "by": "operator:old",
                });
                tx.set(
                    &key(&[b"asset", b"name", name.as_bytes()]),
                    record.to_string().as_bytes(),
                )?;
            }
            tx.set(&key(&[b"asset", b"manifest-version"]), &2u64.to_be_bytes())
        })
        .unwrap();
    }
    let db = Database::open_redb(&path).unwrap();
    let svc = Service::with_db(db, Some(dir), |_| {});
    let client = svc.client();
    for (name, content) in [("world.toml", &small), ("meshes/old.glb", &large)] {
        assert_eq!(&client.get(name).unwrap(), content, "{name}");
        assert_eq!(&client.blob(&hash_hex(content)).unwrap(), content, "{name}");
    }
    let r = svc.get(
        "/v1/assets/meshes/old.glb",
        &[("Range", "bytes=199990-200009")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &large[199_990..200_010]);
    let ManifestFetch::Fresh { manifest, .. } = client.manifest(None).unwrap() else {
        panic!("no manifest");
    };
    assert_eq!(manifest.version, 2);
    assert_eq!(manifest.assets.len(), 2);
}
