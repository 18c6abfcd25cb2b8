//! Chat for Tessera: channels, shouts and tells across routers (`tessera chat`).
//!
//! Routers (the player gateways) are the clients; players never reach this service directly.
//! [`ChatServer`] keeps who is online on which router, applies the rules (text, channels, rate
//! limit, mutes, operators), fans lines out to every router and keeps channel history in
//! persistence. [`ChatClient`] is the router's side: it reconnects by itself and re-registers
//! its players after every reconnect. `docs/chat.md` is the operator's view.
//!
//! **Wire.** QUIC with ALPN [`CHAT_ALPN`] (`tessera-chat/1`); TLS is whatever the caller's quinn
//! configs say (Tessera uses the cluster CA with client certificates, so only cluster members
//! connect).
//!
//! - Requests: one bidirectional stream each. The router writes one bincode [`Request`]
//!   (`tessera_proto::frame::encode`, at most [`wire::MAX_REQUEST`] bytes) and finishes the
//!   stream; the server answers with one [`Reply`] (at most [`wire::MAX_REPLY`] bytes) and
//!   finishes. Either side gives up after [`REQUEST_TIMEOUT`].
//! - The first request of a connection must be [`Request::Hello`]; anything before it is
//!   refused with [`ChatError::Protocol`].
//! - After `Hello` the server opens one unidirectional stream and writes [`Delivery`] frames
//!   on it, each a 4-byte big-endian length and a bincode body
//!   (`tessera_proto::frame::encode_frame`, at most [`wire::MAX_DELIVERY`] bytes), in order.
//! - Errors travel as [`Reply::Failed`] with a [`ChatError`]; its `Display` is the sentence to
//!   show the player.
//! - Malformed or oversized requests get a `Failed(Protocol)` answer on their own stream; the
//!   connection and the server carry on.
//!
//! **State.** Who is online lives only in memory: when a router's connection closes its players
//! go offline, and when the service restarts every router re-sends `Online` for its players
//! (with their channels). Mutes (`("chat", "mute", lowercase name)` → until, unix ms, u64 big
//! endian) and history (`("chat", "history", channel, seq u64 big endian)` → bincode
//! [`ChatLine`], the last [`HISTORY_KEEP`] per channel; shouts under channel `"shout"`) live in
//! persistence. History writes never hold up delivery: lines wait in a bounded memory buffer
//! until the store takes them.

mod client;
mod history;
mod registry;
pub mod rules;
mod server;
pub mod wire;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::ChatClient;
pub use server::ChatServer;
pub use wire::{ChannelInfo, ChatLine, Delivery, LineKind, Reply, Request};

/// ALPN of the chat protocol.
pub const CHAT_ALPN: &[u8] = b"tessera-chat/1";

/// How long one request may take, on either side.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of history kept per channel.
pub const HISTORY_KEEP: usize = 100;

/// Everything a chat call can fail with. `Display` is the sentence to show the player.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ChatError {
    /// No live connection to the service (or it did not answer in time). Retry later.
    #[error("chat is unavailable; try again in a moment")]
    Unavailable,
    /// No online player has that name.
    #[error("No one called {name} is online.")]
    NotOnline { name: String },
    /// Another player with that name (compared case-insensitively) is online.
    #[error("Someone called {name} is already online.")]
    NameTaken { name: String },
    /// The player was never registered with `Online` (or went offline).
    #[error("You are not in chat right now; reconnect and try again.")]
    NotRegistered { player: u64 },
    /// Not a valid channel name.
    #[error(
        "There is no channel called \"{name}\": channel names are 1 to 24 letters, digits or \
         dashes."
    )]
    BadChannel { name: String },
    /// Saying in a channel the player has not joined.
    #[error("You are not in [{channel}]; type \"join {channel}\" first.")]
    NotInChannel { channel: String },
    /// Nothing left to send after cleaning the text.
    #[error("There is nothing to say.")]
    EmptyText,
    /// The text is longer than [`rules::MAX_TEXT_CHARS`].
    #[error("That is too long: {len} characters; at most {max}.")]
    TooLong { len: u32, max: u32 },
    /// Over the rate limit; retry after this long.
    #[error("You are talking too fast; wait {} s.", rules::ceil_secs(*.retry_after_ms))]
    RateLimited { retry_after_ms: u64 },
    /// The player is muted for this much longer.
    #[error("You are muted for {} more s.", rules::ceil_secs(*.remaining_ms))]
    Muted { remaining_ms: u64 },
    /// Mute, unmute and kick need an operator.
    #[error("Only operators can do that.")]
    NotOperator,
    /// History cannot be read now (the store is down); delivery still works.
    #[error("Chat history is unavailable right now; try again later.")]
    HistoryUnavailable,
    /// The peer broke the protocol (a request before `Hello`, a malformed or oversized frame).
    #[error("chat protocol error: {0}")]
    Protocol(String),
    /// The server could not start.
    #[error("cannot start the chat service on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

/// Tunable limits of a [`ChatServer`].
#[derive(Clone, Debug)]
pub struct ChatLimits {
    /// Messages a player may send at once.
    pub burst: u32,
    /// Messages per second a player regains, up to `burst`.
    pub refill_per_second: f64,
    /// History lines kept in memory while the store is down; older ones are dropped.
    pub history_buffer: usize,
}

impl Default for ChatLimits {
    fn default() -> ChatLimits {
        ChatLimits {
            burst: 5,
            refill_per_second: 1.0,
            history_buffer: 10_000,
        }
    }
}

#[cfg(test)]
mod tests;
