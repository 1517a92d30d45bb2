//! The `Diffusion` backend: sprites whose manifest entry says `generator: Diffusion(..)`,
//! drawn by the `pixelgen-diffusion` crate (candle), in this process ([`local`], feature
//! `diffusion`) or by the warm server ([`warm`], `cargo pixelgen serve`), which wraps the
//! same drawing code and falls back to it.
//!
//! Invariants: the key covers the model's files (their content, not their path), every
//! sampling setting and this backend's version; whether the warm server drew a frame is
//! part of no key.

#[cfg(feature = "diffusion")]
pub mod local;
mod settings;
#[cfg(unix)]
pub mod warm;

use std::path::Path;

/// The sampler of a Diffusion sprite (defined beside the samplers, in `pixelgen-diffusion`).
pub use pixelgen_diffusion::Scheduler;
/// The axes a sprite wraps on (defined beside the convolutions that wrap).
pub use pixelgen_diffusion::Tiling;
/// Where a model's files are (from `pixelgen-diffusion`, compiled without candle too).
pub use pixelgen_diffusion::files as model_files;
pub use settings::DiffusionSettings;

#[cfg(feature = "diffusion")]
pub use local::{
    ControlNet, ControlUse, DeviceLock, Diffusion, DiffusionError, InitImage, LoadedModel,
    LoraFile, ModelLocation, Noise, Phase, PhaseTimes, Request, Settings, TrainingBase, batch_for,
    candle_core, clip, config, controlnet, cpu_ops, download, ldm, locate, lora, lora_files, model,
    noise, prepare_control_image, request_for, sample, scheduler, select_device_for, settings_for,
    sgm, tokenizer, train, unet, vae,
};

use super::batched::{Batched, Generator};
use super::settings::{Refusal, SettingsContext};
use super::{
    Backend, Conditioning, Drawer, GenerateError, GroupInputs, GroupKey, KeyError, KeyInputs,
    KeyParts, ResolvedLora, Workshop, encode_loras,
};
pub use super::{DeviceRequest, frame_seed};
use crate::environment::{Environment, HubSettings};
use crate::identity::SpriteName;
use crate::key::{Canonical, InputFile};
use crate::timings::{Stage, Timings};

/// Bumped when the Diffusion backend's raw images change for the same inputs; part of the
/// generator input group, so of raw and finished keys alike.
/// 2: single-file checkpoints get the scheduler config diffusers gives them (SD1 files
/// sampled with Euler used `leading` spacing instead of `linspace`; SD 2.x files were
/// epsilon instead of v-prediction), and the version reached finished keys.
pub const DIFFUSION_VERSION: &str = "pixelgen-diffusion-2";

/// A `Diffusion(...)` generator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionSpec {
    /// A Hugging Face model id (`stabilityai/sd-turbo`) or a local folder or file.
    pub model: String,
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: Scheduler,
    /// Resolution the model draws at before pixelizing; the model's default when absent.
    pub resolution: Option<(u32, u32)>,
}

impl Backend for DiffusionSpec {
    fn name(&self) -> &'static str {
        "Diffusion"
    }

    fn draws_raw_images(&self) -> bool {
        true
    }

    fn key(&self, inputs: &mut dyn KeyInputs) -> Result<KeyParts, KeyError> {
        let mut generator = Canonical::new();
        // The backend's version is part of the generator, so that the raw key and the
        // finished key (which hashes every group the raw key does) both change with it.
        generator
            .str("diffusion")
            .str(DIFFUSION_VERSION)
            .str(&self.model)
            .u64(self.steps.into())
            .f32(self.guidance);
        generator.str(self.scheduler.name());
        match self.resolution {
            Some((w, h)) => generator.u64(w.into()).u64(h.into()),
            None => generator.str("default-resolution"),
        };
        let identity = inputs.model_identity(&self.model);
        Ok(KeyParts {
            generator,
            model: Some(identity),
            files: vec![(InputFile::Model(self.model.clone()), identity)],
        })
    }

    fn group(&self, loras: &[ResolvedLora], conditioning: &Conditioning) -> GroupKey {
        let mut encoding = Canonical::new();
        encoding
            .str(&self.model)
            .u64(self.steps.into())
            .u64(self.guidance.to_bits().into())
            .str(self.scheduler.name());
        match self.resolution {
            Some((w, h)) => encoding.u64(w.into()).u64(h.into()),
            None => encoding.str("default-resolution"),
        };
        encode_loras(&mut encoding, loras);
        conditioning.encode_group(&mut encoding);
        GroupKey::new("diffusion", &encoding)
    }

    fn open(
        &self,
        group: &GroupInputs<'_>,
        workshop: &mut Workshop,
        timings: &mut Timings,
    ) -> Result<Box<dyn Drawer>, GenerateError> {
        #[cfg(unix)]
        let generator = warm::client::open(self, group, workshop, timings)?;
        #[cfg(not(unix))]
        let generator = load_local(
            self,
            group.sprite,
            group.loras,
            &workshop.manifest_dir,
            &workshop.environment,
            timings,
        )?;
        Ok(Box::new(Batched::new(generator)))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model, "steps": self.steps, "guidance": self.guidance,
            "scheduler": self.scheduler.name(), "resolution": self.resolution,
        })
    }

    fn summary(&self) -> String {
        format!("diffusion: {}", self.model)
    }

    fn local_model(&self) -> Option<&str> {
        Some(&self.model)
    }

    fn refuses_conditioning(
        &self,
        conditioning: &Conditioning,
        sprite_size: (u32, u32),
        context: &SettingsContext<'_>,
    ) -> Option<Refusal> {
        self.check_conditioning(conditioning, sprite_size, context)
            .err()
    }
}

/// The model of `spec` with `loras`, loaded in this process for `sprite`'s group; a
/// relative model path is taken from `manifest_dir`. Without the `diffusion` feature,
/// an error that says how to get it.
pub(crate) fn load_local(
    spec: &DiffusionSpec,
    sprite: &SpriteName,
    loras: &[ResolvedLora],
    conditioning: &Conditioning,
    manifest_dir: &Path,
    environment: &Environment,
    timings: &mut Timings,
) -> Result<Box<dyn Generator>, GenerateError> {
    #[cfg(feature = "diffusion")]
    {
        let start = std::time::Instant::now();
        let backend =
            local::Diffusion::load(spec, sprite, loras, conditioning, manifest_dir, environment)?;
        timings.add(Stage::Load, start.elapsed());
        Ok(Box::new(backend))
    }
    #[cfg(not(feature = "diffusion"))]
    {
        let _ = (
            spec,
            loras,
            conditioning,
            manifest_dir,
            environment,
            timings,
            Stage::Load,
        );
        Err(GenerateError::Unavailable {
            sprite: sprite.clone(),
            generator: "Diffusion",
            help: "enable pixelgen-build's `diffusion` feature (on by default) to run Stable Diffusion; sprites already in cache/ still build offline".to_string(),
        })
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
        download::download_model(model, hub)
            .map(|_| true)
            .map_err(|source| GenerateError::Download {
                model: model.to_string(),
                tried: manifest_dir.join(model),
                source,
            })
    }
    #[cfg(not(feature = "diffusion"))]
    {
        let _ = hub;
        Ok(false)
    }
}
