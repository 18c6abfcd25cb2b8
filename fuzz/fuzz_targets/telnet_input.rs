//! Telnet bytes from a client through the protocol engine and the command
//! parsers: no panics, and no line longer than the limit is ever produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_router::command;
use tessera_router::telnet::{TelnetCodec, TelnetEvent};

const LIMIT: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut codec = TelnetCodec::new(LIMIT);
    let _ = codec.greeting();
    let split = data.first().map(|b| *b as usize % 16 + 1).unwrap_or(1);
    for chunk in data.chunks(split) {
        for event in codec.feed(chunk).events {
            if let TelnetEvent::Line(line) = event {
                assert!(line.len() <= LIMIT * 3, "line of {} bytes", line.len());
                let _ = command::parse_prelogin(&line);
                let _ = command::parse_command(&line);
            }
        }
    }
});
