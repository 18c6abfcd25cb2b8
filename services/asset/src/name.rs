//! Asset names: the only strings that become storage keys and URL paths.

use std::fmt;

/// Longest asset name, in bytes (names are ASCII, so also in characters).
pub const MAX_NAME_LEN: usize = 200;

/// A valid asset name such as `scripts/guard.rhai` or `meshes/tree.glb`.
///
/// 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._/-]`, split by `/` into segments that are
/// neither empty nor `.` or `..`, so a name never starts or ends with `/` and maps to a
/// relative path that stays inside whatever directory a client unpacks assets into.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetName(String);

impl AssetName {
    /// Checks `name`; the error says what is wrong with it, for the uploader.
    pub fn parse(name: &str) -> Result<AssetName, String> {
        if name.is_empty() {
            return Err("the asset name is empty".into());
        }
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "the asset name is {} characters long, more than the limit of {MAX_NAME_LEN}",
                name.len()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
        {
            return Err(format!(
                "the asset name contains {bad:?}; only letters, digits, '.', '_', '-' and '/' \
                 are allowed"
            ));
        }
        if name.starts_with('/') {
            return Err("the asset name starts with '/'; names are relative".into());
        }
        for segment in name.split('/') {
            match segment {
                "" => {
                    return Err(
                        "the asset name has an empty segment ('//' or a trailing '/')".into(),
                    )
                }
                "." | ".." => {
                    return Err(format!(
                        "the asset name has a {segment:?} segment; names cannot step between \
                         directories"
                    ))
                }
                _ => {}
            }
        }
        Ok(AssetName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The MIME type served for this name, from its extension.
    pub fn content_type(&self) -> &'static str {
        let file = self.0.rsplit('/').next().unwrap_or(&self.0);
        let extension = match file.rsplit_once('.') {
            Some((_, ext)) => ext.to_ascii_lowercase(),
            None => String::new(),
        };
        match extension.as_str() {
            "rhai" | "toml" => "text/plain; charset=utf-8",
            "json" => "application/json",
            "png" => "image/png",
            "gltf" => "model/gltf+json",
            "glb" => "model/gltf-binary",
            _ => "application/octet-stream",
        }
    }
}

impl fmt::Display for AssetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "world.toml",
            "scripts/guard.rhai",
            "meshes/trees/oak-2.glb",
            ".hidden",
            "a..b",
            "x",
        ] {
            assert_eq!(AssetName::parse(name).unwrap().as_str(), name);
        }
        assert!(AssetName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn refuses_names_that_escape_or_are_malformed_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("../x", "\"..\" segment"),
            ("a/../x", "\"..\" segment"),
            ("a/./x", "\".\" segment"),
            ("/abs", "starts with '/'"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a b", "' '"),
            ("a\\b", "'\\\\'"),
            ("é", "'é'"),
        ] {
            let err = AssetName::parse(name).unwrap_err();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
        let err = AssetName::parse(&"a".repeat(300)).unwrap_err();
        assert!(err.contains("300 characters"), "{err}");
    }

    #[test]
    fn content_type_follows_the_extension() {
        let ct = |n: &str| AssetName::parse(n).unwrap().content_type();
        assert_eq!(ct("scripts/a.rhai"), "text/plain; charset=utf-8");
        assert_eq!(ct("world.TOML"), "text/plain; charset=utf-8");
        assert_eq!(ct("t/grass.png"), "image/png");
        assert_eq!(ct("m/tree.gltf"), "model/gltf+json");
        assert_eq!(ct("m/tree.glb"), "model/gltf-binary");
        assert_eq!(ct("items.json"), "application/json");
        assert_eq!(ct("notes"), "application/octet-stream");
        assert_eq!(ct("dir.png/notes"), "application/octet-stream");
    }
}
