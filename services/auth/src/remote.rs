//! The account service over QUIC (`tessera auth`), so that several routers share one set of
//! accounts and several auth replicas can stand behind one address.
//!
//! **Wire.** ALPN [`AUTH_ALPN`]; one bidirectional stream per request; the request and the
//! response are each one bincode message (`tessera_proto::frame`) read to the end of the stream
//! under a size limit. TLS is the caller's: Tessera uses the cluster CA with client
//! certificates, so only cluster members (routers, `tessera ctl` for an operator) reach it.
//!
//! **Replicas.** The service keeps nothing of its own: accounts and revoked sessions live in
//! the persistence service, and every replica signs with the same key file, so any replica
//! answers any request. [`AuthServer::start`] can share its UDP port with other replicas on the
//! same host (`SO_REUSEPORT`): the kernel spreads connections over them, as a Kubernetes
//! Service spreads them over pods. Failed-login counters are per replica (see the crate docs).
//!
//! **Client.** [`AuthClient`] keeps one connection and opens a new one when it breaks (a
//! replica stopped: the next connection reaches another). Routers fetch the verifying key once
//! and check tokens locally ([`crate::verify_token_with`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::{Account, Auth, AuthError, Claims, Role};
use tessera_coordinator::identity::{MemberRole, Peer};
use tessera_coordinator::operators::{OperatorError, OperatorKey, OperatorSig, Operators};

/// ALPN of the account protocol.
pub const AUTH_ALPN: &[u8] = b"tessera-auth/1";

/// Largest request or response (names, passwords and tokens are all short).
const MAX_MESSAGE: usize = 16 * 1024;

/// How long a client waits for an answer. Logins queue behind argon2id under load, so this is
/// generous.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sessions last.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// No `Debug`: it carries passwords and tokens.
#[derive(Serialize, Deserialize)]
enum Request {
    /// From routers before creation limits: counted as one unknown address (0.0.0.0).
    Create {
        name: String,
        password: String,
    },
    Login {
        name: String,
        password: String,
        from: IpAddr,
    },
    Logout {
        token: String,
    },
    Check {
        token: String,
    },
    SetRole {
        name: String,
        role: Role,
    },
    VerifyingKey,
    /// Appended (bincode numbers variants in order), so older routers' requests still decode.
    CreateFrom {
        name: String,
        password: String,
        from: IpAddr,
    },
    /// `SetRole` signed by an operator (kind `role`, body [`role_body`]); the unsigned
    /// `SetRole` is refused.
    SetRoleSigned {
        name: String,
        role: Role,
        sig: OperatorSig,
    },
}

/// The canonical bytes an operator signs to give account `name` a role.
pub fn role_body(name: &str, role: Role) -> Vec<u8> {
    format!("{}|{role}", name.to_lowercase()).into_bytes()
}

/// No `Debug`: it carries tokens.
#[derive(Serialize, Deserialize)]
enum Response {
    Session { account: Account, token: String },
    Claims(Claims),
    Account(Account),
    Key([u8; 32]),
    Done,
    Failed(WireError),
}

/// [`AuthError`] as it crosses the wire.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    InvalidName(String),
    InvalidPassword(String),
    NameTaken,
    BadCredentials,
    RateLimited {
        retry_after_secs: u64,
    },
    TokenInvalid,
    TokenExpired,
    SessionEnded,
    NoSuchAccount(String),
    Unavailable(String),
    TooManyAccounts {
        retry_after_secs: u64,
        this_address: bool,
    },
    NotAuthorized(String),
}

impl From<AuthError> for WireError {
    fn from(e: AuthError) -> WireError {
        match e {
            AuthError::InvalidName(s) => WireError::InvalidName(s),
            AuthError::InvalidPassword(s) => WireError::InvalidPassword(s),
            AuthError::NameTaken => WireError::NameTaken,
            AuthError::BadCredentials => WireError::BadCredentials,
            AuthError::RateLimited { retry_after_secs } => {
                WireError::RateLimited { retry_after_secs }
            }
            AuthError::TokenInvalid => WireError::TokenInvalid,
            AuthError::TokenExpired => WireError::TokenExpired,
            AuthError::SessionEnded => WireError::SessionEnded,
            AuthError::NoSuchAccount(n) => WireError::NoSuchAccount(n),
            AuthError::TooManyAccounts {
                retry_after_secs,
                this_address,
            } => WireError::TooManyAccounts {
                retry_after_secs,
                this_address,
            },
            AuthError::NotAuthorized(why) => WireError::NotAuthorized(why),
            other => WireError::Unavailable(other.to_string()),
        }
    }
}

impl From<WireError> for AuthError {
    fn from(e: WireError) -> AuthError {
        match e {
            WireError::InvalidName(s) => AuthError::InvalidName(s),
            WireError::InvalidPassword(s) => AuthError::InvalidPassword(s),
            WireError::NameTaken => AuthError::NameTaken,
            WireError::BadCredentials => AuthError::BadCredentials,
            WireError::RateLimited { retry_after_secs } => {
                AuthError::RateLimited { retry_after_secs }
            }
            WireError::TokenInvalid => AuthError::TokenInvalid,
            WireError::TokenExpired => AuthError::TokenExpired,
            WireError::SessionEnded => AuthError::SessionEnded,
            WireError::NoSuchAccount(n) => AuthError::NoSuchAccount(n),
            WireError::Unavailable(s) => AuthError::Unavailable(s),
            WireError::TooManyAccounts {
                retry_after_secs,
                this_address,
            } => AuthError::TooManyAccounts {
                retry_after_secs,
                this_address,
            },
            WireError::NotAuthorized(why) => AuthError::NotAuthorized(why),
        }
    }
}

/// A running account service.
pub struct AuthServer {
    endpoint: quinn::Endpoint,
}

impl AuthServer {
    /// Serves `auth` on `listen` with `config` (whose TLS must offer [`AUTH_ALPN`]); with
    /// `reuse_port`, other processes may listen on the same address. Must be called inside a
    /// tokio runtime; serves until [`AuthServer::close`].
    /// Role changes must carry a signature of an operator in `operators`.
    pub fn start(
        auth: Arc<Auth>,
        operators: Operators,
        listen: SocketAddr,
        config: quinn::ServerConfig,
        reuse_port: bool,
    ) -> std::io::Result<AuthServer> {
        let socket = bind_udp(listen, reuse_port)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime for the auth service"))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            runtime,
        )?;
        // argon2id takes a core and 19 MiB per call: a login flood queues here rather than
        // spreading over the whole blocking pool.
        let hashing = Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        ));
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (auth, hashing) = (auth.clone(), hashing.clone());
                let operators = operators.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "auth connection refused (not a cluster member?)");
                            return;
                        }
                    };
                    let Some(peer) = Peer::of(&conn) else {
                        tracing::warn!(
                            "auth connection closed: its certificate names no member role"
                        );
                        conn.close(1u32.into(), b"unknown member role");
                        return;
                    };
                    let peer = Arc::new(peer);
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_stream(
                            auth.clone(),
                            operators.clone(),
                            peer.clone(),
                            hashing.clone(),
                            send,
                            recv,
                        ));
                    }
                });
            }
        });
        Ok(AuthServer { endpoint })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops serving and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"auth service stopping");
    }
}

/// A UDP socket on `addr`, shareable with other processes when `reuse_port`.
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

async fn serve_stream(
    auth: Arc<Auth>,
    operators: Operators,
    peer: Arc<Peer>,
    hashing: Arc<tokio::sync::Semaphore>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let response = match recv.read_to_end(MAX_MESSAGE).await {
        Err(e) => Response::Failed(WireError::Unavailable(format!(
            "cannot read the request: {e}"
        ))),
        Ok(bytes) => match tessera_proto::frame::decode::<Request>(&bytes, MAX_MESSAGE) {
            Err(e) => {
                tracing::warn!(error = %e, "malformed auth request");
                Response::Failed(WireError::Unavailable(format!("malformed request: {e}")))
            }
            Ok(req) => match authorize(&operators, &peer, req).await {
                Err(refused) => Response::Failed(refused),
                Ok(req) => {
                    let heavy = matches!(
                        req,
                        Request::Create { .. } | Request::CreateFrom { .. } | Request::Login { .. }
                    );
                    let _permit = if heavy {
                        hashing.acquire().await.ok()
                    } else {
                        None
                    };
                    match tokio::task::spawn_blocking(move || serve(&auth, req)).await {
                        Ok(r) => r,
                        Err(e) => {
                            Response::Failed(WireError::Unavailable(format!("request failed: {e}")))
                        }
                    }
                }
            },
        },
    };
    let bytes = match tessera_proto::frame::encode(&response) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an auth response");
            return;
        }
    };
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

/// Checks the operator's signature on a privileged request here, in the service that acts on
/// it (a member certificate alone is not enough).
async fn authorize(operators: &Operators, peer: &Peer, req: Request) -> Result<Request, WireError> {
    // Players' accounts and sessions are the routers' business only.
    let players = matches!(
        req,
        Request::Create { .. }
            | Request::CreateFrom { .. }
            | Request::Login { .. }
            | Request::Logout { .. }
            | Request::Check { .. }
    );
    if players && !peer.may_be(MemberRole::Router) {
        tracing::warn!(peer = peer.name(), role = ?peer.role(), "a player request from a member that is no router was refused");
        return Err(WireError::NotAuthorized(format!(
            "only routers log players in (this certificate's role is {})",
            peer.role().map_or("none", MemberRole::as_str)
        )));
    }
    match &req {
        Request::SetRole { name, .. } => {
            tracing::warn!(name, "unsigned role change refused");
            Err(WireError::NotAuthorized(
                OperatorError::Unsigned.to_string(),
            ))
        }
        Request::SetRoleSigned { name, role, sig } => {
            match operators
                .check("role", &role_body(name, *role), Some(sig))
                .await
            {
                Ok(operator) => {
                    tracing::info!(operator, name, %role, "role change authorised");
                    Ok(req)
                }
                Err(e) if e.is_refusal() => {
                    tracing::warn!(operator = sig.operator, name, error = %e, "role change refused");
                    Err(WireError::NotAuthorized(e.to_string()))
                }
                Err(e) => Err(WireError::Unavailable(e.to_string())),
            }
        }
        _ => Ok(req),
    }
}

fn serve(auth: &Auth, req: Request) -> Response {
    let result = match req {
        Request::Create { name, password } => {
            let unknown = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            auth.create_account(&name, &password, unknown).map(|a| {
                let token = auth.issue_token(&a, SESSION_TTL);
                Response::Session { account: a, token }
            })
        }
        Request::CreateFrom {
            name,
            password,
            from,
        } => auth.create_account(&name, &password, from).map(|a| {
            let token = auth.issue_token(&a, SESSION_TTL);
            Response::Session { account: a, token }
        }),
        Request::Login {
            name,
            password,
            from,
        } => auth.login(&name, &password, from).map(|a| {
            let token = auth.issue_token(&a, SESSION_TTL);
            Response::Session { account: a, token }
        }),
        Request::Logout { token } => auth.revoke(&token).map(|()| Response::Done),
        Request::Check { token } => auth.check_session(&token).map(Response::Claims),
        Request::SetRole { .. } => Err(AuthError::NotAuthorized(
            OperatorError::Unsigned.to_string(),
        )),
        Request::SetRoleSigned { name, role, .. } => {
            auth.set_role(&name, role).map(Response::Account)
        }
        Request::VerifyingKey => Ok(Response::Key(auth.verifying_key().to_bytes())),
    };
    result.unwrap_or_else(|e| Response::Failed(e.into()))
}

/// A logged-in session: the account and its signed token (left out of
/// `Debug`).
#[derive(Clone)]
pub struct Session {
    pub account: Account,
    pub token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("account", &self.account)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A client of the account service. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct AuthClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    addr: SocketAddr,
    name: String,
    endpoint: quinn::Endpoint,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl AuthClient {
    /// A client of the service at `addr`, whose certificate must name `server_name`. Connects
    /// on first use. Must be called inside a tokio runtime.
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> std::io::Result<AuthClient> {
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(config);
        Ok(AuthClient {
            inner: Arc::new(ClientInner {
                addr,
                name: server_name.to_string(),
                endpoint,
                conn: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Creates an account for a player at address `from` (for the creation limits) and logs
    /// it in.
    pub async fn create_account(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Session, AuthError> {
        self.session(Request::CreateFrom {
            name: name.to_string(),
            password: password.to_string(),
            from,
        })
        .await
    }

    /// Checks a password (from address `from`, for rate limiting) and starts a session.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Session, AuthError> {
        self.session(Request::Login {
            name: name.to_string(),
            password: password.to_string(),
            from,
        })
        .await
    }

    /// Ends the session of `token` on every replica.
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        match self
            .call(Request::Logout {
                token: token.to_string(),
            })
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Verifies a token and that its session was not logged out.
    pub async fn check(&self, token: &str) -> Result<Claims, AuthError> {
        match self
            .call(Request::Check {
                token: token.to_string(),
            })
            .await?
        {
            Response::Claims(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Gives the account called `name` a role, as operator `key` (the service checks the
    /// signature: kind `role`, body [`role_body`]).
    pub async fn set_role(
        &self,
        name: &str,
        role: Role,
        key: &OperatorKey,
    ) -> Result<Account, AuthError> {
        let sig = key.sign_request("role", &role_body(name, role));
        self.set_role_signed(name, role, sig).await
    }

    /// [`AuthClient::set_role`] with a signature made elsewhere (tests of replays).
    pub async fn set_role_signed(
        &self,
        name: &str,
        role: Role,
        sig: OperatorSig,
    ) -> Result<Account, AuthError> {
        match self
            .call(Request::SetRoleSigned {
                name: name.to_string(),
                role,
                sig,
            })
            .await?
        {
            Response::Account(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// The key that verifies the service's tokens.
    pub async fn verifying_key(&self) -> Result<VerifyingKey, AuthError> {
        match self.call(Request::VerifyingKey).await? {
            Response::Key(bytes) => VerifyingKey::from_bytes(&bytes)
                .map_err(|e| AuthError::Key(format!("the service sent a bad key: {e}"))),
            other => Err(unexpected(other)),
        }
    }

    async fn session(&self, req: Request) -> Result<Session, AuthError> {
        match self.call(req).await? {
            Response::Session { account, token } => Ok(Session { account, token }),
            other => Err(unexpected(other)),
        }
    }

    /// One request; a broken connection is replaced and the request sent once more (every
    /// request is safe to repeat: a repeated create answers "name taken", which is what the
    /// first attempt did if it landed).
    async fn call(&self, req: Request) -> Result<Response, AuthError> {
        let bytes = tessera_proto::frame::encode(&req)
            .map_err(|e| AuthError::Unavailable(format!("cannot encode the request: {e}")))?;
        let mut last = String::new();
        for _ in 0..2 {
            let conn = match self.connection().await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, exchange(&conn, &bytes)).await {
                Ok(Ok(resp)) => {
                    return match resp {
                        Response::Failed(e) => Err(e.into()),
                        ok => Ok(ok),
                    }
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }
            // Forget the connection; the next attempt dials again.
            let mut slot = self.inner.conn.lock().await;
            if slot.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                *slot = None;
            }
        }
        tracing::warn!(addr = %self.inner.addr, error = %last, "auth service unreachable");
        Err(AuthError::Unavailable(format!(
            "auth service at {}: {last}",
            self.inner.addr
        )))
    }

    async fn connection(&self) -> Result<quinn::Connection, String> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connecting = self
            .inner
            .endpoint
            .connect(self.inner.addr, &self.inner.name)
            .map_err(|e| format!("cannot connect: {e}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(3), connecting)
            .await
            .map_err(|_| "connection timed out".to_string())?
            .map_err(|e| format!("cannot connect: {e}"))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

async fn exchange(conn: &quinn::Connection, request: &[u8]) -> Result<Response, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(request).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let bytes = recv
        .read_to_end(MAX_MESSAGE)
        .await
        .map_err(|e| e.to_string())?;
    tessera_proto::frame::decode(&bytes, MAX_MESSAGE).map_err(|e| format!("bad answer: {e}"))
}

fn unexpected(resp: Response) -> AuthError {
    // The variant only: a session answer holds a token, which must not reach logs.
    let kind = match resp {
        Response::Session { .. } => "session",
        Response::Claims(_) => "claims",
        Response::Account(_) => "account",
        Response::Key(_) => "key",
        Response::Done => "done",
        Response::Failed(_) => "failure",
    };
    AuthError::Unavailable(format!("unexpected answer from the auth service: {kind}"))
}
