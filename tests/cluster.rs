//! The cluster as separate processes against a real etcd: two coordinators
//! (leader election), two shard processes and a router, talking over the
//! QUIC cluster bus with mutual TLS. A connected telnet player walks across
//! the shard border, has her cell live-migrated (`tessera ctl move`), her
//! shard drained by SIGTERM, her cell migrated again while the leading
//! coordinator is dead (the standby completes it), and finally her shard
//! killed with SIGKILL (failover; the router puts her back). The world's
//! entity count never changes and she never disconnects. A second test
//! stops etcd for 10 s. Each test runs on the shared test cluster
//! (`support_cluster::cluster::Cluster`).

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, TelnetClient};
use std::process::Command;
use std::time::{Duration, Instant};
use support_cluster::cluster::{Cluster, MemberSpec};
use support_cluster::*;

#[test]
fn processes_walk_migrate_drain_survive_a_leader_change_and_fail_over() {
    let mut c = Cluster::new();
    // Shards checkpoint their cells here, so that a failed-over cell comes
    // back with its NPCs' state.
    c.start(MemberSpec::persistence());

    // Every cell that moves in this test is moved by the test itself
    // (`ctl move`, the drain, the failover); the rebalancer (on by default)
    // would start moving cells to shard-3 as soon as it joins, racing the
    // test's own move of Ann's cell there.
    let coordinator = |id| {
        MemberSpec::coordinator(id)
            .settle_ms(1500)
            .not_rebalancing()
    };
    c.start(coordinator("coordinator-a"));
    c.start(MemberSpec::shard("shard-1"));
    c.start(MemberSpec::shard("shard-2"));
    let (m1, m2) = (c.metrics("shard-1"), c.metrics("shard-2"));
    c.start(coordinator("coordinator-b"));
    c.start(MemberSpec::router("router-1"));
    let telnet = c.telnet("router-1");

    // Both shards simulate (the coordinator split the world between them).
    wait_ticking(&[m1, m2], 10.0);

    let mut ann = TelnetClient::create(telnet, "Ann", PW);
    let start = ann.where_();
    assert_eq!(
        (start.cell.as_str(), start.shard.as_str()),
        ("-1,0", "shard-1")
    );
    let before = settled_entities(&[m1, m2]);
    for _ in 0..3 {
        ann.command("e");
    }
    let after_walk = ann.where_();
    assert_eq!(
        (after_walk.cell.as_str(), after_walk.shard.as_str()),
        ("0,0", "shard-2"),
        "Ann should now be simulated by the other shard process"
    );
    // Speech reaches an NPC on the other shard process and comes back.
    for _ in 0..3 {
        ann.command("w");
    }
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    let after = settled_entities(&[m1, m2]);
    assert_eq!(
        before, after,
        "entities lost or duplicated across processes"
    );

    // The operator's view agrees: 16 cells split between the two shards,
    // and the load reports count the same entities as the metrics.
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, cells_json, _) = c.ctl(&["cells", "--json"]);
    assert!(ok);
    let cells: serde_json::Value = serde_json::from_str(&cells_json).expect("ctl cells --json");
    let cells = cells.as_array().expect("an array of cells");
    assert_eq!(cells.len(), 16);
    let reported: u64 = cells
        .iter()
        .map(|c| c["entities"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reported as f64, after, "ctl cells entities vs metrics");
    for cell in cells {
        let owner = cell["owner"].as_str().unwrap();
        let x = cell["cell"]["x"].as_i64().unwrap();
        assert_eq!(owner, if x < 0 { "shard-1" } else { "shard-2" }, "{cell}");
    }
    let (ok, shards, _) = c.ctl(&["shards"]);
    assert!(ok);
    assert!(shards.starts_with("SHARD"), "{shards}");
    assert_eq!(shards.lines().count(), 3, "{shards}");
    let (ok, status, _) = c.ctl(&["status"]);
    assert!(ok && status.contains("leader: coordinator-a"), "{status}");
    // A wrong etcd address is a clear error, not a hang or a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ctl", "--etcd", "http://127.0.0.1:1", "status"])
        .output()
        .expect("run ctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:1"),
        "{err}"
    );

    // Live-migrate Ann's cell (with Mira and the other locals) to shard-2
    // while she is connected: nothing is lost, she stays connected, and her
    // commands now go to shard-2.
    let here = ann.where_();
    assert_eq!(
        (here.cell.as_str(), here.shard.as_str()),
        ("-1,0", "shard-1")
    );
    // Moves need an operator credential of this cluster.
    let (ok, _, err) = c.ctl(&["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("needs an operator credential"), "{err}");
    // An operator of another cluster (its own CA) is refused.
    let stranger_ca = ca_init_offline(&c.path().join("stranger"));
    let stranger = operator_credential(&stranger_ca);
    let (ok, _, err) = ctl_as(&c.etcd, &stranger, &["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(
        ann.where_().shard,
        "shard-1",
        "a refused move moved nothing"
    );
    let (ok, moved, err) = c.ops(&["move", "-1,0", "shard-2"]);
    assert!(ok, "ctl move failed: {moved} {err}");
    eprintln!("{}", moved.trim());
    assert!(
        moved.starts_with("moved cell -1,0 from shard-1 to shard-2 (epoch 2)"),
        "{moved}"
    );
    let w = eventually(Duration::from_secs(5), || {
        let w = ann.where_();
        (w.shard == "shard-2").then_some(w)
    })
    .expect("Ann's commands never went to shard-2");
    assert_eq!(w.cell, "-1,0");
    assert!(
        w.distance_xz(&here) < 0.01,
        "Ann moved during the migration"
    );
    ann.command("n");
    ann.command("say hello again Mira");
    // Mira's script state came along: she remembers being greeted.
    let greeted = ann.wait_for("Mira says,", Duration::from_secs(5));
    let greetings = greeting_count(&greeted);
    assert_eq!(
        settled_entities(&[m1, m2]),
        after,
        "entities lost or duplicated by the migration"
    );
    // Moving it to where it already is, or to a shard that does not
    // exist, is a clear error.
    let (ok, _, err) = c.ops(&["move", "-1,0", "shard-2"]);
    assert!(!ok && err.contains("already owned by shard-2"), "{err}");
    let (ok, _, err) = c.ops(&["move", "-1,0", "shard-9"]);
    assert!(!ok && err.contains("shard-9 is not registered"), "{err}");

    // SIGTERM on shard-2 drains it: its cells, Ann's included, move to
    // shard-1 by live migration; Ann stays connected; nothing is lost.
    let status = c.stop_within("shard-2", Duration::from_secs(30));
    assert!(status.success(), "shard-2 exited with {status}");
    assert!(
        c.role_mut("shard-2")
            .wait_line("shard shard-2 drained: ")
            .starts_with("9 cells moved"),
        "shard-2 owned its 8 cells and -1,0"
    );
    let w = ann.where_();
    assert_eq!(
        (w.cell.as_str(), w.shard.as_str()),
        ("-1,0", "shard-1"),
        "after the drain"
    );
    ann.command("s");
    assert_eq!(ann.where_().shard, "shard-1");
    assert_eq!(
        settled_entities(&[m1]),
        after,
        "entities lost or duplicated by the drain"
    );
    let (_, cells_json, _) = c.ctl(&["cells", "--json"]);
    let cells: serde_json::Value = serde_json::from_str(&cells_json).unwrap();
    assert!(cells
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["owner"] == "shard-1"));

    // A new shard joins. The leading coordinator dies, and a migration of
    // Ann's cell to the new shard is requested while no coordinator leads:
    // it completes once the standby takes over (its lease: 2 s).
    c.start(MemberSpec::shard("shard-3"));
    let m3 = c.metrics("shard-3");
    c.kill("coordinator-a");
    let (ok, moved, err) = c.ops(&["move", "-1,0", "shard-3"]);
    assert!(
        ok,
        "the move did not complete after the leader died: {moved} {err}"
    );
    let (_, status, _) = c.ctl(&["status"]);
    assert!(
        status.contains("leader: coordinator-b"),
        "standby did not take over: {status:?}"
    );
    eventually(Duration::from_secs(5), || {
        (ann.where_().shard == "shard-3").then_some(())
    })
    .expect("Ann's cell did not reach shard-3");
    assert_eq!(
        settled_entities(&[m1, m3]),
        after,
        "entities lost or duplicated by the migration across a leader change"
    );

    // kill -9 the shard Ann is on. Its cell goes to a live shard when its
    // lease (2 s) expires, restored from its last checkpoint, and the
    // router puts Ann back into the world there on her next command.
    let killed = Instant::now();
    c.kill("shard-3");
    let mut answer = String::new();
    let back = eventually(Duration::from_secs(15), || {
        answer = ann.command("where");
        answer.contains("shard shard-1").then(|| killed.elapsed())
    })
    .unwrap_or_else(|| panic!("Ann was not put back into the world: {answer:?}"));
    eprintln!("kill -9 to serving again: {} ms", back.as_millis());
    assert!(
        back < Duration::from_secs(2 + 2 + 1),
        "failover took {back:?}"
    );
    assert_eq!(
        settled_entities(&[m1]),
        after,
        "every cell serves again on shard-1"
    );
    // Mira came back from the checkpoint, not from the world file: she
    // still counts Ann's greetings.
    ann.command("say hello Mira");
    let greeted = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert_eq!(
        greeting_count(&greeted),
        greetings + 1,
        "Mira's state after the failover: {greeted}"
    );
}

/// The count in Mira's "You again, Ann? That's N greetings so far." line.
fn greeting_count(line: &str) -> u32 {
    line.split("That's ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a repeat greeting: {line:?}"))
}

/// etcd stopped for 10 s and started again: the shards keep simulating and
/// serving players meanwhile (their 20 s leases outlive the outage), no cell
/// changes owner, and afterwards the cluster answers again.
#[test]
fn an_etcd_outage_of_ten_seconds_changes_nothing() {
    let mut c = Cluster::new();
    // The coordinator keeps its default lease; shards and router lease for
    // 20 s. No persistence service here: shards run without checkpoints.
    c.start(MemberSpec::coordinator("coordinator").default_lease());
    c.start(MemberSpec::shard("shard-1").lease(20));
    c.start(MemberSpec::shard("shard-2").lease(20));
    let (m1, m2) = (c.metrics("shard-1"), c.metrics("shard-2"));
    c.start(MemberSpec::router("router-1").lease(20));
    let mut bob = TelnetClient::create(c.telnet("router-1"), "Bob", PW);
    let before = placement(&c);
    assert_eq!(before.len(), 16);

    let ticks_before = ticks(m1) + ticks(m2);
    let outage = Instant::now();
    c.etcd.stop();
    // Players are served throughout: nothing on the player path needs etcd.
    let mut steps = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let dir = if steps % 2 == 0 { "e" } else { "w" };
        let answer = bob.command(dir);
        assert!(
            answer.starts_with("You walk"),
            "during the outage: {answer:?}"
        );
        steps += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let ticked = ticks(m1) + ticks(m2) - ticks_before;
    // Two shards at 30 Hz for 10 s: 600 ticks; allow for a slow machine.
    assert!(
        ticked > 400.0,
        "shards stopped simulating: {ticked} ticks in 10 s"
    );
    c.etcd.restart();

    // The cluster converges: the map is readable, nothing moved.
    let mut status = String::new();
    eventually(Duration::from_secs(20), || {
        let (ok, now, _) = c.ctl(&["status"]);
        status = now;
        (ok && status.contains("leader: coordinator") && status.contains("shards: 2")).then_some(())
    })
    .unwrap_or_else(|| panic!("no convergence after etcd came back: {status}"));
    assert_eq!(
        placement(&c),
        before,
        "a cell changed owner around the outage"
    );
    assert!(bob.command("where").contains("shard shard-1"));
}

/// (cell, owner, epoch) of every cell: who owns what, not whether the
/// owner is live.
fn placement(c: &Cluster) -> Vec<(String, String, u64)> {
    c.owners()
        .into_iter()
        .map(|r| (r.cell, r.owner, r.epoch))
        .collect()
}

/// `tessera up --etcd`: the same roles in one process against a real etcd.
/// They are real members: `tessera ctl` sees the leader and both shards, an
/// operator credential from the CA `up` created moves a cell, a player
/// crosses the shard border, and SIGTERM stops everything cleanly.
#[test]
fn up_runs_the_cluster_roles_in_one_process_against_etcd() {
    // `up` is every role in one process, with a CA of its own (the cluster's operator,
    // vouched for by another CA, is no operator to it): of the cluster it takes etcd.
    let c = Cluster::new();
    let data = c.path().join("up-data");
    let mut up = Role::start(
        c.path(),
        "up",
        &["up".into(), "--etcd".into(), c.etcd.client_url()]
            .into_iter()
            .chain(c.etcd.tls_flags())
            .chain([
                "--world".into(),
                WORLD.into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--telnet".into(),
                "127.0.0.1:0".into(),
                "--quic".into(),
                "127.0.0.1:0".into(),
                "--metrics".into(),
                "127.0.0.1:0".into(),
                "--assets-listen".into(),
                "127.0.0.1:0".into(),
                "--web".into(),
                "127.0.0.1:0".into(),
            ])
            .collect::<Vec<String>>(),
    );
    let ready = up.wait_ready(READY_TIMEOUT);
    assert_eq!((ready.role.as_str(), ready.id.as_str()), ("up", "tessera"));
    for name in [
        "telnet",
        "quic",
        "metrics",
        "assets_listen",
        "persistence",
        "auth",
        "chat",
    ] {
        assert_ne!(ready.addr(name).port(), 0, "{name}");
    }
    assert!(ready.files["quic_cert"].exists());
    let telnet = ready.addr("telnet");
    let mut status = String::new();
    eventually(Duration::from_secs(20), || {
        let (ok, now, _) = c.ctl(&["status"]);
        status = now;
        (ok && status.contains("leader: coordinator-up") && status.contains("shards: 2"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no leader and two shards: {status}"));
    let mut ann = TelnetClient::create(telnet, "Ann", PW);
    let start = ann.where_();
    assert_eq!(
        (start.cell.as_str(), start.shard.as_str()),
        ("-1,0", "shard-1")
    );
    for _ in 0..3 {
        ann.command("e");
    }
    assert_eq!(ann.where_().shard, "shard-2", "across the shard border");

    // The CA `up` created issues operator credentials that its coordinator
    // and shards accept.
    let ca = data.join("cluster-ca");
    let credential = c.path().join("alice.credential");
    let status = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "operator", "alice", "--cluster-ca"])
        .arg(&ca)
        .arg("--out")
        .arg(&credential)
        .args(c.etcd.client_flags(&c.etcd.client_url()))
        .status()
        .expect("tessera ca operator");
    assert!(status.success());
    let (ok, moved, err) = ctl_as(&c.etcd, &credential, &["move", "0,0", "shard-1"]);
    assert!(ok, "{moved} {err}");
    assert_eq!(ann.where_().shard, "shard-1", "her cell moved");

    let status = up.terminate(Duration::from_secs(20));
    assert!(status.success(), "up exited with {status}");
    up.wait_line("Tessera stopped");
}

/// `tessera ctl move` of a cell holding 1,000 NPCs while three connected
/// players walk in it: no entity is lost or duplicated, the players stay
/// connected and keep walking, and the stall the target measured is
/// reported.
#[test]
fn moving_a_cell_of_a_thousand_entities_under_movement_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut c = Cluster::new();
    // The default world plus a crowd of 1,000 wanderers in cell -1,0 (the
    // spawn's cell).
    let world = c.path().join("crowded-world");
    std::fs::create_dir_all(world.join("scripts")).unwrap();
    for entry in std::fs::read_dir(format!("{WORLD}/scripts")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), world.join("scripts").join(entry.file_name())).unwrap();
    }
    let mut toml = std::fs::read_to_string(format!("{WORLD}/world.toml")).unwrap();
    toml.push_str(
        "\n[[npc]]\nname = \"Pilgrim\"\ndescription = \"One of a crowd of pilgrims.\"\n\
         pos = [-32, 0, 32]\nscript = \"wanderer\"\ncount = 1000\nscatter = 18\n",
    );
    std::fs::write(world.join("world.toml"), toml).unwrap();
    let world = world.display().to_string();

    c.start(MemberSpec::persistence());
    c.start(
        MemberSpec::coordinator("coordinator")
            .not_rebalancing()
            .world(&world),
    );
    c.start(MemberSpec::shard("shard-1").world(&world));
    c.start(MemberSpec::shard("shard-2").world(&world));
    c.start(MemberSpec::router("router-1").world(&world));
    let telnet = c.telnet("router-1");
    let metrics = [c.metrics("shard-1"), c.metrics("shard-2")];
    wait_ticking(&metrics, 10.0);
    let mut crowd = 0.0;
    eventually(Duration::from_secs(20), || {
        crowd = entities_by_cell(&metrics)
            .iter()
            .filter(|(_, labels, _)| labels.ends_with("cell=\"-1,0\""))
            .map(|(_, _, n)| *n)
            .sum::<f64>();
        (crowd >= 900.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the crowd is not in -1,0: {crowd} ({:?})",
            entities_by_cell(&metrics)
        )
    });

    // Three players pace north and south in the cell all along.
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicUsize::new(0));
    let walkers: Vec<_> = ["Wan", "Wen", "Win"]
        .iter()
        .map(|name| {
            let mut client = TelnetClient::create(telnet, name, PW);
            let (stop, steps) = (stop.clone(), steps.clone());
            std::thread::spawn(move || {
                let mut north = true;
                while !stop.load(Ordering::Relaxed) {
                    let answer = client.command(if north { "n" } else { "s" });
                    assert!(!answer.is_empty(), "no answer to a step");
                    steps.fetch_add(1, Ordering::Relaxed);
                    north = !north;
                    std::thread::sleep(Duration::from_millis(100));
                }
                client
            })
        })
        .collect();
    let before = settled_entities(&metrics);
    std::thread::sleep(Duration::from_millis(500));
    let steps_before = steps.load(Ordering::Relaxed);
    let (ok, out, err) = c.ops(&["move", "-1,0", "shard-2", "--json"]);
    assert!(ok, "ctl move: {out} {err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("ctl move --json");
    eprintln!(
        "move of a cell with {crowd} entities and 3 walking players: ctl took {} ms, simulation stall {} ms",
        report["took_ms"], report["stall_ms"]
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut clients: Vec<TelnetClient> = walkers
        .into_iter()
        .map(|w| w.join().expect("a walker failed"))
        .collect();
    assert!(
        steps.load(Ordering::Relaxed) > steps_before,
        "the players stopped walking during the move"
    );
    assert_eq!(
        settled_entities(&metrics),
        before,
        "entities lost or duplicated by the move"
    );
    for client in &mut clients {
        let w = client.where_();
        if w.cell == "-1,0" {
            assert_eq!(w.shard, "shard-2", "a player left behind");
        }
    }
    assert_eq!(router_connections(c.metrics("router-1")), 3.0);
}

/// `tessera ctl backup` and `restore`: accounts and cell checkpoints taken
/// from one persistence service come back in a fresh one (Ann logs in with
/// her password, Mira still remembers her); a foreign file or a missing
/// credential is refused with a clear error.
#[test]
fn a_backup_restores_accounts_and_world_state_into_a_fresh_store() {
    let mut c = Cluster::new();
    let credential = operator_credential(&c.ca);
    c.start(MemberSpec::persistence());
    c.start(MemberSpec::coordinator("coordinator").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    wait_ticking(&[c.metrics("shard-1")], 10.0);
    c.start(MemberSpec::router("router-1"));
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    // Let a checkpoint round pass after the greeting.
    std::thread::sleep(Duration::from_millis(1500));

    let file = c.path().join("world.backup");
    let addr = c
        .persistence_addr()
        .expect("the persistence service")
        .to_string();
    // ctl with a certificate issued for it (no CA key at hand).
    let ctl_ca = member_dir(&c.ca, "ctl");
    let args = [
        "backup",
        file.to_str().unwrap(),
        "--persistence",
        &addr,
        "--cluster-ca",
        ctl_ca.to_str().unwrap(),
    ];
    let (ok, _, err) = c.ctl(&args);
    assert!(!ok && err.contains("needs an operator credential"), "{err}");
    let (ok, out, err) = ctl_as(&c.etcd, &credential, &args);
    assert!(ok, "backup: {out} {err}");
    assert!(out.starts_with("backed up "), "{out}");
    // It holds every password hash: readable by its owner alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "backup file mode {mode:o}");
    }

    // The shard and router go; a fresh, empty store takes the old one's
    // place (the same service on its address, its store removed).
    drop(ann);
    c.stop_within("router-1", Duration::from_secs(10));
    c.kill("shard-1");
    c.stop("persistence");
    std::fs::remove_dir_all(c.path().join("persistence-data")).expect("the old store");
    let second = c.restart("persistence").addr("listen").to_string();
    let router_ca = member_dir(&c.ca, "router");
    let restore = |file: &std::path::Path| {
        ctl_as(
            &c.etcd,
            &credential,
            &[
                "restore",
                file.to_str().unwrap(),
                "--persistence",
                &second,
                // As from inside a router's pod: its certificate, the operator's signature.
                "--cluster-ca",
                router_ca.to_str().unwrap(),
            ],
        )
    };
    let junk = c.path().join("junk");
    std::fs::write(&junk, b"definitely not a backup").unwrap();
    let (ok, _, err) = restore(&junk);
    assert!(!ok && err.contains("not a Tessera backup"), "{err}");
    let (ok, out, err) = restore(&file);
    assert!(ok, "restore: {out} {err}");

    // The shard comes back under its old id and reopens its cells from
    // the restored checkpoints.
    c.restart("shard-1");
    wait_ticking(&[c.metrics("shard-1")], 10.0);
    c.restart("router-1");
    let mut ann = TelnetClient::login(c.telnet("router-1"), "Ann", PW);
    ann.command("say hello Mira");
    let mira = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert!(mira.contains("You again, Ann?"), "Mira forgot Ann: {mira}");
}

/// Operators are key pairs kept in etcd: `ctl operator` adds, lists and
/// revokes them, and the servers follow. A new operator's move is carried
/// out at once; once revoked, within seconds, the same operator's move is
/// refused by the cluster itself.
#[test]
fn operators_are_added_and_revoked_and_the_cluster_follows() {
    let mut c = Cluster::new();
    let ca_flag = c.ca.display().to_string();
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    c.start(MemberSpec::shard("shard-1"));
    c.start(MemberSpec::shard("shard-2"));
    let row = |cell: &str| {
        eventually(Duration::from_secs(20), || {
            c.owners()
                .into_iter()
                .find(|r| r.cell == cell && r.owner_live)
        })
        .unwrap_or_else(|| panic!("cell {cell} never placed"))
    };
    let other = |owner: &str| {
        if owner == "shard-1" {
            "shard-2"
        } else {
            "shard-1"
        }
    };

    // Bob gets a key pair, and ops (whom the CA vouched for) adds him.
    let bob = c.path().join("bob.json");
    let bob_flag = bob.display().to_string();
    let (ok, out, err) = c.ctl(&["operator", "keygen", "bob", "--out", &bob_flag]);
    assert!(ok, "{err}");
    let public = out
        .split("--public-key ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no public key in {out:?}"));
    let add_bob = [
        "operator",
        "add",
        "bob",
        "--public-key",
        &public,
        "--cluster-ca",
        &ca_flag,
    ];
    let (ok, _, err) = c.ctl(&add_bob);
    assert!(!ok && err.contains("needs an operator credential"), "{err}");
    let (ok, out, err) = c.ops(&add_bob);
    assert!(ok && out.contains("operator bob added"), "{out} {err}");
    let (ok, list, err) = c.ctl(&["operator", "list", "--cluster-ca", &ca_flag]);
    assert!(ok, "{err}");
    let bob_row = list.lines().find(|l| l.starts_with("bob ")).unwrap_or("");
    assert!(
        bob_row.contains("valid") && bob_row.contains("operator:ops"),
        "{list}"
    );

    // Bob's move, right away.
    let start = row("0,0");
    let to = other(&start.owner);
    let (ok, out, err) = ctl_as(&c.etcd, &bob, &["move", "0,0", to]);
    assert!(ok, "bob's move: {out} {err}");
    assert_eq!(row("0,0").owner, to);

    // Revoked by ops: refused within seconds, by the coordinator and shards.
    let (ok, out, err) = c.ops(&["operator", "revoke", "bob", "--cluster-ca", &ca_flag]);
    assert!(ok && out.contains("revoked"), "{out} {err}");
    let (_, list, _) = c.ctl(&["operator", "list", "--cluster-ca", &ca_flag]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("bob ") && l.contains("revoked")),
        "{list}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (ok, _, err) = ctl_as(&c.etcd, &bob, &["move", "0,0", other(to)]);
    assert!(
        !ok && err.contains("refused"),
        "a revoked operator moved a cell: {err}"
    );
    assert_eq!(row("0,0").owner, to, "a refused move moved nothing");
    // Ops still can.
    let (ok, out, err) = c.ops(&["move", "0,0", other(to)]);
    assert!(ok, "{out} {err}");
}
