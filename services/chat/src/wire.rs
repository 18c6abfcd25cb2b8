//! The messages of the chat protocol (ALPN [`crate::CHAT_ALPN`]) and the chat line players see.
//!
//! Pure data: no I/O here. See the crate documentation for how they travel.

use serde::{Deserialize, Serialize};

use crate::ChatError;

/// Largest request frame a router may send (one request per bi stream).
pub const MAX_REQUEST: usize = tessera_proto::frame::MAX_CONTROL_FRAME;
/// Largest reply frame (a history of 100 long lines fits with room to spare).
pub const MAX_REPLY: usize = 512 * 1024;
/// Largest delivery frame on the server's uni stream (one line to many players).
pub const MAX_DELIVERY: usize = 1024 * 1024;

/// A router's request, one per bidirectional stream. `Hello` must come first on a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Names the router; the server then opens the delivery stream.
    Hello {
        router: String,
    },
    /// A player came online on this router (also re-sent after every reconnect).
    Online {
        player: u64,
        name: String,
        operator: bool,
        channels: Vec<String>,
    },
    Offline {
        player: u64,
    },
    Shout {
        from: u64,
        text: String,
    },
    Tell {
        from: u64,
        to_name: String,
        text: String,
    },
    /// A message to a channel the player is in.
    Say {
        from: u64,
        channel: String,
        text: String,
    },
    Join {
        player: u64,
        channel: String,
    },
    Leave {
        player: u64,
        channel: String,
    },
    /// The player's channels, each with how many players are online in it.
    Channels {
        player: u64,
    },
    /// The last `limit` (at most 100) lines of a channel; `"shout"` holds the shouts.
    History {
        player: u64,
        channel: String,
        limit: u32,
    },
    Mute {
        by: u64,
        name: String,
        seconds: u64,
    },
    Unmute {
        by: u64,
        name: String,
    },
    Kick {
        by: u64,
        name: String,
        reason: String,
    },
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Online { .. } => "online",
            Request::Offline { .. } => "offline",
            Request::Shout { .. } => "shout",
            Request::Tell { .. } => "tell",
            Request::Say { .. } => "say",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Channels { .. } => "channels",
            Request::History { .. } => "history",
            Request::Mute { .. } => "mute",
            Request::Unmute { .. } => "unmute",
            Request::Kick { .. } => "kick",
        }
    }
}

/// The server's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    /// A message went out to this many players.
    Delivered {
        recipients: u32,
    },
    Channels(Vec<ChannelInfo>),
    History(Vec<ChatLine>),
    Failed(ChatError),
}

/// One of a player's channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    /// Players online in the channel, on every router.
    pub online: u32,
}

/// What the server sends a router on its delivery stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Delivery {
    /// Show `line` to these players of the receiving router (each rendered with
    /// [`ChatLine::render_for`] and the player's own name).
    Deliver { to: Vec<u64>, line: ChatLine },
    /// Disconnect this player.
    Kick {
        player: u64,
        by: String,
        reason: String,
    },
    /// This player of the receiving router is muted until `until_unix_ms`
    /// (`None`: no longer), so that the router also silences their local
    /// speech (`say`, `emote`), which does not pass through chat. Sent on
    /// `mute` and `unmute`, and when a muted player comes online.
    Muted {
        player: u64,
        until_unix_ms: Option<u64>,
    },
}

/// What kind of line a [`ChatLine`] is: the client protocol's own type, so
/// routers pass it on unchanged.
pub use tessera_proto::msg::ChatKind as LineKind;

/// One line of chat, as stored in history and delivered to routers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    pub kind: LineKind,
    /// The sender's name (empty for system lines).
    pub from: String,
    /// The recipient's name, for tells.
    pub to: Option<String>,
    pub text: String,
    pub at_unix_ms: u64,
}

impl ChatLine {
    /// The exact text the player called `viewer_name` sees.
    pub fn render_for(&self, viewer_name: &str) -> String {
        tessera_proto::msg::render_chat(
            &self.kind,
            &self.from,
            self.to.as_deref(),
            &self.text,
            viewer_name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: LineKind, to: Option<&str>, text: &str) -> ChatLine {
        ChatLine {
            kind,
            from: "Ann".into(),
            to: to.map(str::to_string),
            text: text.into(),
            at_unix_ms: 0,
        }
    }

    #[test]
    fn lines_render_as_players_see_them() {
        let shout = line(LineKind::Shout, None, "hello");
        assert_eq!(shout.render_for("Bob"), "Ann shouts, \"hello\"");
        assert_eq!(shout.render_for("Ann"), "Ann shouts, \"hello\"");
        let tell = line(LineKind::Tell, Some("Bob"), "hi");
        assert_eq!(tell.render_for("Bob"), "Ann tells you, \"hi\"");
        assert_eq!(tell.render_for("bob"), "Ann tells you, \"hi\"");
        assert_eq!(tell.render_for("Ann"), "You tell Bob, \"hi\"");
        let channel = line(LineKind::Channel("trade".into()), None, "selling rope");
        assert_eq!(channel.render_for("Bob"), "[trade] Ann: selling rope");
        let system = line(LineKind::System, None, "You were kicked.");
        assert_eq!(system.render_for("Bob"), "You were kicked.");
    }

    #[test]
    fn messages_round_trip_through_the_codec() {
        let req = Request::Say {
            from: 7,
            channel: "trade".into(),
            text: "rope".into(),
        };
        let bytes = tessera_proto::frame::encode(&req).unwrap();
        assert_eq!(
            tessera_proto::frame::decode::<Request>(&bytes, MAX_REQUEST).unwrap(),
            req
        );
        let reply = Reply::Failed(ChatError::RateLimited {
            retry_after_ms: 1500,
        });
        let bytes = tessera_proto::frame::encode(&reply).unwrap();
        assert_eq!(
            tessera_proto::frame::decode::<Reply>(&bytes, MAX_REPLY).unwrap(),
            reply
        );
    }
}
