//! Backends that draw sprites, behind one trait. `Procedural` is embedded and needs no
//! model; `Diffusion` (Stable Diffusion through candle) plugs in behind the same trait.

#[cfg(feature = "diffusion")]
pub mod diffusion;
pub mod model_files;
pub mod procedural;
#[cfg(unix)]
pub mod remote;

use std::path::Path;

use image::RgbaImage;

use crate::manifest::{GeneratorSpec, SpriteSpec};

/// Version of the procedural generator's drawing code, part of every key it makes:
/// bump it when its pixels change.
pub const PROCEDURAL_VERSION: &str = "procedural-1";

/// One frame to draw.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub sprite: &'a SpriteSpec,
    pub frame: u32,
}

/// A backend. `generate` takes a batch of jobs that share the backend's model and
/// settings, so that backends with a costly setup (a diffusion model) pay it once.
pub trait Generator {
    /// Draws each job; the images may be any size (the pixelize stage brings them to the
    /// sprite's size) and are returned in job order.
    fn generate(&mut self, jobs: &[Job<'_>]) -> Result<Vec<RgbaImage>, GenerateError>;

    /// How many jobs to give `generate` at once (progress is reported between batches).
    fn batch_size(&self) -> usize {
        16
    }

    /// Something the user should hear once about how this backend runs.
    fn take_note(&mut self) -> Option<String> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "sprite `{sprite}`: the {generator} generator is not available in this build of pixelgen-build\nhelp: {help}"
    )]
    Unavailable {
        sprite: String,
        generator: &'static str,
        help: String,
    },
    #[error("sprite `{sprite}`: generation failed: {message}")]
    Failed { sprite: String, message: String },
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
}

/// Which device, precision and batch size a Diffusion run asks for, as the environment
/// says (`PIXELGEN_DEVICE`, `PIXELGEN_DTYPE`, `PIXELGEN_BATCH`). The warm server is sent
/// this rather than using its own environment, so a build gets the same pixels through
/// it as in-process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeviceRequest {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `f16` or `bf16`; `None` takes the device's default.
    pub dtype: Option<String>,
    /// Images per UNet batch; `None` takes the device's default.
    pub batch: Option<usize>,
}

impl DeviceRequest {
    pub fn from_env() -> Self {
        DeviceRequest {
            device: std::env::var("PIXELGEN_DEVICE").unwrap_or_else(|_| "auto".to_string()),
            dtype: std::env::var("PIXELGEN_DTYPE").ok(),
            batch: std::env::var("PIXELGEN_BATCH")
                .ok()
                .and_then(|b| b.parse().ok()),
        }
    }
}

/// The seed of frame `frame` of a Diffusion sprite: frames are drawn from consecutive seeds.
pub fn frame_seed(seed: u64, frame: u32) -> u64 {
    seed.wrapping_add(u64::from(frame))
}

/// The embedded generator.
#[derive(Debug, Default)]
pub struct Procedural;

impl Generator for Procedural {
    fn generate(&mut self, jobs: &[Job<'_>]) -> Result<Vec<RgbaImage>, GenerateError> {
        Ok(jobs
            .iter()
            .map(|job| {
                procedural::render(&procedural::ProceduralRequest {
                    prompt: &job.sprite.prompt,
                    negative_prompt: &job.sprite.negative_prompt,
                    seed: job.sprite.seed,
                    width: job.sprite.width,
                    height: job.sprite.height,
                    frame: job.frame,
                    frames: job.sprite.frames,
                })
            })
            .collect())
    }
}

/// The backend for a sprite's generator spec; `manifest_dir` anchors relative model paths.
pub fn backend_for(
    sprite: &SpriteSpec,
    manifest_dir: &Path,
) -> Result<Box<dyn Generator>, GenerateError> {
    match &sprite.generator {
        GeneratorSpec::Procedural => Ok(Box::new(Procedural)),
        #[cfg(feature = "diffusion")]
        GeneratorSpec::Diffusion { .. } => {
            Ok(Box::new(diffusion::Diffusion::load(sprite, manifest_dir)?))
        }
        #[cfg(not(feature = "diffusion"))]
        GeneratorSpec::Diffusion { .. } => {
            let _ = manifest_dir;
            Err(GenerateError::Unavailable {
                sprite: sprite.name.clone(),
                generator: "Diffusion",
                help: "enable pixelgen-build's `diffusion` feature (on by default) to run Stable Diffusion; sprites already in cache/ still build offline".to_string(),
            })
        }
    }
}

/// Makes a Diffusion model that names a Hugging Face repo available locally, downloading it
/// into the hub cache if it is not there. `Ok(true)` when it downloaded something (keys
/// that depend on the model's files must then be computed again).
pub fn prefetch_model(model: &str, manifest_dir: &Path) -> Result<bool, GenerateError> {
    if model_files::locate(model, manifest_dir).is_ok() || !model_files::is_repo_id(model) {
        return Ok(false);
    }
    #[cfg(feature = "diffusion")]
    {
        diffusion::download::download_model(model)
            .map(|_| true)
            .map_err(|e| GenerateError::Model {
                model: model.to_string(),
                message: format!(
                    "no model folder or file at {}, and {e}",
                    manifest_dir.join(model).display()
                ),
            })
    }
    #[cfg(not(feature = "diffusion"))]
    Ok(false)
}

/// Jobs that can share one backend instance: same generator spec and LoRAs.
pub fn batch_key(sprite: &SpriteSpec) -> String {
    format!("{:?}|{:?}", sprite.generator, sprite.loras)
}
