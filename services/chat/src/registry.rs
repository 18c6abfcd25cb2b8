//! Who is online where, and what each request does: a pure state machine, tested without
//! sockets. The server feeds it requests and carries out what it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::rules::{self, TokenBucket};
use crate::wire::{ChannelInfo, ChatLine, Delivery, LineKind, Reply, Request};
use crate::{ChatError, ChatLimits};

/// A router connection, numbered by the server.
pub(crate) type RouterKey = u64;

/// The time, both monotonic (rate limits) and wall clock (mutes, line stamps).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Clock {
            now: Instant::now(),
            unix_ms,
        }
    }
}

/// What the server must do after a request.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub reply: Reply,
    /// Frames for routers, in order.
    pub deliveries: Vec<(RouterKey, Delivery)>,
    /// Lines to append to history: (channel, line).
    pub history: Vec<(String, ChatLine)>,
    /// A mute to store: (lowercase name, until unix ms, or `None` to remove it).
    pub mute: Option<(String, Option<u64>)>,
}

impl Outcome {
    fn reply(reply: Reply) -> Outcome {
        Outcome {
            reply,
            deliveries: Vec::new(),
            history: Vec::new(),
            mute: None,
        }
    }

    fn failed(e: ChatError) -> Outcome {
        Outcome::reply(Reply::Failed(e))
    }
}

#[derive(Debug)]
struct Player {
    name: String,
    router: RouterKey,
    operator: bool,
    channels: BTreeSet<String>,
    bucket: TokenBucket,
}

#[derive(Debug)]
pub(crate) struct Registry {
    limits: ChatLimits,
    players: HashMap<u64, Player>,
    /// Lowercase name → player.
    by_name: HashMap<String, u64>,
    /// Lowercase name → muted until (unix ms).
    mutes: HashMap<String, u64>,
}

impl Registry {
    pub fn new(limits: ChatLimits) -> Registry {
        Registry {
            limits,
            players: HashMap::new(),
            by_name: HashMap::new(),
            mutes: HashMap::new(),
        }
    }

    pub fn online_count(&self) -> usize {
        self.players.len()
    }

    pub fn is_online(&self, player: u64) -> bool {
        self.players.contains_key(&player)
    }

    /// A mute read from the store. `keep_newer`: a mute already known wins (it may be newer
    /// than what the store had).
    pub fn load_mute(&mut self, name: &str, until_ms: u64, keep_newer: bool) {
        let name = rules::fold(name);
        if keep_newer && self.mutes.contains_key(&name) {
            return;
        }
        self.mutes.insert(name, until_ms);
    }

    /// The router's connection closed: its players go offline. Returns how many did.
    pub fn router_closed(&mut self, router: RouterKey) -> usize {
        let gone: Vec<u64> = self
            .players
            .iter()
            .filter(|(_, p)| p.router == router)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        gone.len()
    }

    fn remove(&mut self, player: u64) -> Option<Player> {
        let p = self.players.remove(&player)?;
        let folded = rules::fold(&p.name);
        if self.by_name.get(&folded) == Some(&player) {
            self.by_name.remove(&folded);
        }
        Some(p)
    }

    /// Tells the router of `player` (if online) that the player is muted
    /// until `until_unix_ms` (`None`: no longer), for their local speech.
    fn muted_delivery(
        &self,
        player: u64,
        until_unix_ms: Option<u64>,
    ) -> Option<(RouterKey, Delivery)> {
        let p = self.players.get(&player)?;
        Some((
            p.router,
            Delivery::Muted {
                player,
                until_unix_ms,
            },
        ))
    }

    fn muted_for(&mut self, name: &str, unix_ms: u64) -> Option<u64> {
        let folded = rules::fold(name);
        let until = *self.mutes.get(&folded)?;
        if until <= unix_ms {
            self.mutes.remove(&folded);
            return None;
        }
        Some(until - unix_ms)
    }

    /// Checks that `from` may send `raw` now; returns the sender's name and the clean text.
    fn admit(&mut self, from: u64, raw: &str, clock: Clock) -> Result<(String, String), ChatError> {
        let name = match self.players.get(&from) {
            Some(p) => p.name.clone(),
            None => return Err(ChatError::NotRegistered { player: from }),
        };
        if let Some(remaining_ms) = self.muted_for(&name, clock.unix_ms) {
            return Err(ChatError::Muted { remaining_ms });
        }
        let text = rules::message_text(raw)?;
        let p = self
            .players
            .get_mut(&from)
            .ok_or(ChatError::NotRegistered { player: from })?;
        p.bucket
            .take(clock.now)
            .map_err(|wait| ChatError::RateLimited {
                retry_after_ms: wait.as_millis().max(1) as u64,
            })?;
        Ok((name, text))
    }

    fn operator(&self, by: u64) -> Result<String, ChatError> {
        match self.players.get(&by) {
            None => Err(ChatError::NotRegistered { player: by }),
            Some(p) if !p.operator => Err(ChatError::NotOperator),
            Some(p) => Ok(p.name.clone()),
        }
    }

    /// One `Deliver` per router holding any of `to`.
    fn fan_out(
        &self,
        to: impl IntoIterator<Item = u64>,
        line: &ChatLine,
    ) -> Vec<(RouterKey, Delivery)> {
        let mut by_router: BTreeMap<RouterKey, BTreeSet<u64>> = BTreeMap::new();
        for id in to {
            if let Some(p) = self.players.get(&id) {
                by_router.entry(p.router).or_default().insert(id);
            }
        }
        by_router
            .into_iter()
            .map(|(router, ids)| {
                (
                    router,
                    Delivery::Deliver {
                        to: ids.into_iter().collect(),
                        line: line.clone(),
                    },
                )
            })
            .collect()
    }

    fn system_line(text: String, clock: Clock) -> ChatLine {
        ChatLine {
            kind: LineKind::System,
            from: String::new(),
            to: None,
            text,
            at_unix_ms: clock.unix_ms,
        }
    }

    /// Carries out every request but `Hello` and `History`, which the server answers itself.
    pub fn handle(&mut self, router: RouterKey, req: Request, clock: Clock) -> Outcome {
        match self.try_handle(router, req, clock) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::failed(e),
        }
    }

    fn try_handle(
        &mut self,
        router: RouterKey,
        req: Request,
        clock: Clock,
    ) -> Result<Outcome, ChatError> {
        Ok(match req {
            Request::Hello { .. } | Request::History { .. } => {
                return Err(ChatError::Protocol(format!(
                    "{} is not handled by the registry",
                    req.kind()
                )))
            }
            Request::Online {
                player,
                name,
                operator,
                channels,
            } => {
                let name = rules::clean(&name);
                if name.is_empty() {
                    return Err(ChatError::Protocol("a player name is empty".into()));
                }
                let folded = rules::fold(&name);
                if let Some(other) = self.by_name.get(&folded) {
                    if *other != player {
                        return Err(ChatError::NameTaken { name });
                    }
                }
                let channels = channels
                    .iter()
                    .filter_map(|c| rules::joinable_channel(c).ok())
                    .collect();
                let bucket = match self.remove(player) {
                    Some(old) => old.bucket,
                    None => TokenBucket::new(
                        self.limits.burst,
                        self.limits.refill_per_second,
                        clock.now,
                    ),
                };
                let muted = self.muted_for(&folded, clock.unix_ms);
                self.by_name.insert(folded, player);
                self.players.insert(
                    player,
                    Player {
                        name,
                        router,
                        operator,
                        channels,
                        bucket,
                    },
                );
                let mut outcome = Outcome::reply(Reply::Ok);
                if let Some(remaining_ms) = muted {
                    outcome.deliveries.extend(
                        self.muted_delivery(
                            player,
                            Some(clock.unix_ms.saturating_add(remaining_ms)),
                        ),
                    );
                }
                outcome
            }
            Request::Offline { player } => {
                // Only the router the player is registered on takes them offline: one
                // that lost the player to another (a resume) may still say goodbye.
                match self.players.get(&player) {
                    Some(p) if p.router != router => {
                        tracing::debug!(
                            player,
                            router,
                            holder = p.router,
                            "offline from a router that no longer holds the player ignored"
                        );
                    }
                    _ => {
                        self.remove(player);
                    }
                }
                Outcome::reply(Reply::Ok)
            }
            Request::Shout { from, text } => {
                let (name, text) = self.admit(from, &text, clock)?;
                let line = ChatLine {
                    kind: LineKind::Shout,
                    from: name,
                    to: None,
                    text,
                    at_unix_ms: clock.unix_ms,
                };
                let everyone: Vec<u64> = self.players.keys().copied().collect();
                Outcome {
                    reply: Reply::Delivered {
                        recipients: everyone.len() as u32,
                    },
                    deliveries: self.fan_out(everyone, &line),
                    history: vec![(rules::SHOUT_CHANNEL.to_string(), line)],
                    mute: None,
                }
            }
            Request::Tell {
                from,
                to_name,
                text,
            } => {
                if !self.players.contains_key(&from) {
                    return Err(ChatError::NotRegistered { player: from });
                }
                let target = *self
                    .by_name
                    .get(&rules::fold(rules::clean(&to_name).as_str()))
                    .ok_or_else(|| ChatError::NotOnline {
                        name: rules::clean(&to_name).chars().take(40).collect(),
                    })?;
                let (name, text) = self.admit(from, &text, clock)?;
                let to = self.players.get(&target).map(|p| p.name.clone());
                let line = ChatLine {
                    kind: LineKind::Tell,
                    from: name,
                    to,
                    text,
                    at_unix_ms: clock.unix_ms,
                };
                Outcome {
                    reply: Reply::Delivered { recipients: 1 },
                    deliveries: self.fan_out([target, from], &line),
                    history: Vec::new(),
                    mute: None,
                }
            }
            Request::Say {
                from,
                channel,
                text,
            } => {
                let channel = rules::joinable_channel(&channel)?;
                let member = self
                    .players
                    .get(&from)
                    .ok_or(ChatError::NotRegistered { player: from })?
                    .channels
                    .contains(&channel);
                if !member {
                    return Err(ChatError::NotInChannel { channel });
                }
                let (name, text) = self.admit(from, &text, clock)?;
                let line = ChatLine {
                    kind: LineKind::Channel(channel.clone()),
                    from: name,
                    to: None,
                    text,
                    at_unix_ms: clock.unix_ms,
                };
                let members: Vec<u64> = self
                    .players
                    .iter()
                    .filter(|(_, p)| p.channels.contains(&channel))
                    .map(|(id, _)| *id)
                    .collect();
                Outcome {
                    reply: Reply::Delivered {
                        recipients: members.len() as u32,
                    },
                    deliveries: self.fan_out(members, &line),
                    history: vec![(channel, line)],
                    mute: None,
                }
            }
            Request::Join { player, channel } => {
                let channel = rules::joinable_channel(&channel)?;
                self.players
                    .get_mut(&player)
                    .ok_or(ChatError::NotRegistered { player })?
                    .channels
                    .insert(channel);
                Outcome::reply(Reply::Ok)
            }
            Request::Leave { player, channel } => {
                let channel = rules::channel_name(&channel)?;
                self.players
                    .get_mut(&player)
                    .ok_or(ChatError::NotRegistered { player })?
                    .channels
                    .remove(&channel);
                Outcome::reply(Reply::Ok)
            }
            Request::Channels { player } => {
                let mine = &self
                    .players
                    .get(&player)
                    .ok_or(ChatError::NotRegistered { player })?
                    .channels;
                let infos = mine
                    .iter()
                    .map(|c| ChannelInfo {
                        name: c.clone(),
                        online: self
                            .players
                            .values()
                            .filter(|p| p.channels.contains(c))
                            .count() as u32,
                    })
                    .collect();
                Outcome::reply(Reply::Channels(infos))
            }
            Request::Mute { by, name, seconds } => {
                let by_name = self.operator(by)?;
                let name = rules::clean(&name);
                if name.is_empty() {
                    return Err(ChatError::NotOnline { name });
                }
                let until = clock
                    .unix_ms
                    .saturating_add(seconds.max(1).saturating_mul(1000));
                let folded = rules::fold(&name);
                self.mutes.insert(folded.clone(), until);
                let mut outcome = Outcome::reply(Reply::Ok);
                if let Some(&target) = self.by_name.get(&folded) {
                    let line = Self::system_line(
                        format!("{by_name} muted you for {} s.", seconds.max(1)),
                        clock,
                    );
                    outcome.deliveries = self.fan_out([target], &line);
                    outcome
                        .deliveries
                        .extend(self.muted_delivery(target, Some(until)));
                }
                outcome.mute = Some((folded, Some(until)));
                outcome
            }
            Request::Unmute { by, name } => {
                self.operator(by)?;
                let folded = rules::fold(&rules::clean(&name));
                self.mutes.remove(&folded);
                let mut outcome = Outcome::reply(Reply::Ok);
                if let Some(&target) = self.by_name.get(&folded) {
                    outcome.deliveries.extend(self.muted_delivery(target, None));
                }
                outcome.mute = Some((folded, None));
                outcome
            }
            Request::Kick { by, name, reason } => {
                let by_name = self.operator(by)?;
                let name = rules::clean(&name);
                let target =
                    *self
                        .by_name
                        .get(&rules::fold(&name))
                        .ok_or_else(|| ChatError::NotOnline {
                            name: name.chars().take(40).collect(),
                        })?;
                let reason = rules::clean(&reason);
                let text = if reason.is_empty() {
                    format!("You were kicked by {by_name}.")
                } else {
                    format!("You were kicked by {by_name}: {reason}")
                };
                let mut deliveries = self.fan_out([target], &Self::system_line(text, clock));
                if let Some(p) = self.remove(target) {
                    deliveries.push((
                        p.router,
                        Delivery::Kick {
                            player: target,
                            by: by_name,
                            reason,
                        },
                    ));
                }
                Outcome {
                    reply: Reply::Ok,
                    deliveries,
                    history: Vec::new(),
                    mute: None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(r: &mut Registry, router: RouterKey, player: u64, name: &str, op: bool) {
        let o = r.handle(
            router,
            Request::Online {
                player,
                name: name.into(),
                operator: op,
                channels: vec![],
            },
            Clock::now(),
        );
        assert_eq!(o.reply, Reply::Ok);
    }

    #[test]
    fn shout_goes_to_every_router_once() {
        let mut r = Registry::new(ChatLimits::default());
        online(&mut r, 1, 10, "Ann", false);
        online(&mut r, 1, 11, "Cat", false);
        online(&mut r, 2, 20, "Bob", false);
        let o = r.handle(
            1,
            Request::Shout {
                from: 10,
                text: " hello ".into(),
            },
            Clock::now(),
        );
        assert_eq!(o.reply, Reply::Delivered { recipients: 3 });
        assert_eq!(o.deliveries.len(), 2);
        match &o.deliveries[0] {
            (1, Delivery::Deliver { to, line }) => {
                assert_eq!(to, &vec![10, 11]);
                assert_eq!(line.render_for("Cat"), "Ann shouts, \"hello\"");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(o.history.len(), 1);
        assert_eq!(o.history[0].0, "shout");
    }

    #[test]
    fn names_are_unique_case_insensitively() {
        let mut r = Registry::new(ChatLimits::default());
        online(&mut r, 1, 10, "Ann", false);
        let o = r.handle(
            2,
            Request::Online {
                player: 11,
                name: "ANN".into(),
                operator: false,
                channels: vec![],
            },
            Clock::now(),
        );
        assert_eq!(
            o.reply,
            Reply::Failed(ChatError::NameTaken { name: "ANN".into() })
        );
        // The same player again (a router re-registering) is fine, and moves routers.
        online(&mut r, 2, 10, "Ann", false);
        assert_eq!(r.router_closed(1), 0);
        assert_eq!(r.router_closed(2), 1);
        assert_eq!(r.online_count(), 0);
    }

    #[test]
    fn offline_from_a_router_that_no_longer_holds_the_player_changes_nothing() {
        let mut r = Registry::new(ChatLimits::default());
        online(&mut r, 3, 30, "Cat", false);
        // Ann's session moves from router 1 to router 2 (a resume).
        online(&mut r, 1, 10, "Ann", false);
        online(&mut r, 2, 10, "Ann", false);
        // Router 1's late Offline: answered, but Ann stays on router 2.
        let o = r.handle(1, Request::Offline { player: 10 }, Clock::now());
        assert_eq!(o.reply, Reply::Ok);
        assert!(r.is_online(10));
        let tell = |r: &mut Registry| {
            r.handle(
                3,
                Request::Tell {
                    from: 30,
                    to_name: "ann".into(),
                    text: "still there?".into(),
                },
                Clock::now(),
            )
        };
        let o = tell(&mut r);
        assert_eq!(o.reply, Reply::Delivered { recipients: 1 });
        let to_ann: Vec<RouterKey> = o
            .deliveries
            .iter()
            .filter(|(_, d)| matches!(d, Delivery::Deliver { to, .. } if to.contains(&10)))
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(to_ann, vec![2], "the tell goes to router 2");
        // Router 2's Offline takes her offline.
        let o = r.handle(2, Request::Offline { player: 10 }, Clock::now());
        assert_eq!(o.reply, Reply::Ok);
        assert!(!r.is_online(10));
        assert!(matches!(
            tell(&mut r).reply,
            Reply::Failed(ChatError::NotOnline { .. })
        ));
    }

    #[test]
    fn muted_and_operator_rules() {
        let mut r = Registry::new(ChatLimits::default());
        online(&mut r, 1, 10, "Ann", true);
        online(&mut r, 1, 11, "Bob", false);
        let c = Clock::now();
        let o = r.handle(
            1,
            Request::Mute {
                by: 11,
                name: "Ann".into(),
                seconds: 60,
            },
            c,
        );
        assert_eq!(o.reply, Reply::Failed(ChatError::NotOperator));
        let o = r.handle(
            1,
            Request::Mute {
                by: 10,
                name: "bob".into(),
                seconds: 60,
            },
            c,
        );
        assert_eq!(o.reply, Reply::Ok);
        assert_eq!(o.mute, Some(("bob".into(), Some(c.unix_ms + 60_000))));
        // Bob's router is told, for his local speech.
        assert!(o.deliveries.contains(&(
            1,
            Delivery::Muted {
                player: 11,
                until_unix_ms: Some(c.unix_ms + 60_000)
            }
        )));
        // So is the router he comes back on while still muted.
        r.handle(1, Request::Offline { player: 11 }, c);
        let o = r.handle(
            2,
            Request::Online {
                player: 11,
                name: "Bob".into(),
                operator: false,
                channels: vec![],
            },
            c,
        );
        assert_eq!(
            o.deliveries,
            vec![(
                2,
                Delivery::Muted {
                    player: 11,
                    until_unix_ms: Some(c.unix_ms + 60_000)
                }
            )]
        );
        let o = r.handle(
            1,
            Request::Shout {
                from: 11,
                text: "hi".into(),
            },
            c,
        );
        assert_eq!(
            o.reply.clone(),
            Reply::Failed(ChatError::Muted {
                remaining_ms: 60_000
            })
        );
        let later = Clock {
            now: c.now,
            unix_ms: c.unix_ms + 60_000,
        };
        let o = r.handle(
            1,
            Request::Shout {
                from: 11,
                text: "hi".into(),
            },
            later,
        );
        assert!(matches!(o.reply, Reply::Delivered { .. }), "{o:?}");
    }
}
