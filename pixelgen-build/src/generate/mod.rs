//! Backends that draw sprites, behind one trait. `Procedural` is embedded and needs no
//! model; `Diffusion` (Stable Diffusion through candle) plugs in behind the same trait.

#[cfg(feature = "diffusion")]
pub mod diffusion;
/// Where a model's files are (from `pixelgen-diffusion`, compiled without candle too).
pub use pixelgen_diffusion::files as model_files;
pub mod procedural;
#[cfg(unix)]
pub mod remote;
pub mod server;

use std::path::{Path, PathBuf};

use image::RgbaImage;

use crate::environment::{Environment, HubSettings};
use crate::identity::{FrameId, SpriteName};
use crate::manifest::ResolvedLora;
use crate::manifest::{GeneratorSpec, Scheduler, SpriteSpec};
use crate::timings::{Stage, Timings};

/// Version of the procedural generator's drawing code, part of every key it makes:
/// bump it when its pixels change.
pub const PROCEDURAL_VERSION: &str = "procedural-1";

/// One frame to draw.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub sprite: &'a SpriteSpec,
    pub frame: u32,
}

impl Job<'_> {
    /// Which frame this job draws.
    pub fn id(&self) -> FrameId {
        self.sprite.name.frame(self.frame)
    }
}

/// A backend. `generate` takes a batch of jobs that share the backend's model and
/// settings, so that backends with a costly setup (a diffusion model) pay it once.
/// Backends are `Send`: the pipeline samples on one thread while it pixelizes and writes
/// the previous batch on another.
pub trait Generator: Send {
    /// Draws each job; the images may be any size (the pixelize stage brings them to the
    /// sprite's size) and are returned in job order. The time of each stage it runs is
    /// added to `timings`.
    fn generate(
        &mut self,
        jobs: &[Job<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError>;

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
        sprite: SpriteName,
        generator: &'static str,
        help: String,
    },
    #[error("sprite `{sprite}`: generation failed: {message}")]
    Failed { sprite: SpriteName, message: String },
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
    /// Frames the image servers could not draw, with each server's message.
    #[error("{}", servers_failed(failures))]
    Servers { failures: Vec<(FrameId, String)> },
}

fn servers_failed(failures: &[(FrameId, String)]) -> String {
    let mut text = format!(
        "{} frame(s) could not be drawn on the image servers:",
        failures.len()
    );
    for (frame, message) in failures.iter().take(20) {
        text.push_str(&format!("\n  {frame}: {message}"));
    }
    if failures.len() > 20 {
        text.push_str(&format!("\n  … and {} more", failures.len() - 20));
    }
    text.push_str("\nhelp: the frames that were drawn are cached; fix the server (or the sprite) and build again");
    text
}

pub use crate::environment::DeviceRequest;

/// The seed of frame `frame` of a Diffusion sprite: frames are drawn from consecutive seeds.
pub fn frame_seed(seed: u64, frame: u32) -> u64 {
    seed.wrapping_add(u64::from(frame))
}

/// The embedded generator.
#[derive(Debug, Default)]
pub struct Procedural;

impl Generator for Procedural {
    fn generate(
        &mut self,
        jobs: &[Job<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError> {
        let start = std::time::Instant::now();
        let images = jobs
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
            .collect();
        timings.add_runs(Stage::Draw, start.elapsed(), jobs.len() as u64);
        Ok(images)
    }
}

/// The backend for a sprite's generator spec; `manifest_dir` anchors relative model paths,
/// `environment` gives the device, lock folder and hub cache. A model's loading time goes
/// to `timings`.
pub fn backend_for(
    sprite: &SpriteSpec,
    loras: &[ResolvedLora],
    manifest_dir: &Path,
    environment: &Environment,
    timings: &mut Timings,
) -> Result<Box<dyn Generator>, GenerateError> {
    match &sprite.generator {
        GeneratorSpec::Procedural => Ok(Box::new(Procedural)),
        #[cfg(feature = "diffusion")]
        GeneratorSpec::Diffusion { .. } => {
            let start = std::time::Instant::now();
            let backend = diffusion::Diffusion::load(sprite, loras, manifest_dir, environment)?;
            timings.add(Stage::Load, start.elapsed());
            Ok(Box::new(backend))
        }
        GeneratorSpec::Server(_) => Err(GenerateError::Failed {
            sprite: sprite.name.clone(),
            message: "Server sprites are drawn by the fan-out, not a local backend".into(),
        }),
        #[cfg(not(feature = "diffusion"))]
        GeneratorSpec::Diffusion { .. } => {
            let _ = (loras, manifest_dir, environment, timings);
            Err(GenerateError::Unavailable {
                sprite: sprite.name.clone(),
                generator: "Diffusion",
                help: "enable pixelgen-build's `diffusion` feature (on by default) to run Stable Diffusion; sprites already in cache/ still build offline".to_string(),
            })
        }
    }
}

/// Settles the number of CPU threads candle computes with, once per process.
///
/// candle asks for its thread count on every CPU matrix product, and unless
/// `RAYON_NUM_THREADS` is set each answer re-reads `/proc/cpuinfo` (about a thousand reads
/// per image). This sets `RAYON_NUM_THREADS` to the count candle would pick anyway, unless
/// the user set it. The rayon pools pixelgen uses (weight conversion, hashing) follow it.
///
/// # Safety
///
/// It writes the process environment, so no other thread may read or write the
/// environment while it runs: call it at the start of `main` (the CLI) or of
/// `Build::run` (a build script's main thread, before it starts any).
pub unsafe fn settle_cpu_threads() {
    #[cfg(feature = "diffusion")]
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = diffusion::candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees no other thread touches the environment now.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Makes a Diffusion model that names a Hugging Face repo available locally, downloading it
/// into the hub cache if it is not there. `Ok(true)` when it downloaded something (keys
/// that depend on the model's files must then be computed again).
pub fn prefetch_model(
    model: &str,
    manifest_dir: &Path,
    hub: &HubSettings,
) -> Result<bool, GenerateError> {
    if model_files::locate(model, manifest_dir, hub.cache_dir.as_deref()).is_ok()
        || !model_files::is_repo_id(model)
    {
        return Ok(false);
    }
    #[cfg(feature = "diffusion")]
    {
        diffusion::download::download_model(model, hub)
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
    {
        let _ = hub;
        Ok(false)
    }
}

/// What decides whether two sprites' frames can share one backend instance and one batch:
/// the generator, every setting that shapes sampling, and the LoRAs by resolved file and
/// weight. Where in the manifest they were written plays no part, so sprites that name
/// the same model and LoRAs load it once and are sampled together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BatchKey {
    Procedural,
    Diffusion {
        model: String,
        steps: u32,
        /// The guidance scale's bits: floats have no total order, their bits do.
        guidance_bits: u32,
        scheduler: Scheduler,
        resolution: Option<(u32, u32)>,
        /// (resolved file, weight bits), in manifest order (merging order matters).
        loras: Vec<(PathBuf, u32)>,
    },
    /// Frames for the same servers, model, settings and LoRAs go out as one fan-out.
    Server(Box<ServerBatchKey>),
}

/// [`BatchKey::Server`]'s fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerBatchKey {
    kind: crate::manifest::ServerKind,
    endpoints: Vec<crate::manifest::Endpoint>,
    model: String,
    steps: u32,
    guidance_bits: u32,
    scheduler: String,
    resolution: Option<(u32, u32)>,
    workflow: Option<(PathBuf, crate::manifest::WorkflowInputs)>,
    loras: Vec<(PathBuf, u32)>,
}

impl BatchKey {
    /// The key of `sprite`'s frames, whose LoRAs the plan resolved to `loras`.
    pub fn of(sprite: &SpriteSpec, loras: &[ResolvedLora]) -> BatchKey {
        match &sprite.generator {
            GeneratorSpec::Procedural => BatchKey::Procedural,
            GeneratorSpec::Diffusion {
                model,
                steps,
                guidance,
                scheduler,
                resolution,
            } => BatchKey::Diffusion {
                model: model.clone(),
                steps: *steps,
                guidance_bits: guidance.to_bits(),
                scheduler: *scheduler,
                resolution: *resolution,
                loras: loras
                    .iter()
                    .map(|l| (l.file.clone(), l.weight.to_bits()))
                    .collect(),
            },
            GeneratorSpec::Server(spec) => BatchKey::Server(Box::new(ServerBatchKey {
                kind: spec.kind,
                endpoints: spec.endpoints.clone(),
                model: spec.model.clone(),
                steps: spec.steps,
                guidance_bits: spec.guidance.to_bits(),
                scheduler: spec.scheduler.clone(),
                resolution: spec.resolution,
                workflow: spec
                    .workflow
                    .as_ref()
                    .map(|w| (w.resolved.clone(), w.inputs.clone())),
                loras: loras
                    .iter()
                    .map(|l| (l.file.clone(), l.weight.to_bits()))
                    .collect(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn keys(text: &str) -> Vec<BatchKey> {
        let manifest = parse(Path::new("/game/sprites.ron"), text).unwrap();
        // The LoRA files do not exist, so they are resolved here as the plan would.
        manifest
            .sprites
            .iter()
            .map(|sprite| {
                let loras: Vec<ResolvedLora> = sprite
                    .loras
                    .iter()
                    .map(|l| match &l.source {
                        crate::manifest::LoraSource::File { resolved, .. } => ResolvedLora {
                            file: resolved.clone(),
                            weight: l.weight,
                            hash: String::new(),
                            trained: None,
                        },
                        crate::manifest::LoraSource::Trained(_) => unreachable!(),
                    })
                    .collect();
                BatchKey::of(sprite, &loras)
            })
            .collect()
    }

    #[test]
    fn sprites_naming_the_same_model_and_loras_share_a_batch() {
        // Same LoRA written at different places (and spelled differently) in the file.
        let k = keys(
            r#"(sprites: {
                "a": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "style.safetensors", weight: 0.8)]),
                "b": (prompt: "b", seed: 9, size: (8, 8), generator: Diffusion(model: "m", steps: 4),
                      loras: [(path: "./style.safetensors", weight: 0.8)]),
            })"#,
        );
        assert_eq!(k[0], k[1]);
    }

    #[test]
    fn any_sampling_setting_or_lora_weight_splits_batches() {
        let k = keys(
            r#"(sprites: {
                "a": (prompt: "a", generator: Diffusion(model: "m", steps: 4)),
                "b": (prompt: "a", generator: Diffusion(model: "m", steps: 5)),
                "c": (prompt: "a", generator: Diffusion(model: "m", steps: 4, guidance: 7.5)),
                "d": (prompt: "a", generator: Diffusion(model: "m", steps: 4, scheduler: Ddim)),
                "e": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "s.safetensors", weight: 0.5)]),
                "f": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "s.safetensors", weight: 0.6)]),
                "g": (prompt: "a", generator: Diffusion(model: "other", steps: 4)),
                "h": (prompt: "a", generator: Diffusion(model: "m", steps: 4, resolution: (256, 256))),
            })"#,
        );
        for i in 0..k.len() {
            for j in i + 1..k.len() {
                assert_ne!(k[i], k[j], "sprites {i} and {j}");
            }
        }
    }
}
