use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_persistence::Database;

use super::*;

/// Accounts in these tests are created from loopback, which the creation limits exempt.
const CREATOR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
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
        let auth = open(&dir, limits.clone(), clock.clone());
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
        let auth = open(&dir, limits.clone(), clock.clone());
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
        ..RateLimits::default()
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
    let created = f
        .auth
        .create_account("Alice_1", "hunter22", CREATOR)
        .unwrap();
    assert_eq!(
        created,
        Account {
            id: 1,
            name: "Alice_1".into(),
            created_unix: T0,
            role: Role::Player,
        }
    );
    let second = f.auth.create_account("Bob", "pass word", CREATOR).unwrap();
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
    f.auth
        .create_account("Alice", "password1", CREATOR)
        .unwrap();
    for taken in ["Alice", "alice", "ALICE"] {
        let err = f
            .auth
            .create_account(taken, "password2", CREATOR)
            .unwrap_err();
        assert!(matches!(err, AuthError::NameTaken), "{taken}: {err:?}");
        assert_eq!(err.to_string(), "That name is taken.");
    }
    assert_eq!(
        f.auth
            .create_account("Alicia", "password3", CREATOR)
            .unwrap()
            .id,
        2
    );
}

#[test]
fn create_rejects_bad_input_before_hashing() {
    let f = Fixture::new(RateLimits::default());
    assert!(matches!(
        f.auth.create_account("x", "password", CREATOR),
        Err(AuthError::InvalidName(_))
    ));
    assert!(matches!(
        f.auth.create_account("Valid", "abc", CREATOR),
        Err(AuthError::InvalidPassword(_))
    ));
    assert!(matches!(
        f.auth.create_account("Valid", "bad\u{1b}[0m", CREATOR),
        Err(AuthError::InvalidPassword(_))
    ));
    assert_eq!(f.auth.find_account("Valid").unwrap(), None);
}

#[test]
fn wrong_password_and_unknown_name_look_the_same() {
    let f = Fixture::new(RateLimits::default());
    f.auth
        .create_account("Carol", "right one", CREATOR)
        .unwrap();
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
    f.auth.create_account("Erin", "secret pw", CREATOR).unwrap();
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
    f.auth.create_account("Frank", "correct", CREATOR).unwrap();
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
    f.auth.create_account("Grace", "correct", CREATOR).unwrap();
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
    f.auth.create_account("Heidi", "correct", CREATOR).unwrap();
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
fn strangers_cannot_lock_the_owner_out() {
    let limits = RateLimits {
        per_account: 3,
        ..small_limits()
    };
    let f = Fixture::new(limits);
    f.auth.create_account("Owen", "correct", CREATOR).unwrap();
    let home = ip("192.0.2.1");
    f.auth.login("Owen", "correct", home).unwrap();
    // A week later, strangers guess from many addresses until the name is throttled.
    f.clock.advance(Duration::from_secs(7 * 86_400));
    for i in 1..=3 {
        let stranger = ip(&format!("198.51.100.{i}"));
        assert!(matches!(
            f.auth.login("Owen", "guess", stranger),
            Err(AuthError::BadCredentials)
        ));
    }
    assert!(matches!(
        f.auth.login("Owen", "guess", ip("198.51.100.9")),
        Err(AuthError::RateLimited { .. })
    ));
    // The owner, from an address of the same IPv4 host, gets in.
    assert_eq!(f.auth.login("owen", "correct", home).unwrap().name, "Owen");
    // A remembered address expires after OWNER_ADDRESS_DAYS without a login.
    f.clock
        .advance(Duration::from_secs(OWNER_ADDRESS_DAYS * 86_400 + 1));
    for i in 1..=3 {
        let _ = f
            .auth
            .login("Owen", "guess", ip(&format!("198.51.100.{i}")));
    }
    assert!(matches!(
        f.auth.login("Owen", "correct", home),
        Err(AuthError::RateLimited { .. })
    ));
}

#[test]
fn owner_addresses_survive_a_restart_and_keep_the_newest() {
    let limits = RateLimits {
        per_account: 1,
        ..small_limits()
    };
    let f = Fixture::new(limits);
    f.auth.create_account("Pia", "correct", CREATOR).unwrap();
    for i in 0..=OWNER_ADDRESSES {
        f.clock.advance(Duration::from_secs(1));
        f.auth
            .login("Pia", "correct", ip(&format!("203.0.113.{i}")))
            .unwrap();
    }
    let f = f.reopen();
    assert!(f.auth.login("Pia", "guess", ip("198.51.100.1")).is_err());
    // The newest address is remembered across the restart; the oldest was dropped.
    let newest = ip(&format!("203.0.113.{OWNER_ADDRESSES}"));
    f.auth.login("Pia", "correct", newest).unwrap();
    assert!(matches!(
        f.auth.login("Pia", "correct", ip("203.0.113.0")),
        Err(AuthError::RateLimited { .. })
    ));
}

fn create_limits() -> RateLimits {
    RateLimits {
        create_window: Duration::from_secs(3600),
        creates_per_address: 3,
        creates_total: 5,
        exempt: AddressSet::none(),
        ..RateLimits::default()
    }
}

#[test]
fn account_creation_is_limited_per_address_before_any_hashing() {
    let f = Fixture::new(create_limits());
    let spammer = ip("192.0.2.66");
    for i in 0..3 {
        f.auth
            .create_account(&format!("Spam{i}"), "password", spammer)
            .unwrap();
    }
    // Refused names and taken names do not use up the allowance (no hashing happened).
    assert!(matches!(
        f.auth.create_account("x", "password", spammer),
        Err(AuthError::InvalidName(_))
    ));
    assert!(matches!(
        f.auth.create_account("Spam0", "password", spammer),
        Err(AuthError::NameTaken)
    ));
    f.clock.advance(Duration::from_secs(60));
    let err = f
        .auth
        .create_account("Spam3", "password", spammer)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::TooManyAccounts {
                retry_after_secs: 3540,
                this_address: true
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Too many new accounts from your address; try again in 59 minutes."
    );
    assert!(f.auth.find_account("Spam3").unwrap().is_none());
    // Another address creates; after two more the total is reached for everyone.
    f.auth
        .create_account("Honest", "password", ip("198.51.100.1"))
        .unwrap();
    f.auth
        .create_account("Other", "password", ip("2001:db8::1"))
        .unwrap();
    let err = f
        .auth
        .create_account("Third", "password", ip("2001:db8:0:1::1"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::TooManyAccounts {
                this_address: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("Too many new accounts right now;"));
    // Logging in is not affected, and the window slides.
    f.auth.login("Spam1", "password", spammer).unwrap();
    f.clock.advance(Duration::from_secs(3600));
    f.auth.create_account("Spam3", "password", spammer).unwrap();
}

#[test]
fn exempt_addresses_create_freely() {
    let f = Fixture::new(RateLimits {
        exempt: "10.0.0.0/8".parse().unwrap(),
        ..create_limits()
    });
    for i in 0..8 {
        f.auth
            .create_account(&format!("Bot{i}"), "password", ip("10.1.2.3"))
            .unwrap();
    }
    // Exempt creations do not count toward the total either.
    for i in 0..3 {
        f.auth
            .create_account(&format!("Guest{i}"), "password", ip("192.0.2.1"))
            .unwrap();
    }
}

#[test]
fn tokens_round_trip() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Kim", "password", CREATOR).unwrap();
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
    let account = f.auth.create_account("Nina", "password", CREATOR).unwrap();
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
        f.auth
            .create_account("Omar", "password", CREATOR)
            .unwrap()
            .id,
        2,
        "the id counter survives too"
    );
    assert!(matches!(
        f.auth.create_account("NINA", "password", CREATOR),
        Err(AuthError::NameTaken)
    ));
}

#[test]
fn another_key_rejects_the_tokens() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Pat", "password", CREATOR).unwrap();
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
    let account = f.auth.create_account("Noa", "password", CREATOR).unwrap();
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
fn revocations_are_swept_once_their_tokens_expired() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Ona", "password", CREATOR).unwrap();
    // More than one sweep batch of sessions ending at 60 s, and one at 600 s.
    let short: Vec<String> = (0..REVOKED_SWEEP_BATCH + 20)
        .map(|_| f.auth.issue_token(&account, Duration::from_secs(60)))
        .collect();
    let long = f.auth.issue_token(&account, Duration::from_secs(600));
    for token in short.iter().chain([&long]) {
        f.auth.revoke(token).unwrap();
    }
    let rows = |f: &Fixture| {
        let (begin, end) = tessera_persistence::prefix_range(&key(&[b"auth", b"revoked"]));
        f.auth.db.get_range(&begin, &end, 10_000).unwrap().len()
    };
    assert_eq!(rows(&f), short.len() + 1);
    // Nothing has expired yet: nothing goes.
    assert_eq!(f.auth.sweep_revoked().unwrap(), 0);
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.auth.sweep_revoked().unwrap(), short.len());
    assert_eq!(rows(&f), 1);
    // The session still running stays refused; the swept ones are refused as expired.
    assert!(matches!(
        f.auth.check_session(&long),
        Err(AuthError::SessionEnded)
    ));
    assert!(matches!(
        f.auth.check_session(&short[0]),
        Err(AuthError::TokenExpired)
    ));
}

#[test]
fn roles_are_stored_and_carried_by_new_tokens() {
    let f = Fixture::new(RateLimits::default());
    let account = f.auth.create_account("Oda", "password", CREATOR).unwrap();
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
