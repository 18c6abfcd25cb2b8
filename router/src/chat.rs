//! The router's side of chat: players' `shout`, `tell`, `channel`, `chat`,
//! `history`, `mute`, `unmute` and `kick` go to the chat service, and what it
//! delivers goes to the players' sessions (as [`PlayerEvent::Chat`] and
//! [`PlayerEvent::Kicked`]).

use crate::command::{ChannelOp, Command};
use crate::session::Player;
use crate::Router;
use std::collections::HashSet;
use std::sync::Arc;
use tessera_chat::{ChatClient, ChatError, Delivery, Reply, Request};
use tessera_proto::cluster::PlayerEvent;
use tessera_proto::PlayerId;
use tokio::sync::mpsc;

/// How many lines `history` shows.
const HISTORY_LINES: u32 = 20;

/// Hands what the chat service delivers to the sessions of this router.
pub(crate) async fn pump(router: Arc<Router>, mut deliveries: mpsc::UnboundedReceiver<Delivery>) {
    while let Some(d) = deliveries.recv().await {
        match d {
            Delivery::Deliver { to, line } => {
                let senders = router.senders_of(&to);
                for tx in senders {
                    tx.send(PlayerEvent::Chat {
                        kind: line.kind.clone(),
                        from: line.from.clone(),
                        to: line.to.clone(),
                        text: line.text.clone(),
                        at_unix_ms: line.at_unix_ms,
                    });
                }
            }
            Delivery::Muted {
                player,
                until_unix_ms,
            } => router.set_muted(tessera_proto::PlayerId(player), until_unix_ms),
            Delivery::Kick { player, by, reason } => {
                tracing::info!(player, by = %by, "player kicked");
                for tx in router.senders_of(&[player]) {
                    tx.send(PlayerEvent::Kicked {
                        by: by.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }
}

/// Runs a chat command for `player`; the text to show them.
pub(crate) async fn execute(player: &Player, cmd: Command) -> String {
    let Some(chat) = player.router.chat.as_ref() else {
        return capitalised(&ChatError::Unavailable.to_string());
    };
    let from = player.account.id;
    let request = match cmd {
        Command::Shout(text) => Request::Shout { from, text },
        Command::Tell { to, text } => Request::Tell {
            from,
            to_name: to,
            text,
        },
        Command::Chat { channel, text } => Request::Say {
            from,
            channel,
            text,
        },
        Command::Channel(ChannelOp::Join(channel)) => Request::Join {
            player: from,
            channel,
        },
        Command::Channel(ChannelOp::Leave(channel)) => Request::Leave {
            player: from,
            channel,
        },
        Command::Channel(ChannelOp::List) => Request::Channels { player: from },
        Command::History(channel) => Request::History {
            player: from,
            channel: channel.unwrap_or_else(|| tessera_chat::rules::SHOUT_CHANNEL.to_string()),
            limit: HISTORY_LINES,
        },
        Command::Mute { name, minutes } => Request::Mute {
            by: from,
            name,
            seconds: minutes * 60,
        },
        Command::Unmute(name) => Request::Unmute { by: from, name },
        Command::Kick { name, reason } => Request::Kick {
            by: from,
            name,
            reason,
        },
        other => {
            tracing::error!(command = ?other, "not a chat command");
            return String::new();
        }
    };
    let what = describe(&request);
    match chat.request(request).await {
        // Shouts, tells and channel lines come back as deliveries (the
        // sender's echo included), so there is nothing more to say.
        Ok(Reply::Delivered { .. }) => String::new(),
        Ok(Reply::Ok) => what,
        Ok(Reply::Channels(list)) if list.is_empty() => {
            "You are in no channels. Type 'channel join <name>' to join one.".into()
        }
        Ok(Reply::Channels(list)) => {
            let mut out = String::from("Your channels:");
            for c in list {
                out.push_str(&format!("\n  {:<24} {} online", c.name, c.online));
            }
            out
        }
        Ok(Reply::History(lines)) if lines.is_empty() => "Nothing has been said there yet.".into(),
        Ok(Reply::History(lines)) => lines
            .iter()
            .map(|l| l.render_for(player.name()))
            .collect::<Vec<_>>()
            .join("\n"),
        Ok(Reply::Failed(e)) | Err(e) => capitalised(&e.to_string()),
    }
}

/// What a kicked player is told (both gateways; telnet adds a goodbye).
pub(crate) fn kicked_text(by: &str, reason: &str) -> String {
    if reason.is_empty() {
        format!("{by} has kicked you out of the game")
    } else {
        format!("{by} has kicked you out of the game ({reason})")
    }
}

/// What a successful request that is not a message did, for the player.
fn describe(req: &Request) -> String {
    match req {
        Request::Join { channel, .. } => format!(
            "You join [{}]. Type 'chat {} <text>' to talk there.",
            channel.to_lowercase(),
            channel.to_lowercase()
        ),
        Request::Leave { channel, .. } => format!("You leave [{}].", channel.to_lowercase()),
        Request::Mute { name, seconds, .. } => {
            format!("{name} is muted for {} minutes.", seconds / 60)
        }
        Request::Unmute { name, .. } => format!("{name} may talk again."),
        Request::Kick { name, .. } => format!("{name} has been kicked."),
        _ => "Done.".into(),
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl Router {
    /// The event senders of the sessions playing `players`.
    fn senders_of(&self, players: &[u64]) -> Vec<crate::EventSender> {
        let wanted: HashSet<u64> = players.iter().copied().collect();
        self.sessions
            .lock()
            .values()
            .filter(|s| {
                s.playing
                    .as_ref()
                    .is_some_and(|p| wanted.contains(&p.player.0))
            })
            .map(|s| s.tx.clone())
            .collect()
    }

    /// Tells the chat service a player is online here (it remembers them
    /// across its own restarts).
    pub(crate) async fn chat_online(&self, player: PlayerId, name: &str, operator: bool) {
        if let Some(chat) = &self.chat {
            if let Err(e) = chat.online(player.0, name, operator).await {
                tracing::warn!(player = %player, error = %e, "chat does not know the player yet");
            }
        }
    }

    pub(crate) async fn chat_offline(&self, player: PlayerId) {
        if let Some(chat) = &self.chat {
            if let Err(e) = chat.offline(player.0).await {
                tracing::debug!(player = %player, error = %e, "chat offline not delivered");
            }
        }
    }
}

/// The chat client and its deliveries, as a router is built with them.
pub type ChatLink = (ChatClient, mpsc::UnboundedReceiver<Delivery>);
