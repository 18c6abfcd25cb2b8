//! Where the viewer gets the world definition (ground extent, zones,
//! static geometry, cell size): a local `world.toml`, or the asset service's
//! `world.toml`, which `tessera up` publishes (docs/assets.md).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_proto::world::{parse_world, WorldDef};

/// The largest world file accepted (as the shards do).
const MAX_WORLD_BYTES: u64 = 1 << 20;

/// Reads `path` (a `world.toml` or a world directory).
pub fn load_local(path: &Path) -> Result<WorldDef, String> {
    let file: PathBuf = if path.is_dir() {
        path.join("world.toml")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read the world {}: {e}", file.display()))?;
    parse_world(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Fetches `world.toml` from the asset service at `url` (`http://host:port`).
pub fn fetch(url: &str) -> Result<WorldDef, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(true)
        .build()
        .new_agent();
    let address = format!("{}/v1/assets/world.toml", url.trim_end_matches('/'));
    let mut answer = agent
        .get(&address)
        .call()
        .map_err(|e| format!("cannot fetch {address}: {e}"))?;
    let text = answer
        .body_mut()
        .with_config()
        .limit(MAX_WORLD_BYTES)
        .read_to_string()
        .map_err(|e| format!("cannot read {address}: {e}"))?;
    parse_world(&text).map_err(|e| format!("{address}: {e}"))
}
