//! One logged-in player, as both gateways drive it: login, entering the
//! world on the shard that owns the player's cell, following the player
//! across hand-offs, and leaving with the position saved.

use crate::{Playing, Router, RouterError};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::{Account, AuthError, Session};
use tessera_proto::cluster::{PlayerEvent, SessionRef, ToShard};
use tessera_proto::msg::Input;
use tessera_proto::{Compass, EntityId, PlayerId, RegionId, SessionId, ShardId, Vec3};
use tokio::sync::mpsc;

/// Lines a player may say at once ([`Player::say`]), as the chat
/// service allows for shouts and tells.
pub const SAY_BURST: u32 = 5;
/// Lines a second the allowance of [`SAY_BURST`] refills at.
pub const SAY_PER_SECOND: f64 = 1.0;
/// Commands a player may send at once before they are paced (a MUD
/// client's speedwalk sends a few dozen moves in one go).
pub const COMMAND_BURST: u32 = 60;
/// Commands a second a player is paced to beyond [`COMMAND_BURST`].
pub const COMMAND_PER_SECOND: f64 = 20.0;

/// How long the router waits for a shard to answer a join, step or leave.
const SHARD_ANSWER: Duration = Duration::from_secs(5);

/// Creates an account or checks a password, and starts a session. The
/// session's token is checked here with the account service's public key
/// (it must be the service's, for this account, and unexpired), and its
/// role is what the player may do.
pub async fn login(
    router: &Arc<Router>,
    create: bool,
    name: &str,
    password: &str,
    from: IpAddr,
) -> Result<Session, AuthError> {
    let mut session = if create {
        router.accounts.create(name, password, from).await?
    } else {
        router.accounts.login(name, password, from).await?
    };
    let claims = router.accounts.verify(&session.token).await?;
    if claims.account_id != session.account.id {
        tracing::error!(
            account = session.account.id,
            token_account = claims.account_id,
            "the account service answered a token for another account"
        );
        return Err(AuthError::TokenInvalid);
    }
    session.account.role = claims.role;
    Ok(session)
}

/// Logs in with the token of an earlier login, after a lost connection or a
/// router restart: valid, unexpired, and its session not logged out.
pub async fn resume(router: &Arc<Router>, token: &str) -> Result<Session, AuthError> {
    let claims = router.accounts.check_session(token).await?;
    Ok(Session {
        account: tessera_auth::Account {
            id: claims.account_id,
            name: claims.name,
            created_unix: 0,
            role: claims.role,
        },
        token: token.to_string(),
    })
}

/// A player in the world.
pub struct Player {
    pub router: Arc<Router>,
    pub session: SessionId,
    pub account: Account,
    /// The session's token (logged out when the player leaves).
    pub token: String,
    pub entity: EntityId,
    pub shard: ShardId,
    /// The incarnation `shard` had when the player was last known there: a
    /// shard restarted under the same id (kill -9 and a quick restart) has
    /// a new one and none of its entities.
    shard_incarnation: Option<i64>,
    /// The region (a whole cell, or a quadrant of a split one) the player
    /// was last simulated in.
    pub region: RegionId,
    /// Last position the shard told us (the view has fresher ones).
    pub pos: Vec3,
    events: mpsc::Receiver<PlayerEvent>,
    /// Events that arrived while waiting for a specific answer.
    pending: VecDeque<PlayerEvent>,
    /// When `pos` was last set from a direct answer.
    pos_at: std::time::Instant,
    left: bool,
    /// Local speech allowance ([`SAY_BURST`]).
    say_bucket: tessera_chat::rules::TokenBucket,
    /// Command allowance ([`COMMAND_BURST`]).
    command_bucket: tessera_chat::rules::TokenBucket,
    /// Leaving keeps the session (its token may `Resume`) instead of
    /// logging it out: set for QUIC players until they log out.
    pub keep_session: bool,
}

impl Player {
    /// Puts the account's avatar into the world at its saved position (or
    /// the spawn) and waits until its shard confirms.
    pub async fn enter(
        router: Arc<Router>,
        session: SessionId,
        mut events: mpsc::Receiver<PlayerEvent>,
        login: Session,
    ) -> Result<Player, (RouterError, mpsc::Receiver<PlayerEvent>)> {
        let Session { account, token } = login;
        let player = PlayerId(account.id);
        let entity = EntityId::for_player(player);
        if router.is_playing(player) {
            return Err((RouterError::AlreadyPlaying, events));
        }
        let saved = {
            let r = router.clone();
            match tokio::task::spawn_blocking(move || r.load_player(player)).await {
                Ok(Ok(saved)) => saved,
                // Entering at the spawn would later overwrite the saved position.
                Ok(Err(e)) => {
                    tracing::warn!(player = %player, error = %e, "cannot load the player record");
                    return Err((
                        RouterError::Unavailable(
                            "your character cannot be loaded right now; try again in a moment"
                                .into(),
                        ),
                        events,
                    ));
                }
                Err(_) => None,
            }
        };
        let pos = saved.map(|s| s.pos).unwrap_or_else(|| {
            crate::spawn_point(router.world.spawn, router.config.spawn_radius, player)
        });
        let pos = router.world.extent.clamp_position(&router.grid, pos);
        let Some((_, owner)) = router.map.owner_at(&router.grid, pos) else {
            let cell = router.grid.cell_of(pos);
            return Err((
                RouterError::Unavailable(format!("no shard simulates cell {cell} right now")),
                events,
            ));
        };
        let playing = Playing {
            player,
            name: account.name.clone(),
            entity,
            shard: owner.owner.clone(),
            pos,
        };
        if let Err(e) = router.set_playing(session, Some(playing)) {
            return Err((e, events));
        }
        let join = ToShard::Join {
            session: SessionRef {
                router: router.config.id.clone(),
                session,
            },
            player,
            name: account.name.clone(),
            pos,
        };
        if let Err(e) = router.to_shard(&owner.owner, join) {
            let _ = router.set_playing(session, None);
            return Err((e, events));
        }
        let mut pending = VecDeque::new();
        let answer = tokio::time::timeout(SHARD_ANSWER, async {
            while let Some(ev) = events.recv().await {
                match ev {
                    PlayerEvent::Joined {
                        pos, region, shard, ..
                    } => return Ok((pos, region, shard)),
                    PlayerEvent::Error { message } => return Err(message),
                    other => pending.push_back(other),
                }
            }
            Err("session closed".to_string())
        })
        .await;
        match answer {
            Ok(Ok((pos, region, shard))) => {
                router.update_playing(session, |p| {
                    p.shard = shard.clone();
                    p.pos = pos;
                });
                tracing::info!(session = %session, player = %player, region = %region, shard = %shard, "player entered the world");
                let shard_incarnation = router.bus.shard_incarnation(&shard);
                let operator = account.role == tessera_auth::Role::Operator;
                router.chat_online(player, &account.name, operator).await;
                Ok(Player {
                    router,
                    session,
                    account,
                    token,
                    entity,
                    shard_incarnation,
                    shard,
                    region,
                    pos,
                    events,
                    pending,
                    pos_at: std::time::Instant::now(),
                    left: false,
                    keep_session: false,
                    say_bucket: tessera_chat::rules::TokenBucket::new(
                        SAY_BURST,
                        SAY_PER_SECOND,
                        std::time::Instant::now(),
                    ),
                    command_bucket: tessera_chat::rules::TokenBucket::new(
                        COMMAND_BURST,
                        COMMAND_PER_SECOND,
                        std::time::Instant::now(),
                    ),
                })
            }
            Ok(Err(message)) => {
                let _ = router.set_playing(session, None);
                Err((RouterError::Unavailable(message), events))
            }
            Err(_) => {
                let _ = router.set_playing(session, None);
                Err((
                    RouterError::Unavailable("the world did not answer in time".into()),
                    events,
                ))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.account.name
    }

    /// If the shard simulating this player is gone (crashed; its cells were
    /// given to other shards), puts the player back into the world on the
    /// cell's new owner at the last known position. Returns a notice for
    /// the player when that happened, an error while the cell has no live
    /// owner yet.
    pub async fn ensure_in_world(&mut self) -> Result<Option<String>, RouterError> {
        let now = self.router.bus.shard_incarnation(&self.shard);
        if now.is_some() && now == self.shard_incarnation {
            return Ok(None);
        }
        let pos = self.position();
        let owner = match self
            .router
            .map
            .owner_at(&self.router.grid, pos)
            .map(|(_, o)| o)
        {
            // A live owner other than the dead process: another shard, or
            // the same id restarted (a new incarnation).
            Some(o)
                if self.router.bus.has_shard(&o.owner)
                    && (o.owner != self.shard || now != self.shard_incarnation) =>
            {
                o.owner
            }
            _ => {
                return Err(RouterError::Unavailable(
                    "the part of the world you are in is recovering; try again in a moment".into(),
                ))
            }
        };
        tracing::warn!(session = %self.session, from = %self.shard, to = %owner, "player's shard is gone; re-joining");
        let join = ToShard::Join {
            session: SessionRef {
                router: self.router.config.id.clone(),
                session: self.session,
            },
            player: PlayerId(self.account.id),
            name: self.account.name.clone(),
            pos,
        };
        self.router.to_shard(&owner, join)?;
        // The player counts as back only once the new owner says so (`observe` then records
        // its shard): a join lost on the way (the owner's map still named the dead shard and
        // passed it on there) is sent again on the next turn.
        self.wait_for(|ev| match ev {
            PlayerEvent::Joined { .. } => Some(()),
            _ => None,
        })
        .await?;
        metrics::counter!("tessera_router_rejoins_total").increment(1);
        Ok(Some(
            "[The world hiccuped and you blinked: you are back where you last stood.]".into(),
        ))
    }

    /// The player is simulated by `shard`, in its current incarnation.
    fn set_shard(&mut self, shard: &ShardId) {
        self.shard_incarnation = self.router.bus.shard_incarnation(shard);
        if *shard != self.shard {
            self.shard = shard.clone();
            let s = shard.clone();
            self.router.update_playing(self.session, |p| p.shard = s);
        }
    }

    /// Applies routing and position updates carried by an event.
    fn observe(&mut self, ev: &PlayerEvent) {
        match ev {
            PlayerEvent::OwnerChanged { region, shard } => {
                tracing::debug!(session = %self.session, region = %region, shard = %shard, "player handed over");
                self.region = *region;
                self.set_shard(shard);
            }
            PlayerEvent::StepDone {
                pos, region, shard, ..
            } => {
                self.set_pos(*pos);
                self.region = *region;
                self.set_shard(shard);
            }
            PlayerEvent::Left { pos } => self.set_pos(*pos),
            PlayerEvent::Joined {
                pos, region, shard, ..
            } => {
                self.set_pos(*pos);
                self.region = *region;
                self.set_shard(shard);
            }
            _ => {}
        }
    }

    /// The next event for this player (speech, hand-offs, ...). Routing
    /// updates are applied before the event is returned.
    pub async fn next_event(&mut self) -> Option<PlayerEvent> {
        let ev = match self.pending.pop_front() {
            Some(ev) => ev,
            None => self.events.recv().await?,
        };
        self.observe(&ev);
        Some(ev)
    }

    fn send(&self, msg: ToShard) -> Result<(), RouterError> {
        self.router.to_shard(&self.shard, msg)
    }

    /// Waits for the first event `pick` accepts, keeping the others.
    async fn wait_for<T>(
        &mut self,
        mut pick: impl FnMut(&PlayerEvent) -> Option<T>,
    ) -> Result<T, RouterError> {
        let deadline = tokio::time::Instant::now() + SHARD_ANSWER;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| RouterError::Unavailable("the world did not answer in time".into()))?
                .ok_or_else(|| RouterError::Unavailable("session closed".into()))?;
            self.observe(&ev);
            if let Some(t) = pick(&ev) {
                return Ok(t);
            }
            if let PlayerEvent::Error { message } = &ev {
                return Err(RouterError::Unavailable(message.clone()));
            }
            self.pending.push_back(ev);
        }
    }

    /// One step of a text player; returns the new position and whether
    /// something blocked the way.
    pub async fn step(&mut self, dir: Compass) -> Result<(Vec3, bool), RouterError> {
        self.send(ToShard::Step {
            entity: self.entity,
            dir,
        })?;
        self.wait_for(|ev| match ev {
            PlayerEvent::StepDone { pos, blocked, .. } => Some((*pos, *blocked)),
            _ => None,
        })
        .await
    }

    /// Waits until the player's command allowance ([`COMMAND_BURST`],
    /// refilled at [`COMMAND_PER_SECOND`]) has room for one more, as MUDs
    /// pace a flood of commands: nothing is refused, the flooder's commands
    /// just run at that rate, and while it waits its connection reads no
    /// more (so a script that floods fills its own socket, not the router).
    pub async fn pace_command(&mut self) {
        let mut counted = false;
        while let Err(wait) = self.command_bucket.take(std::time::Instant::now()) {
            if !counted {
                metrics::counter!("tessera_router_commands_paced_total").increment(1);
                counted = true;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Local speech: refused while the chat service has the player muted,
    /// and beyond [`SAY_BURST`] lines, refilled at [`SAY_PER_SECOND`].
    pub fn say(&mut self, text: &str) -> Result<(), RouterError> {
        let now_ms = tessera_coordinator::migration::now_unix_ms();
        if let Some(left_ms) = self.router.muted_for(PlayerId(self.account.id), now_ms) {
            return Err(RouterError::Refused(format!(
                "You are muted for {} more s.",
                left_ms.div_ceil(1000)
            )));
        }
        if let Err(wait) = self.say_bucket.take(std::time::Instant::now()) {
            metrics::counter!("tessera_router_say_refused_total").increment(1);
            return Err(RouterError::Refused(format!(
                "You are speaking too fast; wait {} s.",
                wait.as_secs_f64().ceil().max(1.0) as u64
            )));
        }
        self.send(ToShard::Say {
            entity: self.entity,
            text: text.to_string(),
        })
    }

    pub fn input(&self, input: Input) -> Result<(), RouterError> {
        self.send(ToShard::Input {
            entity: self.entity,
            input: input.sanitized(),
        })
    }

    fn set_pos(&mut self, pos: Vec3) {
        self.pos = pos;
        self.pos_at = std::time::Instant::now();
        self.router.update_playing(self.session, |pl| pl.pos = pos);
    }

    /// The freshest known position: a frame that arrived after the shard's
    /// last direct answer (step, join) or the last frame seen here, else
    /// that answer. Frames and answers come from a shard in the order it
    /// produced them. Each call remembers what it found, so a player who
    /// only sends inputs (QUIC) is followed however far they walk.
    pub fn position(&mut self) -> Vec3 {
        self.router.view.follow(
            &self.router.grid,
            self.entity,
            &mut self.pos,
            &mut self.pos_at,
        )
    }

    /// Where a frame that arrived at `at` showed the player, found by
    /// someone else's search (a snapshot's [`WorldView::nearest_to`]):
    /// taken as [`Player::position`] would take it, if it is newer than
    /// what is known.
    ///
    /// [`WorldView::nearest_to`]: crate::WorldView::nearest_to
    pub fn saw(&mut self, pos: Vec3, at: std::time::Instant) {
        crate::view::take_if_newer(&mut self.pos, &mut self.pos_at, pos, at);
    }

    /// Takes the avatar out of the world and saves where it was.
    pub async fn leave(mut self) {
        self.leave_inner().await;
    }

    async fn leave_inner(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        let mut pos = self.position();
        if self
            .send(ToShard::Leave {
                entity: self.entity,
                session: SessionRef {
                    router: self.router.config.id.clone(),
                    session: self.session,
                },
            })
            .is_ok()
        {
            match self
                .wait_for(|ev| match ev {
                    PlayerEvent::Left { pos } => Some(*pos),
                    _ => None,
                })
                .await
            {
                Ok(p) => pos = p,
                Err(e) => {
                    tracing::warn!(session = %self.session, error = %e, "no answer to leave; saving the last known position")
                }
            }
        }
        let player = PlayerId(self.account.id);
        let r = self.router.clone();
        let saved = tokio::task::spawn_blocking(move || r.save_player(player, pos)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::error!(player = %player, "cannot save player on leave");
        }
        let _ = self.router.set_playing(self.session, None);
        self.router.chat_offline(player).await;
        if !self.keep_session {
            if let Err(e) = self.router.accounts.logout(&self.token).await {
                tracing::warn!(player = %player, error = %e, "cannot end the session");
            }
        }
        tracing::info!(session = %self.session, player = %player, "player left the world");
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        if !self.left {
            // The connection died without a goodbye: leave in the background.
            let router = self.router.clone();
            let entity = self.entity;
            let shard = self.shard.clone();
            let player = PlayerId(self.account.id);
            let session = self.session;
            let pos = self.position();
            let leave = ToShard::Leave {
                entity,
                session: SessionRef {
                    router: router.config.id.clone(),
                    session,
                },
            };
            let _ = router.to_shard(&shard, leave);
            let r = router.clone();
            std::thread::spawn(move || {
                if let Err(e) = r.save_player(player, pos) {
                    tracing::error!(player = %player, error = %e, "cannot save player");
                }
            });
            let _ = router.set_playing(session, None);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let token = std::mem::take(&mut self.token);
                let keep = self.keep_session;
                let router = router.clone();
                rt.spawn(async move {
                    router.chat_offline(player).await;
                    if keep {
                        return;
                    }
                    if let Err(e) = router.accounts.logout(&token).await {
                        tracing::warn!(player = %player, error = %e, "cannot end the session");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod rejoin_tests {
    use super::*;
    use crate::{Router, RouterConfig};
    use tessera_coordinator::{Bus, CellMap, CellOwner, LocalBus};
    use tessera_proto::world::parse_world;
    use tessera_proto::{CellId, Epoch, RouterId};

    const WORLD: &str = r#"
name = "Rejoin"
cell_size = 64
spawn = [32, 0, 32]
[extent]
min = [0, 0]
max = [1, 0]
"#;

    fn owner(shard: &str, epoch: u64) -> CellOwner {
        CellOwner {
            owner: ShardId::new(shard),
            epoch: Epoch(epoch),
        }
    }

    /// The next message shard `inbox` gets within 10 s.
    async fn next_message(inbox: &crossbeam_channel::Receiver<ToShard>) -> ToShard {
        let inbox = inbox.clone();
        tokio::task::spawn_blocking(move || inbox.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the shard got no message")
    }

    fn joined(shard: &str) -> PlayerEvent {
        PlayerEvent::Joined {
            entity: EntityId::for_player(PlayerId(1)),
            pos: Vec3::new(32.0, 0.0, 32.0),
            region: RegionId::cell(CellId::new(0, 0)),
            shard: ShardId::new(shard),
        }
    }

    /// After its shard died, a player is joined on the cell's new owner. When that join is
    /// lost (the new owner's map still named the dead shard and passed it on there), the
    /// router asks again rather than taking the player for back in the world.
    #[tokio::test]
    async fn a_rejoin_that_got_no_answer_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = tessera_persistence::Database::open_redb(&dir.path().join("db.redb")).unwrap();
        let auth = tessera_auth::Auth::open(db.clone(), &dir.path().join("auth.key")).unwrap();
        let world = Arc::new(parse_world(WORLD).unwrap());
        let bus = LocalBus::new();
        let a = bus.add_shard(ShardId::new("a"));
        let b = bus.add_shard(ShardId::new("b"));
        let _router_inbox = bus.add_router(RouterId("r".into()));
        let map = CellMap::fixed([
            (CellId::new(0, 0), owner("a", 1)),
            (CellId::new(1, 0), owner("b", 1)),
        ]);
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let router = Router::new(
            RouterConfig::new(RouterId("r".into()), dir.path().to_path_buf()),
            world,
            dyn_bus,
            map.clone(),
            tessera_auth::Accounts::local(Arc::new(auth)),
            None,
            db,
        );
        let (events_tx, events) = mpsc::channel(64);
        let login = Session {
            account: Account {
                id: 1,
                name: "Ann".into(),
                created_unix: 0,
                role: Default::default(),
            },
            token: "token".into(),
        };
        let entering = tokio::spawn(Player::enter(router, SessionId(1), events, login));
        assert!(matches!(next_message(&a).await, ToShard::Join { .. }));
        events_tx.send(joined("a")).await.unwrap();
        let mut player = entering.await.unwrap().map_err(|(e, _)| e).unwrap();
        assert_eq!(player.ensure_in_world().await.unwrap(), None);

        // Shard a dies; b gets its cell.
        bus.remove_shard(&ShardId::new("a"));
        map.set(CellId::new(0, 0), owner("b", 2));
        // The first re-join is lost on the way.
        let first = player.ensure_in_world().await;
        assert!(first.is_err(), "{first:?}");
        assert!(matches!(next_message(&b).await, ToShard::Join { .. }));
        // The next turn asks again, and b answers.
        let answer = events_tx.clone();
        let again = tokio::spawn(async move {
            let msg = next_message(&b).await;
            answer.send(joined("b")).await.unwrap();
            msg
        });
        let notice = player.ensure_in_world().await.unwrap();
        assert!(notice.is_some_and(|n| n.contains("back where you last stood")));
        assert!(matches!(again.await.unwrap(), ToShard::Join { .. }));
        assert_eq!(player.shard, ShardId::new("b"));
        assert_eq!(player.ensure_in_world().await.unwrap(), None);
    }
}
