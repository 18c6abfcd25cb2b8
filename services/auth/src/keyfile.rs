//! The ed25519 signing key file: 64 hex digits and a newline, mode 0600.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;

use crate::token::{hex_decode, hex_encode};
use crate::AuthError;

/// Loads the key at `path`, or creates it (and its directory) if there is no file.
pub(crate) fn load_or_create(path: &Path) -> Result<SigningKey, AuthError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(e) => Err(key_error(path, "cannot be read", e)),
    }
}

fn key_error(path: &Path, what: &str, err: impl std::fmt::Display) -> AuthError {
    AuthError::Key(format!("key file {} {what} ({err})", path.display()))
}

fn parse(path: &Path, text: &str) -> Result<SigningKey, AuthError> {
    let secret: [u8; 32] = hex_decode(text.trim())
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            AuthError::Key(format!(
                "key file {} does not hold 64 hex digits; restore it, or delete it to make a \
                 new key (which invalidates all sessions)",
                path.display()
            ))
        })?;
    warn_if_readable_by_others(path);
    Ok(SigningKey::from_bytes(&secret))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "session signing key file is accessible to other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes a new key to a temporary file and links it into place, so that the key file is
/// never seen half-written, and two processes starting together end up with the same key.
fn create(path: &Path) -> Result<SigningKey, AuthError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| key_error(path, "has no directory", e))?;
    }
    let key = SigningKey::generate(&mut OsRng);
    let temp = temp_path(path);
    let written = write_private(&temp, &format!("{}\n", hex_encode(&key.to_bytes())));
    let linked = written.and_then(|()| fs::hard_link(&temp, path));
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new session signing key");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_existing(path),
        Err(e) => Err(key_error(path, "cannot be created", e)),
    }
}

fn load_existing(path: &Path) -> Result<SigningKey, AuthError> {
    let text = fs::read_to_string(path).map_err(|e| key_error(path, "cannot be read", e))?;
    parse(path, &text)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    let unique: u64 = rand::random();
    path.with_file_name(format!(".{name}.{}.{unique:016x}.tmp", std::process::id()))
}

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/session.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.to_bytes(), second.to_bytes());
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn malformed_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        fs::write(&path, "not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        assert!(err.contains("session.key"), "{err}");
    }
}
