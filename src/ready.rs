//! Machine-readable readiness: `--ready-file PATH` (or `TESSERA_READY_FILE`).
//!
//! A role given a ready file removes any stale one when it starts and, once it
//! is ready (when it prints its human "running"/"listening" lines), writes one
//! JSON object there: what it is and every address it serves, each under the
//! name of the flag that chose it (docs/operations.md, "Ready files"):
//!
//! ```json
//! {"role": "router", "id": "router-1", "pid": 4242, "version": "0.1.0",
//!  "ready_unix_ms": 1795596401123,
//!  "addrs": {"cluster": "10.0.0.5:7000", "metrics": "127.0.0.1:9100",
//!            "quic": "0.0.0.0:4433", "telnet": "0.0.0.0:4000"},
//!  "files": {"quic_cert": "/var/lib/tessera/quic-cert.der"}}
//! ```
//!
//! The file is written beside itself (`PATH.tmp`) and renamed, so a reader sees
//! either no file or a whole one. Supervisors and tests wait for it instead of
//! matching log lines, whose wording may change.

use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The ready file of this process, if one was asked for.
static READY_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Remembers where this process announces readiness and removes a file left
/// there by an earlier run, so the file's appearance means this run is ready.
pub fn configure(path: Option<PathBuf>) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale ready file {}", path.display()))
        }
    }
    let _ = READY_FILE.set(path);
    Ok(())
}

/// What a role announces once it is ready.
#[derive(Clone, Debug)]
pub struct Announcement {
    role: &'static str,
    id: String,
    addrs: BTreeMap<&'static str, SocketAddr>,
    files: BTreeMap<&'static str, PathBuf>,
}

impl Announcement {
    /// Role `role` (`shard`, `router`, ...) named `id`.
    pub fn new(role: &'static str, id: impl Into<String>) -> Announcement {
        Announcement {
            role,
            id: id.into(),
            addrs: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    /// An address it serves, under the name of the flag that chose it
    /// (`cluster`, `telnet`, `telnet_tls`, `quic`, `metrics`, `listen`).
    pub fn addr(mut self, name: &'static str, addr: SocketAddr) -> Announcement {
        self.addrs.insert(name, addr);
        self
    }

    /// [`Announcement::addr`] if there is one.
    pub fn addr_opt(self, name: &'static str, addr: Option<SocketAddr>) -> Announcement {
        match addr {
            Some(a) => self.addr(name, a),
            None => self,
        }
    }

    /// A file clients need (`quic_cert`: the certificate to pin).
    pub fn file(mut self, name: &'static str, path: &Path) -> Announcement {
        self.files.insert(name, path.to_path_buf());
        self
    }

    /// The JSON object of the ready file.
    pub fn to_json(&self, pid: u32, now: SystemTime) -> serde_json::Value {
        let addrs: serde_json::Map<String, serde_json::Value> = self
            .addrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string().into()))
            .collect();
        let files: serde_json::Map<String, serde_json::Value> = self
            .files
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string().into()))
            .collect();
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        serde_json::json!({
            "role": self.role,
            "id": self.id,
            "pid": pid,
            "version": env!("CARGO_PKG_VERSION"),
            "ready_unix_ms": ms,
            "addrs": addrs,
            "files": files,
        })
    }

    /// Writes the ready file, if this process was given one (atomically:
    /// `PATH.tmp`, then a rename). Announcing again replaces it.
    pub fn announce(&self) -> anyhow::Result<()> {
        match READY_FILE.get() {
            Some(path) => self.write_to(path),
            None => Ok(()),
        }
    }

    /// [`Announcement::announce`] from a task that cannot return the error: it
    /// is logged (a supervisor waiting for the file then times out).
    pub fn announce_or_log(&self) {
        if let Err(e) = self.announce() {
            tracing::error!(role = self.role, error = %format!("{e:#}"), "cannot write the ready file");
        }
    }

    fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = self
            .to_json(std::process::id(), SystemTime::now())
            .to_string();
        text.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text)
            .with_context(|| format!("cannot write the ready file {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::Announcement;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_ready_file_names_every_address_by_its_flag() {
        let a = Announcement::new("router", "router-1")
            .addr("cluster", "10.0.0.5:7000".parse().unwrap())
            .addr("telnet", "0.0.0.0:4000".parse().unwrap())
            .addr_opt("telnet_tls", None)
            .file("quic_cert", std::path::Path::new("/data/quic-cert.der"));
        let json = a.to_json(42, UNIX_EPOCH + Duration::from_millis(1234));
        assert_eq!(
            json,
            serde_json::json!({
                "role": "router", "id": "router-1", "pid": 42,
                "version": env!("CARGO_PKG_VERSION"), "ready_unix_ms": 1234,
                "addrs": {"cluster": "10.0.0.5:7000", "telnet": "0.0.0.0:4000"},
                "files": {"quic_cert": "/data/quic-cert.der"},
            })
        );
    }

    #[test]
    fn the_file_appears_whole_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let a =
            Announcement::new("shard", "shard-1").addr("metrics", "127.0.0.1:1".parse().unwrap());
        a.write_to(&path).unwrap();
        let b = a.clone().addr("cluster", "127.0.0.1:2".parse().unwrap());
        b.write_to(&path).unwrap();
        let read: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read["addrs"]["cluster"], "127.0.0.1:2");
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
