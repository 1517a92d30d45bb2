//! `sprites.lock`: beside the manifest, committed. For each sprite it records the key
//! and output hash of every frame and the short hash of each input group, so that a
//! stale sprite can say why, and a corrupt cache file is caught. Pretty JSON with sorted
//! keys, one value per line: diffs show exactly which sprites changed, and it parses fast
//! (a no-op build reads it; TOML took 30 ms per 1,000 sprites).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{LoraName, SpriteName};
use crate::key::{InputFile, InputHashes, KnownFileHashes};
use crate::plan::LoraInputs;

pub const LOCK_VERSION: u32 = 1;
const NOTE: &str = "Written by pixelgen. Commit it with the cache/ folder; do not edit.";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Says what the file is, for people who open it.
    #[serde(default)]
    pub note: String,
    pub version: u32,
    /// Content hash (blake3) of each input file, by the path written in the manifest.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub sprites: BTreeMap<SpriteName, LockedSprite>,
    /// The trained LoRAs (`trained_loras`), by name; left out when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trained_loras: BTreeMap<LoraName, LockedLora>,
}

/// A trained LoRA as the last online run left it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLora {
    /// Its key: the name of its file in the cache's `lora/` folder.
    pub key: String,
    /// What it was trained from, to say what changed.
    pub inputs: LoraInputs,
    /// blake3 of the trained file; empty when it was not trained yet.
    pub output: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSprite {
    /// Short hash of each input group (prompt, seed, loras, …), by the group's name. Kept
    /// as names, not [`crate::key::InputGroup`]s, so that a lock file written by another
    /// version of pixelgen still reads (its groups then simply differ).
    pub inputs: BTreeMap<String, String>,
    /// The key of each frame, in frame order.
    pub keys: Vec<String>,
    /// blake3 of each frame's cached PNG, in frame order.
    pub outputs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid pixelgen lock file: {message}\nhelp: it is generated: delete it and run `cargo pixelgen generate` (or a build without PIXELGEN_OFFLINE) to write it again", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Not JSON in the lock file's shape (serde's error kept as the source).
    #[error("{} is not a valid pixelgen lock file: {source}\nhelp: it is generated: delete it and run `cargo pixelgen generate` (or a build without PIXELGEN_OFFLINE) to write it again", path.display())]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LockFile {
    /// Reads the lock file; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<LockFile, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockFile::empty()),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let lock: LockFile =
            serde_json::from_str(&text).map_err(|source| LockError::Malformed {
                path: path.to_path_buf(),
                source,
            })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "version {} (this pixelgen writes version {LOCK_VERSION})",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    pub fn empty() -> LockFile {
        LockFile {
            note: NOTE.to_string(),
            version: LOCK_VERSION,
            ..LockFile::default()
        }
    }

    pub fn render(&self) -> String {
        // Serialising plain maps of strings cannot fail; fall back to an empty body rather than panic.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the lock file atomically, only when its content changes (so that an
    /// unchanged build leaves its mtime alone).
    pub fn save(&self, path: &Path) -> Result<bool, LockError> {
        let text = self.render();
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        crate::cache::write_atomically(path, text.as_bytes()).map_err(|source| {
            LockError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(true)
    }
}

impl LockedSprite {
    /// The lock file's record of a sprite's input groups.
    pub fn inputs_of(inputs: &InputHashes) -> BTreeMap<String, String> {
        inputs
            .iter()
            .map(|(group, hash)| (group.name().to_string(), hash.clone()))
            .collect()
    }
}

impl KnownFileHashes for LockFile {
    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
        self.files
            .get(&file.lock_key())
            .and_then(|h| blake3::Hash::from_hex(h).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sorted_and_skips_identical_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sprites.lock");
        assert_eq!(LockFile::load(&path).unwrap(), LockFile::empty());
        let mut lock = LockFile::empty();
        for name in ["zombie", "apple"] {
            lock.sprites.insert(
                SpriteName::from(name),
                LockedSprite {
                    inputs: [("prompt".to_string(), "00ff".to_string())].into(),
                    keys: vec!["k".repeat(64)],
                    outputs: vec!["o".repeat(64)],
                },
            );
        }
        assert!(lock.save(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("Written by pixelgen"));
        assert!(
            text.find("\"apple\"").unwrap() < text.find("\"zombie\"").unwrap(),
            "{text}"
        );
        assert!(text.lines().count() > 10, "one value per line: {text}");
        assert_eq!(LockFile::load(&path).unwrap(), lock);
        assert!(
            !lock.save(&path).unwrap(),
            "unchanged content is not rewritten"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sprites.lock");
        std::fs::write(&path, "{\"version\": [").unwrap();
        let e = LockFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("sprites.lock") && e.contains("delete it"), "{e}");
    }
}
