//! Tessera's shared vocabulary: ids, cell geometry, wire messages, framing and
//! limits.
//!
//! This crate does no I/O and depends on nothing of ours. Everything that two
//! roles must agree on lives here, so a message has exactly one definition.

pub mod cluster;
pub mod frame;
pub mod geometry;
pub mod ids;
pub mod msg;
pub mod region;
pub mod snapshot;
pub mod world;

pub use frame::{decode, encode, FrameError};
pub use geometry::{CellId, Compass, Grid, Vec3};
pub use ids::{EntityId, Epoch, PlayerId, RouterId, SessionId, ShardId};
pub use region::{
    ParseRegionError, Quadrant, Rect, RegionId, RegionTree, RegionTreeError, MAX_DEPTH,
};

/// Version of the client <-> router protocol. Bumped on every incompatible
/// change; the handshake refuses a peer with another version.
pub const PROTOCOL_VERSION: u32 = 2;

/// QUIC ALPN of the client protocol.
pub const ALPN: &[u8] = b"tessera/1";
