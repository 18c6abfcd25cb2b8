//! Cluster messages (router <-> shard, shard <-> shard) from a peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_proto::cluster::{ToRouter, ToShard};
use tessera_proto::frame::MAX_CLUSTER_FRAME;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_proto::decode::<ToShard>(data, MAX_CLUSTER_FRAME);
    let _ = tessera_proto::decode::<ToRouter>(data, MAX_CLUSTER_FRAME);
});
