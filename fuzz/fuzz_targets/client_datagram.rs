//! Datagrams from clients: decode, then sanitise the input as the router
//! does; nothing may panic and sanitised inputs are finite and bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_proto::frame::MAX_DATAGRAM;
use tessera_proto::msg::ClientDatagram;

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientDatagram::Input(input)) = tessera_proto::decode(data, MAX_DATAGRAM) {
        let clean = input.sanitized();
        assert!(clean.move_x.is_finite() && clean.move_z.is_finite() && clean.yaw.is_finite());
        assert!(clean.move_x * clean.move_x + clean.move_z * clean.move_z <= 1.0001);
    }
});
