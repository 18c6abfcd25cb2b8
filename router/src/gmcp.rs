//! The GMCP packages a text player's MUD client gets (docs/protocol.md, "GMCP
//! packages"): built here from what the router knows of the player and the
//! world, as pure functions, and sent on change by [`GmcpTracker`]. A world
//! of continuous space has no rooms, so a "room" is a [`ROOM_SIZE`] square
//! of ground with a stable number, which lets a mapper (Mudlet's) draw where
//! the player really walks.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tessera_proto::cluster::ViewEntity;
use tessera_proto::msg::{ChatKind, EntityKind};
use tessera_proto::world::{StaticShape, WorldDef};
use tessera_proto::{Compass, EntityId, Grid, RegionId, ShardId, Vec3};

/// Edge of a mapper's room, metres: a few text steps (3 m each) across.
pub const ROOM_SIZE: f32 = 8.0;
/// How far `Tessera.Nearby` looks, metres (as far as `look`).
pub const NEARBY_RADIUS: f32 = crate::text::LOOK_RADIUS;
/// Most entities `Tessera.Nearby` lists, nearest first.
pub const NEARBY_MAX: usize = 20;
/// `Tessera.Nearby` goes out at most this often.
pub const NEARBY_EVERY: Duration = Duration::from_secs(1);
/// A wall lower than this does not block an exit (the character steps up).
const STEP_UP: f32 = 0.5;

/// The room (ground square) a position is in.
pub fn room_of(pos: Vec3) -> (i32, i32) {
    (
        (pos.x / ROOM_SIZE).floor() as i32,
        (pos.z / ROOM_SIZE).floor() as i32,
    )
}

/// A room's number: stable for the world's life (mappers key rooms by it),
/// positive, unique for rooms within 262 km of the origin.
pub fn room_num((x, z): (i32, i32)) -> u64 {
    let axis = |v: i32| (i64::from(v) + 32_768).clamp(0, 65_535) as u64;
    (axis(z) << 16) | axis(x)
}

fn room_centre((x, z): (i32, i32)) -> Vec3 {
    Vec3::new(
        (x as f32 + 0.5) * ROOM_SIZE,
        0.0,
        (z as f32 + 0.5) * ROOM_SIZE,
    )
}

/// Whether a player can walk into room `to`: inside the world, and its
/// centre not inside a box taller than a step.
fn walkable(world: &WorldDef, grid: &Grid, to: (i32, i32)) -> bool {
    let centre = room_centre(to);
    world.extent.contains_position(grid, centre)
        && !world.statics.iter().any(|s| {
            matches!(s, StaticShape::Box { .. })
                && s.top_y() > STEP_UP
                && s.footprint_distance(centre) == 0.0
        })
}

/// `Room.Info` for a player at `pos` in `region`: the room number, the
/// zone's name, the area (the nearest landmark within the room's reach, or
/// the zone), where it is, and the walkable exits with the rooms they lead
/// to.
pub fn room_info(world: &WorldDef, grid: &Grid, pos: Vec3, region: RegionId) -> Value {
    let room = room_of(pos);
    let zone = world.zone_at(pos);
    let area = world
        .landmarks_near(pos, ROOM_SIZE * 2.0)
        .first()
        .map_or(zone.name.clone(), |l| l.name.clone());
    let mut exits = serde_json::Map::new();
    for dir in Compass::ALL {
        let u = dir.unit();
        let next = (room.0 + u.x.round() as i32, room.1 + u.z.round() as i32);
        if walkable(world, grid, next) {
            exits.insert(dir.short().to_owned(), json!(room_num(next)));
        }
    }
    json!({
        "num": room_num(room),
        "name": zone.name,
        "area": area,
        "environment": zone.name,
        "coords": {
            "x": round1(pos.x),
            "y": round1(pos.y),
            "z": round1(pos.z),
            "cell": region.to_string(),
        },
        "exits": exits,
    })
}

fn round1(v: f32) -> f64 {
    (f64::from(v) * 10.0).round() / 10.0
}

/// `Char.Name`.
pub fn char_name(name: &str) -> Value {
    json!({ "name": name, "fullname": name })
}

/// `Char.Status`: where the player is and which shard simulates it.
pub fn char_status(
    pos: Vec3,
    heading: Option<Compass>,
    region: RegionId,
    shard: &ShardId,
) -> Value {
    json!({
        "pos": { "x": round1(pos.x), "y": round1(pos.y), "z": round1(pos.z) },
        "heading": heading.map(Compass::name),
        "cell": region.to_string(),
        "shard": shard.to_string(),
    })
}

/// `Comm.Channel.Text` for a line heard or read.
pub fn channel_text(channel: &str, talker: &str, text: &str) -> Value {
    json!({ "channel": channel, "talker": talker, "text": text })
}

/// The channel a chat line belongs to, as `Comm.Channel.Text` names it.
pub fn chat_channel(kind: &ChatKind) -> String {
    match kind {
        ChatKind::Shout => "shout".into(),
        ChatKind::Tell => "tell".into(),
        ChatKind::Channel(name) => format!("channel:{name}"),
        ChatKind::System => "system".into(),
    }
}

/// `Comm.Channel.List`: the channels and how to talk on each.
pub fn channel_list() -> Value {
    json!([
        { "name": "say", "caption": "Say (those near you)", "command": "say" },
        { "name": "shout", "caption": "Shout (everyone online)", "command": "shout" },
        { "name": "tell", "caption": "Tell (one player)", "command": "tell" },
        { "name": "channel", "caption": "Named channels", "command": "chat" },
    ])
}

/// `Tessera.Nearby`: the entities around the player, nearest first, with
/// their distance and bearing (for radar windows and screen readers).
pub fn nearby(me: EntityId, pos: Vec3, around: &[ViewEntity]) -> Value {
    let mut near: Vec<(f32, &ViewEntity)> = around
        .iter()
        .filter(|e| e.id != me)
        .map(|e| (e.pos.distance_xz(pos), e))
        .filter(|(d, _)| *d <= NEARBY_RADIUS)
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0));
    let list: Vec<Value> = near
        .into_iter()
        .take(NEARBY_MAX)
        .map(|(d, e)| {
            json!({
                "name": &*e.name,
                "kind": match e.kind {
                    EntityKind::Player => "player",
                    EntityKind::Npc => "npc",
                },
                "distance": d.round() as u32,
                "bearing": Compass::towards(pos, e.pos).map(Compass::name),
            })
        })
        .collect();
    Value::Array(list)
}

/// Whether a client that enabled `modules` (lower case: `char`, `room`,
/// `comm.channel`) gets `package`: its module or one above it is listed
/// (`comm` covers `Comm.Channel.Text`); `Core` always.
pub fn module_wants<'a>(modules: impl IntoIterator<Item = &'a String>, package: &str) -> bool {
    let package = package.to_ascii_lowercase();
    if package.split('.').next() == Some("core") {
        return true;
    }
    modules.into_iter().any(|m| {
        package == *m
            || package
                .strip_prefix(m.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Most GMCP modules a client may enable, and longest module name kept.
pub const MAX_MODULES: usize = 64;
pub const MAX_MODULE_NAME: usize = 64;

/// The module of a `Core.Supports` entry (`"Char 1"` -> `char`), if it is a
/// sensible one.
pub fn module_name(entry: &str) -> Option<String> {
    let module = entry.split_whitespace().next()?.to_ascii_lowercase();
    (!module.is_empty()
        && module.len() <= MAX_MODULE_NAME
        && module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    .then_some(module)
}

/// The modules of a gateway's `ClientMsg::GmcpModules` list (at most
/// [`MAX_MODULES`], each checked by [`module_name`]).
pub fn module_set(entries: &[String]) -> std::collections::BTreeSet<String> {
    entries
        .iter()
        .take(MAX_MODULES)
        .filter_map(|m| module_name(m))
        .collect()
}

/// The GMCP a player event makes (`Comm.Channel.Text` for speech and chat),
/// if any.
pub fn event_package(ev: &tessera_proto::cluster::PlayerEvent) -> Option<(&'static str, String)> {
    use tessera_proto::cluster::PlayerEvent;
    let text = match ev {
        PlayerEvent::Heard {
            name, text, emote, ..
        } => channel_text(if *emote { "emote" } else { "say" }, name, text),
        PlayerEvent::Chat {
            kind, from, text, ..
        } => channel_text(&chat_channel(kind), from, text),
        _ => return None,
    };
    Some(("Comm.Channel.Text", text.to_string()))
}

/// Where a player is, as the tracker needs it.
pub struct Whereabouts<'a> {
    pub name: &'a str,
    pub entity: EntityId,
    pub pos: Vec3,
    pub region: RegionId,
    pub shard: &'a ShardId,
}

/// What one connection was last sent, so each package goes out only when it
/// changed (`Tessera.Nearby` also at most once every [`NEARBY_EVERY`]).
#[derive(Default)]
pub struct GmcpTracker {
    /// `Char.Name` and `Comm.Channel.List` went out (once each, whenever the
    /// client first wants them: it may enable GMCP after logging in).
    named: bool,
    listed: bool,
    room: Option<(u64, String, RegionId)>,
    status: Option<Value>,
    nearby: Option<(Value, Instant)>,
}

impl GmcpTracker {
    /// The packages that changed for `player` (whose client wants `wants(package)`), from
    /// the router's view around it; nothing when the client wants none of them. Both the
    /// router's telnet port and its relayed sessions send these.
    pub fn update_for(
        &mut self,
        player: &mut crate::session::Player,
        wants: impl Fn(&str) -> bool,
    ) -> Vec<(&'static str, String)> {
        const TRACKED: [&str; 5] = [
            "Char.Name",
            "Comm.Channel.List",
            "Room.Info",
            "Char.Status",
            "Tessera.Nearby",
        ];
        if !TRACKED.iter().any(|p| wants(p)) {
            return Vec::new();
        }
        let pos = player.position();
        let router = player.router.clone();
        let around = router.view.around(&router.grid, pos, NEARBY_RADIUS);
        let at = Whereabouts {
            name: player.name(),
            entity: player.entity,
            pos,
            region: player.region,
            shard: &player.shard,
        };
        self.update(
            &router.world,
            &router.grid,
            &at,
            &around,
            Instant::now(),
            wants,
        )
    }

    /// The packages to send now for a player `at` (whose client wants
    /// `wants(package)`), seeing `around`.
    pub fn update(
        &mut self,
        world: &WorldDef,
        grid: &Grid,
        at: &Whereabouts,
        around: &[ViewEntity],
        now: Instant,
        wants: impl Fn(&str) -> bool,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.named && wants("Char.Name") {
            out.push(("Char.Name", char_name(at.name).to_string()));
            self.named = true;
        }
        if !self.listed && wants("Comm.Channel.List") {
            out.push(("Comm.Channel.List", channel_list().to_string()));
            self.listed = true;
        }
        if wants("Room.Info") {
            let key = (
                room_num(room_of(at.pos)),
                world.zone_at(at.pos).name.clone(),
                at.region,
            );
            if self.room.as_ref() != Some(&key) {
                out.push((
                    "Room.Info",
                    room_info(world, grid, at.pos, at.region).to_string(),
                ));
                self.room = Some(key);
            }
        }
        if wants("Char.Status") {
            let heading = around
                .iter()
                .find(|e| e.id == at.entity)
                .and_then(|e| heading_of(e.yaw));
            let status = char_status(at.pos, heading, at.region, at.shard);
            if self.status.as_ref() != Some(&status) {
                out.push(("Char.Status", status.to_string()));
                self.status = Some(status);
            }
        }
        if wants("Tessera.Nearby") {
            let due = self
                .nearby
                .as_ref()
                .is_none_or(|(_, at)| now.duration_since(*at) >= NEARBY_EVERY);
            if due {
                let list = nearby(at.entity, at.pos, around);
                if self.nearby.as_ref().map(|(v, _)| v) != Some(&list) {
                    out.push(("Tessera.Nearby", list.to_string()));
                    self.nearby = Some((list, now));
                }
            }
        }
        out
    }
}

/// The compass direction of a yaw (radians, 0 north, clockwise).
fn heading_of(yaw: f32) -> Option<Compass> {
    if !yaw.is_finite() {
        return None;
    }
    let to = Vec3::new(yaw.sin(), 0.0, -yaw.cos());
    Compass::towards(Vec3::ZERO, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_proto::world::parse_world;
    use tessera_proto::CellId;

    const WORLD: &str = r#"
name = "Vale"
cell_size = 64
spawn = [4, 0, 4]
[extent]
min = [0, 0]
max = [1, 0]
[[zone]]
name = "Market"
description = "Stalls."
min = [0, 0]
max = [40, 40]
[[landmark]]
name = "Well"
description = "A well."
pos = [4, 0, 4]
[[box]]
center = [20, 1, 4]
size = [8, 2, 8]
"#;

    fn world() -> WorldDef {
        parse_world(WORLD).expect("world")
    }

    fn view(id: u64, name: &str, pos: Vec3, yaw: f32) -> ViewEntity {
        ViewEntity {
            id: EntityId(id),
            kind: EntityKind::Npc,
            name: Arc::from(name),
            pos,
            vel: Vec3::ZERO,
            yaw,
            ack_input: 0,
        }
    }

    #[test]
    fn room_numbers_are_stable_distinct_and_positive() {
        assert_eq!(
            room_num((0, 0)),
            room_num(room_of(Vec3::new(7.9, 0.0, 0.1)))
        );
        assert_ne!(room_num((0, 0)), room_num((1, 0)));
        assert_ne!(room_num((1, 0)), room_num((0, 1)));
        assert_ne!(room_num((-1, 0)), room_num((0, -1)));
        assert_eq!(room_of(Vec3::new(-0.1, 0.0, -8.1)), (-1, -2));
        assert!(room_num((-32_768, -32_768)) == 0 && room_num((5, 5)) > 0);
    }

    /// Room.Info names the zone and the landmark's area, says where, and
    /// lists exactly the walkable exits: not into the box, not out of the
    /// world.
    #[test]
    fn room_info_lists_walkable_exits() {
        let w = world();
        let grid = w.grid();
        let info = room_info(
            &w,
            &grid,
            Vec3::new(12.0, 0.0, 4.0),
            CellId::new(0, 0).into(),
        );
        assert_eq!(info["num"], json!(room_num((1, 0))));
        assert_eq!(info["name"], json!("Market"));
        assert_eq!(info["area"], json!("Well"));
        assert_eq!(info["coords"]["cell"], json!("0,0"));
        let exits = info["exits"].as_object().unwrap();
        // East is the box (centre (20, 4)); north leaves the world (z < 0).
        assert!(!exits.contains_key("e"), "{exits:?}");
        assert!(!exits.contains_key("n") && !exits.contains_key("ne"));
        assert_eq!(exits["w"], json!(room_num((0, 0))));
        assert_eq!(exits["s"], json!(room_num((1, 1))));
        assert_eq!(exits["se"], json!(room_num((2, 1))));
    }

    /// Packages go out when they change and only if the client wants them;
    /// Tessera.Nearby at most once a second.
    #[test]
    fn the_tracker_sends_on_change() {
        let w = world();
        let grid = w.grid();
        let shard = ShardId::new("shard-1");
        let me = EntityId(1);
        let region: RegionId = CellId::new(0, 0).into();
        let mut t = GmcpTracker::default();
        let all = |_: &str| true;
        let t0 = Instant::now();
        let at = |x: f32| Whereabouts {
            name: "Ann",
            entity: me,
            pos: Vec3::new(x, 0.0, 4.0),
            region,
            shard: &shard,
        };
        let around = vec![
            view(
                1,
                "Ann",
                Vec3::new(4.0, 0.0, 4.0),
                std::f32::consts::FRAC_PI_2,
            ),
            view(2, "Mira", Vec3::new(4.0, 0.0, 10.0), 0.0),
        ];
        let first = t.update(&w, &grid, &at(4.0), &around, t0, all);
        let names: Vec<&str> = first.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            names,
            [
                "Char.Name",
                "Comm.Channel.List",
                "Room.Info",
                "Char.Status",
                "Tessera.Nearby"
            ]
        );
        assert!(first[3].1.contains(r#""heading":"east""#), "{}", first[3].1);
        assert!(
            first[4].1.contains(r#""name":"Mira""#) && first[4].1.contains(r#""bearing":"south""#)
        );
        assert!(t.update(&w, &grid, &at(4.0), &around, t0, all).is_empty());
        // A metre east: the same room, a new status.
        let moved = t.update(&w, &grid, &at(5.0), &around, t0, all);
        assert_eq!(
            moved.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            ["Char.Status"]
        );
        // Into the next room.
        let next = t.update(&w, &grid, &at(9.0), &around, t0, all);
        assert_eq!(next[0].0, "Room.Info");
        // Nearby changed (Mira is farther now) but within the second: held.
        let farther = t.update(
            &w,
            &grid,
            &at(9.0),
            &around,
            t0 + Duration::from_millis(500),
            all,
        );
        assert!(farther.is_empty(), "{farther:?}");
        let later = t.update(
            &w,
            &grid,
            &at(9.0),
            &around,
            t0 + Duration::from_secs(1),
            all,
        );
        assert_eq!(
            later.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            ["Tessera.Nearby"]
        );
        // A client that wants nothing gets nothing.
        let mut quiet = GmcpTracker::default();
        assert!(quiet
            .update(&w, &grid, &at(4.0), &around, t0, |_| false)
            .is_empty());
    }

    #[test]
    fn channels_and_names() {
        assert_eq!(
            chat_channel(&ChatKind::Channel("trade".into())),
            "channel:trade"
        );
        assert_eq!(
            channel_text("say", "Ann", "hi").to_string(),
            r#"{"channel":"say","talker":"Ann","text":"hi"}"#
        );
        assert_eq!(char_name("Ann")["name"], json!("Ann"));
        assert_eq!(channel_list().as_array().map(Vec::len), Some(4));
    }
}
