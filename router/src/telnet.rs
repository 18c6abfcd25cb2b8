//! The telnet protocol engine (RFC 854) for text players.
//!
//! [`TelnetCodec`] is a pure state machine in the style of `quinn-proto`: the
//! async gateway hands it the bytes read from a socket ([`TelnetCodec::feed`])
//! and writes back what it returns; nothing here touches a socket, a clock or
//! a task. It does three jobs:
//!
//! * **Option negotiation** with the "Q method" of RFC 1143, so that neither
//!   side can start a negotiation loop: a request is answered only when it
//!   changes an option's state, and a confirmation of our own request is never
//!   answered. We offer ECHO while a password is typed, agree to SGA when the
//!   client asks (we do not offer it: see [`TelnetCodec::greeting`]), offer
//!   the MUD client options GMCP, MSSP, MCCP2 and EOR, and ask for and accept
//!   the client's NAWS (RFC 1073) and TTYPE (RFC 1091, cycled for the MTTS
//!   bits); everything else is refused, once. DO TIMING-MARK (RFC 860) is
//!   answered every time.
//! * **Subnegotiation**: window size, terminal type and GMCP messages become
//!   events; the buffer is capped at [`MAX_SUBNEGOTIATION_BYTES`]
//!   ([`MAX_GMCP_BYTES`] for GMCP) and longer ones are dropped whole.
//! * **What goes out**: GMCP and MSSP subnegotiations with 0xFF escaped, the
//!   prompt marker (EOR, GA or nothing), and when MCCP2 starts and stops;
//!   [`Compressor`] compresses what the connection writes once it has.
//! * **Line assembly**: bytes become [`TelnetEvent::Line`]s at CR LF, CR NUL,
//!   LF or a bare CR, with backspace editing, control bytes removed and UTF-8
//!   decoded lossily. A line longer than the limit is reported once as
//!   [`TelnetEvent::LineTooLong`] and never buffered beyond the limit.
//!
//! Input may be split anywhere (inside an IAC sequence, a UTF-8 character or a
//! CR LF pair): any chunking of the same bytes yields the same events and the
//! same reply bytes.

use std::fmt;

/// Interpret As Command: starts every telnet command.
pub const IAC: u8 = 255;
/// "Please stop performing the option" / "I confirm you will not".
pub const DONT: u8 = 254;
/// "Please perform the option" / "I confirm you will".
pub const DO: u8 = 253;
/// "I refuse to perform (or will stop performing) the option".
pub const WONT: u8 = 252;
/// "I want to perform (or confirm I now perform) the option".
pub const WILL: u8 = 251;
/// Start of subnegotiation.
pub const SB: u8 = 250;
/// Go ahead.
pub const GA: u8 = 249;
/// Erase line.
pub const EL: u8 = 248;
/// Erase character.
pub const EC: u8 = 247;
/// Are you there.
pub const AYT: u8 = 246;
/// Abort output.
pub const AO: u8 = 245;
/// Interrupt process.
pub const IP: u8 = 244;
/// Break.
pub const BRK: u8 = 243;
/// Data mark (the data stream part of a Synch).
pub const DM: u8 = 242;
/// No operation.
pub const NOP: u8 = 241;
/// End of subnegotiation.
pub const SE: u8 = 240;

/// Option: echo (RFC 857).
pub const ECHO: u8 = 1;
/// Option: timing mark (RFC 860). Not an option with a state but a marker:
/// every DO TM is answered with WILL TM ("everything before it is
/// processed"). BSD `telnet` sends IAC IP IAC DO TM for ^C and discards our
/// output until the answer arrives.
pub const TIMING_MARK: u8 = 6;
/// Option: suppress go-ahead (RFC 858).
pub const SGA: u8 = 3;
/// Option: terminal type (RFC 1091).
pub const TTYPE: u8 = 24;
/// Option: negotiate about window size (RFC 1073).
pub const NAWS: u8 = 31;
/// Option: linemode (RFC 1184); refused.
pub const LINEMODE: u8 = 34;
/// Option: end of record (RFC 885). Once the client agrees, every prompt ends
/// with IAC EOR, which Mudlet and TinTin++ take as "this line is a prompt".
pub const EOR: u8 = 25;
/// Command: end of record, the prompt marker once EOR is agreed.
pub const EOR_MARK: u8 = 239;
/// Option: Mud Server Status Protocol (MSSP): crawlers of MUD listings ask for
/// the world's name, player count and uptime.
pub const MSSP: u8 = 70;
/// MSSP subnegotiation: a variable name follows.
pub const MSSP_VAR: u8 = 1;
/// MSSP subnegotiation: a value follows.
pub const MSSP_VAL: u8 = 2;
/// Option: Mud Client Compression Protocol v2: everything the server sends
/// after `IAC SB MCCP2 IAC SE` is one zlib stream.
pub const MCCP2: u8 = 86;
/// Option: Generic Mud Communication Protocol (GMCP): `Package.Name <json>`
/// messages in subnegotiations, both ways.
pub const GMCP: u8 = 201;

/// TTYPE subnegotiation: "my terminal type is ...".
pub const TTYPE_IS: u8 = 0;
/// TTYPE subnegotiation: "send me your terminal type".
pub const TTYPE_SEND: u8 = 1;

/// Longest subnegotiation payload kept (but GMCP's); longer ones are discarded.
pub const MAX_SUBNEGOTIATION_BYTES: usize = 64;
/// Longest GMCP message kept; longer ones are discarded whole.
pub const MAX_GMCP_BYTES: usize = 16 * 1024;
/// How many times the terminal type is asked for: MUD clients answer with
/// their name, then the terminal type, then `MTTS <bits>`.
const TTYPE_ROUNDS: u8 = 3;

const NUL: u8 = 0x00;
const BS: u8 = 0x08;
const TAB: u8 = 0x09;
const LF: u8 = 0x0a;
const CR: u8 = 0x0d;
const DEL: u8 = 0x7f;

/// Something the client did that the session should act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelnetEvent {
    /// A complete input line: UTF-8 (invalid bytes became U+FFFD), without
    /// control characters or trailing whitespace. May be empty.
    Line(String),
    /// A line longer than the limit ended; its contents were discarded.
    /// `len` counts the text bytes the client sent for it.
    LineTooLong { len: usize },
    /// The client's window size (NAWS); 0 means "unknown".
    WindowSize { width: u16, height: u16 },
    /// The client's terminal type (TTYPE IS), e.g. `XTERM-256COLOR`; asked
    /// for up to three times, so a MUD client reports its name, its
    /// terminal type and then `MTTS <bits>` (one event each).
    TerminalType(String),
    /// A GMCP message from the client: the package (`Core.Hello`) and the
    /// JSON text after it (possibly empty; not checked here).
    Gmcp { package: String, data: String },
    /// The client asked for the MSSP table (IAC DO MSSP).
    MsspRequested,
    /// IAC IP. The partly typed line was discarded.
    Interrupt,
    /// IAC AYT: the session should print something to show it is alive.
    AreYouThere,
}

/// What one call to [`TelnetCodec::feed`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feed {
    /// Events, in the order of the input.
    pub events: Vec<TelnetEvent>,
    /// Negotiation bytes to send back to the client.
    pub reply: Vec<u8>,
    /// Compression (MCCP2) starts (`Some(true)`: after `reply`, which ends
    /// with `IAC SB MCCP2 IAC SE`) or stops (`Some(false)`: after `reply`).
    pub compress: Option<bool>,
}

/// Where the byte parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Ordinary data.
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option byte comes next.
    Negotiate(u8),
    /// After IAC SB: the option byte comes next.
    SbOption,
    /// Inside a subnegotiation.
    Sb,
    /// After IAC inside a subnegotiation.
    SbIac,
}

/// RFC 1143 state of one side of one option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Q {
    #[default]
    No,
    Yes,
    WantNo,
    WantYes,
}

#[derive(Clone, Copy, Debug, Default)]
struct OptionState {
    q: Q,
    /// RFC 1143 queue bit: after the pending answer, ask for the opposite.
    opposite: bool,
    /// We already refused a request in the current state; a repeated
    /// request is not answered again (defence against looping peers).
    refused: bool,
}

/// Which side of the connection performs the option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The server performs it (the client sends DO/DONT, we send WILL/WONT).
    Us,
    /// The client performs it (the client sends WILL/WONT, we send DO/DONT).
    Him,
}

impl Side {
    fn enable_verb(self) -> u8 {
        match self {
            Side::Us => WILL,
            Side::Him => DO,
        }
    }

    fn disable_verb(self) -> u8 {
        match self {
            Side::Us => WONT,
            Side::Him => DONT,
        }
    }
}

/// The telnet engine for one connection. See the module documentation.
pub struct TelnetCodec {
    max_line_bytes: usize,
    state: State,

    /// Text of the current line; never longer than `max_line_bytes`, and its
    /// capacity never grows past it either.
    line: Vec<u8>,
    /// Text bytes received for the current line, including discarded ones.
    line_seen: usize,
    /// The current line went over the limit; its text is being discarded.
    line_overflow: bool,
    /// The previous data byte was a CR (which already ended a line), so a
    /// following LF or NUL belongs to it.
    after_cr: bool,

    sb_option: u8,
    sb_buf: Vec<u8>,
    sb_overflow: bool,

    us: [OptionState; 256],
    him: [OptionState; 256],
    /// The session asked for the client's local echo to be off.
    want_echo: bool,
    /// Whether what we send is compressed (MCCP2), as the last feed said.
    compressing: bool,
    /// Terminal type answers so far, and the last one.
    ttype_rounds: u8,
    ttype_last: String,
}

impl fmt::Debug for TelnetCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelnetCodec")
            .field("max_line_bytes", &self.max_line_bytes)
            .field("state", &self.state)
            .field("line_len", &self.line.len())
            .field("line_overflow", &self.line_overflow)
            .field("want_echo", &self.want_echo)
            .finish_non_exhaustive()
    }
}

impl TelnetCodec {
    /// A codec for a new connection; input lines longer than
    /// `max_line_bytes` bytes are rejected with [`TelnetEvent::LineTooLong`].
    pub fn new(max_line_bytes: usize) -> TelnetCodec {
        TelnetCodec {
            max_line_bytes,
            state: State::Data,
            line: Vec::new(),
            line_seen: 0,
            line_overflow: false,
            after_cr: false,
            sb_option: 0,
            sb_buf: Vec::new(),
            sb_overflow: false,
            us: [OptionState::default(); 256],
            him: [OptionState::default(); 256],
            want_echo: false,
            compressing: false,
            ttype_rounds: 0,
            ttype_last: String::new(),
        }
    }

    /// The bytes to send when the connection opens: IAC WILL GMCP, MSSP,
    /// MCCP2 and EOR, then IAC DO NAWS and TTYPE. The client's answers to them
    /// are confirmations and are not answered again (but for what they start:
    /// the terminal type question, MCCP2, the MSSP table). A second call
    /// returns nothing. A client that knows none of these refuses each once.
    ///
    /// SGA is accepted when the client asks but not offered: BSD `telnet`
    /// switches to character-at-a-time mode (echoing `^M`) when a server
    /// offers it, while MUD clients work either way. Without SGA, prompts
    /// end with IAC GA ([`TelnetCodec::prompt_end`]), which MUD clients use to
    /// spot a prompt.
    pub fn greeting(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for option in [GMCP, MSSP, MCCP2, EOR] {
            self.request(Side::Us, option, true, &mut out);
        }
        self.request(Side::Him, NAWS, true, &mut out);
        self.request(Side::Him, TTYPE, true, &mut out);
        out
    }

    /// What to send after a prompt: IAC EOR once the client agreed to EOR;
    /// else IAC GA unless go-aheads are suppressed (SGA agreed), per RFC 854.
    pub fn prompt_end(&self) -> &'static [u8] {
        if self.us[usize::from(EOR)].q == Q::Yes {
            &[IAC, EOR_MARK]
        } else if self.us[usize::from(SGA)].q == Q::Yes {
            &[]
        } else {
            &[IAC, GA]
        }
    }

    /// Whether the client agreed to GMCP.
    pub fn gmcp_enabled(&self) -> bool {
        self.us[usize::from(GMCP)].q == Q::Yes
    }

    /// A GMCP message for the client (`IAC SB GMCP <package> <json> IAC SE`,
    /// 0xFF escaped), or nothing if the client has not agreed to GMCP. `json`
    /// may be empty (a message without data).
    pub fn gmcp(&self, package: &str, json: &str) -> Option<Vec<u8>> {
        if !self.gmcp_enabled() {
            return None;
        }
        let mut out = Vec::with_capacity(package.len() + json.len() + 6);
        out.extend_from_slice(&[IAC, SB, GMCP]);
        push_escaped(&mut out, package.as_bytes());
        if !json.is_empty() {
            out.push(b' ');
            push_escaped(&mut out, json.as_bytes());
        }
        out.extend_from_slice(&[IAC, SE]);
        Some(out)
    }

    /// The MSSP table as a subnegotiation (`IAC SB MSSP (VAR name (VAL
    /// value)+)+ IAC SE`), for a client that asked (IAC DO MSSP). Bytes that
    /// would break the framing (NUL, VAR, VAL, IAC) are left out of names and
    /// values.
    pub fn mssp(vars: &[(&str, Vec<String>)]) -> Vec<u8> {
        let clean = |s: &str, out: &mut Vec<u8>| {
            out.extend(
                s.bytes()
                    .filter(|b| !matches!(*b, NUL | MSSP_VAR | MSSP_VAL | IAC)),
            )
        };
        let mut out = vec![IAC, SB, MSSP];
        for (name, values) in vars {
            out.push(MSSP_VAR);
            clean(name, &mut out);
            for v in values {
                out.push(MSSP_VAL);
                clean(v, &mut out);
            }
        }
        out.extend_from_slice(&[IAC, SE]);
        out
    }

    /// Ask the client to stop echoing locally (IAC WILL ECHO: "the server
    /// will echo", which it then does not): for password prompts. Returns
    /// nothing if that is already the state or already being negotiated.
    pub fn echo_off(&mut self) -> Vec<u8> {
        self.want_echo = true;
        let mut out = Vec::new();
        self.request(Side::Us, ECHO, true, &mut out);
        out
    }

    /// Give local echo back to the client (IAC WONT ECHO). Returns nothing if
    /// that is already the state or already being negotiated.
    pub fn echo_on(&mut self) -> Vec<u8> {
        self.want_echo = false;
        let mut out = Vec::new();
        self.request(Side::Us, ECHO, false, &mut out);
        out
    }

    /// Process bytes received from the client.
    pub fn feed(&mut self, input: &[u8]) -> Feed {
        let mut out = Feed::default();
        for &b in input {
            self.step(b, &mut out);
        }
        // MCCP2 starts after everything this feed answers (the last bytes
        // sent uncompressed are IAC SB MCCP2 IAC SE), or stops after it.
        let compress = self.us[usize::from(MCCP2)].q == Q::Yes;
        if compress != self.compressing {
            self.compressing = compress;
            if compress {
                out.reply.extend_from_slice(&[IAC, SB, MCCP2, IAC, SE]);
            }
            out.compress = Some(compress);
        }
        out
    }

    fn step(&mut self, b: u8, out: &mut Feed) {
        match self.state {
            State::Data => {
                if b == IAC {
                    self.state = State::Iac;
                } else {
                    self.data_byte(b, &mut out.events);
                }
            }
            State::Iac => {
                self.state = State::Data;
                self.command(b, out);
            }
            State::Negotiate(verb) => {
                self.state = State::Data;
                self.negotiate(verb, b, &mut out.reply);
                // Every DO MSSP (a crawler may ask again) is answered with the table.
                if b == MSSP && verb == DO && self.us[usize::from(MSSP)].q == Q::Yes {
                    out.events.push(TelnetEvent::MsspRequested);
                }
            }
            State::SbOption => {
                self.sb_option = b;
                self.sb_buf.clear();
                self.sb_overflow = false;
                self.state = State::Sb;
            }
            State::Sb => {
                if b == IAC {
                    self.state = State::SbIac;
                } else {
                    self.sb_push(b);
                }
            }
            State::SbIac => match b {
                SE => {
                    self.state = State::Data;
                    self.finish_subnegotiation(out);
                }
                IAC => {
                    self.state = State::Sb;
                    self.sb_push(IAC);
                }
                other => {
                    // A command inside a subnegotiation is malformed: the
                    // client most likely forgot IAC SE. Drop the
                    // subnegotiation and obey the command.
                    self.state = State::Data;
                    self.command(other, out);
                }
            },
        }
    }

    /// The byte after IAC, outside a subnegotiation.
    fn command(&mut self, b: u8, out: &mut Feed) {
        match b {
            IAC => self.data_byte(IAC, &mut out.events),
            WILL | WONT | DO | DONT => self.state = State::Negotiate(b),
            SB => self.state = State::SbOption,
            EC => self.erase_char(),
            EL => self.discard_line(),
            AYT => out.events.push(TelnetEvent::AreYouThere),
            IP => {
                self.discard_line();
                out.events.push(TelnetEvent::Interrupt);
            }
            // NOP, GA, DM, BRK, AO, a stray SE and unassigned codes.
            _ => {}
        }
    }

    // ---- option negotiation (RFC 1143) ----

    fn option_mut(&mut self, side: Side, option: u8) -> &mut OptionState {
        match side {
            Side::Us => &mut self.us[usize::from(option)],
            Side::Him => &mut self.him[usize::from(option)],
        }
    }

    /// Whether we agree to `option` being enabled on `side` when the client
    /// asks for it.
    fn agrees(&self, side: Side, option: u8) -> bool {
        match side {
            Side::Us => {
                matches!(option, SGA | EOR | GMCP | MSSP | MCCP2)
                    || (option == ECHO && self.want_echo)
            }
            Side::Him => matches!(option, NAWS | TTYPE | SGA),
        }
    }

    fn negotiate(&mut self, verb: u8, option: u8, reply: &mut Vec<u8>) {
        if option == TIMING_MARK {
            // A one-shot marker, not a state: we never send DO TM, so the
            // client's WILL/WONT TM can only be noise.
            if verb == DO {
                reply.extend_from_slice(&[IAC, WILL, TIMING_MARK]);
            }
            return;
        }
        let (side, positive) = match verb {
            WILL => (Side::Him, true),
            WONT => (Side::Him, false),
            DO => (Side::Us, true),
            _ => (Side::Us, false),
        };
        let agree = self.agrees(side, option);
        let st = self.option_mut(side, option);
        let before = st.q;
        let send = if positive {
            match (st.q, st.opposite) {
                (Q::No, _) if agree => {
                    st.q = Q::Yes;
                    Some(side.enable_verb())
                }
                (Q::No, _) if st.refused => None,
                (Q::No, _) => {
                    st.refused = true;
                    Some(side.disable_verb())
                }
                (Q::Yes, _) => None,
                // Our "disable" was answered with "enable": a broken peer.
                (Q::WantNo, false) => {
                    st.q = Q::No;
                    None
                }
                (Q::WantNo, true) => {
                    st.q = Q::Yes;
                    st.opposite = false;
                    None
                }
                (Q::WantYes, false) => {
                    st.q = Q::Yes;
                    None
                }
                (Q::WantYes, true) => {
                    st.q = Q::WantNo;
                    st.opposite = false;
                    Some(side.disable_verb())
                }
            }
        } else {
            match (st.q, st.opposite) {
                (Q::No, _) => None,
                (Q::Yes, _) => {
                    st.q = Q::No;
                    Some(side.disable_verb())
                }
                (Q::WantNo, false) | (Q::WantYes, _) => {
                    st.q = Q::No;
                    st.opposite = false;
                    None
                }
                (Q::WantNo, true) => {
                    st.q = Q::WantYes;
                    st.opposite = false;
                    Some(side.enable_verb())
                }
            }
        };
        let after = st.q;
        if after != before {
            st.refused = false;
        }
        if let Some(v) = send {
            reply.extend_from_slice(&[IAC, v, option]);
        }
        self.on_transition(side, option, before, after, reply);
    }

    /// Ask for `option` on `side` to be enabled or disabled.
    fn request(&mut self, side: Side, option: u8, enable: bool, out: &mut Vec<u8>) {
        let st = self.option_mut(side, option);
        let before = st.q;
        let send = match (enable, st.q, st.opposite) {
            (true, Q::No, _) => {
                st.q = Q::WantYes;
                Some(side.enable_verb())
            }
            (false, Q::Yes, _) => {
                st.q = Q::WantNo;
                Some(side.disable_verb())
            }
            // Negotiating the other way: queue (or unqueue) the change.
            (true, Q::WantNo, _) | (false, Q::WantYes, _) => {
                st.opposite = true;
                None
            }
            (true, Q::WantYes, _) | (false, Q::WantNo, _) => {
                st.opposite = false;
                None
            }
            // Already in the wanted state.
            (true, Q::Yes, _) | (false, Q::No, _) => None,
        };
        let after = st.q;
        if after != before {
            st.refused = false;
        }
        if let Some(v) = send {
            out.extend_from_slice(&[IAC, v, option]);
        }
        self.on_transition(side, option, before, after, out);
    }

    fn on_transition(&mut self, side: Side, option: u8, before: Q, after: Q, out: &mut Vec<u8>) {
        if side == Side::Him && option == TTYPE && before != Q::Yes && after == Q::Yes {
            self.ttype_rounds = 0;
            self.ttype_last.clear();
            out.extend_from_slice(&[IAC, SB, TTYPE, TTYPE_SEND, IAC, SE]);
        }
    }

    // ---- subnegotiation ----

    fn sb_push(&mut self, b: u8) {
        let limit = if self.sb_option == GMCP {
            MAX_GMCP_BYTES
        } else {
            MAX_SUBNEGOTIATION_BYTES
        };
        if self.sb_buf.len() < limit {
            if self.sb_buf.capacity() == 0 {
                self.sb_buf.reserve_exact(MAX_SUBNEGOTIATION_BYTES);
            }
            self.sb_buf.push(b);
        } else {
            self.sb_overflow = true;
        }
    }

    fn finish_subnegotiation(&mut self, out: &mut Feed) {
        if self.sb_overflow {
            self.sb_buf.clear();
            self.sb_buf.shrink_to(MAX_SUBNEGOTIATION_BYTES);
            return;
        }
        let events = &mut out.events;
        match (self.sb_option, self.sb_buf.as_slice()) {
            (NAWS, &[w1, w0, h1, h0]) => events.push(TelnetEvent::WindowSize {
                width: u16::from_be_bytes([w1, w0]),
                height: u16::from_be_bytes([h1, h0]),
            }),
            (TTYPE, [TTYPE_IS, name @ ..]) => {
                let name: String = String::from_utf8_lossy(name)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_SUBNEGOTIATION_BYTES)
                    .collect();
                // Ask again until the client repeats itself (its list ended)
                // or has answered TTYPE_ROUNDS times.
                self.ttype_rounds = self.ttype_rounds.saturating_add(1);
                if self.ttype_rounds < TTYPE_ROUNDS
                    && name != self.ttype_last
                    && self.him[usize::from(TTYPE)].q == Q::Yes
                {
                    out.reply
                        .extend_from_slice(&[IAC, SB, TTYPE, TTYPE_SEND, IAC, SE]);
                }
                if name != self.ttype_last {
                    self.ttype_last.clone_from(&name);
                    events.push(TelnetEvent::TerminalType(name));
                }
            }
            (GMCP, message) if self.us[usize::from(GMCP)].q == Q::Yes => {
                let text = String::from_utf8_lossy(message);
                let (package, data) = text.split_once(' ').unwrap_or((&text, ""));
                let valid = !package.is_empty()
                    && package
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
                if valid {
                    events.push(TelnetEvent::Gmcp {
                        package: package.to_owned(),
                        data: data.trim().to_owned(),
                    });
                }
            }
            _ => {}
        }
        self.sb_buf.clear();
        self.sb_buf.shrink_to(MAX_SUBNEGOTIATION_BYTES);
    }

    // ---- line assembly ----

    fn data_byte(&mut self, b: u8, events: &mut Vec<TelnetEvent>) {
        if std::mem::take(&mut self.after_cr) && (b == LF || b == NUL) {
            return;
        }
        match b {
            CR => {
                self.finish_line(events);
                self.after_cr = true;
            }
            LF => self.finish_line(events),
            BS | DEL => self.erase_char(),
            TAB => self.push_text(b' '),
            b if b < 0x20 => {}
            b => self.push_text(b),
        }
    }

    fn push_text(&mut self, b: u8) {
        self.line_seen = self.line_seen.saturating_add(1);
        if self.line_overflow {
            return;
        }
        if self.line.len() >= self.max_line_bytes {
            self.line_overflow = true;
            self.line.clear();
            return;
        }
        if self.line.len() == self.line.capacity() {
            // Grow geometrically, but never past the limit.
            let target = (self.line.capacity() * 2).max(64).min(self.max_line_bytes);
            self.line.reserve_exact(target - self.line.len());
        }
        self.line.push(b);
    }

    /// Remove the last character (all bytes of a UTF-8 sequence, or one
    /// invalid byte) of the current line.
    fn erase_char(&mut self) {
        if self.line_overflow {
            return;
        }
        let len = self.line.len();
        let char_len = (1..=len.min(4))
            .find(|&k| {
                std::str::from_utf8(&self.line[len - k..]).is_ok_and(|s| s.chars().count() == 1)
            })
            .unwrap_or(1);
        self.line.truncate(len.saturating_sub(char_len));
    }

    fn discard_line(&mut self) {
        self.line.clear();
        self.line_seen = 0;
        self.line_overflow = false;
    }

    fn finish_line(&mut self, events: &mut Vec<TelnetEvent>) {
        if self.line_overflow {
            events.push(TelnetEvent::LineTooLong {
                len: self.line_seen,
            });
        } else {
            let text: String = String::from_utf8_lossy(&self.line)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            events.push(TelnetEvent::Line(text.trim_end().to_owned()));
        }
        self.discard_line();
    }
}

/// Appends `bytes` with every 0xFF doubled (IAC IAC), as inside a
/// subnegotiation.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
}

/// MCCP2 on the way out: once a connection's codec says compression starts
/// ([`Feed::compress`]), everything written goes through one zlib stream,
/// flushed after each write so the client sees it at once; when it stops,
/// the stream is finished and what follows goes out as it is.
#[derive(Default)]
pub struct Compressor {
    zlib: Option<flate2::Compress>,
    /// Bytes given and bytes sent since compression started (metrics).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Compressor {
    /// Starts (`true`) or stops compressing; returns the bytes that end the
    /// stream when it stops.
    pub fn set(&mut self, on: bool) -> Vec<u8> {
        match (on, self.zlib.take()) {
            (true, None) => {
                self.zlib = Some(flate2::Compress::new(flate2::Compression::default(), true));
                Vec::new()
            }
            (true, Some(z)) => {
                self.zlib = Some(z);
                Vec::new()
            }
            (false, Some(mut z)) => run_zlib(&mut z, &[], flate2::FlushCompress::Finish),
            (false, None) => Vec::new(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.zlib.is_some()
    }

    /// What to write for `bytes`: compressed and flushed while compression is on.
    pub fn encode(&mut self, bytes: &[u8]) -> Vec<u8> {
        match &mut self.zlib {
            None => bytes.to_vec(),
            Some(z) => {
                let out = run_zlib(z, bytes, flate2::FlushCompress::Sync);
                self.bytes_in += bytes.len() as u64;
                self.bytes_out += out.len() as u64;
                out
            }
        }
    }
}

/// All of `input` through `z`, then `flush`. Deflate stops a call only when
/// its input is used up or its output space is full, so a call that used up
/// the input and left space has flushed everything (`Finish`: said so).
fn run_zlib(z: &mut flate2::Compress, input: &[u8], flush: flate2::FlushCompress) -> Vec<u8> {
    let finish = matches!(flush, flate2::FlushCompress::Finish);
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let before = z.total_in();
        let status = z
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflate with valid state does not fail");
        consumed += (z.total_in() - before) as usize;
        let room_left = out.len() < out.capacity();
        match status {
            flate2::Status::StreamEnd => break,
            _ if !finish && consumed == input.len() && room_left => break,
            _ => {}
        }
    }
    out
}

/// Text for the client: `\n` becomes CR LF (an existing CR LF is kept), a
/// bare CR becomes CR NUL (RFC 854) and a 0xFF byte is escaped as IAC IAC.
pub fn encode_text(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            LF if i == 0 || bytes[i - 1] != CR => out.extend_from_slice(&[CR, LF]),
            CR if bytes.get(i + 1) != Some(&LF) => out.extend_from_slice(&[CR, NUL]),
            IAC => out.extend_from_slice(&[IAC, IAC]),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(s: &str) -> TelnetEvent {
        TelnetEvent::Line(s.to_owned())
    }

    fn lines(codec: &mut TelnetCodec, input: &[u8]) -> Vec<TelnetEvent> {
        let feed = codec.feed(input);
        assert!(feed.reply.is_empty(), "unexpected reply {:?}", feed.reply);
        feed.events
    }

    /// The client's confirmation of each of our requests in `bytes`.
    fn confirmations(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 2 < bytes.len() {
            if bytes[i] == IAC && matches!(bytes[i + 1], WILL | WONT | DO | DONT) {
                let answer = match bytes[i + 1] {
                    WILL => DO,
                    WONT => DONT,
                    DO => WILL,
                    _ => WONT,
                };
                out.extend_from_slice(&[IAC, answer, bytes[i + 2]]);
                i += 3;
            } else {
                i += 1;
            }
        }
        out
    }

    // ---- negotiation ----

    #[test]
    fn greeting_offers_the_mud_options_and_asks_for_naws_and_ttype() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(
            c.greeting(),
            vec![
                IAC, WILL, GMCP, IAC, WILL, MSSP, IAC, WILL, MCCP2, IAC, WILL, EOR, IAC, DO, NAWS,
                IAC, DO, TTYPE
            ]
        );
        assert!(c.greeting().is_empty(), "asking twice sends nothing");
    }

    /// A MUD client agrees to everything: nothing is answered but what the
    /// agreements start (the terminal type question; MCCP2's start, last),
    /// and the MSSP table is asked for.
    #[test]
    fn confirmations_of_the_greeting_start_ttype_mssp_and_compression() {
        let mut c = TelnetCodec::new(100);
        let hello = c.greeting();
        let feed = c.feed(&confirmations(&hello));
        assert_eq!(feed.events, vec![TelnetEvent::MsspRequested]);
        assert_eq!(
            feed.reply,
            vec![IAC, SB, TTYPE, TTYPE_SEND, IAC, SE, IAC, SB, MCCP2, IAC, SE]
        );
        assert_eq!(feed.compress, Some(true));
        assert!(c.gmcp_enabled());
        assert_eq!(c.prompt_end(), &[IAC, EOR_MARK]);
        // Repeating them changes nothing and is not answered (but a crawler
        // asking for MSSP again gets the table again).
        let again = c.feed(&confirmations(&hello));
        assert_eq!(again.reply, Vec::<u8>::new());
        assert_eq!(again.compress, None);
        assert_eq!(again.events, vec![TelnetEvent::MsspRequested]);
    }

    /// A bare telnet client refuses what it does not know, once; nothing is
    /// answered, and it gets no GMCP, no compression, and GA after prompts.
    #[test]
    fn refusals_of_the_greeting_are_not_answered() {
        let mut c = TelnetCodec::new(100);
        c.greeting();
        let feed = c.feed(&[
            IAC, DONT, GMCP, IAC, DONT, MSSP, IAC, DONT, MCCP2, IAC, DONT, EOR, IAC, DONT, SGA,
            IAC, WONT, NAWS, IAC, WONT, TTYPE,
        ]);
        assert_eq!(feed, Feed::default());
        assert_eq!(c.us[usize::from(SGA)].q, Q::No);
        assert_eq!(c.him[usize::from(NAWS)].q, Q::No);
        assert!(!c.gmcp_enabled());
        assert_eq!(c.gmcp("Core.Ping", ""), None);
        assert_eq!(c.prompt_end(), &[IAC, GA]);
    }

    /// MCCP2 asked for unprompted, turned off by the client, and on again:
    /// each change is answered once and says where compression starts or ends.
    #[test]
    fn mccp2_starts_stops_and_starts_again() {
        let mut c = TelnetCodec::new(100);
        let on = c.feed(&[IAC, DO, MCCP2]);
        assert_eq!(on.reply, vec![IAC, WILL, MCCP2, IAC, SB, MCCP2, IAC, SE]);
        assert_eq!(on.compress, Some(true));
        let off = c.feed(&[IAC, DONT, MCCP2]);
        assert_eq!(off.reply, vec![IAC, WONT, MCCP2]);
        assert_eq!(off.compress, Some(false));
        let on = c.feed(&[IAC, DO, MCCP2]);
        assert_eq!(on.reply, vec![IAC, WILL, MCCP2, IAC, SB, MCCP2, IAC, SE]);
        assert_eq!(on.compress, Some(true));
        // On and off again within one read: nothing starts.
        let mut c = TelnetCodec::new(100);
        let both = c.feed(&[IAC, DO, MCCP2, IAC, DONT, MCCP2]);
        assert_eq!(both.reply, vec![IAC, WILL, MCCP2, IAC, WONT, MCCP2]);
        assert_eq!(both.compress, None);
    }

    /// What goes out compressed decompresses to the same bytes after every
    /// write (each is flushed), and after the stream ends plain bytes follow.
    #[test]
    fn compressed_writes_are_flushed_and_the_stream_ends_cleanly() {
        let mut z = Compressor::default();
        assert_eq!(z.encode(b"plain"), b"plain");
        assert!(z.set(true).is_empty());
        let mut inflate = flate2::Decompress::new(true);
        let mut got = Vec::with_capacity(1 << 16);
        for chunk in [
            &b"You see:\r\n  Ann (a player)\r\n> "[..],
            &[IAC, EOR_MARK],
            &[0xff; 300],
        ] {
            let sent = z.encode(chunk);
            let before = got.len();
            inflate
                .decompress_vec(&sent, &mut got, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(&got[before..], chunk, "each write arrives whole");
        }
        let look = b"You see:\r\n".repeat(200);
        let sent = z.encode(&look);
        assert!(
            sent.len() * 10 < look.len(),
            "{} -> {}",
            look.len(),
            sent.len()
        );
        got.clear();
        inflate
            .decompress_vec(&sent, &mut got, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(got, look);
        let end = z.set(false);
        got.clear();
        let status = inflate
            .decompress_vec(&end, &mut got, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(status, flate2::Status::StreamEnd);
        assert!(!z.is_on());
        assert_eq!(z.encode(b"after"), b"after");
    }

    #[test]
    fn prompts_end_with_eor_once_agreed() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(c.feed(&[IAC, DO, EOR]).reply, vec![IAC, WILL, EOR]);
        assert_eq!(c.prompt_end(), &[IAC, EOR_MARK]);
        assert_eq!(c.feed(&[IAC, DONT, EOR]).reply, vec![IAC, WONT, EOR]);
        assert_eq!(c.prompt_end(), &[IAC, GA]);
    }

    fn gmcp_in(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![IAC, SB, GMCP];
        for &b in payload {
            v.push(b);
            if b == IAC {
                v.push(IAC);
            }
        }
        v.extend_from_slice(&[IAC, SE]);
        v
    }

    /// GMCP both ways once agreed: messages of up to 16 KiB arrive as
    /// events (0xFF unescaped), longer ones and nameless ones are dropped
    /// whole without disturbing what follows, and what we send has 0xFF
    /// doubled. Before the client agrees, GMCP is neither read nor sent.
    #[test]
    fn gmcp_messages_in_and_out() {
        let mut c = TelnetCodec::new(100);
        assert!(c.feed(&gmcp_in(b"Core.Hello {}")).events.is_empty());
        assert_eq!(c.gmcp("Core.Ping", ""), None);
        c.greeting();
        c.feed(&[IAC, DO, GMCP]);
        let hello = br#"Core.Hello {"client":"Mudlet","version":"4.17"}"#;
        assert_eq!(
            c.feed(&gmcp_in(hello)).events,
            vec![TelnetEvent::Gmcp {
                package: "Core.Hello".into(),
                data: r#"{"client":"Mudlet","version":"4.17"}"#.into()
            }]
        );
        // 8 KiB of JSON, and a 0xFF byte inside (escaped on the wire).
        let mut big = b"Char.Items.List \"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 8 * 1024));
        big.extend_from_slice(&[0xff, b'"']);
        let events = c.feed(&gmcp_in(&big)).events;
        assert!(
            matches!(&events[..], [TelnetEvent::Gmcp { package, data }]
                if package == "Char.Items.List" && data.len() > 8 * 1024),
            "{:?}",
            events.len()
        );
        // Over the limit: dropped whole; the next line is read normally.
        let mut huge = b"Char.Items.List ".to_vec();
        huge.extend(std::iter::repeat_n(b'y', MAX_GMCP_BYTES + 10));
        let mut input = gmcp_in(&huge);
        input.extend_from_slice(b"look\r\n");
        assert_eq!(c.feed(&input).events, vec![line("look")]);
        // Garbage where the package name belongs: ignored.
        assert!(c.feed(&gmcp_in(b"\x01\x02 {}")).events.is_empty());
        assert!(c.feed(&gmcp_in(b"")).events.is_empty());
        // Out: IAC SB GMCP, the package, a space, the JSON, IAC SE. UTF-8
        // text never holds 0xFF, but the framing doubles one if it did.
        let mut want = vec![IAC, SB, GMCP];
        want.extend_from_slice(b"Comm.Channel.Text {\"text\":\"hi\"}");
        want.extend_from_slice(&[IAC, SE]);
        assert_eq!(
            c.gmcp("Comm.Channel.Text", "{\"text\":\"hi\"}").unwrap(),
            want
        );
        let mut want = vec![IAC, SB, GMCP];
        want.extend_from_slice(b"Core.Ping");
        want.extend_from_slice(&[IAC, SE]);
        assert_eq!(c.gmcp("Core.Ping", "").unwrap(), want);
        let mut escaped = Vec::new();
        push_escaped(&mut escaped, &[b'a', 0xff, b'b']);
        assert_eq!(escaped, vec![b'a', 0xff, 0xff, b'b']);
    }

    /// The MSSP table frames each variable and value, and leaves out bytes
    /// that would break the framing.
    #[test]
    fn mssp_table_bytes() {
        let bytes = TelnetCodec::mssp(&[
            ("NAME", vec!["Vale".into()]),
            ("PLAYERS", vec!["3".into()]),
            ("BAD", vec!["a\u{1}b\u{2}c".into()]),
        ]);
        let mut want = vec![IAC, SB, MSSP, MSSP_VAR];
        want.extend_from_slice(b"NAME");
        want.push(MSSP_VAL);
        want.extend_from_slice(b"Vale");
        want.push(MSSP_VAR);
        want.extend_from_slice(b"PLAYERS");
        want.push(MSSP_VAL);
        want.extend_from_slice(b"3");
        want.push(MSSP_VAR);
        want.extend_from_slice(b"BAD");
        want.push(MSSP_VAL);
        want.extend_from_slice(b"abc");
        want.extend_from_slice(&[IAC, SE]);
        assert_eq!(bytes, want);
        // Asked for unprompted: agreed and the table is due.
        let mut c = TelnetCodec::new(100);
        let feed = c.feed(&[IAC, DO, MSSP]);
        assert_eq!(feed.reply, vec![IAC, WILL, MSSP]);
        assert_eq!(feed.events, vec![TelnetEvent::MsspRequested]);
    }

    fn ttype_is(name: &str) -> Vec<u8> {
        let mut v = vec![IAC, SB, TTYPE, TTYPE_IS];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&[IAC, SE]);
        v
    }

    /// The terminal type is asked for three times (MUD clients answer with
    /// their name, the terminal type, then `MTTS <bits>`), or until the
    /// client repeats itself (a bare client has one type).
    #[test]
    fn terminal_type_cycle_for_mtts() {
        let send = vec![IAC, SB, TTYPE, TTYPE_SEND, IAC, SE];
        let mut c = TelnetCodec::new(100);
        c.greeting();
        assert_eq!(c.feed(&[IAC, WILL, TTYPE]).reply, send);
        let f = c.feed(&ttype_is("MUDLET"));
        assert_eq!(
            (f.reply, f.events),
            (
                send.clone(),
                vec![TelnetEvent::TerminalType("MUDLET".into())]
            )
        );
        let f = c.feed(&ttype_is("XTERM-256COLOR"));
        assert_eq!(f.reply, send);
        let f = c.feed(&ttype_is("MTTS 2825"));
        assert!(f.reply.is_empty(), "three rounds are enough");
        assert_eq!(
            f.events,
            vec![TelnetEvent::TerminalType("MTTS 2825".into())]
        );

        let mut c = TelnetCodec::new(100);
        c.greeting();
        c.feed(&[IAC, WILL, TTYPE]);
        assert_eq!(c.feed(&ttype_is("ANSI")).reply, send);
        let f = c.feed(&ttype_is("ANSI"));
        assert!(f.reply.is_empty() && f.events.is_empty(), "{f:?}");
    }

    #[test]
    fn unprompted_naws_and_ttype_are_accepted_once() {
        let mut c = TelnetCodec::new(100);
        let feed = c.feed(&[IAC, WILL, NAWS, IAC, WILL, TTYPE]);
        assert_eq!(
            feed.reply,
            vec![IAC, DO, NAWS, IAC, DO, TTYPE, IAC, SB, TTYPE, TTYPE_SEND, IAC, SE]
        );
        assert_eq!(
            c.feed(&[IAC, WILL, NAWS, IAC, WILL, TTYPE]),
            Feed::default()
        );
    }

    #[test]
    fn prompts_end_with_go_ahead_until_sga_is_agreed() {
        let mut c = TelnetCodec::new(100);
        c.greeting();
        assert_eq!(c.prompt_end(), &[IAC, GA]);
        c.feed(&[IAC, DO, SGA]);
        assert!(c.prompt_end().is_empty());
    }

    #[test]
    fn client_sga_is_accepted() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(c.feed(&[IAC, WILL, SGA]).reply, vec![IAC, DO, SGA]);
        assert_eq!(c.feed(&[IAC, DO, SGA]).reply, vec![IAC, WILL, SGA]);
        assert_eq!(c.feed(&[IAC, WILL, SGA, IAC, DO, SGA]), Feed::default());
    }

    #[test]
    fn other_options_are_refused_once() {
        let mut c = TelnetCodec::new(100);
        let feed = c.feed(&[
            IAC, WILL, LINEMODE, IAC, DO, 42, IAC, WILL, ECHO, IAC, DO, NAWS,
        ]);
        assert_eq!(
            feed.reply,
            vec![IAC, DONT, LINEMODE, IAC, WONT, 42, IAC, DONT, ECHO, IAC, WONT, NAWS]
        );
        // A peer that keeps asking gets no more answers: no loop possible.
        let again = c.feed(&[
            IAC, WILL, LINEMODE, IAC, DO, 42, IAC, WILL, ECHO, IAC, DO, NAWS,
        ]);
        assert_eq!(again, Feed::default());
        // Negative answers to options that are off are ignored.
        assert_eq!(c.feed(&[IAC, WONT, 77, IAC, DONT, 78]), Feed::default());
    }

    #[test]
    fn every_timing_mark_is_answered() {
        let mut c = TelnetCodec::new(100);
        let interrupt = [IAC, IP, IAC, DO, TIMING_MARK];
        for _ in 0..3 {
            let feed = c.feed(&interrupt);
            assert_eq!(feed.events, vec![TelnetEvent::Interrupt]);
            assert_eq!(feed.reply, vec![IAC, WILL, TIMING_MARK]);
        }
        let noise = [
            IAC,
            DONT,
            TIMING_MARK,
            IAC,
            WILL,
            TIMING_MARK,
            IAC,
            WONT,
            TIMING_MARK,
        ];
        assert_eq!(c.feed(&noise), Feed::default());
    }

    #[test]
    fn echo_is_only_accepted_when_offered() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(c.feed(&[IAC, DO, ECHO]).reply, vec![IAC, WONT, ECHO]);

        let off = c.echo_off();
        assert_eq!(off, vec![IAC, WILL, ECHO]);
        assert!(c.echo_off().is_empty(), "already negotiating");
        assert_eq!(c.feed(&[IAC, DO, ECHO]), Feed::default(), "a confirmation");
        assert_eq!(c.us[usize::from(ECHO)].q, Q::Yes);
        assert!(c.echo_off().is_empty(), "already off");

        assert_eq!(c.echo_on(), vec![IAC, WONT, ECHO]);
        assert_eq!(
            c.feed(&[IAC, DONT, ECHO]),
            Feed::default(),
            "a confirmation"
        );
        assert_eq!(c.us[usize::from(ECHO)].q, Q::No);
        assert!(c.echo_on().is_empty(), "already on");

        // Not offered any more: refused again (the state changed in between).
        assert_eq!(c.feed(&[IAC, DO, ECHO]).reply, vec![IAC, WONT, ECHO]);
    }

    #[test]
    fn echo_refused_by_the_client() {
        let mut c = TelnetCodec::new(100);
        c.echo_off();
        assert_eq!(c.feed(&[IAC, DONT, ECHO]), Feed::default());
        assert_eq!(c.us[usize::from(ECHO)].q, Q::No);
        assert!(c.echo_on().is_empty());
    }

    #[test]
    fn client_turning_echo_off_by_itself_is_acknowledged() {
        let mut c = TelnetCodec::new(100);
        c.echo_off();
        c.feed(&[IAC, DO, ECHO]);
        // The client asks us to stop; RFC 854 requires an acknowledgement.
        assert_eq!(c.feed(&[IAC, DONT, ECHO]).reply, vec![IAC, WONT, ECHO]);
        assert_eq!(c.feed(&[IAC, DONT, ECHO]), Feed::default());
    }

    #[test]
    fn echo_off_then_on_before_the_client_answers() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(c.echo_off(), vec![IAC, WILL, ECHO]);
        assert!(c.echo_on().is_empty(), "queued until the client answers");
        // The client confirms WILL ECHO; we immediately take it back.
        assert_eq!(c.feed(&[IAC, DO, ECHO]).reply, vec![IAC, WONT, ECHO]);
        assert_eq!(c.feed(&[IAC, DONT, ECHO]), Feed::default());
        assert_eq!(c.us[usize::from(ECHO)].q, Q::No);
    }

    #[test]
    fn echo_off_on_off_before_the_client_answers() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(c.echo_off(), vec![IAC, WILL, ECHO]);
        assert!(c.echo_on().is_empty());
        assert!(c.echo_off().is_empty(), "cancels the queued change");
        assert_eq!(c.feed(&[IAC, DO, ECHO]), Feed::default());
        assert_eq!(c.us[usize::from(ECHO)].q, Q::Yes);
    }

    #[test]
    fn echo_on_then_off_while_disabling() {
        let mut c = TelnetCodec::new(100);
        c.echo_off();
        c.feed(&[IAC, DO, ECHO]);
        assert_eq!(c.echo_on(), vec![IAC, WONT, ECHO]);
        assert!(c.echo_off().is_empty(), "queued");
        // The client confirms WONT; we then ask again.
        assert_eq!(c.feed(&[IAC, DONT, ECHO]).reply, vec![IAC, WILL, ECHO]);
        assert_eq!(c.feed(&[IAC, DO, ECHO]), Feed::default());
        assert_eq!(c.us[usize::from(ECHO)].q, Q::Yes);
    }

    #[test]
    fn sga_switched_off_and_on_by_the_client() {
        let mut c = TelnetCodec::new(100);
        c.greeting();
        c.feed(&[IAC, DO, SGA]);
        assert_eq!(c.feed(&[IAC, DONT, SGA]).reply, vec![IAC, WONT, SGA]);
        assert_eq!(c.feed(&[IAC, DO, SGA]).reply, vec![IAC, WILL, SGA]);
    }

    #[test]
    fn ttype_send_is_repeated_only_after_the_option_was_switched_off() {
        let mut c = TelnetCodec::new(100);
        c.greeting();
        let send = vec![IAC, SB, TTYPE, TTYPE_SEND, IAC, SE];
        assert_eq!(c.feed(&[IAC, WILL, TTYPE]).reply, send);
        assert_eq!(c.feed(&[IAC, WONT, TTYPE]).reply, vec![IAC, DONT, TTYPE]);
        let mut expected = vec![IAC, DO, TTYPE];
        expected.extend_from_slice(&send);
        assert_eq!(c.feed(&[IAC, WILL, TTYPE]).reply, expected);
    }

    /// Two engines talking to each other must go quiet: nobody answers an
    /// answer. (A server engine is a fine stand-in for a strict client.)
    #[test]
    fn two_engines_reach_quiescence() {
        let mut a = TelnetCodec::new(100);
        let mut b = TelnetCodec::new(100);
        let mut to_b = a.greeting();
        to_b.extend(a.echo_off());
        to_b.extend(a.echo_on());
        to_b.extend(a.echo_off());
        let mut to_a = b.greeting();
        to_a.extend(b.echo_off());
        for _round in 0..10 {
            let fb = b.feed(&to_b);
            let fa = a.feed(&to_a);
            to_a = fb.reply;
            to_b = fa.reply;
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
        }
        panic!("negotiation did not settle: {to_a:?} {to_b:?}");
    }

    /// A hostile client that answers every one of our messages by flipping
    /// it around, forever, still gets a finite conversation.
    #[test]
    fn contrary_client_cannot_make_us_loop() {
        let mut c = TelnetCodec::new(100);
        let mut to_us: Vec<u8> = c.greeting();
        to_us.extend(c.echo_off());
        // The client answers each WILL with DONT and each DO with WONT, then
        // asks again for all of them.
        let mut total = 0;
        for _ in 0..20 {
            let mut client = Vec::new();
            for chunk in to_us.chunks(3) {
                if let [IAC, verb, opt] = *chunk {
                    let flip = match verb {
                        WILL => DONT,
                        DO => WONT,
                        WONT => DO,
                        DONT => WILL,
                        _ => continue,
                    };
                    client.extend_from_slice(&[IAC, flip, opt]);
                }
            }
            client.extend_from_slice(&[IAC, WILL, 99, IAC, DO, 98]);
            to_us = c.feed(&client).reply;
            total += to_us.len();
        }
        assert!(to_us.is_empty(), "still answering: {to_us:?}");
        assert!(total < 100, "answered too much: {total}");
    }

    // ---- subnegotiation ----

    #[test]
    fn naws() {
        let mut c = TelnetCodec::new(100);
        let events = lines(&mut c, &[IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE]);
        assert_eq!(
            events,
            vec![TelnetEvent::WindowSize {
                width: 80,
                height: 24
            }]
        );
    }

    #[test]
    fn naws_with_escaped_255() {
        let mut c = TelnetCodec::new(100);
        let input = [IAC, SB, NAWS, 0, IAC, IAC, IAC, IAC, 0x10, IAC, SE];
        assert_eq!(
            lines(&mut c, &input),
            vec![TelnetEvent::WindowSize {
                width: 255,
                height: 0xff10
            }]
        );
        let input = [
            IAC, SB, NAWS, IAC, IAC, IAC, IAC, IAC, IAC, IAC, IAC, IAC, SE,
        ];
        assert_eq!(
            lines(&mut c, &input),
            vec![TelnetEvent::WindowSize {
                width: 0xffff,
                height: 0xffff
            }]
        );
    }

    #[test]
    fn naws_of_the_wrong_length_is_ignored() {
        let mut c = TelnetCodec::new(100);
        assert!(lines(&mut c, &[IAC, SB, NAWS, 0, 80, 0, IAC, SE]).is_empty());
        assert!(lines(&mut c, &[IAC, SB, NAWS, 0, 80, 0, 24, 0, IAC, SE]).is_empty());
    }

    #[test]
    fn terminal_type() {
        let mut c = TelnetCodec::new(100);
        let mut input = vec![IAC, SB, TTYPE, TTYPE_IS];
        input.extend_from_slice(b"XTERM-256COLOR");
        input.extend_from_slice(&[IAC, SE]);
        assert_eq!(
            lines(&mut c, &input),
            vec![TelnetEvent::TerminalType("XTERM-256COLOR".into())]
        );
        // TTYPE SEND from the client, or an unknown option, is ignored.
        assert!(lines(&mut c, &[IAC, SB, TTYPE, TTYPE_SEND, IAC, SE]).is_empty());
        assert!(lines(&mut c, &[IAC, SB, 200, 1, 2, 3, IAC, SE]).is_empty());
    }

    #[test]
    fn oversized_subnegotiation_is_dropped_and_bounded() {
        let mut c = TelnetCodec::new(100);
        let mut input = vec![IAC, SB, TTYPE, TTYPE_IS];
        input.extend(std::iter::repeat_n(b'x', 10_000));
        c.feed(&input);
        assert!(c.sb_buf.len() <= MAX_SUBNEGOTIATION_BYTES);
        assert!(c.sb_buf.capacity() <= MAX_SUBNEGOTIATION_BYTES);
        let feed = c.feed(&[IAC, SE, b'h', b'i', b'\n']);
        assert_eq!(feed.events, vec![line("hi")]);
        // The next one works again.
        let events = lines(&mut c, &[IAC, SB, NAWS, 0, 100, 0, 50, IAC, SE]);
        assert_eq!(
            events,
            vec![TelnetEvent::WindowSize {
                width: 100,
                height: 50
            }]
        );
    }

    #[test]
    fn unterminated_subnegotiation_is_ended_by_a_command() {
        let mut c = TelnetCodec::new(100);
        let mut input = vec![IAC, SB, NAWS, 0, 80, IAC, AYT];
        input.extend_from_slice(b"look\r\n");
        assert_eq!(
            lines(&mut c, &input),
            vec![TelnetEvent::AreYouThere, line("look")]
        );
    }

    // ---- commands ----

    #[test]
    fn iac_iac_is_a_data_byte() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(
            lines(&mut c, &[b'a', IAC, IAC, b'b', b'\n']),
            vec![line("a\u{fffd}b")]
        );
    }

    #[test]
    fn ayt_and_ip() {
        let mut c = TelnetCodec::new(100);
        let events = lines(&mut c, b"half a li\xff\xf4ne\n\xff\xf6");
        assert_eq!(
            events,
            vec![TelnetEvent::Interrupt, line("ne"), TelnetEvent::AreYouThere]
        );
    }

    #[test]
    fn other_commands_are_ignored() {
        let mut c = TelnetCodec::new(100);
        let input = [
            b'a', IAC, NOP, b'b', IAC, GA, IAC, DM, IAC, BRK, IAC, AO, IAC, SE, IAC, 17, b'c',
            b'\n',
        ];
        assert_eq!(lines(&mut c, &input), vec![line("abc")]);
    }

    #[test]
    fn erase_char_and_erase_line() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(lines(&mut c, b"saz\xff\xf7y hi\r\n"), vec![line("say hi")]);
        assert_eq!(lines(&mut c, b"oops\xff\xf8look\r\n"), vec![line("look")]);
    }

    // ---- lines ----

    #[test]
    fn line_endings() {
        let mut c = TelnetCodec::new(100);
        let events = lines(&mut c, b"a\r\nb\r\0c\nd\re\r\r\nf");
        assert_eq!(
            events,
            vec![
                line("a"),
                line("b"),
                line("c"),
                line("d"),
                line("e"),
                line("")
            ]
        );
        assert_eq!(lines(&mut c, b"\n"), vec![line("f")]);
    }

    #[test]
    fn cr_lf_split_across_reads_is_one_line_end() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(lines(&mut c, b"look\r"), vec![line("look")]);
        assert!(lines(&mut c, b"\n").is_empty());
        assert_eq!(lines(&mut c, b"\r"), vec![line("")]);
        assert!(lines(&mut c, b"\0").is_empty());
        assert!(lines(&mut c, b"n").is_empty());
        assert_eq!(lines(&mut c, b"\r\n"), vec![line("n")]);
    }

    #[test]
    fn negotiation_between_cr_and_lf_keeps_them_together() {
        let mut c = TelnetCodec::new(100);
        let events = lines(&mut c, &[b'x', CR, IAC, NOP, LF, b'y', LF]);
        assert_eq!(events, vec![line("x"), line("y")]);
    }

    #[test]
    fn empty_lines_are_reported() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(lines(&mut c, b"\r\n\n"), vec![line(""), line("")]);
    }

    #[test]
    fn backspace_erases_whole_characters() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(
            lines(&mut c, "héllo\x08\x08\x08\x08i\r\n".as_bytes()),
            vec![line("hi")]
        );
        assert_eq!(lines(&mut c, "a€\x7f\x7fb\n".as_bytes()), vec![line("b")]);
        assert_eq!(lines(&mut c, "x🦀\x08y\n".as_bytes()), vec![line("xy")]);
        assert_eq!(lines(&mut c, b"\x08\x7f\x08ok\n"), vec![line("ok")]);
        // A stray invalid byte is erased on its own.
        assert_eq!(lines(&mut c, b"ab\x80\x08\n"), vec![line("ab")]);
        assert_eq!(lines(&mut c, b"a\xe2\x82\x08\x08\n"), vec![line("a")]);
    }

    #[test]
    fn backspace_split_inside_a_multibyte_character_stays_consistent() {
        let euro = "€".as_bytes();
        let mut c = TelnetCodec::new(100);
        assert!(lines(&mut c, &euro[..1]).is_empty());
        assert!(lines(&mut c, &euro[1..]).is_empty());
        assert_eq!(lines(&mut c, b"\x08!\n"), vec![line("!")]);
    }

    #[test]
    fn controls_dropped_tab_is_space_trailing_space_trimmed() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(
            lines(&mut c, b"  say\thi\x1b[1m \x07there\x00  \t \r\n"),
            vec![line("  say hi[1m there")]
        );
        // C1 controls are removed after decoding too.
        assert_eq!(lines(&mut c, "a\u{9b}b\n".as_bytes()), vec![line("ab")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let mut c = TelnetCodec::new(100);
        assert_eq!(
            lines(&mut c, b"say caf\xe9 \xc3\xa9t\xe9\r\n"),
            vec![line("say caf\u{fffd} \u{e9}t\u{fffd}")]
        );
    }

    #[test]
    fn utf8_split_across_reads() {
        let text = "say héllo wörld 🦀\r\n".as_bytes();
        for i in 0..text.len() {
            let mut c = TelnetCodec::new(100);
            let mut events = lines(&mut c, &text[..i]);
            events.extend(lines(&mut c, &text[i..]));
            assert_eq!(events, vec![line("say héllo wörld 🦀")], "split at {i}");
        }
    }

    #[test]
    fn line_at_the_limit_is_fine_one_more_byte_is_too_long() {
        let mut c = TelnetCodec::new(8);
        assert_eq!(lines(&mut c, b"12345678\r\n"), vec![line("12345678")]);
        assert_eq!(
            lines(&mut c, b"123456789\r\n"),
            vec![TelnetEvent::LineTooLong { len: 9 }]
        );
        assert_eq!(lines(&mut c, b"next\r\n"), vec![line("next")]);
        // Backspaces before the limit make room.
        assert_eq!(
            lines(&mut c, b"1234567\x08\x0878\r\n"),
            vec![line("1234578")]
        );
    }

    #[test]
    fn megabyte_line_is_reported_once_and_not_buffered() {
        let max = 4096;
        let mut c = TelnetCodec::new(max);
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..16 {
            assert!(lines(&mut c, &chunk).is_empty());
            assert!(c.line.len() <= max);
            assert!(c.line.capacity() <= max);
        }
        assert_eq!(
            lines(&mut c, b"\x08\r\nlook\r\n"),
            vec![TelnetEvent::LineTooLong { len: 1 << 20 }, line("look")]
        );
    }

    #[test]
    fn hundred_megabytes_without_newline_stay_bounded() {
        let max = 1024;
        let mut c = TelnetCodec::new(max);
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..100 {
            c.feed(&chunk);
            assert!(c.line.capacity() <= max);
        }
        assert_eq!(
            lines(&mut c, b"\n"),
            vec![TelnetEvent::LineTooLong { len: 100 << 20 }]
        );
    }

    #[test]
    fn erase_line_forgets_an_overlong_line() {
        let mut c = TelnetCodec::new(4);
        assert_eq!(lines(&mut c, b"toolong\xff\xf8ok\n"), vec![line("ok")]);
    }

    #[test]
    fn zero_limit_accepts_only_empty_lines() {
        let mut c = TelnetCodec::new(0);
        assert_eq!(
            lines(&mut c, b"\nx\n"),
            vec![line(""), TelnetEvent::LineTooLong { len: 1 }]
        );
    }

    // ---- output ----

    #[test]
    fn encode_text_line_endings() {
        assert_eq!(encode_text("a\nb"), b"a\r\nb");
        assert_eq!(encode_text("a\r\nb\n"), b"a\r\nb\r\n");
        assert_eq!(encode_text("\n\n"), b"\r\n\r\n");
        assert_eq!(encode_text("a\rb"), b"a\r\0b");
        assert_eq!(encode_text("a\r"), b"a\r\0");
        assert_eq!(encode_text("héllo 🦀"), "héllo 🦀".as_bytes());
        assert_eq!(encode_text(""), b"");
    }

    // ---- whole sessions, any chunking ----

    fn session() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&[IAC, DO, SGA, IAC, WILL, NAWS, IAC, WILL, TTYPE]);
        s.extend_from_slice(&[IAC, SB, NAWS, 0, IAC, IAC, 0, 40, IAC, SE]);
        s.extend_from_slice(&[IAC, SB, TTYPE, TTYPE_IS]);
        s.extend_from_slice(b"MUDLET");
        s.extend_from_slice(&[IAC, SE]);
        s.extend_from_slice("connect Zoë\r\n".as_bytes());
        s.extend_from_slice(&[IAC, DO, ECHO, IAC, WILL, LINEMODE]);
        s.extend_from_slice(b"s3cr3t\x7f\x7f3t\r\0");
        s.extend_from_slice(&[IAC, DONT, ECHO]);
        s.extend_from_slice("say héllo\tthere   🦀\r".as_bytes());
        s.extend_from_slice(b"n\nxx\xff\xf7\xff\xf7look\r\n");
        s.extend_from_slice(&[b'a', IAC, IAC, b'\xe9', b'\n']);
        s.extend_from_slice(&[b'x'; 40]);
        s.extend_from_slice(b"\r\nmap\xff\xf6\xff\xf4\r\n");
        s
    }

    fn expected_session_events() -> Vec<TelnetEvent> {
        vec![
            TelnetEvent::WindowSize {
                width: 255,
                height: 40,
            },
            TelnetEvent::TerminalType("MUDLET".into()),
            line("connect Zoë"),
            line("s3cr3t"),
            line("say héllo there   🦀"),
            line("n"),
            line("look"),
            line("a\u{fffd}\u{fffd}"),
            TelnetEvent::LineTooLong { len: 40 },
            TelnetEvent::AreYouThere,
            TelnetEvent::Interrupt,
            line(""),
        ]
    }

    /// The server greets and asks for echo off (as for a password prompt)
    /// before the client's bytes arrive; the client confirms, then later
    /// switches echo back itself.
    fn run_session(chunks: &[&[u8]]) -> Feed {
        let mut c = TelnetCodec::new(32);
        c.greeting();
        c.echo_off();
        let mut all = Feed::default();
        for chunk in chunks {
            let feed = c.feed(chunk);
            all.events.extend(feed.events);
            all.reply.extend(feed.reply);
        }
        all
    }

    #[test]
    fn representative_session() {
        let s = session();
        let feed = run_session(&[&s]);
        assert_eq!(feed.events, expected_session_events());
        // The client's DO SGA is a request now (we do not offer SGA), so it
        // is answered; its terminal type is asked for again after MUDLET (the
        // MTTS cycle).
        assert_eq!(
            feed.reply,
            vec![
                IAC, WILL, SGA, IAC, SB, TTYPE, TTYPE_SEND, IAC, SE, IAC, SB, TTYPE, TTYPE_SEND,
                IAC, SE, IAC, DONT, LINEMODE, IAC, WONT, ECHO
            ]
        );
    }

    #[test]
    fn session_split_at_every_position() {
        let s = session();
        let whole = run_session(&[&s]);
        for i in 0..=s.len() {
            assert_eq!(run_session(&[&s[..i], &s[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(run_session(&bytes), whole, "byte by byte");
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for cut in cuts {
            out.push(bytes[start..cut].to_vec());
            start = cut;
        }
        out.push(bytes[start..].to_vec());
        out
    }

    proptest! {
        #[test]
        fn session_any_chunking(cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            let s = session();
            let chunks = chunked(&s, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(run_session(&refs), run_session(&[&s]));
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            max in 0usize..64,
        ) {
            let mut whole = TelnetCodec::new(max);
            let expected = whole.feed(&input);

            let mut c = TelnetCodec::new(max);
            let mut got = Feed::default();
            for chunk in chunked(&input, &cuts) {
                let feed = c.feed(&chunk);
                got.events.extend(feed.events);
                got.reply.extend(feed.reply);
                prop_assert!(c.line.len() <= max);
                prop_assert!(c.line.capacity() <= max);
                prop_assert!(c.sb_buf.capacity() <= MAX_SUBNEGOTIATION_BYTES);
            }
            prop_assert_eq!(&got, &expected);
            for event in &got.events {
                match event {
                    TelnetEvent::Line(l) => {
                        prop_assert!(l.len() <= max * 3);
                        prop_assert!(!l.chars().any(char::is_control));
                    }
                    TelnetEvent::LineTooLong { len } => prop_assert!(*len > max),
                    _ => {}
                }
            }
            // Replies are whole negotiation commands, never more than the input.
            prop_assert!(got.reply.len() <= input.len() * 4 + 6);
        }

        #[test]
        fn garbage_with_many_iacs(
            input in proptest::collection::vec(
                prop_oneof![Just(IAC), Just(SB), Just(SE), Just(WILL), Just(DO), Just(CR),
                            Just(LF), Just(0u8), Just(BS), any::<u8>()],
                0..2048),
        ) {
            let mut c = TelnetCodec::new(16);
            c.greeting();
            c.echo_off();
            let _ = c.feed(&input);
            let _ = c.echo_on();
            prop_assert!(c.line.len() <= 16);
            prop_assert!(c.sb_buf.len() <= MAX_SUBNEGOTIATION_BYTES);
        }

        #[test]
        fn encode_text_round_trips_through_the_decoder(text in "[^\\p{Cc}]{0,40}(\n[^\\p{Cc}]{0,40}){0,4}") {
            let mut c = TelnetCodec::new(1000);
            let mut bytes = encode_text(&text);
            bytes.extend_from_slice(b"\r\n");
            let events = c.feed(&bytes).events;
            let expected: Vec<TelnetEvent> =
                text.split('\n').map(|l| TelnetEvent::Line(l.trim_end().to_owned())).collect();
            prop_assert_eq!(events, expected);
        }
    }
}
