//! The service end to end: real QUIC with the cluster's mutual TLS on loopback, redb files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
use tessera_persistence::{Backend, Database, StoreError, Transaction};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::wire::{MAX_REPLY, MAX_REQUEST};

const ANY_PORT: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

struct Tls {
    _dir: tempfile::TempDir,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
}

fn tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let member = ClusterCa::create(dir.path())
        .unwrap()
        .member(tessera_coordinator::identity::MemberRole::Router, "x")
        .unwrap();
    Tls {
        server: member.server_config_for(CHAT_ALPN).unwrap(),
        client: member.client_config_for(CHAT_ALPN).unwrap(),
        _dir: dir,
    }
}

/// Opens a redb file, waiting while a closed server still holds it.
async fn open_db(path: &Path) -> Database {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Database::open_redb(path) {
            Ok(db) => return db,
            Err(e) if Instant::now() > deadline => panic!("cannot reopen {path:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts a server, waiting while a closed one still holds the address.
async fn serve(db: Database, addr: SocketAddr, tls: &Tls, limits: ChatLimits) -> ChatServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ChatServer::start(db.clone(), addr, tls.server.clone(), limits.clone()) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn router(
    addr: SocketAddr,
    tls: &Tls,
    id: &str,
) -> (ChatClient, UnboundedReceiver<Delivery>) {
    let (client, rx) = ChatClient::start(addr, CLUSTER_NAME, tls.client.clone(), id.into());
    wait_until("the router connects", || client.is_connected()).await;
    (client, rx)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next(rx: &mut UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a delivery in time")
        .expect("the delivery channel is open")
}

/// The next line delivered: the players it is for, and the text the named viewer sees.
async fn next_line(rx: &mut UnboundedReceiver<Delivery>, viewer: &str) -> (Vec<u64>, String) {
    match next(rx).await {
        Delivery::Deliver { to, line } => (to, line.render_for(viewer)),
        other => panic!("expected a line, got {other:?}"),
    }
}

fn shout(from: u64, text: &str) -> Request {
    Request::Shout {
        from,
        text: text.into(),
    }
}

fn generous() -> ChatLimits {
    ChatLimits {
        burst: 1000,
        ..ChatLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shout_tell_and_channels_across_two_routers() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = serve(db, ANY_PORT.into(), &tls, generous()).await;
    let addr = server.local_addr().unwrap();
    let (a, mut rx_a) = router(addr, &tls, "a").await;
    let (b, mut rx_b) = router(addr, &tls, "b").await;
    a.online(1, "Ann", false).await.unwrap();
    a.online(3, "Cat", false).await.unwrap();
    b.online(2, "Bob", false).await.unwrap();

    assert_eq!(
        a.request(shout(1, "hello")).await.unwrap(),
        Reply::Delivered { recipients: 3 }
    );
    assert_eq!(
        next_line(&mut rx_a, "Cat").await,
        (vec![1, 3], "Ann shouts, \"hello\"".to_string())
    );
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "Ann shouts, \"hello\"".to_string())
    );

    let tell = Request::Tell {
        from: 1,
        to_name: "bob".into(),
        text: "hi".into(),
    };
    assert_eq!(
        a.request(tell).await.unwrap(),
        Reply::Delivered { recipients: 1 }
    );
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "Ann tells you, \"hi\"".to_string())
    );
    assert_eq!(
        next_line(&mut rx_a, "Ann").await,
        (vec![1], "You tell Bob, \"hi\"".to_string())
    );
    let nobody = Request::Tell {
        from: 1,
        to_name: "Zed".into(),
        text: "hi".into(),
    };
    let err = a.request(nobody).await.unwrap_err();
    assert_eq!(err.to_string(), "No one called Zed is online.");

    let say = |from, text: &str| Request::Say {
        from,
        channel: "trade".into(),
        text: text.into(),
    };
    let err = a.request(say(1, "rope?")).await.unwrap_err();
    assert_eq!(
        err,
        ChatError::NotInChannel {
            channel: "trade".into()
        }
    );
    assert!(err.to_string().contains("join trade"), "{err}");
    for (client, player) in [(&a, 1), (&b, 2)] {
        let join = Request::Join {
            player,
            channel: "Trade".into(),
        };
        assert_eq!(client.request(join).await.unwrap(), Reply::Ok);
    }
    assert_eq!(
        a.request(say(1, "selling rope")).await.unwrap(),
        Reply::Delivered { recipients: 2 }
    );
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "[trade] Ann: selling rope".to_string())
    );
    assert_eq!(
        next_line(&mut rx_a, "Ann").await,
        (vec![1], "[trade] Ann: selling rope".to_string())
    );
    let channels = || Request::Channels { player: 1 };
    let two = vec![ChannelInfo {
        name: "trade".into(),
        online: 2,
    }];
    assert_eq!(a.request(channels()).await.unwrap(), Reply::Channels(two));
    let leave = Request::Leave {
        player: 2,
        channel: "trade".into(),
    };
    assert_eq!(b.request(leave).await.unwrap(), Reply::Ok);
    let one = vec![ChannelInfo {
        name: "trade".into(),
        online: 1,
    }];
    assert_eq!(a.request(channels()).await.unwrap(), Reply::Channels(one));
    let bad = Request::Join {
        player: 1,
        channel: "no spaces".into(),
    };
    assert!(matches!(
        a.request(bad).await,
        Err(ChatError::BadChannel { .. })
    ));
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_server_restart() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.redb");
    let server = serve(open_db(&path).await, ANY_PORT.into(), &tls, generous()).await;
    let (a, _rx) = router(server.local_addr().unwrap(), &tls, "a").await;
    a.online(1, "Ann", false).await.unwrap();
    let join = Request::Join {
        player: 1,
        channel: "trade".into(),
    };
    a.request(join).await.unwrap();
    for text in ["one", "two", "three"] {
        let say = Request::Say {
            from: 1,
            channel: "trade".into(),
            text: text.into(),
        };
        a.request(say).await.unwrap();
    }
    a.request(shout(1, "loud")).await.unwrap();
    let history = |channel: &str, limit| Request::History {
        player: 1,
        channel: channel.into(),
        limit,
    };
    let texts = |reply: Reply| match reply {
        Reply::History(lines) => lines.into_iter().map(|l| l.text).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        texts(a.request(history("trade", 2)).await.unwrap()),
        ["two", "three"]
    );
    server.close();
    drop(server);
    a.close();

    let server = serve(open_db(&path).await, ANY_PORT.into(), &tls, generous()).await;
    let (a, _rx) = router(server.local_addr().unwrap(), &tls, "a").await;
    a.online(1, "Ann", false).await.unwrap();
    assert_eq!(
        texts(a.request(history("trade", 10)).await.unwrap()),
        ["one", "two", "three"]
    );
    let shouts = a.request(history("shout", 10)).await.unwrap();
    match shouts {
        Reply::History(lines) => {
            assert_eq!(lines.len(), 1);
            assert_eq!(lines[0].render_for("Bob"), "Ann shouts, \"loud\"");
        }
        other => panic!("{other:?}"),
    }
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_kicks_in_at_the_sixth_message_and_recovers() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = serve(db, ANY_PORT.into(), &tls, ChatLimits::default()).await;
    let (a, _rx) = router(server.local_addr().unwrap(), &tls, "a").await;
    a.online(1, "Ann", false).await.unwrap();
    for i in 0..5 {
        a.request(shout(1, &format!("spam {i}"))).await.unwrap();
    }
    let err = a.request(shout(1, "spam 5")).await.unwrap_err();
    assert!(matches!(err, ChatError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.to_string(), "You are talking too fast; wait 1 s.");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.request(shout(1, "calm")).await.unwrap();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_kick_need_an_operator() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = serve(db.clone(), ANY_PORT.into(), &tls, generous()).await;
    let addr = server.local_addr().unwrap();
    let (a, _rx_a) = router(addr, &tls, "a").await;
    let (b, mut rx_b) = router(addr, &tls, "b").await;
    a.online(1, "Ann", true).await.unwrap();
    b.online(2, "Bob", false).await.unwrap();

    let mute = |by, name: &str| Request::Mute {
        by,
        name: name.into(),
        seconds: 60,
    };
    let err = b.request(mute(2, "Ann")).await.unwrap_err();
    assert_eq!(err.to_string(), "Only operators can do that.");
    assert_eq!(a.request(mute(1, "bob")).await.unwrap(), Reply::Ok);
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "Ann muted you for 60 s.".to_string())
    );
    // Bob's router learns it too, to silence his local speech.
    match next(&mut rx_b).await {
        Delivery::Muted {
            player: 2,
            until_unix_ms: Some(until),
        } => assert!(until > 0),
        other => panic!("expected Bob's mute, got {other:?}"),
    }
    let err = b.request(shout(2, "unfair")).await.unwrap_err();
    assert_eq!(err.to_string(), "You are muted for 60 more s.");
    assert!(
        history::load_mute(&db, "bob").unwrap().is_some(),
        "mutes are stored"
    );

    let kick = |by, name: &str| Request::Kick {
        by,
        name: name.into(),
        reason: "spam".into(),
    };
    let err = b.request(kick(2, "Ann")).await.unwrap_err();
    assert_eq!(err, ChatError::NotOperator);
    assert_eq!(a.request(kick(1, "BOB")).await.unwrap(), Reply::Ok);
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "You were kicked by Ann: spam".to_string())
    );
    assert_eq!(
        next(&mut rx_b).await,
        Delivery::Kick {
            player: 2,
            by: "Ann".into(),
            reason: "spam".into()
        }
    );
    let unmute = Request::Unmute {
        by: 1,
        name: "Bob".into(),
    };
    assert_eq!(a.request(unmute).await.unwrap(), Reply::Ok);
    assert_eq!(history::load_mute(&db, "bob").unwrap(), None);
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_and_reregisters_after_a_restart() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = serve(db.clone(), ANY_PORT.into(), &tls, generous()).await;
    let addr = server.local_addr().unwrap();
    let (a, mut rx_a) = router(addr, &tls, "a").await;
    let (b, mut rx_b) = router(addr, &tls, "b").await;
    a.online(1, "Ann", false).await.unwrap();
    b.online(2, "Bob", false).await.unwrap();
    let join = Request::Join {
        player: 2,
        channel: "trade".into(),
    };
    b.request(join).await.unwrap();

    server.close();
    drop(server);
    wait_until("the router sees the service gone", || !a.is_connected()).await;
    let t0 = Instant::now();
    let err = a.request(shout(1, "anyone?")).await.unwrap_err();
    assert_eq!(err, ChatError::Unavailable);
    assert_eq!(
        err.to_string(),
        "chat is unavailable; try again in a moment"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    let server = serve(db, addr, &tls, generous()).await;
    wait_until("both routers reconnect", || {
        a.is_connected() && b.is_connected()
    })
    .await;
    assert_eq!(
        a.request(shout(1, "back")).await.unwrap(),
        Reply::Delivered { recipients: 2 }
    );
    assert_eq!(
        next_line(&mut rx_b, "Bob").await,
        (vec![2], "Ann shouts, \"back\"".to_string())
    );
    assert_eq!(next_line(&mut rx_a, "Ann").await.0, vec![1]);
    let channels = b.request(Request::Channels { player: 2 }).await.unwrap();
    assert_eq!(
        channels,
        Reply::Channels(vec![ChannelInfo {
            name: "trade".into(),
            online: 1
        }])
    );
    server.close();
}

/// One raw request on its own stream; `None` if the server cut the stream.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Option<Reply> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(MAX_REPLY))
        .await
        .ok()?
        .ok()?;
    tessera_proto::frame::decode(&answer, MAX_REPLY).ok()
}

/// Chat is the routers': a member of another role (a shard's certificate from the same CA)
/// is turned away at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_routers_may_use_the_chat_service() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
    let server_tls = ca
        .member(tessera_coordinator::identity::MemberRole::Chat, "chat")
        .unwrap()
        .server_config_for(CHAT_ALPN)
        .unwrap();
    let shard = ca
        .member(tessera_coordinator::identity::MemberRole::Shard, "shard-1")
        .unwrap()
        .client_config_for(CHAT_ALPN)
        .unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = ChatServer::start(db, ANY_PORT.into(), server_tls, generous()).unwrap();
    let mut ep = quinn::Endpoint::client(ANY_PORT.into()).unwrap();
    ep.set_default_client_config(shard);
    let conn = ep
        .connect(server.local_addr().unwrap(), CLUSTER_NAME)
        .unwrap()
        .await
        .unwrap();
    let hello = tessera_proto::frame::encode(&Request::Hello {
        router: "impostor".into(),
    })
    .unwrap();
    assert_eq!(raw_request(&conn, &hello).await, None, "a shard was served");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "the connection stayed open");
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_do_not_hurt_the_server() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("chat.redb")).await;
    let server = serve(db, ANY_PORT.into(), &tls, generous()).await;
    let addr = server.local_addr().unwrap();
    let (a, mut rx_a) = router(addr, &tls, "a").await;
    a.online(1, "Ann", false).await.unwrap();

    let mut ep = quinn::Endpoint::client(ANY_PORT.into()).unwrap();
    ep.set_default_client_config(tls.client.clone());
    let conn = ep.connect(addr, CLUSTER_NAME).unwrap().await.unwrap();
    match raw_request(&conn, &[0xFF; 64]).await {
        Some(Reply::Failed(ChatError::Protocol(msg))) => {
            assert!(msg.contains("malformed"), "{msg}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let early = tessera_proto::frame::encode(&shout(1, "sneaky")).unwrap();
    match raw_request(&conn, &early).await {
        Some(Reply::Failed(ChatError::Protocol(msg))) => assert!(msg.contains("Hello"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let hello = tessera_proto::frame::encode(&Request::Hello {
        router: "rogue".into(),
    })
    .unwrap();
    assert_eq!(raw_request(&conn, &hello).await, Some(Reply::Ok));
    // Oversized: the server may answer with an error or cut the stream; either way it lives.
    let reply = raw_request(&conn, &vec![0u8; MAX_REQUEST * 4]).await;
    assert!(
        matches!(reply, None | Some(Reply::Failed(ChatError::Protocol(_)))),
        "{reply:?}"
    );
    assert!(matches!(
        raw_request(&conn, &[1, 2, 3]).await,
        Some(Reply::Failed(ChatError::Protocol(_)))
    ));

    assert_eq!(
        a.request(shout(1, "still here")).await.unwrap(),
        Reply::Delivered { recipients: 1 }
    );
    assert_eq!(
        next_line(&mut rx_a, "Ann").await.1,
        "Ann shouts, \"still here\""
    );
    conn.close(0u32.into(), b"done");
    server.close();
}

/// A store that can be switched off.
struct Flaky {
    inner: Database,
    down: AtomicBool,
}

impl Backend for Flaky {
    fn attempt(
        &self,
        body: &mut dyn FnMut(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the test switched the store off".into(),
            ));
        }
        self.inner.transact(|tx| body(tx))
    }

    fn describe(&self) -> String {
        "flaky test store".into()
    }

    fn snapshot(&self) -> Result<Arc<dyn tessera_persistence::Snapshot>, StoreError> {
        self.inner.snapshot()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_delays_history_but_not_delivery() {
    let tls = tls();
    let dir = tempfile::tempdir().unwrap();
    let inner = open_db(&dir.path().join("chat.redb")).await;
    let flaky = Arc::new(Flaky {
        inner: inner.clone(),
        down: AtomicBool::new(true),
    });
    let server = serve(
        Database::new(flaky.clone()),
        ANY_PORT.into(),
        &tls,
        generous(),
    )
    .await;
    let (a, mut rx_a) = router(server.local_addr().unwrap(), &tls, "a").await;
    a.online(1, "Ann", false).await.unwrap();
    for text in ["one", "two", "three"] {
        assert_eq!(
            a.request(shout(1, text)).await.unwrap(),
            Reply::Delivered { recipients: 1 }
        );
        assert_eq!(
            next_line(&mut rx_a, "Ann").await.1,
            format!("Ann shouts, \"{text}\"")
        );
    }
    let history = || Request::History {
        player: 1,
        channel: "shout".into(),
        limit: 10,
    };
    let err = a.request(history()).await.unwrap_err();
    assert_eq!(err, ChatError::HistoryUnavailable);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(history::read(&inner, "shout", 10).unwrap().is_empty());

    flaky.down.store(false, Ordering::SeqCst);
    wait_until("the buffered lines are saved", || {
        history::read(&inner, "shout", 10).unwrap().len() == 3
    })
    .await;
    let saved: Vec<String> = history::read(&inner, "shout", 10)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(saved, ["one", "two", "three"]);
    match a.request(history()).await.unwrap() {
        Reply::History(lines) => assert_eq!(lines.len(), 3),
        other => panic!("{other:?}"),
    }
    server.close();
}
