//! The identities that travel through every stage: a sprite, an atlas, one frame of a
//! sprite, and a LoRA trained from the game's art. The manifest makes them from its keys;
//! the plan keys a [`FrameId`], the pipeline draws, stores and reports it, the atlas packs
//! it, and the emitter indexes it, so a frame is never re-spelled as `"name#frame"` or
//! split into loose `(&str, u32)`.
//!
//! Invariants:
//! - A [`SpriteName`] or [`AtlasName`] is the key exactly as written in `sprites.ron`; the
//!   manifest has already checked it (unique, and it converts to a Rust identifier).
//!   Benches and tests may make any name with `From<&str>`.
//! - [`FrameId`]s order by sprite name, then by frame number (numerically: frame 2 comes
//!   before frame 10). Stages that must not depend on manifest order sort by it.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A sprite's name: its key under `sprites:` in the manifest (and in `sprites.lock`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpriteName(String);

/// An atlas's name: its key under `atlases:` (or `default`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AtlasName(String);

/// A trained LoRA's name: its key under `trained_loras:`, which sprites name in
/// `loras: [(trained: "…")]` (and in `sprites.lock`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LoraName(String);

macro_rules! name_type {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                $name(name.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                $name(name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so that `{:width$}` lines tables up.
                f.pad(&self.0)
            }
        }

        /// Maps keyed by name (the lock file's) are looked up with the identity.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(SpriteName);
name_type!(AtlasName);
name_type!(LoraName);

impl SpriteName {
    /// Frame `frame` of this sprite (0 for a still sprite).
    pub fn frame(&self, frame: u32) -> FrameId {
        FrameId {
            sprite: self.clone(),
            frame,
        }
    }
}

/// One frame of one sprite: what the plan keys, the generator draws, the atlas packs and
/// the index points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameId {
    pub sprite: SpriteName,
    /// 0-based; a still sprite has only frame 0.
    pub frame: u32,
}

/// `slime#2`: the form messages use.
impl fmt::Display for FrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.sprite, self.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_order_by_sprite_then_numerically() {
        let mut frames = [
            SpriteName::from("slime").frame(10),
            SpriteName::from("slime_king").frame(0),
            SpriteName::from("slime").frame(2),
            SpriteName::from("bat").frame(3),
        ];
        frames.sort();
        let shown: Vec<String> = frames.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["bat#3", "slime#2", "slime#10", "slime_king#0"]);
    }

    #[test]
    fn names_look_up_maps_keyed_by_string() {
        let lock: std::collections::BTreeMap<String, u32> = [("hero".to_string(), 1)].into();
        let name = SpriteName::from("hero");
        assert_eq!(lock.get(name.as_str()), Some(&1));
        assert_eq!(name, "hero");
        assert_eq!(format!("[{name:6}]"), "[hero  ]");
    }
}
