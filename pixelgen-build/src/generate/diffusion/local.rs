//! Stable Diffusion in this process: a Diffusion group's settings and LoRAs turned into
//! the `pixelgen-diffusion` crate's (candle) settings and requests, with the device, lock
//! folder and hub cache the [`Environment`] gives, and its images into frames.
//!
//! The crate's modules are re-exported (from [`super`]) as they were before they moved
//! into their own crate, so `pixelgen_build::generate::diffusion::LoadedModel` keeps
//! working.

use std::path::Path;

use image::{GenericImageView, RgbaImage};

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
use crate::generate::conditioning::{Conditioning, ControlNetSpec, ImageFile};
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
        conditioning: &Conditioning,
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
        let settings = conditioned(settings, conditioning, &loaded).map_err(failed)?;
        loaded.check(&settings).map_err(failed)?;
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

/// `settings` with the batch-wide part of `conditioning`: the strength, the tiling and
/// the ControlNets (loaded onto the model's device).
pub(crate) fn conditioned(
    settings: Settings,
    conditioning: &Conditioning,
    model: &LoadedModel,
) -> Result<Settings, DiffusionError> {
    conditioned_with(settings, conditioning, |spec| {
        ControlNet::load(&spec.resolved, model.device(), model.dtype()).map(std::sync::Arc::new)
    })
}

/// [`conditioned`] with the ControlNets from `controlnet` (the warm server keeps them).
pub(crate) fn conditioned_with(
    settings: Settings,
    conditioning: &Conditioning,
    mut controlnet: impl FnMut(&ControlNetSpec) -> Result<std::sync::Arc<ControlNet>, DiffusionError>,
) -> Result<Settings, DiffusionError> {
    let controlnets = conditioning
        .controlnets
        .iter()
        .map(|c| {
            Ok(ControlUse {
                model: controlnet(c)?,
                scale: c.scale,
                start: c.start,
                end: c.end,
            })
        })
        .collect::<Result<Vec<_>, DiffusionError>>()?;
    Ok(Settings {
        strength: conditioning.init.as_ref().map_or(1.0, |init| init.strength),
        tiling: conditioning.tiling,
        controlnets,
        ..settings
    })
}

/// Reads a frame's images: the init image (a sprite-sized sketch scaled up to the drawing
/// without smoothing) with its mask, and each control image resized as diffusers does.
pub(crate) fn frame_images(
    conditioning: &Conditioning,
    (width, height): (u32, u32),
) -> Result<(Option<InitImage>, Vec<image::RgbImage>), DiffusionError> {
    let read = |file: &ImageFile| {
        image::open(&file.resolved).map_err(|e| DiffusionError::Invalid {
            path: file.resolved.clone(),
            message: format!("cannot read the image: {e}"),
        })
    };
    let to_drawing = |image: image::DynamicImage| {
        if image.dimensions() == (width, height) {
            image
        } else {
            image.resize_exact(width, height, image::imageops::FilterType::Nearest)
        }
    };
    let init = match &conditioning.init {
        Some(init) => {
            let mask = init.mask.as_ref().map(read).transpose()?.map(to_drawing);
            Some(InitImage::from_images(
                &to_drawing(read(&init.image)?),
                mask.as_ref(),
            ))
        }
        None => None,
    };
    let controls = conditioning
        .controlnets
        .iter()
        .map(|c| {
            Ok(prepare_control_image(
                &read(&c.image)?.to_rgb8(),
                width,
                height,
            ))
        })
        .collect::<Result<Vec<_>, DiffusionError>>()?;
    Ok((init, controls))
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
            let size = (self.settings.width as u32, self.settings.height as u32);
            let requests =
                chunk
                    .iter()
                    .map(|frame| {
                        let (init, control_images) = frame_images(frame.conditioning, size)
                            .map_err(|source| GenerateError::Diffusion {
                                sprite: frame.sprite.clone(),
                                source,
                            })?;
                        Ok(Request {
                            init,
                            control_images,
                            ..request_for(
                                frame.prompt,
                                frame.negative_prompt,
                                frame_seed(frame.seed, frame.frame),
                            )
                        })
                    })
                    .collect::<Result<Vec<Request>, GenerateError>>()?;
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
