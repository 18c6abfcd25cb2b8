//! Accounts and sessions for Tessera.
//!
//! [`Auth`] creates accounts, checks logins and issues session tokens. Accounts live in a
//! [`tessera_persistence::Database`]; the session signing key lives in a file; rate-limit state
//! lives in memory (one process's view: behind several auth processes, each limits on its own).
//!
//! # CPU cost
//!
//! [`Auth::create_account`] and [`Auth::login`] run argon2id (m = 19456 KiB, t = 2, p = 1),
//! which takes tens of milliseconds of CPU and 19 MiB of memory per call. They are blocking
//! functions: async callers must run them with `tokio::task::spawn_blocking` (and may want a
//! semaphore to bound the memory of parallel logins). Everything else here is cheap.
//!
//! # Names and passwords
//!
//! See [`validate_name`] and [`validate_password`]. Names are unique case-insensitively: the
//! lowercased name is the index key, and the account keeps the name as typed for display.
//!
//! # Logins
//!
//! An unknown name and a wrong password both give [`AuthError::BadCredentials`], after the
//! same argon2id work (a dummy hash is verified for unknown names), so names cannot be probed
//! by error or by timing. Failures are rate limited per name and address, per address, and
//! per name ([`RateLimits`]); over the limit, [`AuthError::RateLimited`] is returned without
//! checking the password. The per-name limit does not hold an address the account logged in
//! from in the last [`OWNER_ADDRESS_DAYS`] days, so strangers cannot lock the owner out.
//!
//! # Account creation
//!
//! Each creation costs argon2id, so creations are limited per address and in total
//! ([`RateLimits`]; loopback exempt by default): over the limit,
//! [`AuthError::TooManyAccounts`] is returned after the cheap checks (name rules, name free) and
//! before the password is hashed.
//!
//! # Tokens
//!
//! [`Auth::issue_token`] signs [`Claims`] (account id, name, expiry) with ed25519. Anyone with
//! [`Auth::verifying_key`] can check a token offline with [`verify_token_with`]; tokens cannot
//! be revoked before they expire, so keep their lifetime short. Deleting the key file
//! invalidates every token.
//!
//! # Storage layout
//!
//! Keys are built with [`tessera_persistence::key`]:
//!
//! ```text
//! ("auth", "last_account_id")      u64 BE, the last id handed out (ids start at 1)
//! ("auth", "account", id u64 BE)   JSON {id, name, created_unix, password_hash (PHC string)}
//! ("auth", "name", lowercase name) u64 BE account id
//! ("auth", "seen", id u64 BE)      JSON [{network, unix}], where the account logged in from
//! ("auth", "revoked", session hex) u64 BE, when the logged-out session's token expires
//!                                  (deleted after that: Auth::sweep_revoked)
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ed25519_dalek::{SigningKey, VerifyingKey};
use parking_lot::Mutex;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use tessera_persistence::{key, Database, StoreError, Transaction};

mod address;
mod clock;
mod error;
mod keyfile;
mod rules;
mod throttle;
mod token;

pub use address::{network_of, AddressCaps, AddressSet, AddressSlot};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::AuthError;
pub use rules::{
    validate_name, validate_password, NAME_MAX_CHARS, NAME_MIN_CHARS, PASSWORD_MAX_BYTES,
    PASSWORD_MIN_BYTES,
};
pub use throttle::RateLimits;
pub use token::{verify_token_with, Claims, Role, MAX_TOKEN_LEN};

mod accounts;
pub mod remote;

pub use accounts::Accounts;

/// Makes sure the session signing key file at `path` exists and holds a key: loads it, or
/// creates it (mode 0600) if there is none. For tools that prepare a deployment's secrets
/// (`tessera ca k8s-secret`).
pub fn ensure_signing_key(path: &std::path::Path) -> Result<(), AuthError> {
    keyfile::load_or_create(path).map(|_| ())
}
pub use remote::{AuthClient, Session};

use throttle::{Attempt, Creations, Throttle};

/// An address the account logged in from this many days ago still counts as the owner's for
/// the per-name login limit.
pub const OWNER_ADDRESS_DAYS: u64 = 30;
/// Addresses remembered per account (the most recent).
const OWNER_ADDRESSES: usize = 16;

/// argon2id memory cost in KiB (OWASP's recommendation, and the argon2 crate's default).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// argon2id iterations.
pub const ARGON2_ITERATIONS: u32 = 2;
/// argon2id lanes.
pub const ARGON2_LANES: u32 = 1;

/// Verified when the name is unknown, so that a miss costs as much as a wrong password. Its
/// parameters equal the real ones (a test checks); the hash matches no password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1\
    $dGVzc2VyYWR1bW15c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A player account (without its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: u64,
    /// As the player typed it at creation.
    pub name: String,
    pub created_unix: u64,
    #[serde(default)]
    pub role: Role,
}

/// The stored record of an account.
#[derive(Serialize, Deserialize)]
struct AccountRecord {
    id: u64,
    name: String,
    created_unix: u64,
    password_hash: String,
    #[serde(default)]
    role: Role,
}

impl AccountRecord {
    fn account(&self) -> Account {
        Account {
            id: self.id,
            name: self.name.clone(),
            created_unix: self.created_unix,
            role: self.role,
        }
    }
}

fn last_id_key() -> Vec<u8> {
    key(&[b"auth", b"last_account_id"])
}

fn account_key(id: u64) -> Vec<u8> {
    key(&[b"auth", b"account", &id.to_be_bytes()])
}

/// Revocations [`Auth::sweep_revoked`] reads and deletes per transaction.
pub const REVOKED_SWEEP_BATCH: usize = 256;

/// How often a serving process runs [`Auth::sweep_revoked`] ([`sweep_revoked_every`]).
pub const REVOKED_SWEEP_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Runs [`Auth::sweep_revoked`] every `interval` until dropped; a failure (the store is
/// unreachable) is logged and tried again next time.
pub async fn sweep_revoked_every(auth: Arc<Auth>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let a = auth.clone();
        match tokio::task::spawn_blocking(move || a.sweep_revoked()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep expired revocations"),
            Err(e) => tracing::warn!(error = %e, "the revocation sweep failed"),
        }
    }
}

fn revoked_key(session: &str) -> Vec<u8> {
    key(&[b"auth", b"revoked", session.as_bytes()])
}

fn seen_key(id: u64) -> Vec<u8> {
    key(&[b"auth", b"seen", &id.to_be_bytes()])
}

/// A network an account logged in from, and when last.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    network: IpAddr,
    unix: u64,
}

fn read_seen(tx: &mut dyn Transaction, id: u64) -> Result<Vec<Seen>, StoreError> {
    let Some(json) = tx.get(&seen_key(id))? else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&json)
        .map_err(|e| StoreError::Corrupt(format!("login addresses of account {id}: {e}")))
}

fn name_key(canonical: &str) -> Vec<u8> {
    key(&[b"auth", b"name", canonical.as_bytes()])
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, not 8", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

fn read_record(tx: &mut dyn Transaction, id: u64) -> Result<Option<AccountRecord>, StoreError> {
    let Some(json) = tx.get(&account_key(id))? else {
        return Ok(None);
    };
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("account record {id}: {e}")))
}

fn find_record(
    tx: &mut dyn Transaction,
    canonical: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let Some(id) = tx.get(&name_key(canonical))? else {
        return Ok(None);
    };
    let id = decode_u64(&id, "account id of a name")?;
    let record = read_record(tx, id)?;
    if record.is_none() {
        return Err(StoreError::Corrupt(format!(
            "name {canonical:?} points at missing account {id}"
        )));
    }
    Ok(record)
}

/// Accounts, logins and session tokens. Share it behind an `Arc`.
pub struct Auth {
    db: Database,
    signing_key: SigningKey,
    verifying_key: VerifyingKey,
    hasher: Argon2<'static>,
    throttle: Mutex<Throttle>,
    creations: Mutex<Creations>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("db", &self.db)
            .field(
                "verifying_key",
                &token::hex_encode(self.verifying_key.as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Opens the account service on `db`, with the signing key at `key_path` (created, with
    /// its directory, if missing; mode 0600), default [`RateLimits`] and the system clock.
    pub fn open(db: Database, key_path: &Path) -> Result<Auth, AuthError> {
        Self::with_limits(db, key_path, RateLimits::default())
    }

    /// Like [`Auth::open`], with other rate limits.
    pub fn with_limits(
        db: Database,
        key_path: &Path,
        limits: RateLimits,
    ) -> Result<Auth, AuthError> {
        Self::with_clock(db, key_path, limits, Arc::new(SystemClock))
    }

    /// Like [`Auth::with_limits`], reading the time from `clock` (tests pass a
    /// [`ManualClock`]).
    pub fn with_clock(
        db: Database,
        key_path: &Path,
        limits: RateLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Auth, AuthError> {
        let signing_key = keyfile::load_or_create(key_path)?;
        let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
            .map_err(|e| AuthError::PasswordHashing(e.to_string()))?;
        Ok(Auth {
            db,
            verifying_key: signing_key.verifying_key(),
            signing_key,
            hasher: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            throttle: Mutex::new(Throttle::new(limits.clone())),
            creations: Mutex::new(Creations::new(limits)),
            clock,
        })
    }

    /// The public key that verifies this service's tokens (see [`verify_token_with`]).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key
    }

    /// Creates an account for a player at address `from`. CPU-heavy (argon2id): call from
    /// `spawn_blocking` in async code.
    ///
    /// Fails with [`AuthError::InvalidName`] / [`AuthError::InvalidPassword`] for input that
    /// breaks the rules, [`AuthError::NameTaken`] if the name, in any case, exists, and
    /// [`AuthError::TooManyAccounts`] over the creation limits (checked in that order, so only
    /// creations that would succeed count, and a refused one costs no hashing).
    pub fn create_account(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Account, AuthError> {
        validate_name(name)?;
        validate_password(password)?;
        let canonical = rules::canonical_name(name);
        // Cheap early answer before the expensive hash; the transaction checks again.
        if self.db.get(&name_key(&canonical))?.is_some() {
            return Err(AuthError::NameTaken);
        }
        let at = self.clock.now();
        if let Err(refused) = self.creations.lock().admit(from, at) {
            let retry_after_secs = throttle::retry_secs(refused.wait);
            tracing::warn!(address = %from, retry_after_secs, this_address = refused.this_address, "account creation rate limited");
            let reason = if refused.this_address {
                "per_address"
            } else {
                "total"
            };
            metrics::counter!("tessera_accounts_refused_total", "reason" => reason).increment(1);
            return Err(AuthError::TooManyAccounts {
                retry_after_secs,
                this_address: refused.this_address,
            });
        }
        let result = self.insert_account(name, &canonical, password);
        if result.is_err() {
            self.creations.lock().give_back(from, at);
        }
        let account = result?;
        tracing::info!(player = account.id, name = %account.name, address = %from, "account created");
        Ok(account)
    }

    fn insert_account(
        &self,
        name: &str,
        canonical: &str,
        password: &str,
    ) -> Result<Account, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        let password_hash = self
            .hasher
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::PasswordHashing(e.to_string()))?
            .to_string();
        let created_unix = self.clock.unix_secs();
        let created = self.db.transact(|tx| {
            let name_key = name_key(canonical);
            if tx.get(&name_key)?.is_some() {
                return Ok(None);
            }
            let last = match tx.get(&last_id_key())? {
                Some(bytes) => decode_u64(&bytes, "last account id")?,
                None => 0,
            };
            let id = last + 1;
            let record = AccountRecord {
                id,
                name: name.to_owned(),
                created_unix,
                password_hash: password_hash.clone(),
                role: Role::Player,
            };
            let json = serde_json::to_vec(&record)
                .map_err(|e| StoreError::Backend(format!("encoding account record: {e}")))?;
            tx.set(&last_id_key(), &id.to_be_bytes())?;
            tx.set(&account_key(id), &json)?;
            tx.set(&name_key, &id.to_be_bytes())?;
            Ok(Some(record.account()))
        })?;
        created.ok_or(AuthError::NameTaken)
    }

    /// Checks a name and password from address `from`. CPU-heavy (argon2id): call from
    /// `spawn_blocking` in async code.
    ///
    /// Unknown names and wrong passwords both fail with [`AuthError::BadCredentials`]; too
    /// many recent failures fail with [`AuthError::RateLimited`] before any checking.
    pub fn login(&self, name: &str, password: &str, from: IpAddr) -> Result<Account, AuthError> {
        let attempt = Attempt::new(name, from, self.clock.now());
        let owner_address = self.owner_address(name, from);
        if let Err(wait) = self.throttle.lock().admit(&attempt, owner_address) {
            let retry_after_secs = throttle::retry_secs(wait);
            tracing::warn!(name, address = %from, retry_after_secs, "login rate limited");
            return Err(AuthError::RateLimited { retry_after_secs });
        }
        let result = self.check_credentials(name, password);
        match &result {
            Ok(account) => {
                self.throttle.lock().succeeded(&attempt);
                if let Err(e) = self.remember_address(account.id, from) {
                    tracing::warn!(player = account.id, error = %e, "cannot remember the login address");
                }
                tracing::info!(player = account.id, address = %from, "login");
            }
            Err(AuthError::BadCredentials) => {
                tracing::info!(name, address = %from, "failed login");
            }
            Err(other) => {
                self.throttle.lock().withdrawn(&attempt);
                tracing::error!(error = ?other, "login could not be checked");
            }
        }
        result
    }

    /// Whether the account called `name` logged in from `from`'s network in the last
    /// [`OWNER_ADDRESS_DAYS`] days. Unknown names and storage errors say no.
    fn owner_address(&self, name: &str, from: IpAddr) -> bool {
        if validate_name(name).is_err() {
            return false;
        }
        let canonical = rules::canonical_name(name);
        let network = network_of(from);
        let oldest = self
            .clock
            .unix_secs()
            .saturating_sub(OWNER_ADDRESS_DAYS * 86_400);
        let seen = self.db.transact(|tx| {
            let Some(id) = tx.get(&name_key(&canonical))? else {
                return Ok(Vec::new());
            };
            read_seen(tx, decode_u64(&id, "account id of a name")?)
        });
        match seen {
            Ok(seen) => seen
                .iter()
                .any(|s| s.network == network && s.unix >= oldest),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an account's login addresses");
                false
            }
        }
    }

    /// Notes that account `id` logged in from `from` now (its network, the newest
    /// [`OWNER_ADDRESSES`] kept).
    fn remember_address(&self, id: u64, from: IpAddr) -> Result<(), StoreError> {
        let network = network_of(from);
        let unix = self.clock.unix_secs();
        self.db.transact(|tx| {
            let mut seen = read_seen(tx, id)?;
            seen.retain(|s| s.network != network);
            seen.insert(0, Seen { network, unix });
            seen.truncate(OWNER_ADDRESSES);
            let json = serde_json::to_vec(&seen)
                .map_err(|e| StoreError::Backend(format!("encoding login addresses: {e}")))?;
            tx.set(&seen_key(id), &json)
        })
    }

    fn check_credentials(&self, name: &str, password: &str) -> Result<Account, AuthError> {
        let plausible = validate_name(name).is_ok() && validate_password(password).is_ok();
        let record = if plausible {
            let canonical = rules::canonical_name(name);
            self.db.transact(|tx| find_record(tx, &canonical))?
        } else {
            None
        };
        let Some(record) = record else {
            // Same work as a real check, then the same answer.
            let dummy = PasswordHash::new(DUMMY_HASH)
                .map_err(|e| AuthError::PasswordHashing(e.to_string()))?;
            let _ = self.hasher.verify_password(b"not a password", &dummy);
            return Err(AuthError::BadCredentials);
        };
        let stored = PasswordHash::new(&record.password_hash).map_err(|e| {
            StoreError::Corrupt(format!("password hash of account {}: {e}", record.id))
        })?;
        match self.hasher.verify_password(password.as_bytes(), &stored) {
            Ok(()) => Ok(record.account()),
            Err(argon2::password_hash::Error::Password) => Err(AuthError::BadCredentials),
            Err(e) => Err(AuthError::PasswordHashing(format!(
                "verifying the password of account {}: {e}",
                record.id
            ))),
        }
    }

    /// The account with this id, if any.
    pub fn account(&self, id: u64) -> Result<Option<Account>, AuthError> {
        let record = self.db.transact(|tx| read_record(tx, id))?;
        Ok(record.map(|r| r.account()))
    }

    /// The account with this name (in any case), if any.
    pub fn find_account(&self, name: &str) -> Result<Option<Account>, AuthError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        let canonical = rules::canonical_name(name);
        let record = self.db.transact(|tx| find_record(tx, &canonical))?;
        Ok(record.map(|r| r.account()))
    }

    /// A session token for `account` (with its role and a fresh session id), valid for `ttl`
    /// (rounded up to whole seconds).
    pub fn issue_token(&self, account: &Account, ttl: Duration) -> String {
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut sid = [0u8; 16];
        rand::RngCore::fill_bytes(&mut OsRng, &mut sid);
        let claims = Claims {
            account_id: account.id,
            name: account.name.clone(),
            expires_unix: self.clock.unix_secs().saturating_add(ttl_secs),
            role: account.role,
            session: token::hex_encode(&sid),
        };
        token::issue(&self.signing_key, &claims)
    }

    /// Ends the session of `token` (logout): [`Auth::check_session`] refuses it from now on,
    /// on every replica (the revocation is stored). An expired token needs nothing.
    pub fn revoke(&self, token: &str) -> Result<(), AuthError> {
        let claims = match self.verify_token(token) {
            Ok(c) => c,
            Err(AuthError::TokenExpired) => return Ok(()),
            Err(e) => return Err(e),
        };
        if claims.session.is_empty() {
            return Err(AuthError::TokenInvalid);
        }
        self.db.set(
            &revoked_key(&claims.session),
            &claims.expires_unix.to_be_bytes(),
        )?;
        tracing::info!(player = claims.account_id, "session ended");
        Ok(())
    }

    /// Deletes the revocations of sessions whose tokens have expired (such a token is refused
    /// as expired anyway), [`REVOKED_SWEEP_BATCH`] rows per transaction; how many went.
    /// Without it every logout would leave a row for good. Every replica may sweep: deleting
    /// a deleted row changes nothing.
    pub fn sweep_revoked(&self) -> Result<usize, AuthError> {
        let now = self.clock.unix_secs();
        let (mut begin, end) = tessera_persistence::prefix_range(&key(&[b"auth", b"revoked"]));
        let mut swept = 0;
        loop {
            let rows = self.db.get_range(&begin, &end, REVOKED_SWEEP_BATCH)?;
            let Some(last) = rows.last() else {
                break;
            };
            // The first key after the last one read.
            begin = last.0.clone();
            begin.push(0);
            let expired: Vec<&[u8]> = rows
                .iter()
                .filter(|row| {
                    // A row that is not 8 bytes was not written by this release: its
                    // session's end is unknown, so it stays.
                    <[u8; 8]>::try_from(row.1.as_slice()).is_ok_and(|b| u64::from_be_bytes(b) < now)
                })
                .map(|row| row.0.as_slice())
                .collect();
            if !expired.is_empty() {
                self.db.transact(|tx| {
                    for k in &expired {
                        tx.clear(k)?;
                    }
                    Ok(())
                })?;
                swept += expired.len();
            }
            if rows.len() < REVOKED_SWEEP_BATCH {
                break;
            }
        }
        if swept > 0 {
            tracing::debug!(swept, "revocations of expired sessions deleted");
        }
        Ok(swept)
    }

    /// Like [`Auth::verify_token`], and also refuses sessions that were logged out.
    pub fn check_session(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_token(token)?;
        if claims.session.is_empty() || self.db.get(&revoked_key(&claims.session))?.is_some() {
            return Err(AuthError::SessionEnded);
        }
        Ok(claims)
    }

    /// Gives the account called `name` the role `role`. Tokens issued before keep their old
    /// role until they expire.
    pub fn set_role(&self, name: &str, role: Role) -> Result<Account, AuthError> {
        if validate_name(name).is_err() {
            return Err(AuthError::NoSuchAccount(name.to_string()));
        }
        let canonical = rules::canonical_name(name);
        let updated = self.db.transact(|tx| {
            let Some(mut record) = find_record(tx, &canonical)? else {
                return Ok(None);
            };
            record.role = role;
            let json = serde_json::to_vec(&record)
                .map_err(|e| StoreError::Backend(format!("encoding account record: {e}")))?;
            tx.set(&account_key(record.id), &json)?;
            Ok(Some(record.account()))
        })?;
        let account = updated.ok_or_else(|| AuthError::NoSuchAccount(name.to_string()))?;
        tracing::info!(player = account.id, %role, "role changed");
        Ok(account)
    }

    /// Checks a token issued by this service (or another holding the same key file):
    /// [`AuthError::TokenInvalid`] if it is malformed or its signature is wrong,
    /// [`AuthError::TokenExpired`] if it is past its expiry.
    pub fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        verify_token_with(&self.verifying_key, token, self.clock.unix_secs())
    }
}

#[cfg(test)]
mod tests;
