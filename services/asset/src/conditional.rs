//! Conditional and range requests (RFC 9110 §13 and §14), as pure functions of header values.
//!
//! Only what asset clients need: `If-None-Match` (weak comparison, lists and `*`), `If-Range`
//! with an entity tag, and a *single* byte range. A `Range` header that names several ranges,
//! uses another unit or does not parse is ignored and the whole representation is served
//! (RFC 9110 allows a server to ignore `Range`); this keeps responses free of
//! `multipart/byteranges`.

/// What to send for a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: the whole representation, 200.
    Full,
    /// Bytes `start..=end` (both inclusive, `end < total`), 206.
    Partial { start: u64, end: u64 },
    /// A well-formed single range that selects nothing, 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a representation of `total` bytes.
pub fn parse_range(header: &str, total: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if total == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: total.saturating_sub(n),
                end: total - 1,
            },
        },
        (first, last) => {
            let Some(start) = number(first) else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                None
            } else {
                match number(last) {
                    Some(end) if end >= start => Some(end),
                    _ => return RangeRequest::Full,
                }
            };
            if start >= total {
                return RangeRequest::Unsatisfiable;
            }
            let end = end.map_or(total - 1, |end| end.min(total - 1));
            RangeRequest::Partial { start, end }
        }
    }
}

/// Whether an `If-None-Match` header value matches `etag` (a quoted strong tag such as
/// `"abc"`), by weak comparison: `W/` prefixes are ignored.
pub fn none_match(header: &str, etag: &str) -> bool {
    let etag = etag.trim_start_matches("W/");
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

/// Whether a `Range` header may be honoured given the request's `If-Range` value: only if
/// `If-Range` is absent or names exactly the current (strong) `etag`. A date in `If-Range`
/// never matches, so the whole representation is sent.
pub fn if_range_allows(if_range: Option<&str>, etag: &str) -> bool {
    match if_range {
        None => true,
        Some(value) => value.trim() == etag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=10-", 100),
            Partial { start: 10, end: 99 }
        );
        assert_eq!(parse_range("bytes=-5", 100), Partial { start: 95, end: 99 });
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-200", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=99-99", 100),
            Partial { start: 99, end: 99 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=999999-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn unusable_headers_serve_everything() {
        for header in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-3",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=0",
            "",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(parse_range(header, 100), Full, "{header:?}");
        }
    }

    #[test]
    fn entity_tags() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", W/\"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
        assert!(!none_match("abc", "\"abc\""));
        assert!(if_range_allows(None, "\"a\""));
        assert!(if_range_allows(Some("\"a\""), "\"a\""));
        assert!(!if_range_allows(Some("\"b\""), "\"a\""));
        assert!(!if_range_allows(
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            "\"a\""
        ));
    }
}
