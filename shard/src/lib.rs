//! A shard simulates the cells it owns: each cell is a legion ECS world, a
//! rapier3d physics world and the rhai scripts of its NPCs, ticked at a fixed
//! rate on the shard's own thread.
//!
//! Entities cross cell borders by hand-off ([`tessera_proto::cluster::ToShard::Handoff`]),
//! locally or to another shard over the bus; entities near a border appear in
//! the neighbour cell as ghosts (kinematic colliders).

pub mod cell;
pub mod checkpoint;
pub mod cost;
pub mod member;
pub mod script;
pub mod sim;
pub mod worldfile;

use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tessera_coordinator::{Bus, CellMap};
use tessera_proto::cluster::ToShard;
use tessera_proto::world::WorldDef;
use tessera_proto::ShardId;

pub use cell::Movement;
pub use script::ScriptLimits;
pub use sim::{Shard, COMPACT_AFTER};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("cannot start the simulation thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    World(#[from] worldfile::WorldFileError),
}

/// How a shard runs.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub id: ShardId,
    /// Simulation ticks per second.
    pub tick_hz: u32,
    /// How often NPC scripts think (`on_tick`), per second.
    pub think_hz: u32,
    /// Speech carries this far, metres.
    pub hearing_radius: f32,
    /// Entities this close to a neighbour cell appear there as ghosts.
    pub ghost_margin: f32,
    /// An entity changes cell when this far past the border.
    pub hysteresis: f32,
    pub movement: Movement,
    pub script_limits: ScriptLimits,
    /// Cell checkpoints to persistence (`None`: a failover reopens cells from the world file).
    pub checkpoints: Option<checkpoint::Checkpointing>,
    /// New versions of NPC scripts (hot reload), applied between ticks.
    pub script_updates: Option<crossbeam_channel::Receiver<ScriptUpdate>>,
    /// How long the avatar of a player whose router is gone stays in the world before it is
    /// removed (sim/linkdead.rs).
    pub linkdead: std::time::Duration,
    /// Fault tests only (cargo feature `fault-injection`, never in a release): the
    /// simulation thread panics at this tick.
    #[cfg(feature = "fault-injection")]
    pub panic_at_tick: Option<u64>,
}

/// How long a linkdead avatar stays, by default.
pub const DEFAULT_LINKDEAD: std::time::Duration = std::time::Duration::from_secs(60);

/// A new version of a script, by name (the stem of `scripts/<name>.rhai`).
#[derive(Clone, Debug)]
pub struct ScriptUpdate {
    pub name: String,
    pub source: String,
}

impl ShardConfig {
    pub fn new(id: ShardId) -> ShardConfig {
        ShardConfig {
            id,
            tick_hz: 30,
            think_hz: 3,
            hearing_radius: 30.0,
            ghost_margin: 4.0,
            hysteresis: 1.0,
            movement: Movement::default(),
            script_limits: ScriptLimits::default(),
            checkpoints: None,
            script_updates: None,
            linkdead: DEFAULT_LINKDEAD,
            #[cfg(feature = "fault-injection")]
            panic_at_tick: fault::panic_at_tick(),
        }
    }
}

/// Fault injection for the fault tests (cargo feature `fault-injection`, which only test
/// builds turn on): a process started with `TESSERA_FAULT_SIM_PANIC_AT_TICK=N` has its
/// simulation thread panic at tick N.
#[cfg(feature = "fault-injection")]
mod fault {
    pub fn panic_at_tick() -> Option<u64> {
        std::env::var("TESSERA_FAULT_SIM_PANIC_AT_TICK")
            .ok()
            .and_then(|v| v.parse().ok())
    }
}

/// Where a shard thread publishes its latest load report.
pub type LoadBoard = Arc<parking_lot::Mutex<tessera_coordinator::membership::ShardLoad>>;

/// A running shard thread.
pub struct ShardHandle {
    pub id: ShardId,
    /// The shard's latest load report.
    pub load: LoadBoard,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ended: tokio::sync::watch::Receiver<bool>,
}

impl ShardHandle {
    /// Becomes `true` when the simulation thread has ended, however it ended (stopped, or
    /// dead of a panic): what a member watches so that its cells do not stay with a dead
    /// simulation.
    pub fn ended(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ended.clone()
    }

    /// Stops the tick loop and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Says the simulation thread ended when dropped.
struct Ended(tokio::sync::watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Starts a shard on its own thread. `inbox` is where the bus delivers its
/// messages.
pub fn spawn(
    config: ShardConfig,
    world: Arc<WorldDef>,
    bus: Arc<dyn Bus>,
    map: CellMap,
    inbox: Receiver<ToShard>,
) -> Result<ShardHandle, ShardError> {
    let shard = Shard::new(config, world, bus, map)?;
    spawn_shard(shard, inbox)
}

/// Starts an already built shard (e.g. one following migrations) on its
/// own thread.
pub fn spawn_shard(shard: Shard, inbox: Receiver<ToShard>) -> Result<ShardHandle, ShardError> {
    let id = shard.id.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let load = shard.load_board();
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(format!("sim-{id}"))
        .spawn(move || {
            // Dropped when the thread ends, a panic's unwinding included.
            let _ended = Ended(ended_tx);
            shard.run(inbox, s)
        })?;
    Ok(ShardHandle {
        id,
        load,
        stop,
        thread: Some(thread),
        ended,
    })
}
