use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_persistence::Database;

use super::*;

const T0: u64 = 1_700_000_000;

struct Fixture {
    dir: TempDir,
    clock: Arc<ManualClock>,
    limits: RateLimits,
    auth: Auth,
}

impl Fixture {
    fn new(limits: RateLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let auth = open(&dir, limits, clock.clone());
        Fixture {
            dir,
            clock,
            limits,
            auth,
        }
    }

    /// Closes the store and key and opens them again (the clock keeps going).
    fn reopen(self) -> Self {
        let Fixture {
            dir,
            clock,
            limits,
            auth,
        } = self;
        drop(auth);
        let auth = open(&dir, limits, clock.clone());
        Fixture {
            dir,
            clock,
            limits,
            auth,
        }
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("data/store.redb")
}

fn key_path(dir: &TempDir) -> PathBuf {
    dir.path().join("secrets/session.key")
}

fn open(dir: &TempDir, limits: RateLimits, clock: Arc<ManualClock>) -> Auth {
    let db = Database::open_redb(&db_path(dir)).unwrap();
    Auth::with_clock(db, &key_path(dir), limits, clock).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn small_limits() -> RateLimits {
    RateLimits {
        window: Duration::from_secs(60),
        per_account_per_address: 3,
        per_address: 5,
        per_account: 100,
    }
}

#[test]
fn auth_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Auth>();
}

#[test]
fn create_then_login() {
    let f = Fixture::new(RateLimits::default());
    let created = f.auth.create_account("Alice_1", "hunter22").unwrap();
    assert_eq!(
        created,
        Account {
            id: 1,
            name: "Alice_1".into(),
            created_unix: T0,
            role: Role::Player,
        }
    );
    let second = f.auth.create_account("Bob", "pass word").unwrap();
    assert_eq!(second.id, 2, "ids count up from 1");

    let here = ip("192.0.2.1");
    assert_eq!(f.auth.login("Alice_1", "hunter22", here).unwrap(), created);
    assert_eq!(
        f.auth.login("aLiCe_1", "hunter22", here).unwrap(),
        created,
        "login name is case-insensitive, display name is as typed"
    );
    assert_eq!(f.auth.account(2).unwrap(), Some(second.clone()));
    assert_eq!(f.auth.find_account("BOB").unwrap(), Some(second));
    assert_eq!(f.auth.account(3).unwrap(), None);
    assert_eq!(f.auth.find_account("nobody").unwrap(), None);
}

#[test]
fn names_are_unique_ignoring_case() {
    let f = Fixture::new(RateLimits::default());
    f.auth.create_account("Alice", "password1").unwrap();
    for taken in ["Alice", "alice", "ALICE"] {
        let err = f.auth.create_account(taken, "password2").unwrap_err();
        assert!(matches!(err, AuthError::NameTaken), "{taken}: {err:?}");
        assert_eq!(err.to_string(), "That name is taken.");
    }
    assert_eq!(f.auth.create_account("Alicia", "password3").unwrap().id, 2);
}

#[test]
fn create_rejects_bad_input_before_hashing() {
    let f = Fixture::new(RateLimits::default());
    assert!(matches!(
        f.auth.create_account("x", "password"),
        Err(AuthError::InvalidName(_))
    ));
    assert!(matches!(
        f.auth.create_account("Valid", "abc"),
        Err(AuthError::InvalidPassword(_))
    ));
    assert!(matches!(
        f.auth.create_account("Valid", "bad\u{1b}[0m"),
        Err(AuthError::InvalidPassword(_))
    ));
    assert_eq!(f.auth.find_account("Valid").unwrap(), None);
}

#[test]
fn wrong_password_and_unknown_name_look_the_same() {
    let f = Fixture::new(RateLimits::default());
    f.auth.create_account("Carol", "right one").unwrap();
    let here = ip("192.0.2.1");
    let wrong = f.auth.login("Carol", "wrong one", here).unwrap_err();
    let unknown = f.auth.login("Dave", "right one", here).unwrap_err();
    let invalid = f.auth.login("no such name!", "x", here).unwrap_err();
    for err in [&wrong, &unknown, &invalid] {
        assert!(matches!(err, AuthError::BadCredentials), "{err:?}");
        assert_eq!(err.to_string(), "Wrong name or password.");
    }
}

#[test]
fn dummy_hash_costs_what_a_real_hash_costs() {
    let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
    assert_eq!(dummy.algorithm.as_str(), "argon2id");
    let params = Params::try_from(&dummy).unwrap();
    assert_eq!(params.m_cost(), ARGON2_MEMORY_KIB);
    assert_eq!(params.t_cost(), ARGON2_ITERATIONS);
    assert_eq!(params.p_cost(), ARGON2_LANES);

    let f = Fixture::new(RateLimits::default());
    f.auth.create_account("Erin", "secret pw").unwrap();
    let record = f
        .auth
        .db
        .transact(|tx| find_record(tx, "erin"))
        .unwrap()
        .unwrap();
    let real = PasswordHash::new(&record.password_hash).unwrap();
    assert_eq!(Params::try_from(&real).unwrap(), params);
    assert_eq!(real.algorithm, dummy.algorithm);
    assert!(!record.password_hash.contains("secret pw"));
}

#[test]
fn rate_limit_kicks_in_and_expires() {
    let f = Fixture::new(small_limits());
    f.auth.create_account("Frank", "correct").unwrap();
    let here = ip("192.0.2.1");
    for _ in 0..3 {
        f.clock.advance(Duration::from_secs(1));
        assert!(matches!(
            f.auth.login("Frank", "wrong", here),
            Err(AuthError::BadCredentials)
        ));
    }
    // Blocked even with the right password: the password is not checked at all.
    let err = f.auth.login("frank", "correct", here).unwrap_err();
    // The first failure was at T0+1 s; now is T0+3 s; it leaves the window at T0+61 s.
    assert!(
        matches!(
            err,
            AuthError::RateLimited {
                retry_after_secs: 58
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Too many failed logins; try again in 58 seconds."
    );
    f.clock.advance(Duration::from_secs(57));
    assert!(matches!(
        f.auth.login("Frank", "correct", here),
        Err(AuthError::RateLimited {
            retry_after_secs: 1
        })
    ));
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.auth.login("Frank", "correct", here).unwrap().id, 1);
}

#[test]
fn success_resets_the_count_for_that_address() {
    let f = Fixture::new(small_limits());
    f.auth.create_account("Grace", "correct").unwrap();
    let here = ip("192.0.2.1");
    for _ in 0..2 {
        assert!(f.auth.login("Grace", "typo", here).is_err());
    }
    f.auth.login("Grace", "correct", here).unwrap();
    for _ in 0..2 {
        assert!(matches!(
            f.auth.login("Grace", "typo", here),
            Err(AuthError::BadCredentials)
        ));
    }
    f.auth.login("Grace", "correct", here).unwrap();
}

#[test]
fn limits_are_per_address() {
    let f = Fixture::new(small_limits());
    f.auth.create_account("Heidi", "correct").unwrap();
    let attacker = ip("198.51.100.7");
    let player = ip("192.0.2.1");
    // The attacker exhausts the per-name limit for Heidi from their address...
    for _ in 0..3 {
        assert!(f.auth.login("Heidi", "guess", attacker).is_err());
    }
    assert!(matches!(
        f.auth.login("Heidi", "correct", attacker),
        Err(AuthError::RateLimited { .. })
    ));
    // ...and the address limit, over other names.
    for name in ["Ivan", "Judy"] {
        assert!(matches!(
            f.auth.login(name, "guess", attacker),
            Err(AuthError::BadCredentials)
        ));
    }
    assert!(matches!(
        f.auth.login("Mallory", "guess", attacker),
        Err(AuthError::RateLimited { .. })
    ));
    // Heidi, from her own address, is not affected.
    assert_eq!(
        f.auth.login("Heidi", "correct", player).unwrap().name,
        "Heidi"
    );
}

#[test]
fn per_account_limit_spans_addresses() {
    let limits = RateLimits {
        per_account: 2,
        ..small_limits()
    };
    let f = Fixture::new(limits);
    assert!(f.auth.login("Ivan", "guess", ip("192.0.2.1")).is_err());
    assert!(f.auth.login("ivan", "guess", ip("192.0.2.2")).is_err());
    assert!(matches!(
        f.auth.login("IVAN", "guess", ip("192.0.2.3")),
        Err(AuthError::RateLimited { .. })
    ));
}

#[test]
fn tokens_round_trip() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Kim", "password").unwrap();
    let token = f.auth.issue_token(&account, Duration::from_secs(3600));
    let claims = f.auth.verify_token(&token).unwrap();
    assert_eq!(
        claims,
        Claims {
            account_id: account.id,
            name: "Kim".into(),
            expires_unix: T0 + 3600,
            role: Role::Player,
            session: claims.session.clone(),
        }
    );
    assert_eq!(claims.session.len(), 32, "a 128-bit session id");
    let local = verify_token_with(&f.auth.verifying_key(), &token, T0).unwrap();
    assert_eq!(local, claims);
}

#[test]
fn tampered_tokens_are_rejected() {
    let f = Fixture::new(RateLimits::default());
    let account = Account {
        id: 5,
        name: "Lee".into(),
        created_unix: T0,
        role: Role::Player,
    };
    let token = f.auth.issue_token(&account, Duration::from_secs(60));
    let (_, payload, signature) = {
        let mut parts = token.splitn(3, '.');
        (
            parts.next().unwrap(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    // A different account id, signed with nothing.
    let forged_claims = Claims {
        account_id: 1,
        name: "Lee".into(),
        expires_unix: T0 + 60,
        role: Role::Operator,
        session: String::new(),
    };
    let forged_payload = token::hex_encode(&serde_json::to_vec(&forged_claims).unwrap());
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let cases = [
        format!("t1.{forged_payload}.{signature}"),
        String::from_utf8(flipped).unwrap(),
        format!("t1.{payload}"),
        "hello".to_owned(),
    ];
    for case in cases {
        let err = f.auth.verify_token(&case).unwrap_err();
        assert!(matches!(err, AuthError::TokenInvalid), "{case}: {err:?}");
    }
}

#[test]
fn expired_tokens_are_rejected() {
    let f = Fixture::new(RateLimits::default());
    let account = Account {
        id: 1,
        name: "Mia".into(),
        created_unix: T0,
        role: Role::Player,
    };
    let token = f.auth.issue_token(&account, Duration::from_secs(30));
    f.clock.advance(Duration::from_secs(29));
    assert!(f.auth.verify_token(&token).is_ok());
    f.clock.advance(Duration::from_secs(1));
    let err = f.auth.verify_token(&token).unwrap_err();
    assert!(matches!(err, AuthError::TokenExpired), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Your session has expired; please log in again."
    );
}

#[test]
fn key_and_accounts_survive_reopening() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Nina", "password").unwrap();
    let token = f.auth.issue_token(&account, Duration::from_secs(600));
    let key_before = f.auth.verifying_key();

    let f = f.reopen();
    assert_eq!(
        f.auth.verifying_key(),
        key_before,
        "same key file, same key"
    );
    assert_eq!(f.auth.verify_token(&token).unwrap().account_id, account.id);
    assert_eq!(
        f.auth.login("nina", "password", ip("192.0.2.1")).unwrap(),
        account
    );
    assert_eq!(
        f.auth.create_account("Omar", "password").unwrap().id,
        2,
        "the id counter survives too"
    );
    assert!(matches!(
        f.auth.create_account("NINA", "password"),
        Err(AuthError::NameTaken)
    ));
}

#[test]
fn another_key_rejects_the_tokens() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Pat", "password").unwrap();
    let token = f.auth.issue_token(&account, Duration::from_secs(600));
    std::fs::remove_file(key_path(&f.dir)).unwrap();
    let f = f.reopen();
    assert!(matches!(
        f.auth.verify_token(&token),
        Err(AuthError::TokenInvalid)
    ));
}

#[test]
fn messages_are_sentences() {
    let cases = [
        (AuthError::BadCredentials, "Wrong name or password."),
        (AuthError::NameTaken, "That name is taken."),
        (
            AuthError::RateLimited {
                retry_after_secs: 1,
            },
            "Too many failed logins; try again in 1 second.",
        ),
        (
            AuthError::RateLimited {
                retry_after_secs: 42,
            },
            "Too many failed logins; try again in 42 seconds.",
        ),
        (
            AuthError::TokenInvalid,
            "Your session token is invalid; please log in again.",
        ),
        (
            AuthError::Storage(StoreError::Conflict),
            "The account service cannot reach its storage; please try again later.",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

#[test]
fn a_logged_out_session_is_refused_but_others_are_not() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Noa", "password").unwrap();
    let first = f.auth.issue_token(&account, Duration::from_secs(60));
    let second = f.auth.issue_token(&account, Duration::from_secs(60));
    f.auth.check_session(&first).unwrap();
    f.auth.revoke(&first).unwrap();
    assert!(matches!(
        f.auth.check_session(&first),
        Err(AuthError::SessionEnded)
    ));
    // The signature still holds (routers verify offline); only the session check refuses.
    f.auth.verify_token(&first).unwrap();
    f.auth.check_session(&second).unwrap();
    assert!(matches!(
        f.auth.revoke("t1.garbage"),
        Err(AuthError::TokenInvalid)
    ));
}

#[test]
fn roles_are_stored_and_carried_by_new_tokens() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Oda", "password").unwrap();
    assert_eq!(account.role, Role::Player);
    let before = f.auth.issue_token(&account, Duration::from_secs(60));
    let promoted = f.auth.set_role("oda", Role::Operator).unwrap();
    assert_eq!(promoted.role, Role::Operator);
    let again = f
        .auth
        .login("Oda", "password", "10.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(again.role, Role::Operator);
    let after = f.auth.issue_token(&again, Duration::from_secs(60));
    assert_eq!(f.auth.verify_token(&before).unwrap().role, Role::Player);
    assert_eq!(f.auth.verify_token(&after).unwrap().role, Role::Operator);
    assert!(matches!(
        f.auth.set_role("nobody", Role::Operator),
        Err(AuthError::NoSuchAccount(_))
    ));
}
