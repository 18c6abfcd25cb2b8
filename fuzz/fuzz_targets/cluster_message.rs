//! Cluster messages (router <-> shard, shard <-> shard) from a peer: the
//! bare messages, and a cluster stream as the bus reads it (length-prefixed
//! frames through a `FrameBuffer`, each payload decoded as an `Envelope`,
//! as `coordinator/src/transport.rs` does). Nothing may panic, and no
//! payload handed out is over the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_proto::cluster::{Envelope, ToRouter, ToShard};
use tessera_proto::frame::{FrameBuffer, MAX_CLUSTER_FRAME};

fuzz_target!(|data: &[u8]| {
    let _ = tessera_proto::decode::<ToShard>(data, MAX_CLUSTER_FRAME);
    let _ = tessera_proto::decode::<ToRouter>(data, MAX_CLUSTER_FRAME);
    let _ = tessera_proto::decode::<Envelope>(data, MAX_CLUSTER_FRAME);

    let mut buf = FrameBuffer::new(MAX_CLUSTER_FRAME);
    let split = data.first().map(|b| *b as usize % 64 + 1).unwrap_or(1);
    for chunk in data.chunks(split) {
        buf.extend(chunk);
        loop {
            match buf.next_frame() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX_CLUSTER_FRAME);
                    let _ = tessera_proto::decode::<Envelope>(&payload, MAX_CLUSTER_FRAME);
                }
                Ok(None) => break,
                // The bus closes the stream on a bad frame.
                Err(_) => return,
            }
        }
    }
});
