//! `cargo bench -p tessera-shard --bench tick_percentiles`: the distribution
//! of tick times (p50/p90/p99/max) of a shard with ~500 wandering NPCs over
//! 3,000 ticks (100 s of game time at 30 Hz), run back to back.

mod common;

use hdrhistogram::Histogram;
use std::time::Instant;

fn main() {
    // `cargo test --benches` runs bench targets with no arguments; keep
    // that quick.
    let ticks: u32 = if std::env::args().any(|a| a == "--bench") {
        3000
    } else {
        30
    };
    for extra in [480u32, 2000] {
        let world = common::world_with_wanderers(extra);
        let npcs = world.npc_total();
        let mut shard = common::shard(world, 60);
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..ticks {
            let t = Instant::now();
            shard.step(Instant::now());
            hist.record(t.elapsed().as_micros() as u64).expect("record");
        }
        println!(
            "tick with {npcs} NPCs over {ticks} ticks: p50 {} us, p90 {} us, p99 {} us, max {} us, mean {:.0} us",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.9),
            hist.value_at_quantile(0.99),
            hist.max(),
            hist.mean()
        );
    }
}
