//! A simulated one-way datagram link for the prediction and interpolation
//! tests: fixed latency, uniform jitter (which reorders) and loss, from a
//! seeded RNG so every run is the same.

use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// One-way delay, seconds.
    pub latency: f64,
    /// Extra delay, uniform in `0..jitter` seconds.
    pub jitter: f64,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl LinkConfig {
    pub fn clean(latency: f64) -> LinkConfig {
        LinkConfig {
            latency,
            jitter: 0.0,
            loss: 0.0,
        }
    }
}

pub struct Link<T> {
    cfg: LinkConfig,
    rng: rand::rngs::StdRng,
    /// (arrival time, send order, message)
    in_flight: Vec<(f64, u64, T)>,
    sent: u64,
}

impl<T> Link<T> {
    pub fn new(cfg: LinkConfig, seed: u64) -> Link<T> {
        Link {
            cfg,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            in_flight: Vec::new(),
            sent: 0,
        }
    }

    pub fn send(&mut self, now: f64, msg: T) {
        self.sent += 1;
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss) {
            return;
        }
        let jitter = if self.cfg.jitter > 0.0 {
            self.rng.gen_range(0.0..self.cfg.jitter)
        } else {
            0.0
        };
        self.in_flight
            .push((now + self.cfg.latency + jitter, self.sent, msg));
    }

    /// Everything that has arrived by `now`, in arrival order.
    pub fn deliver(&mut self, now: f64) -> Vec<T> {
        self.deliver_timed(now)
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    /// Like [`Link::deliver`], with each message's arrival time.
    pub fn deliver_timed(&mut self, now: f64) -> Vec<(f64, T)> {
        let (mut arrived, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.in_flight = left;
        arrived.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        arrived.into_iter().map(|(at, _, m)| (at, m)).collect()
    }
}
