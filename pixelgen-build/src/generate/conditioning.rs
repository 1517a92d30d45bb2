//! What a sprite's drawing follows besides its prompt and seed: an image to start from
//! (img2img, with a mask for inpainting), ControlNets with their control images, and the
//! axes the drawing wraps on. The manifest writes these (`init`, `controlnet`, `tiling`);
//! each backend says which it can draw ([`Backend::refuses_conditioning`]); the plan keys
//! every file's bytes and every setting.
//!
//! Invariants: an empty [`Conditioning`] is what every sprite had before these fields
//! existed (its keys do not change); the settings a whole batch shares (strength,
//! tiling, ControlNets and their scales) are in [`Conditioning::encode_group`], the
//! per-frame images are not, so sprites that differ only in their images share a batch.
//!
//! [`Backend::refuses_conditioning`]: super::Backend::refuses_conditioning

use std::path::{Path, PathBuf};

pub use pixelgen_diffusion::Tiling;
use serde::{Deserialize, Serialize};

use super::encode_path;
use crate::key::Canonical;

/// The default strength of an `init` without a mask (diffusers' img2img default).
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// The default strength of an `init` with a mask: repaint the masked part from noise.
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;

/// An image file a sprite names, as written and as found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFile {
    /// As written in the manifest (the lock file's name for it).
    pub path: String,
    /// Relative to the manifest's folder.
    pub resolved: PathBuf,
    /// Its width and height, read from its header when the manifest was checked.
    pub size: (u32, u32),
}

/// `init: (image: ..., strength: ..., mask: ...)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSpec {
    pub image: ImageFile,
    /// In (0, 1]: how much of the image is redrawn.
    pub strength: f64,
    /// White where the drawing repaints.
    pub mask: Option<ImageFile>,
}

/// One entry of `controlnet: [...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetSpec {
    /// The diffusers-layout ControlNet folder, as written.
    pub model: String,
    pub resolved: PathBuf,
    /// The image it follows (resized to the drawing's size).
    pub image: ImageFile,
    pub scale: f64,
    /// The share of the steps it guides, from `start` to `end` (0 to 1).
    pub start: f64,
    pub end: f64,
}

/// Everything a sprite's drawing is conditioned on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Conditioning {
    pub init: Option<InitSpec>,
    pub controlnets: Vec<ControlNetSpec>,
    pub tiling: Option<Tiling>,
}

impl Conditioning {
    /// Nothing beyond prompt and seed.
    pub fn is_empty(&self) -> bool {
        self.init.is_none() && self.controlnets.is_empty() && self.tiling.is_none()
    }

    /// The settings one batch shares, for a backend's group key: the strength, the
    /// tiling, and each ControlNet's folder and scales (not the images, which are each
    /// frame's own).
    pub fn encode_group(&self, encoding: &mut Canonical) {
        if self.is_empty() {
            return;
        }
        encoding.str("conditioning");
        match &self.init {
            Some(init) => encoding
                .str("init")
                .f64(init.strength)
                .u64(u64::from(init.mask.is_some())),
            None => encoding.str("no-init"),
        };
        encoding.str(self.tiling.map_or("no-tiling", Tiling::name));
        encoding.u64(self.controlnets.len() as u64);
        for controlnet in &self.controlnets {
            encode_path(encoding, &controlnet.resolved);
            encoding
                .f64(controlnet.scale)
                .f64(controlnet.start)
                .f64(controlnet.end);
        }
    }

    /// The same with every path absolute (taken from `dir` where relative), for a
    /// process that does not know the manifest's folder (the warm server).
    pub fn absolute(&self, dir: &Path) -> Conditioning {
        let absolute =
            |path: &Path| std::path::absolute(dir.join(path)).unwrap_or_else(|_| dir.join(path));
        let image = |file: &ImageFile| ImageFile {
            resolved: absolute(&file.resolved),
            ..file.clone()
        };
        Conditioning {
            init: self.init.as_ref().map(|init| InitSpec {
                image: image(&init.image),
                mask: init.mask.as_ref().map(image),
                ..init.clone()
            }),
            controlnets: self
                .controlnets
                .iter()
                .map(|c| ControlNetSpec {
                    resolved: absolute(&c.resolved),
                    image: image(&c.image),
                    ..c.clone()
                })
                .collect(),
            tiling: self.tiling,
        }
    }

    /// The kinds of conditioning it uses, for messages: `init image`, `mask`, `ControlNet`,
    /// `tiling`.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if let Some(init) = &self.init {
            kinds.push("init image");
            if init.mask.is_some() {
                kinds.push("mask");
            }
        }
        if !self.controlnets.is_empty() {
            kinds.push("ControlNet");
        }
        if self.tiling.is_some() {
            kinds.push("tiling");
        }
        kinds
    }
}
