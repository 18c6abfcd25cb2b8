//! Login and account-creation rate limits, counted in sliding windows, in memory.
//!
//! Each login attempt is recorded as a failure *before* the password is checked and taken
//! back if it succeeds, so that many parallel attempts cannot all slip through while the
//! (slow) checks run. Attempts refused by the limiter are not recorded, so hammering does not
//! extend the wait of a player who stops.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::address::{network_of, AddressSet};

/// How many failed logins, and how many new accounts, are allowed in sliding windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Length of the sliding window.
    pub window: Duration,
    /// Failures per account name from one address (a player mistyping, or guessing one
    /// account). A successful login resets this count.
    pub per_account_per_address: u32,
    /// Failures from one address over all names (guessing many accounts). IPv6 addresses
    /// count per /64 network, since one host usually owns a whole /64.
    pub per_address: u32,
    /// Failures for one account name over all addresses (a distributed guess of one account).
    /// Addresses the account logged in from recently are not held to it, so that strangers
    /// guessing from many addresses cannot lock the owner out.
    pub per_account: u32,
    /// Length of the account-creation windows.
    pub create_window: Duration,
    /// Accounts created from one address (IPv6: one /64) per `create_window`.
    pub creates_per_address: u32,
    /// Accounts created from all addresses together per `create_window` (a spammer with many
    /// addresses). Exempt addresses do not count.
    pub creates_total: u32,
    /// Addresses the creation limits leave alone (loopback by default).
    pub exempt: AddressSet,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            window: Duration::from_secs(60),
            per_account_per_address: 5,
            per_address: 20,
            per_account: 100,
            create_window: Duration::from_secs(3600),
            creates_per_address: 10,
            creates_total: 500,
            exempt: AddressSet::default(),
        }
    }
}

/// Failure times under one key, within the window (pruned lazily).
type Log = Vec<Instant>;

/// Names are cut to this many characters (more than any valid name has), so junk input cannot
/// grow the maps' keys.
const MAX_NAME_KEY: usize = 32;
/// Drop empty logs every this many attempts, so memory follows recent activity.
const SWEEP_EVERY: u32 = 1024;

#[derive(Debug)]
pub(crate) struct Throttle {
    limits: RateLimits,
    pair: HashMap<(String, IpAddr), Log>,
    address: HashMap<IpAddr, Log>,
    account: HashMap<String, Log>,
    attempts_since_sweep: u32,
}

/// What identifies an attempt for the limiter.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    name: String,
    address: IpAddr,
    at: Instant,
}

impl Attempt {
    pub(crate) fn new(name: &str, address: IpAddr, at: Instant) -> Self {
        let name = name
            .chars()
            .take(MAX_NAME_KEY)
            .collect::<String>()
            .to_lowercase();
        Attempt {
            name,
            address: network_of(address),
            at,
        }
    }
}

impl Throttle {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Throttle {
            limits,
            pair: HashMap::new(),
            address: HashMap::new(),
            account: HashMap::new(),
            attempts_since_sweep: 0,
        }
    }

    /// Lets the attempt through and records it as a failure, or refuses it with the time
    /// until it would be let through. `owner_address`: the account logged in from this
    /// address recently, so the per-account limit (which strangers can fill) does not apply.
    pub(crate) fn admit(&mut self, attempt: &Attempt, owner_address: bool) -> Result<(), Duration> {
        self.attempts_since_sweep += 1;
        if self.attempts_since_sweep >= SWEEP_EVERY {
            self.sweep(attempt.at);
        }
        let window = self.limits.window;
        let pair_key = (attempt.name.clone(), attempt.address);
        let waits = [
            wait(
                self.pair.get_mut(&pair_key),
                self.limits.per_account_per_address,
                window,
                attempt.at,
            ),
            wait(
                self.address.get_mut(&attempt.address),
                self.limits.per_address,
                window,
                attempt.at,
            ),
            if owner_address {
                None
            } else {
                wait(
                    self.account.get_mut(&attempt.name),
                    self.limits.per_account,
                    window,
                    attempt.at,
                )
            },
        ];
        if let Some(longest) = waits.into_iter().flatten().max() {
            return Err(longest);
        }
        self.pair.entry(pair_key).or_default().push(attempt.at);
        self.address
            .entry(attempt.address)
            .or_default()
            .push(attempt.at);
        self.account
            .entry(attempt.name.clone())
            .or_default()
            .push(attempt.at);
        Ok(())
    }

    /// The attempt logged in: forget the failures of this name from this address, and the
    /// provisional failure of this attempt in the other logs.
    pub(crate) fn succeeded(&mut self, attempt: &Attempt) {
        self.pair.remove(&(attempt.name.clone(), attempt.address));
        take_back(&mut self.address, &attempt.address, attempt.at);
        take_back(&mut self.account, &attempt.name, attempt.at);
    }

    /// The attempt ended without a verdict on the password (a storage error): it does not
    /// count.
    pub(crate) fn withdrawn(&mut self, attempt: &Attempt) {
        take_back(
            &mut self.pair,
            &(attempt.name.clone(), attempt.address),
            attempt.at,
        );
        take_back(&mut self.address, &attempt.address, attempt.at);
        take_back(&mut self.account, &attempt.name, attempt.at);
    }

    fn sweep(&mut self, now: Instant) {
        let window = self.limits.window;
        let fresh = |log: &mut Log| {
            prune(log, window, now);
            !log.is_empty()
        };
        self.pair.retain(|_, log| fresh(log));
        self.address.retain(|_, log| fresh(log));
        self.account.retain(|_, log| fresh(log));
        self.attempts_since_sweep = 0;
    }

    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> usize {
        self.pair.len() + self.address.len() + self.account.len()
    }
}

/// Accounts created recently, per address and in total: a slot is taken before the password
/// is hashed (so a flood is refused before it costs argon2id) and given back if the account
/// was not created after all.
#[derive(Debug)]
pub(crate) struct Creations {
    limits: RateLimits,
    address: HashMap<IpAddr, Log>,
    total: Log,
    since_sweep: u32,
}

/// Which creation limit refused, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CreateRefused {
    pub wait: Duration,
    /// The address's own limit (else the limit over all addresses).
    pub this_address: bool,
}

impl Creations {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Creations {
            limits,
            address: HashMap::new(),
            total: Vec::new(),
            since_sweep: 0,
        }
    }

    /// Takes a creation slot for `from`, or says why not. Exempt addresses always get one and
    /// leave no trace.
    pub(crate) fn admit(&mut self, from: IpAddr, at: Instant) -> Result<(), CreateRefused> {
        if self.limits.exempt.contains(from) {
            return Ok(());
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            let window = self.limits.create_window;
            self.address.retain(|_, log| {
                prune(log, window, at);
                !log.is_empty()
            });
            self.since_sweep = 0;
        }
        let (window, network) = (self.limits.create_window, network_of(from));
        let per_address = wait(
            self.address.get_mut(&network),
            self.limits.creates_per_address,
            window,
            at,
        );
        if let Some(wait) = per_address {
            return Err(CreateRefused {
                wait,
                this_address: true,
            });
        }
        if let Some(wait) = wait(Some(&mut self.total), self.limits.creates_total, window, at) {
            return Err(CreateRefused {
                wait,
                this_address: false,
            });
        }
        self.address.entry(network).or_default().push(at);
        self.total.push(at);
        Ok(())
    }

    /// The slot taken at `at` was not used (the name was taken meanwhile, or storage failed).
    pub(crate) fn give_back(&mut self, from: IpAddr, at: Instant) {
        if self.limits.exempt.contains(from) {
            return;
        }
        take_back(&mut self.address, &network_of(from), at);
        if let Some(i) = self.total.iter().rposition(|&t| t == at) {
            self.total.swap_remove(i);
        }
    }
}

fn prune(log: &mut Log, window: Duration, now: Instant) {
    log.retain(|&t| now.saturating_duration_since(t) < window);
}

/// How long until `log` holds fewer than `max` failures, or `None` if it already does.
fn wait(log: Option<&mut Log>, max: u32, window: Duration, now: Instant) -> Option<Duration> {
    let log = log?;
    prune(log, window, now);
    let max = max as usize;
    if log.len() < max {
        return None;
    }
    // Attempts of parallel logins may be logged slightly out of order.
    log.sort_unstable();
    // Once the failure at this index leaves the window, fewer than `max` remain.
    let oldest_that_matters = log[log.len() - max];
    Some((oldest_that_matters + window).saturating_duration_since(now))
}

fn take_back<K: Eq + Hash>(logs: &mut HashMap<K, Log>, key: &K, at: Instant) {
    if let Some(log) = logs.get_mut(key) {
        if let Some(i) = log.iter().rposition(|&t| t == at) {
            log.swap_remove(i);
        }
        if log.is_empty() {
            logs.remove(key);
        }
    }
}

/// Whole seconds to tell a player, rounded up and at least 1.
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits {
            window: Duration::from_secs(10),
            per_account_per_address: 3,
            per_address: 5,
            per_account: 7,
            ..RateLimits::default()
        }
    }

    #[test]
    fn pair_limit_blocks_then_slides() {
        let mut t = Throttle::new(limits());
        let start = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for s in 0..3 {
            let a = Attempt::new("Bob", ip, start + Duration::from_secs(s));
            assert!(t.admit(&a, false).is_ok());
        }
        let blocked = Attempt::new("bob", ip, start + Duration::from_secs(4));
        assert_eq!(t.admit(&blocked, false), Err(Duration::from_secs(6)));
        // The first failure leaves the window at 10 s.
        let later = Attempt::new("bob", ip, start + Duration::from_secs(10));
        assert!(t.admit(&later, false).is_ok());
        let again = Attempt::new("bob", ip, start + Duration::from_secs(10));
        assert_eq!(t.admit(&again, false), Err(Duration::from_secs(1)));
    }

    #[test]
    fn success_clears_the_pair_only() {
        let mut t = Throttle::new(limits());
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            t.admit(&Attempt::new("bob", ip, now), false).unwrap();
        }
        let good = Attempt::new("bob", ip, now);
        t.admit(&good, false).unwrap();
        t.succeeded(&good);
        assert!(t.admit(&Attempt::new("bob", ip, now), false).is_ok());
        assert_eq!(
            t.address[&ip].len(),
            3,
            "failures from the address still count"
        );
    }

    #[test]
    fn sweep_forgets_old_keys() {
        let mut t = Throttle::new(limits());
        let start = Instant::now();
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            t.admit(&Attempt::new("x", ip, start), false).unwrap_or(());
        }
        let later = start + Duration::from_secs(60);
        t.sweep(later);
        assert_eq!(t.tracked_keys(), 0);
    }

    #[test]
    fn an_owner_address_is_not_held_to_the_per_account_limit() {
        let mut t = Throttle::new(limits());
        let now = Instant::now();
        // Strangers fill the account's log from many addresses.
        for i in 0..7u8 {
            let stranger = IpAddr::from([198, 51, 100, i]);
            t.admit(&Attempt::new("Ann", stranger, now), false).unwrap();
        }
        let another = IpAddr::from([198, 51, 100, 200]);
        assert!(t.admit(&Attempt::new("Ann", another, now), false).is_err());
        // Ann's own address is let through, still under its own limits.
        let home = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..3 {
            t.admit(&Attempt::new("ann", home, now), true).unwrap();
        }
        assert!(
            t.admit(&Attempt::new("ann", home, now), true).is_err(),
            "the per-name-and-address limit still holds"
        );
    }

    fn create_limits() -> RateLimits {
        RateLimits {
            create_window: Duration::from_secs(100),
            creates_per_address: 3,
            creates_total: 5,
            exempt: "10.9.0.0/16".parse().unwrap(),
            ..RateLimits::default()
        }
    }

    #[test]
    fn creations_are_limited_per_address_then_in_total() {
        let mut c = Creations::new(create_limits());
        let start = Instant::now();
        let a = IpAddr::from([192, 0, 2, 1]);
        for s in 0..3 {
            c.admit(a, start + Duration::from_secs(s)).unwrap();
        }
        let refused = c.admit(a, start + Duration::from_secs(10)).unwrap_err();
        assert!(refused.this_address);
        assert_eq!(refused.wait, Duration::from_secs(90));
        // Another /64 of IPv6 is another address; the same /64 is not.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        c.admit(v6("2001:db8:0:1::1"), start).unwrap();
        c.admit(v6("2001:db8:0:2::1"), start).unwrap();
        // Five in total now: everyone is refused, with the total's reason.
        let total = c.admit(v6("2001:db8:0:3::1"), start).unwrap_err();
        assert!(!total.this_address);
        // Exempt addresses neither wait nor count.
        for _ in 0..10 {
            c.admit(IpAddr::from([10, 9, 1, 1]), start).unwrap();
        }
        // A slot given back is free again; old slots slide out of the window.
        c.give_back(v6("2001:db8:0:2::5"), start);
        c.admit(v6("2001:db8:0:3::1"), start).unwrap();
        c.admit(a, start + Duration::from_secs(101)).unwrap();
    }

    #[test]
    fn retry_seconds_round_up() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::from_secs(42)), 42);
    }
}
