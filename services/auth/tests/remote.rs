//! The account service over real QUIC: two replicas sharing one UDP port, one store and one
//! key file, as they run behind one address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tessera_auth::remote::{AuthClient, AuthServer, AUTH_ALPN};
use tessera_auth::{verify_token_with, Auth, AuthError, RateLimits, Role};
use tessera_coordinator::operators::{OperatorKey, OperatorRecord, Operators, Voucher};
use tessera_coordinator::pki::{ClusterCa, CLUSTER_NAME};
use tessera_coordinator::{ClusterStore, MemStore};
use tessera_persistence::Database;

const CREATOR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Cluster {
    _dir: tempfile::TempDir,
    ca: ClusterCa,
    db: Database,
    key: std::path::PathBuf,
    /// The operators, in an in-process cluster store both replicas share.
    operators: Operators,
    /// Operator "root", vouched for by the CA.
    root: OperatorKey,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        let db = Database::open_redb(&dir.path().join("store.redb")).unwrap();
        let key = dir.path().join("token.key");
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let operators = Operators::in_store(store, "/t/", vec![ca.cert().clone()]);
        let root = OperatorKey::generate("root").unwrap();
        Cluster {
            _dir: dir,
            ca,
            db,
            key,
            operators,
            root,
        }
    }

    async fn add_root(&self) {
        let record =
            OperatorRecord::new("root", &self.root.public_hex(), &Voucher::Ca(&self.ca)).unwrap();
        self.operators.records().put(&record).await.unwrap();
    }

    fn replica(&self, listen: SocketAddr, limits: RateLimits) -> AuthServer {
        let auth = Arc::new(Auth::with_limits(self.db.clone(), &self.key, limits).unwrap());
        let config = self
            .ca
            .member(tessera_coordinator::identity::MemberRole::Auth, "auth")
            .unwrap()
            .server_config_for(AUTH_ALPN)
            .unwrap();
        AuthServer::start(auth, self.operators.clone(), listen, config, true).unwrap()
    }

    fn client(&self, addr: SocketAddr) -> AuthClient {
        self.client_as(addr, tessera_coordinator::identity::MemberRole::Router)
    }

    fn client_as(
        &self,
        addr: SocketAddr,
        role: tessera_coordinator::identity::MemberRole,
    ) -> AuthClient {
        let config = self
            .ca
            .member(role, "member-1")
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

    let created = client
        .create_account("Ann", "correct horse", CREATOR)
        .await
        .unwrap();
    assert_eq!(created.account.name, "Ann");
    let claims = verify_token_with(&key, &created.token, unix_now()).unwrap();
    assert_eq!(claims.account_id, created.account.id);
    assert!(matches!(
        client.create_account("ann", "whatever1", CREATOR).await,
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
    c.add_root().await;
    let op = client
        .set_role("ann", Role::Operator, &c.root)
        .await
        .unwrap();
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
    client
        .create_account("Bea", "password1", CREATOR)
        .await
        .unwrap();
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
    client
        .create_account("Cyd", "the right one", CREATOR)
        .await
        .unwrap();
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

/// A member certificate is not enough to change a role: the service itself checks the
/// operator's signature, refuses a replay, and refuses a revoked operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_need_a_valid_operator_signature_checked_by_the_service() {
    let c = Cluster::new();
    c.add_root().await;
    let port = free_udp_port();
    let (a, b) = (
        c.replica(port, RateLimits::default()),
        c.replica(port, RateLimits::default()),
    );
    let client = c.client(port);
    client
        .create_account("Zed", "password1", CREATOR)
        .await
        .unwrap();

    // A stranger's key, and a forged signature.
    let stranger = OperatorKey::generate("root").unwrap();
    let err = client
        .set_role("zed", Role::Operator, &stranger)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::NotAuthorized(why) if why.contains("does not verify")),
        "{err:?}"
    );
    let nobody = OperatorKey::generate("nobody").unwrap();
    let err = client
        .set_role("zed", Role::Operator, &nobody)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no operator called"), "{err}");

    // A signature for another account or role does not carry over.
    let sig = c.root.sign_request(
        "role",
        &tessera_auth::remote::role_body("zed", Role::Player),
    );
    let err = client
        .set_role_signed("zed", Role::Operator, sig)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::NotAuthorized(_)), "{err:?}");

    // The real one works once; its replay is refused by every replica.
    let sig = c.root.sign_request(
        "role",
        &tessera_auth::remote::role_body("zed", Role::Operator),
    );
    let done = client
        .set_role_signed("Zed", Role::Operator, sig.clone())
        .await
        .unwrap();
    assert_eq!(done.role, Role::Operator);
    for _ in 0..4 {
        let err = client
            .set_role_signed("zed", Role::Operator, sig.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
    }

    // Revoked: refused from the next request on.
    let mut record = c.operators.records().get("root").await.unwrap().unwrap();
    record.revoke(&Voucher::Ca(&c.ca)).unwrap();
    c.operators.records().put(&record).await.unwrap();
    let err = client
        .set_role("zed", Role::Player, &c.root)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(
        Auth::with_limits(c.db.clone(), &c.key, RateLimits::default())
            .unwrap()
            .find_account("zed")
            .unwrap()
            .unwrap()
            .role,
        Role::Operator,
        "nothing refused changed the account"
    );
    a.close();
    b.close();
}

/// Players' logins are the routers' business: another member of the cluster (a shard's
/// certificate here) is refused; a role change needs only the operator's signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_routers_log_players_in() {
    use tessera_coordinator::identity::MemberRole;
    let c = Cluster::new();
    c.add_root().await;
    let server = c.replica("127.0.0.1:0".parse().unwrap(), RateLimits::default());
    let addr = server.local_addr().unwrap();
    c.client(addr)
        .create_account("Una", "password1", CREATOR)
        .await
        .unwrap();
    let shard = c.client_as(addr, MemberRole::Shard);
    let err = shard.login("Una", "password1", CREATOR).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::NotAuthorized(why) if why.contains("only routers")),
        "{err:?}"
    );
    assert!(shard
        .create_account("Vic", "password1", CREATOR)
        .await
        .is_err());
    let ctl = c.client_as(addr, MemberRole::Ctl);
    ctl.set_role("una", Role::Operator, &c.root).await.unwrap();
    server.close();
}
