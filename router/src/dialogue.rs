//! A telnet player's conversation, as a pure state machine: it takes the
//! bytes the client sends, runs them through the telnet codec and the
//! pre-login parser, and answers with the bytes to send back and the few
//! things only the async side can do (log in, run a command in the world,
//! close). The router's telnet gateway and `tessera telnet-gateway` both
//! drive it, so a player reads the same screen through either.

use crate::command::{self, PreLogin, PRELOGIN_HELP};
use crate::telnet::{encode_text, TelnetCodec, TelnetEvent};
use std::collections::{BTreeSet, VecDeque};

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
    /// Start (`true`) or stop MCCP2 compression of everything written from
    /// here on ([`crate::telnet::Compressor`]).
    Compress(bool),
    /// Send the MSSP table ([`Dialogue::mssp`]): as a subnegotiation, or as
    /// the plain-text reply to `MSSP-REQUEST` (`text`).
    Mssp { text: bool },
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
            Action::Compress(on) => f.debug_tuple("Compress").field(on).finish(),
            Action::Mssp { text } => f.debug_struct("Mssp").field("text", text).finish(),
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

/// What a client said it can show: from the terminal type cycle (client
/// name, terminal type, `MTTS <bits>`), and the player's `color on|off`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCaps {
    /// The client's name (first TTYPE answer), e.g. `MUDLET`, `TINTIN++`.
    pub client: Option<String>,
    /// Terminal types reported after the name, e.g. `XTERM-256COLOR`.
    pub terminals: Vec<String>,
    /// The MTTS bits (1 ANSI, 4 UTF-8, 8 256 colours, 256 true colour).
    pub mtts: u32,
    /// The player's choice (`color on|off`), over what the client said.
    pub chosen: Option<bool>,
}

/// How much colour a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    None,
    Ansi16,
    Ansi256,
}

/// MTTS bit: the client shows ANSI colour.
const MTTS_ANSI: u32 = 1;
/// MTTS bit: the client shows 256 colours.
const MTTS_256: u32 = 8;

impl ClientCaps {
    /// Takes in one terminal type answer.
    fn learn(&mut self, answer: &str) {
        if let Some(bits) = answer.strip_prefix("MTTS ") {
            self.mtts = bits.trim().parse().unwrap_or(0);
        } else if self.client.is_none() {
            self.client = Some(answer.to_owned());
        } else {
            self.terminals.push(answer.to_owned());
        }
    }

    /// The colour this client gets: never any unless it said it shows it
    /// (MTTS, or a colour terminal type; a bare client name is not enough),
    /// or the player turned it on.
    pub fn colour(&self) -> Colour {
        let names = || self.client.iter().chain(self.terminals.iter());
        let says_256 =
            self.mtts & MTTS_256 != 0 || names().any(|t| t.to_ascii_uppercase().contains("256"));
        let says_ansi = self.mtts & MTTS_ANSI != 0
            || names().any(|t| {
                let t = t.to_ascii_uppercase();
                t.contains("ANSI") || t.contains("XTERM") || t.contains("COLOR")
            });
        match (self.chosen, says_256, says_ansi) {
            (Some(false), _, _) => Colour::None,
            (_, true, _) => Colour::Ansi256,
            (_, _, true) | (Some(true), _, _) => Colour::Ansi16,
            _ => Colour::None,
        }
    }
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
    caps: ClientCaps,
    /// GMCP modules the client enabled (`Char`, `Room`, `Comm.Channel`, ...),
    /// lower case.
    gmcp_modules: BTreeSet<String>,
    /// The client's `Core.Hello`: its name and version.
    gmcp_hello: Option<(String, String)>,
}

impl Dialogue {
    pub fn new(max_line: usize) -> Dialogue {
        Dialogue {
            codec: TelnetCodec::new(max_line),
            max_line,
            width: 80,
            stage: Stage::Login,
            waiting: VecDeque::new(),
            caps: ClientCaps::default(),
            gmcp_modules: BTreeSet::new(),
            gmcp_hello: None,
        }
    }

    /// What the client said it can show.
    pub fn caps(&self) -> &ClientCaps {
        &self.caps
    }

    /// The colour this connection gets.
    pub fn colour(&self) -> Colour {
        self.caps.colour()
    }

    /// The client's `Core.Hello` (name, version), if it sent one.
    pub fn gmcp_hello(&self) -> Option<&(String, String)> {
        self.gmcp_hello.as_ref()
    }

    /// Whether the client gets GMCP `package` (`Room.Info`): GMCP is on and the
    /// client enabled the package's module (or a module above it: `Comm`
    /// covers `Comm.Channel.Text`); `Core` always.
    pub fn gmcp_wants(&self, package: &str) -> bool {
        if !self.codec.gmcp_enabled() {
            return false;
        }
        crate::gmcp::module_wants(&self.gmcp_modules, package)
    }

    /// The GMCP modules the client enabled (lower case), for a telnet
    /// gateway to pass on to the router (`ClientMsg::GmcpModules`).
    pub fn gmcp_modules(&self) -> Vec<String> {
        self.gmcp_modules.iter().cloned().collect()
    }

    /// GMCP `package` with `json` for the client, if it wants it
    /// ([`Dialogue::gmcp_wants`]).
    pub fn gmcp(&self, package: &str, json: &str) -> Option<Vec<u8>> {
        if !self.gmcp_wants(package) {
            return None;
        }
        self.codec.gmcp(package, json)
    }

    /// The MSSP table for `info`: a subnegotiation, or (`text`) the plain-text
    /// reply to `MSSP-REQUEST` (`MSSP-REPLY-START`, `KEY<TAB>VALUE` lines,
    /// `MSSP-REPLY-END`).
    pub fn mssp(&self, info: &MsspInfo, text: bool) -> Vec<u8> {
        let vars = info.vars();
        if text {
            let mut s = String::from("MSSP-REPLY-START\n");
            for (k, vs) in &vars {
                for v in vs {
                    s.push_str(&format!("{k}\t{v}\n"));
                }
            }
            s.push_str("MSSP-REPLY-END\n");
            encode_text(&s)
        } else {
            let vars: Vec<(&str, Vec<String>)> =
                vars.iter().map(|(k, v)| (*k, v.clone())).collect();
            TelnetCodec::mssp(&vars)
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
        let mut bytes = encode_text(&crate::style::render(&s, self.colour()));
        bytes.extend_from_slice(self.codec.prompt_end());
        bytes
    }

    /// Something that happened while the player was at the prompt.
    pub fn notify(&self, text: &str) -> Vec<u8> {
        let text = crate::text::wrap(text, self.width - 1);
        let text = crate::style::render(&text, self.colour());
        let mut bytes = encode_text(&format!("\n{text}\n{PROMPT}"));
        bytes.extend_from_slice(self.codec.prompt_end());
        bytes
    }

    /// The last line of a connection the server ends: `<reason>. Goodbye.`
    pub fn goodbye(&mut self, reason: &str) -> Vec<u8> {
        self.stage = Stage::Closing;
        encode_text(&format!("\n{}. Goodbye.\n", crate::style::strip(reason)))
    }

    /// The last line of a connection the player ends (`quit`).
    pub fn last_words(&mut self, text: &str) -> Vec<u8> {
        self.stage = Stage::Closing;
        encode_text(&format!("{}\n", crate::style::render(text, self.colour())))
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
        if let Some(on) = feed.compress {
            out.push(Action::Compress(on));
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
            TelnetEvent::TerminalType(answer) => self.caps.learn(&answer),
            TelnetEvent::Interrupt => {}
            TelnetEvent::MsspRequested => out.push(Action::Mssp { text: false }),
            TelnetEvent::Gmcp { package, data } => self.on_gmcp(&package, &data, out),
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

    /// A GMCP message from the client. Malformed JSON is ignored (logged at
    /// debug level), never a reason to drop the connection.
    fn on_gmcp(&mut self, package: &str, data: &str, out: &mut Vec<Action>) {
        let json = || -> Option<serde_json::Value> {
            match serde_json::from_str(data) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(package, error = %e, "GMCP message with bad JSON ignored");
                    None
                }
            }
        };
        match package.to_ascii_lowercase().as_str() {
            "core.hello" => {
                if let Some(v) = json() {
                    let field = |k: &str| {
                        v.get(k)
                            .and_then(|s| s.as_str())
                            .unwrap_or("")
                            .chars()
                            .take(64)
                            .collect::<String>()
                    };
                    self.gmcp_hello = Some((field("client"), field("version")));
                }
            }
            op @ ("core.supports.set" | "core.supports.add" | "core.supports.remove") => {
                let Some(serde_json::Value::Array(items)) = json() else {
                    return;
                };
                if op == "core.supports.set" {
                    self.gmcp_modules.clear();
                }
                // Entries are "Module.Name <version>".
                let entries = items.iter().filter_map(|i| i.as_str());
                for module in entries
                    .take(crate::gmcp::MAX_MODULES)
                    .filter_map(crate::gmcp::module_name)
                {
                    if op == "core.supports.remove" {
                        self.gmcp_modules.remove(&module);
                    } else if self.gmcp_modules.len() < crate::gmcp::MAX_MODULES {
                        self.gmcp_modules.insert(module);
                    }
                }
            }
            "core.ping" => {
                if let Some(bytes) = self.codec.gmcp("Core.Ping", "") {
                    out.push(Action::Send(bytes));
                }
            }
            _ => {}
        }
    }

    /// `color on|off` (or `colour`), in any stage: what the player wants,
    /// over what the client said. Returns the answer, or `None` when the line
    /// is not that command.
    fn colour_command(&mut self, line: &str) -> Option<String> {
        let mut words = line.split_whitespace();
        let cmd = words.next()?.to_ascii_lowercase();
        if cmd != "color" && cmd != "colour" {
            return None;
        }
        let answer = match words.next().map(str::to_ascii_lowercase).as_deref() {
            Some("on") => {
                self.caps.chosen = Some(true);
                "Colour is on."
            }
            Some("off") => {
                self.caps.chosen = Some(false);
                "Colour is off."
            }
            _ => match self.colour() {
                Colour::None => "Colour is off. Type 'color on' to turn it on.",
                Colour::Ansi16 => "Colour is on (16 colours). Type 'color off' to turn it off.",
                Colour::Ansi256 => "Colour is on (256 colours). Type 'color off' to turn it off.",
            },
        };
        Some(answer.to_owned())
    }

    fn on_line(&mut self, line: String, out: &mut Vec<Action>) {
        if matches!(self.stage, Stage::Login | Stage::Playing) {
            if let Some(answer) = self.colour_command(&line) {
                out.push(Action::Send(self.answer(&answer)));
                return;
            }
            if self.stage == Stage::Login && line.trim() == "MSSP-REQUEST" {
                out.push(Action::Mssp { text: true });
                return;
            }
        }
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

/// What MSSP tells a crawler about the world.
#[derive(Clone, Debug)]
pub struct MsspInfo {
    /// The world's name.
    pub name: String,
    /// Players online now.
    pub players: usize,
    /// When the server started, Unix seconds.
    pub started_unix: u64,
    /// The telnet port players connect to.
    pub port: u16,
    /// The TLS telnet port, if there is one.
    pub tls_port: Option<u16>,
}

impl MsspInfo {
    /// The MSSP variables, in the order they are sent.
    pub fn vars(&self) -> Vec<(&'static str, Vec<String>)> {
        let one = |v: String| vec![v];
        let yes_no = |b: bool| one(if b { "1" } else { "0" }.to_string());
        let mut vars = vec![
            ("NAME", one(self.name.clone())),
            ("PLAYERS", one(self.players.to_string())),
            ("UPTIME", one(self.started_unix.to_string())),
            (
                "CODEBASE",
                one(format!("Tessera {}", env!("CARGO_PKG_VERSION"))),
            ),
            ("PORT", one(self.port.to_string())),
            ("CRAWL DELAY", one("-1".into())),
            ("FAMILY", one("Custom".into())),
            ("GENRE", one("None".into())),
            ("ANSI", yes_no(true)),
            ("XTERM 256 COLORS", yes_no(true)),
            ("UTF-8", yes_no(true)),
            ("GMCP", yes_no(true)),
            ("MSSP", yes_no(true)),
            ("MCCP", yes_no(true)),
            ("MSDP", yes_no(false)),
            ("MXP", yes_no(false)),
            ("MCP", yes_no(false)),
            ("PUEBLO", yes_no(false)),
            ("VT100", yes_no(false)),
        ];
        if let Some(tls) = self.tls_port {
            vars.push(("SSL", one(tls.to_string())));
        }
        vars
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

    const SB: u8 = 250;
    const SE: u8 = 240;
    const DO: u8 = 253;
    const TTYPE: u8 = 24;
    const GMCP: u8 = 201;

    fn ttype_is(name: &str) -> Vec<u8> {
        let mut v = vec![IAC, SB, TTYPE, 0];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&[IAC, SE]);
        v
    }

    fn gmcp_in(text: &str) -> Vec<u8> {
        let mut v = vec![IAC, SB, GMCP];
        v.extend_from_slice(text.as_bytes());
        v.extend_from_slice(&[IAC, SE]);
        v
    }

    /// Colour only for a client that said it shows it (never for one that
    /// said nothing), 256 colours when offered, and the player's `color
    /// on|off` over either, before login as well as in the world.
    #[test]
    fn colour_follows_what_the_client_said_and_the_player_chose() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        assert_eq!(d.colour(), Colour::None);
        d.feed(&[IAC, 251, TTYPE]);
        d.feed(&ttype_is("MUDLET"));
        assert_eq!(d.colour(), Colour::None, "a client name alone says nothing");
        d.feed(&ttype_is("ANSI"));
        assert_eq!(d.colour(), Colour::Ansi16);
        let ann = crate::style::paint(crate::style::Style::Player, "Ann");
        let shown = String::from_utf8_lossy(&d.answer(&format!("{ann} waves."))).into_owned();
        assert!(
            shown.starts_with("\x1b[1;36mAnn\x1b[0m waves."),
            "{shown:?}"
        );
        d.feed(&ttype_is("MTTS 9"));
        assert_eq!(d.colour(), Colour::Ansi256);
        assert_eq!(d.caps().client.as_deref(), Some("MUDLET"));
        let a = d.feed(b"color off\r\n");
        assert!(text(&a).contains("Colour is off."), "{a:?}");
        assert_eq!(d.colour(), Colour::None);

        let mut bare = Dialogue::new(1024);
        bare.start("Vale");
        let shown = bare.answer(&format!("{ann} waves.")).clone();
        assert!(
            !shown.contains(&0x1b),
            "no escape code for a client that said nothing"
        );
        assert!(String::from_utf8_lossy(&shown).starts_with("Ann waves."));
        let a = bare.feed(b"colour\r\n");
        assert!(text(&a).contains("Type 'color on'"), "{a:?}");
        bare.feed(b"connect Ann secret\r\n");
        bare.entered("hi");
        let a = bare.feed(b"COLOR on\r\n");
        assert!(text(&a).contains("Colour is on."), "{a:?}");
        assert!(!a.iter().any(|a| matches!(a, Action::Command(_))));
        assert_eq!(bare.colour(), Colour::Ansi16);
    }

    /// GMCP packages go only to a client that enabled their module; Core
    /// always; Core.Ping is answered; malformed JSON changes nothing and
    /// keeps the connection.
    #[test]
    fn gmcp_packages_follow_core_supports() {
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        assert!(!d.gmcp_wants("Core.Ping"), "GMCP is not on yet");
        d.feed(&[IAC, DO, GMCP]);
        assert!(d.gmcp_wants("Core.Goodbye"));
        assert!(!d.gmcp_wants("Room.Info"));
        d.feed(&gmcp_in(
            r#"Core.Hello {"client":"Mudlet","version":"4.17.2"}"#,
        ));
        assert_eq!(
            d.gmcp_hello(),
            Some(&("Mudlet".to_string(), "4.17.2".to_string()))
        );
        d.feed(&gmcp_in(r#"Core.Supports.Set ["Char 1", "Room 1"]"#));
        assert!(d.gmcp_wants("Room.Info") && d.gmcp_wants("Char.Status"));
        assert!(!d.gmcp_wants("Comm.Channel.Text") && !d.gmcp_wants("Roomy.Info"));
        d.feed(&gmcp_in(r#"Core.Supports.Add ["Comm.Channel 1"]"#));
        assert!(d.gmcp_wants("Comm.Channel.Text") && !d.gmcp_wants("Comm.Other"));
        d.feed(&gmcp_in(r#"Core.Supports.Remove ["Room"]"#));
        assert!(!d.gmcp_wants("Room.Info"));
        assert!(d.gmcp("Room.Info", "{}").is_none());
        assert!(d.gmcp("Char.Name", "{}").is_some());
        // Bad JSON: ignored, nothing changes, nothing is sent.
        for bad in [
            "Core.Supports.Set [\"Char 1\"",
            "Core.Supports.Set {\"a\":1}",
            "Core.Hello nonsense",
        ] {
            assert_eq!(d.feed(&gmcp_in(bad)), vec![], "{bad}");
        }
        assert!(d.gmcp_wants("Char.Status"));
        let a = d.feed(&gmcp_in("Core.Ping"));
        let mut want = vec![IAC, SB, GMCP];
        want.extend_from_slice(b"Core.Ping");
        want.extend_from_slice(&[IAC, SE]);
        assert_eq!(a, vec![Action::Send(want)]);
    }

    /// MSSP: the table on IAC DO MSSP, and the plain-text `MSSP-REQUEST`
    /// before login; PLAYERS and UPTIME are integers.
    #[test]
    fn mssp_as_subnegotiation_and_as_text() {
        let info = MsspInfo {
            name: "Vale".into(),
            players: 3,
            started_unix: 1_796_000_000,
            port: 4000,
            tls_port: Some(4443),
        };
        let mut d = Dialogue::new(1024);
        d.start("Vale");
        // The greeting offered MSSP: the client's DO is a confirmation.
        assert_eq!(d.feed(&[IAC, DO, 70]), vec![Action::Mssp { text: false }]);
        let table = d.mssp(&info, false);
        assert!(table.starts_with(&[IAC, SB, 70, 1]));
        let needle = |n: &[u8]| table.windows(n.len()).any(|w| w == n);
        assert!(needle(b"\x01PLAYERS\x023"));
        assert!(needle(b"\x01UPTIME\x021796000000"));
        assert!(needle(b"\x01SSL\x024443"));
        assert_eq!(
            d.feed(b"MSSP-REQUEST\r\n"),
            vec![Action::Mssp { text: true }]
        );
        let text = String::from_utf8(d.mssp(&info, true)).unwrap();
        assert!(
            text.starts_with("MSSP-REPLY-START\r\nNAME\tVale\r\nPLAYERS\t3\r\n"),
            "{text}"
        );
        assert!(text.contains("UPTIME\t1796000000\r\n"));
        assert!(text.ends_with("MSSP-REPLY-END\r\n"));
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
