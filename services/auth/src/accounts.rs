//! [`Accounts`]: what a router logs players in through, the same whether the accounts are in
//! this process ([`Auth`], `tessera up`) or behind the account service ([`AuthClient`]).

use std::net::IpAddr;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

use crate::remote::{AuthClient, Session, SESSION_TTL};
use crate::{verify_token_with, Auth, AuthError, Claims};

/// Where a router's accounts live.
#[derive(Clone)]
pub struct Accounts {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local {
        auth: Arc<Auth>,
        /// Bounds concurrent password hashing: argon2id takes ~19 MiB and a core's worth of
        /// time each, so a login flood queues instead of fanning out over the blocking pool.
        hashing: Arc<tokio::sync::Semaphore>,
    },
    Remote {
        client: AuthClient,
        key: Arc<tokio::sync::OnceCell<VerifyingKey>>,
    },
}

impl Accounts {
    /// Accounts kept by this process.
    pub fn local(auth: Arc<Auth>) -> Accounts {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Accounts {
            inner: Inner::Local {
                auth,
                hashing: Arc::new(tokio::sync::Semaphore::new(cores)),
            },
        }
    }

    /// Accounts behind the account service.
    pub fn remote(client: AuthClient) -> Accounts {
        Accounts {
            inner: Inner::Remote {
                client,
                key: Arc::new(tokio::sync::OnceCell::new()),
            },
        }
    }

    /// Creates an account for a player at address `from` and starts its session.
    pub async fn create(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Session, AuthError> {
        match &self.inner {
            Inner::Local { auth, hashing } => {
                let (name, password) = (name.to_string(), password.to_string());
                blocking(hashing, auth, move |auth| {
                    let account = auth.create_account(&name, &password, from)?;
                    let token = auth.issue_token(&account, SESSION_TTL);
                    Ok(Session { account, token })
                })
                .await
            }
            Inner::Remote { client, .. } => client.create_account(name, password, from).await,
        }
    }

    /// Checks a password from address `from` and starts a session.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Session, AuthError> {
        match &self.inner {
            Inner::Local { auth, hashing } => {
                let (name, password) = (name.to_string(), password.to_string());
                blocking(hashing, auth, move |auth| {
                    let account = auth.login(&name, &password, from)?;
                    let token = auth.issue_token(&account, SESSION_TTL);
                    Ok(Session { account, token })
                })
                .await
            }
            Inner::Remote { client, .. } => client.login(name, password, from).await,
        }
    }

    /// Ends a session (the player quit).
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        match &self.inner {
            Inner::Local { auth, .. } => {
                let token = token.to_string();
                off_thread(auth, move |auth| auth.revoke(&token)).await
            }
            Inner::Remote { client, .. } => client.logout(token).await,
        }
    }

    /// Checks a token and that its session was not logged out (asks the store, or the service).
    pub async fn check_session(&self, token: &str) -> Result<Claims, AuthError> {
        match &self.inner {
            Inner::Local { auth, .. } => {
                let token = token.to_string();
                off_thread(auth, move |auth| auth.check_session(&token)).await
            }
            Inner::Remote { client, .. } => client.check(token).await,
        }
    }

    /// Checks a token's signature and expiry here, without asking anyone (the verifying key
    /// is fetched once from the service).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = crate::Clock::unix_secs(&crate::SystemClock);
        match &self.inner {
            Inner::Local { auth, .. } => auth.verify_token(token),
            Inner::Remote { client, key } => {
                let key = key.get_or_try_init(|| client.verifying_key()).await?;
                verify_token_with(key, token, now)
            }
        }
    }
}

/// Runs store work (no password hashing) on a blocking thread.
async fn off_thread<T: Send + 'static>(
    auth: &Arc<Auth>,
    work: impl FnOnce(&Auth) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || work(&auth))
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?
}

async fn blocking<T: Send + 'static>(
    hashing: &tokio::sync::Semaphore,
    auth: &Arc<Auth>,
    work: impl FnOnce(&Auth) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let Ok(_permit) = hashing.acquire().await else {
        return Err(AuthError::Unavailable("login is shutting down".into()));
    };
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || work(&auth))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "login task failed");
            AuthError::Unavailable("login failed unexpectedly".into())
        })?
}
