//! Text to image: encode the prompts, denoise from seeded noise with classifier-free
//! guidance, decode with the VAE. Follows diffusers' `StableDiffusionPipeline` and
//! `StableDiffusionXLPipeline` step by step so that the same weights and noise give the
//! same pixels.

use std::time::Instant;

use candle_core::{D, DType, Tensor};
use image::RgbImage;

use super::controlnet::control_values;
use super::model::LoadedModel;
use super::noise::{self, Stream};
use super::request::{Noise, Request, Settings};
use super::scheduler::Sampler;
use super::unet::AddedConditioning;
use super::unet::{ControlResiduals, Guides};
use super::{DiffusionError, Tiling, compute};

/// A part of sampling whose time [`LoadedModel::generate_timed`] reports. Each ends by
/// waiting for the device, so a GPU's queued work counts in the phase that queued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Tokenizing and encoding the prompts (once per batch).
    TextEncode,
    /// One denoising step: the UNet, guidance and the sampler's update.
    UnetStep,
    /// Decoding the latents to pixels and copying them to the host.
    VaeDecode,
}

/// Where [`LoadedModel::generate_timed`] reports the time of each [`Phase`]; `()` drops them.
pub trait PhaseTimes {
    fn record(&mut self, phase: Phase, took: std::time::Duration);
}

impl PhaseTimes for () {
    fn record(&mut self, _: Phase, _: std::time::Duration) {}
}

/// What the UNet is conditioned on, for the whole (guidance-doubled) batch.
pub(crate) struct Conditioning {
    pub context: Tensor,
    pub added: Option<AddedConditioning>,
}

impl LoadedModel {
    /// Checks settings against the model before any work.
    pub fn check(&self, settings: &Settings) -> Result<(), DiffusionError> {
        let factor = self.latent_factor();
        if settings.width == 0
            || settings.height == 0
            || !settings.width.is_multiple_of(factor)
            || !settings.height.is_multiple_of(factor)
        {
            return Err(DiffusionError::Request(format!(
                "{}×{} is not a multiple of {factor}, the size of one latent cell of this model",
                settings.width, settings.height
            )));
        }
        let sampler = Sampler::new(&self.scheduler, settings.scheduler, settings.steps)
            .map_err(DiffusionError::Request)?;
        if !(settings.strength > 0.0 && settings.strength <= 1.0) {
            return Err(DiffusionError::Request(format!(
                "strength {} is outside (0, 1]",
                settings.strength
            )));
        }
        for control in &settings.controlnets {
            control.model.fits(self.unet.shape())?;
            if !(0.0..=1.0).contains(&control.start)
                || !(control.start..=1.0).contains(&control.end)
            {
                return Err(DiffusionError::Request(format!(
                    "the ControlNet at {} guides from {} to {} of the steps: start and end must satisfy 0 ≤ start ≤ end ≤ 1",
                    control.model.path().display(),
                    control.start,
                    control.end
                )));
            }
        }
        settings.first_step(&sampler)?;
        Ok(())
    }

    /// Draws one image per request, in order.
    pub fn generate(
        &self,
        settings: &Settings,
        requests: &[Request],
    ) -> Result<Vec<RgbImage>, DiffusionError> {
        self.generate_timed(settings, requests, &mut ())
    }

    /// [`generate`](Self::generate), adding the time of text encoding, each UNet step
    /// and the VAE decode to `timings`. Each stage ends by waiting for the device, so a
    /// GPU's queued work is counted in the stage that queued it.
    pub fn generate_timed(
        &self,
        settings: &Settings,
        requests: &[Request],
        timings: &mut dyn PhaseTimes,
    ) -> Result<Vec<RgbImage>, DiffusionError> {
        self.check(settings)?;
        self.check_images(settings, requests)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let guided = settings.guidance > 1.0;
        let start = Instant::now();
        let conditioning = self.encode(requests, guided, settings)?;
        self.synchronize()?;
        timings.record(Phase::TextEncode, start.elapsed());
        let latents = self.denoise(settings, requests, &conditioning, timings)?;
        let start = Instant::now();
        // `decode` ends by copying the pixels to the host, which waits for the device.
        let images = self.decode(&latents, settings.tiling)?;
        timings.record(Phase::VaeDecode, start.elapsed());
        Ok(images)
    }

    /// Waits for the device's queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<(), DiffusionError> {
        self.device.synchronize().map_err(compute("device"))
    }

    fn encode_ids(
        &self,
        ids: &[Vec<u32>],
        second: bool,
    ) -> Result<super::clip::ClipOutput, DiffusionError> {
        let encoder = if second {
            self.text_encoder_2.as_ref()
        } else {
            Some(&self.text_encoder)
        };
        let encoder = encoder.ok_or_else(|| {
            DiffusionError::Request("the model has no second text encoder".into())
        })?;
        encoder
            .forward(ids, &self.device)
            .map_err(compute("text encoder"))
    }

    fn tokenize(&self, texts: &[&str], second: bool) -> Result<Vec<Vec<u32>>, DiffusionError> {
        let tokenizer = if second {
            self.tokenizer_2.as_ref()
        } else {
            Some(&self.tokenizer)
        };
        let tokenizer = tokenizer
            .ok_or_else(|| DiffusionError::Request("the model has no second tokenizer".into()))?;
        texts
            .iter()
            .map(|t| tokenizer.encode(t).map_err(DiffusionError::Request))
            .collect()
    }

    /// Token ids of `text` for the first (or second) tokenizer: for checks against diffusers.
    pub fn token_ids(&self, text: &str, second: bool) -> Result<Vec<u32>, DiffusionError> {
        Ok(self.tokenize(&[text], second)?.remove(0))
    }

    /// Prompt embeddings: `[negatives…, positives…]` when guided, else the positives.
    pub(crate) fn encode(
        &self,
        requests: &[Request],
        guided: bool,
        settings: &Settings,
    ) -> Result<Conditioning, DiffusionError> {
        let prompts: Vec<&str> = requests.iter().map(|r| r.prompt.as_str()).collect();
        let negatives: Vec<&str> = requests
            .iter()
            .map(|r| r.negative_prompt.as_deref().unwrap_or(""))
            .collect();
        // SDXL pipelines condition on zeros, not on "", when no negative prompt is given.
        let zero_negative: Vec<bool> = requests
            .iter()
            .map(|r| {
                r.negative_prompt.is_none()
                    && self.index.force_zeros_for_empty_prompt.unwrap_or(false)
            })
            .collect();
        let dtype = self.dtype;

        if self.text_encoder_2.is_none() {
            let texts: Vec<&str> = if guided {
                negatives.iter().chain(&prompts).copied().collect()
            } else {
                prompts
            };
            let out = self.encode_ids(&self.tokenize(&texts, false)?, false)?;
            return Ok(Conditioning {
                context: out
                    .last_hidden_state
                    .to_dtype(dtype)
                    .map_err(compute("text encoder"))?,
                added: None,
            });
        }

        let encode_both = |texts: &[&str]| -> Result<(Tensor, Tensor), DiffusionError> {
            let first = self.encode_ids(&self.tokenize(texts, false)?, false)?;
            let second = self.encode_ids(&self.tokenize(texts, true)?, true)?;
            let context = Tensor::cat(
                &[
                    &first.penultimate_hidden_state,
                    &second.penultimate_hidden_state,
                ],
                D::Minus1,
            )
            .map_err(compute("text encoder"))?;
            Ok((context, second.pooled))
        };
        let (mut context, mut pooled) = encode_both(&prompts)?;
        if guided {
            let (negative_context, negative_pooled) = encode_both(&negatives)?;
            let zeroed = |t: &Tensor, i: usize| -> candle_core::Result<Tensor> {
                let row = t.get(i)?;
                if zero_negative[i] {
                    row.zeros_like()
                } else {
                    Ok(row)
                }
            };
            let rows = |t: &Tensor| -> candle_core::Result<Tensor> {
                Tensor::stack(
                    &(0..requests.len())
                        .map(|i| zeroed(t, i))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    0,
                )
            };
            context = Tensor::cat(
                &[
                    &rows(&negative_context).map_err(compute("text encoder"))?,
                    &context,
                ],
                0,
            )
            .map_err(compute("text encoder"))?;
            pooled = Tensor::cat(
                &[
                    &rows(&negative_pooled).map_err(compute("text encoder"))?,
                    &pooled,
                ],
                0,
            )
            .map_err(compute("text encoder"))?;
        }
        let batch = context.dim(0).map_err(compute("text encoder"))?;
        let (h, w) = (settings.height as f32, settings.width as f32);
        // original size, crop top-left, target size (diffusers' defaults: no crop, same size).
        let ids: Vec<f32> = (0..batch).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
        let time_ids =
            Tensor::from_vec(ids, (batch, 6), &self.device).map_err(compute("text encoder"))?;
        Ok(Conditioning {
            context: context.to_dtype(dtype).map_err(compute("text encoder"))?,
            added: Some(AddedConditioning {
                text_embeds: pooled.to_dtype(dtype).map_err(compute("text encoder"))?,
                time_ids,
            }),
        })
    }

    fn noise_tensor(
        &self,
        values: Vec<Vec<f32>>,
        shape: (usize, usize, usize),
    ) -> Result<Tensor, DiffusionError> {
        let n = values.len();
        let flat: Vec<f32> = values.into_iter().flatten().collect();
        Tensor::from_vec(flat, (n, shape.0, shape.1, shape.2), &self.device)
            .map_err(compute("noise"))
    }

    /// Runs the sampler; each step (UNet, guidance and sampler update, waited for on the
    /// device) is one [`Phase::UnetStep`].
    pub(crate) fn denoise(
        &self,
        settings: &Settings,
        requests: &[Request],
        conditioning: &Conditioning,
        timings: &mut dyn PhaseTimes,
    ) -> Result<Tensor, DiffusionError> {
        let sampler = Sampler::new(&self.scheduler, settings.scheduler, settings.steps)
            .map_err(DiffusionError::Request)?;
        let factor = self.latent_factor();
        let shape = (
            self.latent_channels(),
            settings.height / factor,
            settings.width / factor,
        );
        let count = shape.0 * shape.1 * shape.2;
        let initial = requests
            .iter()
            .map(|r| match &r.noise {
                Noise::Seed(seed) => Ok(noise::gaussian(*seed, Stream::InitialLatents, count)),
                Noise::Given { latents, .. } if latents.len() == count => Ok(latents.clone()),
                Noise::Given { latents, .. } => Err(DiffusionError::Request(format!(
                    "the initial latents have {} values, this model and size need {} ({}×{}×{})",
                    latents.len(),
                    count,
                    shape.0,
                    shape.1,
                    shape.2
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let noise = self.noise_tensor(initial, shape)?;
        let start = self.start(settings, requests, &sampler, noise)?;
        let mut latents = start.latents;
        let guided = settings.guidance > 1.0;
        let control_images = self.control_images(settings, requests, guided)?;
        let steps_run = sampler.timesteps().len() - start.first;
        let timesteps = sampler.timesteps().iter().enumerate().skip(start.first);
        for (step_number, (index, &timestep)) in timesteps.enumerate() {
            let began = Instant::now();
            let step = || -> candle_core::Result<Tensor> {
                let input = if guided {
                    Tensor::cat(&[&latents, &latents], 0)?
                } else {
                    latents.clone()
                };
                let scaled = sampler.scale_model_input(&input, index)?;
                let mut control: Option<ControlResiduals> = None;
                for (use_, image) in settings.controlnets.iter().zip(&control_images) {
                    if !use_.guides(step_number, steps_run) {
                        continue;
                    }
                    let residuals = use_.model.residuals(
                        &scaled,
                        timestep,
                        &conditioning.context,
                        conditioning.added.as_ref(),
                        image,
                        use_.scale,
                        settings.tiling,
                    )?;
                    control = Some(match control {
                        None => residuals,
                        Some(sum) => sum.add(&residuals)?,
                    });
                }
                let guides = Guides {
                    tiling: settings.tiling,
                    control,
                };
                let input = match &start.inpaint {
                    Some(inpaint) => inpaint.unet_input(&scaled, guided)?,
                    None => scaled,
                }
                .to_dtype(self.dtype)?;
                let output = self
                    .unet
                    .forward_guided(
                        &input,
                        timestep,
                        &conditioning.context,
                        conditioning.added.as_ref(),
                        &guides,
                    )?
                    .to_dtype(DType::F32)?;
                if guided {
                    let halves = output.chunk(2, 0)?;
                    let (unconditional, text) = (&halves[0], &halves[1]);
                    unconditional + ((text - unconditional)? * settings.guidance)?
                } else {
                    Ok(output)
                }
            };
            let guided_output = step().map_err(compute("unet"))?;
            let step_noise = if sampler.needs_noise() {
                let values = requests
                    .iter()
                    .map(|r| match &r.noise {
                        Noise::Given {
                            steps: Some(steps), ..
                        } if step_number < steps.len() && steps[step_number].len() == count => {
                            Ok(steps[step_number].clone())
                        }
                        Noise::Given {
                            steps: Some(steps), ..
                        } if step_number < steps.len() => Err(DiffusionError::Request(format!(
                            "step noise {step_number} has {} values, {count} are needed",
                            steps[step_number].len()
                        ))),
                        Noise::Seed(seed) | Noise::Given { seed, .. } => Ok(noise::gaussian(
                            *seed,
                            Stream::AncestralStep(step_number),
                            count,
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(self.noise_tensor(values, shape)?)
            } else {
                None
            };
            latents = sampler
                .step(&guided_output, index, &latents, step_noise.as_ref())
                .map_err(compute("sampler"))?;
            if let Some(inpaint) = &start.inpaint {
                latents = inpaint.after_step(latents, &sampler, index)?;
            }
            self.synchronize()?;
            timings.record(Phase::UnetStep, began.elapsed());
        }
        Ok(latents)
    }

    /// Each ControlNet's control images for the batch, `[batch, 3, h, w]` in [0, 1]
    /// (doubled for guidance, as the pipelines do).
    fn control_images(
        &self,
        settings: &Settings,
        requests: &[Request],
        guided: bool,
    ) -> Result<Vec<Tensor>, DiffusionError> {
        let size = (settings.width as u32, settings.height as u32);
        (0..settings.controlnets.len())
            .map(|n| {
                let mut values = Vec::new();
                for request in requests {
                    let image = request.control_images.get(n).ok_or_else(|| {
                        DiffusionError::Request(format!(
                            "{} ControlNets guide the drawing, and a request gives {} control images: give one per ControlNet",
                            settings.controlnets.len(),
                            request.control_images.len()
                        ))
                    })?;
                    if image.dimensions() != size {
                        return Err(DiffusionError::Request(format!(
                            "control image {} is {}×{}, the drawing {}×{}: resize it first (`prepare_control_image`)",
                            n + 1,
                            image.width(),
                            image.height(),
                            size.0,
                            size.1
                        )));
                    }
                    values.extend(control_values(image));
                }
                let batch = requests.len();
                let images = Tensor::from_vec(
                    values,
                    (batch, 3, settings.height, settings.width),
                    &self.device,
                )
                .map_err(compute("controlnet"))?;
                if guided {
                    Tensor::cat(&[&images, &images], 0).map_err(compute("controlnet"))
                } else {
                    Ok(images)
                }
            })
            .collect()
    }

    /// Latents to RGB images, as diffusers' `output_type="pil"` rounds them.
    pub(crate) fn decode(
        &self,
        latents: &Tensor,
        tiling: Option<Tiling>,
    ) -> Result<Vec<RgbImage>, DiffusionError> {
        let run = || -> candle_core::Result<Tensor> {
            let scaled = latents
                .to_dtype(self.vae_dtype)?
                .affine(1.0 / self.vae_config.scaling_factor, 0.0)?;
            let image = self
                .vae
                .decode_tiled(&scaled, tiling)?
                .to_dtype(DType::F32)?;
            let image = image.affine(0.5, 0.5)?.clamp(0.0, 1.0)?;
            (image * 255.0)?
                .round()?
                .clamp(0.0, 255.0)?
                .to_dtype(DType::U8)?
                .to_device(&candle_core::Device::Cpu)
        };
        let pixels = run().map_err(compute("vae"))?;
        let (batch, _, height, width) = pixels.dims4().map_err(compute("vae"))?;
        (0..batch)
            .map(|i| {
                let hwc = pixels
                    .get(i)
                    .and_then(|t| t.permute((1, 2, 0)))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<u8>())
                    .map_err(compute("vae"))?;
                RgbImage::from_raw(width as u32, height as u32, hwc).ok_or_else(|| {
                    DiffusionError::Compute {
                        what: "vae",
                        source: Box::new(candle_core::Error::Msg("image size mismatch".into())),
                    }
                })
            })
            .collect()
    }
}

/// The sampling settings of a sprite's generator on `loaded` (its training size when the
/// sprite gives no resolution), checked against the model.
pub fn settings_for(
    loaded: &LoadedModel,
    resolution: Option<(u32, u32)>,
    steps: u32,
    guidance: f32,
    scheduler: crate::Scheduler,
) -> Result<Settings, DiffusionError> {
    let default = loaded.default_resolution().unwrap_or(512);
    let (width, height) = resolution
        .map(|(w, h)| (w as usize, h as usize))
        .unwrap_or((default, default));
    let settings = Settings::new(
        width,
        height,
        steps as usize,
        f64::from(guidance),
        scheduler,
    );
    loaded.check(&settings)?;
    Ok(settings)
}

/// The sampling request of one frame: frame `frame` of a sprite is drawn from seed
/// `seed + frame`, and an empty negative prompt is no negative prompt.
pub fn request_for(prompt: &str, negative_prompt: &str, seed: u64) -> Request {
    Request {
        prompt: prompt.to_string(),
        negative_prompt: (!negative_prompt.is_empty()).then(|| negative_prompt.to_string()),
        noise: Noise::Seed(seed),
        init: None,
        control_images: Vec::new(),
    }
}
