//! What a cell costs to simulate: the CPU time of its step (scripts think,
//! then physics) over the last [`StepCost::WINDOW`] ticks, reported per cell
//! in the load report so the coordinator can tell which cells make a shard
//! slow and what moving one would relieve.

use std::collections::VecDeque;
use std::time::Duration;

/// CPU time the calling thread has used so far.
///
/// A region's cost is the work its step did, measured with this rather
/// than a wall clock: wall time also counts the time the thread waited for
/// a core, which moving or splitting the region cannot give back. Where
/// shards share cores (with each other, a router, or a bot swarm, as in
/// `scripts/crowd.sh`) that wait inflated a crowd's cost enough to split it
/// deeper than any idle shard could use (docs/regions.md, "Policy").
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which
    // points at a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Recent step costs (CPU time) of one cell.
#[derive(Clone, Debug, Default)]
pub struct StepCost {
    /// Microseconds, oldest first.
    recent: VecDeque<u32>,
}

impl StepCost {
    /// Ticks kept: about two seconds at 30 Hz, so a change in load (a crowd
    /// arriving, a cell moving in) shows in the next report or two.
    pub const WINDOW: usize = 64;

    pub fn record(&mut self, took: Duration) {
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent
            .push_back(took.as_micros().min(u32::MAX as u128) as u32);
    }

    /// Mean step time over the window, milliseconds (0 before any tick).
    pub fn mean_ms(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let sum: u64 = self.recent.iter().map(|&us| us as u64).sum();
        sum as f64 / self.recent.len() as f64 / 1000.0
    }

    /// 99th percentile step time over the window, milliseconds.
    pub fn p99_ms(&self) -> f64 {
        let mut sorted: Vec<u32> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * 0.99).round() as usize] as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Sleeping costs no CPU time; work does.
    #[test]
    fn thread_cpu_time_counts_work_not_waiting() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(5), "{slept:?} while asleep");
        let before = thread_cpu_time();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while thread_cpu_time() - before < Duration::from_millis(5) && Instant::now() < deadline {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(
            thread_cpu_time() - before >= Duration::from_millis(5),
            "{x}"
        );
    }

    #[test]
    fn mean_and_p99_cover_the_last_window_only() {
        let mut c = StepCost::default();
        assert_eq!((c.mean_ms(), c.p99_ms()), (0.0, 0.0));
        for _ in 0..StepCost::WINDOW {
            c.record(Duration::from_millis(10));
        }
        assert_eq!(c.mean_ms(), 10.0);
        // A window later, the old samples are gone.
        for _ in 0..StepCost::WINDOW - 1 {
            c.record(Duration::from_micros(500));
        }
        c.record(Duration::from_micros(2500));
        assert_eq!(c.p99_ms(), 0.5, "one slow tick in 64 is above the p99");
        c.record(Duration::from_micros(2500));
        assert!((c.mean_ms() - (0.5 * 62.0 + 2.5 * 2.0) / 64.0).abs() < 1e-9);
        assert_eq!(c.p99_ms(), 2.5);
    }
}
