//! A sprite's LoRAs as the manifest names them (the plan resolves them to files for the
//! backends: `generate::ResolvedLora`).

use std::ops::Range;
use std::path::PathBuf;

use crate::identity::LoraName;

/// A LoRA adapter applied to the model, with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub source: LoraSource,
    pub weight: f32,
    /// Where the path (or the trained LoRA's name) is written in the manifest, for errors.
    pub span: Range<usize>,
}

/// Where a sprite's LoRA comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraSource {
    /// A `.safetensors` file the user made or downloaded.
    File {
        /// As written in the manifest (used in messages and the lock file).
        path: String,
        /// Resolved against the manifest's folder.
        resolved: PathBuf,
    },
    /// One of the manifest's `trained_loras`, a build product that lives in the cache.
    Trained(LoraName),
}

impl LoraSpec {
    /// How messages name the LoRA: its path, or `trained LoRA `name``.
    pub fn describe(&self) -> String {
        match &self.source {
            LoraSource::File { path, .. } => path.clone(),
            LoraSource::Trained(name) => format!("trained LoRA `{name}`"),
        }
    }
}
