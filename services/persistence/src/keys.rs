//! Order-preserving composite keys.
//!
//! [`key`] joins parts with the byte-string encoding of FoundationDB's tuple layer, so keys
//! written here read the same through FoundationDB's tuple tools later:
//!
//! ```text
//! part    = 0x01, part bytes with every 0x00 written as 0x00 0xFF, 0x00
//! key     = part part ...
//! ```
//!
//! Properties: keys compare like the tuples of their parts (part by part, bytewise), no key is
//! a prefix-collision of another (`["ab"]` and `["a", "b"]` differ, and `key(&[a])` is a prefix
//! of exactly the keys `key(&[a, ..])`), and no key starts with the reserved byte 0xFF.
//! Integers keep their order when passed as big-endian bytes (`&id.to_be_bytes()`).

const BYTES_CODE: u8 = 0x01;
const TERMINATOR: u8 = 0x00;
const ESCAPE: u8 = 0xFF;

/// Encodes `parts` as one key (see the module documentation for the layout).
pub fn key(parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 2).sum();
    let mut out = Vec::with_capacity(len);
    for part in parts {
        out.push(BYTES_CODE);
        for &byte in *part {
            out.push(byte);
            if byte == TERMINATOR {
                out.push(ESCAPE);
            }
        }
        out.push(TERMINATOR);
    }
    out
}

/// Decodes a key made by [`key`] back into its parts; `None` if it was not made by [`key`].
pub fn parse_key(mut encoded: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut parts = Vec::new();
    while let Some((&code, rest)) = encoded.split_first() {
        if code != BYTES_CODE {
            return None;
        }
        let mut part = Vec::new();
        let mut i = 0;
        loop {
            match (rest.get(i), rest.get(i + 1)) {
                (None, _) => return None,
                (Some(&TERMINATOR), Some(&ESCAPE)) => {
                    part.push(TERMINATOR);
                    i += 2;
                }
                (Some(&TERMINATOR), _) => {
                    i += 1;
                    break;
                }
                (Some(&byte), _) => {
                    part.push(byte);
                    i += 1;
                }
            }
        }
        parts.push(part);
        encoded = &rest[i..];
    }
    Some(parts)
}

/// The range `[begin, end)` holding exactly the keys that start with `prefix`.
///
/// `end` is the prefix with trailing 0xFF bytes dropped and the last byte incremented. For a
/// prefix that is empty or all 0xFF, `end` is `b"\xff"`, the end of the user key space.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => *last += 1,
        None => end.push(0xFF),
    }
    (prefix.to_vec(), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_matches_the_tuple_layer() {
        assert_eq!(key(&[b"a\x00b"]), b"\x01a\x00\xffb\x00");
        assert_eq!(key(&[b"", b"x"]), b"\x01\x00\x01x\x00");
        assert_eq!(key(&[]), b"");
    }

    #[test]
    fn parts_do_not_collide() {
        assert_ne!(key(&[b"ab"]), key(&[b"a", b"b"]));
        assert_ne!(key(&[b"a\x00"]), key(&[b"a", b""]));
        let (begin, end) = prefix_range(&key(&[b"a"]));
        let inside = key(&[b"a", b"zzz"]);
        let outside = key(&[b"ab"]);
        assert!(begin <= inside && inside < end);
        assert!(!(begin <= outside && outside < end));
    }

    #[test]
    fn prefix_range_edges() {
        assert_eq!(prefix_range(b""), (vec![], vec![0xFF]));
        assert_eq!(
            prefix_range(b"a\xff\xff"),
            (b"a\xff\xff".to_vec(), b"b".to_vec())
        );
        assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), b"\xff".to_vec()));
        assert_eq!(parse_key(b"\x01a"), None);
        assert_eq!(parse_key(b"\x02a\x00"), None);
    }

    proptest! {
        #[test]
        fn round_trips_and_keeps_order(
            a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4),
            b in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4),
        ) {
            let ka = key(&a.iter().map(Vec::as_slice).collect::<Vec<_>>());
            let kb = key(&b.iter().map(Vec::as_slice).collect::<Vec<_>>());
            prop_assert_eq!(parse_key(&ka), Some(a.clone()));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_ne!(ka.first(), Some(&0xFF));
        }
    }
}
