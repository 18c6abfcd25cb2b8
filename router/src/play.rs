//! Text commands of a player in the world, shared by the telnet gateway and
//! the QUIC control stream (`ClientMsg::Command`), so both behave alike.

use crate::command::{Command, HELP};
use crate::session::Player;
use crate::text;
use tessera_proto::msg::{clean_text, MAX_SAY_CHARS};

/// What a command produced.
pub struct Outcome {
    /// Text to show the player (no trailing newline; may be empty).
    pub text: String,
    /// The player asked to leave.
    pub quit: bool,
    /// A GMCP message about what the command did (the player's own speech
    /// for their client's chat window), as (package, JSON).
    pub gmcp: Option<(&'static str, String)>,
}

impl Outcome {
    fn text(text: impl Into<String>) -> Outcome {
        Outcome {
            text: text.into(),
            quit: false,
            gmcp: None,
        }
    }
}

/// Runs one parsed command (`quit` at once; others paced to the player's
/// command allowance, `Player::pace_command`).
pub async fn execute(player: &mut Player, cmd: Command) -> Outcome {
    if !matches!(cmd, Command::Quit | Command::Empty) {
        player.pace_command().await;
    }
    let notice = match player.ensure_in_world().await {
        Ok(n) => n,
        Err(e) => return Outcome::text(format!("{e}.")),
    };
    let mut out = run(player, cmd).await;
    if let Some(n) = notice {
        out.text = if out.text.is_empty() {
            n
        } else {
            format!("{n}\n{}", out.text)
        };
    }
    out
}

async fn run(player: &mut Player, cmd: Command) -> Outcome {
    let router = player.router.clone();
    match cmd {
        Command::Empty => Outcome::text(""),
        Command::Help => Outcome::text(HELP.trim_end()),
        Command::Quit => Outcome {
            text: "Goodbye. Your position is saved.".into(),
            quit: true,
            gmcp: None,
        },
        Command::Say(t) => {
            let t = clean_text(&t);
            if t.chars().count() > MAX_SAY_CHARS {
                return Outcome::text(format!(
                    "That is too long to say in one breath (at most {MAX_SAY_CHARS} characters)."
                ));
            }
            if t.is_empty() {
                return Outcome::text("Say what?");
            }
            match player.say(&t) {
                Ok(()) => Outcome {
                    gmcp: Some((
                        "Comm.Channel.Text",
                        crate::gmcp::channel_text("say", player.name(), &t).to_string(),
                    )),
                    ..Outcome::text(format!("You say, \"{t}\""))
                },
                Err(crate::RouterError::Refused(why)) => Outcome::text(why),
                Err(e) => Outcome::text(format!("Nobody hears you: {e}.")),
            }
        }
        cmd @ (Command::Shout(_)
        | Command::Tell { .. }
        | Command::Chat { .. }
        | Command::Channel(_)
        | Command::History(_)
        | Command::Mute { .. }
        | Command::Unmute(_)
        | Command::Kick { .. }) => Outcome::text(crate::chat::execute(player, cmd).await),
        Command::Who => Outcome::text(text::who(&router.online())),
        Command::Where => {
            // The owning cell (it differs from the geometric one within the
            // hand-off hysteresis band).
            let pos = player.position();
            Outcome::text(text::where_text(pos, player.region, &player.shard))
        }
        Command::Look => {
            let pos = player.position();
            let around = router.view.around(&router.grid, pos, text::LOOK_RADIUS);
            Outcome::text(text::look(&router.world, player.entity, pos, &around))
        }
        Command::Map => {
            let pos = player.position();
            let around = router.view.around(&router.grid, pos, 70.0);
            Outcome::text(text::map(
                &router.world,
                &router.grid,
                player.entity,
                pos,
                &around,
            ))
        }
        Command::Move(dir) => {
            let from = player.position();
            let before = router.world.zone_at(from).name.clone();
            match player.step(dir).await {
                Ok((pos, blocked)) => {
                    let moved = pos.distance_xz(from);
                    let way = crate::style::paint(crate::style::Style::Exit, dir.name());
                    let mut out = if !blocked {
                        format!("You walk {way}.")
                    } else if moved < 0.2 {
                        format!("Something blocks your way {way}.")
                    } else {
                        format!("You walk {way} but something stops you after {moved:.0} m.")
                    };
                    let zone = router.world.zone_at(pos);
                    if zone.name != before {
                        let zone = crate::style::paint(crate::style::Style::Title, &zone.name);
                        out.push_str(&format!("\nYou enter {zone}."));
                    }
                    Outcome::text(out)
                }
                Err(e) => Outcome::text(format!("You cannot move right now: {e}.")),
            }
        }
    }
}
