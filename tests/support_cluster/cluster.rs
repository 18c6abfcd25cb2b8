//! One test cluster for the real-process tests, in the style of TiKV's
//! `test_raftstore::Cluster`: a [`Cluster`] owns a real etcd (TLS with client certificates),
//! the cluster CA with an operator, the issued member certificates and every member it
//! started by name (coordinators, shards, routers, the persistence service, auth replicas,
//! the chat and asset services, telnet gateways). It finds their addresses in their ready
//! files (`--ready-file`), never in their log lines, and can start, restart, stop (SIGTERM),
//! kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT), partition and heal each member. On
//! drop it kills every member and removes every network namespace, even when the test
//! panics.
//!
//! ```ignore
//! let mut c = Cluster::new();
//! c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
//! c.start(MemberSpec::persistence());
//! c.start(MemberSpec::shard("shard-1").lease(20));
//! c.start(MemberSpec::router("router-1"));
//! c.wait_placed();
//! let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
//! c.kill("shard-1");
//! ```
//!
//! [`Cluster::new`] runs every member on loopback. [`Cluster::on_lan`] runs each member in
//! a network namespace of its own on a private bridge ([`Lan`], root needed), so that any
//! of them can be cut off alone: [`Cluster::partition`] (from everyone),
//! [`Cluster::partition_from_etcd`] (from etcd only), [`Cluster::heal`].
//!
//! A watch on the whole key prefix starts before the first member, so the cluster keeps
//! etcd's revision history of the cell map and the registrations; [`Cluster::owner_check`]
//! replays it and reports every change of a cell's owner that broke "one owner per region"
//! (docs/cluster-keys.md).
//!
//! The shards and routers started after a persistence service keep their state in it; the
//! routers after the first serve the first router's QUIC certificate (so a telnet gateway
//! and the bots pin one certificate); the routers started after an auth replica log players
//! in through it, and those started after the chat service carry their players' chat
//! through it. The shards started after the asset service load their scripts from it.

use super::*;
use crate::common::{eventually, TestDir};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Cells of the default world.
pub const WORLD_CELLS: usize = 16;

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Coordinator,
    Shard,
    Router,
    Persistence,
    Auth,
    Gateway,
    Chat,
    Asset,
}

impl Kind {
    /// The role's name, as `tessera <role>` and the ready file say it.
    pub fn role(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::Shard => "shard",
            Kind::Router => "router",
            Kind::Persistence => "persistence",
            Kind::Auth => "auth",
            Kind::Gateway => "telnet-gateway",
            Kind::Chat => "chat",
            Kind::Asset => "asset",
        }
    }
}

/// How a member runs; kept by the cluster to restart it the same way.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub kind: Kind,
    /// The registration lease (shards, routers) or the leader lease (coordinators), seconds;
    /// `None` keeps the binary's default (20 s for members, 3 s for a coordinator).
    pub lease_ttl_secs: Option<u64>,
    /// Coordinators: whether it moves cells on its own (join balance, relief).
    pub rebalance: bool,
    /// Coordinators: how long after the first shard registers it places cells.
    pub settle_ms: u64,
    /// Persistence: whether routers may keep accounts in it (these clusters have no auth
    /// service unless one is started).
    pub router_accounts: bool,
    /// Shards and routers: whether they use the cluster's persistence service (if one runs).
    pub use_persistence: bool,
    /// Routers: whether it signs session tokens with the first router's key (see
    /// [`MemberSpec::sharing_signing_key`]).
    pub share_signing_key: bool,
    /// Shards: `RUST_LOG`.
    pub rust_log: String,
    /// Coordinators, shards and routers: the world definition directory (`--world`).
    pub world: String,
    /// More flags.
    pub args: Vec<String>,
    /// More environment variables (the fault switches of test builds).
    pub env: Vec<(String, String)>,
}

impl MemberSpec {
    fn new(kind: Kind, name: &str) -> MemberSpec {
        MemberSpec {
            name: name.into(),
            kind,
            lease_ttl_secs: Some(2),
            rebalance: true,
            settle_ms: 1000,
            router_accounts: true,
            use_persistence: true,
            share_signing_key: false,
            rust_log: "warn,tessera_shard=info".into(),
            world: WORLD.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A coordinator: a 2 s leader lease, placing cells 1 s after the first shard
    /// registers, rebalancing.
    pub fn coordinator(name: &str) -> MemberSpec {
        MemberSpec::new(Kind::Coordinator, name)
    }

    /// A shard with a 2 s lease.
    pub fn shard(name: &str) -> MemberSpec {
        MemberSpec::new(Kind::Shard, name)
    }

    /// A router with a 2 s lease; its data dir is `<dir>/router-data` for `router-1`, else
    /// `<dir>/<name>-data`.
    pub fn router(name: &str) -> MemberSpec {
        MemberSpec::new(Kind::Router, name)
    }

    /// The persistence service (`persistence`), letting routers keep accounts in it; its
    /// store is `<dir>/persistence-data`.
    pub fn persistence() -> MemberSpec {
        MemberSpec::new(Kind::Persistence, "persistence")
    }

    /// An auth replica; replicas share one port (`--reuse-port`) and signing key.
    pub fn auth(name: &str) -> MemberSpec {
        MemberSpec::new(Kind::Auth, name)
    }

    /// A telnet gateway pinning the routers' certificate.
    pub fn gateway(name: &str) -> MemberSpec {
        MemberSpec::new(Kind::Gateway, name)
    }

    /// The chat service (`chat`), keeping its state in the persistence service; the routers
    /// started after it carry their players' chat through it.
    pub fn chat() -> MemberSpec {
        MemberSpec::new(Kind::Chat, "chat")
    }

    /// The asset service (`asset`), keeping its files in the persistence service and reading
    /// the operators (who may upload) from etcd; the shards started after it load and
    /// hot-reload their scripts from it.
    pub fn asset() -> MemberSpec {
        MemberSpec::new(Kind::Asset, "asset")
    }

    /// This lease, seconds.
    pub fn lease(self, secs: u64) -> MemberSpec {
        MemberSpec {
            lease_ttl_secs: Some(secs),
            ..self
        }
    }

    /// The binary's default lease.
    pub fn default_lease(self) -> MemberSpec {
        MemberSpec {
            lease_ttl_secs: None,
            ..self
        }
    }

    /// A coordinator that places cells `ms` milliseconds after the first shard registers.
    pub fn settle_ms(self, ms: u64) -> MemberSpec {
        MemberSpec {
            settle_ms: ms,
            ..self
        }
    }

    /// Coordinators, shards and routers: the world in directory `dir` (the default world
    /// unless told).
    pub fn world(self, dir: &str) -> MemberSpec {
        MemberSpec {
            world: dir.into(),
            ..self
        }
    }

    /// A coordinator that moves no cell on its own (`--no-rebalance`).
    pub fn not_rebalancing(self) -> MemberSpec {
        MemberSpec {
            rebalance: false,
            ..self
        }
    }

    /// Without the cluster's persistence service.
    pub fn without_persistence(self) -> MemberSpec {
        MemberSpec {
            use_persistence: false,
            ..self
        }
    }

    /// Persistence: routers may not keep accounts in it (only the auth service may).
    pub fn without_router_accounts(self) -> MemberSpec {
        MemberSpec {
            router_accounts: false,
            ..self
        }
    }

    /// Routers after the first: signs session tokens with the first router's key (copied
    /// into its data dir before its first start), as the routers of a deployment share one
    /// secret, so a player (or a telnet gateway) resumes a session on any router. It matters
    /// only without an auth service (with one, the auth service signs the tokens).
    pub fn sharing_signing_key(self) -> MemberSpec {
        MemberSpec {
            share_signing_key: true,
            ..self
        }
    }

    /// More flags.
    pub fn args(mut self, args: &[&str]) -> MemberSpec {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: &str, value: &str) -> MemberSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Shards: `RUST_LOG`.
    pub fn log(self, rust_log: &str) -> MemberSpec {
        MemberSpec {
            rust_log: rust_log.into(),
            ..self
        }
    }
}

/// A member the cluster started: its process (while it has one), what it last announced,
/// and what was done to it.
pub struct Member {
    pub spec: MemberSpec,
    role: Option<Role>,
    ready: Option<Ready>,
    host: Option<LanHost>,
    paused: bool,
    isolated: bool,
    cut: Vec<IpAddr>,
    /// Starts so far (restarts included).
    pub starts: u32,
}

/// The etcd revision history the cluster records from its start: every put and delete
/// under `/tessera/`, in revision order, with when the test saw it.
#[derive(Clone, Debug)]
pub struct Change {
    pub seen: SystemTime,
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// The watch that records [`Change`]s (its own runtime, so it runs whatever the test does).
struct Recorder {
    _rt: tokio::runtime::Runtime,
    changes: Arc<Mutex<Vec<Change>>>,
}

impl Recorder {
    fn start(etcd: &EtcdServer) -> Recorder {
        use tessera_coordinator::store::WatchEvent;
        use tessera_coordinator::ClusterStore;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let changes = Arc::new(Mutex::new(Vec::new()));
        let store = rt
            .block_on(tessera_coordinator::EtcdStore::connect(
                &etcd.endpoints(),
                Some(&etcd.tls()),
                Duration::from_secs(5),
            ))
            .expect("connect to etcd");
        let mut events = rt
            .block_on(store.watch("/tessera/"))
            .expect("watch /tessera/");
        let sink = changes.clone();
        rt.spawn(async move {
            let _store = store;
            while let Some(event) = events.recv().await {
                let change = match event {
                    WatchEvent::Put(kv) => Change {
                        seen: SystemTime::now(),
                        revision: kv.mod_revision,
                        key: kv.key,
                        value: Some(String::from_utf8_lossy(&kv.value).into_owned()),
                    },
                    WatchEvent::Delete { key, revision } => Change {
                        seen: SystemTime::now(),
                        revision,
                        key,
                        value: None,
                    },
                };
                sink.lock().expect("history").push(change);
            }
        });
        Recorder { _rt: rt, changes }
    }
}

/// What [`Cluster::owner_check`] found in the revision history.
#[derive(Clone, Debug, Default)]
pub struct OwnerCheck {
    /// Writes of a cell key.
    pub cell_writes: usize,
    /// Regions that changed owner with a migration record from the old owner to the new.
    pub migrations: usize,
    /// Regions that changed owner after the old owner's registration was gone.
    pub failovers: usize,
    /// Changes that broke one owner per region: a region taken from an owner still
    /// registered without a migration, an owner change without a higher epoch, a tree
    /// whose highest epoch went down, a cell key deleted.
    pub violations: Vec<String>,
    /// Odd but not forbidden: a region given to a shard not registered at that revision.
    pub warnings: Vec<String>,
    /// When the history says each region last changed owner (the first seen write).
    pub owner_changes: Vec<(SystemTime, String, String, String)>,
}

/// A region's leaves: (quadrant path, owner, epoch).
type Leaves = Vec<(Vec<u8>, String, u64)>;

fn leaves_of(v: &serde_json::Value, path: &mut Vec<u8>, out: &mut Leaves) -> Option<()> {
    if let Some(split) = v.get("split").and_then(|s| s.as_array()) {
        for (q, child) in split.iter().enumerate() {
            path.push(q as u8);
            leaves_of(child, path, out)?;
            path.pop();
        }
        return Some(());
    }
    let owner = v.get("owner")?;
    let owner = owner
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| owner.to_string());
    out.push((path.clone(), owner, v.get("epoch")?.as_u64()?));
    Some(())
}

fn overlaps(a: &[u8], b: &[u8]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn region_text(cell: &str, path: &[u8]) -> String {
    let mut s = cell.to_string();
    for q in path {
        s.push_str(&format!("/{q}"));
    }
    s
}

/// Replays a revision history: see [`OwnerCheck`].
pub fn check_owners(history: &[Change]) -> OwnerCheck {
    let mut check = OwnerCheck::default();
    let mut shards: BTreeSet<String> = BTreeSet::new();
    // region text -> (cell, path, from, to)
    let mut migrations: BTreeMap<String, (String, Vec<u8>, String, String)> = BTreeMap::new();
    let mut cells: BTreeMap<String, Leaves> = BTreeMap::new();
    let name = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    for c in history {
        let Some(rest) = c.key.strip_prefix("/tessera/") else {
            continue;
        };
        if let Some(id) = rest.strip_prefix("shards/") {
            match c.value {
                Some(_) => shards.insert(id.to_string()),
                None => shards.remove(id),
            };
        } else if let Some(region) = rest.strip_prefix("migrations/") {
            match &c.value {
                Some(v) => {
                    let v: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
                    let mut parts = region.split('/');
                    let cell = parts.next().unwrap_or("").to_string();
                    let path: Vec<u8> = parts.filter_map(|p| p.parse().ok()).collect();
                    migrations.insert(
                        region.to_string(),
                        (cell, path, name(&v["from"]), name(&v["to"])),
                    );
                }
                None => {
                    migrations.remove(region);
                }
            }
        } else if let Some(cell) = rest.strip_prefix("cells/") {
            let Some(value) = &c.value else {
                check
                    .violations
                    .push(format!("rev {}: cell key {cell} deleted", c.revision));
                cells.remove(cell);
                continue;
            };
            check.cell_writes += 1;
            let mut new = Vec::new();
            let parsed = serde_json::from_str::<serde_json::Value>(value)
                .ok()
                .and_then(|v| leaves_of(&v, &mut Vec::new(), &mut new));
            if parsed.is_none() {
                check.violations.push(format!(
                    "rev {}: cell {cell}: not an ownership tree: {value}",
                    c.revision
                ));
                continue;
            }
            let old = cells.get(cell).cloned().unwrap_or_default();
            let old_max = old.iter().map(|l| l.2).max().unwrap_or(0);
            let new_max = new.iter().map(|l| l.2).max().unwrap_or(0);
            if new_max < old_max {
                check.violations.push(format!(
                    "rev {}: cell {cell}: highest epoch went down from {old_max} to {new_max}",
                    c.revision
                ));
            }
            for (path, owner, epoch) in &new {
                let region = region_text(cell, path);
                let before: Vec<_> = old.iter().filter(|l| overlaps(&l.0, path)).collect();
                let changed: Vec<_> = before.iter().filter(|l| l.1 != *owner).collect();
                if (old.is_empty() || !changed.is_empty()) && !shards.contains(owner) {
                    check.warnings.push(format!(
                        "rev {}: region {region} given to {owner}, not registered then",
                        c.revision
                    ));
                }
                if changed.is_empty() {
                    continue;
                }
                check.owner_changes.push((
                    c.seen,
                    region.clone(),
                    changed[0].1.clone(),
                    owner.clone(),
                ));
                if *epoch <= old_max {
                    check.violations.push(format!(
                        "rev {}: region {region} went to {owner} at epoch {epoch}, not above \
                         the tree's {old_max}",
                        c.revision
                    ));
                }
                for (_, from, _) in changed {
                    let migrating = migrations.values().any(|(mc, mp, f, t)| {
                        mc == cell && overlaps(mp, path) && f == from && t == owner
                    });
                    if migrating {
                        check.migrations += 1;
                    } else if shards.contains(from) {
                        check.violations.push(format!(
                            "rev {}: region {region} taken from {from}, still registered, by \
                             {owner} without a migration",
                            c.revision
                        ));
                    } else {
                        check.failovers += 1;
                    }
                }
            }
            cells.insert(cell.to_string(), new);
        }
    }
    check
}

/// The cluster map as the revision history has it now.
#[derive(Clone, Debug, Default)]
pub struct MapNow {
    /// Registered shards (`shards/<id>`).
    pub shards: BTreeSet<String>,
    /// Registered routers (`routers/<id>`).
    pub routers: BTreeSet<String>,
    /// The leading coordinator (`coordinator/leader`), if any.
    pub leader: Option<String>,
    /// Every region (`x,z` or `x,z/q/...`) and its owner.
    pub regions: BTreeMap<String, String>,
}

impl MapNow {
    /// Regions whose owner is not a registered shard.
    pub fn orphans(&self) -> Vec<String> {
        self.regions
            .iter()
            .filter(|(_, owner)| !self.shards.contains(*owner))
            .map(|(r, o)| format!("{r} ({o})"))
            .collect()
    }

    /// Whether all `cells` cells are placed and every region has a registered owner.
    pub fn all_owned(&self, cells: usize) -> bool {
        let placed: BTreeSet<&str> = self
            .regions
            .keys()
            .map(|r| r.split('/').next().unwrap_or(""))
            .collect();
        placed.len() == cells && self.orphans().is_empty()
    }
}

/// Replays a revision history into the map it ends with.
pub fn map_now(history: &[Change]) -> MapNow {
    let mut now = MapNow::default();
    let mut trees: BTreeMap<String, Leaves> = BTreeMap::new();
    for c in history {
        let Some(rest) = c.key.strip_prefix("/tessera/") else {
            continue;
        };
        if let Some(id) = rest.strip_prefix("shards/") {
            match c.value {
                Some(_) => now.shards.insert(id.to_string()),
                None => now.shards.remove(id),
            };
        } else if let Some(id) = rest.strip_prefix("routers/") {
            match c.value {
                Some(_) => now.routers.insert(id.to_string()),
                None => now.routers.remove(id),
            };
        } else if rest == "coordinator/leader" {
            now.leader = c.value.as_ref().and_then(|v| {
                serde_json::from_str::<serde_json::Value>(v)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            });
        } else if let Some(cell) = rest.strip_prefix("cells/") {
            let mut leaves = Vec::new();
            let parsed = c.value.as_ref().and_then(|v| {
                serde_json::from_str::<serde_json::Value>(v)
                    .ok()
                    .and_then(|v| leaves_of(&v, &mut Vec::new(), &mut leaves))
            });
            match parsed {
                Some(()) => trees.insert(cell.to_string(), leaves),
                None => trees.remove(cell),
            };
        }
    }
    for (cell, leaves) in trees {
        for (path, owner, _) in leaves {
            now.regions.insert(region_text(&cell, &path), owner);
        }
    }
    now
}

/// One test cluster: etcd, the CA, and the members it started, by name.
pub struct Cluster {
    // Fields drop in this order: the members' processes first, then their network, etcd
    // and the directory.
    members: BTreeMap<String, Member>,
    peek: Option<EtcdPeek>,
    recorder: Option<Recorder>,
    lan: Option<Lan>,
    pub etcd: EtcdServer,
    /// The cluster CA (`ca_init`): its operator's credential is beside it.
    pub ca: PathBuf,
    pub dir: TestDir,
}

impl Cluster {
    /// etcd and the CA; every member on loopback.
    pub fn new() -> Cluster {
        Cluster::build(None)
    }

    /// etcd and the CA; every member in a network namespace of its own on a private bridge
    /// ([`Lan`]), so that each can be partitioned. Needs root.
    pub fn on_lan() -> Cluster {
        Cluster::build(Some(Lan::create()))
    }

    fn build(lan: Option<Lan>) -> Cluster {
        let dir = TestDir::new();
        let etcd = match &lan {
            Some(l) => EtcdServer::start_also_on(&[l.etcd_ip]),
            None => EtcdServer::start(),
        };
        let recorder = Recorder::start(&etcd);
        let ca = ca_init(dir.path(), &etcd);
        Cluster {
            members: BTreeMap::new(),
            peek: None,
            recorder: Some(recorder),
            lan,
            etcd,
            ca,
            dir,
        }
    }

    /// The test directory (logs `<name>.stderr.log`, ready files, data dirs).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The private network, if the cluster has one.
    pub fn lan(&self) -> Option<&Lan> {
        self.lan.as_ref()
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .get(name)
            .unwrap_or_else(|| panic!("no member {name} in the cluster"))
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members
            .get_mut(name)
            .unwrap_or_else(|| panic!("no member {name} in the cluster"))
    }

    /// The names of the members of `kind`, in name order.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.members
            .values()
            .filter(|m| m.spec.kind == kind)
            .map(|m| m.spec.name.clone())
            .collect()
    }

    /// The spec `name` was started with.
    pub fn spec(&self, name: &str) -> &MemberSpec {
        &self.member(name).spec
    }

    /// Starts a new member and waits until it is ready; what it announced.
    pub fn start(&mut self, spec: MemberSpec) -> Ready {
        assert!(
            !self.members.contains_key(&spec.name),
            "{} was started already: restart it",
            spec.name
        );
        let host = self.lan.as_mut().map(Lan::add_host);
        let name = spec.name.clone();
        self.members.insert(
            name.clone(),
            Member {
                spec,
                role: None,
                ready: None,
                host,
                paused: false,
                isolated: false,
                cut: Vec::new(),
                starts: 0,
            },
        );
        self.launch(&name)
    }

    /// Starts `name` again the way it was started (its process must be gone: stopped,
    /// killed or exited), where it was: routers on their telnet and QUIC ports, the
    /// persistence service, auth replicas and gateways on their ports, so clients find them.
    pub fn restart(&mut self, name: &str) -> Ready {
        let m = self.member_mut(name);
        if let Some(role) = &mut m.role {
            assert!(
                role.try_exit().is_some(),
                "{name} is still running: stop or kill it first"
            );
        }
        m.paused = false;
        self.launch(name)
    }

    fn ip_of(&self, name: &str) -> IpAddr {
        self.member(name)
            .host
            .as_ref()
            .map(|h| h.ip)
            .unwrap_or(LOCALHOST)
    }

    fn etcd_url(&self) -> String {
        match &self.lan {
            Some(l) => self.etcd.client_url_on(l.etcd_ip),
            None => self.etcd.client_url(),
        }
    }

    /// The address `name` last announced under `key`, for a restart in the same place.
    fn previous(&self, name: &str, key: &str) -> Option<SocketAddr> {
        self.member(name)
            .ready
            .as_ref()
            .and_then(|r| r.addrs.get(key).copied())
    }

    /// The first running (or last seen) member of `kind` other than `except`.
    fn first_of(&self, kind: Kind, except: &str) -> Option<&Ready> {
        self.members
            .values()
            .filter(|m| m.spec.kind == kind && m.spec.name != except)
            .find_map(|m| m.ready.as_ref())
    }

    fn launch(&mut self, name: &str) -> Ready {
        let spec = self.member(name).spec.clone();
        let ip = self.ip_of(name);
        let netns = self.member(name).host.as_ref().map(|h| h.netns.clone());
        let env: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let extra: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let dir = self.dir.path().to_path_buf();
        let persistence = if spec.use_persistence {
            self.persistence_addr()
        } else {
            None
        };
        let exempt = self
            .lan
            .as_ref()
            .map(|l| format!("{},127.0.0.0/8,::1", l.cidr()));
        let (role, ready) = match spec.kind {
            Kind::Coordinator => {
                let mut role = coordinator_with_env(
                    &dir,
                    &self.ca,
                    &CoordinatorSpec {
                        id: &spec.name,
                        etcd_url: self.etcd_url(),
                        etcd_tls: self.etcd.tls(),
                        settle_ms: spec.settle_ms,
                        lease_ttl_secs: spec.lease_ttl_secs,
                        rebalance: spec.rebalance,
                        extra: &extra,
                        world: spec.world.clone(),
                        ip,
                        netns: netns.as_deref(),
                    },
                    &env,
                );
                let ready = role.wait_ready(READY_TIMEOUT);
                (role, ready)
            }
            Kind::Shard => {
                let ShardProc { role, ready, .. } = shard_with_env(
                    &dir,
                    &self.ca,
                    &ShardSpec {
                        id: &spec.name,
                        lease_ttl_secs: spec.lease_ttl_secs.unwrap_or(20),
                        etcd_url: self.etcd_url(),
                        etcd_tls: self.etcd.tls(),
                        ip,
                        netns: netns.as_deref(),
                        rust_log: &spec.rust_log,
                        persistence,
                        world: spec.world.clone(),
                        assets: self
                            .first_of(Kind::Asset, name)
                            .map(|a| format!("http://{}", a.addr("listen"))),
                        extra: &extra,
                    },
                    &env,
                );
                (role, ready)
            }
            Kind::Router => {
                let mut extra = spec.args.clone();
                if let Some(e) = &exempt {
                    extra.extend(["--limit-exempt".into(), e.clone()]);
                }
                // One certificate for every router, the first one's.
                if let Some(first) = self.first_of(Kind::Router, name) {
                    if let Some(cert) = first.files.get("quic_cert") {
                        let key = cert.with_file_name("quic-key.der");
                        extra.extend([
                            "--quic-cert".into(),
                            cert.display().to_string(),
                            "--quic-key".into(),
                            key.display().to_string(),
                        ]);
                    }
                }
                if let Some(auth) = self.first_of(Kind::Auth, name) {
                    extra.extend(["--auth".into(), auth.addr("listen").to_string()]);
                }
                if let Some(chat) = self.first_of(Kind::Chat, name) {
                    extra.extend(["--chat".into(), chat.addr("listen").to_string()]);
                }
                if spec.share_signing_key && self.member(name).starts == 0 {
                    self.copy_signing_key(name, &dir);
                }
                let any = SocketAddr::new(ip, 0);
                let telnet = self.previous(name, "telnet").unwrap_or(any);
                let quic = self.previous(name, "quic").unwrap_or(any);
                let RouterProc { role, ready, .. } = router_at_with_env(
                    &dir,
                    &self.ca,
                    &RouterSpec {
                        etcd_url: self.etcd_url(),
                        etcd_tls: self.etcd.tls(),
                        bus_ip: ip,
                        lease_ttl_secs: spec.lease_ttl_secs.unwrap_or(20),
                        persistence,
                        world: spec.world.clone(),
                        id: spec.name.clone(),
                        extra,
                        netns: netns.clone(),
                    },
                    telnet,
                    quic,
                    &env,
                );
                (role, ready)
            }
            Kind::Persistence => {
                let listen = self
                    .previous(name, "listen")
                    .unwrap_or(SocketAddr::new(ip, 0));
                let PersistenceProc { role, .. } = persistence_with(
                    &dir,
                    &self.ca,
                    &PersistenceSpec {
                        listen,
                        etcd_url: self.etcd_url(),
                        etcd_tls: self.etcd.tls(),
                        netns: netns.as_deref(),
                        router_accounts: spec.router_accounts,
                    },
                );
                let ready = Ready::read(&role.ready_file).expect("a ready file");
                (role, ready)
            }
            Kind::Auth => {
                let store = persistence.expect("auth replicas need the persistence service");
                let listen = self
                    .previous(name, "listen")
                    .or_else(|| self.first_of(Kind::Auth, name).map(|r| r.addr("listen")))
                    .unwrap_or(SocketAddr::new(ip, 0));
                let mut args = self.service_args("auth", name, listen, store, ip);
                args.extend([
                    "--reuse-port".into(),
                    "--signing-key".into(),
                    dir.join("auth-signing.key").display().to_string(),
                    "--etcd".into(),
                    self.etcd_url(),
                ]);
                args.extend(tls_flags(&self.etcd.tls()));
                if let Some(e) = &exempt {
                    args.extend(["--limit-exempt".into(), e.clone()]);
                }
                args.extend(spec.args.iter().cloned());
                let ServiceProc { role, .. } = service_in(&dir, name, netns.as_deref(), &args);
                let ready = Ready::read(&role.ready_file).expect("a ready file");
                (role, ready)
            }
            Kind::Gateway => {
                let mut extra = spec.args.clone();
                if let Some(e) = &exempt {
                    extra.extend(["--limit-exempt".into(), e.clone()]);
                }
                let GatewayProc { role, .. } = gateway_with_env(
                    &dir,
                    &self.ca,
                    &GatewaySpec {
                        etcd_url: self.etcd_url(),
                        etcd_tls: self.etcd.tls(),
                        id: spec.name.clone(),
                        router_cert: self.router_cert(),
                        extra,
                        ip,
                        netns: netns.clone(),
                        telnet: self.previous(name, "telnet"),
                    },
                    &env,
                );
                let ready = Ready::read(&role.ready_file).expect("a ready file");
                (role, ready)
            }
            Kind::Chat | Kind::Asset => {
                let what = spec.kind.role();
                let store = persistence.unwrap_or_else(|| panic!("{what} needs persistence"));
                let listen = self
                    .previous(name, "listen")
                    .unwrap_or(SocketAddr::new(ip, 0));
                let mut args = self.service_args(what, name, listen, store, ip);
                if spec.kind == Kind::Asset {
                    // It reads the operators (who may upload) from etcd, and checks script
                    // uploads against the world the shards run.
                    args.extend(["--etcd".into(), self.etcd_url()]);
                    args.extend(tls_flags(&self.etcd.tls()));
                    args.extend(["--world".into(), spec.world.clone()]);
                }
                args.extend(spec.args.iter().cloned());
                let ServiceProc { role, .. } = service_in(&dir, name, netns.as_deref(), &args);
                let ready = Ready::read(&role.ready_file).expect("a ready file");
                (role, ready)
            }
        };
        let m = self.member_mut(name);
        m.role = Some(role);
        m.ready = Some(ready.clone());
        m.starts += 1;
        ready
    }

    /// The flags every front service (`auth`, `chat`, `asset`) named `name` starts with: its
    /// member directory, where it listens, the persistence service, its data dir and a
    /// metrics port on `ip`.
    fn service_args(
        &self,
        what: &str,
        name: &str,
        listen: SocketAddr,
        store: SocketAddr,
        ip: IpAddr,
    ) -> Vec<String> {
        vec![
            what.into(),
            "--cluster-ca".into(),
            member_dir(&self.ca, what).display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--persistence".into(),
            store.to_string(),
            "--data-dir".into(),
            self.path()
                .join(format!("{name}-data"))
                .display()
                .to_string(),
            "--metrics".into(),
            SocketAddr::new(ip, 0).to_string(),
        ]
    }

    /// Copies the first router's session signing key into the data dir of router `name`
    /// (`<dir>/router-data` for `router-1`, else `<dir>/<name>-data`), unless it is that one.
    fn copy_signing_key(&self, name: &str, dir: &Path) {
        let Some(cert) = self
            .first_of(Kind::Router, name)
            .and_then(|r| r.files.get("quic_cert"))
        else {
            return;
        };
        let from = cert.with_file_name("auth-signing.key");
        let data = if name == "router-1" {
            dir.join("router-data")
        } else {
            dir.join(format!("{name}-data"))
        };
        let to = data.join("auth-signing.key");
        if from != to && from.exists() {
            std::fs::create_dir_all(&data).expect("create the router's data dir");
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
    }

    /// What `name` announced when it last became ready.
    pub fn ready(&self, name: &str) -> &Ready {
        self.member(name)
            .ready
            .as_ref()
            .unwrap_or_else(|| panic!("{name} was never ready"))
    }

    /// Where `name` serves `/metrics`.
    pub fn metrics(&self, name: &str) -> SocketAddr {
        self.ready(name).metrics()
    }

    /// A router's or gateway's telnet address.
    pub fn telnet(&self, name: &str) -> SocketAddr {
        self.ready(name).addr("telnet")
    }

    /// A router's or gateway's telnet-over-TLS address, if it serves one (`--telnet-tls`).
    pub fn telnet_tls(&self, name: &str) -> Option<SocketAddr> {
        self.ready(name).addrs.get("telnet_tls").copied()
    }

    /// A router's QUIC address.
    pub fn quic(&self, name: &str) -> SocketAddr {
        self.ready(name).addr("quic")
    }

    /// The certificate every router serves (the first router's).
    pub fn router_cert(&self) -> PathBuf {
        self.first_of(Kind::Router, "")
            .and_then(|r| r.files.get("quic_cert").cloned())
            .expect("a router was started (its certificate is the cluster's)")
    }

    /// The persistence service's address, once one was started.
    pub fn persistence_addr(&self) -> Option<SocketAddr> {
        self.first_of(Kind::Persistence, "")
            .map(|r| r.addr("listen"))
    }

    /// The process of `name` (its latest start).
    pub fn role(&self, name: &str) -> &Role {
        self.member(name)
            .role
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no process"))
    }

    pub fn role_mut(&mut self, name: &str) -> &mut Role {
        self.member_mut(name)
            .role
            .as_mut()
            .unwrap_or_else(|| panic!("{name} has no process"))
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.role(name).pid()
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self, name: &str) -> Option<ExitStatus> {
        self.member_mut(name).role.as_mut().and_then(Role::try_exit)
    }

    /// Whether its process runs (paused counts as running).
    pub fn is_running(&mut self, name: &str) -> bool {
        self.member_mut(name).role.is_some() && self.try_exit(name).is_none()
    }

    /// Whether `name` runs, not paused and not cut off: its ports answer.
    pub fn is_reachable(&mut self, name: &str) -> bool {
        let m = self.member(name);
        let disturbed = m.paused || m.isolated;
        !disturbed && self.is_running(name)
    }

    /// Waits (up to `timeout`) for `name` to exit by itself; the status and when it was seen.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> (ExitStatus, SystemTime) {
        wait_exit(self.role_mut(name), timeout)
    }

    /// SIGTERM and waits up to 60 s for the exit (a shard drains first).
    pub fn stop(&mut self, name: &str) -> ExitStatus {
        self.stop_within(name, Duration::from_secs(60))
    }

    /// SIGTERM and waits up to `timeout` for the exit.
    pub fn stop_within(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        if self.member(name).paused {
            self.resume(name);
        }
        self.role_mut(name).terminate(timeout)
    }

    /// SIGTERM without waiting for the exit (to watch a drain); [`Cluster::wait_exit`] or
    /// [`Cluster::try_exit`] then sees it.
    pub fn sigterm(&mut self, name: &str) {
        if self.member(name).paused {
            self.resume(name);
        }
        self.role(name).signal("TERM");
    }

    /// SIGKILL (kill -9), and reaps it.
    pub fn kill(&mut self, name: &str) {
        let m = self.member_mut(name);
        m.paused = false;
        if let Some(role) = &mut m.role {
            role.kill();
        }
    }

    /// SIGSTOP: frozen, as a machine that stalls.
    pub fn pause(&mut self, name: &str) {
        self.role(name).pause();
        self.member_mut(name).paused = true;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, name: &str) {
        self.role(name).resume();
        self.member_mut(name).paused = false;
    }

    fn lan_host(&self, name: &str) -> (&Lan, LanHost) {
        let lan = self
            .lan
            .as_ref()
            .expect("partitions need a cluster on a LAN (Cluster::on_lan)");
        let host = self.member(name).host.clone().expect("a member on the LAN");
        (lan, host)
    }

    /// Cuts `name` off from everyone (etcd, the other members, the test's clients): packets
    /// to and from it vanish. [`Cluster::heal`] joins it again.
    pub fn partition(&mut self, name: &str) {
        let (lan, host) = self.lan_host(name);
        lan.isolate(&host);
        self.member_mut(name).isolated = true;
    }

    /// Cuts `name` off from etcd alone (its cluster bus and metrics stay reachable).
    pub fn partition_from_etcd(&mut self, name: &str) {
        let (lan, host) = self.lan_host(name);
        let etcd = lan.etcd_ip;
        lan.cut_off(&host, etcd);
        self.member_mut(name).cut.push(etcd);
    }

    /// Undoes every partition of `name`.
    pub fn heal(&mut self, name: &str) {
        let (lan, host) = self.lan_host(name);
        let m = self.member(name);
        if m.isolated {
            lan.rejoin(&host);
        }
        for ip in &m.cut {
            lan.restore_route(&host, *ip);
        }
        let m = self.member_mut(name);
        m.isolated = false;
        m.cut.clear();
    }

    /// Copies every member's log (`<name>.stderr.log`, all its starts) and etcd's into
    /// `dest`, to keep them past the test directory.
    pub fn save_logs(&self, dest: &Path) {
        let _ = std::fs::create_dir_all(dest);
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".stderr.log") || name.ends_with(".ready.json") {
                    let _ = std::fs::copy(e.path(), dest.join(&name));
                }
            }
        }
        let _ = std::fs::write(dest.join("etcd.log"), self.etcd.logs());
    }

    /// Kills every member (resumed and healed first, so nothing is left frozen).
    pub fn shutdown(&mut self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            let m = self.member_mut(&name);
            if let Some(role) = &mut m.role {
                if m.paused {
                    role.resume();
                }
                role.kill();
            }
            m.paused = false;
        }
    }

    // ------------------------------------------------------------------ readings

    /// Every cell's owner (`tessera ctl cells --json`), sorted by cell.
    pub fn owners(&self) -> Vec<OwnerRow> {
        owners(&self.etcd)
    }

    /// Waits (20 s at most) until every cell has a live owner; the owners then.
    pub fn wait_placed(&self) -> Vec<OwnerRow> {
        self.wait_owners(Duration::from_secs(20), |rows| {
            rows.len() == WORLD_CELLS && rows.iter().all(|r| r.owner_live)
        })
    }

    /// Waits (up to `timeout`) until the owners satisfy `ok`; panics with the last reading.
    pub fn wait_owners(
        &self,
        timeout: Duration,
        mut ok: impl FnMut(&[OwnerRow]) -> bool,
    ) -> Vec<OwnerRow> {
        let mut last = Vec::new();
        eventually(timeout, || {
            last = self.owners();
            ok(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("the cell owners did not become as expected: {last:?}"))
    }

    /// The leading coordinator (`tessera ctl status`).
    pub fn leader(&self) -> Option<String> {
        leader(&self.etcd)
    }

    /// A reader of etcd (one connection, reused).
    pub fn peek(&mut self) -> &EtcdPeek {
        if self.peek.is_none() {
            self.peek = Some(EtcdPeek::connect(&self.etcd));
        }
        self.peek.as_ref().expect("connected")
    }

    /// `tessera ctl` (read-only commands).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        ctl(&self.etcd, args)
    }

    /// `tessera ctl` as the operator (moves, drains, rebalancing).
    pub fn ops(&self, args: &[&str]) -> (bool, String, String) {
        ops(&self.etcd, &self.ca, args)
    }

    /// The metrics addresses of the shards whose process runs.
    pub fn shard_metrics(&mut self) -> Vec<SocketAddr> {
        let names = self.names(Kind::Shard);
        let running: Vec<String> = names.into_iter().filter(|n| self.is_running(n)).collect();
        running.iter().map(|n| self.metrics(n)).collect()
    }

    /// Waits until every running shard has ticked `n` times.
    pub fn wait_ticking(&mut self, n: f64) {
        let shards = self.shard_metrics();
        wait_ticking(&shards, n);
    }

    /// The world's entity count over the running shards once two readings agree.
    pub fn settled_entities(&mut self) -> f64 {
        let shards = self.shard_metrics();
        settled_entities(&shards)
    }

    /// Open player connections over the routers whose process runs.
    pub fn router_connections(&mut self) -> f64 {
        let names = self.names(Kind::Router);
        let running: Vec<String> = names.into_iter().filter(|n| self.is_running(n)).collect();
        running
            .iter()
            .map(|n| router_connections(self.metrics(n)))
            .sum()
    }

    /// The etcd revision history so far.
    pub fn history(&self) -> Vec<Change> {
        self.recorder
            .as_ref()
            .map(|r| r.changes.lock().expect("history").clone())
            .unwrap_or_default()
    }

    /// The cluster map as the revision history has it now (no `tessera ctl` run: cheap
    /// enough to read many times a second).
    pub fn map_now(&self) -> MapNow {
        match &self.recorder {
            Some(r) => map_now(&r.changes.lock().expect("history")),
            None => MapNow::default(),
        }
    }

    /// Replays the revision history: see [`OwnerCheck`].
    pub fn owner_check(&self) -> OwnerCheck {
        check_owners(&self.history())
    }

    /// Panics if the revision history shows a region with two owners at once.
    pub fn assert_one_owner_per_region(&self) {
        let check = self.owner_check();
        assert!(
            check.violations.is_empty(),
            "one owner per region broken in etcd's history: {:#?}",
            check.violations
        );
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
