//! The text players' command language: a pure parser from one input line to a
//! command, before login ([`parse_prelogin`]) and in the world
//! ([`parse_command`]).
//!
//! Verbs are case-insensitive; words are separated by any whitespace and extra
//! whitespace is ignored. Free text (`say`, `shout`, `tell`) keeps its inner
//! spacing and is trimmed. Arguments other than free text are single words, so
//! names and passwords cannot contain spaces. The parser knows nothing about
//! whether a name exists or a command is available yet: the session decides.

use tessera_proto::msg::REDACTED;
use tessera_proto::Compass;

/// A line typed before login. Its `Debug` leaves out the password.
#[derive(Clone, PartialEq, Eq)]
pub enum PreLogin {
    /// `create <name> [<password>]`: without a password the session prompts
    /// for it with echo off.
    Create {
        name: String,
        password: Option<String>,
    },
    /// `connect <name> [<password>]`.
    Connect {
        name: String,
        password: Option<String>,
    },
    Help,
    Quit,
    /// A blank line.
    Empty,
}

impl std::fmt::Debug for PreLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether a password was typed shows; the password does not.
        let redacted = |password: &Option<String>| password.as_ref().map(|_| REDACTED);
        match self {
            PreLogin::Create { name, password } => f
                .debug_struct("Create")
                .field("name", name)
                .field("password", &redacted(password))
                .finish(),
            PreLogin::Connect { name, password } => f
                .debug_struct("Connect")
                .field("name", name)
                .field("password", &redacted(password))
                .finish(),
            PreLogin::Help => f.write_str("Help"),
            PreLogin::Quit => f.write_str("Quit"),
            PreLogin::Empty => f.write_str("Empty"),
        }
    }
}

/// A line typed in the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `look`, `l`.
    Look,
    /// `north`, `n`, ..., `go <direction>`.
    Move(Compass),
    /// `say <text>`, `'<text>`.
    Say(String),
    /// `shout <text>`.
    Shout(String),
    /// `tell <name> <text>`.
    Tell {
        to: String,
        text: String,
    },
    /// `channel join <name>`, `channel leave <name>`, `channel list`
    /// (`channels` works too).
    Channel(ChannelOp),
    /// `chat <channel> <text>`: say something in a channel.
    Chat {
        channel: String,
        text: String,
    },
    /// `history [<channel>]`: the last messages of a channel (shouts without
    /// one).
    History(Option<String>),
    /// `mute <name> [<minutes>]` (operators).
    Mute {
        name: String,
        minutes: u64,
    },
    /// `unmute <name>` (operators).
    Unmute(String),
    /// `kick <name> [<reason>]` (operators).
    Kick {
        name: String,
        reason: String,
    },
    Who,
    Where,
    Map,
    Help,
    Quit,
    /// A blank line.
    Empty,
}

/// What `channel` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelOp {
    Join(String),
    Leave(String),
    List,
}

/// Minutes a `mute` lasts when none are given.
pub const DEFAULT_MUTE_MINUTES: u64 = 10;

/// Why a line is not a command. The `Display` text is meant for the player.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// The first word is not a verb we know (in this state).
    #[error("Unknown command '{verb}'. Type 'help' for a list of commands.")]
    Unknown { verb: String },
    /// A known verb with the wrong arguments; holds the correct form.
    #[error("Usage: {0}")]
    Usage(&'static str),
}

/// Unknown verbs are echoed back at most this many characters long.
const MAX_VERB_CHARS: usize = 32;

/// Help shown before login.
pub const PRELOGIN_HELP: &str = "\
Welcome to Tessera! Before you enter the world:
  create <name> [<password>]   make a new character (leave out the password
                               and you will be asked for it, hidden)
  connect <name> [<password>]  enter the world as an existing character
  help                         show this list
  quit                         leave
Names and passwords are single words without spaces.
";

/// Help shown in the world.
pub const HELP: &str = "\
Commands:
  look (l)                 look around: where you are and who is near
  north (n)  south (s)  east (e)  west (w)
  northeast (ne)  northwest (nw)  southeast (se)  southwest (sw)
                           walk that way; each step is a few metres
  go <direction>           the same, e.g. 'go north'
  say <text>               speak to everyone near you ('<text> works too)
  shout <text>             call out to everyone in a wider area
  tell <name> <text>       send a private message to one player
  channel join <name>      join a chat channel (channel leave <name> leaves;
                           channel list shows yours)
  chat <channel> <text>    say something in a channel you joined
  history [<channel>]      the last messages of a channel (shouts without one)
  who                      list the players in the world
  where                    show your position and the cell you are in
  map                      draw the area around you (north is up)
  help                     show this list
  quit                     leave the world
";

/// Split a line into its lower-cased verb, the verb as typed, and the rest
/// (trimmed, inner spacing kept). `None` for a blank line.
fn split_verb(line: &str) -> Option<(String, &str, &str)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (verb, rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    Some((verb.to_lowercase(), verb, rest))
}

fn unknown(verb: &str) -> CommandError {
    let mut shown: String = verb.chars().take(MAX_VERB_CHARS).collect();
    if verb.chars().nth(MAX_VERB_CHARS).is_some() {
        shown.push('…');
    }
    CommandError::Unknown { verb: shown }
}

/// `<name> [<password>]` for create and connect.
fn name_and_password(
    rest: &str,
    usage: &'static str,
) -> Result<(String, Option<String>), CommandError> {
    let mut words = rest.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(name), password, None) => Ok((name.to_owned(), password.map(str::to_owned))),
        _ => Err(CommandError::Usage(usage)),
    }
}

/// Non-empty free text, or the usage error.
fn text(rest: &str, usage: &'static str) -> Result<String, CommandError> {
    if rest.is_empty() {
        Err(CommandError::Usage(usage))
    } else {
        Ok(rest.to_owned())
    }
}

/// Parse a line typed before login.
pub fn parse_prelogin(line: &str) -> Result<PreLogin, CommandError> {
    let Some((verb, typed, rest)) = split_verb(line) else {
        return Ok(PreLogin::Empty);
    };
    match verb.as_str() {
        "create" => {
            let (name, password) = name_and_password(rest, "create <name> [<password>]")?;
            Ok(PreLogin::Create { name, password })
        }
        "connect" => {
            let (name, password) = name_and_password(rest, "connect <name> [<password>]")?;
            Ok(PreLogin::Connect { name, password })
        }
        "help" => Ok(PreLogin::Help),
        "quit" => Ok(PreLogin::Quit),
        _ => Err(unknown(typed)),
    }
}

/// Parse a line typed in the world.
pub fn parse_command(line: &str) -> Result<Command, CommandError> {
    if let Some(said) = line.trim_start().strip_prefix('\'') {
        return text(said.trim(), "say <text>").map(Command::Say);
    }
    let Some((verb, typed, rest)) = split_verb(line) else {
        return Ok(Command::Empty);
    };
    if let Some(direction) = Compass::parse(&verb) {
        return Ok(Command::Move(direction));
    }
    match verb.as_str() {
        "look" | "l" => Ok(Command::Look),
        "go" => {
            let mut words = rest.split_whitespace();
            match (words.next().and_then(Compass::parse), words.next()) {
                (Some(direction), None) => Ok(Command::Move(direction)),
                _ => Err(CommandError::Usage("go <direction>")),
            }
        }
        "say" => text(rest, "say <text>").map(Command::Say),
        "shout" => text(rest, "shout <text>").map(Command::Shout),
        "tell" => {
            const USAGE: &str = "tell <name> <text>";
            let (to, said) = rest
                .split_once(char::is_whitespace)
                .ok_or(CommandError::Usage(USAGE))?;
            Ok(Command::Tell {
                to: to.to_owned(),
                text: text(said.trim(), USAGE)?,
            })
        }
        "channel" | "channels" => {
            const USAGE: &str = "channel join|leave <name>, or channel list";
            let mut words = rest.split_whitespace();
            let op = words.next().map(str::to_lowercase);
            match (op.as_deref(), words.next(), words.next()) {
                (None | Some("list"), None, None) => Ok(Command::Channel(ChannelOp::List)),
                (Some("join"), Some(name), None) => {
                    Ok(Command::Channel(ChannelOp::Join(name.to_owned())))
                }
                (Some("leave"), Some(name), None) => {
                    Ok(Command::Channel(ChannelOp::Leave(name.to_owned())))
                }
                _ => Err(CommandError::Usage(USAGE)),
            }
        }
        "chat" => {
            const USAGE: &str = "chat <channel> <text>";
            let (channel, said) = rest
                .split_once(char::is_whitespace)
                .ok_or(CommandError::Usage(USAGE))?;
            Ok(Command::Chat {
                channel: channel.to_owned(),
                text: text(said.trim(), USAGE)?,
            })
        }
        "history" => {
            let mut words = rest.split_whitespace();
            match (words.next(), words.next()) {
                (channel, None) => Ok(Command::History(channel.map(str::to_owned))),
                _ => Err(CommandError::Usage("history [<channel>]")),
            }
        }
        "mute" => {
            const USAGE: &str = "mute <name> [<minutes>]";
            let mut words = rest.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(name), minutes, None) => {
                    let minutes = match minutes {
                        None => DEFAULT_MUTE_MINUTES,
                        Some(m) => m
                            .parse()
                            .ok()
                            .filter(|m| (1..=7 * 24 * 60).contains(m))
                            .ok_or(CommandError::Usage(USAGE))?,
                    };
                    Ok(Command::Mute {
                        name: name.to_owned(),
                        minutes,
                    })
                }
                _ => Err(CommandError::Usage(USAGE)),
            }
        }
        "unmute" => {
            let mut words = rest.split_whitespace();
            match (words.next(), words.next()) {
                (Some(name), None) => Ok(Command::Unmute(name.to_owned())),
                _ => Err(CommandError::Usage("unmute <name>")),
            }
        }
        "kick" => {
            let (name, reason) = match rest.split_once(char::is_whitespace) {
                Some((name, reason)) => (name, reason.trim()),
                None => (rest, ""),
            };
            if name.is_empty() {
                return Err(CommandError::Usage("kick <name> [<reason>]"));
            }
            Ok(Command::Kick {
                name: name.to_owned(),
                reason: reason.to_owned(),
            })
        }
        "who" => Ok(Command::Who),
        "where" => Ok(Command::Where),
        "map" => Ok(Command::Map),
        "help" => Ok(Command::Help),
        "quit" => Ok(Command::Quit),
        _ => Err(unknown(typed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn create(name: &str, password: Option<&str>) -> PreLogin {
        PreLogin::Create {
            name: name.into(),
            password: password.map(Into::into),
        }
    }

    fn connect(name: &str, password: Option<&str>) -> PreLogin {
        PreLogin::Connect {
            name: name.into(),
            password: password.map(Into::into),
        }
    }

    #[test]
    fn prelogin_debug_leaves_out_the_password() {
        for line in ["create Ann hunter2-pw", "connect Ann hunter2-pw"] {
            let typed = parse_prelogin(line).unwrap();
            let shown = format!("{typed:?} {typed:#?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("password: Some(\"<redacted>\")"), "{shown}");
            assert!(shown.contains("name: \"Ann\""), "{shown}");
        }
        assert_eq!(
            format!("{:?}", connect("Ann", None)),
            "Connect { name: \"Ann\", password: None }"
        );
        assert_eq!(format!("{:?}", PreLogin::Help), "Help");
    }

    fn say(s: &str) -> Result<Command, CommandError> {
        Ok(Command::Say(s.into()))
    }

    // ---- chat ----

    #[test]
    fn chat_commands_parse() {
        let join = |n: &str| Ok(Command::Channel(ChannelOp::Join(n.into())));
        assert_eq!(parse_command("channel join trade"), join("trade"));
        assert_eq!(parse_command("CHANNEL Join Trade"), join("Trade"));
        assert_eq!(
            parse_command("channel leave trade"),
            Ok(Command::Channel(ChannelOp::Leave("trade".into())))
        );
        assert_eq!(
            parse_command("channel list"),
            Ok(Command::Channel(ChannelOp::List))
        );
        assert_eq!(
            parse_command("channels"),
            Ok(Command::Channel(ChannelOp::List))
        );
        assert!(matches!(
            parse_command("channel join"),
            Err(CommandError::Usage(_))
        ));
        assert!(matches!(
            parse_command("channel frobnicate x"),
            Err(CommandError::Usage(_))
        ));
        assert_eq!(
            parse_command("chat trade  selling  rope "),
            Ok(Command::Chat {
                channel: "trade".into(),
                text: "selling  rope".into()
            })
        );
        assert!(matches!(
            parse_command("chat trade"),
            Err(CommandError::Usage(_))
        ));
        assert_eq!(parse_command("history"), Ok(Command::History(None)));
        assert_eq!(
            parse_command("history trade"),
            Ok(Command::History(Some("trade".into())))
        );
        assert_eq!(
            parse_command("mute Bob"),
            Ok(Command::Mute {
                name: "Bob".into(),
                minutes: DEFAULT_MUTE_MINUTES
            })
        );
        assert_eq!(
            parse_command("mute Bob 5"),
            Ok(Command::Mute {
                name: "Bob".into(),
                minutes: 5
            })
        );
        assert!(matches!(
            parse_command("mute Bob forever"),
            Err(CommandError::Usage(_))
        ));
        assert_eq!(
            parse_command("unmute Bob"),
            Ok(Command::Unmute("Bob".into()))
        );
        assert_eq!(
            parse_command("kick Bob spamming the square"),
            Ok(Command::Kick {
                name: "Bob".into(),
                reason: "spamming the square".into()
            })
        );
        assert!(matches!(parse_command("kick"), Err(CommandError::Usage(_))));
    }

    // ---- before login ----

    #[test]
    fn create_and_connect() {
        assert_eq!(
            parse_prelogin("create Alice hunter2"),
            Ok(create("Alice", Some("hunter2")))
        );
        assert_eq!(parse_prelogin("create Alice"), Ok(create("Alice", None)));
        assert_eq!(
            parse_prelogin("connect Bob pw"),
            Ok(connect("Bob", Some("pw")))
        );
        assert_eq!(parse_prelogin("connect Bob"), Ok(connect("Bob", None)));
    }

    #[test]
    fn prelogin_verbs_are_case_insensitive_arguments_are_not() {
        assert_eq!(
            parse_prelogin("CREATE Alice PW"),
            Ok(create("Alice", Some("PW")))
        );
        assert_eq!(
            parse_prelogin("Connect bOb Secret"),
            Ok(connect("bOb", Some("Secret")))
        );
        assert_eq!(parse_prelogin("HELP"), Ok(PreLogin::Help));
        assert_eq!(parse_prelogin("Quit"), Ok(PreLogin::Quit));
    }

    #[test]
    fn prelogin_extra_whitespace_is_ignored() {
        assert_eq!(
            parse_prelogin("  \t connect   Zoë \t  p@ss  "),
            Ok(connect("Zoë", Some("p@ss")))
        );
        assert_eq!(parse_prelogin("   "), Ok(PreLogin::Empty));
        assert_eq!(parse_prelogin(""), Ok(PreLogin::Empty));
        assert_eq!(parse_prelogin(" help "), Ok(PreLogin::Help));
    }

    #[test]
    fn prelogin_usage_errors() {
        let create_usage = Err(CommandError::Usage("create <name> [<password>]"));
        let connect_usage = Err(CommandError::Usage("connect <name> [<password>]"));
        assert_eq!(parse_prelogin("create"), create_usage);
        assert_eq!(parse_prelogin("create a b c"), create_usage);
        assert_eq!(parse_prelogin("connect"), connect_usage);
        assert_eq!(parse_prelogin("connect bob my secret"), connect_usage);
        assert_eq!(
            parse_prelogin("create").unwrap_err().to_string(),
            "Usage: create <name> [<password>]"
        );
    }

    #[test]
    fn prelogin_unknown_verbs() {
        for line in ["look", "n", "dance", "say hi", "'hi"] {
            let verb = line.split_whitespace().next().unwrap();
            assert_eq!(
                parse_prelogin(line),
                Err(CommandError::Unknown { verb: verb.into() }),
                "{line}"
            );
        }
    }

    // ---- in the world ----

    #[test]
    fn simple_verbs_and_aliases() {
        let cases = [
            ("look", Command::Look),
            ("l", Command::Look),
            ("who", Command::Who),
            ("where", Command::Where),
            ("map", Command::Map),
            ("help", Command::Help),
            ("quit", Command::Quit),
            ("", Command::Empty),
            (" \t ", Command::Empty),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_command(line), Ok(expected.clone()), "{line:?}");
            let upper = line.to_uppercase();
            assert_eq!(parse_command(&upper), Ok(expected.clone()), "{upper:?}");
            let padded = format!("  {line}  ");
            assert_eq!(parse_command(&padded), Ok(expected), "{padded:?}");
        }
    }

    #[test]
    fn all_moves_and_aliases() {
        let cases = [
            ("north", "n", Compass::North),
            ("south", "s", Compass::South),
            ("east", "e", Compass::East),
            ("west", "w", Compass::West),
            ("northeast", "ne", Compass::NorthEast),
            ("northwest", "nw", Compass::NorthWest),
            ("southeast", "se", Compass::SouthEast),
            ("southwest", "sw", Compass::SouthWest),
        ];
        for (name, short, dir) in cases {
            for word in [
                name.to_owned(),
                short.to_owned(),
                name.to_uppercase(),
                short.to_uppercase(),
            ] {
                assert_eq!(parse_command(&word), Ok(Command::Move(dir)), "{word}");
                assert_eq!(
                    parse_command(&format!("go {word}")),
                    Ok(Command::Move(dir)),
                    "go {word}"
                );
                assert_eq!(
                    parse_command(&format!(" GO \t {word} ")),
                    Ok(Command::Move(dir)),
                    "GO {word}"
                );
            }
        }
        assert_eq!(Compass::ALL.len(), cases.len());
    }

    #[test]
    fn go_usage() {
        let usage = Err(CommandError::Usage("go <direction>"));
        assert_eq!(parse_command("go"), usage);
        assert_eq!(parse_command("go up"), usage);
        assert_eq!(parse_command("go north east"), usage);
    }

    #[test]
    fn say_keeps_inner_spacing_and_trims() {
        assert_eq!(parse_command("say hello"), say("hello"));
        assert_eq!(parse_command("SAY   hello   there  "), say("hello   there"));
        assert_eq!(parse_command("say\thello"), say("hello"));
        assert_eq!(parse_command("'hello"), say("hello"));
        assert_eq!(parse_command("' hello  world "), say("hello  world"));
        assert_eq!(parse_command("  'hi"), say("hi"));
        assert_eq!(parse_command("'it's"), say("it's"));
        assert_eq!(parse_command("say 'quoted'"), say("'quoted'"));
    }

    #[test]
    fn say_unicode() {
        assert_eq!(parse_command("say héllo wörld 🦀"), say("héllo wörld 🦀"));
        assert_eq!(parse_command("'こんにちは"), say("こんにちは"));
        assert_eq!(parse_command("say \u{3000}全角\u{3000}"), say("全角"));
    }

    #[test]
    fn say_usage() {
        let usage = Err(CommandError::Usage("say <text>"));
        assert_eq!(parse_command("say"), usage);
        assert_eq!(parse_command("say    "), usage);
        assert_eq!(parse_command("'"), usage);
        assert_eq!(parse_command("  '  "), usage);
        assert_eq!(
            parse_command("say").unwrap_err().to_string(),
            "Usage: say <text>"
        );
    }

    #[test]
    fn shout() {
        assert_eq!(
            parse_command("shout  over  here "),
            Ok(Command::Shout("over  here".into()))
        );
        assert_eq!(
            parse_command("SHOUT"),
            Err(CommandError::Usage("shout <text>"))
        );
    }

    #[test]
    fn tell() {
        assert_eq!(
            parse_command("tell Bob  meet me  at the well "),
            Ok(Command::Tell {
                to: "Bob".into(),
                text: "meet me  at the well".into()
            })
        );
        assert_eq!(
            parse_command("TELL\tZoë\t👋"),
            Ok(Command::Tell {
                to: "Zoë".into(),
                text: "👋".into()
            })
        );
        let usage = Err(CommandError::Usage("tell <name> <text>"));
        assert_eq!(parse_command("tell"), usage);
        assert_eq!(parse_command("tell Bob"), usage);
        assert_eq!(parse_command("tell Bob   "), usage);
    }

    #[test]
    fn unknown_verbs() {
        let err = parse_command("dance wildly").unwrap_err();
        assert_eq!(
            err,
            CommandError::Unknown {
                verb: "dance".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "Unknown command 'dance'. Type 'help' for a list of commands."
        );
        // Shown as typed; only the verb is matched case-insensitively.
        assert_eq!(
            parse_command("DANCE"),
            Err(CommandError::Unknown {
                verb: "DANCE".into()
            })
        );
        // Before-login verbs are not commands in the world.
        assert!(matches!(
            parse_command("connect bob pw"),
            Err(CommandError::Unknown { .. })
        ));
        assert!(matches!(
            parse_command("looks"),
            Err(CommandError::Unknown { .. })
        ));
        assert!(matches!(
            parse_command("nn"),
            Err(CommandError::Unknown { .. })
        ));
    }

    #[test]
    fn long_unknown_verbs_are_shortened() {
        let verb = "x".repeat(1000);
        let err = parse_command(&verb).unwrap_err();
        let CommandError::Unknown { verb: shown } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(shown.chars().count(), MAX_VERB_CHARS + 1);
        assert!(err.to_string().starts_with("Unknown command 'xxxx"));
        let exact = "y".repeat(MAX_VERB_CHARS);
        assert_eq!(
            parse_command(&exact),
            Err(CommandError::Unknown {
                verb: exact.clone()
            })
        );
    }

    #[test]
    fn help_texts_mention_every_command() {
        for verb in ["create", "connect", "help", "quit"] {
            assert!(PRELOGIN_HELP.contains(verb), "{verb}");
        }
        for verb in [
            "look",
            "north",
            "northeast",
            "go",
            "say",
            "shout",
            "tell",
            "who",
            "where",
            "map",
            "help",
            "quit",
            "north is up",
            "metres",
        ] {
            assert!(HELP.contains(verb), "{verb}");
        }
        for text in [PRELOGIN_HELP, HELP] {
            assert!(text.lines().all(|l| l.chars().count() <= 79));
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(line in any::<String>()) {
            let _ = parse_prelogin(&line);
            let _ = parse_command(&line);
        }

        #[test]
        fn unknown_errors_start_with_unknown_command(line in "\\PC{0,60}") {
            for err in [parse_prelogin(&line).err(), parse_command(&line).err()].into_iter().flatten() {
                let shown = err.to_string();
                match err {
                    CommandError::Unknown { .. } => {
                        prop_assert!(shown.starts_with("Unknown command"));
                        prop_assert!(!shown.contains('\n'));
                    }
                    CommandError::Usage(_) => prop_assert!(shown.starts_with("Usage: ")),
                }
            }
        }

        #[test]
        fn say_round_trips(text in "[^\\s']\\PC{0,40}[^\\s]|[^\\s']") {
            prop_assert_eq!(parse_command(&format!("say {text}")), Ok(Command::Say(text.clone())));
            prop_assert_eq!(parse_command(&format!("'{text}")), Ok(Command::Say(text.clone())));
        }
    }
}
