//! The vocabulary of content keys, below every stage: a frame's [`Key`], the named
//! [`InputGroup`]s a key is hashed from, the input files `sprites.lock` records
//! ([`InputFile`]), the [`Canonical`] byte encoding groups are written in, and the
//! [`FileHasher`] that hashes input files by content.
//!
//! Invariants: this module imports no stage (manifest, plan, cache, backends); the same
//! values always encode to the same bytes, and different values to different bytes, so a
//! key changes exactly when an input that shapes the pixels changes.

use std::collections::BTreeMap;
use std::fmt;

use crate::identity::LoraName;

mod hasher;
pub use hasher::{FileHasher, SHARED_STAMP_MIN_SIZE};

/// The content key of one frame of one sprite.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn to_hex(self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(hex: &str) -> Option<Key> {
        blake3::Hash::from_hex(hex).ok().map(|h| Key(*h.as_bytes()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.to_hex()[..16])
    }
}

/// A named group of a sprite's inputs. A frame's key hashes each group's name and
/// content in name order, and `sprites.lock` records a short hash per group, so that a
/// stale sprite can say which group changed.
///
/// Invariant: the variants are declared in the alphabetical order of their names, so the
/// derived `Ord` (the order of `InputHashes` and of hashing) is the order of the names
/// that keys were made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputGroup {
    Background,
    /// `init`, `controlnet`, `tiling`: present only in the keys of sprites that use them.
    Conditioning,
    Frames,
    Generator,
    Loras,
    Model,
    NegativePrompt,
    Palette,
    Pipeline,
    Pixelize,
    Prompt,
    Seed,
    Size,
}

impl InputGroup {
    pub const ALL: [InputGroup; 13] = [
        InputGroup::Background,
        InputGroup::Conditioning,
        InputGroup::Frames,
        InputGroup::Generator,
        InputGroup::Loras,
        InputGroup::Model,
        InputGroup::NegativePrompt,
        InputGroup::Palette,
        InputGroup::Pipeline,
        InputGroup::Pixelize,
        InputGroup::Prompt,
        InputGroup::Seed,
        InputGroup::Size,
    ];

    /// The name hashed into keys and written in `sprites.lock`.
    pub const fn name(self) -> &'static str {
        match self {
            InputGroup::Background => "background",
            InputGroup::Conditioning => "conditioning",
            InputGroup::Frames => "frames",
            InputGroup::Generator => "generator",
            InputGroup::Loras => "loras",
            InputGroup::Model => "model",
            InputGroup::NegativePrompt => "negative_prompt",
            InputGroup::Palette => "palette",
            InputGroup::Pipeline => "pipeline",
            InputGroup::Pixelize => "pixelize",
            InputGroup::Prompt => "prompt",
            InputGroup::Seed => "seed",
            InputGroup::Size => "size",
        }
    }

    /// Whether a generated raw image depends on this group (its raw key covers it); size,
    /// palette, background and pixelizing act after generation.
    pub const fn shapes_raw_image(self) -> bool {
        matches!(
            self,
            InputGroup::Conditioning
                | InputGroup::Generator
                | InputGroup::Loras
                | InputGroup::Model
                | InputGroup::NegativePrompt
                | InputGroup::Prompt
                | InputGroup::Seed
        )
    }
}

/// The input groups of a sprite, each with a short hash.
pub type InputHashes = BTreeMap<InputGroup, String>;

/// An input file of a sprite, as `sprites.lock` records its content hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputFile {
    /// A LoRA, by the path written in the manifest.
    Lora(String),
    /// A Diffusion model (all its files as one identity), by the name in the manifest.
    Model(String),
    /// A LoRA pixelgen trains (`trained_loras`), by name; its "hash" is its key.
    TrainedLora(LoraName),
    /// The model of InvokeAI Server sprites, by the name in the manifest: its identity
    /// as the servers reported it (the server backend's `invokeai_identity`).
    ServerModel(String),
    /// A ComfyUI workflow file, by the path written in the manifest.
    Workflow(String),
    /// An image a sprite is drawn from or follows (init image, mask, control image), by
    /// the path written in the manifest.
    Image(String),
    /// A ControlNet folder (its config and weights as one identity), by the path written
    /// in the manifest.
    ControlNet(String),
}

impl InputFile {
    /// The entry's name in the lock file's `files`: the LoRA's path, `model:<name>` or
    /// `trained:<name>`.
    pub fn lock_key(&self) -> String {
        match self {
            InputFile::Lora(path) => path.clone(),
            InputFile::Model(model) => format!("model:{model}"),
            InputFile::TrainedLora(name) => format!("trained:{name}"),
            InputFile::ServerModel(model) => format!("server-model:{model}"),
            InputFile::Workflow(path) => format!("workflow:{path}"),
            InputFile::Image(path) => format!("image:{path}"),
            InputFile::ControlNet(path) => format!("controlnet:{path}"),
        }
    }
}

/// Where a LoRA's content hash comes from when the file itself is absent (offline
/// builds need not have the LoRA files): the hashes recorded in the lock file.
pub trait KnownFileHashes {
    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash>;
}

/// An unambiguous byte encoding: every field is length- or width-prefixed, so
/// ("ab","c") and ("a","bc") hash differently.
#[derive(Default)]
pub struct Canonical(Vec<u8>);

impl Canonical {
    pub fn new() -> Self {
        Canonical::default()
    }
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f32(&mut self, v: f32) -> &mut Self {
        // -0.0 and 0.0 draw the same picture.
        let v = if v == 0.0 { 0.0f32 } else { v };
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
        self
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        let v = if v == 0.0 { 0.0f64 } else { v };
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
        self
    }
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_groups_are_ordered_by_their_names() {
        // Keys hash the groups in this order: it must stay the order of the names.
        let mut by_name = InputGroup::ALL;
        by_name.sort_by_key(|g| g.name());
        assert_eq!(by_name, InputGroup::ALL);
        let mut by_ord = InputGroup::ALL;
        by_ord.sort();
        assert_eq!(by_ord, InputGroup::ALL);
    }

    #[test]
    fn input_files_have_the_lock_file_names() {
        assert_eq!(
            InputFile::Lora("loras/a.safetensors".into()).lock_key(),
            "loras/a.safetensors"
        );
        assert_eq!(InputFile::Model("org/sd".into()).lock_key(), "model:org/sd");
        assert_eq!(
            InputFile::ServerModel("xl".into()).lock_key(),
            "server-model:xl"
        );
        assert_eq!(
            InputFile::Workflow("w/a.json".into()).lock_key(),
            "workflow:w/a.json"
        );
        assert_eq!(
            InputFile::Image("art/a.png".into()).lock_key(),
            "image:art/a.png"
        );
        assert_eq!(
            InputFile::ControlNet("cn/pose".into()).lock_key(),
            "controlnet:cn/pose"
        );
    }
}
