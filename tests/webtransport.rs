//! Browser players' transport against a real `tessera up`: the page at
//! `--web`, `/tessera.json`, and a WebTransport (HTTP/3) session on the QUIC
//! port that accepts the development certificate by its hash, exactly as a
//! browser's `serverCertificateHashes` does, then speaks the client protocol.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_proto::frame::{self, FrameBuffer, MAX_CONTROL_FRAME, MAX_DATAGRAM};
use tessera_proto::msg::{ClientDatagram, ClientMsg, Input, ServerDatagram, ServerMsg};
use web_transport_quinn::{RecvStream, SendStream, Session};

/// What `/tessera.json` says.
struct PageInfo {
    url: String,
    hashes: Vec<Vec<u8>>,
    json: serde_json::Value,
}

fn page_info(web: SocketAddr) -> PageInfo {
    let (status, body) = http_get(web, "/tessera.json");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    use base64::Engine;
    let hashes = json["webtransport"]["certificate_hashes"]
        .as_array()
        .expect("hashes")
        .iter()
        .map(|h| {
            base64::engine::general_purpose::STANDARD
                .decode(h.as_str().expect("a string"))
                .expect("base64")
        })
        .collect();
    PageInfo {
        url: json["webtransport"]["url"]
            .as_str()
            .expect("url")
            .to_string(),
        hashes,
        json,
    }
}

async fn open(url: &str, hashes: Vec<Vec<u8>>) -> Result<Session, String> {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes)
        .map_err(|e| e.to_string())?;
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), client.connect(url))
        .await
        .map_err(|_| "no session in 10 s".to_string())?
        .map_err(|e| e.to_string())
}

/// The control stream of a session, as the web client uses it.
struct Control {
    send: SendStream,
    recv: RecvStream,
    buf: FrameBuffer,
}

impl Control {
    async fn open(session: &Session) -> Control {
        let (send, recv) = session.open_bi().await.expect("control stream");
        Control {
            send,
            recv,
            buf: FrameBuffer::new(MAX_CONTROL_FRAME),
        }
    }

    async fn write(&mut self, msg: &ClientMsg) {
        let bytes = frame::encode_frame(msg, MAX_CONTROL_FRAME).expect("encode");
        self.send.write_all(&bytes).await.expect("write");
    }

    async fn read(&mut self) -> ServerMsg {
        loop {
            if let Some(payload) = self.buf.next_frame().expect("a frame") {
                return frame::decode(&payload, MAX_CONTROL_FRAME).expect("a message");
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(ANSWER_TIMEOUT, self.recv.read(&mut chunk))
                .await
                .expect("an answer in time")
                .expect("read")
                .expect("the stream is open");
            self.buf.extend(&chunk[..n]);
        }
    }

    /// Reads until `want` matches, returning it.
    async fn read_until(&mut self, mut want: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
        loop {
            let msg = self.read().await;
            if want(&msg) {
                return msg;
            }
        }
    }
}

fn start(dir: &TestDir, extra: &[&str]) -> Server {
    Server::start_with(
        dir,
        &ServerOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..ServerOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_logs_in_walks_and_is_heard_by_telnet() {
    let dir = TestDir::new();
    let server = start(&dir, &[]);
    let web = server.web.expect("tessera up prints the page's address");
    let info = page_info(web);
    assert_eq!(
        info.url,
        format!("https://127.0.0.1:{}/tessera", server.quic.port())
    );
    assert_eq!(info.hashes.len(), 1, "a development certificate's hash");
    assert_eq!(
        info.json["protocol_version"],
        tessera_proto::PROTOCOL_VERSION
    );
    assert!(
        info.json["world"]["statics"].is_array(),
        "the world to draw"
    );
    assert!(
        info.json["world"]["scripts"]
            .as_object()
            .is_some_and(|s| s.is_empty()),
        "no script sources for players"
    );

    let session = open(&info.url, info.hashes.clone())
        .await
        .expect("WebTransport session with the published hash");
    let mut ctl = Control::open(&session).await;
    ctl.write(&ClientMsg::Hello {
        version: tessera_proto::PROTOCOL_VERSION,
        client: "webtransport-test".into(),
    })
    .await;
    assert!(matches!(ctl.read().await, ServerMsg::Welcome { .. }));
    ctl.write(&ClientMsg::Create {
        name: "Webby".into(),
        password: "browser1".into(),
    })
    .await;
    let ServerMsg::LoggedIn { pos: start_pos, .. } = ctl.read().await else {
        panic!("not logged in");
    };

    // Walk east with inputs over datagrams until a snapshot acknowledges them
    // and shows the avatar moved.
    let mut seq = 0u32;
    let mut acked = 0u32;
    let mut origin = [0i32; 3];
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while tokio::time::Instant::now() < deadline && (acked < 20 || origin[0] <= 0) {
        seq += 1;
        let dg = frame::encode(&ClientDatagram::Input(Input {
            seq,
            move_x: 1.0,
            move_z: 0.0,
            yaw: 0.0,
            jump: false,
        }))
        .expect("encode");
        session.send_datagram(dg.into()).expect("send an input");
        if let Ok(Ok(bytes)) =
            tokio::time::timeout(Duration::from_millis(33), session.read_datagram()).await
        {
            let ServerDatagram::Snapshot {
                ack_input,
                origin: o,
                ..
            } = frame::decode(&bytes, MAX_DATAGRAM).expect("a snapshot");
            acked = acked.max(ack_input);
            origin = o;
        }
    }
    assert!(acked >= 20, "inputs acknowledged: {acked} of {seq}");
    let moved = origin[0] as f32 / 100.0 - start_pos.x;
    assert!(moved > 1.0, "walked {moved} m east over WebTransport");

    // A telnet player next to the spawn hears the browser player.
    let telnet = server.telnet;
    let mut bob = blocking(|| TelnetClient::create(telnet, "Bobtel", "secret9"));
    ctl.write(&ClientMsg::Say {
        text: "hello from the browser".into(),
    })
    .await;
    blocking(|| bob.wait_for("hello from the browser", ANSWER_TIMEOUT));

    // Any telnet command runs from the browser's chat panel.
    ctl.write(&ClientMsg::Command {
        line: "where".into(),
    })
    .await;
    let ServerMsg::Text { text } = ctl
        .read_until(|m| matches!(m, ServerMsg::Text { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(text.contains("cell"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_a_wrong_path_and_garbage_are_refused() {
    let dir = TestDir::new();
    let server = start(&dir, &[]);
    let info = page_info(server.web.expect("page"));

    let wrong = open(&info.url, vec![vec![7u8; 32]]).await;
    assert!(wrong.is_err(), "a certificate hash the page was not told");

    let other_path = info.url.replace("/tessera", "/elsewhere");
    let refused = open(&other_path, info.hashes.clone()).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("404")),
        "{:?}",
        refused.err()
    );

    // Garbage on the control stream: the session is closed with the
    // protocol error code, and the server goes on serving others.
    let session = open(&info.url, info.hashes.clone()).await.expect("session");
    let (mut send, _recv) = session.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let closed = tokio::time::timeout(ANSWER_TIMEOUT, session.closed())
        .await
        .expect("closed in time");
    assert!(
        closed.to_string().contains(&format!("code {}", 1))
            || format!("{closed:?}").contains("Closed(1,"),
        "closed with CLOSE_PROTOCOL: {closed:?}"
    );
    let again = open(&info.url, info.hashes).await.expect("another session");
    let mut ctl = Control::open(&again).await;
    ctl.write(&ClientMsg::Hello {
        version: tessera_proto::PROTOCOL_VERSION,
        client: "after-garbage".into(),
    })
    .await;
    assert!(matches!(ctl.read().await, ServerMsg::Welcome { .. }));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_bundle_and_a_missing_bundle_is_explained() {
    let dir = TestDir::new();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("index.html"), "<!doctype html><title>t</title>").unwrap();
    std::fs::write(bundle.join("app.js"), "console.log('tessera')").unwrap();
    let server = start(&dir, &["--web-dir", bundle.to_str().unwrap()]);
    let web = server.web.expect("page");
    let (status, body) = http_get(web, "/");
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>t</title>")
    );
    let (status, body) = http_get(web, "/app.js");
    assert_eq!((status, body.as_str()), (200, "console.log('tessera')"));
    assert_eq!(http_get(web, "/../Cargo.toml").0, 404);
    assert_eq!(http_get(web, "/nothing.js").0, 404);
    drop(server);

    let dir = TestDir::new();
    let empty = dir.path().join("not-built");
    let server = start(&dir, &["--web-dir", empty.to_str().unwrap()]);
    let (status, body) = http_get(server.web.expect("page"), "/");
    assert_eq!(status, 404);
    assert!(body.contains("scripts/build-web.sh"), "{body}");
}

#[test]
fn browsers_can_be_turned_away() {
    let dir = TestDir::new();
    let server = start(&dir, &["--no-webtransport"]);
    assert!(server.web.is_none(), "no page: {}", server.stdout());
}
