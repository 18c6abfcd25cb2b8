//! Every front service as its own process beside the cluster: `tessera
//! persistence`, `tessera auth` (two replicas on one address), `tessera
//! chat` and `tessera asset`, with a coordinator, two shards and one or two
//! routers against a real etcd. Players play full sessions through them;
//! chat and persistence are killed and come back; an NPC script changes
//! through `tessera ctl asset put`; a brute-force login is slowed.

mod common;
#[path = "../coordinator/tests/support/etcd.rs"]
mod etcd;
mod support_cluster;

use common::{eventually, http_get, metric_samples, scrape, TelnetClient};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use support_cluster::cluster::{Cluster, Kind, MemberSpec};
use support_cluster::*;
use tessera_client::{Client, ClientEvent};
use tessera_proto::msg::ChatKind;

/// A cluster with every service as its own process: the persistence service (no accounts of
/// routers in it), `auth_replicas` auth replicas on one address, chat, assets, a coordinator
/// that moves no cell, two shards loading their scripts from the asset service and `routers`
/// routers logging players in through auth and chatting through chat. A killed service
/// comes back where the others look for it ([`Cluster::restart`]).
fn services_cluster(routers: usize, auth_replicas: usize) -> Cluster {
    let mut c = Cluster::new();
    c.start(MemberSpec::persistence().without_router_accounts());
    for i in 1..=auth_replicas {
        c.start(MemberSpec::auth(&format!("auth-{i}")));
    }
    c.start(MemberSpec::chat());
    c.start(MemberSpec::asset());
    c.start(MemberSpec::coordinator("coordinator-a").not_rebalancing());
    for id in ["shard-1", "shard-2"] {
        c.start(MemberSpec::shard(id));
    }
    for i in 1..=routers {
        c.start(MemberSpec::router(&format!("router-{i}")));
    }
    c.wait_ticking(10.0);
    c
}

/// `tessera ctl args...`, as the operator or without a credential: whether it succeeded,
/// and everything it printed.
fn ctl_as(c: &Cluster, operator: bool, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = if operator { c.ops(args) } else { c.ctl(args) };
    (ok, out + &err)
}

/// A QUIC player on a router of a cluster, with its own runtime.
struct QuicPlayer {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl QuicPlayer {
    /// Connects to `router` of `c` (pinning the certificate every router serves) and
    /// creates `name`.
    fn create(c: &Cluster, router: &str, name: &str) -> QuicPlayer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let cert = std::fs::read(c.router_cert()).expect("the router's certificate");
        let quic = c.quic(router);
        let client = rt.block_on(async {
            let ep = tessera_client::endpoint(rustls::pki_types::CertificateDer::from(cert))
                .expect("a QUIC endpoint");
            let mut client = Client::connect(&ep, quic)
                .await
                .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
            client
                .create(name, PW)
                .await
                .unwrap_or_else(|e| panic!("{name}: create: {e}"));
            client
        });
        QuicPlayer { rt, client }
    }

    fn command(&mut self, line: &str) -> String {
        self.rt
            .block_on(self.client.command(line))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// Waits for a chat line of `kind` from `from` and returns its text.
    fn heard(&mut self, kind: ChatKind, from: &str) -> String {
        let from = from.to_string();
        self.rt
            .block_on(
                self.client
                    .wait_for(Duration::from_secs(10), |ev| match ev {
                        ClientEvent::ChatLine {
                            kind: k,
                            from: f,
                            text,
                            ..
                        } if *k == kind && *f == from => Some(text.clone()),
                        _ => None,
                    }),
            )
            .unwrap_or_else(|| panic!("no {kind:?} line from {from}"))
    }
}

/// `/healthz`, `/readyz` and `/metrics` of a role's metrics address.
fn assert_healthy(what: &str, addr: SocketAddr) {
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = http_get(addr, path);
        assert_eq!(status, 200, "{what} {path}: {body}");
    }
}

#[test]
fn a_full_session_through_every_service_with_two_routers_and_two_auth_replicas() {
    let mut c = services_cluster(2, 2);
    for s in c.names(Kind::Auth) {
        assert_healthy("auth", c.metrics(&s));
    }
    assert_healthy("chat", c.metrics("chat"));
    assert_healthy("asset", c.metrics("asset"));
    assert_healthy("router", c.metrics("router-1"));
    // The asset service answers on its own port too.
    assert_eq!(http_get(c.ready("asset").addr("listen"), "/readyz").0, 200);

    // Ann plays over telnet on router-1, Bob over QUIC on router-2.
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    let mut bob = QuicPlayer::create(&c, "router-2", "Bob");
    let before = ann.where_();
    let walked = ann.command("n");
    assert!(walked.contains("You walk north"), "{walked}");
    assert!(ann.where_().distance_xz(&before) > 1.0);
    assert!(ann.command("say nice weather").contains("You say"));

    // A shout reaches everyone on every router, in the same words.
    ann.command("shout Hello everyone");
    ann.wait_for("Ann shouts, \"Hello everyone\"", Duration::from_secs(10));
    assert_eq!(bob.heard(ChatKind::Shout, "Ann"), "Hello everyone");

    // A tell crosses routers and echoes to the sender.
    bob.command("tell ann psst, over here");
    ann.wait_for(
        "Bob tells you, \"psst, over here\"",
        Duration::from_secs(10),
    );
    assert_eq!(bob.heard(ChatKind::Tell, "Bob"), "psst, over here");

    // Channels.
    assert!(ann
        .command("channel join trade")
        .contains("You join [trade]"));
    assert!(bob
        .command("channel join Trade")
        .contains("You join [trade]"));
    let list = ann.command("channel list");
    assert!(
        list.contains("trade") && list.contains("2 online"),
        "{list}"
    );
    ann.command("chat trade rope for sale");
    ann.wait_for("[trade] Ann: rope for sale", Duration::from_secs(10));
    assert_eq!(
        bob.heard(ChatKind::Channel("trade".into()), "Ann"),
        "rope for sale"
    );
    // History comes from the chat service's store.
    let history = bob.command("history");
    assert!(
        history.contains("Ann shouts, \"Hello everyone\""),
        "{history}"
    );
    // Bad input gets a clear answer.
    let no_one = ann.command("tell Zed hello?");
    assert!(no_one.contains("No one called Zed is online."), "{no_one}");
    assert!(ann
        .command("mute Bob")
        .contains("Only operators can do that."));

    // Lose one auth replica: logins go on through the other one.
    c.kill("auth-1");
    std::thread::sleep(Duration::from_millis(300));
    for (router, name) in ["router-1", "router-2"].into_iter().zip(["Cyd", "Dee"]) {
        let mut p = TelnetClient::create(c.telnet(router), name, PW);
        p.quit();
    }
    // Sessions were logged out, and a known player comes back on the other
    // router at her saved position.
    let at = ann.where_();
    let bye = ann.quit();
    assert!(bye.contains("Goodbye"), "{bye}");
    let mut ann = TelnetClient::login(c.telnet("router-2"), "Ann", PW);
    assert!(ann.where_().distance_xz(&at) < 1.0);
    // With no replica left, a login says so and nothing else breaks.
    c.kill("auth-2");
    let mut eve = TelnetClient::connect(c.telnet("router-1"));
    let refused = eve.command(&format!("create Eve {PW}"));
    assert!(
        refused.contains("not available right now"),
        "login with auth down: {refused}"
    );
    assert!(ann.command("n").contains("You walk north"));
}

#[test]
fn players_keep_playing_while_chat_is_down_and_shout_comes_back_by_itself() {
    let mut c = services_cluster(1, 1);
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    let mut bob = TelnetClient::create(c.telnet("router-1"), "Bob", PW);
    ann.command("shout one");
    bob.wait_for("Ann shouts, \"one\"", Duration::from_secs(10));

    c.kill("chat");
    // Movement and local speech do not need chat.
    assert!(ann.command("e").contains("You walk east"));
    assert!(ann.command("say still here").contains("You say"));
    let down = ann.command("shout anyone?");
    assert!(
        down.contains("Chat is unavailable; try again in a moment"),
        "shout with chat down: {down}"
    );
    let tell = ann.command("tell Bob hi");
    assert!(tell.contains("Chat is unavailable"), "{tell}");

    // Back on the same address: the routers reconnect and register their
    // players again; nobody reconnects.
    c.restart("chat");
    let mut answer = String::new();
    eventually(Duration::from_secs(20), || {
        answer = ann.command("shout two");
        (!answer.contains("unavailable")).then_some(())
    })
    .unwrap_or_else(|| panic!("chat never came back: {answer}"));
    bob.wait_for("Ann shouts, \"two\"", Duration::from_secs(10));
    bob.command("tell ann welcome back");
    ann.wait_for("Bob tells you, \"welcome back\"", Duration::from_secs(10));

    // An operator (made one by `tessera ctl role`) mutes and kicks.
    let auth_addr = c.ready("auth-1").addr("listen").to_string();
    let ca = c.ca.display().to_string();
    let role = |credential: bool| {
        ctl_as(
            &c,
            credential,
            &[
                "role",
                "Ann",
                "operator",
                "--auth",
                &auth_addr,
                "--cluster-ca",
                &ca,
            ],
        )
    };
    let (ok, text) = role(false);
    assert!(!ok && text.contains("operator credential"), "{text}");
    let (ok, text) = role(true);
    assert!(ok && text.contains("Ann is now an operator"), "{text}");
    assert!(ann.quit().contains("Goodbye"));
    let mut ann = TelnetClient::login(c.telnet("router-1"), "Ann", PW);
    let muted = ann.command("mute Bob 5");
    assert!(muted.contains("Bob is muted for 5 minutes."), "{muted}");
    let refused = bob.command("shout let me speak");
    assert!(refused.contains("You are muted for"), "{refused}");
    // Local speech too (it goes to the shard, not through chat): Bob is
    // told, and nobody hears it.
    let refused = bob.command("say can anyone hear me");
    assert!(refused.contains("You are muted for"), "{refused}");
    assert!(
        ann.try_wait_for("can anyone hear me", Duration::from_secs(1))
            .is_none(),
        "a muted player's say was heard"
    );
    assert!(ann
        .command("kick Bob enough")
        .contains("Bob has been kicked."));
    let gone = bob.read_to_eof(Duration::from_secs(10));
    assert!(
        gone.contains("Ann has kicked you out of the game (enough)"),
        "{gone}"
    );
}

/// Sum of a shard metric over the running shards.
fn shard_metric(c: &mut Cluster, name: &str) -> f64 {
    c.shard_metrics()
        .iter()
        .flat_map(|m| metric_samples(&scrape(*m), name))
        .map(|(_, v)| v)
        .sum()
}

/// Waits (up to `timeout`) until `f` holds; panics naming `what` if it never does.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    eventually(timeout, || f().then_some(()))
        .unwrap_or_else(|| panic!("timed out waiting for {what}"));
}

#[test]
fn a_persistence_outage_is_buffered_and_loses_nothing_a_player_saw() {
    let mut c = services_cluster(1, 1);
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    ann.command("e");

    c.kill("persistence");
    // The world goes on: Ann walks and is told where she is.
    for _ in 0..3 {
        assert!(ann.command("n").contains("You walk north"));
    }
    let seen = ann.where_();
    let ticks = shard_metric(&mut c, "tessera_shard_tick_seconds_count");
    // Checkpoints pile up instead of being dropped.
    wait_until("checkpoints to be pending", Duration::from_secs(30), || {
        shard_metric(&mut c, "tessera_shard_checkpoints_pending") > 0.0
    });
    assert!(
        shard_metric(&mut c, "tessera_shard_tick_seconds_count") > ticks + 30.0,
        "shards must keep simulating"
    );
    // Ann leaves while her record cannot be written.
    assert!(ann.quit().contains("Goodbye"));

    // Back on its address, without routers' accounts, as it was.
    c.restart("persistence");
    wait_until(
        "buffered checkpoints to land",
        Duration::from_secs(40),
        || shard_metric(&mut c, "tessera_shard_checkpoints_pending") == 0.0,
    );
    let router_metrics = c.metrics("router-1");
    wait_until("Ann's record to land", Duration::from_secs(40), || {
        metric_samples(&scrape(router_metrics), "tessera_router_unsaved_players")
            .iter()
            .all(|(_, v)| *v == 0.0)
    });
    // She comes back exactly where she was told she stood.
    let mut ann = TelnetClient::login(c.telnet("router-1"), "Ann", PW);
    let back = ann.where_();
    assert!(
        back.distance_xz(&seen) < 0.5,
        "Ann was at {seen:?} before the outage and is at {back:?} after"
    );
}

#[test]
fn an_npc_script_changes_through_ctl_asset_put_without_losing_its_state() {
    let c = services_cluster(1, 1);
    let url = format!("http://{}", c.ready("asset").addr("listen"));
    let mut ann = TelnetClient::create(c.telnet("router-1"), "Ann", PW);
    ann.command("say hello Mira");
    ann.wait_for("Mira says,", Duration::from_secs(5));
    ann.command("say hello again Mira");
    let second = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert!(second.contains("2 greetings"), "{second}");

    let original = std::fs::read_to_string(format!("{WORLD}/scripts/greeter.rhai")).unwrap();
    let v1_line =
        "say(`You again, ${speaker}? That's ${state.greeted} greetings so far. I'm flattered.`);";
    assert!(original.contains(v1_line), "the greeter script changed");
    let v2 = original.replace(
        v1_line,
        "say(`Version two, ${speaker}: greeting number ${state.greeted}.`);",
    );
    let file = c.path().join("greeter-v2.rhai");
    std::fs::write(&file, v2).unwrap();
    let put = |file: &Path, credential: bool| {
        let file = file.display().to_string();
        let args = [
            "asset",
            "--assets",
            &url,
            "put",
            "scripts/greeter.rhai",
            &file,
        ];
        ctl_as(&c, credential, &args)
    };
    let (ok, text) = put(&file, false);
    assert!(!ok && text.contains("operator credential"), "{text}");
    let (ok, text) = put(&file, true);
    assert!(
        ok && text.contains("uploaded scripts/greeter.rhai"),
        "{text}"
    );

    let shards = c.names(Kind::Shard);
    let logs = |needle: &str| {
        shards.iter().all(|s| {
            std::fs::read_to_string(&c.role(s).stderr_log).is_ok_and(|l| l.contains(needle))
        })
    };
    wait_until(
        "every shard to reload the script",
        Duration::from_secs(15),
        || logs("script reloaded"),
    );
    ann.command("say hello Mira");
    let third = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert!(
        third.contains("Version two, Ann: greeting number 3."),
        "the new code runs with the old state: {third}"
    );

    // A broken version is refused by the asset service, with where; Mira keeps the working
    // one (tests/scripts_upload.rs covers the checks and the version rule in full).
    let broken = c.path().join("greeter-broken.rhai");
    std::fs::write(&broken, "fn on_hear(speaker, text) { say(").unwrap();
    let (ok, text) = put(&broken, true);
    assert!(!ok && text.contains("does not compile at line 1"), "{text}");
    ann.command("say hello Mira");
    let fourth = ann.wait_for("Mira says,", Duration::from_secs(5));
    assert!(fourth.contains("greeting number 4."), "{fourth}");
    // No shard restarted.
    for s in &shards {
        assert!(scrape(c.metrics(s)).contains("tessera_shard_script_reloads_total"));
    }
}

#[test]
fn a_brute_force_from_one_address_is_refused_while_the_owner_logs_in() {
    let c = services_cluster(1, 1);
    let mut cyd = TelnetClient::create(c.telnet("router-1"), "Cyd", PW);
    cyd.quit();
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let mut conn = TelnetClient::connect_from(c.telnet("router-1"), attacker);
    let mut limited = 0;
    for i in 0..100 {
        let answer = conn.command(&format!("connect Cyd guess{i:03}"));
        if answer.contains("Too many failed logins") {
            limited += 1;
        } else {
            assert!(answer.contains("Wrong name or password."), "{answer}");
        }
    }
    assert!(limited >= 90, "only {limited} of 100 guesses were refused");
    // Not even the right password gets through from there...
    let answer = conn.command(&format!("connect Cyd {PW}"));
    assert!(answer.contains("Too many failed logins"), "{answer}");
    // ...but the owner, at another address, logs in.
    let mut owner = TelnetClient::connect_from(c.telnet("router-1"), "127.0.0.2".parse().unwrap());
    let welcome = owner.command(&format!("connect Cyd {PW}"));
    assert!(welcome.contains("Welcome back, Cyd."), "{welcome}");
}
