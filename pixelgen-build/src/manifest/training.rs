//! A LoRA the build trains from the game's own art (`trained_loras:`) and its settings.

use std::ops::Range;
use std::path::PathBuf;

use crate::identity::LoraName;

/// The caption of an image without a `NAME.txt` beside it, with the trigger word.
pub const DEFAULT_CAPTION: &str = "pixel art sprite, pxlgn style";

/// Everything that decides a training run besides the images and the base model.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSettings {
    pub rank: usize,
    /// The product `up·down` is scaled by `alpha / rank`.
    pub alpha: f64,
    pub steps: usize,
    pub learning_rate: f64,
    /// Images per step.
    pub batch: usize,
    /// Training size; the model's own when `None`.
    pub resolution: Option<(u32, u32)>,
    pub seed: u64,
    /// The caption of images without a `NAME.txt`.
    pub caption: String,
    /// What transparent pixels and the padding become.
    pub background: [u8; 3],
    /// Also adapt the UNet's resnet convolutions (kohya's LoCon).
    pub conv: bool,
    /// Also adapt the text encoder's attention.
    pub text_encoder: bool,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            rank: 8,
            alpha: 8.0,
            steps: 1000,
            learning_rate: 1e-4,
            batch: 1,
            resolution: None,
            seed: 0,
            caption: DEFAULT_CAPTION.to_owned(),
            background: [255, 255, 255],
            conv: false,
            text_encoder: false,
        }
    }
}

/// A LoRA trained from a folder of the game's own art (`trained_loras:`): its key covers
/// the images, their captions, the base model and every setting; the trained file is
/// stored in the cache like a sprite.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedLoraSpec {
    pub name: LoraName,
    /// The image folder as written in the manifest.
    pub images: String,
    /// Resolved against the manifest's folder.
    pub images_dir: PathBuf,
    /// The base model, named like a Diffusion generator's.
    pub model: String,
    pub settings: TrainingSettings,
    /// Where the name is written in the manifest.
    pub span: Range<usize>,
}
