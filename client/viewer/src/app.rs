//! The window: login prompt, world rendering, movement with prediction,
//! chat panel, debug overlay, screenshots.

use crate::net::{self, NetCmd, NetEvent, Session};
use crate::Args;
use macroquad::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tessera_client::interp::Interpolator;
use tessera_client::predict::Predictor;
use tessera_client::{ClientEvent, LoggedIn};
use tessera_proto::msg::{render_chat, ChatKind, EntityKind, Secret};
use tessera_proto::world::WorldDef;
use tessera_proto::{CellId, EntityId, Grid, ShardId, Vec3 as TVec3};

/// Colours (flat, unlit, so a test can find them in a screenshot).
pub const OTHER_PLAYER: Color = Color::new(0.95, 0.45, 0.10, 1.0);
pub const OWN_PLAYER: Color = Color::new(0.20, 0.55, 0.95, 1.0);
pub const NPC: Color = Color::new(0.85, 0.80, 0.25, 1.0);
const SKY: Color = Color::new(0.62, 0.78, 0.92, 1.0);
const GRASS: Color = Color::new(0.36, 0.55, 0.30, 1.0);
const OUTSIDE: Color = Color::new(0.25, 0.33, 0.25, 1.0);

const CHAT_KEEP: usize = 300;
const CHAT_SHOWN: usize = 9;
const BUBBLE_SECONDS: f64 = 6.0;
const CAMERA_DISTANCE: f32 = 7.0;

fn v(p: TVec3) -> Vec3 {
    vec3(p.x, p.y, p.z)
}

/// Facing (radians, 0 = north = -Z, clockwise) to a ground direction.
fn forward(yaw: f32) -> Vec3 {
    vec3(yaw.sin(), 0.0, -yaw.cos())
}

fn shade(c: Color, f: f32) -> Color {
    Color::new(c.r * f, c.g * f, c.b * f, c.a)
}

/// One line of the chat panel.
struct ChatLine {
    text: String,
    color: Color,
}

enum Stage {
    /// Asking for name and password in the window.
    Prompt {
        name: String,
        password: String,
        on_password: bool,
        error: Option<String>,
    },
    Connecting {
        name: String,
        events: std::sync::mpsc::Receiver<NetEvent>,
        sessions: std::sync::mpsc::Receiver<Session>,
        cmds: tokio::sync::mpsc::UnboundedSender<NetCmd>,
        since: Instant,
    },
    Playing(Box<Play>),
}

pub async fn run(args: Args, world: Option<WorldDef>) {
    let meshes = world.as_ref().map(static_meshes).unwrap_or_default();
    let mut app = App {
        stage: match (&args.name, &args.password) {
            (Some(n), Some(p)) => start(&args, n.clone(), p.clone()),
            _ => Stage::Prompt {
                name: args.name.clone().unwrap_or_default(),
                password: String::new(),
                on_password: args.name.is_some(),
                error: None,
            },
        },
        args,
        world,
        meshes,
        start: Instant::now(),
    };
    loop {
        app.frame();
        next_frame().await;
    }
}

fn start(args: &Args, name: String, password: Secret) -> Stage {
    let (cmds, events, sessions) = net::spawn(args.login(name.clone(), password));
    Stage::Connecting {
        name,
        events,
        sessions,
        cmds,
        since: Instant::now(),
    }
}

struct App {
    args: Args,
    world: Option<WorldDef>,
    meshes: Vec<Mesh>,
    stage: Stage,
    start: Instant,
}

impl App {
    fn frame(&mut self) {
        clear_background(SKY);
        let mut next: Option<Stage> = None;
        match &mut self.stage {
            Stage::Prompt {
                name,
                password,
                on_password,
                error,
            } => {
                while let Some(c) = get_char_pressed() {
                    let field = if *on_password {
                        &mut *password
                    } else {
                        &mut *name
                    };
                    if !c.is_control() && field.len() < 64 {
                        field.push(c);
                    }
                }
                if is_key_pressed(KeyCode::Backspace) {
                    if *on_password {
                        password.pop();
                    } else {
                        name.pop();
                    }
                }
                if is_key_pressed(KeyCode::Tab) {
                    *on_password = !*on_password;
                }
                if is_key_pressed(KeyCode::F2) {
                    self.args.create = !self.args.create;
                }
                if is_key_pressed(KeyCode::Enter) {
                    if !*on_password {
                        *on_password = true;
                    } else if !name.is_empty() && !password.is_empty() {
                        next = Some(start(&self.args, name.clone(), password.clone().into()));
                    }
                }
                draw_prompt(
                    name,
                    password,
                    *on_password,
                    self.args.create,
                    error.as_deref(),
                    &self.args.quic,
                );
            }
            Stage::Connecting {
                name,
                events,
                sessions,
                cmds,
                since,
            } => {
                let msg = format!("Connecting to {} as {name}...", self.args.quic);
                draw_centered(&msg, screen_height() / 2.0, 28.0, WHITE);
                match events.try_recv() {
                    Ok(NetEvent::LoggedIn(me)) => match sessions.try_recv() {
                        Ok(session) => {
                            next = Some(Stage::Playing(Box::new(Play::new(
                                *me,
                                session,
                                cmds.clone(),
                                std::mem::replace(events, std::sync::mpsc::channel().1),
                                &self.args,
                                self.world.as_ref(),
                                self.start,
                            ))));
                        }
                        Err(_) => {
                            next =
                                Some(self.failed("the network thread lost the session".into(), 1));
                        }
                    },
                    Ok(NetEvent::StartFailed(msg, code)) => next = Some(self.failed(msg, code)),
                    Ok(_) => {}
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        if since.elapsed().as_secs_f32() > self.args.connect_timeout + 40.0 {
                            next = Some(self.failed("the login took too long".into(), 1));
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        next = Some(self.failed("the network thread stopped".into(), 1));
                    }
                }
            }
            Stage::Playing(play) => {
                play.frame(&self.args, self.world.as_ref(), &self.meshes, self.start);
            }
        }
        if let Some(s) = next {
            self.stage = s;
        }
    }

    /// A failed start: scripts get an exit code, people get the prompt back.
    fn failed(&self, msg: String, code: i32) -> Stage {
        eprintln!("tessera-client: {msg}");
        if self.args.screenshot.is_some() || self.args.password.is_some() {
            std::process::exit(code.max(1));
        }
        Stage::Prompt {
            name: self.args.name.clone().unwrap_or_default(),
            password: String::new(),
            on_password: false,
            error: Some(msg),
        }
    }
}

fn draw_centered(text: &str, y: f32, size: f32, color: Color) {
    let d = measure_text(text, None, size as u16, 1.0);
    draw_text(text, (screen_width() - d.width) / 2.0, y, size, color);
}

fn draw_prompt(
    name: &str,
    password: &str,
    on_password: bool,
    create: bool,
    error: Option<&str>,
    addr: &str,
) {
    let y = screen_height() / 2.0 - 80.0;
    draw_centered("Tessera", y, 48.0, WHITE);
    draw_centered(&format!("server {addr}"), y + 30.0, 20.0, DARKGRAY);
    let cursor = |on: bool| if on { "_" } else { "" };
    draw_centered(
        &format!("Name: {name}{}", cursor(!on_password)),
        y + 70.0,
        28.0,
        BLACK,
    );
    let stars: String = "*".repeat(password.chars().count());
    draw_centered(
        &format!("Password: {stars}{}", cursor(on_password)),
        y + 104.0,
        28.0,
        BLACK,
    );
    let mode = if create {
        "creating a new character (F2: log in instead)"
    } else {
        "logging in (F2: create a new character)"
    };
    draw_centered(mode, y + 136.0, 20.0, DARKGRAY);
    draw_centered(
        "Tab switches field, Enter goes on",
        y + 160.0,
        20.0,
        DARKGRAY,
    );
    if let Some(e) = error {
        draw_centered(e, y + 200.0, 20.0, MAROON);
    }
}

/// A hand-off or migration the player went through.
struct Transition {
    at: f64,
    text: String,
}

/// Link statistics over the last second.
#[derive(Default)]
struct LinkStats {
    window_start: f64,
    rx0: u64,
    tx0: u64,
    sent0: u64,
    lost0: u64,
    rx_per_s: f64,
    tx_per_s: f64,
    loss: f64,
}

struct Play {
    me: LoggedIn,
    session: Session,
    cmds: tokio::sync::mpsc::UnboundedSender<NetCmd>,
    events: std::sync::mpsc::Receiver<NetEvent>,
    predictor: Predictor,
    interp: Interpolator,
    grid: Grid,
    yaw: f32,
    pitch: f32,
    last_mouse: Option<Vec2>,
    grabbed: bool,
    input_acc: f32,
    seen: HashMap<EntityId, Instant>,
    self_seen: Option<Instant>,
    chat: VecDeque<ChatLine>,
    scroll: usize,
    typing: Option<String>,
    bubbles: HashMap<EntityId, (String, f64)>,
    debug: bool,
    transitions: VecDeque<Transition>,
    cell: CellId,
    shard: ShardId,
    closed: Option<String>,
    link: LinkStats,
    frame_times: VecDeque<f32>,
    first_snapshot: Option<f64>,
    looked: bool,
    frames: u64,
    frame_time_sum: f64,
    last_correction: f32,
}

/// An entity to draw this frame.
struct Drawn {
    id: EntityId,
    kind: EntityKind,
    name: String,
    pos: TVec3,
    yaw: f32,
}

impl Play {
    fn new(
        me: LoggedIn,
        session: Session,
        cmds: tokio::sync::mpsc::UnboundedSender<NetCmd>,
        events: std::sync::mpsc::Receiver<NetEvent>,
        args: &Args,
        world: Option<&WorldDef>,
        start: Instant,
    ) -> Play {
        let cell_size = world.map(|w| w.cell_size).unwrap_or(64.0);
        let mut chat = VecDeque::new();
        chat.push_back(ChatLine {
            text: format!(
                "Welcome, {}. WASD: walk, mouse or arrows: look, Enter: chat, /: command, F3: debug.",
                me.name
            ),
            color: WHITE,
        });
        Play {
            predictor: Predictor::new(me.pos),
            interp: Interpolator::new(me.tick_hz),
            grid: Grid::new(cell_size),
            yaw: 0.0,
            pitch: 0.35,
            last_mouse: None,
            grabbed: false,
            input_acc: 0.0,
            seen: HashMap::new(),
            self_seen: None,
            chat,
            scroll: 0,
            typing: None,
            bubbles: HashMap::new(),
            debug: args.debug,
            transitions: VecDeque::new(),
            cell: me.cell,
            shard: me.shard.clone(),
            closed: None,
            link: LinkStats {
                window_start: start.elapsed().as_secs_f64(),
                ..Default::default()
            },
            frame_times: VecDeque::new(),
            first_snapshot: None,
            looked: args.look_at.is_none(),
            frames: 0,
            frame_time_sum: 0.0,
            last_correction: 0.0,
            me,
            session,
            cmds,
            events,
        }
    }

    fn say_line(&mut self, text: String, color: Color) {
        for l in text.lines() {
            self.chat.push_back(ChatLine {
                text: l.to_string(),
                color,
            });
        }
        while self.chat.len() > CHAT_KEEP {
            self.chat.pop_front();
        }
        self.scroll = 0;
    }

    fn handle_events(&mut self, now: f64) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                NetEvent::Event(ev) => self.handle_event(ev, now),
                NetEvent::Answer(text) => {
                    if !text.is_empty() {
                        self.say_line(text, Color::new(0.85, 0.85, 0.85, 1.0));
                    }
                }
                NetEvent::Resumed(me, session) => {
                    // Same player, new connection: start prediction and
                    // interpolation afresh from where the server put us.
                    self.session = *session;
                    self.predictor = Predictor::new(me.pos);
                    self.interp = Interpolator::new(me.tick_hz);
                    self.seen.clear();
                    self.self_seen = None;
                    self.cell = me.cell;
                    self.shard = me.shard.clone();
                    self.me = *me;
                    self.say_line("Reconnected.".into(), WHITE);
                    println!("resumed the session after a router restart");
                }
                NetEvent::Closed(why) => {
                    self.say_line(format!("Disconnected: {why}"), RED);
                    self.closed = Some(why);
                }
                NetEvent::LoggedIn(_) | NetEvent::StartFailed(..) => {}
            }
        }
    }

    fn handle_event(&mut self, ev: ClientEvent, now: f64) {
        match ev {
            ClientEvent::Chat {
                from,
                entity,
                text,
                emote,
            } => {
                let line = tessera_proto::msg::render_heard(&from, &text, emote);
                if let Some(id) = entity {
                    let bubble = if emote {
                        format!("*{text}*")
                    } else {
                        text.clone()
                    };
                    self.bubbles.insert(id, (bubble, now + BUBBLE_SECONDS));
                }
                self.say_line(line, WHITE);
            }
            ClientEvent::Text(t) | ClientEvent::Notice(t) => {
                self.say_line(t, Color::new(0.85, 0.85, 0.85, 1.0))
            }
            ClientEvent::ChatLine {
                kind,
                from,
                to,
                text,
            } => {
                let color = match kind {
                    ChatKind::Shout => Color::new(1.0, 0.75, 0.4, 1.0),
                    ChatKind::Tell => Color::new(0.9, 0.6, 1.0, 1.0),
                    ChatKind::Channel(_) => Color::new(0.6, 0.9, 1.0, 1.0),
                    ChatKind::System => Color::new(0.8, 0.8, 0.8, 1.0),
                };
                let line = render_chat(&kind, &from, to.as_deref(), &text, &self.me.name);
                self.say_line(line, color);
            }
            ClientEvent::Error { message, .. } => {
                self.say_line(message, Color::new(1.0, 0.5, 0.5, 1.0))
            }
            ClientEvent::Gone(id) => {
                self.interp.remove(id);
                self.seen.remove(&id);
            }
            ClientEvent::CellChanged { cell, shard } => {
                let text = if cell == self.cell {
                    format!(
                        "migration: cell {cell} moved from {} to {shard}",
                        self.shard
                    )
                } else if shard == self.shard {
                    format!("hand-off: cell {} -> {cell} (on {shard})", self.cell)
                } else {
                    format!(
                        "hand-off: cell {} on {} -> cell {cell} on {shard}",
                        self.cell, self.shard
                    )
                };
                self.transitions.push_back(Transition { at: now, text });
                while self.transitions.len() > 6 {
                    self.transitions.pop_front();
                }
                self.cell = cell;
                self.shard = shard;
            }
            // GMCP is for telnet gateways' relayed sessions only.
            ClientEvent::Appeared(_) | ClientEvent::Pong(_) | ClientEvent::Gmcp { .. } => {}
            ClientEvent::Closed(why) => {
                self.closed = Some(why);
            }
        }
    }

    fn send_line(&mut self, line: String) {
        let line = line.trim().to_string();
        if line.is_empty() {
            return;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            self.say_line(format!("> {cmd}"), GRAY);
            let _ = self.cmds.send(NetCmd::Command(cmd.to_string()));
        } else {
            // The speaker does not hear their own speech (docs/protocol.md).
            self.say_line(format!("You say, \"{line}\""), WHITE);
            self.bubbles
                .insert(self.me.entity, (line.clone(), get_time() + BUBBLE_SECONDS));
            let _ = self.cmds.send(NetCmd::Say(line));
        }
    }

    /// Keyboard and mouse; returns the desired ground movement (x, z).
    fn controls(&mut self, dt: f32, screenshot: bool, walking: bool) -> (f32, f32) {
        if is_key_pressed(KeyCode::F3) {
            self.debug = !self.debug;
        }
        if is_key_pressed(KeyCode::PageUp) {
            self.scroll =
                (self.scroll + CHAT_SHOWN).min(self.chat.len().saturating_sub(CHAT_SHOWN));
        }
        if is_key_pressed(KeyCode::PageDown) {
            self.scroll = self.scroll.saturating_sub(CHAT_SHOWN);
        }
        if let Some(mut line) = self.typing.take() {
            while let Some(c) = get_char_pressed() {
                if !c.is_control() && line.len() < 500 {
                    line.push(c);
                }
            }
            if is_key_pressed(KeyCode::Backspace) {
                line.pop();
            }
            if is_key_pressed(KeyCode::Enter) {
                self.send_line(line);
            } else if !is_key_pressed(KeyCode::Escape) {
                self.typing = Some(line);
            }
            return (0.0, 0.0);
        }
        // Drop characters typed while walking.
        while get_char_pressed().is_some() {}
        if is_key_pressed(KeyCode::Enter) {
            self.typing = Some(String::new());
        } else if is_key_pressed(KeyCode::Slash) {
            self.typing = Some("/".into());
        }
        if !screenshot {
            if is_mouse_button_pressed(MouseButton::Left) && !self.grabbed {
                self.grabbed = true;
                set_cursor_grab(true);
                show_mouse(false);
                self.last_mouse = None;
            }
            if is_key_pressed(KeyCode::Escape) && self.grabbed {
                self.grabbed = false;
                set_cursor_grab(false);
                show_mouse(true);
            }
        }
        let mouse = Vec2::from(mouse_position());
        if let Some(last) = self.last_mouse {
            if self.grabbed || is_mouse_button_down(MouseButton::Right) {
                let d = mouse - last;
                self.yaw += d.x * 0.004;
                self.pitch = (self.pitch + d.y * 0.003).clamp(-0.3, 1.3);
            }
        }
        self.last_mouse = Some(mouse);
        if is_key_down(KeyCode::Left) || is_key_down(KeyCode::Q) {
            self.yaw -= 2.0 * dt;
        }
        if is_key_down(KeyCode::Right) || is_key_down(KeyCode::E) {
            self.yaw += 2.0 * dt;
        }
        self.yaw = self.yaw.rem_euclid(std::f32::consts::TAU);
        let mut ahead = 0.0;
        let mut side = 0.0;
        if walking || is_key_down(KeyCode::W) || is_key_down(KeyCode::Up) {
            ahead += 1.0;
        }
        if is_key_down(KeyCode::S) || is_key_down(KeyCode::Down) {
            ahead -= 1.0;
        }
        if is_key_down(KeyCode::D) {
            side += 1.0;
        }
        if is_key_down(KeyCode::A) {
            side -= 1.0;
        }
        let f = forward(self.yaw);
        let r = vec3(-f.z, 0.0, f.x);
        let m = f * ahead + r * side;
        let len = m.length();
        if len > 1.0 {
            (m.x / len, m.z / len)
        } else {
            (m.x, m.z)
        }
    }

    fn frame(&mut self, args: &Args, world: Option<&WorldDef>, meshes: &[Mesh], start: Instant) {
        let dt = get_frame_time().clamp(0.0, 0.25);
        let now = start.elapsed().as_secs_f64();
        let secs = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
        self.frames += 1;
        self.frame_time_sum += dt as f64;
        self.frame_times.push_back(dt);
        if self.frame_times.len() > 120 {
            self.frame_times.pop_front();
        }
        self.handle_events(get_time());
        let walking = self
            .first_snapshot
            .is_some_and(|first| now - first < args.walk as f64);
        let (mx, mz) = self.controls(dt, args.screenshot.is_some(), walking);

        // What the network brought: reconcile the own avatar, feed others
        // to the interpolator.
        let mut drawn = Vec::new();
        let (entity_count, snapshot_age) = {
            let w = self.session.world.lock();
            if let Some(e) = w.entities.get(&self.me.entity) {
                if e.tick > 0 && self.self_seen != Some(e.updated) {
                    self.self_seen = Some(e.updated);
                    let c = self.predictor.reconcile(e.pos, w.ack_input);
                    self.last_correction = c.error;
                }
            }
            for e in w.entities.values() {
                if e.id == self.me.entity {
                    continue;
                }
                if e.tick > 0 && self.seen.get(&e.id) != Some(&e.updated) {
                    self.seen.insert(e.id, e.updated);
                    self.interp
                        .push(e.id, e.tick, secs(e.updated), e.pos, e.vel, e.yaw);
                }
                drawn.push(Drawn {
                    id: e.id,
                    kind: e.kind,
                    name: e.name.clone(),
                    pos: e.pos,
                    yaw: e.yaw,
                });
            }
            if w.self_updated.is_some() && self.first_snapshot.is_none() {
                self.first_snapshot = Some(now);
            }
            (
                w.entities.len(),
                w.self_updated.map(|t| t.elapsed().as_secs_f64()),
            )
        };
        self.interp.retain(|id| drawn.iter().any(|d| d.id == id));

        // Movement: one input per tick, at most one per frame.
        self.predictor.advance(dt);
        let tick_dt = 1.0 / self.me.tick_hz.max(1) as f32;
        self.input_acc += dt;
        if self.closed.is_none() && self.input_acc >= tick_dt {
            self.input_acc = (self.input_acc - tick_dt).min(tick_dt);
            let input = self.session.send_input(mx, mz, self.yaw);
            self.predictor.push_input(input);
        }

        self.interp.begin_frame(now);
        for d in &mut drawn {
            if let Some(p) = self.interp.pose(d.id) {
                d.pos = p.pos;
                d.yaw = p.yaw;
            }
        }
        if !self.looked {
            if let Some(target) = args.look_at.as_deref() {
                if let Some(d) = drawn.iter().find(|d| d.name.eq_ignore_ascii_case(target)) {
                    let me = self.predictor.position();
                    let (dx, dz) = (d.pos.x - me.x, d.pos.z - me.z);
                    if dx.abs() + dz.abs() > 0.1 {
                        self.yaw = dx.atan2(-dz).rem_euclid(std::f32::consts::TAU);
                        self.looked = true;
                    }
                }
            }
        }
        let my_pos = self.predictor.position();
        drawn.push(Drawn {
            id: self.me.entity,
            kind: EntityKind::Player,
            name: self.me.name.clone(),
            pos: my_pos,
            yaw: self.yaw,
        });
        self.update_link(now);

        // 3D.
        let head = v(my_pos) + vec3(0.0, 1.6, 0.0);
        let f = forward(self.yaw);
        // Over the right shoulder, so the avatar does not hide what is ahead.
        let shoulder = vec3(-f.z, 0.0, f.x) * 1.5;
        let cam = Camera3D {
            position: head - f * (self.pitch.cos() * CAMERA_DISTANCE)
                + vec3(0.0, self.pitch.sin() * CAMERA_DISTANCE, 0.0)
                + shoulder,
            target: head + f * 2.0,
            up: vec3(0.0, 1.0, 0.0),
            fovy: 1.0,
            ..Default::default()
        };
        set_camera(&cam);
        draw_ground(world, &self.grid);
        for m in meshes {
            draw_mesh(m);
        }
        if self.debug {
            draw_cells(&self.grid, my_pos, self.cell);
            let s = self.predictor.server_pos();
            draw_cube_wires(vec3(s.x, 0.9, s.z), vec3(0.8, 1.8, 0.8), WHITE);
        }
        for d in &drawn {
            let color = if d.id == self.me.entity {
                OWN_PLAYER
            } else if d.kind == EntityKind::Npc {
                NPC
            } else {
                OTHER_PLAYER
            };
            draw_avatar(d.pos, d.yaw, color);
        }

        // Labels and HUD.
        let matrix = cam.matrix();
        set_default_camera();
        if let Some(w) = world {
            draw_zone_labels(w, my_pos, &matrix);
        }
        let t = get_time();
        self.bubbles.retain(|_, (_, until)| *until > t);
        for d in &drawn {
            if d.pos.distance_xz(my_pos) > 60.0 {
                continue;
            }
            // The own name would sit on whoever stands ahead; a bubble not.
            let own = d.id == self.me.entity;
            let Some(p) = project(&matrix, v(d.pos) + vec3(0.0, 2.6, 0.0)) else {
                continue;
            };
            let label_color = if d.kind == EntityKind::Npc {
                Color::new(1.0, 0.95, 0.6, 1.0)
            } else {
                WHITE
            };
            if !own {
                text_with_shadow(
                    &d.name,
                    p.x - measure_text(&d.name, None, 18, 1.0).width / 2.0,
                    p.y,
                    18.0,
                    label_color,
                );
            }
            if let Some((text, _)) = self.bubbles.get(&d.id) {
                draw_bubble(text, p.x, p.y - 20.0);
            }
        }
        self.draw_hud(world, my_pos, entity_count, snapshot_age);

        if let Some(path) = &args.screenshot {
            if let Some(first) = self.first_snapshot {
                if now - first >= args.after as f64 {
                    self.save_screenshot(path);
                }
            } else if now > args.connect_timeout as f64 + 40.0 {
                eprintln!("tessera-client: no snapshot arrived; no screenshot taken");
                std::process::exit(1);
            }
        }
        if self.closed.is_some() && args.screenshot.is_some() {
            eprintln!("tessera-client: the connection closed before the screenshot");
            std::process::exit(1);
        }
    }

    fn update_link(&mut self, now: f64) {
        let elapsed = now - self.link.window_start;
        if elapsed < 1.0 {
            return;
        }
        let s = self.session.conn.stats();
        let l = &mut self.link;
        l.rx_per_s = (s.udp_rx.bytes - l.rx0.min(s.udp_rx.bytes)) as f64 / elapsed;
        l.tx_per_s = (s.udp_tx.bytes - l.tx0.min(s.udp_tx.bytes)) as f64 / elapsed;
        let sent = s.path.sent_packets.saturating_sub(l.sent0);
        let lost = s.path.lost_packets.saturating_sub(l.lost0);
        l.loss = if sent > 0 {
            lost as f64 / sent as f64
        } else {
            0.0
        };
        l.rx0 = s.udp_rx.bytes;
        l.tx0 = s.udp_tx.bytes;
        l.sent0 = s.path.sent_packets;
        l.lost0 = s.path.lost_packets;
        l.window_start = now;
    }

    fn draw_hud(
        &mut self,
        world: Option<&WorldDef>,
        my_pos: TVec3,
        entities: usize,
        snapshot_age: Option<f64>,
    ) {
        let zone = world
            .map(|w| w.zone_at(my_pos).name.clone())
            .unwrap_or_default();
        text_with_shadow(&zone, 12.0, 28.0, 28.0, WHITE);
        // Link quality: the bad link indicator.
        let rtt = self.session.conn.rtt().as_secs_f64() * 1000.0;
        let (state, color) = if let Some(why) = &self.closed {
            (format!("DISCONNECTED: {why}"), RED)
        } else if snapshot_age.is_none_or(|a| a > 0.5) {
            (
                format!(
                    "LINK BAD: no update for {:.1} s",
                    snapshot_age.unwrap_or(0.0)
                ),
                RED,
            )
        } else if self.link.loss > 0.05 {
            (
                format!("LINK POOR: {:.0}% loss", self.link.loss * 100.0),
                ORANGE,
            )
        } else if rtt > 200.0 {
            (format!("LINK SLOW: ping {rtt:.0} ms"), ORANGE)
        } else {
            (String::new(), GREEN)
        };
        draw_circle(screen_width() - 16.0, 16.0, 7.0, color);
        if !state.is_empty() {
            let w = measure_text(&state, None, 22, 1.0).width;
            draw_rectangle(
                screen_width() - w - 40.0,
                4.0,
                w + 16.0,
                26.0,
                Color::new(0.0, 0.0, 0.0, 0.6),
            );
            draw_text(&state, screen_width() - w - 32.0, 23.0, 22.0, color);
        }
        if self.debug {
            let avg = self.frame_times.iter().sum::<f32>() / self.frame_times.len().max(1) as f32;
            let stats = &self.predictor.stats;
            let lines = [
                format!("pos {:.2} {:.2} {:.2}  yaw {:.0} deg", my_pos.x, my_pos.y, my_pos.z, self.yaw.to_degrees()),
                format!("cell {} (computed {})  shard {}", self.cell, self.grid.cell_of(my_pos), self.shard),
                format!("ping {rtt:.0} ms  in {:.1} kB/s  out {:.1} kB/s  loss {:.1}%", self.link.rx_per_s / 1000.0, self.link.tx_per_s / 1000.0, self.link.loss * 100.0),
                format!("entities {entities}  interpolated {}  delay {:.0} ms", self.interp.len(), self.interp.clock.delay() * 1000.0),
                format!(
                    "prediction: {} pending, ack {}, last error {:.3} m, smoothing {:.3} m, max {:.2} m, snaps {}",
                    self.predictor.pending(),
                    self.predictor.ack(),
                    self.last_correction,
                    self.predictor.offset(),
                    stats.max_error,
                    stats.snaps
                ),
                format!("frame {:.1} ms ({:.0} fps)", avg * 1000.0, 1.0 / avg.max(1e-4)),
            ];
            let transitions: Vec<(String, Color)> = self
                .transitions
                .iter()
                .map(|t| {
                    let age = get_time() - t.at;
                    let c = if age < 3.0 { YELLOW } else { LIGHTGRAY };
                    (format!("{age:.1} s ago  {}", t.text), c)
                })
                .collect();
            let widest = lines
                .iter()
                .chain(transitions.iter().map(|(t, _)| t))
                .map(|l| measure_text(l, None, 16, 1.0).width)
                .fold(0.0f32, f32::max);
            let h = 17.0 * (lines.len() + transitions.len()) as f32 + 10.0;
            draw_rectangle(6.0, 38.0, widest + 14.0, h, Color::new(0.0, 0.0, 0.0, 0.55));
            let mut y = 54.0;
            for l in &lines {
                draw_text(l, 12.0, y, 16.0, WHITE);
                y += 17.0;
            }
            for (t, c) in &transitions {
                draw_text(t, 12.0, y, 16.0, *c);
                y += 17.0;
            }
        }
        // Without the overlay, a fresh hand-off or migration shows as a banner.
        if let Some(t) = self.transitions.back().filter(|_| !self.debug) {
            if get_time() - t.at < 2.5 {
                draw_centered(&t.text, 70.0, 24.0, YELLOW);
            }
        }
        // Chat panel.
        let base = screen_height() - 40.0;
        let n = self.chat.len();
        let end = n.saturating_sub(self.scroll);
        let begin = end.saturating_sub(CHAT_SHOWN);
        let shown = end - begin;
        if shown > 0 {
            let widest = self
                .chat
                .iter()
                .skip(begin)
                .take(shown)
                .map(|l| measure_text(&l.text, None, 19, 1.0).width)
                .fold(0.0f32, f32::max);
            draw_rectangle(
                6.0,
                base - 20.0 * shown as f32 - 6.0,
                (widest + 12.0).min(screen_width() - 12.0),
                20.0 * shown as f32 + 12.0,
                Color::new(0.0, 0.0, 0.0, 0.4),
            );
        }
        for (i, line) in self.chat.iter().skip(begin).take(shown).enumerate() {
            let y = base - 20.0 * (shown - i - 1) as f32;
            draw_text(&line.text, 12.0, y, 19.0, line.color);
        }
        if self.scroll > 0 {
            draw_text(
                format!("(scrolled back {} lines; PageDown)", self.scroll),
                12.0,
                base + 18.0,
                16.0,
                LIGHTGRAY,
            );
        }
        if let Some(t) = &self.typing {
            draw_rectangle(
                6.0,
                screen_height() - 30.0,
                screen_width() - 12.0,
                24.0,
                Color::new(0.0, 0.0, 0.0, 0.7),
            );
            draw_text(
                format!("say> {t}_"),
                12.0,
                screen_height() - 12.0,
                20.0,
                WHITE,
            );
        }
    }

    fn save_screenshot(&self, path: &std::path::Path) {
        let img = get_screen_data();
        let (w, h) = (img.width as usize, img.height as usize);
        // The framebuffer is bottom-up.
        let mut rows = Vec::with_capacity(w * h * 4);
        for y in (0..h).rev() {
            rows.extend_from_slice(&img.bytes[y * w * 4..(y + 1) * w * 4]);
        }
        for px in rows.chunks_mut(4) {
            px[3] = 255;
        }
        let result = std::fs::File::create(path)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
                enc.set_color(png::ColorType::Rgba);
                enc.set_depth(png::BitDepth::Eight);
                let mut writer = enc.write_header().map_err(|e| e.to_string())?;
                writer.write_image_data(&rows).map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => {
                println!(
                    "saved {} ({w}x{h}); {} frames, mean frame time {:.1} ms; prediction: {} reconciliations, {} corrections over 1 cm, max error {:.3} m, {} snaps",
                    path.display(),
                    self.frames,
                    self.frame_time_sum / self.frames.max(1) as f64 * 1000.0,
                    self.predictor.stats.reconciliations,
                    self.predictor.stats.corrections,
                    self.predictor.stats.max_error,
                    self.predictor.stats.snaps
                );
                let _ = self.cmds.send(NetCmd::Quit);
                std::thread::sleep(std::time::Duration::from_millis(300));
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!(
                    "tessera-client: cannot write the screenshot {}: {e}",
                    path.display()
                );
                std::process::exit(1);
            }
        }
    }
}

fn text_with_shadow(text: &str, x: f32, y: f32, size: f32, color: Color) {
    draw_text(text, x + 1.5, y + 1.5, size, Color::new(0.0, 0.0, 0.0, 0.8));
    draw_text(text, x, y, size, color);
}

fn draw_bubble(text: &str, cx: f32, bottom: f32) {
    let shown: String = if text.chars().count() > 60 {
        text.chars().take(57).chain("...".chars()).collect()
    } else {
        text.to_string()
    };
    let d = measure_text(&shown, None, 18, 1.0);
    let (w, h) = (d.width + 16.0, 26.0);
    draw_rectangle(
        cx - w / 2.0,
        bottom - h,
        w,
        h,
        Color::new(1.0, 1.0, 1.0, 0.92),
    );
    draw_triangle(
        vec2(cx - 6.0, bottom),
        vec2(cx + 6.0, bottom),
        vec2(cx, bottom + 7.0),
        Color::new(1.0, 1.0, 1.0, 0.92),
    );
    draw_text(&shown, cx - d.width / 2.0, bottom - 8.0, 18.0, BLACK);
}

/// World position to screen pixels, `None` behind the camera.
fn project(m: &Mat4, p: Vec3) -> Option<Vec2> {
    let c = *m * p.extend(1.0);
    if c.w <= 0.05 {
        return None;
    }
    let n = c.truncate() / c.w;
    if n.x.abs() > 1.2 || n.y.abs() > 1.2 {
        return None;
    }
    Some(vec2(
        (n.x + 1.0) / 2.0 * screen_width(),
        (1.0 - n.y) / 2.0 * screen_height(),
    ))
}

fn draw_ground(world: Option<&WorldDef>, grid: &Grid) {
    draw_plane(vec3(0.0, -0.05, 0.0), vec2(2000.0, 2000.0), None, OUTSIDE);
    let (min_x, min_z, max_x, max_z) = match world {
        Some(w) => w.extent.bounds(grid),
        None => (-1000.0, -1000.0, 1000.0, 1000.0),
    };
    let centre = vec3((min_x + max_x) / 2.0, 0.0, (min_z + max_z) / 2.0);
    draw_plane(
        centre,
        vec2((max_x - min_x) / 2.0, (max_z - min_z) / 2.0),
        None,
        GRASS,
    );
    if let Some(w) = world {
        // Zones: faint outlines on the ground.
        for z in &w.zones {
            let y = 0.02;
            let c = Color::new(0.85, 0.9, 0.7, 0.6);
            let (a, b, cc, d) = (
                vec3(z.min_x, y, z.min_z),
                vec3(z.max_x, y, z.min_z),
                vec3(z.max_x, y, z.max_z),
                vec3(z.min_x, y, z.max_z),
            );
            draw_line_3d(a, b, c);
            draw_line_3d(b, cc, c);
            draw_line_3d(cc, d, c);
            draw_line_3d(d, a, c);
        }
    }
}

/// Cell borders around the player; the player's cell outlined in yellow.
fn draw_cells(grid: &Grid, pos: TVec3, cell: CellId) {
    let here = grid.cell_of(pos);
    let y = 0.06;
    for dx in -3..=3 {
        for dz in -3..=3 {
            let c = CellId::new(here.x + dx, here.z + dz);
            let (x0, z0, x1, z1) = grid.bounds(c);
            let color = if c == cell {
                YELLOW
            } else {
                Color::new(1.0, 1.0, 1.0, 0.5)
            };
            draw_line_3d(vec3(x0, y, z0), vec3(x1, y, z0), color);
            draw_line_3d(vec3(x1, y, z0), vec3(x1, y, z1), color);
            draw_line_3d(vec3(x1, y, z1), vec3(x0, y, z1), color);
            draw_line_3d(vec3(x0, y, z1), vec3(x0, y, z0), color);
        }
    }
    let (x0, z0, x1, z1) = grid.bounds(cell);
    draw_plane(
        vec3((x0 + x1) / 2.0, 0.03, (z0 + z1) / 2.0),
        vec2((x1 - x0) / 2.0, (z1 - z0) / 2.0),
        None,
        Color::new(1.0, 1.0, 0.0, 0.12),
    );
}

fn draw_zone_labels(w: &WorldDef, me: TVec3, m: &Mat4) {
    for z in &w.zones {
        let c = TVec3::new((z.min_x + z.max_x) / 2.0, 6.0, (z.min_z + z.max_z) / 2.0);
        if c.distance_xz(me) > 150.0 {
            continue;
        }
        if let Some(p) = project(m, v(c)) {
            let d = measure_text(&z.name, None, 24, 1.0);
            text_with_shadow(
                &z.name,
                p.x - d.width / 2.0,
                p.y,
                24.0,
                Color::new(1.0, 1.0, 0.85, 0.9),
            );
        }
    }
}

/// A body, a head and a nose that shows the facing.
fn draw_avatar(p: TVec3, yaw: f32, color: Color) {
    let base = v(p);
    draw_cube(base + vec3(0.0, 0.8, 0.0), vec3(0.7, 1.6, 0.7), None, color);
    draw_cube_wires(
        base + vec3(0.0, 0.8, 0.0),
        vec3(0.7, 1.6, 0.7),
        shade(color, 0.5),
    );
    draw_sphere(base + vec3(0.0, 1.9, 0.0), 0.32, None, color);
    let f = forward(yaw);
    draw_cube(
        base + vec3(0.0, 1.9, 0.0) + f * 0.35,
        vec3(0.15, 0.15, 0.15),
        None,
        shade(color, 0.4),
    );
}

/// One flat-shaded mesh per static shape of the world.
fn static_meshes(w: &WorldDef) -> Vec<Mesh> {
    let light = vec3(0.4, 0.8, 0.3).normalize();
    w.statics
        .iter()
        .map(|s| {
            let corners = s.corners().map(v);
            let centre = v(s.center());
            let base = match s {
                tessera_proto::world::StaticShape::Ramp { .. } => Color::new(0.62, 0.55, 0.45, 1.0),
                tessera_proto::world::StaticShape::Box { name, .. } => {
                    let h = name
                        .as_deref()
                        .unwrap_or("")
                        .bytes()
                        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
                    let t = (h % 100) as f32 / 100.0;
                    Color::new(0.70 + 0.2 * t, 0.62 + 0.1 * (1.0 - t), 0.52, 1.0)
                }
            };
            // Faces by the corner bits (bit 0 = x, 1 = y, 2 = z).
            let faces: [[usize; 4]; 6] = [
                [0, 2, 6, 4],
                [1, 3, 7, 5],
                [0, 1, 5, 4],
                [2, 3, 7, 6],
                [0, 1, 3, 2],
                [4, 5, 7, 6],
            ];
            let mut vertices = Vec::with_capacity(24);
            let mut indices = Vec::with_capacity(36);
            for f in faces {
                let mid = f.iter().map(|&i| corners[i]).sum::<Vec3>() / 4.0;
                let n = (mid - centre).normalize_or_zero();
                let c = shade(base, 0.55 + 0.45 * n.dot(light).max(0.0));
                let first = vertices.len() as u16;
                for &i in &f {
                    vertices.push(Vertex::new2(corners[i], vec2(0.0, 0.0), c));
                }
                indices.extend_from_slice(&[
                    first,
                    first + 1,
                    first + 2,
                    first,
                    first + 2,
                    first + 3,
                ]);
            }
            Mesh {
                vertices,
                indices,
                texture: None,
            }
        })
        .collect()
}
