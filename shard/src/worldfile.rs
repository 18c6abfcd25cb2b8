//! Loading a world directory from disk:
//!
//! ```text
//! <dir>/world.toml          the definition (docs/world-format.md)
//! <dir>/scripts/<name>.rhai NPC scripts, referred to by <name>
//! ```
//!
//! The parsing and validation live in `tessera_proto::world`; this module
//! only reads files, and every error names the file it is about.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use tessera_proto::world::{parse_world, WorldDef, WorldError};

/// Largest `world.toml` accepted.
pub const MAX_WORLD_FILE_BYTES: u64 = 1024 * 1024;
/// Largest script file accepted (the script host refuses larger sources too).
pub const MAX_SCRIPT_FILE_BYTES: u64 = 64 * 1024;

/// Each message names the file and includes the underlying error, which is
/// therefore not also a `source()`: anyhow's report prints the whole chain,
/// and would print the underlying message twice.
#[derive(Debug, thiserror::Error)]
pub enum WorldFileError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is {size} bytes, over the limit of {limit} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// `<path>: line 12, column 10: npc "Ann" uses script ...`.
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: WorldError },
}

/// Read, parse and validate the world in `dir`, scripts included.
pub fn load_world_dir(dir: &Path) -> Result<WorldDef, WorldFileError> {
    let world_path = dir.join("world.toml");
    let text = read_limited(&world_path, MAX_WORLD_FILE_BYTES)?;
    let invalid = |error| WorldFileError::Invalid {
        path: world_path.clone(),
        error,
    };
    let mut world = parse_world(&text).map_err(invalid)?;

    let scripts_dir = dir.join("scripts");
    if scripts_dir.is_dir() {
        let read_err = |error| WorldFileError::Read {
            path: scripts_dir.clone(),
            error,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(&scripts_dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "rhai") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let source = read_limited(&path, MAX_SCRIPT_FILE_BYTES)?;
            world.scripts.insert(stem.to_string(), source);
        }
    }
    // An NPC naming a missing script is a mistake in world.toml.
    world.validate_scripts().map_err(invalid)?;
    Ok(world)
}

/// Read a UTF-8 file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<String, WorldFileError> {
    let read_err = |error| WorldFileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit, so a file growing meanwhile is caught too.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        let size = fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(bytes.len() as u64);
        return Err(WorldFileError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../worlds/default")
    }

    #[test]
    fn loads_the_default_world() {
        let world = load_world_dir(&default_dir()).unwrap();
        assert_eq!(world.name, "Tessera Vale");
        for name in ["wanderer", "greeter"] {
            assert!(world.scripts.contains_key(name), "{name}.rhai");
        }
        assert!(world
            .npcs
            .iter()
            .all(|n| world.scripts.contains_key(&n.script)));
    }

    #[test]
    fn default_scripts_compile() {
        let world = load_world_dir(&default_dir()).unwrap();
        let mut engine = crate::script::ScriptEngine::new(Default::default());
        let errors = engine.compile_all(&world.scripts);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn default_npcs_run_and_answer_to_their_names() {
        use crate::script::{derive_seed, ScriptCtx, ScriptEngine, ScriptInstance};
        use tessera_proto::EntityId;
        let world = load_world_dir(&default_dir()).unwrap();
        let mut engine = ScriptEngine::new(Default::default());
        assert!(engine.compile_all(&world.scripts).is_empty());
        for (i, (name, pos, def)) in world.npc_spawns().into_iter().enumerate() {
            let entity = EntityId(EntityId::NPC_BIT | i as u64);
            let mut inst = ScriptInstance::new(&def.script);
            let mut acted = 0;
            for tick in (0..6000).step_by(10) {
                let ctx = ScriptCtx {
                    entity,
                    name: &name,
                    pos,
                    home: pos,
                    tick,
                    seed: derive_seed(entity, tick, 0),
                };
                if tick == 0 {
                    acted += engine.init(&mut inst, &ctx).len();
                }
                acted += engine.on_tick(&mut inst, &ctx).len();
            }
            let ctx = ScriptCtx {
                entity,
                name: &name,
                pos,
                home: pos,
                tick: 6000,
                seed: 1,
            };
            let spoken = format!("Hello, {}!", name.to_uppercase());
            let answer = engine.on_hear(&mut inst, &ctx, "Tester", &spoken);
            assert!(inst.disabled.is_none(), "{name}: {:?}", inst.disabled);
            assert!(acted > 0, "{name} never did anything");
            assert!(!answer.is_empty(), "{name} ignored its name");
        }
    }

    #[test]
    fn missing_dir_names_the_file() {
        let err = load_world_dir(Path::new("/nonexistent/tessera-world")).unwrap_err();
        assert!(matches!(err, WorldFileError::Read { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/tessera-world/world.toml"),
            "{err}"
        );
    }

    fn world_dir(toml: &str, scripts: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("world.toml"), toml).unwrap();
        fs::create_dir(dir.path().join("scripts")).unwrap();
        for (name, src) in scripts {
            fs::write(dir.path().join("scripts").join(name), src).unwrap();
        }
        dir
    }

    const SMALL: &str = "name = \"Small\"\ncell_size = 16\nspawn = [1, 0, 1]\n\
                         [extent]\nmin = [0, 0]\nmax = [0, 0]\n\
                         [[npc]]\nname = \"Walker\"\npos = [4, 0, 4]\nscript = \"walk\"\n";

    #[test]
    fn bad_toml_names_the_file() {
        let dir = world_dir("name = \"Oops\"\ncell_size = [", &[]);
        let err = load_world_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, WorldFileError::Invalid { .. }));
        assert!(
            text.contains("world.toml") && text.contains("TOML"),
            "{text}"
        );
    }

    #[test]
    fn scripts_are_read_by_stem() {
        let dir = world_dir(
            SMALL,
            &[
                ("walk.rhai", "fn on_tick() { wander(3) }"),
                ("notes.txt", "ignored"),
            ],
        );
        let world = load_world_dir(dir.path()).unwrap();
        assert_eq!(world.scripts.keys().collect::<Vec<_>>(), ["walk"]);
    }

    /// Every message of `err`'s chain, as an error report prints them.
    fn chain(err: &dyn std::error::Error) -> String {
        std::iter::successors(Some(err), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn unknown_script_names_world_toml_and_the_line() {
        let dir = world_dir(SMALL, &[("run.rhai", "")]);
        let err = load_world_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        let path = dir.path().join("world.toml");
        let expected = format!(
            "{}: line 10, column 10: npc \"Walker\" uses script \"walk\", but there is no \
             scripts/walk.rhai",
            path.display()
        );
        assert_eq!(text, expected);
        assert_eq!(chain(&err), expected, "printed once");
    }

    #[test]
    fn a_missing_file_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_world_dir(dir.path()).unwrap_err();
        let report = chain(&err);
        assert_eq!(report.matches("No such file").count(), 1, "{report}");
    }

    #[test]
    fn oversized_script_is_refused() {
        let big = "x".repeat(MAX_SCRIPT_FILE_BYTES as usize + 1);
        let dir = world_dir(SMALL, &[("walk.rhai", &big)]);
        let err = load_world_dir(dir.path()).unwrap_err();
        assert!(matches!(err, WorldFileError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("walk.rhai"), "{err}");
    }
}
