//! Client <-> router messages (docs/protocol.md).
//!
//! Reliable messages travel as length-prefixed frames on one bidirectional
//! QUIC stream that the client opens first (the control stream); inputs and
//! position snapshots travel as unreliable QUIC datagrams.

use crate::geometry::{CellId, Vec3};
use crate::ids::{EntityId, PlayerId, ShardId};
use serde::{Deserialize, Serialize};

/// Longest `say` text, in characters.
pub const MAX_SAY_CHARS: usize = 500;
/// Longest command line a client may send, in bytes.
pub const MAX_LINE_BYTES: usize = 2048;

/// Removes control characters (newlines, ESC sequences' introducers, C1
/// controls) and surrounding whitespace from text a player typed, so it
/// cannot forge lines or drive other players' terminals.
pub fn clean_text(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        // Nor the private-use characters the router marks colour with.
        .filter(|c| !c.is_control() && !('\u{E000}'..='\u{E00F}').contains(c))
        .collect::<String>()
        .trim()
        .to_string()
}

/// Client -> router, on the control stream. Its `Debug` leaves out
/// passwords and tokens, so a message can be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message: the protocol version the client speaks.
    Hello {
        version: u32,
        client: String,
    },
    Create {
        name: String,
        password: String,
    },
    Connect {
        name: String,
        password: String,
    },
    /// Say something to everyone within hearing range.
    Say {
        text: String,
    },
    /// Any text command the telnet interface accepts (`who`, `where`, ...);
    /// answered with `ServerMsg::Text`.
    Command {
        line: String,
    },
    Ping {
        nonce: u64,
    },
    /// Log out: ends the session (its token can no longer resume).
    Logout,
    /// Log in again with the `token` of an earlier `LoggedIn`, without the
    /// password: after a lost connection or a router restart. Refused once
    /// the session was logged out or the token expired.
    Resume {
        token: String,
    },
    /// Sent right after `Hello` by a telnet gateway (`tessera
    /// telnet-gateway`) that plays a text player for the telnet client at
    /// `client`: the router rate-limits logins by that address and treats
    /// the connection as a text session (no snapshots; notices as
    /// `ServerMsg::Notice`). Accepted only on a connection that showed a
    /// client certificate from the cluster CA; answered with
    /// `ServerMsg::Relaying`.
    Relay {
        client: std::net::SocketAddr,
    },
    /// From a telnet gateway, on a relayed session: the GMCP modules the
    /// player's MUD client enabled (`Char`, `Room`, `Comm.Channel`, ...),
    /// replacing the last list; the router then sends the packages of those
    /// modules as `ServerMsg::Gmcp` (docs/protocol.md, "MUD client
    /// protocols"). Sent only to routers of a release that knows it (routers
    /// are updated before gateways).
    GmcpModules {
        modules: Vec<String>,
    },
}

/// QUIC application close code of a router that is stopping (a restart or
/// a rolling update): the player's session is kept, so the client may log
/// in again with [`ClientMsg::Resume`] (docs/protocol.md, section 3).
pub const CLOSE_RESTART: u32 = 4;

/// What kind of thing an entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    Player,
    Npc,
}

/// Machine-readable error classes; the message says the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    VersionMismatch,
    Malformed,
    BadCredentials,
    NameTaken,
    InvalidName,
    InvalidPassword,
    RateLimited,
    NotLoggedIn,
    AlreadyLoggedIn,
    TooLong,
    Unavailable,
    Internal,
    /// An operator removed the player; the connection closes.
    Kicked,
    /// The player read too slowly: more events waited for it than the
    /// router keeps (`EVENT_QUEUE`); the connection closes.
    Lagged,
    /// The connection may not do that (`Relay` without a cluster
    /// certificate).
    Forbidden,
}

/// Where a chat line (from the chat service) was said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatKind {
    /// To everyone online.
    Shout,
    /// From one player to another.
    Tell,
    /// In a named channel.
    Channel(String),
    /// From the service itself.
    System,
}

/// A chat line as `viewer` reads it: `Ann shouts, "hi"`, `Ann tells you,
/// "hi"` / `You tell Bob, "hi"`, `[trade] Ann: rope`; system lines as they
/// are. Telnet prints exactly this; 3D clients may style it.
pub fn render_chat(
    kind: &ChatKind,
    from: &str,
    to: Option<&str>,
    text: &str,
    viewer: &str,
) -> String {
    let same = |a: &str, b: &str| a.to_lowercase() == b.to_lowercase();
    match kind {
        ChatKind::Shout => format!("{from} shouts, \"{text}\""),
        ChatKind::Tell => {
            let to = to.unwrap_or_default();
            if same(to, viewer) {
                format!("{from} tells you, \"{text}\"")
            } else if same(from, viewer) {
                format!("You tell {to}, \"{text}\"")
            } else {
                format!("{from} tells {to}, \"{text}\"")
            }
        }
        ChatKind::Channel(channel) => format!("[{channel}] {from}: {text}"),
        ChatKind::System => text.to_string(),
    }
}

/// What a text player reads when `name` speaks (or emotes) nearby.
pub fn render_heard(name: &str, text: &str, emote: bool) -> String {
    if emote {
        format!("{name} {text}")
    } else {
        format!("{name} says, \"{text}\"")
    }
}

/// What `Debug` prints in place of a password or token.
pub const REDACTED: &str = "<redacted>";

/// A password or session token held outside a message (a configuration, a
/// command-line flag): its `Debug` prints [`REDACTED`] and it has no
/// `Display`, so it reaches no log line by accident; [`Secret::expose`]
/// reads it where it is used. Parses from any string (`FromStr`, so clap
/// takes it as a flag value) and serializes exactly as a `String` does.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, to send or to check; never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Shows `"<redacted>"`, as the messages' `Debug` shows a password field.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(REDACTED, f)
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Secret {
        Secret(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Secret {
        Secret(secret.to_string())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(secret: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::from(secret))
    }
}

impl std::fmt::Debug for ClientMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMsg::Hello { version, client } => f
                .debug_struct("Hello")
                .field("version", version)
                .field("client", client)
                .finish(),
            ClientMsg::Create { name, .. } => f
                .debug_struct("Create")
                .field("name", name)
                .field("password", &REDACTED)
                .finish(),
            ClientMsg::Connect { name, .. } => f
                .debug_struct("Connect")
                .field("name", name)
                .field("password", &REDACTED)
                .finish(),
            ClientMsg::Say { text } => f.debug_struct("Say").field("text", text).finish(),
            ClientMsg::Command { line } => f.debug_struct("Command").field("line", line).finish(),
            ClientMsg::Ping { nonce } => f.debug_struct("Ping").field("nonce", nonce).finish(),
            ClientMsg::Logout => f.write_str("Logout"),
            ClientMsg::Resume { .. } => f.debug_struct("Resume").field("token", &REDACTED).finish(),
            ClientMsg::Relay { client } => f.debug_struct("Relay").field("client", client).finish(),
            ClientMsg::GmcpModules { modules } => f
                .debug_struct("GmcpModules")
                .field("modules", modules)
                .finish(),
        }
    }
}

/// Router -> client, on the control stream. Its `Debug` leaves out the
/// session token, so a message can be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome {
        version: u32,
        server: String,
        world: String,
    },
    LoggedIn {
        player: PlayerId,
        entity: EntityId,
        name: String,
        token: String,
        pos: Vec3,
        cell: CellId,
        shard: ShardId,
        tick_hz: u32,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// An entity came into view; its updates follow in snapshots.
    EntityAppeared {
        entity: EntityId,
        /// The entity's number in this connection's snapshots, until its
        /// `EntityGone` (docs/protocol.md, "Snapshot encoding").
        slot: u16,
        kind: EntityKind,
        name: String,
        pos: Vec3,
    },
    /// An entity left the view (moved away, logged out, removed).
    EntityGone {
        entity: EntityId,
    },
    /// Speech heard by this player.
    Chat {
        from: String,
        entity: Option<EntityId>,
        text: String,
        /// An emote: show as `<from> <text>`.
        emote: bool,
    },
    /// Answer to a `ClientMsg::Command`, or a notice.
    Text {
        text: String,
    },
    /// A line from the chat service: a shout, a tell, a channel message or
    /// a notice (`render_chat` gives the text telnet shows).
    ChatLine {
        kind: ChatKind,
        from: String,
        to: Option<String>,
        text: String,
        at_unix_ms: u64,
    },
    /// The player's own entity is now simulated in another cell (hand-off).
    CellChanged {
        cell: CellId,
        shard: ShardId,
    },
    Pong {
        nonce: u64,
    },
    /// The router accepted `ClientMsg::Relay`: this is a text session.
    Relaying,
    /// A line a relayed text session prints as it is, unprompted (what a
    /// telnet player reads between prompts, such as `[The world ...]`).
    Notice {
        text: String,
    },
    /// A GMCP package for a relayed text player whose gateway asked for its
    /// module (`ClientMsg::GmcpModules`): the gateway passes it to the MUD
    /// client as `IAC SB GMCP <package> <data> IAC SE`.
    Gmcp {
        package: String,
        data: String,
    },
}

impl std::fmt::Debug for ServerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerMsg::Welcome {
                version,
                server,
                world,
            } => f
                .debug_struct("Welcome")
                .field("version", version)
                .field("server", server)
                .field("world", world)
                .finish(),
            ServerMsg::LoggedIn {
                player,
                entity,
                name,
                token: _,
                pos,
                cell,
                shard,
                tick_hz,
            } => f
                .debug_struct("LoggedIn")
                .field("player", player)
                .field("entity", entity)
                .field("name", name)
                .field("token", &REDACTED)
                .field("pos", pos)
                .field("cell", cell)
                .field("shard", shard)
                .field("tick_hz", tick_hz)
                .finish(),
            ServerMsg::Error { code, message } => f
                .debug_struct("Error")
                .field("code", code)
                .field("message", message)
                .finish(),
            ServerMsg::EntityAppeared {
                entity,
                slot,
                kind,
                name,
                pos,
            } => f
                .debug_struct("EntityAppeared")
                .field("entity", entity)
                .field("slot", slot)
                .field("kind", kind)
                .field("name", name)
                .field("pos", pos)
                .finish(),
            ServerMsg::EntityGone { entity } => f
                .debug_struct("EntityGone")
                .field("entity", entity)
                .finish(),
            ServerMsg::Chat {
                from,
                entity,
                text,
                emote,
            } => f
                .debug_struct("Chat")
                .field("from", from)
                .field("entity", entity)
                .field("text", text)
                .field("emote", emote)
                .finish(),
            ServerMsg::Text { text } => f.debug_struct("Text").field("text", text).finish(),
            ServerMsg::ChatLine {
                kind,
                from,
                to,
                text,
                at_unix_ms,
            } => f
                .debug_struct("ChatLine")
                .field("kind", kind)
                .field("from", from)
                .field("to", to)
                .field("text", text)
                .field("at_unix_ms", at_unix_ms)
                .finish(),
            ServerMsg::CellChanged { cell, shard } => f
                .debug_struct("CellChanged")
                .field("cell", cell)
                .field("shard", shard)
                .finish(),
            ServerMsg::Pong { nonce } => f.debug_struct("Pong").field("nonce", nonce).finish(),
            ServerMsg::Relaying => f.write_str("Relaying"),
            ServerMsg::Notice { text } => f.debug_struct("Notice").field("text", text).finish(),
            ServerMsg::Gmcp { package, data } => f
                .debug_struct("Gmcp")
                .field("package", package)
                .field("data", data)
                .finish(),
        }
    }
}

/// Movement intent, sent as a datagram many times a second. The newest one
/// wins; the server clamps it (server-authoritative movement).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Increases with every input; acknowledged in snapshots.
    pub seq: u32,
    /// Desired direction on the ground plane; length is clamped to 1.
    pub move_x: f32,
    pub move_z: f32,
    /// Facing, radians, 0 = north (-Z), clockwise.
    pub yaw: f32,
    pub jump: bool,
}

impl Input {
    /// Replace non-finite numbers and clamp the direction to unit length, so
    /// the simulation never sees garbage.
    pub fn sanitized(mut self) -> Input {
        if !self.move_x.is_finite() || !self.move_z.is_finite() {
            self.move_x = 0.0;
            self.move_z = 0.0;
        }
        if !self.yaw.is_finite() {
            self.yaw = 0.0;
        }
        let len = (self.move_x * self.move_x + self.move_z * self.move_z).sqrt();
        if len > 1.0 {
            self.move_x /= len;
            self.move_z /= len;
        }
        self
    }
}

/// Client -> router datagrams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientDatagram {
    Input(Input),
}

/// Router -> client datagrams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerDatagram {
    /// Positions of (some of) the entities in view at a tick. A view larger
    /// than one datagram is split over several snapshots with the same tick.
    Snapshot {
        tick: u64,
        /// Newest input of this client the simulation has applied.
        ack_input: u32,
        /// The receiving player's position in centimetres: the updates'
        /// positions are relative to it.
        origin: [i32; 3],
        /// The updates, packed by [`crate::snapshot::encode_updates`];
        /// decode with [`crate::snapshot::decode_updates`] and `origin`.
        /// On the wire: a varint length, then the bytes (as bincode writes
        /// any `Vec<u8>`; copied whole rather than byte by byte).
        #[serde(with = "serde_bytes")]
        entities: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_out_passwords_and_tokens() {
        for msg in [
            ClientMsg::Create {
                name: "Ann".into(),
                password: "hunter2-secret".into(),
            },
            ClientMsg::Connect {
                name: "Ann".into(),
                password: "hunter2-secret".into(),
            },
            ClientMsg::Resume {
                token: "hunter2-secret".into(),
            },
        ] {
            let shown = format!("{msg:?} {msg:#?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        let say = ClientMsg::Say { text: "hi".into() };
        assert_eq!(format!("{say:?}"), "Say { text: \"hi\" }");
    }

    fn logged_in(token: &str) -> ServerMsg {
        ServerMsg::LoggedIn {
            player: PlayerId(7),
            entity: EntityId(9),
            name: "Ann".into(),
            token: token.into(),
            pos: Vec3::new(1.0, 2.0, 3.0),
            cell: CellId { x: 0, z: -1 },
            shard: ShardId("shard-1".into()),
            tick_hz: 30,
        }
    }

    #[test]
    fn server_debug_leaves_out_the_session_token() {
        let msg = logged_in("hunter2-token");
        let shown = format!("{msg:?} {msg:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
        // Everything else still shows, as a derived `Debug` would.
        assert!(
            shown.contains("name: \"Ann\"") && shown.contains("tick_hz: 30"),
            "{shown}"
        );
        let text = ServerMsg::Text { text: "hi".into() };
        assert_eq!(format!("{text:?}"), "Text { text: \"hi\" }");
        assert_eq!(format!("{:?}", ServerMsg::Relaying), "Relaying");
    }

    #[test]
    fn logged_in_encodes_as_before() {
        // The bytes a router of the previous release sends: `Debug` changed,
        // the wire did not.
        let bytes = crate::encode(&logged_in("tok")).unwrap();
        let golden: &[u8] = &[
            1, 7, 9, 3, b'A', b'n', b'n', 3, b't', b'o', b'k', 0, 0, 128, 63, 0, 0, 0, 64, 0, 0,
            64, 64, 0, 1, 7, b's', b'h', b'a', b'r', b'd', b'-', b'1', 30,
        ];
        assert_eq!(bytes, golden);
        assert_eq!(
            crate::decode::<ServerMsg>(golden, 1024).unwrap(),
            logged_in("tok")
        );
    }

    #[test]
    fn secret_debug_is_redacted_and_its_encoding_is_a_strings() {
        let secret: Secret = "hunter2-secret".parse().unwrap();
        assert_eq!(format!("{secret:?}"), "\"<redacted>\"");
        assert_eq!(
            format!("{:?}", Some(secret.clone())),
            "Some(\"<redacted>\")"
        );
        assert_eq!(secret.expose(), "hunter2-secret");
        let as_string = crate::encode(&"hunter2-secret".to_string()).unwrap();
        assert_eq!(crate::encode(&secret).unwrap(), as_string);
        assert_eq!(crate::decode::<Secret>(&as_string, 64).unwrap(), secret);
    }

    #[test]
    fn clean_text_removes_controls() {
        assert_eq!(
            clean_text(" hi\x1b[31mred\nBob says, \"x\"\u{9b}\t "),
            "hi[31mredBob says, \"x\""
        );
        assert_eq!(clean_text("héllo wörld"), "héllo wörld");
    }
}
