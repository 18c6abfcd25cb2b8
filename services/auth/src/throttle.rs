//! Login rate limits: failures counted in sliding windows, in memory.
//!
//! Each login attempt is recorded as a failure *before* the password is checked and taken
//! back if it succeeds, so that many parallel attempts cannot all slip through while the
//! (slow) checks run. Attempts refused by the limiter are not recorded, so hammering does not
//! extend the wait of a player who stops.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many failed logins are allowed in a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub per_account: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            window: Duration::from_secs(60),
            per_account_per_address: 5,
            per_address: 20,
            per_account: 100,
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

/// The address a limit applies to: IPv4 as is (IPv4-mapped IPv6 too), IPv6 as its /64.
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
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
    /// until it would be let through.
    pub(crate) fn admit(&mut self, attempt: &Attempt) -> Result<(), Duration> {
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
            wait(
                self.account.get_mut(&attempt.name),
                self.limits.per_account,
                window,
                attempt.at,
            ),
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
        }
    }

    #[test]
    fn pair_limit_blocks_then_slides() {
        let mut t = Throttle::new(limits());
        let start = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for s in 0..3 {
            let a = Attempt::new("Bob", ip, start + Duration::from_secs(s));
            assert!(t.admit(&a).is_ok());
        }
        let blocked = Attempt::new("bob", ip, start + Duration::from_secs(4));
        assert_eq!(t.admit(&blocked), Err(Duration::from_secs(6)));
        // The first failure leaves the window at 10 s.
        let later = Attempt::new("bob", ip, start + Duration::from_secs(10));
        assert!(t.admit(&later).is_ok());
        let again = Attempt::new("bob", ip, start + Duration::from_secs(10));
        assert_eq!(t.admit(&again), Err(Duration::from_secs(1)));
    }

    #[test]
    fn success_clears_the_pair_only() {
        let mut t = Throttle::new(limits());
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            t.admit(&Attempt::new("bob", ip, now)).unwrap();
        }
        let good = Attempt::new("bob", ip, now);
        t.admit(&good).unwrap();
        t.succeeded(&good);
        assert!(t.admit(&Attempt::new("bob", ip, now)).is_ok());
        assert_eq!(
            t.address[&ip].len(),
            3,
            "failures from the address still count"
        );
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(network_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn sweep_forgets_old_keys() {
        let mut t = Throttle::new(limits());
        let start = Instant::now();
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            t.admit(&Attempt::new("x", ip, start)).unwrap_or(());
        }
        let later = start + Duration::from_secs(60);
        t.sweep(later);
        assert_eq!(t.tracked_keys(), 0);
    }

    #[test]
    fn retry_seconds_round_up() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::from_secs(42)), 42);
    }
}
