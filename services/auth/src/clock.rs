//! Time, injectable so that tests of rate limits and token expiry need no sleeping.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Where [`crate::Auth`] gets the time from.
pub trait Clock: Send + Sync {
    /// Monotonic time, for rate-limit windows.
    fn now(&self) -> Instant;
    /// Wall-clock seconds since the Unix epoch, for token expiry and account creation times.
    fn unix_secs(&self) -> u64;
}

/// The real clocks of the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_unix: u64,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at `unix_secs`.
    pub fn new(unix_secs: u64) -> Self {
        ManualClock {
            start: Instant::now(),
            start_unix: unix_secs,
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock()
    }

    fn unix_secs(&self) -> u64 {
        self.start_unix + self.elapsed.lock().as_secs()
    }
}
