//! Framing and the codec: bincode 2 (standard config) behind a size limit.
//!
//! Every decode takes an explicit limit: bytes beyond it are refused before
//! any decoding happens, and bincode itself is configured with the largest
//! limit we ever accept, so a length prefix inside a message cannot make it
//! allocate beyond that either. Trailing bytes are an error.
//!
//! On streams a frame is a 4-byte big-endian length followed by the payload.

use serde::{de::DeserializeOwned, Serialize};

/// Largest control frame a client may send or receive (login, chat, entity
/// create/remove).
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;
/// Largest datagram payload we send; QUIC's safe minimum MTU leaves ~1200.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest frame between cluster members (cell snapshots during migration).
pub const MAX_CLUSTER_FRAME: usize = 64 * 1024 * 1024;

const CODEC_LIMIT: usize = MAX_CLUSTER_FRAME;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<CODEC_LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encode a message (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decode a message of at most `limit` bytes (no length prefix).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, FrameError> {
    if bytes.len() > limit {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (msg, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - read));
    }
    Ok(msg)
}

/// Encode a message with its 4-byte length prefix.
pub fn encode_frame<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let body = encode(msg)?;
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the length prefix of a frame: `Ok(None)` if fewer than 4 bytes are
/// available, an error if the announced length is over `limit`.
pub fn frame_len(header: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    let Some(h) = header.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(Some(len))
}

/// Accumulates stream bytes and yields whole frames' payloads. Memory is
/// bounded by the limit plus one read.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    limit: usize,
}

impl FrameBuffer {
    pub fn new(limit: usize) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::new(),
            limit,
        }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, if any.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = frame_len(&self.buf, self.limit)? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let payload = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ClientMsg, ServerMsg};
    use proptest::prelude::*;

    #[test]
    fn frame_buffer_splits_frames() {
        let a = encode_frame(&ClientMsg::Ping { nonce: 7 }, MAX_CONTROL_FRAME).unwrap();
        let b = encode_frame(&ClientMsg::Logout, MAX_CONTROL_FRAME).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut fb = FrameBuffer::new(MAX_CONTROL_FRAME);
        for byte in &all {
            fb.extend(std::slice::from_ref(byte));
        }
        let f1 = fb.next_frame().unwrap().unwrap();
        let f2 = fb.next_frame().unwrap().unwrap();
        assert!(fb.next_frame().unwrap().is_none());
        assert!(matches!(
            decode::<ClientMsg>(&f1, MAX_CONTROL_FRAME).unwrap(),
            ClientMsg::Ping { nonce: 7 }
        ));
        assert!(matches!(
            decode::<ClientMsg>(&f2, MAX_CONTROL_FRAME).unwrap(),
            ClientMsg::Logout
        ));
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_buffering() {
        let mut fb = FrameBuffer::new(1024);
        fb.extend(&u32::MAX.to_be_bytes());
        assert!(matches!(fb.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn decode_refuses_over_limit_and_trailing() {
        let bytes = encode(&ClientMsg::Say {
            text: "x".repeat(100),
        })
        .unwrap();
        assert!(matches!(
            decode::<ClientMsg>(&bytes, 10),
            Err(FrameError::TooLarge { .. })
        ));
        let mut more = bytes.clone();
        more.push(0);
        assert!(matches!(
            decode::<ClientMsg>(&more, MAX_CONTROL_FRAME),
            Err(FrameError::Trailing(1))
        ));
    }

    #[test]
    fn huge_vec_length_prefix_does_not_allocate() {
        // A ServerMsg whose string claims u64::MAX bytes.
        let mut bytes = encode(&ServerMsg::Text {
            text: String::new(),
        })
        .unwrap();
        bytes.pop();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<ServerMsg>(&bytes, MAX_CONTROL_FRAME).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<ClientMsg>(&bytes, MAX_CONTROL_FRAME);
            let _ = decode::<ServerMsg>(&bytes, MAX_CONTROL_FRAME);
            let _ = decode::<crate::msg::ClientDatagram>(&bytes, MAX_DATAGRAM);
            let _ = decode::<crate::cluster::ToShard>(&bytes, MAX_CLUSTER_FRAME);
            let mut fb = FrameBuffer::new(MAX_CONTROL_FRAME);
            fb.extend(&bytes);
            while let Ok(Some(_)) = fb.next_frame() {}
        }
    }
}
