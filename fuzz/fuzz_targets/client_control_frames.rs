//! The router's control-stream reader: arbitrary bytes through the frame
//! buffer and the `ClientMsg` decoder must never panic or buffer beyond the
//! frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_proto::frame::{FrameBuffer, MAX_CONTROL_FRAME};
use tessera_proto::msg::ClientMsg;

fuzz_target!(|data: &[u8]| {
    let mut buf = FrameBuffer::new(MAX_CONTROL_FRAME);
    for chunk in data.chunks(7) {
        buf.extend(chunk);
        loop {
            match buf.next_frame() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX_CONTROL_FRAME);
                    let _ = tessera_proto::decode::<ClientMsg>(&payload, MAX_CONTROL_FRAME);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = tessera_proto::decode::<ClientMsg>(data, MAX_CONTROL_FRAME);
});
