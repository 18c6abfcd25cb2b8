//! A text player: the telnet contract (docs/protocol.md section 4) spoken
//! by a bot. The server ends every answer with the prompt `> `; something
//! that happens while the player sits at the prompt arrives as a segment
//! that starts with a line break (a notification).

use crate::quic_bot::short;
use crate::scenario::{bot_name, Scenario};
use crate::stats::Metric;
use crate::{BotCtx, SessionEnd};
use rand::Rng;
use std::time::{Duration, Instant};
use tessera_proto::Vec3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a telnet bot waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Telnet output split into answers and notifications, IAC sequences
/// removed. Pure: fed bytes, it returns the segments they complete.
#[derive(Default)]
pub struct Segmenter {
    text: Vec<u8>,
    iac: Iac,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Iac {
    #[default]
    Data,
    /// After IAC.
    Command,
    /// After IAC WILL/WONT/DO/DONT: one option byte follows.
    Option,
    /// Inside IAC SB ... IAC SE.
    Sub,
    /// IAC inside a subnegotiation.
    SubCommand,
}

/// A piece of output: the answer to a command, or a notification.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    Answer(String),
    Note(String),
}

impl Segmenter {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Segment> {
        let mut out = Vec::new();
        for &b in bytes {
            self.iac = match (self.iac, b) {
                (Iac::Data, 255) => Iac::Command,
                (Iac::Data, _) => {
                    if b != b'\r' {
                        self.text.push(b);
                    }
                    // The prompt starts a line; `> ` inside text (as in
                    // `create <name> [<password>]`) is not one.
                    if self.text == b"> " || self.text.ends_with(b"\n> ") {
                        out.push(self.take());
                    }
                    Iac::Data
                }
                (Iac::Command, 255) => {
                    self.text.push(255);
                    Iac::Data
                }
                (Iac::Command, 251..=254) => Iac::Option,
                (Iac::Command, 250) => Iac::Sub,
                (Iac::Command, _) => Iac::Data,
                (Iac::Option, _) => Iac::Data,
                (Iac::Sub, 255) => Iac::SubCommand,
                (Iac::Sub, _) => Iac::Sub,
                (Iac::SubCommand, 240) => Iac::Data,
                (Iac::SubCommand, _) => Iac::Sub,
            };
        }
        out
    }

    fn take(&mut self) -> Segment {
        let mut text = String::from_utf8_lossy(&self.text).into_owned();
        self.text.clear();
        text.truncate(text.len() - 2);
        if let Some(note) = text.strip_prefix('\n') {
            Segment::Note(note.trim_end().to_string())
        } else {
            Segment::Answer(text.trim_end().to_string())
        }
    }
}

struct Conn {
    out: OwnedWriteHalf,
    answers: mpsc::UnboundedReceiver<String>,
    /// Notifications with the time they arrived.
    notes: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Conn, String> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect: timed out".to_string())?
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let (mut input, out) = stream.into_split();
        let (atx, answers) = mpsc::unbounded_channel();
        let (ntx, notes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut seg = Segmenter::default();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = input.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for s in seg.feed(&buf[..n]) {
                    let _ = match s {
                        Segment::Answer(a) => atx.send(a).map_err(drop),
                        Segment::Note(n) => ntx.send((Instant::now(), n)).map_err(drop),
                    };
                }
            }
        });
        let mut conn = Conn {
            out,
            answers,
            notes,
        };
        let banner = conn.answer().await.map_err(|e| format!("banner: {e}"))?;
        if !banner.contains("Welcome to Tessera") {
            return Err(format!("banner: unexpected {}", short(&banner)));
        }
        Ok(conn)
    }

    async fn answer(&mut self) -> Result<String, String> {
        match tokio::time::timeout(ANSWER_TIMEOUT, self.answers.recv()).await {
            Err(_) => Err("timed out".into()),
            Ok(None) => Err("connection closed".into()),
            Ok(Some(a)) => Ok(a),
        }
    }

    async fn command(&mut self, line: &str) -> Result<String, String> {
        self.out
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
        self.answer().await
    }
}

pub(crate) async fn run(ctx: BotCtx, index: usize) {
    let scenario = ctx.config.scenario.for_bot(index);
    let name = bot_name(ctx.config.seed, 't', index);
    let seed = ctx.config.seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    ctx.keep_playing(seed, |seed| session(&ctx, &name, scenario, seed))
        .await;
}

async fn session(
    ctx: &BotCtx,
    name: &str,
    scenario: Scenario,
    seed: u64,
) -> Result<SessionEnd, String> {
    let started = Instant::now();
    let mut conn = Conn::open(ctx.config.telnet_addr.expect("a telnet address")).await?;
    let pw = ctx.config.password.expose();
    let answer = conn
        .command(&format!("create {name} {pw}"))
        .await
        .map_err(|e| format!("login: {e}"))?;
    let answer = if answer.contains("That name is taken.") {
        conn.command(&format!("connect {name} {pw}"))
            .await
            .map_err(|e| format!("login: {e}"))?
    } else {
        answer
    };
    if !answer.contains("Welcome") {
        return Err(format!("login: {}", short(&answer)));
    }
    ctx.stats.record(Metric::Login, started.elapsed());
    ctx.stats.count("logins", 1);
    ctx.stats.connected(1);
    let result = play(ctx, &mut conn, scenario, seed).await;
    ctx.stats.connected(-1);
    match &result {
        Ok(SessionEnd::Again(_)) if scenario == Scenario::Churn => {} // just drop the socket
        Ok(_) => {
            let _ = conn.out.write_all(b"quit\r\n").await;
        }
        Err(_) => {}
    }
    result
}

/// `where`'s first line: `x y z`.
fn parse_where(answer: &str) -> Option<Vec3> {
    let mut it = answer.lines().next()?.split_whitespace();
    let mut num = || it.next()?.parse::<f32>().ok();
    Some(Vec3::new(num()?, num()?, num()?))
}

async fn play(
    ctx: &BotCtx,
    conn: &mut Conn,
    scenario: Scenario,
    seed: u64,
) -> Result<SessionEnd, String> {
    let mut pos = parse_where(&conn.command("where").await?).unwrap_or(Vec3::ZERO);
    let mut steering = ctx.config.steering(scenario, seed, pos);
    let started = Instant::now();
    let stay = (scenario == Scenario::LoginStorm)
        .then(|| Duration::from_millis(steering.rng().gen_range(1_000..3_000)));
    let mut chats = 0u64;
    let mut steps = 0u64;
    loop {
        // Text players act about once a second.
        let think = Duration::from_millis(steering.rng().gen_range(600..1_400));
        ctx.sleep(think).await;
        let now = Instant::now();
        while let Ok((at, note)) = conn.notes.try_recv() {
            for line in note.lines() {
                if let Some(sent) = ctx.heard.sent_at(line) {
                    let metric = if line.contains(" says, ") {
                        Metric::SayHeard
                    } else {
                        Metric::ChatHeard
                    };
                    ctx.stats.record(metric, at.saturating_duration_since(sent));
                    ctx.stats.count("heard", 1);
                }
            }
        }
        if ctx.over() {
            return Ok(SessionEnd::Done);
        }
        if stay.is_some_and(|s| now - started >= s) {
            return Ok(SessionEnd::Again(Duration::from_millis(
                steering.rng().gen_range(100..1_000),
            )));
        }
        if scenario == Scenario::Churn && steering.rng().gen_bool(1.0 / 20.0) {
            ctx.stats.count("churn_drops", 1);
            return Ok(SessionEnd::Again(Duration::from_millis(
                steering.rng().gen_range(500..2_000),
            )));
        }
        if scenario == Scenario::Chat && steering.rng().gen_bool(0.3) {
            chats += 1;
            let token = ctx.heard.token();
            let line = match chats % 4 {
                0 => format!("shout {token}"),
                2 => {
                    let other = steering.rng().gen_range(0..ctx.config.telnet_bots.max(1));
                    format!("tell {} {token}", bot_name(ctx.config.seed, 't', other))
                }
                _ => format!("say {token}"),
            };
            let sent = Instant::now();
            let answer = conn.command(&line).await?;
            ctx.stats.record(Metric::Command, sent.elapsed());
            ctx.stats.count("chat_sent", 1);
            if answer.contains("unavailable") || answer.contains("too fast") {
                ctx.stats.error(format!("chat: {}", short(&answer)));
            }
            continue;
        }
        let phase = steering.crowd_phase();
        let step = steering.compass(ctx.stats.t(), pos);
        ctx.crowd_progress(phase, steering.crowd_phase());
        let Some(step) = step else {
            continue;
        };
        let sent = Instant::now();
        let answer = conn.command(step.short()).await?;
        // A text player's step is acknowledged by its answer (with the new
        // position): that is its input-to-ack, kept apart from QUIC's.
        ctx.stats.record(Metric::Command, sent.elapsed());
        ctx.stats.count("steps", 1);
        if !answer.starts_with("You walk") && !answer.starts_with("Something blocks") {
            ctx.stats.error(format!("step: {}", short(&answer)));
        }
        steps += 1;
        // Know where we are now and then (the steering needs it).
        if steps.is_multiple_of(3) {
            if let Some(p) = parse_where(&conn.command("where").await?) {
                pos = p;
            }
        } else {
            let d = step.unit();
            pos = Vec3::new(pos.x + d.x * 3.0, pos.y, pos.z + d.z * 3.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_answers_and_notifications_and_drop_telnet_commands() {
        let mut s = Segmenter::default();
        // A negotiation, then the banner and its prompt, split over feeds.
        let mut out = s.feed(b"\xff\xfd\x1f\xff\xfb\x01Welcome to Tessera\r\n> ");
        assert_eq!(out, vec![Segment::Answer("Welcome to Tessera".into())]);
        out = s.feed(b"You walk north.\r\n");
        assert!(out.is_empty());
        out = s.feed(b"> \xff\xf9\r\nMira says, \"hi\"\r\n> ");
        // `> ` inside a line is text.
        assert!(s.feed(b"  create <name> [<password>]").is_empty());
        assert_eq!(
            s.feed(b"\r\n> "),
            vec![Segment::Answer("  create <name> [<password>]".into())]
        );
        assert_eq!(
            out,
            vec![
                Segment::Answer("You walk north.".into()),
                Segment::Note("Mira says, \"hi\"".into())
            ]
        );
        // A subnegotiation with an escaped IAC inside is skipped whole.
        out = s.feed(b"\xff\xfa\x18\x01\xff\xff\xff\xf0> ");
        assert_eq!(out, vec![Segment::Answer(String::new())]);
    }

    #[test]
    fn where_answers_parse() {
        assert_eq!(
            parse_where("12.0 0.0 -3.5\ncell 0,-1 shard shard-1"),
            Some(Vec3::new(12.0, 0.0, -3.5))
        );
        assert_eq!(parse_where("You are lost."), None);
    }
}
