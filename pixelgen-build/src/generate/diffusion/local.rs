//! Stable Diffusion in this process: a Diffusion group's settings and LoRAs turned into
//! the `pixelgen-diffusion` crate's (candle) settings and requests, with the device, lock
//! folder and hub cache the [`Environment`] gives, and its images into frames.
//!
//! The crate's modules are re-exported (from [`super`]) as they were before they moved
//! into their own crate, so `pixelgen_build::generate::diffusion::LoadedModel` keeps
//! working.

use std::path::Path;

use image::RgbaImage;

pub use pixelgen_diffusion::{
    ControlNet, ControlUse, DeviceLock, DiffusionError, InitImage, LoadedModel, LoraFile,
    ModelLocation, Noise, Phase, PhaseTimes, Request, Settings, TrainingBase, batch_for,
    candle_core, clip, config, controlnet, cpu_ops, download, ldm, locate, lora, model, noise,
    prepare_control_image, request_for, sample, scheduler, settings_for, sgm, tokenizer, train,
    unet, vae,
};

use super::DiffusionSpec;
use crate::environment::{DeviceRequest, Environment};
use crate::generate::batched::Generator;
use crate::generate::{Frame, GenerateError, ResolvedLora, frame_seed};
use crate::identity::SpriteName;
use crate::timings::Timings;

use candle_core::{DType, Device};

/// The device and precision `request` (the environment's `PIXELGEN_DEVICE` and
/// `PIXELGEN_DTYPE`) asks for, with a note for the user when there is one.
pub fn select_device_for(
    request: &DeviceRequest,
) -> Result<(Device, DType, Option<String>), DiffusionError> {
    pixelgen_diffusion::select_device(&request.device, request.dtype.as_deref())
}

/// The backend for sprites whose generator is `Diffusion`: one model with one set of LoRAs,
/// loaded once and used for every job given to it.
pub struct Diffusion {
    model: LoadedModel,
    _lock: DeviceLock,
    settings: Settings,
    /// How many images go through the UNet together.
    batch: usize,
    note: Option<String>,
}

impl Diffusion {
    /// Loads the model of `spec` with `loras` for `sprite`'s group; a relative model path
    /// is taken from `manifest_dir`.
    pub fn load(
        spec: &DiffusionSpec,
        sprite: &SpriteName,
        loras: &[ResolvedLora],
        manifest_dir: &Path,
        environment: &Environment,
    ) -> Result<Self, GenerateError> {
        let failed = |source: DiffusionError| GenerateError::Diffusion {
            sprite: sprite.clone(),
            source,
        };
        let DiffusionSpec {
            model,
            steps,
            guidance,
            scheduler,
            resolution,
        } = spec;
        let request = &environment.device;
        let hub_cache = environment.hub.cache_dir.as_deref();
        let (device, dtype, note) = select_device_for(request).map_err(failed)?;
        let location = locate(model, manifest_dir, hub_cache).map_err(|e| failed(e.into()))?;
        let lock = DeviceLock::acquire(&environment.lock_dir).map_err(failed)?;
        let loaded = LoadedModel::load(&location, &lora_files(loras), &device, dtype, hub_cache)
            .map_err(failed)?;
        let settings =
            settings_for(&loaded, *resolution, *steps, *guidance, *scheduler).map_err(failed)?;
        let batch = batch_for(&device, request.batch);
        Ok(Self {
            model: loaded,
            _lock: lock,
            settings,
            batch,
            note,
        })
    }
}

/// A sprite's LoRAs as the loader takes them (resolved paths, weights in order).
pub fn lora_files(loras: &[ResolvedLora]) -> Vec<LoraFile> {
    loras
        .iter()
        .map(|l| LoraFile {
            path: l.file.clone(),
            weight: f64::from(l.weight),
        })
        .collect()
}

impl Generator for Diffusion {
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError> {
        let mut images = Vec::with_capacity(frames.len());
        for chunk in frames.chunks(self.batch) {
            let requests: Vec<Request> = chunk
                .iter()
                .map(|frame| {
                    request_for(
                        frame.prompt,
                        frame.negative_prompt,
                        frame_seed(frame.seed, frame.frame),
                    )
                })
                .collect();
            let drawn = self
                .model
                .generate_timed(&self.settings, &requests, timings)
                .map_err(|source| GenerateError::Diffusion {
                    sprite: chunk[0].sprite.clone(),
                    source,
                })?;
            images.extend(
                drawn
                    .into_iter()
                    .map(|rgb| image::DynamicImage::ImageRgb8(rgb).into_rgba8()),
            );
        }
        Ok(images)
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_consecutive_seeds() {
        assert_eq!(frame_seed(42, 0), 42);
        assert_eq!(frame_seed(42, 3), 45);
        assert_eq!(frame_seed(u64::MAX, 1), 0);
    }
}
