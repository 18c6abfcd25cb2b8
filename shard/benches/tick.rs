//! `cargo bench -p tessera-shard --bench tick`: one simulation tick of a
//! shard holding the default world plus N wandering NPCs.

mod common;

use std::time::Instant;

fn main() {
    divan::main();
}

#[divan::bench(args = [0, 500, 2000])]
fn tick(bencher: divan::Bencher, extra_npcs: u32) {
    let mut shard = common::shard(common::world_with_wanderers(extra_npcs), 30);
    bencher.bench_local(|| shard.step(Instant::now()));
}
