//! Content hashes of input files, remembered by (path, size, mtime) so that a no-op
//! build reads nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// Hashes files by content, remembering each file's hash by (path, size, mtime) so
/// that a no-op build re-reads nothing. Its state lives in one small JSON file.
///
/// Large files (model weights, big LoRAs) are also remembered in a store shared by every
/// process that uses the same cache folder — `cargo pixelgen` and the build scripts of
/// every crate of the workspace — so a multi-gigabyte model is read to be hashed once per
/// (path, size, mtime) on a machine, not once per build folder.
#[derive(Debug, Default)]
pub struct FileHasher {
    state_file: Option<PathBuf>,
    // Hashed, not ordered: ordering paths compares them component by component.
    stamps: HashMap<PathBuf, Stamp>,
    dirty: bool,
    shared: Option<SharedStamps>,
    /// Time spent reading files to hash them (stamp hits cost nothing), for timings.
    reading: std::time::Duration,
    /// How many files were read to be hashed.
    files_read: u64,
}

/// The stamps of large files, in a file several processes read and merge into.
#[derive(Debug)]
struct SharedStamps {
    path: PathBuf,
    /// Files at least this large go through the shared store.
    min_size: u64,
    /// Read on the first large file that misses the local stamps (never on a no-op).
    loaded: Option<HashMap<PathBuf, Stamp>>,
    /// Stamps this process computed, merged into the file by `save`.
    new: HashMap<PathBuf, Stamp>,
}

/// Files from this size on are shared between build folders (model weights, large LoRAs).
pub const SHARED_STAMP_MIN_SIZE: u64 = 16 << 20;

/// Files from this size on are hashed through a memory map on all cores.
const PARALLEL_HASH_MIN_SIZE: u64 = 16 << 20;

fn read_stamps(path: &Path) -> Option<HashMap<PathBuf, Stamp>> {
    let bytes = std::fs::read(path).ok()?;
    let list: Vec<(PathBuf, Stamp)> = serde_json::from_slice(&bytes).ok()?;
    Some(list.into_iter().collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    #[serde(with = "hex_hash")]
    hash: [u8; 32],
}

/// Hashes as hex strings: 32 JSON numbers per stamp made the state file slow to read.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(blake3::Hash::from_bytes(*hash).to_hex().as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        blake3::Hash::from_hex(text)
            .map(|h| *h.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

impl FileHasher {
    /// A hasher that remembers nothing between runs.
    pub fn in_memory() -> Self {
        FileHasher::default()
    }

    /// A hasher whose stamps persist in `state_file` (read now, written by `save`).
    /// A missing or unreadable state file only means more hashing.
    pub fn persistent(state_file: PathBuf) -> Self {
        FileHasher {
            stamps: read_stamps(&state_file).unwrap_or_default(),
            state_file: Some(state_file),
            ..FileHasher::default()
        }
    }

    /// Also remembers files of `min_size` bytes or more in the shared store `path`
    /// (read lazily, merged into on `save`).
    pub fn share_large_files(&mut self, path: PathBuf, min_size: u64) {
        self.shared = Some(SharedStamps {
            path,
            min_size,
            loaded: None,
            new: HashMap::new(),
        });
    }

    /// blake3 of the file's bytes. Only regular files are read (a FIFO or a device would
    /// never end), up to the largest model file.
    pub fn hash(&mut self, path: &Path) -> std::io::Result<blake3::Hash> {
        use crate::input_file::{InputFileError, MAX_MODEL_FILE_BYTES, checked_metadata};
        let metadata =
            checked_metadata(path, MAX_MODEL_FILE_BYTES, "weight file").map_err(|e| match e {
                InputFileError::Unreadable { source, .. } => source,
                InputFileError::Missing { .. } => {
                    std::io::Error::new(std::io::ErrorKind::NotFound, e)
                }
                other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
            })?;
        let mtime_ns = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let size = metadata.len();
        let matches = |stamp: &Stamp| stamp.size == size && stamp.mtime_ns == mtime_ns;
        if mtime_ns != 0 {
            if let Some(stamp) = self.stamps.get(path).filter(|s| matches(s)) {
                return Ok(blake3::Hash::from_bytes(stamp.hash));
            }
            if let Some(shared) = self.shared.as_mut().filter(|s| size >= s.min_size) {
                let loaded = shared
                    .loaded
                    .get_or_insert_with(|| read_stamps(&shared.path).unwrap_or_default());
                if let Some(stamp) = loaded.get(path).copied().filter(|s| matches(s)) {
                    self.stamps.insert(path.to_path_buf(), stamp);
                    self.dirty = true;
                    return Ok(blake3::Hash::from_bytes(stamp.hash));
                }
            }
        }
        let start = std::time::Instant::now();
        let mut hasher = blake3::Hasher::new();
        if size >= PARALLEL_HASH_MIN_SIZE {
            hasher.update_mmap_rayon(path)?;
        } else {
            hasher.update_reader(std::fs::File::open(path)?)?;
        }
        let hash = hasher.finalize();
        self.reading += start.elapsed();
        self.files_read += 1;
        let stamp = Stamp {
            size,
            mtime_ns,
            hash: *hash.as_bytes(),
        };
        self.stamps.insert(path.to_path_buf(), stamp);
        self.dirty = true;
        if let Some(shared) = self.shared.as_mut().filter(|s| size >= s.min_size) {
            shared.new.insert(path.to_path_buf(), stamp);
        }
        Ok(hash)
    }

    /// The time spent reading files to hash them since the last call.
    pub fn take_reading_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.reading)
    }

    /// Whether `save` has large-file stamps to add to the shared store.
    pub fn has_unsaved_shared_stamps(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| !s.new.is_empty())
    }

    /// How many files were read to be hashed so far (not answered from a stamp).
    pub fn files_read(&self) -> u64 {
        self.files_read
    }

    /// Writes the stamps back if anything changed (atomically; failure only costs
    /// re-hashing next time, so it is not an error). New large-file stamps are merged
    /// into the shared store as it is now on disk, so concurrent savers lose at most
    /// each other's latest entries, never the file.
    pub fn save(&mut self) {
        if let Some(shared) = self.shared.as_mut()
            && !shared.new.is_empty()
        {
            let mut merged = read_stamps(&shared.path).unwrap_or_default();
            merged.extend(shared.new.drain());
            let list: Vec<(&PathBuf, &Stamp)> = merged.iter().collect();
            if let Ok(bytes) = serde_json::to_vec(&list) {
                let _ = crate::atomic::write_atomically(&shared.path, &bytes);
            }
            shared.loaded = Some(merged);
        }
        let Some(state_file) = &self.state_file else {
            return;
        };
        if !self.dirty {
            return;
        }
        let list: Vec<(&PathBuf, &Stamp)> = self.stamps.iter().collect();
        if let Ok(bytes) = serde_json::to_vec(&list)
            && crate::atomic::write_atomically(state_file, &bytes).is_ok()
        {
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model folder's file that is a FIFO (or a device) is refused, not read forever.
    #[cfg(unix)]
    #[test]
    fn hashing_refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("diffusion_pytorch_model.safetensors");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut hasher = FileHasher::in_memory();
        let error = hasher.hash(&fifo).unwrap_err().to_string();
        assert!(error.contains("named pipe"), "{error}");
        let error = hasher.hash(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(error.contains("character device"), "{error}");
    }

    #[test]
    fn stamp_cache_skips_rereading_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, b"content").unwrap();
        let state = dir.path().join("stamps.json");
        let mut hasher = FileHasher::persistent(state.clone());
        let first = hasher.hash(&file).unwrap();
        hasher.save();
        // A stamp that matches (size, mtime) is trusted: prove it by planting a false hash.
        let mut planted: Vec<(PathBuf, Stamp)> =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        planted[0].1.hash = [7; 32];
        std::fs::write(&state, serde_json::to_vec(&planted).unwrap()).unwrap();
        let mut again = FileHasher::persistent(state.clone());
        assert_eq!(again.hash(&file).unwrap().as_bytes(), &[7; 32]);
        // Changing the file (size differs) forces a re-read.
        std::fs::write(&file, b"other content").unwrap();
        let changed = again.hash(&file).unwrap();
        assert_ne!(changed, first);
        assert_eq!(changed, blake3::hash(b"other content"));
    }

    #[test]
    fn large_files_are_hashed_once_across_build_folders() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("unet.safetensors");
        std::fs::write(&weights, vec![3u8; 4096]).unwrap();
        let small = dir.path().join("config.json");
        std::fs::write(&small, b"{}").unwrap();
        let shared = dir.path().join("cache/.pixelgen-stamps.json");
        std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
        let hasher_for = |local: &str| {
            let mut h = FileHasher::persistent(dir.path().join(local));
            h.share_large_files(shared.clone(), 1024);
            h
        };
        let mut first = hasher_for("out-a.json");
        let hash = first.hash(&weights).unwrap();
        first.hash(&small).unwrap();
        assert_eq!(first.files_read(), 2);
        first.save();
        // Another build folder (another crate, or the CLI): the weights come from the
        // shared store; the small file is its own business.
        let mut second = hasher_for("out-b.json");
        assert_eq!(second.hash(&weights).unwrap(), hash);
        assert_eq!(second.files_read(), 0);
        second.hash(&small).unwrap();
        assert_eq!(second.files_read(), 1);
        // A changed file is read again, and the store learns its new stamp.
        std::fs::write(&weights, vec![4u8; 8192]).unwrap();
        let mut third = hasher_for("out-c.json");
        assert_eq!(
            third.hash(&weights).unwrap(),
            blake3::hash(&vec![4u8; 8192])
        );
        assert_eq!(third.files_read(), 1);
        third.save();
        let mut fourth = hasher_for("out-d.json");
        fourth.hash(&weights).unwrap();
        assert_eq!(fourth.files_read(), 0);
    }

    #[test]
    fn large_files_hash_the_same_through_the_parallel_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.bin");
        let bytes: Vec<u8> = (0..(PARALLEL_HASH_MIN_SIZE + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(
            FileHasher::in_memory().hash(&file).unwrap(),
            blake3::hash(&bytes)
        );
    }
}
