//! The rhai script host for NPCs.
//!
//! Every NPC entity carries a [`ScriptInstance`]: the name of its script, its
//! persistent `state` (a JSON object) and, once a call has failed, the reason
//! it was disabled. The shard calls [`ScriptEngine::init`],
//! [`ScriptEngine::on_tick`] and [`ScriptEngine::on_hear`]; each call runs
//! under the [`ScriptLimits`] and returns [`ScriptAction`]s for the shard to
//! carry out. Scripts never touch the world themselves, so the host is pure:
//! the same instance, context and seed always give the same actions.
//!
//! How a call works: the host turns `state` into a rhai object map, makes it
//! visible to the script as the variable `state` (a shared value handed out
//! by a variable resolver, because rhai functions cannot see the caller's
//! scope), points the native functions at a per-call frame (context,
//! random generator, action buffer), calls the function, and reads `state`
//! back. A call that fails in any way disables the instance for good; the
//! script API is documented in `docs/scripting.md`.

use parking_lot::Mutex;
use rhai::{
    Array, CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, ImmutableString, Map, Position,
    Scope, AST, FLOAT, INT,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tessera_proto::{EntityId, Vec3};

/// Most actions one call may produce; further ones are dropped.
pub const MAX_ACTIONS_PER_CALL: usize = 8;
/// `say` and `emote` texts are cut to this many characters.
pub const MAX_SAY_CHARS: usize = 200;
/// Largest script source accepted.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
/// Largest `state`, measured as compact JSON.
pub const MAX_STATE_BYTES: usize = 16 * 1024;
/// Deepest nesting of maps and arrays in `state`.
pub const MAX_STATE_DEPTH: usize = 8;

/// Limits applied to every script call. In rhai's convention a limit of 0
/// means "unlimited", so do not use 0 for scripts you do not trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptLimits {
    /// Operations (roughly: expression evaluations) per call.
    pub max_operations: u64,
    /// Depth of nested function calls.
    pub max_call_levels: usize,
    /// Depth of nested expressions, checked when compiling.
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 20_000,
            max_call_levels: 16,
            max_expr_depth: 32,
            max_string_size: 1024,
            max_array_size: 256,
            max_map_size: 64,
        }
    }
}

/// Why a script could not be loaded. Run-time failures are not errors of the
/// host: they disable the one instance (see [`ScriptInstance::disabled`]).
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("script {script:?} does not compile{}: {message}", at_position(*line, *column))]
    Compile {
        script: String,
        /// 1-based, where rhai knows it.
        line: Option<usize>,
        /// 1-based, where rhai knows it.
        column: Option<usize>,
        message: String,
    },
    #[error("script {script:?} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        script: String,
        size: usize,
        limit: usize,
    },
}

fn at_position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// The script part of an NPC: everything that travels with the entity on
/// hand-off and migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptInstance {
    /// Name of the script (file stem).
    pub script: String,
    /// The script's persistent `state` map, as a JSON object. Stored as JSON
    /// text in binary formats (bincode cannot carry a free-form value).
    #[serde(with = "json_state")]
    pub state: Value,
    /// Set, with the reason, once a call failed; the instance then does
    /// nothing any more.
    pub disabled: Option<String>,
}

impl ScriptInstance {
    pub fn new(script_name: &str) -> ScriptInstance {
        ScriptInstance {
            script: script_name.to_string(),
            state: Value::Object(Default::default()),
            disabled: None,
        }
    }
}

/// What a call knows about its NPC and the moment.
#[derive(Clone, Copy, Debug)]
pub struct ScriptCtx<'a> {
    pub entity: EntityId,
    pub name: &'a str,
    pub pos: Vec3,
    pub home: Vec3,
    pub tick: u64,
    /// Seeds the script's `rand()`; see [`derive_seed`].
    pub seed: u64,
}

/// A deterministic seed for one call: mixes the entity, the tick and a salt
/// (use a different salt for each call in the same tick, e.g. 0 for
/// `on_tick` and a counter for `on_hear`).
pub fn derive_seed(entity: EntityId, tick: u64, salt: u64) -> u64 {
    let mut s = entity.0 ^ tick.rotate_left(32) ^ salt.wrapping_mul(0xA076_1D64_78BD_642F);
    splitmix64(&mut s)
}

/// What a script asks the shard to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptAction {
    /// Speak to everyone in earshot.
    Say(String),
    /// Walk to this point at NPC speed.
    WalkTo(Vec3),
    /// Stop walking.
    Stop,
    /// An action shown as "<name> <text>", e.g. "Mira waves.".
    Emote(String),
}

/// State of the call in progress, shared with the native functions.
struct Frame {
    entity: EntityId,
    name: String,
    pos: Vec3,
    home: Vec3,
    tick: u64,
    rng: u64,
    /// The `state` map as a shared value, so the script's writes land here.
    state: Dynamic,
    actions: Vec<ScriptAction>,
    dropped: usize,
}

impl Frame {
    fn idle() -> Frame {
        Frame {
            entity: EntityId(0),
            name: String::new(),
            pos: Vec3::ZERO,
            home: Vec3::ZERO,
            tick: 0,
            rng: 0,
            state: Dynamic::UNIT,
            actions: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, action: ScriptAction) {
        if self.actions.len() < MAX_ACTIONS_PER_CALL {
            self.actions.push(action);
        } else {
            self.dropped += 1;
        }
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (splitmix64(&mut self.rng) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A compiled script, or why it did not compile.
enum Compiled {
    Ready { ast: Arc<AST>, entry: Entry },
    Broken(String),
}

/// Which entry points a script defines.
#[derive(Clone, Copy, Default)]
struct Entry {
    init: bool,
    on_tick: bool,
    on_hear: bool,
}

/// The script host: one rhai engine and the compiled scripts. One per shard
/// thread; `Send` (and `Sync`, though calls are meant to be sequential).
pub struct ScriptEngine {
    engine: Engine,
    limits: ScriptLimits,
    scripts: HashMap<String, Compiled>,
    frame: Arc<Mutex<Frame>>,
    /// Held for a whole call: the frame is per engine, so calls from two
    /// threads (the engine is `Sync`) must not interleave.
    calling: Mutex<()>,
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn script_error(msg: String) -> Box<EvalAltResult> {
    msg.into()
}

/// A number argument (int or float) as f32, refusing NaN and infinities.
fn number(v: &Dynamic, func: &str, arg: &str) -> RhaiResult<f32> {
    let f = if let Ok(i) = v.as_int() {
        i as f64
    } else if let Ok(f) = v.as_float() {
        f
    } else {
        return Err(script_error(format!(
            "{func}: {arg} must be a number, got {}",
            v.type_name()
        )));
    };
    if !f.is_finite() || f.abs() > 1e7 {
        return Err(script_error(format!("{func}: {arg} is out of range")));
    }
    Ok(f as f32)
}

fn vec_map(v: Vec3) -> Map {
    let mut m = Map::new();
    m.insert("x".into(), Dynamic::from_float(v.x as FLOAT));
    m.insert("y".into(), Dynamic::from_float(v.y as FLOAT));
    m.insert("z".into(), Dynamic::from_float(v.z as FLOAT));
    m
}

/// Text fit for players' screens: control characters (terminal escapes,
/// newlines) become spaces, surrounding space is trimmed, and the result is
/// cut to [`MAX_SAY_CHARS`] characters.
fn clean_text(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.trim().chars().take(MAX_SAY_CHARS).collect()
}

/// Whether `text` mentions `name` (or, for a numbered name like "Sheep 3",
/// its base "Sheep") as a whole word, ignoring case.
fn mentions(name: &str, text: &str) -> bool {
    let text = text.to_lowercase();
    let name = name.to_lowercase();
    let base = match name.rsplit_once(' ') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) => Some(base.to_string()),
        _ => None,
    };
    std::iter::once(name.as_str())
        .chain(base.as_deref())
        .filter(|n| !n.is_empty())
        .any(|n| contains_word(&text, n))
}

fn contains_word(haystack: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric();
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

impl ScriptEngine {
    pub fn new(limits: ScriptLimits) -> ScriptEngine {
        let frame = Arc::new(Mutex::new(Frame::idle()));
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size);
        // Nothing reaches outside the call: no eval, no modules (the default
        // resolver would read files), print and debug go to the log.
        engine.disable_symbol("eval");
        engine.disable_symbol("import");
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        let f = frame.clone();
        engine.on_print(move |text| {
            let f = f.lock();
            tracing::info!(entity = %f.entity, npc = %f.name, "script print: {text}");
        });
        let f = frame.clone();
        engine.on_debug(move |text, _, pos| {
            let f = f.lock();
            tracing::debug!(entity = %f.entity, npc = %f.name, "script debug at {pos}: {text}");
        });
        // `state` resolves to the frame's shared map unless a local variable
        // of that name exists (index > 0).
        let f = frame.clone();
        #[allow(deprecated)] // on_var is marked volatile, not deprecated
        engine.on_var(move |name, index, _ctx| {
            if index == 0 && name == "state" {
                Ok(Some(f.lock().state.clone()))
            } else {
                Ok(None)
            }
        });
        register_api(&mut engine, &frame);
        ScriptEngine {
            engine,
            limits,
            scripts: HashMap::new(),
            frame,
            calling: Mutex::new(()),
        }
    }

    pub fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    /// Compile `source` as script `name`, replacing any earlier version.
    /// A script that fails is remembered as broken, so instances of it start
    /// disabled with the reason instead of failing later.
    pub fn compile(&mut self, name: &str, source: &str) -> Result<(), ScriptError> {
        match self.try_compile(name, source) {
            Ok(compiled) => {
                self.scripts.insert(name.to_string(), compiled);
                Ok(())
            }
            Err(e) => {
                self.scripts
                    .insert(name.to_string(), Compiled::Broken(e.to_string()));
                Err(e)
            }
        }
    }

    /// Replaces a script with a new version (hot reload). Instances keep
    /// their state and call the new code from their next call. A version
    /// that does not compile is refused and the old one keeps running.
    pub fn reload(&mut self, name: &str, source: &str) -> Result<(), ScriptError> {
        let compiled = self.try_compile(name, source)?;
        self.scripts.insert(name.to_string(), compiled);
        Ok(())
    }

    /// Compile every script of a world; returns the failures (the other
    /// scripts are usable).
    pub fn compile_all(&mut self, scripts: &BTreeMap<String, String>) -> Vec<ScriptError> {
        scripts
            .iter()
            .filter_map(|(name, src)| self.compile(name, src).err())
            .collect()
    }

    /// Checks that `source` would load as script `name` (size, syntax, limits, entry
    /// points), as [`ScriptEngine::reload`] does, without keeping it. The asset service runs
    /// this on uploads, so a version the shards would refuse is refused before it is stored.
    pub fn check(&self, name: &str, source: &str) -> Result<(), ScriptError> {
        self.try_compile(name, source).map(drop)
    }

    /// Whether `name` compiled successfully.
    pub fn is_ready(&self, name: &str) -> bool {
        matches!(self.scripts.get(name), Some(Compiled::Ready { .. }))
    }

    fn try_compile(&self, name: &str, source: &str) -> Result<Compiled, ScriptError> {
        if source.len() > MAX_SCRIPT_BYTES {
            return Err(ScriptError::TooLarge {
                script: name.to_string(),
                size: source.len(),
                limit: MAX_SCRIPT_BYTES,
            });
        }
        let compile_error = |pos: Position, message: String| ScriptError::Compile {
            script: name.to_string(),
            line: pos.line(),
            column: pos.position(),
            message,
        };
        let ast = self
            .engine
            .compile(source)
            .map_err(|e| compile_error(e.position(), e.err_type().to_string()))?;
        // Only functions are ever called; code outside them would silently
        // never run, so refuse it.
        if let Some(stmt) = <AST as AsRef<[_]>>::as_ref(&ast).first() {
            return Err(compile_error(
                stmt.position(),
                "statements outside functions are never run; put set-up code in fn init()"
                    .to_string(),
            ));
        }
        let mut entry = Entry::default();
        for f in ast.iter_functions() {
            let (slot, arity) = match f.name {
                "init" => (&mut entry.init, 0),
                "on_tick" => (&mut entry.on_tick, 0),
                "on_hear" => (&mut entry.on_hear, 2),
                _ => continue,
            };
            if f.params.len() != arity {
                let wanted = if arity == 0 {
                    "no parameters"
                } else {
                    "(speaker, text)"
                };
                return Err(compile_error(
                    Position::NONE,
                    format!("fn {} must take {wanted}", f.name),
                ));
            }
            *slot = true;
        }
        Ok(Compiled::Ready {
            ast: Arc::new(ast),
            entry,
        })
    }

    /// Call `fn init()` if the script defines it. The shard calls this once
    /// when the NPC is first spawned (not after a hand-off or migration).
    pub fn init(&self, inst: &mut ScriptInstance, ctx: &ScriptCtx) -> Vec<ScriptAction> {
        self.call(inst, ctx, "init", |e| e.init, ())
    }

    /// Call `fn on_tick()` if the script defines it.
    pub fn on_tick(&self, inst: &mut ScriptInstance, ctx: &ScriptCtx) -> Vec<ScriptAction> {
        self.call(inst, ctx, "on_tick", |e| e.on_tick, ())
    }

    /// Call `fn on_hear(speaker, text)` if the script defines it. `text` is
    /// cut to the string size limit first.
    pub fn on_hear(
        &self,
        inst: &mut ScriptInstance,
        ctx: &ScriptCtx,
        speaker: &str,
        text: &str,
    ) -> Vec<ScriptAction> {
        let cut = |s: &str| -> ImmutableString {
            let max = match self.limits.max_string_size {
                0 => usize::MAX,
                n => n,
            };
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].into()
        };
        self.call(
            inst,
            ctx,
            "on_hear",
            |e| e.on_hear,
            (cut(speaker), cut(text)),
        )
    }

    fn call(
        &self,
        inst: &mut ScriptInstance,
        ctx: &ScriptCtx,
        func: &str,
        defined: impl Fn(&Entry) -> bool,
        args: impl FuncArgs,
    ) -> Vec<ScriptAction> {
        if inst.disabled.is_some() {
            return Vec::new();
        }
        let ast = match self.scripts.get(&inst.script) {
            Some(Compiled::Ready { ast, entry }) if defined(entry) => ast.clone(),
            Some(Compiled::Ready { .. }) => return Vec::new(),
            Some(Compiled::Broken(reason)) => {
                disable(inst, ctx, reason.clone());
                return Vec::new();
            }
            None => {
                let reason = format!("no script named {:?} is loaded", inst.script);
                disable(inst, ctx, reason);
                return Vec::new();
            }
        };
        let state = match json_to_dynamic(&inst.state) {
            Ok(s) => s,
            Err(e) => {
                disable(inst, ctx, e);
                return Vec::new();
            }
        };
        let _calling = self.calling.lock();
        {
            let mut f = self.frame.lock();
            f.entity = ctx.entity;
            f.name = ctx.name.to_string();
            f.pos = ctx.pos;
            f.home = ctx.home;
            f.tick = ctx.tick;
            f.rng = ctx.seed;
            f.state = state.into_shared();
            f.actions.clear();
            f.dropped = 0;
        }
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &ast,
            func,
            args,
        );
        let (state, actions, dropped) = {
            let mut f = self.frame.lock();
            let state = std::mem::take(&mut f.state);
            (state, std::mem::take(&mut f.actions), f.dropped)
        };
        if let Err(e) = result {
            disable(inst, ctx, format!("in {func}: {e}"));
            return Vec::new();
        }
        match dynamic_to_json(&state.flatten(), &self.limits) {
            Ok(json) => inst.state = json,
            Err(e) => {
                disable(inst, ctx, format!("after {func}: {e}"));
                return Vec::new();
            }
        }
        if dropped > 0 {
            tracing::warn!(
                entity = %ctx.entity, script = %inst.script,
                "{func} asked for {dropped} actions over the limit of {MAX_ACTIONS_PER_CALL}; dropped"
            );
        }
        actions
    }
}

fn disable(inst: &mut ScriptInstance, ctx: &ScriptCtx, e: String) {
    tracing::error!(entity = %ctx.entity, script = %inst.script, error = %e, "script disabled");
    inst.disabled = Some(e);
}

/// The native functions scripts may call; see docs/scripting.md.
fn register_api(engine: &mut Engine, frame: &Arc<Mutex<Frame>>) {
    let f = frame.clone();
    engine.register_fn("say", move |text: Dynamic| {
        let text = clean_text(&text.to_string());
        if !text.is_empty() {
            f.lock().push(ScriptAction::Say(text));
        }
    });
    let f = frame.clone();
    engine.register_fn("emote", move |text: Dynamic| {
        let text = clean_text(&text.to_string());
        if !text.is_empty() {
            f.lock().push(ScriptAction::Emote(text));
        }
    });
    let f = frame.clone();
    engine.register_fn("walk_to", move |x: Dynamic, z: Dynamic| -> RhaiResult<()> {
        let (x, z) = (number(&x, "walk_to", "x")?, number(&z, "walk_to", "z")?);
        let mut f = f.lock();
        let y = f.pos.y;
        f.push(ScriptAction::WalkTo(Vec3::new(x, y, z)));
        Ok(())
    });
    let f = frame.clone();
    engine.register_fn("stop", move || f.lock().push(ScriptAction::Stop));
    let f = frame.clone();
    engine.register_fn("wander", move |radius: Dynamic| -> RhaiResult<Map> {
        let radius = number(&radius, "wander", "radius")?;
        if radius < 0.0 {
            return Err(script_error("wander: radius must not be negative".into()));
        }
        let mut f = f.lock();
        // Uniform over the disc: sqrt on the radius.
        let r = radius * (f.next_f64() as f32).sqrt();
        let angle = f.next_f64() as f32 * std::f32::consts::TAU;
        let target = Vec3::new(
            f.home.x + r * angle.cos(),
            f.pos.y,
            f.home.z + r * angle.sin(),
        );
        f.push(ScriptAction::WalkTo(target));
        Ok(vec_map(target))
    });
    let f = frame.clone();
    engine.register_fn("my_name", move || -> ImmutableString {
        f.lock().name.as_str().into()
    });
    let f = frame.clone();
    engine.register_fn("my_pos", move || vec_map(f.lock().pos));
    let f = frame.clone();
    engine.register_fn("home", move || vec_map(f.lock().home));
    let f = frame.clone();
    engine.register_fn(
        "distance_to",
        move |x: Dynamic, z: Dynamic| -> RhaiResult<FLOAT> {
            let p = Vec3::new(
                number(&x, "distance_to", "x")?,
                0.0,
                number(&z, "distance_to", "z")?,
            );
            Ok(f.lock().pos.distance_xz(p) as FLOAT)
        },
    );
    let f = frame.clone();
    engine.register_fn("tick", move || f.lock().tick as INT);
    let f = frame.clone();
    engine.register_fn("rand", move || f.lock().next_f64() as FLOAT);
    let f = frame.clone();
    engine.register_fn("rand_int", move |lo: INT, hi: INT| -> RhaiResult<INT> {
        if lo > hi {
            return Err(script_error(format!(
                "rand_int: lo ({lo}) is above hi ({hi})"
            )));
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let draw = splitmix64(&mut f.lock().rng) as u128;
        Ok((lo as i128 + ((draw * span) >> 64) as i128) as INT)
    });
    let f = frame.clone();
    engine.register_fn("log", move |text: Dynamic| {
        let f = f.lock();
        tracing::info!(entity = %f.entity, npc = %f.name, "script: {}", clean_text(&text.to_string()));
    });
    // The host's clock would make calls non-deterministic; shadow the
    // standard library's `timestamp()`.
    engine.register_fn("timestamp", || -> RhaiResult<INT> {
        Err(script_error(
            "timestamp() is not available to NPC scripts; use tick()".into(),
        ))
    });
    let f = frame.clone();
    engine.register_fn("mentions_me", move |text: &str| {
        mentions(&f.lock().name, text)
    });
}

// ---------------------------------------------------------------------------
// state <-> JSON

fn json_to_dynamic(v: &Value) -> Result<Dynamic, String> {
    match v {
        // A missing state (older records) is an empty one.
        Value::Null => Ok(Dynamic::from_map(Map::new())),
        Value::Object(_) => Ok(json_value(v)),
        _ => Err("state is not a JSON object".to_string()),
    }
}

fn json_value(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_value).collect::<Array>()),
        Value::Object(o) => {
            let map: Map = o
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_value(v)))
                .collect();
            Dynamic::from_map(map)
        }
    }
}

/// `state` as JSON, enforcing the limits and [`MAX_STATE_BYTES`].
fn dynamic_to_json(v: &Dynamic, limits: &ScriptLimits) -> Result<Value, String> {
    if !v.is_map() {
        return Err(format!(
            "state must stay an object map, not {}",
            v.type_name()
        ));
    }
    let json = to_json(v, limits, 0, "state")?;
    let size = serde_json::to_vec(&json)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_STATE_BYTES {
        return Err(format!(
            "state is {size} bytes as JSON, over the limit of {MAX_STATE_BYTES}"
        ));
    }
    Ok(json)
}

fn to_json(v: &Dynamic, limits: &ScriptLimits, depth: usize, path: &str) -> Result<Value, String> {
    let over = |what: &str, n: usize, max: usize| {
        Err(format!("{path}: {what} of {n} is over the limit of {max}"))
    };
    if depth > MAX_STATE_DEPTH {
        return Err(format!(
            "{path}: nested deeper than {MAX_STATE_DEPTH} levels"
        ));
    }
    let v = v.flatten_clone();
    if v.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = v.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = v.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{path}: {f} cannot be stored"));
    }
    if let Ok(c) = v.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if v.is_string() {
        let s = v.into_string().unwrap_or_default();
        if limits.max_string_size > 0 && s.len() > limits.max_string_size {
            return over("a string", s.len(), limits.max_string_size);
        }
        return Ok(Value::String(s));
    }
    if v.is_array() {
        let a = v.into_array().unwrap_or_default();
        if limits.max_array_size > 0 && a.len() > limits.max_array_size {
            return over("an array", a.len(), limits.max_array_size);
        }
        return a
            .iter()
            .enumerate()
            .map(|(i, x)| to_json(x, limits, depth + 1, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if v.is_map() {
        let m = v.cast::<Map>();
        if limits.max_map_size > 0 && m.len() > limits.max_map_size {
            return over("a map", m.len(), limits.max_map_size);
        }
        let mut out = serde_json::Map::new();
        for (k, x) in &m {
            out.insert(
                k.to_string(),
                to_json(x, limits, depth + 1, &format!("{path}.{k}"))?,
            );
        }
        return Ok(Value::Object(out));
    }
    Err(format!("{path}: a {} cannot be stored", v.type_name()))
}

/// `state` as itself in human-readable formats (JSON) and as JSON text in
/// binary ones (bincode cannot deserialize a self-describing value).
mod json_state {
    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANDERER: &str = include_str!("../../worlds/default/scripts/wanderer.rhai");
    const GREETER: &str = include_str!("../../worlds/default/scripts/greeter.rhai");

    fn engine_with(name: &str, src: &str) -> ScriptEngine {
        let mut e = ScriptEngine::new(ScriptLimits::default());
        e.compile(name, src).unwrap_or_else(|err| panic!("{err}"));
        e
    }

    fn ctx(name: &str, tick: u64) -> ScriptCtx<'_> {
        ScriptCtx {
            entity: EntityId(EntityId::NPC_BIT | 7),
            name,
            pos: Vec3::new(11.0, 0.0, 9.0),
            home: Vec3::new(10.0, 0.0, 10.0),
            tick,
            seed: derive_seed(EntityId(7), tick, 0),
        }
    }

    /// Run `body` as `on_tick` and return the instance afterwards.
    fn run_tick(body: &str) -> (ScriptInstance, Vec<ScriptAction>) {
        let e = engine_with("t", &format!("fn on_tick() {{ {body} }}"));
        let mut inst = ScriptInstance::new("t");
        let actions = e.on_tick(&mut inst, &ctx("Tester", 1));
        (inst, actions)
    }

    fn assert_disabled(body: &str, needle: &str) {
        let (inst, actions) = run_tick(body);
        assert!(actions.is_empty(), "{body}: {actions:?}");
        let reason = inst
            .disabled
            .unwrap_or_else(|| panic!("{body} did not disable"));
        assert!(reason.to_lowercase().contains(needle), "{body}: {reason}");
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ScriptEngine>();
    }

    #[test]
    fn wander_walks_within_radius_of_home() {
        let e = engine_with("wanderer", WANDERER);
        let mut inst = ScriptInstance::new("wanderer");
        let mut walks = 0;
        for tick in (0..20_000).step_by(10) {
            let c = ctx("Sheep 2", tick);
            for a in e.on_tick(&mut inst, &c) {
                if let ScriptAction::WalkTo(p) = a {
                    walks += 1;
                    assert!(p.distance_xz(c.home) <= 12.0 + 1e-3, "{p} too far");
                }
            }
        }
        assert!(inst.disabled.is_none(), "{:?}", inst.disabled);
        assert!(walks >= 10, "only {walks} walks");

        let e = engine_with("w", "fn on_tick() { let t = wander(4.5); state.t = t; }");
        for tick in 0..200 {
            let mut inst = ScriptInstance::new("w");
            let c = ctx("Hen", tick);
            let actions = e.on_tick(&mut inst, &c);
            let [ScriptAction::WalkTo(p)] = actions[..] else {
                panic!("{actions:?}")
            };
            assert!(p.distance_xz(c.home) <= 4.5 + 1e-4);
            assert_eq!(inst.state["t"]["x"].as_f64().unwrap() as f32, p.x);
        }
    }

    #[test]
    fn wanderer_answers_to_its_name() {
        let e = engine_with("wanderer", WANDERER);
        let mut inst = ScriptInstance::new("wanderer");
        let c = ctx("Whiskers", 5);
        assert!(e.on_hear(&mut inst, &c, "Ann", "nice weather").is_empty());
        let actions = e.on_hear(&mut inst, &c, "Ann", "here, WHISKERS!");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, ScriptAction::Say(_) | ScriptAction::Emote(_))),
            "{actions:?}"
        );
        assert!(inst.disabled.is_none());
    }

    fn said_to(actions: &[ScriptAction], who: &str) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, ScriptAction::Say(t) if t.contains(who)))
    }

    #[test]
    fn greeter_answers_its_name_and_counts() {
        let e = engine_with("greeter", GREETER);
        let mut inst = ScriptInstance::new("greeter");
        let c = ctx("Mira", 100);
        e.init(&mut inst, &c);
        assert!(e.on_hear(&mut inst, &c, "Ann", "hello there").is_empty());
        assert!(e.on_hear(&mut inst, &c, "Ann", "hello miranda").is_empty());
        let said = |actions: &[ScriptAction]| said_to(actions, "Ann");
        assert!(said(&e.on_hear(&mut inst, &c, "Ann", "hello MIRA")));
        assert_eq!(inst.state["greeted"], 1);
        assert!(said(&e.on_hear(&mut inst, &c, "Ann", "mira, again!")));
        assert_eq!(inst.state["greeted"], 2);

        // The instance travels as JSON (and bincode) and keeps counting.
        let json = serde_json::to_string(&inst).unwrap();
        let mut moved: ScriptInstance = serde_json::from_str(&json).unwrap();
        assert_eq!(moved, inst);
        let bytes = tessera_proto::encode(&moved).unwrap();
        let back: ScriptInstance = tessera_proto::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back, moved);
        assert!(said_to(&e.on_hear(&mut moved, &c, "Bo", "Mira?"), "Bo"));
        assert_eq!(moved.state["greeted"], 3);
        assert!(moved.disabled.is_none());
    }

    #[test]
    fn state_persists_between_calls() {
        let e = engine_with(
            "c",
            "fn on_tick() { state.n = (state.n ?? 0) + 1; let state = 5; say(`n=${global_n()}`); }
             fn global_n() { state.n }",
        );
        let mut inst = ScriptInstance::new("c");
        for _ in 0..3 {
            e.on_tick(&mut inst, &ctx("Counter", 1));
        }
        assert_eq!(inst.state["n"], 3);
        assert_eq!(
            e.on_tick(&mut inst, &ctx("Counter", 1)),
            vec![ScriptAction::Say("n=4".into())]
        );
    }

    #[test]
    fn runaway_loop_disables() {
        assert_disabled("loop {}", "too many operations");
        // Later calls return nothing at once.
        let e = engine_with(
            "t",
            "fn on_tick() { loop {} } fn on_hear(a, b) { say(\"hi\") }",
        );
        let mut inst = ScriptInstance::new("t");
        assert!(e.on_tick(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst.disabled.is_some());
        assert!(e
            .on_hear(&mut inst, &ctx("Tester", 1), "A", "Tester")
            .is_empty());
    }

    #[test]
    fn deep_recursion_disables() {
        let e = engine_with("t", "fn on_tick() { down(0) } fn down(n) { down(n + 1) }");
        let mut inst = ScriptInstance::new("t");
        assert!(e.on_tick(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst
            .disabled
            .unwrap()
            .to_lowercase()
            .contains("stack overflow"));
    }

    #[test]
    fn oversized_values_disable() {
        assert_disabled("let s = \"x\"; loop { s += s; }", "string");
        assert_disabled("let s = \"x\".pad(10000, 'x');", "string");
        assert_disabled("let a = []; for i in 0..10000 { a.push(i); }", "array");
        // The state map is checked when the call ends.
        assert_disabled("for i in 0..100 { state[`k${i}`] = i; }", "map");
        assert_disabled("state.a = []; state.a.pad(300, 0);", "array");
        assert_disabled(
            "state.a = #{b: #{c: #{d: #{e: #{f: #{g: #{h: #{i: #{j: 1}}}}}}}}};",
            "nested",
        );
    }

    #[test]
    fn bad_state_disables() {
        assert_disabled("state = 5;", "object map");
        assert_disabled("state.f = || 1;", "cannot be stored");
        assert_disabled("state.x = 0.0 / 0.0;", "cannot be stored");
        let e = engine_with("t", "fn on_tick() { say(\"hi\") }");
        let mut inst = ScriptInstance::new("t");
        inst.state = serde_json::json!([1, 2]);
        assert!(e.on_tick(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst.disabled.is_some());
    }

    #[test]
    fn runtime_errors_disable() {
        assert_disabled("let x = undefined_thing + 1;", "undefined_thing");
        assert_disabled("walk_to(\"north\", 3);", "walk_to");
        assert_disabled("rand_int(5, 1);", "rand_int");
        assert_disabled("throw \"boom\";", "boom");
        assert_disabled("let t = timestamp();", "tick()");
    }

    #[test]
    fn compile_errors_start_instances_disabled() {
        let mut e = ScriptEngine::new(ScriptLimits::default());
        let err = e
            .compile("broken", "fn on_tick() {\n  say(\"hi\"\n}")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("broken") && text.contains("line"), "{text}");
        assert!(!e.is_ready("broken"));
        let mut inst = ScriptInstance::new("broken");
        assert!(e.init(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst.disabled.unwrap().contains("does not compile"));
        // Unknown scripts too.
        let mut inst = ScriptInstance::new("nowhere");
        assert!(e.on_tick(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst.disabled.is_some());
        // Top-level code and wrong entry point signatures are refused.
        let err = e
            .compile("top", "fn on_tick() {}\n\nlet x = 1;")
            .unwrap_err();
        assert!(
            matches!(err, ScriptError::Compile { line: Some(3), .. }),
            "{err}"
        );
        assert!(e.compile("arity", "fn on_hear(text) {}").is_err());
        // A check reports where, and keeps nothing.
        let err = e
            .check("greeter", "fn on_tick() {\n    say(\"hi\"\n}")
            .unwrap_err();
        assert!(
            matches!(
                err,
                ScriptError::Compile {
                    line: Some(3),
                    column: Some(1),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("(line 3, column 1)"), "{err}");
        e.check("fresh", "fn on_tick() {}").unwrap();
        assert!(!e.is_ready("fresh"));
        let huge = format!("fn on_tick() {{}}\n//{}", "x".repeat(MAX_SCRIPT_BYTES));
        assert!(matches!(
            e.compile("huge", &huge),
            Err(ScriptError::TooLarge { .. })
        ));
    }

    #[test]
    fn eval_and_import_are_refused() {
        let mut e = ScriptEngine::new(ScriptLimits::default());
        assert!(e
            .compile("ev", "fn on_tick() { eval(\"say(1)\") }")
            .is_err());
        assert!(e
            .compile("im", "fn on_tick() { import \"fs\" as fs; }")
            .is_err());
        let mut inst = ScriptInstance::new("ev");
        assert!(e.on_tick(&mut inst, &ctx("Tester", 1)).is_empty());
        assert!(inst.disabled.is_some());
    }

    #[test]
    fn missing_functions_are_not_errors() {
        let e = engine_with("t", "fn helper() { 1 }");
        let mut inst = ScriptInstance::new("t");
        let c = ctx("Tester", 1);
        assert!(e.init(&mut inst, &c).is_empty());
        assert!(e.on_tick(&mut inst, &c).is_empty());
        assert!(e.on_hear(&mut inst, &c, "A", "hi").is_empty());
        assert!(inst.disabled.is_none());
    }

    #[test]
    fn actions_and_text_are_capped() {
        let (inst, actions) = run_tick("for i in 0..50 { say(`line ${i}`); }");
        assert!(inst.disabled.is_none());
        assert_eq!(actions.len(), MAX_ACTIONS_PER_CALL);
        assert_eq!(actions[0], ScriptAction::Say("line 0".into()));
        let (_, actions) = run_tick(
            "let s = \"y\"; s.pad(900, 'y'); say(s); emote(\"waves\\n\\x1b[2J  \"); say(\"   \");",
        );
        let ScriptAction::Say(long) = &actions[0] else {
            panic!()
        };
        assert_eq!(long.chars().count(), MAX_SAY_CHARS);
        assert_eq!(actions[1], ScriptAction::Emote("waves  [2J".into()));
        assert_eq!(actions.len(), 2, "blank say is dropped");
    }

    #[test]
    fn api_reports_the_context() {
        let (inst, actions) = run_tick(
            "state.name = my_name(); state.pos = my_pos(); state.home = home();
             state.tick = tick(); state.d = distance_to(11, 12); state.r = rand();
             state.i = rand_int(3, 3); walk_to(1, 2.5); stop(); log(\"hello\"); print(\"p\");
             state.me = mentions_me(\"hey tester!\"); state.not_me = mentions_me(\"testers\");",
        );
        assert!(inst.disabled.is_none(), "{:?}", inst.disabled);
        let s = &inst.state;
        assert_eq!(s["name"], "Tester");
        assert_eq!(s["pos"]["x"], 11.0);
        assert_eq!(s["home"]["z"], 10.0);
        assert_eq!(s["tick"], 1);
        assert_eq!(s["d"], 3.0);
        assert!((0.0..1.0).contains(&s["r"].as_f64().unwrap()));
        assert_eq!(s["i"], 3);
        assert_eq!(s["me"], true);
        assert_eq!(s["not_me"], false);
        assert_eq!(
            actions,
            vec![
                ScriptAction::WalkTo(Vec3::new(1.0, 0.0, 2.5)),
                ScriptAction::Stop
            ]
        );
    }

    #[test]
    fn calls_are_deterministic_per_seed() {
        let e = engine_with(
            "t",
            "fn on_tick() { wander(20); say(`${rand_int(1, 1000000)}`); }",
        );
        let run = |seed| {
            let mut inst = ScriptInstance::new("t");
            let c = ScriptCtx {
                seed,
                ..ctx("Tester", 1)
            };
            e.on_tick(&mut inst, &c)
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn mentions_matches_whole_words_and_base_names() {
        assert!(mentions("Mira", "Hi MIRA!"));
        assert!(mentions("Mira", "mira"));
        assert!(!mentions("Mira", "Miranda"));
        assert!(!mentions("Mira", "admiral"));
        assert!(mentions("Sheep 3", "hello sheep 3"));
        assert!(mentions("Sheep 3", "look, sheep!"));
        assert!(!mentions("Sheep 3", "sheepdog"));
    }

    #[test]
    fn five_hundred_instances_tick() {
        let mut e = ScriptEngine::new(ScriptLimits::default());
        e.compile("wanderer", WANDERER).unwrap();
        e.compile("greeter", GREETER).unwrap();
        let mut insts: Vec<ScriptInstance> = (0..500)
            .map(|i| ScriptInstance::new(if i % 2 == 0 { "wanderer" } else { "greeter" }))
            .collect();
        let names: Vec<String> = (0..500).map(|i| format!("Npc{i}")).collect();
        for tick in [0, 200, 400] {
            for (i, inst) in insts.iter_mut().enumerate() {
                let c = ScriptCtx {
                    entity: EntityId(EntityId::NPC_BIT | i as u64),
                    seed: derive_seed(EntityId(i as u64), tick, 0),
                    ..ctx(&names[i], tick)
                };
                if tick == 0 {
                    e.init(inst, &c);
                }
                e.on_tick(inst, &c);
            }
        }
        assert!(insts.iter().all(|i| i.disabled.is_none()));
    }
}
