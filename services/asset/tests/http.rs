//! The asset service over real HTTP on loopback, with a redb store in a temporary directory.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tessera_asset::{
    hash_hex, serve, upload_auth, AssetClient, AssetConfig, AssetError, ManifestFetch,
};
use tessera_coordinator::authority::ClusterKey;
use tessera_persistence::{Backend, Database, StoreError, Transaction};

/// One asset service on a free loopback port; stops when dropped.
struct Service {
    url: String,
    key: ClusterKey,
    _runtime: tokio::runtime::Runtime,
    _dir: Option<tempfile::TempDir>,
}

impl Service {
    fn start() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        Service::with_db(db, Some(dir), None)
    }

    fn with_db(
        db: Database,
        dir: Option<tempfile::TempDir>,
        metrics: Option<tessera_asset::MetricsRender>,
    ) -> Service {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key = ClusterKey::from_secret(b"test cluster");
        let mut config = AssetConfig::new(key.clone());
        config.metrics = metrics;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(serve(listener, db, config));
        Service {
            url,
            key,
            _runtime: runtime,
            _dir: dir,
        }
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
    let ann = svc.key.operator("ann");
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
        .put("meshes/m.glb", &content, &svc.key.operator("ann"))
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

    let foreign = ClusterKey::from_secret(b"another cluster").operator("ann");
    let auth = upload_auth::authorization(&foreign, "world.toml", &hash, now_ms()).unwrap();
    let (status, v, _) = put(Some(auth));
    assert_eq!(status, 403);
    assert!(
        v["error"].as_str().unwrap().contains("does not verify"),
        "{v}"
    );

    let ann = svc.key.operator("ann");
    let stale = upload_auth::authorization(&ann, "world.toml", &hash, now_ms() - 600_000).unwrap();
    let (status, v, _) = put(Some(stale));
    assert_eq!(status, 403);
    assert!(v["error"].as_str().unwrap().contains("clock"), "{v}");

    // Signed for other content: refused.
    let other = upload_auth::authorization(&ann, "world.toml", &hash_hex(b"x"), now_ms()).unwrap();
    assert_eq!(put(Some(other)).0, 403);

    let good = upload_auth::authorization(&ann, "world.toml", &hash, now_ms()).unwrap();
    let (status, v, _) = put(Some(good));
    assert_eq!(status, 201);
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
    let ann = svc.key.operator("ann");
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
    let r = svc.request("DELETE", "/v1/assets/x", &[]);
    assert_eq!(r.status, 405);
    assert!(r.error().contains("DELETE"));
}

#[test]
fn uploads_over_the_limit_get_413() {
    let svc = Service::start();
    let size = 9 * 1024 * 1024;
    // The client refuses before sending.
    let err = svc
        .client()
        .put("big.bin", &vec![7u8; size], &svc.key.operator("ann"))
        .unwrap_err();
    assert!(matches!(err, AssetError::TooLarge { .. }), "{err}");
    // The server refuses on the declared length, before reading the body.
    let auth = upload_auth::authorization(
        &svc.key.operator("ann"),
        "big.bin",
        &hash_hex(b""),
        now_ms(),
    )
    .unwrap();
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
        .put("textures/big.png", &content, &svc.key.operator("ann"))
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
    // The largest allowed asset also fits (one transaction under the store's limit).
    let max = vec![1u8; tessera_asset::MAX_ASSET_BYTES];
    client
        .put("max.bin", &max, &svc.key.operator("ann"))
        .unwrap();
    assert_eq!(client.get("max.bin").unwrap().len(), max.len());
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
}

#[test]
fn health_readiness_and_metrics() {
    let svc = Service::with_db(
        Database::new(Arc::new(Down)),
        None,
        Some(Arc::new(|| "tessera_asset_up 1\n".to_string())),
    );
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
