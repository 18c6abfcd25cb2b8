//! The account service over real QUIC: two replicas sharing one UDP port, one store and one
//! key file, as they run behind one address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tessera_auth::remote::{AuthClient, AuthServer, AUTH_ALPN};
use tessera_auth::{verify_token_with, Auth, AuthError, RateLimits, Role};
use tessera_coordinator::transport::{ClusterCa, CLUSTER_NAME};
use tessera_persistence::Database;

struct Cluster {
    _dir: tempfile::TempDir,
    ca: ClusterCa,
    db: Database,
    key: std::path::PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        let key = dir.path().join("token.key");
        Cluster {
            _dir: dir,
            ca,
            db,
            key,
        }
    }

    fn replica(&self, listen: SocketAddr, limits: RateLimits) -> AuthServer {
        let auth = Arc::new(Auth::with_limits(self.db.clone(), &self.key, limits).unwrap());
        let config = self
            .ca
            .member("auth")
            .unwrap()
            .server_config_for(AUTH_ALPN)
            .unwrap();
        AuthServer::start(auth, listen, config, true).unwrap()
    }

    fn client(&self, addr: SocketAddr) -> AuthClient {
        let config = self
            .ca
            .member("router-1")
            .unwrap()
            .client_config_for(AUTH_ALPN)
            .unwrap();
        AuthClient::new(addr, CLUSTER_NAME, config).unwrap()
    }
}

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_quic_create_login_check_logout() {
    let c = Cluster::new();
    let server = c.replica("127.0.0.1:0".parse().unwrap(), RateLimits::default());
    let client = c.client(server.local_addr().unwrap());
    let key = client.verifying_key().await.unwrap();

    let created = client.create_account("Ann", "correct horse").await.unwrap();
    assert_eq!(created.account.name, "Ann");
    let claims = verify_token_with(&key, &created.token, unix_now()).unwrap();
    assert_eq!(claims.account_id, created.account.id);
    assert!(matches!(
        client.create_account("ann", "whatever1").await,
        Err(AuthError::NameTaken)
    ));

    let from: IpAddr = "10.0.0.7".parse().unwrap();
    let session = client.login("ANN", "correct horse", from).await.unwrap();
    assert_eq!(client.check(&session.token).await.unwrap().name, "Ann");
    client.logout(&session.token).await.unwrap();
    assert!(matches!(
        client.check(&session.token).await,
        Err(AuthError::SessionEnded)
    ));
    // The first session is untouched.
    client.check(&created.token).await.unwrap();

    assert!(matches!(
        client.login("Ann", "wrong password", from).await,
        Err(AuthError::BadCredentials)
    ));
    let op = client.set_role("ann", Role::Operator).await.unwrap();
    assert_eq!(op.role, Role::Operator);
    let again = client.login("Ann", "correct horse", from).await.unwrap();
    assert_eq!(
        verify_token_with(&key, &again.token, unix_now())
            .unwrap()
            .role,
        Role::Operator
    );
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_one_address_survive_losing_one() {
    let c = Cluster::new();
    let addr = free_udp_port();
    let first = c.replica(addr, RateLimits::default());
    let second = c.replica(addr, RateLimits::default());
    let client = c.client(addr);
    client.create_account("Bea", "password1").await.unwrap();
    let from: IpAddr = "10.0.0.8".parse().unwrap();
    client.login("Bea", "password1", from).await.unwrap();

    // Whichever replica the connection reached, stop it; the other answers the next login.
    // A stopped process's socket is gone; drop the endpoint so this one's is too.
    first.close();
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut ok = 0;
    for _ in 0..3 {
        // A fresh client dials a fresh connection, which the kernel may hash to either
        // socket; only the live one accepts it.
        match c.client(addr).login("Bea", "password1", from).await {
            Ok(_) => ok += 1,
            Err(e) => panic!("login after losing a replica failed: {e}"),
        }
    }
    assert_eq!(ok, 3);
    // The first client's connection may have been on the stopped replica: it reconnects.
    client.login("Bea", "password1", from).await.unwrap();
    second.close();
    drop(second);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = c
        .client(addr)
        .login("Bea", "password1", from)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "The account service is unavailable; please try again in a moment."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_from_one_address_is_limited_but_not_the_owner() {
    let c = Cluster::new();
    let server = c.replica("127.0.0.1:0".parse().unwrap(), RateLimits::default());
    let client = c.client(server.local_addr().unwrap());
    client.create_account("Cyd", "the right one").await.unwrap();
    let attacker: IpAddr = "192.0.2.66".parse().unwrap();
    let mut limited = 0;
    for i in 0..100 {
        match client.login("Cyd", &format!("guess {i}"), attacker).await {
            Err(AuthError::BadCredentials) => {}
            Err(AuthError::RateLimited { retry_after_secs }) => {
                assert!(retry_after_secs >= 1);
                limited += 1;
            }
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    assert!(limited >= 90, "only {limited} of 100 guesses were limited");
    // Even the right password is refused from the attacking address...
    assert!(matches!(
        client.login("Cyd", "the right one", attacker).await,
        Err(AuthError::RateLimited { .. })
    ));
    // ...but not from the owner's.
    let owner: IpAddr = "198.51.100.5".parse().unwrap();
    client.login("Cyd", "the right one", owner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_without_a_cluster_certificate_are_refused() {
    let c = Cluster::new();
    let server = c.replica("127.0.0.1:0".parse().unwrap(), RateLimits::default());
    let other = Cluster::new();
    let stranger = other.client(server.local_addr().unwrap());
    let err = stranger.verifying_key().await.unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
