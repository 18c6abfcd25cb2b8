//! What a script upload is checked for before it is stored, and which version of a script
//! runs: pure rules, no I/O.
//!
//! An asset whose name ends in `.rhai` is an NPC script, and the service checks it the way the
//! shards will load it ([`check_upload`]):
//!
//! 1. **The name** is `scripts/<stem>.rhai` (what the shards follow); `greeter.rhai` or
//!    `scripts/npc/greeter.rhai` are refused with the name that would work.
//! 2. **The stem** is a script an NPC of the world runs ([`WorldScripts::used`]); anything else
//!    (`scripts/wardn.rhai`) is refused with the known names, unless the upload is forced (a
//!    script for an NPC a coming world adds). A service started without a world knows no
//!    names, so every script upload needs force there.
//! 3. **The content** compiles with the shards' engine and limits ([`ScriptCompiler`], which the
//!    `tessera` binary backs with `tessera_shard::script::ScriptEngine`); a broken version is
//!    refused with its line and column, forced or not, so it never replaces a good one.
//!
//! **Which version runs** ([`ScriptSource`]): the name's current upload, if there is one,
//! else the world folder's file. Uploads, rollbacks and removals change the current upload;
//! the world folder changes only with a restart.
//!
//! This crate does not depend on the shard crate (the router depends on this one for its HTTP
//! server, and must not build a simulation): the compiler comes in as a trait object.

use crate::{hash_hex, AssetName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// The directory of NPC scripts among asset names.
pub const SCRIPTS_DIR: &str = "scripts/";
/// The extension of NPC scripts.
pub const SCRIPT_EXTENSION: &str = ".rhai";

/// The stem of `name` if it is a script name the shards follow (`scripts/<stem>.rhai`, the stem
/// without `/`).
pub fn script_stem(name: &str) -> Option<&str> {
    name.strip_prefix(SCRIPTS_DIR)
        .and_then(|n| n.strip_suffix(SCRIPT_EXTENSION))
        .filter(|stem| !stem.is_empty() && !stem.contains('/'))
}

/// The asset name of script `stem`.
pub fn script_name(stem: &str) -> String {
    format!("{SCRIPTS_DIR}{stem}{SCRIPT_EXTENSION}")
}

/// What the asset service knows of the world the shards run: the scripts its NPCs use and the
/// world folder's own sources (`<world>/scripts/<stem>.rhai`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorldScripts {
    name: String,
    used: BTreeSet<String>,
    sources: BTreeMap<String, String>,
}

impl WorldScripts {
    /// World `name`, whose NPCs run the scripts `used`, with the folder's `sources` by stem.
    pub fn new(
        name: impl Into<String>,
        used: impl IntoIterator<Item = String>,
        sources: BTreeMap<String, String>,
    ) -> WorldScripts {
        WorldScripts {
            name: name.into(),
            used: used.into_iter().collect(),
            sources,
        }
    }

    /// The world's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scripts some NPC runs, by stem.
    pub fn used(&self) -> &BTreeSet<String> {
        &self.used
    }

    /// The world folder's scripts, by stem.
    pub fn sources(&self) -> &BTreeMap<String, String> {
        &self.sources
    }

    /// The world folder's source of script `stem`.
    pub fn source(&self, stem: &str) -> Option<&str> {
        self.sources.get(stem).map(String::as_str)
    }
}

/// Where a script does not compile, and what the engine said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileError {
    /// 1-based, where known.
    pub line: Option<usize>,
    /// 1-based, where known.
    pub column: Option<usize>,
    pub message: String,
}

impl CompileError {
    /// "line 3, column 7", "line 3" or "" (where nothing is known).
    pub fn position(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}"),
            (Some(l), None) => format!("line {l}"),
            _ => String::new(),
        }
    }
}

/// Compiles a script the way the shards load it. The `tessera` binary backs it with
/// `tessera_shard::script::ScriptEngine` and the shards' default limits.
pub trait ScriptCompiler: Send + Sync {
    /// Whether `source` loads as script `stem`.
    fn check(&self, stem: &str, source: &str) -> Result<(), CompileError>;
}

/// What the service checks script uploads with: the world (if it was given one) and the
/// shards' compiler (if it has one; without one, script uploads are refused).
#[derive(Clone, Default)]
pub struct ScriptRules {
    pub world: Option<WorldScripts>,
    pub compiler: Option<Arc<dyn ScriptCompiler>>,
}

impl fmt::Debug for ScriptRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptRules")
            .field("world", &self.world.as_ref().map(WorldScripts::name))
            .field("compiler", &self.compiler.is_some())
            .finish()
    }
}

/// Why a script upload is refused. Each carries what the uploader needs to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptRefusal {
    /// A `.rhai` asset outside `scripts/<stem>.rhai`: the shards would never load it.
    Misplaced { name: String, suggestion: String },
    /// No NPC runs a script of this stem (or the service has no world to tell).
    Unknown {
        stem: String,
        /// The world's name, `None` without a world.
        world: Option<String>,
        /// The scripts NPCs run.
        known: Vec<String>,
        /// The known name closest to `stem`, if one is close.
        closest: Option<String>,
    },
    /// The content does not load with the shards' engine.
    Compile { name: String, error: CompileError },
    /// This service has no compiler to check scripts with (a library embedding without one).
    NoCompiler,
}

impl ScriptRefusal {
    /// A machine-readable kind, the `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ScriptRefusal::Misplaced { .. } => "script-name",
            ScriptRefusal::Unknown { .. } => "unknown-script",
            ScriptRefusal::Compile { .. } => "script-compile",
            ScriptRefusal::NoCompiler => "no-script-compiler",
        }
    }
}

impl fmt::Display for ScriptRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptRefusal::Misplaced { name, suggestion } => write!(
                f,
                "{name} is not where NPC scripts go: shards load scripts/<name>.rhai, where \
                 <name> is the script an NPC of world.toml names; upload it as {suggestion}"
            ),
            ScriptRefusal::Unknown {
                stem, world: None, ..
            } => write!(
                f,
                "this asset service was started without a world (tessera asset --world DIR), \
                 so it cannot tell whether an NPC runs script {stem:?}; start it with the \
                 world the shards run, or upload with --force"
            ),
            ScriptRefusal::Unknown {
                stem,
                world: Some(world),
                known,
                closest,
            } => {
                write!(f, "no NPC of world {world:?} runs a script named {stem:?}")?;
                if let Some(closest) = closest {
                    write!(f, " (did you mean {}?)", script_name(closest))?;
                }
                if known.is_empty() {
                    write!(f, "; no NPC of this world runs a script")?;
                } else {
                    write!(f, "; the scripts its NPCs run are: {}", known.join(", "))?;
                }
                write!(
                    f,
                    ". To upload a script for an NPC the world does not have yet, use --force"
                )
            }
            ScriptRefusal::Compile { name, error } => {
                let at = error.position();
                let at = if at.is_empty() {
                    String::new()
                } else {
                    format!(" at {at}")
                };
                write!(
                    f,
                    "{name} does not compile{at}: {}; the version in effect stays",
                    error.message
                )
            }
            ScriptRefusal::NoCompiler => write!(
                f,
                "this asset service has no script compiler, so it accepts no scripts"
            ),
        }
    }
}

/// Checks an upload of `content` as `name` (forced or not) against `rules`. `Ok(None)`: not a
/// script, nothing to check; `Ok(Some(stem))`: a script that may be stored.
pub fn check_upload(
    rules: &ScriptRules,
    name: &AssetName,
    content: &[u8],
    force: bool,
) -> Result<Option<String>, ScriptRefusal> {
    let Some(stem) = check_name(rules, name, force)? else {
        return Ok(None);
    };
    check_content(rules, name.as_str(), &stem, content)?;
    Ok(Some(stem))
}

/// The name checks of [`check_upload`] (no content needed): `Ok(None)` for names that are not
/// scripts.
pub fn check_name(
    rules: &ScriptRules,
    name: &AssetName,
    force: bool,
) -> Result<Option<String>, ScriptRefusal> {
    let name = name.as_str();
    if !name.ends_with(SCRIPT_EXTENSION) {
        return Ok(None);
    }
    let Some(stem) = script_stem(name) else {
        let file = name.rsplit('/').next().unwrap_or(name);
        let stem = file.strip_suffix(SCRIPT_EXTENSION).unwrap_or(file);
        let stem = if stem.is_empty() { "<name>" } else { stem };
        return Err(ScriptRefusal::Misplaced {
            name: name.to_string(),
            suggestion: script_name(stem),
        });
    };
    let known = rules.world.as_ref().is_some_and(|w| w.used.contains(stem));
    if !known && !force {
        let used: Vec<String> = rules
            .world
            .as_ref()
            .map(|w| w.used.iter().cloned().collect())
            .unwrap_or_default();
        return Err(ScriptRefusal::Unknown {
            stem: stem.to_string(),
            world: rules.world.as_ref().map(|w| w.name.clone()),
            closest: closest(stem, &used),
            known: used,
        });
    }
    Ok(Some(stem.to_string()))
}

/// The content check of [`check_upload`]: UTF-8, and compiled by the shards' engine.
pub fn check_content(
    rules: &ScriptRules,
    name: &str,
    stem: &str,
    content: &[u8],
) -> Result<(), ScriptRefusal> {
    let compile = |error| ScriptRefusal::Compile {
        name: name.to_string(),
        error,
    };
    let source = std::str::from_utf8(content).map_err(|e| {
        let (line, column) = line_column(&content[..e.valid_up_to()]);
        compile(CompileError {
            line: Some(line),
            column: Some(column),
            message: "scripts are UTF-8 text, and this byte is not".into(),
        })
    })?;
    let compiler = rules.compiler.as_ref().ok_or(ScriptRefusal::NoCompiler)?;
    compiler.check(stem, source).map_err(compile)
}

/// The 1-based line and column just past `before`.
fn line_column(before: &[u8]) -> (usize, usize) {
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// The name in `known` closest to `stem` by edit distance, if it is at most 2 edits (or a
/// third of the name) away.
fn closest(stem: &str, known: &[String]) -> Option<String> {
    let limit = (stem.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(stem, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Where the running version of a script comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptSource {
    /// The world folder's file (no upload is in effect).
    World,
    /// The name's current upload.
    Upload,
}

impl ScriptSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptSource::World => "world",
            ScriptSource::Upload => "upload",
        }
    }
}

/// One version of a script: its content's hash and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldVersion {
    pub hash: String,
    pub size: u64,
}

impl WorldVersion {
    pub fn of(source: &str) -> WorldVersion {
        WorldVersion {
            hash: hash_hex(source.as_bytes()),
            size: source.len() as u64,
        }
    }
}

/// The current upload of a script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadVersion {
    pub hash: String,
    pub size: u64,
    pub updated_unix_ms: u64,
    pub by: String,
}

/// One script the world runs or an operator uploaded, and which of its versions is in effect
/// (`GET /v1/scripts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptStatus {
    /// The asset name, `scripts/<stem>.rhai`.
    pub name: String,
    /// The stem NPCs refer to.
    pub script: String,
    /// Whether an NPC of the world runs it (false for forced uploads, and without a world).
    pub used: bool,
    pub in_effect: ScriptSource,
    /// The world folder's version, if the world has one.
    pub world: Option<WorldVersion>,
    /// The current upload, if there is one.
    pub upload: Option<UploadVersion>,
}

/// Every script and where its running version comes from (`GET /v1/scripts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptsView {
    /// The world's name; `None` when the service was started without one.
    pub world: Option<String>,
    /// The scripts NPCs run.
    pub known: Vec<String>,
    pub scripts: Vec<ScriptStatus>,
}

/// The scripts view from the world and the current uploads (`uploads`: asset name to its
/// current upload; names that are not scripts are skipped).
pub fn scripts_view(
    world: Option<&WorldScripts>,
    uploads: &BTreeMap<String, UploadVersion>,
) -> ScriptsView {
    let mut stems: BTreeSet<&str> = uploads.keys().filter_map(|n| script_stem(n)).collect();
    if let Some(world) = world {
        stems.extend(world.sources.keys().map(String::as_str));
        stems.extend(world.used.iter().map(String::as_str));
    }
    let scripts = stems
        .into_iter()
        .map(|stem| {
            let name = script_name(stem);
            let upload = uploads.get(&name).cloned();
            ScriptStatus {
                script: stem.to_string(),
                used: world.is_some_and(|w| w.used.contains(stem)),
                in_effect: if upload.is_some() {
                    ScriptSource::Upload
                } else {
                    ScriptSource::World
                },
                world: world.and_then(|w| w.source(stem)).map(WorldVersion::of),
                upload,
                name,
            }
        })
        .collect();
    ScriptsView {
        world: world.map(|w| w.name.clone()),
        known: world
            .map(|w| w.used.iter().cloned().collect())
            .unwrap_or_default(),
        scripts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts sources without the word `broken`; says where it is otherwise.
    struct Fussy;

    impl ScriptCompiler for Fussy {
        fn check(&self, _: &str, source: &str) -> Result<(), CompileError> {
            match source.find("broken") {
                None => Ok(()),
                Some(at) => {
                    let (line, column) = line_column(&source.as_bytes()[..at]);
                    Err(CompileError {
                        line: Some(line),
                        column: Some(column),
                        message: "broken".into(),
                    })
                }
            }
        }
    }

    fn rules(world: bool) -> ScriptRules {
        let sources = BTreeMap::from([
            ("greeter".to_string(), "fn on_tick() {}".to_string()),
            ("guard".to_string(), "fn on_tick() {}".to_string()),
            ("spare".to_string(), "fn on_tick() {}".to_string()),
        ]);
        ScriptRules {
            world: world.then(|| {
                WorldScripts::new(
                    "default",
                    ["greeter".to_string(), "guard".to_string()],
                    sources,
                )
            }),
            compiler: Some(Arc::new(Fussy)),
        }
    }

    fn check(
        rules: &ScriptRules,
        name: &str,
        content: &str,
        force: bool,
    ) -> Result<Option<String>, ScriptRefusal> {
        check_upload(
            rules,
            &AssetName::parse(name).unwrap(),
            content.as_bytes(),
            force,
        )
    }

    #[test]
    fn stems_are_only_direct_children_of_scripts() {
        assert_eq!(script_stem("scripts/guard.rhai"), Some("guard"));
        for name in [
            "guard.rhai",
            "scripts/.rhai",
            "scripts/a/b.rhai",
            "scripts/guard.toml",
            "x/scripts/a.rhai",
        ] {
            assert_eq!(script_stem(name), None, "{name}");
        }
    }

    #[test]
    fn names_outside_scripts_are_refused_with_the_name_that_works() {
        for (name, suggestion) in [
            ("greeter.rhai", "scripts/greeter.rhai"),
            ("npc/scripts/greeter.rhai", "scripts/greeter.rhai"),
            ("scripts/npc/greeter.rhai", "scripts/greeter.rhai"),
        ] {
            for force in [false, true] {
                let err = check(&rules(true), name, "fn on_tick() {}", force).unwrap_err();
                assert_eq!(
                    err,
                    ScriptRefusal::Misplaced {
                        name: name.into(),
                        suggestion: suggestion.into()
                    }
                );
                assert!(
                    err.to_string()
                        .contains(&format!("upload it as {suggestion}")),
                    "{err}"
                );
            }
        }
        // Other assets are not scripts.
        assert_eq!(check(&rules(true), "world.toml", "broken", false), Ok(None));
        assert_eq!(
            check(&rules(false), "meshes/a.glb", "broken", false),
            Ok(None)
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones_and_force_lets_them_through() {
        let err = check(&rules(true), "scripts/gaurd.rhai", "fn on_tick() {}", false).unwrap_err();
        assert_eq!(err.code(), "unknown-script");
        let text = err.to_string();
        assert!(
            text.contains("no NPC of world \"default\" runs a script named \"gaurd\""),
            "{text}"
        );
        assert!(text.contains("did you mean scripts/guard.rhai?"), "{text}");
        assert!(text.contains("greeter, guard"), "{text}");
        assert!(text.contains("--force"), "{text}");
        // A script in the folder that no NPC runs is unknown too.
        assert!(check(&rules(true), "scripts/spare.rhai", "", false).is_err());
        assert!(!check(&rules(true), "scripts/zzzzzzzz.rhai", "", false)
            .unwrap_err()
            .to_string()
            .contains("did you mean"));
        assert_eq!(
            check(&rules(true), "scripts/gaurd.rhai", "fn on_tick() {}", true),
            Ok(Some("gaurd".into()))
        );
        assert_eq!(
            check(&rules(true), "scripts/guard.rhai", "fn on_tick() {}", false),
            Ok(Some("guard".into()))
        );
    }

    #[test]
    fn without_a_world_every_script_needs_force_and_is_still_compiled() {
        let err = check(&rules(false), "scripts/guard.rhai", "", false).unwrap_err();
        assert!(err.to_string().contains("started without a world"), "{err}");
        assert_eq!(
            check(&rules(false), "scripts/guard.rhai", "", true),
            Ok(Some("guard".into()))
        );
        assert!(matches!(
            check(&rules(false), "scripts/guard.rhai", "x\n  broken", true),
            Err(ScriptRefusal::Compile { .. })
        ));
        let none = ScriptRules::default();
        assert_eq!(
            check(&none, "scripts/guard.rhai", "", true),
            Err(ScriptRefusal::NoCompiler)
        );
    }

    #[test]
    fn broken_content_is_refused_with_its_line_and_column_forced_or_not() {
        for force in [false, true] {
            let err = check(
                &rules(true),
                "scripts/guard.rhai",
                "fn on_tick() {\n  broken\n}",
                force,
            )
            .unwrap_err();
            assert_eq!(err.code(), "script-compile");
            let text = err.to_string();
            assert!(
                text.contains("scripts/guard.rhai does not compile at line 2, column 3: broken"),
                "{text}"
            );
            assert!(text.contains("the version in effect stays"), "{text}");
        }
        let err = check_upload(
            &rules(true),
            &AssetName::parse("scripts/guard.rhai").unwrap(),
            b"fn a() {}\n\xc3\xa9t\xff",
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("at line 2, column 3: scripts are UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn the_view_shows_world_scripts_and_which_version_is_in_effect() {
        let rules = rules(true);
        let uploads = BTreeMap::from([
            (
                "scripts/greeter.rhai".to_string(),
                UploadVersion {
                    hash: "h".into(),
                    size: 1,
                    updated_unix_ms: 5,
                    by: "operator:ann".into(),
                },
            ),
            (
                "scripts/extra.rhai".to_string(),
                UploadVersion {
                    hash: "e".into(),
                    size: 2,
                    updated_unix_ms: 6,
                    by: "operator:ann".into(),
                },
            ),
        ]);
        let view = scripts_view(rules.world.as_ref(), &uploads);
        assert_eq!(view.world.as_deref(), Some("default"));
        assert_eq!(view.known, ["greeter", "guard"]);
        let by: BTreeMap<_, _> = view
            .scripts
            .iter()
            .map(|s| (s.script.as_str(), s))
            .collect();
        assert_eq!(
            by.keys().copied().collect::<Vec<_>>(),
            ["extra", "greeter", "guard", "spare"]
        );
        assert_eq!(by["greeter"].in_effect, ScriptSource::Upload);
        assert_eq!(
            by["greeter"].world.as_ref().unwrap().hash,
            hash_hex(b"fn on_tick() {}")
        );
        assert_eq!(by["guard"].in_effect, ScriptSource::World);
        assert!(by["guard"].upload.is_none() && by["guard"].used);
        assert!(!by["extra"].used && by["extra"].world.is_none());
        assert!(!by["spare"].used);
        // Without a world, only uploads.
        let view = scripts_view(None, &uploads);
        assert_eq!(view.scripts.len(), 2);
        assert!(view.world.is_none() && view.known.is_empty());
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("warden", "wardn"), 1);
        assert_eq!(edit_distance("guard", "gaurd"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("wardn", &["warden".into(), "guard".into()]).as_deref(),
            Some("warden")
        );
    }
}
