//! ControlNet (diffusers' `ControlNetModel`, for SD 1.x, 2.x and XL): a copy of the
//! UNet's down path that also sees a control image (a pose, edges, depth) and adds what
//! it computes to the UNet's skip connections and mid block, so the drawing follows the
//! control image. Loaded from a diffusers-layout folder (`config.json` and
//! `diffusion_pytorch_model.safetensors`), weight names as diffusers saves them.
//!
//! Written here because candle has no ControlNet; diffusers-rs (for tch, by candle's
//! author) has one to learn from. The down path is the UNet's own ([`DownPath`]).
//!
//! Invariants: a ControlNet fits a UNet when their skip connections have the same widths
//! and their text conditioning is the same ([`ControlNet::fits`]); its residuals are
//! scaled by the use's scale and summed over the ControlNets in use; a ControlNet outside
//! its `[start, end]` share of the steps adds nothing (diffusers' `controlnet_keep`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result as CandleResult, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use image::RgbImage;
use serde::Deserialize;

use super::config::UnetConfig;
use super::model::{component_weights, read_json};
use super::seamless::conv2d;
use super::unet::{AddedConditioning, ControlResiduals, DownPath, Levels, UnetShape, conv};
use super::{DiffusionError, Tiling};

/// The fields of a ControlNet's `config.json` beyond the UNet's.
#[derive(Debug, Clone, Deserialize)]
struct ControlConfig {
    #[serde(default = "three")]
    conditioning_channels: usize,
    #[serde(default = "embedding_channels")]
    conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "rgb")]
    controlnet_conditioning_channel_order: String,
    #[serde(default)]
    global_pool_conditions: bool,
}

fn three() -> usize {
    3
}
fn embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn rgb() -> String {
    "rgb".into()
}

/// The small network that takes the control image down to the latent grid
/// (diffusers' `ControlNetConditioningEmbedding`).
#[derive(Debug)]
struct ConditioningEmbedding {
    conv_in: Conv2d,
    /// Pairs of (same-width, stride-2 widening) convolutions.
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, in_c: usize, widths: &[usize], out_c: usize) -> CandleResult<Self> {
        let mut blocks = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            let blocks_vb = vb.pp("blocks");
            blocks.push(conv(blocks_vb.pp(2 * i), pair[0], pair[0], 3, 1, 1)?);
            blocks.push(conv(blocks_vb.pp(2 * i + 1), pair[0], pair[1], 3, 2, 1)?);
        }
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), in_c, widths[0], 3, 1, 1)?,
            blocks,
            conv_out: conv(vb.pp("conv_out"), widths[widths.len() - 1], out_c, 3, 1, 1)?,
        })
    }

    fn forward(&self, image: &Tensor, tiling: Option<Tiling>) -> CandleResult<Tensor> {
        let mut xs = candle_nn::ops::silu(&conv2d(&self.conv_in, image, tiling)?)?;
        for block in &self.blocks {
            xs = candle_nn::ops::silu(&conv2d(block, &xs, tiling)?)?;
        }
        conv2d(&self.conv_out, &xs, tiling)
    }
}

/// A loaded ControlNet.
#[derive(Debug)]
pub struct ControlNet {
    path: PathBuf,
    shape: UnetShape,
    down: DownPath,
    embedding: ConditioningEmbedding,
    /// `controlnet_down_blocks`: one 1×1 convolution per skip connection.
    down_convs: Vec<Conv2d>,
    /// `controlnet_mid_block`.
    mid_conv: Conv2d,
    /// The control image's channels come in BGR order (`controlnet_conditioning_channel_order`).
    bgr: bool,
    /// The width of the image the network expects (3 for RGB).
    image_channels: usize,
}

impl ControlNet {
    /// Loads the diffusers-layout ControlNet in folder `dir` onto `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, DiffusionError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(DiffusionError::Invalid {
                path: dir.to_path_buf(),
                message: "no config.json: a ControlNet is a diffusers-layout folder (config.json and diffusion_pytorch_model.safetensors)".into(),
            });
        }
        let unet: UnetConfig = read_json(&config_path)?;
        let control: ControlConfig = read_json(&config_path)?;
        let invalid = |message: String| DiffusionError::Invalid {
            path: config_path.clone(),
            message,
        };
        if control.global_pool_conditions {
            return Err(invalid(
                "`global_pool_conditions` is set (a shuffle-style ControlNet), which pixelgen does not implement".into(),
            ));
        }
        let bgr = match control.controlnet_conditioning_channel_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => {
                return Err(invalid(format!(
                    "unknown controlnet_conditioning_channel_order `{other}` (rgb or bgr)"
                )));
            }
        };
        if control.conditioning_embedding_out_channels.is_empty() {
            return Err(invalid(
                "conditioning_embedding_out_channels is empty".into(),
            ));
        }
        let weights = component_weights(dir, dtype, device)?;
        let vb = VarBuilder::from_tensors(weights, dtype, device);
        let build = || -> CandleResult<Self> {
            let shape = UnetShape::of_down_path(&unet)?;
            let sizes = Levels::of(&unet, &shape)?;
            let down = DownPath::new(&vb, &unet, &shape, &sizes)?;
            let embedding = ConditioningEmbedding::new(
                vb.pp("controlnet_cond_embedding"),
                control.conditioning_channels,
                &control.conditioning_embedding_out_channels,
                unet.block_out_channels[0],
            )?;
            let down_convs = shape
                .skip_channels()
                .iter()
                .enumerate()
                .map(|(i, &c)| conv(vb.pp("controlnet_down_blocks").pp(i), c, c, 1, 1, 0))
                .collect::<CandleResult<Vec<_>>>()?;
            let mid = shape.block_out_channels[shape.levels - 1];
            Ok(Self {
                path: dir.to_path_buf(),
                down,
                embedding,
                down_convs,
                mid_conv: conv(vb.pp("controlnet_mid_block"), mid, mid, 1, 1, 0)?,
                bgr,
                image_channels: control.conditioning_channels,
                shape,
            })
        };
        build().map_err(|e| invalid(e.to_string()))
    }

    /// The folder it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why this ControlNet cannot guide a UNet of `unet`'s shape, if it cannot: it was
    /// made for another model family or another architecture.
    pub fn fits(&self, unet: &UnetShape) -> Result<(), DiffusionError> {
        let ours = &self.shape;
        let same = ours.cross_attention_dim == unet.cross_attention_dim
            && ours.addition_time_embed_dim == unet.addition_time_embed_dim
            && ours.skip_channels() == unet.skip_channels();
        if same {
            return Ok(());
        }
        Err(DiffusionError::Request(format!(
            "the ControlNet at {} was made for {} models (blocks {:?}, text width {}), and this model is {} (blocks {:?}, text width {}): use a ControlNet trained for this model's family",
            self.path.display(),
            ours.family(),
            ours.block_out_channels,
            ours.cross_attention_dim,
            unet.family(),
            unet.block_out_channels,
            unet.cross_attention_dim
        )))
    }

    /// What this ControlNet adds to the UNet for `sample` (the UNet's scaled latent input,
    /// 4 channels) at `timestep`, seeing `image` (`[batch, 3, h, w]` in [0, 1]), scaled
    /// by `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn residuals(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        image: &Tensor,
        scale: f64,
        tiling: Option<Tiling>,
    ) -> CandleResult<ControlResiduals> {
        let dtype = self.down.dtype();
        let sample = sample.to_dtype(dtype)?;
        let timesteps = Tensor::full(timestep as f32, sample.dim(0)?, sample.device())?;
        let emb = self.down.embedding(&timesteps, added, dtype)?;
        let image = if self.bgr {
            Tensor::cat(
                &[
                    image.narrow(1, 2, 1)?,
                    image.narrow(1, 1, 1)?,
                    image.narrow(1, 0, 1)?,
                ],
                1,
            )?
        } else {
            image.clone()
        };
        let control = self.embedding.forward(&image.to_dtype(dtype)?, tiling)?;
        let xs = (self.down.conv_in(&sample, tiling)? + control)?;
        let (xs, skips) = self.down.down(xs, &emb, context, tiling)?;
        let xs = self.down.mid(&xs, &emb, context, tiling)?;
        let down = skips
            .iter()
            .zip(&self.down_convs)
            .map(|(skip, conv)| conv.forward(skip)?.affine(scale, 0.0))
            .collect::<CandleResult<Vec<_>>>()?;
        Ok(ControlResiduals {
            down,
            mid: self.mid_conv.forward(&xs)?.affine(scale, 0.0)?,
        })
    }

    /// The width of the control image it expects.
    pub fn image_channels(&self) -> usize {
        self.image_channels
    }
}

/// A ControlNet in use by a drawing: how strongly, and over which share of the steps.
#[derive(Debug, Clone)]
pub struct ControlUse {
    pub model: Arc<ControlNet>,
    /// `controlnet_conditioning_scale`.
    pub scale: f64,
    /// `control_guidance_start` and `_end`: the share of the steps (0 to 1) it guides.
    pub start: f64,
    pub end: f64,
}

impl PartialEq for ControlUse {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
            && self.scale == other.scale
            && self.start == other.start
            && self.end == other.end
    }
}

impl ControlUse {
    /// Whether it guides step `step` of `steps` (counted over the steps that run), as
    /// diffusers' `controlnet_keep`: off where `step / steps < start` or
    /// `(step + 1) / steps > end`.
    pub fn guides(&self, step: usize, steps: usize) -> bool {
        in_window(self.start, self.end, step, steps)
    }
}

fn in_window(start: f64, end: f64, step: usize, steps: usize) -> bool {
    let steps = steps as f64;
    !((step as f64) / steps < start || (step as f64 + 1.0) / steps > end)
}

/// A control image brought to the drawing's size as diffusers' control image processor
/// does: Pillow's LANCZOS resize ([`resample::lanczos`](crate::resample::lanczos)),
/// nothing when the size already matches.
pub fn prepare_control_image(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    crate::resample::lanczos(image, width, height)
}

/// A control image as diffusers' ControlNet pipelines prepare it: RGB scaled to [0, 1],
/// channel-major, `[3, h, w]` values.
pub fn control_values(image: &RgbImage) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut values = vec![0f32; 3 * w * h];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            values[c * w * h + i] = f32::from(pixel[c]) / 255.0;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_guides_the_steps_diffusers_keeps() {
        // diffusers: keep = 1 - (i/len < s or (i+1)/len > e); with s=0.2, e=0.6 over 10
        // steps, steps 2, 3, 4 and 5 are guided.
        let kept: Vec<usize> = (0..10).filter(|&i| in_window(0.2, 0.6, i, 10)).collect();
        assert_eq!(kept, vec![2, 3, 4, 5]);
        assert!((0..10).all(|i| in_window(0.0, 1.0, i, 10)));
        assert!(!(0..10).any(|i| in_window(0.5, 0.5, i, 10)));
    }
}
