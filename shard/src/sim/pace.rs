//! When the shard's loop ticks and when it reads its inbox. Pure: the time
//! is an input.
//!
//! Ticks are due at a fixed rate. Between them the loop handles messages
//! as they arrive, so a text player's step is answered at once. When a
//! tick is due, the messages that came while the last one ran are handled
//! first, for at most [`MESSAGE_SLICE`]: a shard whose ticks fill the
//! period (a crowd, or a core shared with others) would otherwise run tick
//! after tick and leave its players' inputs in the inbox. Measured before
//! this rule: right after a crowd's cell split, 2,800 messages waited in
//! one shard's inbox and inputs were answered 1.0-1.4 s late while every
//! tick kept its budget (docs/performance.md, "Crowds"). A flood of
//! messages still cannot starve the ticks: the slice ends, and the tick
//! runs.

use std::time::{Duration, Instant};

/// How long a due tick waits for the messages already in the inbox.
pub const MESSAGE_SLICE: Duration = Duration::from_millis(8);

/// How far behind the ticks may fall before the missed ones are skipped
/// (a stall), in periods.
const MAX_BEHIND: u32 = 5;

/// What the loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// Handle messages as they arrive until this instant.
    Read(Instant),
    /// The tick is due: first the waiting messages, until this instant,
    /// then the tick.
    Tick { messages_until: Instant },
}

/// The tick schedule.
#[derive(Debug)]
pub struct Pacer {
    period: Duration,
    next: Instant,
}

impl Pacer {
    /// The first tick is due a period after `now`.
    pub fn new(period: Duration, now: Instant) -> Pacer {
        Pacer {
            period,
            next: now + period,
        }
    }

    /// What to do at `now`.
    pub fn turn(&self, now: Instant) -> Turn {
        if now < self.next {
            Turn::Read(self.next)
        } else {
            Turn::Tick {
                messages_until: now + MESSAGE_SLICE.min(self.period),
            }
        }
    }

    /// A tick ended at `now`: the next is due a period after this one was
    /// (the rate holds), unless the loop fell more than [`MAX_BEHIND`]
    /// periods behind; then the missed ticks are skipped and the next is
    /// due a period from now. Returns how far behind it was, if it skipped.
    pub fn ticked(&mut self, now: Instant) -> Option<Duration> {
        self.next += self.period;
        if now > self.next + self.period * MAX_BEHIND {
            let behind = now - self.next;
            self.next = now + self.period;
            return Some(behind);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(33);

    #[test]
    fn messages_are_read_until_the_tick_is_due() {
        let t0 = Instant::now();
        let p = Pacer::new(PERIOD, t0);
        assert_eq!(p.turn(t0), Turn::Read(t0 + PERIOD));
        assert_eq!(
            p.turn(t0 + PERIOD),
            Turn::Tick {
                messages_until: t0 + PERIOD + MESSAGE_SLICE
            }
        );
    }

    #[test]
    fn ticks_back_to_back_still_leave_a_slice_for_messages() {
        // Every tick takes the whole period: the loop is never early, and
        // before each tick the waiting messages get their slice.
        let t0 = Instant::now();
        let mut p = Pacer::new(PERIOD, t0);
        let mut now = t0 + PERIOD;
        for _ in 0..100 {
            match p.turn(now) {
                Turn::Tick { messages_until } => {
                    assert_eq!(messages_until, now + MESSAGE_SLICE);
                    now = messages_until;
                }
                Turn::Read(_) => panic!("a tick is due"),
            }
            now += PERIOD - MESSAGE_SLICE;
            assert_eq!(p.ticked(now), None, "it keeps the rate");
        }
    }

    #[test]
    fn a_stall_skips_the_missed_ticks() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PERIOD, t0);
        // The first tick ends ten periods late.
        let end = t0 + PERIOD * 11;
        let behind = p.ticked(end).expect("skipped");
        assert_eq!(behind, PERIOD * 9);
        assert_eq!(p.turn(end), Turn::Read(end + PERIOD));
    }

    #[test]
    fn a_slice_is_never_longer_than_the_period() {
        let t0 = Instant::now();
        let short = Duration::from_millis(2);
        let p = Pacer::new(short, t0);
        assert_eq!(
            p.turn(t0 + short),
            Turn::Tick {
                messages_until: t0 + short + short
            }
        );
    }
}
