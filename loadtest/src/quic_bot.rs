//! A 3D player without a screen: the client library driven by a scenario.

use crate::scenario::{bot_name, Scenario, Steering};
use crate::stats::Metric;
use crate::{BotCtx, SessionEnd};
use rand::Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tessera_client::{Client, ClientError, ClientEvent};
use tessera_proto::msg::ErrorCode;

/// Inputs per second a QUIC bot sends (a real client sends more; the
/// router only keeps the newest).
const INPUT_HZ: u64 = 10;
/// An input not acknowledged within this long is counted as unacknowledged.
const ACK_GIVE_UP: Duration = Duration::from_secs(5);
/// How long a bot whose router restarted tries to resume its session.
const RESUME_WITHIN: Duration = Duration::from_secs(30);
/// What `play` returns when the router closed for a restart (not an error:
/// the bot resumes).
const ROUTER_RESTARTED: &str = "router restarted";

/// Plays bot `index` until the run ends, reconnecting as its scenario says.
pub(crate) async fn run(ctx: BotCtx, index: usize, endpoint: quinn::Endpoint) {
    let scenario = ctx.config.scenario.for_bot(index);
    let name = bot_name(ctx.config.seed, 'q', index);
    let seed = ctx.config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ctx.keep_playing(seed, |seed| session(&ctx, &endpoint, &name, scenario, seed))
        .await;
}

fn describe(stage: &str, e: &ClientError) -> String {
    match e {
        ClientError::Refused { code, .. } => format!("{stage}: refused ({code:?})"),
        ClientError::Timeout => format!("{stage}: timed out"),
        ClientError::Lost(_) => format!("{stage}: connection lost"),
        ClientError::CertificateMismatch => format!("{stage}: certificate mismatch"),
        other => format!("{stage}: {other}"),
    }
}

/// Why sending failed: a router that closed for a restart between the last events and this
/// send is a restart (the bot resumes), not a lost connection.
fn sending_failed(client: &Client, stage: &str, e: &ClientError) -> String {
    if client.router_restarted() {
        ROUTER_RESTARTED.into()
    } else {
        describe(stage, e)
    }
}

/// Connects and logs in (creating the account the first time).
async fn log_in(ctx: &BotCtx, endpoint: &quinn::Endpoint, name: &str) -> Result<Client, String> {
    let started = Instant::now();
    let mut client = Client::connect(endpoint, ctx.config.quic_addr.expect("a QUIC address"))
        .await
        .map_err(|e| describe("connect", &e))?;
    match client.create(name, ctx.config.password.expose()).await {
        Ok(_) => {}
        Err(ClientError::Refused {
            code: ErrorCode::NameTaken,
            ..
        }) => {
            client
                .login(name, ctx.config.password.expose())
                .await
                .map_err(|e| describe("login", &e))?;
        }
        Err(e) => return Err(describe("login", &e)),
    }
    ctx.stats.record(Metric::Login, started.elapsed());
    ctx.stats.count("logins", 1);
    Ok(client)
}

/// One connection, from connect to logout (or drop).
async fn session(
    ctx: &BotCtx,
    endpoint: &quinn::Endpoint,
    name: &str,
    scenario: Scenario,
    seed: u64,
) -> Result<SessionEnd, String> {
    let mut client = log_in(ctx, endpoint, name).await?;
    let result = loop {
        ctx.stats.connected(1);
        let result = play(ctx, &mut client, scenario, seed).await;
        ctx.stats.connected(-1);
        if result.as_ref().err().map(String::as_str) != Some(ROUTER_RESTARTED) {
            break result;
        }
        // A restart or rolling update of routers: log in again with the
        // session's token, as a player's client would.
        let token = client
            .me
            .as_ref()
            .map(|m| m.token.clone())
            .unwrap_or_default();
        let started = Instant::now();
        let addr = ctx.config.quic_addr.expect("a QUIC address");
        match Client::reconnect(endpoint, addr, &token, RESUME_WITHIN).await {
            Ok((resumed, _)) => {
                ctx.stats.record(Metric::Login, started.elapsed());
                ctx.stats.count("resumes", 1);
                client = resumed;
            }
            Err(e) => return Err(describe("resume", &e)),
        }
    };
    match &result {
        Ok(SessionEnd::Again(_)) if scenario == Scenario::Churn => {
            // Churn: vanish without a goodbye.
            client.connection().close(0u32.into(), b"churn");
        }
        Ok(_) => client.logout().await,
        Err(_) => {}
    }
    result
}

async fn play(
    ctx: &BotCtx,
    client: &mut Client,
    scenario: Scenario,
    seed: u64,
) -> Result<SessionEnd, String> {
    let me = client.me.clone().expect("logged in");
    let mut steering = ctx.config.steering(scenario, seed, me.pos);
    let started = Instant::now();
    let stay = match scenario {
        Scenario::LoginStorm => Some(Duration::from_millis(
            steering.rng().gen_range(1_000..3_000),
        )),
        _ => None,
    };
    let mut pending: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut handoff_from: Option<Instant> = None;
    let mut next_chat = Instant::now() + chat_delay(ctx, &mut steering);
    let mut chats = 0u64;
    let mut traffic = Traffic::start(client.connection());
    let mut pos = me.pos;
    loop {
        // Inputs at INPUT_HZ on average, each period drawn anew (±20 %): a
        // fixed period of 100 ms, started at login like the router's
        // snapshot timer, stayed in phase with it (three ticks to a period)
        // and measured every bot's input-to-ack as one snapshot period
        // exactly; a player's inputs keep no such phase.
        let period = 1000.0 / INPUT_HZ as f64 * steering.rng().gen_range(0.8..1.2);
        tokio::time::sleep(Duration::from_secs_f64(period / 1000.0)).await;
        let now = Instant::now();
        if ctx.over() {
            traffic.report(ctx, client.connection());
            return Ok(SessionEnd::Done);
        }
        if stay.is_some_and(|s| now - started >= s) {
            traffic.report(ctx, client.connection());
            let pause = Duration::from_millis(steering.rng().gen_range(100..1_000));
            return Ok(SessionEnd::Again(pause));
        }
        if scenario == Scenario::Churn && steering.rng().gen_bool(1.0 / (20.0 * INPUT_HZ as f64)) {
            traffic.report(ctx, client.connection());
            ctx.stats.count("churn_drops", 1);
            let pause = Duration::from_millis(steering.rng().gen_range(500..2_000));
            return Ok(SessionEnd::Again(pause));
        }
        // What the server said since the last step.
        if let Some(p) = client.me_entity().map(|e| e.pos) {
            pos = p;
        }
        {
            let mut w = client.world.lock();
            if let Some(at) = w.ack_at {
                while pending.front().is_some_and(|(seq, _)| *seq <= w.ack_input) {
                    let (_, sent) = pending.pop_front().expect("front exists");
                    if at >= sent {
                        ctx.stats.record(Metric::InputAck, at - sent);
                    }
                }
            }
            for gap in w.take_self_gaps() {
                ctx.stats.record(Metric::UpdateGap, gap);
            }
            if let (Some(from), Some(updated)) = (handoff_from, w.self_updated) {
                if updated > from {
                    ctx.stats.record(Metric::HandoffGap, updated - from);
                    handoff_from = None;
                }
            }
        }
        while pending
            .front()
            .is_some_and(|(_, sent)| now - *sent > ACK_GIVE_UP)
        {
            pending.pop_front();
            ctx.stats.count("inputs_unacknowledged", 1);
        }
        while let Some((at, ev)) = client.next_event_timed(Duration::ZERO).await {
            match ev {
                ClientEvent::Chat { text, .. } => {
                    if let Some(sent) = ctx.heard.sent_at(&text) {
                        ctx.stats
                            .record(Metric::SayHeard, at.saturating_duration_since(sent));
                        ctx.stats.count("heard", 1);
                    }
                }
                ClientEvent::ChatLine { text, .. } => {
                    if let Some(sent) = ctx.heard.sent_at(&text) {
                        ctx.stats
                            .record(Metric::ChatHeard, at.saturating_duration_since(sent));
                        ctx.stats.count("chat_heard", 1);
                    }
                }
                ClientEvent::CellChanged { .. } => {
                    ctx.stats.count("handoffs", 1);
                    handoff_from = client.world.lock().self_updated;
                }
                ClientEvent::Closed(reason) => {
                    traffic.report(ctx, client.connection());
                    if client.router_restarted() {
                        return Err(ROUTER_RESTARTED.into());
                    }
                    ctx.stats.count("disconnects", 1);
                    return Err(format!("disconnected: {}", short(&reason)));
                }
                ClientEvent::Error { code, .. } => {
                    ctx.stats.error(format!("server error: {code:?}"));
                }
                _ => {}
            }
        }
        // Move.
        let phase = steering.crowd_phase();
        let (dx, dz) = steering.direction(ctx.stats.t(), pos);
        ctx.crowd_progress(phase, steering.crowd_phase());
        match client.send_input(dx, dz, dz.atan2(dx)) {
            Ok(seq) => {
                pending.push_back((seq, Instant::now()));
                ctx.stats.count("inputs", 1);
            }
            Err(e) => return Err(sending_failed(client, "input", &e)),
        }
        // Talk.
        if scenario == Scenario::Chat && now >= next_chat {
            next_chat = now + chat_delay(ctx, &mut steering);
            chats += 1;
            let token = ctx.heard.token();
            if chats.is_multiple_of(4) {
                let line = if chats.is_multiple_of(8) {
                    let other = steering.rng().gen_range(0..ctx.config.quic_bots.max(1));
                    format!("tell {} {token}", bot_name(ctx.config.seed, 'q', other))
                } else {
                    format!("shout {token}")
                };
                let sent = Instant::now();
                match client.command(&line).await {
                    Ok(answer) => {
                        ctx.stats.record(Metric::Command, sent.elapsed());
                        ctx.stats.count("chat_sent", 1);
                        if answer.contains("unavailable") || answer.contains("too fast") {
                            ctx.stats.error(format!("chat: {}", short(&answer)));
                        }
                    }
                    Err(e) => return Err(sending_failed(client, "command", &e)),
                }
            } else {
                match client.say(&token).await {
                    Ok(()) => ctx.stats.count("says", 1),
                    Err(e) => return Err(sending_failed(client, "say", &e)),
                }
            }
        }
        traffic.maybe_report(ctx, client.connection());
    }
}

fn chat_delay(ctx: &BotCtx, steering: &mut Steering) -> Duration {
    let base = ctx.config.chat_interval.as_secs_f64();
    Duration::from_secs_f64(base * steering.rng().gen_range(0.5..1.5))
}

/// The first line of a message, at most 60 characters (error causes are
/// map keys: keep them few and short).
pub(crate) fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    line.chars().take(60).collect()
}

/// Bytes a connection moved, reported to the stats once a second.
struct Traffic {
    rx: u64,
    tx: u64,
    since: Instant,
}

impl Traffic {
    fn start(conn: &quinn::Connection) -> Traffic {
        let s = conn.stats();
        Traffic {
            rx: s.udp_rx.bytes,
            tx: s.udp_tx.bytes,
            since: Instant::now(),
        }
    }

    fn maybe_report(&mut self, ctx: &BotCtx, conn: &quinn::Connection) {
        if self.since.elapsed() >= Duration::from_secs(1) {
            self.report(ctx, conn);
        }
    }

    fn report(&mut self, ctx: &BotCtx, conn: &quinn::Connection) {
        let s = conn.stats();
        ctx.stats.quic_traffic(
            s.udp_rx.bytes.saturating_sub(self.rx),
            s.udp_tx.bytes.saturating_sub(self.tx),
            self.since.elapsed(),
        );
        self.rx = s.udp_rx.bytes;
        self.tx = s.udp_tx.bytes;
        self.since = Instant::now();
    }
}
