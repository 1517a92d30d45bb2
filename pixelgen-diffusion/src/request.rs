//! What a drawing is asked for: the batch's [`Settings`], and each image's [`Request`] with
//! its [`Noise`] and, for img2img and inpainting, its [`InitImage`]. Plain data, below the
//! stages that compute with it (`condition`, `sample`).

use candle_core::{DType, Tensor};
use image::{DynamicImage, GrayImage, RgbImage};

use super::controlnet::ControlUse;
use super::scheduler::Sampler;
use super::{DiffusionError, Tiling};
use crate::Scheduler;

/// Settings shared by every image of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: Scheduler,
    /// img2img's strength in (0, 1]: the sampler runs the last `int(steps × strength)`
    /// steps from the init images noised to that level. 1 for text to image.
    pub strength: f64,
    /// The axes the drawing wraps on, if any.
    pub tiling: Option<Tiling>,
    /// The ControlNets guiding the drawing, in order; each request gives one control
    /// image per ControlNet.
    pub controlnets: Vec<ControlUse>,
}

impl Settings {
    /// The first of `sampler`'s steps this drawing runs (img2img keeps the last
    /// `int(steps × strength)`); an error when that is none.
    pub(crate) fn first_step(&self, sampler: &Sampler) -> Result<usize, DiffusionError> {
        sampler.first_step(self.strength).ok_or_else(|| {
            DiffusionError::Request(format!(
                "strength {} of {} steps runs no step (int(steps × strength) is 0): raise the strength or the steps",
                self.strength, self.steps
            ))
        })
    }

    /// Text-to-image settings: strength 1, no tiling.
    pub fn new(
        width: usize,
        height: usize,
        steps: usize,
        guidance: f64,
        scheduler: Scheduler,
    ) -> Self {
        Self {
            width,
            height,
            steps,
            guidance,
            scheduler,
            strength: 1.0,
            tiling: None,
            controlnets: Vec::new(),
        }
    }
}

/// Where an image's noise comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Noise {
    /// pixelgen's seeded generator: initial latents and every ancestral step.
    Seed(u64),
    /// Given initial latents (unit variance, `channels × h × w` values), and optionally
    /// the noise of each ancestral step; missing step noise comes from `seed`.
    Given {
        latents: Vec<f32>,
        steps: Option<Vec<Vec<f32>>>,
        seed: u64,
    },
}

impl Noise {
    /// Reads `--init-latents FILE`: a safetensors file whose tensor `latents`
    /// (1 × channels × h × w) is the initial noise, and whose optional tensor `noise`
    /// (steps × 1 × channels × h × w) is each ancestral step's noise. Ancestral steps
    /// without given noise draw it from `seed`.
    pub fn from_file(path: &std::path::Path, seed: u64) -> Result<Self, DiffusionError> {
        let invalid = |message: String| DiffusionError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let tensors = super::model::read_safetensors(path)?;
        let latents = tensors.get("latents").ok_or_else(|| {
            invalid("no tensor named `latents` (1 × channels × height/8 × width/8, f32)".into())
        })?;
        let dims = latents.dims();
        if dims.len() != 4 || dims[0] != 1 {
            return Err(invalid(format!(
                "`latents` has shape {dims:?}; expected 1 × channels × h × w"
            )));
        }
        let values = |t: &Tensor| -> Result<Vec<f32>, DiffusionError> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| invalid(e.to_string()))
        };
        let steps = match tensors.get("noise") {
            None => None,
            Some(noise) => {
                let steps = noise.dim(0).map_err(|e| invalid(e.to_string()))?;
                if noise.elem_count() != steps * latents.elem_count() {
                    return Err(invalid(format!(
                        "`noise` has shape {:?}; expected steps × {:?}",
                        noise.dims(),
                        dims
                    )));
                }
                Some(
                    (0..steps)
                        .map(|i| {
                            noise
                                .get(i)
                                .map_err(|e| invalid(e.to_string()))
                                .and_then(|t| values(&t))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        Ok(Noise::Given {
            latents: values(latents)?,
            steps,
            seed,
        })
    }
}

/// One image to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: String,
    /// `None` differs from `Some("")` only for SDXL models, which then condition on zeros.
    pub negative_prompt: Option<String>,
    pub noise: Noise,
    /// The image to draw from (img2img, inpainting), if any.
    pub init: Option<InitImage>,
    /// One control image per ControlNet of the settings, as large as the drawing.
    pub control_images: Vec<RgbImage>,
}

/// The image a drawing starts from, and optionally which part of it to repaint.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// The picture, as large as the drawing.
    pub image: RgbImage,
    /// White (≥ 50 % grey) where the drawing repaints; as large as the drawing.
    pub mask: Option<GrayImage>,
}

impl InitImage {
    /// From decoded files, as diffusers' image processors take PIL images: the image as
    /// RGB (alpha dropped, like `convert("RGB")`), the mask as grey by PIL's `convert("L")`
    /// (ITU-R 601-2 luma in its fixed-point form), so a coloured mask binarises the same.
    pub fn from_images(image: &DynamicImage, mask: Option<&DynamicImage>) -> Self {
        Self {
            image: image.to_rgb8(),
            mask: mask.map(pil_luma),
        }
    }
}

/// PIL's `convert("L")`: `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`.
fn pil_luma(image: &DynamicImage) -> GrayImage {
    if let DynamicImage::ImageLuma8(grey) = image {
        return grey.clone();
    }
    let rgb = image.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coloured_mask_turns_grey_as_pil_does() {
        let rgb = RgbImage::from_fn(3, 1, |x, _| {
            image::Rgb([[255, 0, 0], [0, 255, 0], [10, 20, 250]][x as usize])
        });
        let grey = pil_luma(&DynamicImage::ImageRgb8(rgb));
        // Pillow 13: Image.new("RGB", …).convert("L") gives 76, 150 and 43 for these.
        assert_eq!(grey.as_raw(), &vec![76, 150, 43]);
    }
}
