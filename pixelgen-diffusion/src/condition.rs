//! Drawing from an image: img2img and inpainting, as diffusers'
//! `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline` (and their SDXL
//! twins) compute them, so the same weights, images and noise give the same pixels.
//!
//! - **img2img**: the init image is encoded to its latent distribution's *mean* (never a
//!   sample, so the same inputs give the same pixels), scaled, and noised to the level of
//!   the first kept step; the sampler runs the last `int(steps × strength)` steps.
//! - **inpainting**: the mask (white = repaint) is binarised at 0.5 and taken to the
//!   latent grid by nearest neighbour. A 4-channel UNet gets the known latents, re-noised
//!   to the next step's level, blended back after every step; a 9-channel inpainting UNet
//!   gets the mask and the masked image's latents beside the latents at every step.
//!   At strength 1 the drawing starts from pure noise. The output is the decoded image;
//!   unmasked pixels are not pasted back.
//!
//! Invariants: every row of a batch starts at the same step (the strength is the batch's);
//! below strength 1 every row needs an init image; a row without a mask is repainted
//! everywhere (its mask is all ones), so rows with and without masks share a batch.

use candle_core::{DType, Tensor};
use image::{GrayImage, RgbImage};

use super::DiffusionError;
use super::compute;
use super::model::LoadedModel;
use super::request::{Request, Settings};
use super::scheduler::Sampler;

/// How a batch begins: at which sampler step, from which latents, and what each step
/// adds for inpainting.
pub(crate) struct Start {
    /// The index of the sampler's first step that runs.
    pub first: usize,
    /// The initial latents of the batch (f32).
    pub latents: Tensor,
    pub inpaint: Option<Inpaint>,
}

/// What inpainting adds to each step.
pub(crate) struct Inpaint {
    /// `[batch, 1, h, w]` on the latent grid: 1 where the drawing repaints.
    mask: Tensor,
    kind: InpaintKind,
}

enum InpaintKind {
    /// A 4-channel UNet: after each step, the known latents (noised to the next step's
    /// level with the batch's own noise) replace the latents outside the mask.
    Blend { known: Tensor, noise: Tensor },
    /// A 9-channel inpainting UNet: `[latents, mask, masked image latents]` is its input.
    Channels { masked: Tensor },
}

impl Inpaint {
    /// The UNet's input for `scaled` (the scaled model input, guidance-doubled when
    /// `guided`): unchanged for a 4-channel UNet, with mask and masked latents appended
    /// for a 9-channel one.
    pub fn unet_input(&self, scaled: &Tensor, guided: bool) -> candle_core::Result<Tensor> {
        let InpaintKind::Channels { masked } = &self.kind else {
            return Ok(scaled.clone());
        };
        let doubled = |t: &Tensor| {
            if guided {
                Tensor::cat(&[t, t], 0)
            } else {
                Ok(t.clone())
            }
        };
        let dtype = scaled.dtype();
        Tensor::cat(
            &[
                scaled.clone(),
                doubled(&self.mask)?.to_dtype(dtype)?,
                doubled(masked)?.to_dtype(dtype)?,
            ],
            1,
        )
    }

    /// After step `index`: for a 4-channel UNet, the known latents (noised to the level
    /// of step `index + 1`, or clean after the last step) outside the mask.
    pub fn after_step(
        &self,
        latents: Tensor,
        sampler: &Sampler,
        index: usize,
    ) -> Result<Tensor, DiffusionError> {
        let InpaintKind::Blend { known, noise } = &self.kind else {
            return Ok(latents);
        };
        let run = || -> candle_core::Result<Tensor> {
            let known = if index + 1 < sampler.timesteps().len() {
                sampler.add_noise(known, noise, index + 1)?
            } else {
                known.clone()
            };
            let keep = self.mask.affine(-1.0, 1.0)?;
            known.broadcast_mul(&keep)? + latents.broadcast_mul(&self.mask)?
        };
        run().map_err(compute("inpainting"))
    }
}

/// `[3, h, w]` in [-1, 1], as diffusers' image processor normalises (`x / 255 · 2 − 1`),
/// times `keep` per pixel when given.
fn image_values(image: &RgbImage, keep: Option<&[f32]>) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut values = vec![0f32; 3 * w * h];
    for (i, pixel) in image.pixels().enumerate() {
        let factor = keep.map_or(1.0, |k| k[i]);
        for c in 0..3 {
            values[c * w * h + i] = (f32::from(pixel[c]) / 255.0 * 2.0 - 1.0) * factor;
        }
    }
    values
}

/// The mask binarised at 0.5 (1 = repaint), per pixel, row by row.
fn binarised(mask: &GrayImage) -> Vec<f32> {
    mask.pixels()
        .map(|p| {
            if f32::from(p[0]) / 255.0 < 0.5 {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

/// A full-resolution mask on the latent grid by nearest neighbour (torch's
/// `interpolate(mode="nearest")` takes source pixel `floor(i · factor)`).
fn on_latent_grid(mask: &[f32], width: usize, factor: usize, grid: (usize, usize)) -> Vec<f32> {
    let (h, w) = grid;
    (0..h * w)
        .map(|i| mask[(i / w) * factor * width + (i % w) * factor])
        .collect()
}

impl LoadedModel {
    /// Whether the UNet is an inpainting one (latents, mask and masked-image latents in).
    pub fn is_inpainting(&self) -> bool {
        self.unet.shape().in_channels == 2 * self.latent_channels() + 1
    }

    /// Checks the requests' images against the settings before any work.
    pub(crate) fn check_images(
        &self,
        settings: &Settings,
        requests: &[Request],
    ) -> Result<(), DiffusionError> {
        let size = (settings.width as u32, settings.height as u32);
        for (i, request) in requests.iter().enumerate() {
            let Some(init) = &request.init else {
                if settings.strength < 1.0 {
                    return Err(DiffusionError::Request(format!(
                        "image {i} has no init image, but a strength below 1 ({}) draws from one",
                        settings.strength
                    )));
                }
                continue;
            };
            if init.image.dimensions() != size {
                return Err(DiffusionError::Request(format!(
                    "the init image is {}×{}, the drawing {}×{}: they must be the same size",
                    init.image.width(),
                    init.image.height(),
                    size.0,
                    size.1
                )));
            }
            if let Some(mask) = &init.mask
                && mask.dimensions() != size
            {
                return Err(DiffusionError::Request(format!(
                    "the mask is {}×{}, the drawing {}×{}: they must be the same size",
                    mask.width(),
                    mask.height(),
                    size.0,
                    size.1
                )));
            }
        }
        let needs_encoder = self.is_inpainting() || requests.iter().any(|r| r.init.is_some());
        if needs_encoder && self.vae_encoder.is_none() {
            return Err(DiffusionError::Request(
                "drawing from an image needs the VAE's encoder, and this model's VAE weights have none".into(),
            ));
        }
        Ok(())
    }

    /// Encodes `[batch, 3, h, w]` images in [-1, 1] to their latents' mean, scaled for
    /// the UNet.
    fn encode_images(
        &self,
        images: Vec<f32>,
        batch: usize,
        settings: &Settings,
    ) -> Result<Tensor, DiffusionError> {
        let encoder = self
            .vae_encoder
            .as_ref()
            .ok_or_else(|| DiffusionError::Request("this model's VAE has no encoder".into()))?;
        let run = || -> candle_core::Result<Tensor> {
            let images = Tensor::from_vec(
                images,
                (batch, 3, settings.height, settings.width),
                &self.device,
            )?
            .to_dtype(self.vae_dtype)?;
            encoder
                .encode(&images)?
                .mean
                .to_dtype(DType::F32)?
                .affine(self.vae_config.scaling_factor, 0.0)
        };
        run().map_err(compute("vae encoder"))
    }

    /// Where the batch starts: the sampler's first step, the initial latents from `noise`
    /// (`[batch, c, h, w]`, unit variance), and inpainting's inputs.
    pub(crate) fn start(
        &self,
        settings: &Settings,
        requests: &[Request],
        sampler: &Sampler,
        noise: Tensor,
    ) -> Result<Start, DiffusionError> {
        let first = settings.first_step(sampler)?;
        let pure_noise = || {
            noise
                .affine(sampler.init_noise_sigma(), 0.0)
                .map_err(compute("noise"))
        };
        let has_init = requests.iter().any(|r| r.init.is_some());
        if !has_init && !self.is_inpainting() {
            return Ok(Start {
                first,
                latents: pure_noise()?,
                inpaint: None,
            });
        }
        let factor = self.latent_factor();
        let grid = (settings.height / factor, settings.width / factor);
        let pixels = settings.width * settings.height;
        let batch = requests.len();
        let masks: Vec<Option<Vec<f32>>> = requests
            .iter()
            .map(|r| r.init.as_ref().and_then(|i| i.mask.as_ref()).map(binarised))
            .collect();
        let any_mask = masks.iter().any(Option::is_some);
        let latent_mask = || -> Result<Tensor, DiffusionError> {
            let values: Vec<f32> = masks
                .iter()
                .flat_map(|m| match m {
                    Some(m) => on_latent_grid(m, settings.width, factor, grid),
                    None => vec![1.0; grid.0 * grid.1],
                })
                .collect();
            Tensor::from_vec(values, (batch, 1, grid.0, grid.1), &self.device)
                .map_err(compute("inpainting"))
        };
        // The init images' latents (a row without an image gets a black one's, which
        // neither img2img nor a mask of ones ever uses).
        let known = if has_init {
            let images: Vec<f32> = requests
                .iter()
                .flat_map(|r| match &r.init {
                    Some(init) => image_values(&init.image, None),
                    None => vec![0.0; 3 * pixels],
                })
                .collect();
            Some(self.encode_images(images, batch, settings)?)
        } else {
            None
        };
        // Each row: noised init latents (img2img, or inpainting below strength 1), or
        // pure noise (no image, or inpainting at strength 1).
        let latents = match &known {
            None => pure_noise()?,
            Some(known) => {
                let noised = sampler
                    .add_noise(known, &noise, first)
                    .map_err(compute("noise"))?;
                let pure = pure_noise()?;
                let rows = requests
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let from_image = r
                            .init
                            .as_ref()
                            .is_some_and(|init| init.mask.is_none() || settings.strength < 1.0);
                        if from_image {
                            noised.get(i)
                        } else {
                            pure.get(i)
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(compute("noise"))?;
                Tensor::stack(&rows, 0).map_err(compute("noise"))?
            }
        };
        let inpaint = if self.is_inpainting() {
            let images: Vec<f32> = requests
                .iter()
                .zip(&masks)
                .flat_map(|(r, mask)| {
                    let keep: Vec<f32> = match mask {
                        Some(m) => m.iter().map(|v| 1.0 - v).collect(),
                        None => vec![0.0; pixels],
                    };
                    match &r.init {
                        Some(init) => image_values(&init.image, Some(&keep)),
                        None => vec![0.0; 3 * pixels],
                    }
                })
                .collect();
            Some(Inpaint {
                mask: latent_mask()?,
                kind: InpaintKind::Channels {
                    masked: self.encode_images(images, batch, settings)?,
                },
            })
        } else if any_mask {
            let known = known
                .ok_or_else(|| DiffusionError::Request("a mask needs an init image".into()))?;
            Some(Inpaint {
                mask: latent_mask()?,
                kind: InpaintKind::Blend { known, noise },
            })
        } else {
            None
        };
        Ok(Start {
            first,
            latents,
            inpaint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_binarised_at_half_and_sampled_at_each_cells_top_left_pixel() {
        let mut mask = GrayImage::new(16, 8);
        mask.put_pixel(0, 0, image::Luma([128])); // 0.502: repaint
        mask.put_pixel(8, 0, image::Luma([127])); // 0.498: keep
        mask.put_pixel(9, 1, image::Luma([255])); // not a cell's top-left pixel
        let full = binarised(&mask);
        assert_eq!(full[0], 1.0);
        assert_eq!(full[8], 0.0);
        assert_eq!(on_latent_grid(&full, 16, 8, (1, 2)), vec![1.0, 0.0]);
    }

    #[test]
    fn pixels_are_normalised_as_diffusers_does() {
        let image = RgbImage::from_pixel(1, 1, image::Rgb([0, 255, 51]));
        assert_eq!(
            image_values(&image, None),
            vec![-1.0, 1.0, 51.0 / 255.0 * 2.0 - 1.0]
        );
        assert_eq!(image_values(&image, Some(&[0.0])), vec![-0.0, 0.0, 0.0]);
    }
}
