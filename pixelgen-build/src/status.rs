//! What a run found in the cache: each sprite's and trained LoRA's freshness with the
//! reasons a user reads, and the report an offline build fails with.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::identity::{LoraName, SpriteName};

/// Whether a sprite's cached frames are all there and intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpriteStatus {
    pub name: SpriteName,
    pub status: Freshness,
    /// Why it is stale; empty when fresh.
    pub reasons: Vec<String>,
    pub frames: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Freshness {
    Fresh,
    Stale,
}

impl Freshness {
    /// Stale when there is a reason to be.
    pub fn of(reasons: &[String]) -> Freshness {
        if reasons.is_empty() {
            Freshness::Fresh
        } else {
            Freshness::Stale
        }
    }
}

/// Whether a trained LoRA's file is in the cache, and why it must be trained if not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoraStatus {
    pub name: LoraName,
    /// The image folder as the manifest names it.
    pub images: String,
    pub status: Freshness,
    pub reasons: Vec<String>,
    /// The sprites that use it.
    pub used_by: Vec<SpriteName>,
}

/// Stale sprites found by an offline build.
#[derive(Debug, Clone)]
pub struct StaleReport {
    pub manifest_path: PathBuf,
    pub stale: Vec<SpriteStatus>,
    /// Trained LoRAs that stale sprites need and the cache lacks.
    pub loras: Vec<LoraStatus>,
}

impl fmt::Display for StaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pixelgen: {} sprite(s) in {} are stale and this build is offline (PIXELGEN_OFFLINE or CI is set), so they were not generated:",
            self.stale.len(),
            self.manifest_path.display()
        )?;
        for sprite in &self.stale {
            writeln!(f, "  - {}: {}", sprite.name, sprite.reasons.join("; "))?;
        }
        if !self.loras.is_empty() {
            writeln!(
                f,
                "and {} trained LoRA(s) they use must be trained again:",
                self.loras.len()
            )?;
            for lora in &self.loras {
                let users: Vec<&str> = lora.used_by.iter().map(SpriteName::as_str).collect();
                writeln!(
                    f,
                    "  - {} (images in {}): {}; used by {}",
                    lora.name,
                    lora.images,
                    lora.reasons.join("; "),
                    users.join(", ")
                )?;
            }
        }
        let crate_manifest = self.manifest_path.with_file_name("Cargo.toml");
        write!(
            f,
            "help: on a machine that can generate, run `cargo pixelgen generate --manifest-path {}` and commit sprites.lock and the cache/ folder",
            crate_manifest.display()
        )
    }
}
