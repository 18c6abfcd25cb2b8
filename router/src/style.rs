//! Colour for text players. The text the router writes marks what it shows
//! (a zone's name, a player's, a local's, speech, a place, a direction, the
//! map's glyphs) with characters of Unicode's private use area; each telnet
//! connection turns the marks into ANSI colour for a client that said it
//! shows colour, or drops them ([`render`]), and text for 3D clients has
//! them dropped ([`strip`]). Players cannot type the marks: they are removed
//! from everything a player sends (`tessera_proto::msg::clean_text`).

use crate::dialogue::Colour;
use std::borrow::Cow;

/// What a piece of text is, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A zone's name (the title of `look`).
    Title,
    /// A player's name.
    Player,
    /// A local's (an NPC's) name.
    Npc,
    /// What someone said.
    Speech,
    /// A landmark.
    Place,
    /// A compass direction one can walk.
    Exit,
    /// Map glyphs: buildings, the edge of the world, cell borders, you.
    Wall,
    Edge,
    Border,
    You,
}

/// The first and last mark; the first ends a styled piece.
const END: char = '\u{E000}';
const LAST: char = '\u{E00F}';

impl Style {
    fn mark(self) -> char {
        match self {
            Style::Title => '\u{E001}',
            Style::Player => '\u{E002}',
            Style::Npc => '\u{E003}',
            Style::Speech => '\u{E004}',
            Style::Place => '\u{E005}',
            Style::Exit => '\u{E006}',
            Style::Wall => '\u{E007}',
            Style::Edge => '\u{E008}',
            Style::Border => '\u{E009}',
            Style::You => '\u{E00A}',
        }
    }

    fn of(mark: char) -> Option<Style> {
        [
            Style::Title,
            Style::Player,
            Style::Npc,
            Style::Speech,
            Style::Place,
            Style::Exit,
            Style::Wall,
            Style::Edge,
            Style::Border,
            Style::You,
        ]
        .into_iter()
        .find(|s| s.mark() == mark)
    }

    /// SGR parameters: 16 colours, and 256 colours.
    fn sgr(self) -> (&'static str, &'static str) {
        match self {
            Style::Title => ("1;33", "1;38;5;221"),
            Style::Player => ("1;36", "1;38;5;81"),
            Style::Npc => ("32", "38;5;114"),
            Style::Speech => ("37", "38;5;230"),
            Style::Place => ("35", "38;5;176"),
            Style::Exit => ("1;32", "1;38;5;120"),
            Style::Wall => ("33", "38;5;137"),
            Style::Edge => ("34", "38;5;61"),
            Style::Border => ("2", "38;5;240"),
            Style::You => ("1;37", "1;38;5;231"),
        }
    }
}

/// Whether `c` is one of the marks.
pub fn is_mark(c: char) -> bool {
    (END..=LAST).contains(&c)
}

/// `text` marked as `style`.
pub fn paint(style: Style, text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 6);
    s.push(style.mark());
    s.push_str(text);
    s.push(END);
    s
}

/// `text` without marks (for 3D clients and clients without colour).
pub fn strip(text: &str) -> Cow<'_, str> {
    if text.chars().any(is_mark) {
        Cow::Owned(text.chars().filter(|c| !is_mark(*c)).collect())
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` for a client that shows `colour`: marks become ANSI SGR sequences
/// (each piece ends with a reset), or are dropped. A client without colour
/// never gets an escape code.
pub fn render(text: &str, colour: Colour) -> String {
    if colour == Colour::None {
        return strip(text).into_owned();
    }
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if c == END {
            out.push_str("\x1b[0m");
        } else if let Some(style) = Style::of(c) {
            let (ansi, x256) = style.sgr();
            out.push_str("\x1b[");
            out.push_str(if colour == Colour::Ansi256 {
                x256
            } else {
                ansi
            });
            out.push('m');
        } else if !is_mark(c) {
            out.push(c);
        }
    }
    out
}

/// How speech heard reads, marked: `Ann says, "hi"` (`Ann waves.` for an
/// emote); `npc` says whether the speaker is a local.
pub fn heard(name: &str, text: &str, emote: bool, npc: bool) -> String {
    let who = paint(if npc { Style::Npc } else { Style::Player }, name);
    if emote {
        format!("{who} {text}")
    } else {
        format!("{who} says, \"{}\"", paint(Style::Speech, text))
    }
}

/// Whether an entity id is a local's (NPCs have the top bit set).
pub fn is_npc(id: tessera_proto::EntityId) -> bool {
    id.0 & tessera_proto::EntityId::NPC_BIT != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_colour_or_nothing() {
        let text = format!("{} is here", paint(Style::Player, "Ann"));
        assert_eq!(render(&text, Colour::None), "Ann is here");
        assert_eq!(strip(&text), "Ann is here");
        assert_eq!(
            render(&text, Colour::Ansi16),
            "\x1b[1;36mAnn\x1b[0m is here"
        );
        assert_eq!(
            render(&text, Colour::Ansi256),
            "\x1b[1;38;5;81mAnn\x1b[0m is here"
        );
        assert!(matches!(strip("plain"), Cow::Borrowed("plain")));
        assert_eq!(
            strip(&heard("Mira", "hello", false, true)),
            "Mira says, \"hello\""
        );
        assert_eq!(strip(&heard("Mira", "waves.", true, true)), "Mira waves.");
    }
}
