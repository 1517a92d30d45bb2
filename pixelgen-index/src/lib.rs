//! The index that `pixelgen-build` writes to OUT_DIR and the `sprites!` macro reads:
//! atlases, their images and rects, and which rects belong to which sprite.
//!
//! It also holds [`autotile`]: the order of an autotile set's tiles, which the build draws
//! and the game looks up.
//!
//! This crate is the contract between the two sides, and serde only, because every game
//! compiles the macro. Invariants:
//! - [`INDEX_VERSION`] changes whenever the meaning or shape of a field changes; a reader
//!   refuses any other version with a message that says to align the crates' versions.
//! - Atlases and the sprites in each are sorted by name, so equal inputs give an equal
//!   file, byte for byte.
//! - A sprite's frames are contiguous layout indices on one page.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod autotile;

pub const INDEX_VERSION: u32 = 2;
/// Folder under OUT_DIR that holds pixelgen's outputs.
pub const OUT_SUBDIR: &str = "pixelgen";
pub const INDEX_FILE: &str = "index.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    /// Hash of everything the atlases were made from: an equal stamp means the files in
    /// OUT_DIR are up to date and need not be packed again.
    pub stamp: String,
    /// Sorted by name.
    pub atlases: Vec<IndexedAtlas>,
    /// The published copy of this index that a running dev build of the game reloads
    /// (`cache/live/…/pixelgen/index.json`); absent in indexes written before it existed.
    #[serde(default)]
    pub live_index: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedAtlas {
    pub name: String,
    /// Rust module name.
    pub module: String,
    /// One image and layout per page; one page unless the sprites exceed the
    /// atlas's maximum size.
    pub pages: Vec<IndexedPage>,
    /// Sorted by name.
    pub sprites: Vec<IndexedSprite>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedPage {
    /// Absolute path of the page PNG (in OUT_DIR).
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    /// `[x, y, width, height]` of each layout index, in the order of the layout.
    /// Aliases (identical frames) have equal rects.
    pub rects: Vec<[u32; 4]>,
    /// Per layout index, `[x, y, frame_width, frame_height]`: where the (trimmed)
    /// rect lies within its untrimmed frame, and that frame's size.
    pub trims: Vec<[u32; 4]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedSprite {
    pub name: String,
    /// Rust constant name.
    pub constant: String,
    /// The page that holds all of its frames.
    pub page: usize,
    /// Layout index (in that page) of each frame, in frame order.
    pub frames: Vec<usize>,
    /// Declared with `frames:` (an animation), even if it has one frame.
    pub animated: bool,
}

/// The index as the build writes it.
pub fn to_json(index: &Index) -> String {
    // Plain data of strings and numbers: serialising cannot fail.
    serde_json::to_string_pretty(index).unwrap_or_default()
}

impl Index {
    pub fn path_in(out_dir: &Path) -> PathBuf {
        out_dir.join(OUT_SUBDIR).join(INDEX_FILE)
    }

    pub fn read(path: &Path) -> Result<Index, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a pixelgen index: {e}", path.display()))?;
        if index.version != INDEX_VERSION {
            return Err(format!(
                "{} has index version {}, this pixelgen reads version {INDEX_VERSION}: pixelgen-build, pixelgen and pixelgen-macros must be the same version",
                path.display(),
                index.version
            ));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(version: u32) -> Index {
        Index {
            live_index: None,
            version,
            stamp: "s".into(),
            atlases: vec![IndexedAtlas {
                name: "items".into(),
                module: "items".into(),
                pages: vec![IndexedPage {
                    image: "/out/items.png".into(),
                    width: 16,
                    height: 8,
                    rects: vec![[0, 0, 8, 8], [8, 0, 8, 8]],
                    trims: vec![[0, 0, 8, 8], [1, 1, 10, 10]],
                }],
                sprites: vec![IndexedSprite {
                    name: "coin".into(),
                    constant: "COIN".into(),
                    page: 0,
                    frames: vec![0, 1],
                    animated: true,
                }],
            }],
        }
    }

    #[test]
    fn the_index_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = Index::path_in(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, to_json(&index(INDEX_VERSION))).unwrap();
        assert_eq!(Index::read(&path).unwrap(), index(INDEX_VERSION));
    }

    #[test]
    fn another_version_or_a_broken_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        std::fs::write(&path, to_json(&index(INDEX_VERSION + 1))).unwrap();
        let error = Index::read(&path).unwrap_err();
        assert!(error.contains("must be the same version"), "{error}");
        std::fs::write(&path, "{").unwrap();
        assert!(
            Index::read(&path)
                .unwrap_err()
                .contains("is not a pixelgen index")
        );
        assert!(
            Index::read(&dir.path().join("none.json"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
