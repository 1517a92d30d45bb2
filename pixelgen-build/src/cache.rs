//! The content-addressed sprite cache: one PNG per frame key, under
//! `cache/<first two hex digits>/<key>.png`. Files are written to a temporary file in
//! the same folder and renamed into place, so readers only ever see whole files, and
//! two builds writing the same key write the same bytes.

use std::path::{Path, PathBuf};

use image::RgbaImage;

use crate::key::{FileHasher, Key};

/// The file whose advisory lock serialises generation into one cache folder.
pub const LOCK_NAME: &str = ".pixelgen-lock";
/// Content hashes of large input files (models) by (path, size, mtime), shared by every
/// process that uses this cache; machine-specific, so never committed.
pub const SHARED_STAMPS_NAME: &str = ".pixelgen-stamps.json";
const GITIGNORE: &str = "# Written by pixelgen: commit the PNGs, not these.\n.tmp-pixelgen-*\n.pixelgen-lock\n.pixelgen-stamps.json\n# Raw diffusion output (large; lets a palette or size change skip the GPU).\nraw/\n# Atlases published for running games to reload.\nlive/\n";
/// Where the atlases a running game reloads are published, under the cache folder
/// (git-ignored: they are made from the committed entries).
pub const LIVE_DIR: &str = "live";
/// Where raw generator output lives, under the cache folder.
pub const RAW_DIR: &str = "raw";
/// Where trained LoRAs live, under the cache folder (committed, like the sprites).
pub const LORA_DIR: &str = "lora";

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The file is there and its hash is the one the lock file recorded (or, with no
    /// record, it decodes as a PNG of the right size).
    Hit {
        output: blake3::Hash,
    },
    Missing,
    /// The file is there but is not what was stored.
    Corrupt {
        reason: String,
    },
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, key: &Key) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.png"))
    }

    /// Checks the entry for `key` without decoding it when the lock file knows its
    /// hash: the hash itself comes from the stamp cache on a no-op build.
    pub fn lookup(
        &self,
        key: &Key,
        expected: Option<&str>,
        size: (u32, u32),
        hasher: &mut FileHasher,
    ) -> Lookup {
        check(&self.path_of(key), expected, hasher, || {
            match self.read(key) {
                Ok(image) if image.dimensions() == size => Ok(()),
                Ok(image) => Err(format!(
                    "it is {}×{}, not {}×{}",
                    image.width(),
                    image.height(),
                    size.0,
                    size.1
                )),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// Creates the cache folder with a `.gitignore` for the files that must not be
    /// committed (temporary files of interrupted writes, the generation lock), and
    /// returns the path of the generation lock file.
    pub fn prepare(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let ignore = self.dir.join(".gitignore");
        // Ours (first line) but older: brought up to date; a user's own file is left alone.
        let current = std::fs::read_to_string(&ignore).ok();
        let ours = current
            .as_deref()
            .is_none_or(|c| c.starts_with("# Written by pixelgen"));
        if ours && current.as_deref() != Some(GITIGNORE) {
            write_atomically(&ignore, GITIGNORE.as_bytes())?;
        }
        Ok(self.dir.join(LOCK_NAME))
    }

    /// Decodes the entry for `key`.
    pub fn read(&self, key: &Key) -> Result<RgbaImage, image::ImageError> {
        let bytes = std::fs::read(self.path_of(key)).map_err(image::ImageError::IoError)?;
        Ok(image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)?.into_rgba8())
    }

    /// Stores a frame; returns the hash of the PNG written.
    pub fn write(&self, key: &Key, image: &RgbaImage) -> std::io::Result<blake3::Hash> {
        let bytes = encode_png(image)?;
        write_atomically(&self.path_of(key), &bytes)?;
        Ok(blake3::hash(&bytes))
    }
}

impl Cache {
    /// Where the LoRA trained with key `key` is kept: `lora/<key>.safetensors`.
    pub fn lora_path_of(&self, key: &Key) -> PathBuf {
        self.dir
            .join(LORA_DIR)
            .join(format!("{}.safetensors", key.to_hex()))
    }

    /// Where an interrupted training run for `key` keeps its checkpoint (under `raw/`:
    /// git-ignored, machine-specific).
    pub fn lora_checkpoint_path_of(&self, key: &Key) -> PathBuf {
        self.dir
            .join(RAW_DIR)
            .join(LORA_DIR)
            .join(format!("{}.checkpoint.safetensors", key.to_hex()))
    }

    /// Checks the trained LoRA for `key`: there, and when the lock file knows its hash,
    /// the same bytes; with no record, a readable safetensors file.
    pub fn lookup_lora(
        &self,
        key: &Key,
        expected: Option<&str>,
        hasher: &mut FileHasher,
    ) -> Lookup {
        let path = self.lora_path_of(key);
        check(&path, expected, hasher, || safetensors_header_ok(&path))
    }

    /// Where the raw generator output of a frame with raw key `key` is kept.
    pub fn raw_path_of(&self, key: &Key) -> PathBuf {
        let hex = key.to_hex();
        self.dir
            .join(RAW_DIR)
            .join(&hex[..2])
            .join(format!("{hex}.png"))
    }

    /// The raw output for `key`, if it is there and decodes (anything else is regenerated).
    pub fn read_raw(&self, key: &Key) -> Option<RgbaImage> {
        let bytes = std::fs::read(self.raw_path_of(key)).ok()?;
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .ok()
            .map(|i| i.into_rgba8())
    }

    /// Stores raw generator output.
    pub fn write_raw(&self, key: &Key, image: &RgbaImage) -> std::io::Result<()> {
        write_atomically(&self.raw_path_of(key), &encode_png(image)?)
    }
}

/// A cache file's state: missing, or hashed and compared with the lock file's `expected`
/// hash, or with no record, checked by `readable` (decodes, right size, …).
fn check(
    path: &Path,
    expected: Option<&str>,
    hasher: &mut FileHasher,
    readable: impl FnOnce() -> Result<(), String>,
) -> Lookup {
    let output = match hasher.hash(path) {
        Ok(hash) => hash,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(e) => {
            return Lookup::Corrupt {
                reason: format!("cannot read it: {e}"),
            };
        }
    };
    match expected {
        Some(expected) if expected == output.to_hex().as_str() => Lookup::Hit { output },
        Some(_) => Lookup::Corrupt {
            reason: "its content does not match the hash in sprites.lock".to_string(),
        },
        None => match readable() {
            Ok(()) => Lookup::Hit { output },
            Err(reason) => Lookup::Corrupt { reason },
        },
    }
}

/// Whether `path` starts like a whole safetensors file: an 8-byte header length and a
/// JSON header that fit the file.
fn safetensors_header_ok(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| "it is too short for a safetensors file".to_string())?;
    let length = u64::from_le_bytes(length);
    if length == 0 || length > (100 << 20) || 8 + length > size {
        return Err("its safetensors header is cut off or malformed".to_string());
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    serde_json::from_slice::<serde_json::Value>(&header)
        .map(|_| ())
        .map_err(|_| "its safetensors header is not JSON".to_string())
}

/// PNG bytes of an image; the same pixels always give the same bytes.
pub fn encode_png(image: &RgbaImage) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(std::io::Error::other)?;
    Ok(bytes)
}

pub use crate::atomic::write_atomically;

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u8) -> RgbaImage {
        RgbaImage::from_fn(4, 3, |x, y| image::Rgba([seed, x as u8, y as u8, 255]))
    }

    #[test]
    fn write_then_lookup_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let key = Key([1; 32]);
        let mut hasher = FileHasher::in_memory();
        assert_eq!(
            cache.lookup(&key, None, (4, 3), &mut hasher),
            Lookup::Missing
        );
        let output = cache.write(&key, &image(9)).unwrap();
        assert!(cache.path_of(&key).starts_with(dir.path().join("01")));
        assert_eq!(
            cache.lookup(&key, Some(output.to_hex().as_str()), (4, 3), &mut hasher),
            Lookup::Hit { output }
        );
        assert_eq!(
            cache.lookup(&key, None, (4, 3), &mut FileHasher::in_memory()),
            Lookup::Hit { output }
        );
        assert_eq!(cache.read(&key).unwrap(), image(9));
        assert_eq!(
            cache.write(&key, &image(9)).unwrap(),
            output,
            "deterministic bytes"
        );
    }

    #[test]
    fn corruption_is_detected_with_and_without_a_recorded_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let key = Key([2; 32]);
        let output = cache.write(&key, &image(1)).unwrap();
        let path = cache.path_of(&key);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let expected = output.to_hex();
        assert!(matches!(
            cache.lookup(
                &key,
                Some(expected.as_str()),
                (4, 3),
                &mut FileHasher::in_memory()
            ),
            Lookup::Corrupt { .. }
        ));
        assert!(matches!(
            cache.lookup(&key, None, (4, 3), &mut FileHasher::in_memory()),
            Lookup::Corrupt { .. }
        ));
        // A valid PNG of the wrong size, with no recorded hash.
        cache.write(&key, &RgbaImage::new(2, 2)).unwrap();
        assert!(matches!(
            cache.lookup(&key, None, (4, 3), &mut FileHasher::in_memory()),
            Lookup::Corrupt { .. }
        ));
    }

    #[test]
    fn prepare_ignores_what_must_not_be_committed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let lock = cache.prepare().unwrap();
        assert_eq!(lock, dir.path().join("cache").join(LOCK_NAME));
        let ignore = std::fs::read_to_string(dir.path().join("cache/.gitignore")).unwrap();
        assert!(ignore.contains(".tmp-pixelgen-*") && ignore.contains(LOCK_NAME));
    }
}
