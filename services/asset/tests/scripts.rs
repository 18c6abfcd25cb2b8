//! Script uploads checked by the asset service itself, with the shards' own engine and the
//! default world: broken scripts, misspelled or misplaced names, force, the world folder's
//! scripts in `ls` and `get`, and the version rule (history, rollback, removal), over real HTTP
//! on loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_asset::scripts::{
    CompileError, ScriptCompiler, ScriptRules, ScriptSource, WorldScripts,
};
use tessera_asset::upload_auth::{self, SignedRequest};
use tessera_asset::{hash_hex, serve, AssetClient, AssetConfig, AssetError, HistoryAction};
use tessera_coordinator::operators::{OperatorKey, OperatorRecord, Operators, Voucher};
use tessera_coordinator::pki::ClusterCa;
use tessera_coordinator::{ClusterStore, MemStore};
use tessera_persistence::Database;
use tessera_shard::script::{ScriptEngine, ScriptError, ScriptLimits};

const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../worlds/default");

/// The shards' engine with the shards' limits, as the `tessera` binary gives it to the service.
struct ShardEngine(ScriptEngine);

impl ScriptCompiler for ShardEngine {
    fn check(&self, stem: &str, source: &str) -> Result<(), CompileError> {
        self.0.check(stem, source).map_err(|e| match e {
            ScriptError::Compile {
                line,
                column,
                message,
                ..
            } => CompileError {
                line,
                column,
                message,
            },
            other => CompileError {
                line: None,
                column: None,
                message: other.to_string(),
            },
        })
    }
}

fn default_world() -> tessera_proto::world::WorldDef {
    tessera_shard::worldfile::load_world_dir(std::path::Path::new(WORLD)).unwrap()
}

/// An asset service on a free loopback port, checking scripts against the default world (or
/// none); stops when dropped.
struct Service {
    url: String,
    ann: OperatorKey,
    world: BTreeMap<String, String>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(with_world: bool) -> Service {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let cluster: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(cluster, "/t/", vec![ca.cert().clone()]);
        let ann = OperatorKey::generate("ann").unwrap();
        let record = OperatorRecord::new("ann", &ann.public_hex(), &Voucher::Ca(&ca)).unwrap();
        runtime.block_on(operators.records().put(&record)).unwrap();
        let world = default_world();
        let mut config = AssetConfig::new(operators);
        config.scripts = ScriptRules {
            world: with_world.then(|| {
                WorldScripts::new(
                    world.name.clone(),
                    world.npcs.iter().map(|n| n.script.clone()),
                    world.scripts.clone(),
                )
            }),
            compiler: Some(Arc::new(ShardEngine(ScriptEngine::new(
                ScriptLimits::default(),
            )))),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(serve(listener, db, config));
        Service {
            url,
            ann,
            world: world.scripts,
            _runtime: runtime,
            _dir: dir,
        }
    }

    fn client(&self) -> AssetClient {
        AssetClient::new(&self.url)
    }

    /// A raw request: status and JSON body.
    fn raw(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(auth) = authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = agent.run(request.body(body.to_vec()).unwrap()).unwrap();
        let bytes = response.body_mut().read_to_vec().unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (response.status().as_u16(), json)
    }
}

/// The default world's greeter, with its answer to a second greeting changed to `answer`.
fn greeter(world: &BTreeMap<String, String>, answer: &str) -> Vec<u8> {
    let original = &world["greeter"];
    let line =
        "say(`You again, ${speaker}? That's ${state.greeted} greetings so far. I'm flattered.`);";
    assert!(original.contains(line), "the greeter script changed");
    original
        .replace(line, &format!("say(`{answer}`);"))
        .into_bytes()
}

/// The refusal's code and message.
fn refusal(err: AssetError) -> (u16, String, String) {
    match err {
        AssetError::ScriptRefused {
            status,
            code,
            message,
            ..
        } => (status, code, message),
        other => panic!("not a script refusal: {other}"),
    }
}

#[test]
fn a_broken_upload_is_refused_with_its_line_and_the_running_version_stays() {
    let svc = Service::start(true);
    let client = svc.client();
    let broken = b"fn on_hear(speaker, text) {\n    let n = 1;\n    say(`hello`\n}\n";
    // Before any upload the world folder's version runs, and stays.
    let (status, code, message) = refusal(
        client
            .put("scripts/greeter.rhai", broken, &svc.ann)
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (422, "script-compile"));
    assert!(
        message.contains("scripts/greeter.rhai does not compile at line 4, column 1:"),
        "{message}"
    );
    assert!(message.contains("the version in effect stays"), "{message}");
    let running = client.get_running("scripts/greeter.rhai").unwrap();
    assert_eq!(running.source, ScriptSource::World);
    assert_eq!(running.bytes, svc.world["greeter"].as_bytes());

    // A good upload, then a broken one: the good one keeps being served.
    let v1 = greeter(&svc.world, "version one");
    client.put("scripts/greeter.rhai", &v1, &svc.ann).unwrap();
    let err = client
        .put("scripts/greeter.rhai", broken, &svc.ann)
        .unwrap_err();
    assert!(err.to_string().contains("line 4, column 1"), "{err}");
    let running = client.get_running("scripts/greeter.rhai").unwrap();
    assert_eq!(
        (running.source, running.bytes),
        (ScriptSource::Upload, v1.clone())
    );
    let manifest = match client.manifest(None).unwrap() {
        tessera_asset::ManifestFetch::Fresh { manifest, .. } => manifest,
        other => panic!("{other:?}"),
    };
    assert_eq!(manifest.assets["scripts/greeter.rhai"].hash, hash_hex(&v1));
    let history = client.history("scripts/greeter.rhai").unwrap();
    assert_eq!(history.entries.len(), 1, "{history:?}");

    // The error body says where, for tools.
    let auth = upload_auth::authorization(
        &svc.ann,
        &SignedRequest::Put {
            name: "scripts/greeter.rhai",
            hash: &hash_hex(broken),
            force: false,
        },
    );
    let (status, body) = svc.raw(
        "PUT",
        "/v1/assets/scripts/greeter.rhai",
        Some(&auth),
        broken,
    );
    assert_eq!(status, 422);
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(body["code"], "script-compile");
    // The engine's limits count: an expression nested deeper than the shards allow.
    let deep = format!(
        "fn on_tick() {{ let x = {}1{}; }}",
        "(".repeat(80),
        ")".repeat(80)
    );
    let (_, code, _) = refusal(
        client
            .put("scripts/greeter.rhai", deep.as_bytes(), &svc.ann)
            .unwrap_err(),
    );
    assert_eq!(code, "script-compile");
    // Code outside functions would never run: refused with its line too.
    let (_, _, message) = refusal(
        client
            .put(
                "scripts/greeter.rhai",
                b"fn on_tick() {}\n\nsay(`hi`);",
                &svc.ann,
            )
            .unwrap_err(),
    );
    assert!(message.contains("at line 3"), "{message}");
}

#[test]
fn a_misspelled_name_is_refused_with_the_known_names() {
    let svc = Service::start(true);
    let v1 = greeter(&svc.world, "hi");
    let (status, code, message) = refusal(
        svc.client()
            .put("scripts/gretter.rhai", &v1, &svc.ann)
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (422, "unknown-script"));
    assert!(
        message.contains("no NPC of world \"Tessera Vale\" runs a script named \"gretter\""),
        "{message}"
    );
    assert!(
        message.contains("did you mean scripts/greeter.rhai?"),
        "{message}"
    );
    assert!(
        message.contains("crier, greeter, guard, wanderer"),
        "{message}"
    );
    assert!(message.contains("--force"), "{message}");
    // Nothing was stored.
    assert!(matches!(
        svc.client().get("scripts/gretter.rhai"),
        Err(AssetError::NotFound { .. })
    ));
    // The body lists them for tools.
    let auth = upload_auth::authorization(
        &svc.ann,
        &SignedRequest::Put {
            name: "scripts/gretter.rhai",
            hash: &hash_hex(&v1),
            force: false,
        },
    );
    let (_, body) = svc.raw("PUT", "/v1/assets/scripts/gretter.rhai", Some(&auth), &v1);
    assert_eq!(
        body["known"],
        serde_json::json!(["crier", "greeter", "guard", "wanderer"])
    );
    assert_eq!(body["suggestion"], "scripts/greeter.rhai");
}

#[test]
fn force_accepts_a_script_no_npc_runs_and_is_covered_by_the_signature() {
    let svc = Service::start(true);
    let client = svc.client();
    let warden = b"fn on_hear(speaker, text) { say(`Halt.`); }".to_vec();
    let put = client
        .put_forced("scripts/warden.rhai", &warden, &svc.ann)
        .unwrap();
    assert!(put.changed);
    assert_eq!(client.get("scripts/warden.rhai").unwrap(), warden);
    // Forced is still compiled.
    let (_, code, _) = refusal(
        client
            .put_forced("scripts/warden.rhai", b"fn on_tick( {", &svc.ann)
            .unwrap_err(),
    );
    assert_eq!(code, "script-compile");
    // A plain upload's signature does not hold for the same upload forced.
    let v2 = b"fn on_hear(speaker, text) { say(`Halt!`); }".to_vec();
    let plain = upload_auth::authorization(
        &svc.ann,
        &SignedRequest::Put {
            name: "scripts/warden.rhai",
            hash: &hash_hex(&v2),
            force: false,
        },
    );
    let (status, body) = svc.raw(
        "PUT",
        "/v1/assets/scripts/warden.rhai?force=true",
        Some(&plain),
        &v2,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(client.get("scripts/warden.rhai").unwrap(), warden);
    // `ls` shows it, as a script no NPC runs.
    let view = client.scripts().unwrap();
    let warden_status = view.scripts.iter().find(|s| s.script == "warden").unwrap();
    assert!(!warden_status.used && warden_status.world.is_none());
    assert_eq!(warden_status.in_effect, ScriptSource::Upload);
}

#[test]
fn a_name_outside_scripts_is_refused_with_a_hint() {
    let svc = Service::start(true);
    let v1 = greeter(&svc.world, "hi");
    for name in ["greeter.rhai", "scripts/npcs/greeter.rhai"] {
        for force in [false, true] {
            let client = svc.client();
            let err = if force {
                client.put_forced(name, &v1, &svc.ann)
            } else {
                client.put(name, &v1, &svc.ann)
            }
            .unwrap_err();
            let (status, code, message) = refusal(err);
            assert_eq!((status, code.as_str()), (400, "script-name"), "{name}");
            assert!(
                message.contains("upload it as scripts/greeter.rhai"),
                "{message}"
            );
        }
    }
    // Refused before the body is read (no credential check needed to say so is not
    // promised, but nothing is stored).
    assert!(matches!(
        svc.client().get("greeter.rhai"),
        Err(AssetError::NotFound { .. })
    ));
}

#[test]
fn ls_and_get_show_the_world_folder_scripts_and_which_version_runs() {
    let svc = Service::start(true);
    let client = svc.client();
    let view = client.scripts().unwrap();
    assert_eq!(view.known, ["crier", "greeter", "guard", "wanderer"]);
    assert_eq!(view.scripts.len(), 4, "{view:?}");
    for script in &view.scripts {
        assert_eq!(script.in_effect, ScriptSource::World, "{script:?}");
        assert!(script.used && script.upload.is_none());
        let world = script.world.as_ref().unwrap();
        assert_eq!(world.hash, hash_hex(svc.world[&script.script].as_bytes()));
        assert_eq!(script.name, format!("scripts/{}.rhai", script.script));
    }
    // get serves what runs: the world folder's, with its hash as the ETag.
    let got = client.get_running("scripts/guard.rhai").unwrap();
    assert_eq!(got.source, ScriptSource::World);
    assert_eq!(got.hash, hash_hex(svc.world["guard"].as_bytes()));
    assert_eq!(got.bytes, svc.world["guard"].as_bytes());

    let v1 = greeter(&svc.world, "uploaded");
    client.put("scripts/greeter.rhai", &v1, &svc.ann).unwrap();
    let view = client.scripts().unwrap();
    let greeter_status = view.scripts.iter().find(|s| s.script == "greeter").unwrap();
    assert_eq!(greeter_status.in_effect, ScriptSource::Upload);
    let upload = greeter_status.upload.as_ref().unwrap();
    assert_eq!(
        (upload.hash.as_str(), upload.by.as_str()),
        (hash_hex(&v1).as_str(), "operator:ann")
    );
    assert!(greeter_status.world.is_some());
    assert_eq!(
        client.get_running("scripts/greeter.rhai").unwrap().source,
        ScriptSource::Upload
    );
}

#[test]
fn history_rollback_and_removal_follow_one_rule() {
    let svc = Service::start(true);
    let client = svc.client();
    let name = "scripts/greeter.rhai";
    let (v1, v2, v3) = (
        greeter(&svc.world, "one"),
        greeter(&svc.world, "two"),
        greeter(&svc.world, "three"),
    );
    for v in [&v1, &v2, &v3] {
        client.put(name, v, &svc.ann).unwrap();
    }
    let history = client.history(name).unwrap();
    assert_eq!(history.in_effect, Some(ScriptSource::Upload));
    assert_eq!(history.entries.len(), 3);
    assert!(history
        .entries
        .iter()
        .all(|e| e.action == HistoryAction::Upload && e.by == "operator:ann"));
    assert_eq!(history.previous.as_deref(), Some(hash_hex(&v2).as_str()));
    assert_eq!(
        history.world.as_ref().unwrap().hash,
        hash_hex(svc.world["greeter"].as_bytes())
    );

    // Back one version, then another.
    let back = client.rollback(name, &hash_hex(&v2), &svc.ann).unwrap();
    assert!(back.changed);
    assert_eq!(client.get(name).unwrap(), v2);
    let history = client.history(name).unwrap();
    assert_eq!(history.previous.as_deref(), Some(hash_hex(&v1).as_str()));
    client.rollback(name, &hash_hex(&v1), &svc.ann).unwrap();
    assert_eq!(client.get(name).unwrap(), v1);
    assert!(client.history(name).unwrap().previous.is_none());
    // Rolling back to what runs changes nothing.
    assert!(
        !client
            .rollback(name, &hash_hex(&v1), &svc.ann)
            .unwrap()
            .changed
    );
    // A version this name never had is refused.
    let err = client
        .rollback(name, &hash_hex(b"never"), &svc.ann)
        .unwrap_err();
    assert!(matches!(err, AssetError::NotFound { .. }), "{err}");

    // Removal: the world folder's version runs again.
    let removed = client.remove(name, &svc.ann).unwrap();
    assert_eq!(removed.removed, hash_hex(&v1));
    assert_eq!(
        removed.in_effect.unwrap().hash,
        hash_hex(svc.world["greeter"].as_bytes())
    );
    let running = client.get_running(name).unwrap();
    assert_eq!(running.source, ScriptSource::World);
    assert!(matches!(
        client.manifest(None).unwrap(),
        tessera_asset::ManifestFetch::Fresh { manifest, .. } if !manifest.assets.contains_key(name)
    ));
    let history = client.history(name).unwrap();
    assert_eq!(history.in_effect, Some(ScriptSource::World));
    assert!(history.current.is_none());
    let actions: Vec<_> = history.entries.iter().map(|e| e.action).collect();
    use HistoryAction::*;
    assert_eq!(
        actions,
        [Upload, Upload, Upload, Rollback, Rollback, Remove]
    );
    // Nothing left to remove.
    assert!(matches!(
        client.remove(name, &svc.ann),
        Err(AssetError::NotFound { .. })
    ));
    // A removed version can be made current again by its hash.
    client.rollback(name, &hash_hex(&v3), &svc.ann).unwrap();
    assert_eq!(client.get(name).unwrap(), v3);
}

#[test]
fn replayed_or_unsigned_rollbacks_and_removals_are_refused() {
    let svc = Service::start(true);
    let client = svc.client();
    let name = "scripts/greeter.rhai";
    let (v1, v2) = (greeter(&svc.world, "one"), greeter(&svc.world, "two"));
    client.put(name, &v1, &svc.ann).unwrap();
    client.put(name, &v2, &svc.ann).unwrap();

    let to_v1 = hash_hex(&v1);
    let path = format!("/v1/rollback/{name}?hash={to_v1}");
    let (status, body) = svc.raw("POST", &path, None, b"");
    assert_eq!(status, 401, "{body}");
    let auth =
        upload_auth::authorization(&svc.ann, &SignedRequest::Rollback { name, hash: &to_v1 });
    // Signed for another version: refused.
    let other = format!("/v1/rollback/{name}?hash={}", hash_hex(&v2));
    assert_eq!(svc.raw("POST", &other, Some(&auth), b"").0, 403);
    let (status, body) = svc.raw("POST", &path, Some(&auth), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.get(name).unwrap(), v1);
    // v2 again, then the captured rollback replayed: refused, v2 stays.
    client.rollback(name, &hash_hex(&v2), &svc.ann).unwrap();
    let (status, body) = svc.raw("POST", &path, Some(&auth), b"");
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("already used"),
        "{body}"
    );
    assert_eq!(client.get(name).unwrap(), v2);

    // A removal: unsigned 401, signed once, replayed 403.
    let path = format!("/v1/assets/{name}");
    assert_eq!(svc.raw("DELETE", &path, None, b"").0, 401);
    let auth = upload_auth::authorization(&svc.ann, &SignedRequest::Remove { name });
    assert_eq!(svc.raw("DELETE", &path, Some(&auth), b"").0, 200);
    client.put(name, &v2, &svc.ann).unwrap();
    let (status, body) = svc.raw("DELETE", &path, Some(&auth), b"");
    assert_eq!(status, 403, "{body}");
    assert_eq!(client.get(name).unwrap(), v2);
}

#[test]
fn without_a_world_script_uploads_need_force_and_are_still_compiled() {
    let svc = Service::start(false);
    let client = svc.client();
    let v1 = greeter(&default_world().scripts, "no world");
    let (status, code, message) = refusal(
        client
            .put("scripts/greeter.rhai", &v1, &svc.ann)
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (422, "unknown-script"));
    assert!(message.contains("started without a world"), "{message}");
    assert!(message.contains("--world"), "{message}");
    client
        .put_forced("scripts/greeter.rhai", &v1, &svc.ann)
        .unwrap();
    assert!(client
        .put_forced("scripts/greeter.rhai", b"fn (", &svc.ann)
        .is_err());
    // Other assets are not scripts: no checks.
    client.put("meshes/tree.glb", b"\x00glb", &svc.ann).unwrap();
    let view = client.scripts().unwrap();
    assert!(view.world.is_none());
    assert_eq!(view.scripts.len(), 1);
    // Without a world there is no world folder version to serve.
    assert!(matches!(
        client.get("scripts/guard.rhai"),
        Err(AssetError::NotFound { .. })
    ));
}
