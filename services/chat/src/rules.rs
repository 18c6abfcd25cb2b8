//! The pure rules of chat: what text and channel names are allowed, and the rate limit.

use std::time::{Duration, Instant};

use crate::ChatError;

/// Longest message, in characters, after cleaning.
pub const MAX_TEXT_CHARS: usize = 200;
/// Longest channel name, in characters.
pub const MAX_CHANNEL_CHARS: usize = 24;
/// The history channel of shouts; no one can join or say in it.
pub const SHOUT_CHANNEL: &str = "shout";

/// Removes control characters and surrounding whitespace.
pub fn clean(raw: &str) -> String {
    let kept: String = raw.chars().filter(|c| !c.is_control()).collect();
    kept.trim().to_string()
}

/// A message's text, cleaned; empty or too long is an error.
pub fn message_text(raw: &str) -> Result<String, ChatError> {
    let text = clean(raw);
    let len = text.chars().count();
    if len == 0 {
        return Err(ChatError::EmptyText);
    }
    if len > MAX_TEXT_CHARS {
        return Err(ChatError::TooLong {
            len: len as u32,
            max: MAX_TEXT_CHARS as u32,
        });
    }
    Ok(text)
}

/// A channel name, lowercased: 1 to 24 characters of `[a-z0-9-]`.
pub fn channel_name(raw: &str) -> Result<String, ChatError> {
    let name = raw.trim().to_lowercase();
    let ok = (1..=MAX_CHANNEL_CHARS).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(name)
    } else {
        Err(ChatError::BadChannel {
            name: clean(raw).chars().take(40).collect(),
        })
    }
}

/// A channel players can join and talk in: a valid name other than [`SHOUT_CHANNEL`].
pub fn joinable_channel(raw: &str) -> Result<String, ChatError> {
    let name = channel_name(raw)?;
    if name == SHOUT_CHANNEL {
        return Err(ChatError::BadChannel { name });
    }
    Ok(name)
}

/// The key under which a player name is unique (names compare case-insensitively).
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// Whether two player names are the same name.
pub fn same_name(a: &str, b: &str) -> bool {
    fold(a) == fold(b)
}

/// Whole seconds, rounded up, for messages such as "wait 2 s".
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// A token bucket: up to `burst` messages at once, then `per_second` more each second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            burst: burst as f64,
            per_second,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.per_second <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.per_second,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cleaned_and_bounded() {
        assert_eq!(message_text("  hi\u{7} there\n").unwrap(), "hi there");
        assert_eq!(message_text(" \t\r\n"), Err(ChatError::EmptyText));
        assert_eq!(message_text(&"é".repeat(200)).unwrap().chars().count(), 200);
        assert_eq!(
            message_text(&"x".repeat(201)),
            Err(ChatError::TooLong { len: 201, max: 200 })
        );
        assert_eq!(
            ChatError::TooLong { len: 201, max: 200 }.to_string(),
            "That is too long: 201 characters; at most 200."
        );
    }

    #[test]
    fn channel_names_are_lowercase_ascii() {
        assert_eq!(channel_name("Trade").unwrap(), "trade");
        assert_eq!(channel_name("guild-42").unwrap(), "guild-42");
        assert_eq!(channel_name(&"a".repeat(24)).unwrap().len(), 24);
        for bad in ["", "a b", "ünï", "x_y", &"a".repeat(25)] {
            assert!(channel_name(bad).is_err(), "{bad:?}");
        }
        assert!(channel_name("shout").is_ok(), "shout history is readable");
        assert!(joinable_channel("SHOUT").is_err(), "but not joinable");
    }

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, 1.0, t0);
        for _ in 0..5 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.take(t0 + Duration::from_millis(1000)).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
        assert_eq!(
            ChatError::RateLimited {
                retry_after_ms: 1200
            }
            .to_string(),
            "You are talking too fast; wait 2 s."
        );
    }
}
