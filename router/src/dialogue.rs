//! A telnet player's conversation, as a pure state machine: it takes the
//! bytes the client sends, runs them through the telnet codec and the
//! pre-login parser, and answers with the bytes to send back and the few
//! things only the async side can do (log in, run a command in the world,
//! close). The router's telnet gateway and `tessera telnet-gateway` both
//! drive it, so a player reads the same screen through either.

use crate::command::{self, PreLogin, PRELOGIN_HELP};
use crate::telnet::{encode_text, TelnetCodec, TelnetEvent};
use std::collections::VecDeque;

/// What a player sees when the server waits for a line.
pub const PROMPT: &str = "> ";

/// What the async side must do, in order. Its `Debug` leaves out the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Log in (or create the character), then call
    /// [`Dialogue::entered`] or [`Dialogue::refused`].
    LogIn {
        create: bool,
        name: String,
        password: String,
    },
    /// A line typed in the world: run it and write [`Dialogue::answer`].
    Command(String),
    /// Close the connection (after the bytes sent before).
    Close,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Send(bytes) => f.debug_tuple("Send").field(bytes).finish(),
            Action::LogIn { create, name, .. } => f
                .debug_struct("LogIn")
                .field("create", create)
                .field("name", name)
                .field("password", &tessera_proto::msg::REDACTED)
                .finish(),
            Action::Command(line) => f.debug_tuple("Command").field(line).finish(),
            Action::Close => f.write_str("Close"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    Login,
    /// Waiting for a password typed with echo off.
    Password {
        create: bool,
        name: String,
    },
    /// A login is under way; lines typed meanwhile wait.
    LoggingIn,
    Playing,
    Closing,
}

/// One telnet connection's conversation.
pub struct Dialogue {
    codec: TelnetCodec,
    max_line: usize,
    /// Text is wrapped to this many columns (NAWS, else 80).
    width: usize,
    stage: Stage,
    /// Lines typed while a login was under way.
    waiting: VecDeque<TelnetEvent>,
}

impl Dialogue {
    pub fn new(max_line: usize) -> Dialogue {
        Dialogue {
            codec: TelnetCodec::new(max_line),
            max_line,
            width: 80,
            stage: Stage::Login,
            waiting: VecDeque::new(),
        }
    }

    /// The first bytes of a connection: option negotiation, the banner and
    /// the login help, and the prompt.
    pub fn start(&mut self, world: &str) -> Vec<u8> {
        let mut out = self.codec.greeting();
        let banner = format!(
            "Welcome to Tessera, world '{world}'.\n\n{}",
            PRELOGIN_HELP.trim_end()
        );
        out.extend(self.answer(&banner));
        out
    }

    pub fn is_playing(&self) -> bool {
        self.stage == Stage::Playing
    }

    /// Text followed by the prompt: the answer to what the player typed.
    pub fn answer(&self, text: &str) -> Vec<u8> {
        let mut s = String::new();
        if !text.is_empty() {
            s.push_str(&crate::text::wrap(text, self.width - 1));
            s.push('\n');
        }
        s.push_str(PROMPT);
        let mut bytes = encode_text(&s);
        bytes.extend_from_slice(self.codec.prompt_end());
        bytes
    }

    /// Something that happened while the player was at the prompt.
    pub fn notify(&self, text: &str) -> Vec<u8> {
        let text = crate::text::wrap(text, self.width - 1);
        let mut bytes = encode_text(&format!("\n{text}\n{PROMPT}"));
        bytes.extend_from_slice(self.codec.prompt_end());
        bytes
    }

    /// The last line of a connection the server ends: `<reason>. Goodbye.`
    pub fn goodbye(&mut self, reason: &str) -> Vec<u8> {
        self.stage = Stage::Closing;
        encode_text(&format!("\n{reason}. Goodbye.\n"))
    }

    /// The last line of a connection the player ends (`quit`).
    pub fn last_words(&mut self, text: &str) -> Vec<u8> {
        self.stage = Stage::Closing;
        encode_text(&format!("{text}\n"))
    }

    /// The login worked: greets the player with `text` and runs the lines
    /// typed meanwhile.
    pub fn entered(&mut self, text: &str) -> Vec<Action> {
        self.stage = Stage::Playing;
        let mut out = vec![Action::Send(self.answer(text))];
        self.replay(&mut out);
        out
    }

    /// The login failed with `message`: back at the login prompt.
    pub fn refused(&mut self, message: &str) -> Vec<Action> {
        self.stage = Stage::Login;
        let mut out = vec![Action::Send(self.answer(message))];
        self.replay(&mut out);
        out
    }

    fn replay(&mut self, out: &mut Vec<Action>) {
        while self.stage != Stage::LoggingIn && self.stage != Stage::Closing {
            let Some(ev) = self.waiting.pop_front() else {
                break;
            };
            self.on_event(ev, out);
        }
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let feed = self.codec.feed(bytes);
        let mut out = Vec::new();
        if !feed.reply.is_empty() {
            out.push(Action::Send(feed.reply));
        }
        for ev in feed.events {
            if self.stage == Stage::Closing {
                break;
            }
            self.on_event(ev, &mut out);
        }
        out
    }

    fn too_long(&self, len: usize) -> String {
        format!(
            "That line was too long ({len} bytes; the limit is {}) and was ignored.",
            self.max_line
        )
    }

    fn on_event(&mut self, ev: TelnetEvent, out: &mut Vec<Action>) {
        match ev {
            TelnetEvent::WindowSize { width, .. } => {
                // 0 means unknown; keep sane bounds for tiny or huge windows.
                if width > 0 {
                    self.width = usize::from(width).clamp(40, 250);
                }
            }
            TelnetEvent::AreYouThere => {
                out.push(Action::Send(encode_text("\n[Yes, Tessera is here.]\n")));
            }
            TelnetEvent::TerminalType(_) | TelnetEvent::Interrupt => {}
            ev if self.stage == Stage::LoggingIn => self.waiting.push_back(ev),
            TelnetEvent::LineTooLong { len } => {
                let text = self.too_long(len);
                if let Stage::Password { .. } = self.stage {
                    self.stage = Stage::Login;
                    out.push(Action::Send(self.codec.echo_on()));
                    out.push(Action::Send(self.answer(&format!("\n{text}"))));
                } else {
                    out.push(Action::Send(self.answer(&text)));
                }
            }
            TelnetEvent::Line(line) => self.on_line(line, out),
        }
    }

    fn on_line(&mut self, line: String, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.stage, Stage::Login) {
            Stage::Login => match command::parse_prelogin(&line) {
                Ok(PreLogin::Empty) => out.push(Action::Send(self.answer(""))),
                Ok(PreLogin::Help) => out.push(Action::Send(self.answer(PRELOGIN_HELP.trim_end()))),
                Ok(PreLogin::Quit) => {
                    out.push(Action::Send(self.last_words("Goodbye.")));
                    out.push(Action::Close);
                }
                Ok(PreLogin::Create { name, password }) => {
                    self.credentials(true, name, password, out)
                }
                Ok(PreLogin::Connect { name, password }) => {
                    self.credentials(false, name, password, out)
                }
                Err(e) => out.push(Action::Send(self.answer(&e.to_string()))),
            },
            Stage::Password { create, name } => {
                let mut bytes = self.codec.echo_on();
                bytes.extend_from_slice(b"\r\n");
                out.push(Action::Send(bytes));
                if line.is_empty() {
                    out.push(Action::Send(self.answer("No password given.")));
                } else {
                    self.stage = Stage::LoggingIn;
                    out.push(Action::LogIn {
                        create,
                        name,
                        password: line,
                    });
                }
            }
            Stage::Playing => {
                self.stage = Stage::Playing;
                out.push(Action::Command(line));
            }
            stage @ (Stage::LoggingIn | Stage::Closing) => self.stage = stage,
        }
    }

    fn credentials(
        &mut self,
        create: bool,
        name: String,
        password: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = tessera_auth::validate_name(&name) {
            out.push(Action::Send(self.answer(&e.to_string())));
            return;
        }
        match password {
            Some(password) => {
                self.stage = Stage::LoggingIn;
                out.push(Action::LogIn {
                    create,
                    name,
                    password,
                });
            }
            None => {
                let mut bytes = self.codec.echo_off();
                let ask = if create {
                    format!("Choose a password for {name}: ")
                } else {
                    "Password: ".to_string()
                };
                bytes.extend(encode_text(&ask));
                bytes.extend_from_slice(self.codec.prompt_end());
                out.push(Action::Send(bytes));
                self.stage = Stage::Password { create, name };
            }
        }
    }
}

/// The greeting of a player who just entered the world.
pub fn welcome(create: bool, name: &str) -> String {
    if create {
        format!("Welcome to Tessera, {name}! Type 'help' to see what you can do.")
    } else {
        format!("Welcome back, {name}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_action_does_not_show_its_password_in_debug() {
        let mut d = Dialogue::new(1024);
        d.start("World");
        let actions = d.feed(b"connect Ann hunter2-secret\r\n");
        let shown = format!("{actions:?}");
        assert!(shown.contains("LogIn"), "{shown}");
        assert!(shown.contains("Ann"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    const IAC: u8 = 255;
    const WILL: u8 = 251;
    const WONT: u8 = 252;
    const ECHO: u8 = 1;

    fn text(actions: &[Action]) -> String {
        let mut s = String::new();
        for a in actions {
            if let Action::Send(b) = a {
                s.push_str(&String::from_utf8_lossy(b).replace('\r', ""));
            }
        }
        s
    }

    fn sent(actions: &[Action]) -> Vec<u8> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Send(b) => b.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_banner_names_the_world_and_ends_with_a_prompt() {
        let mut d = Dialogue::new(1024);
        let start = String::from_utf8_lossy(&d.start("Vale")).to_string();
        assert!(start.contains("Welcome to Tessera, world 'Vale'."));
        assert!(start.contains("create <name>"));
        assert!(start
            .trim_end_matches(['\u{fffd}', '\u{f9}'])
            .ends_with("> "));
    }

    #[test]
    fn a_password_is_asked_with_echo_off_and_echo_comes_back() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        let a = d.feed(b"connect Ann\r\n");
        let bytes = sent(&a);
        assert!(bytes.windows(3).any(|w| w == [IAC, WILL, ECHO]));
        assert!(text(&a).contains("Password: "));
        // The client agrees (IAC DO ECHO), then types the password.
        d.feed(&[IAC, 253, ECHO]);
        let a = d.feed(b"secret\r\n");
        assert!(sent(&a).windows(3).any(|w| w == [IAC, WONT, ECHO]));
        assert_eq!(
            a.last(),
            Some(&Action::LogIn {
                create: false,
                name: "Ann".into(),
                password: "secret".into()
            })
        );
    }

    #[test]
    fn lines_typed_during_a_login_run_after_it() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        let a = d.feed(b"create Ann secret\r\nlook\r\nnorth\r\n");
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(matches!(a[0], Action::LogIn { create: true, .. }));
        let a = d.entered("Welcome");
        assert!(text(&a).starts_with("Welcome\n> "));
        assert_eq!(
            a[1..],
            [
                Action::Command("look".into()),
                Action::Command("north".into())
            ]
        );
        assert!(d.is_playing());
    }

    #[test]
    fn a_refused_login_returns_to_the_login_prompt_with_the_reason() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        d.feed(b"connect Ann wrong\r\n");
        let a = d.refused("Wrong name or password.");
        assert!(text(&a).contains("Wrong name or password.\n> "));
        let a = d.feed(b"look\r\n");
        assert!(text(&a).contains("Unknown command"), "{a:?}");
    }

    #[test]
    fn bad_names_too_long_lines_and_quit_before_login() {
        let mut d = Dialogue::new(16);
        d.start("Vale");
        let a = d.feed(b"create x!\r\n");
        assert!(!a.iter().any(|a| matches!(a, Action::LogIn { .. })));
        let a = d.feed(&[b'a'; 40]);
        let a2 = d.feed(b"\r\n");
        assert!(
            text(&[a, a2].concat()).contains("too long (40 bytes; the limit is 16)"),
            "too long"
        );
        let a = d.feed(b"quit\r\nlook\r\n");
        assert_eq!(a.last(), Some(&Action::Close));
        assert!(text(&a).contains("Goodbye."));
    }

    #[test]
    fn in_the_world_every_line_is_a_command_and_notices_wrap() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        d.feed(b"connect Ann secret\r\n");
        d.entered("hi");
        // NAWS: IAC SB NAWS 0 40 0 24 IAC SE
        d.feed(&[IAC, 250, 31, 0, 40, 0, 24, IAC, 240]);
        let a = d.feed(b"say hello\r\n");
        assert_eq!(a, [Action::Command("say hello".into())]);
        let long = "word ".repeat(30);
        let n = String::from_utf8_lossy(&d.notify(&long)).to_string();
        assert!(n.lines().all(|l| l.chars().count() < 40), "{n}");
    }
}
