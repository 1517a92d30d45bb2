//! The VAE decoder (diffusers' `AutoencoderKL.decode`): latents to RGB in [-1, 1].
//!
//! Written here rather than taken from candle-transformers so that it runs on pixelgen's
//! CPU kernels (`cpu_ops`: convolution, GroupNorm+SiLU, attention), which at 512×512 make
//! the decode several times faster; on other devices those fall back to candle's own ops,
//! computing what candle-transformers' VAE computes. The encoder ([`VaeEncoder`]) serves
//! LoRA training, which turns training images into latents. Module and weight names follow diffusers (and, for the mid-block
//! attention, also the older `query`/`key`/`value`/`proj_attn` names and 1×1-conv-shaped
//! weights, as candle-transformers accepts), so the same weight files load unchanged.

use candle_core::{Module, Result, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::Tiling;
use super::config::VaeConfig;
use super::cpu_ops::{self, GroupNorm};
use super::seamless::conv2d;

/// diffusers' decoder uses this epsilon in every norm.
const EPS: f64 = 1e-6;

fn conv(vb: VarBuilder, in_c: usize, out_c: usize, kernel: usize) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding: kernel / 2,
        ..Default::default()
    };
    candle_nn::conv2d(in_c, out_c, kernel, config, vb)
}

/// `ResnetBlock2D` without a time embedding.
#[derive(Debug)]
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, in_c: usize, out_c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, in_c, EPS, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), in_c, out_c, 3)?,
            norm2: GroupNorm::new(groups, out_c, EPS, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), out_c, out_c, 3)?,
            conv_shortcut: if in_c != out_c {
                Some(conv(vb.pp("conv_shortcut"), in_c, out_c, 1)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
        let h = conv2d(&self.conv1, &self.norm1.forward_silu(xs)?, tiling)?;
        let h = conv2d(&self.conv2, &self.norm2.forward_silu(&h)?, tiling)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, xs, tiling)?,
            None => xs.clone(),
        };
        shortcut + h
    }
}

/// A projection of the mid-block attention: `[c, c]` or a 1×1 conv's `[c, c, 1, 1]`.
fn projection(vb: VarBuilder, channels: usize) -> Result<Linear> {
    match vb.get((channels, channels), "weight") {
        Ok(_) => candle_nn::linear(channels, channels, vb),
        Err(_) => {
            let weight = vb
                .get((channels, channels, 1, 1), "weight")?
                .reshape((channels, channels))?;
            Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
        }
    }
}

/// The mid block's single-head self-attention over all pixels, with its residual.
#[derive(Debug)]
struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, EPS, vb.pp("group_norm"))?,
            to_q: projection(vb.pp(names[0]), channels)?,
            to_k: projection(vb.pp(names[1]), channels)?,
            to_v: projection(vb.pp(names[2]), channels)?,
            to_out: projection(vb.pp(names[3]), channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((batch, channels, height * width))?
            .transpose(1, 2)?
            // candle's batched matmul misreads a transposed left operand when batch > 1.
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let attended = self.to_out.forward(&cpu_ops::attention(&q, &k, &v, 1)?)?;
        let image = attended
            .transpose(1, 2)?
            .reshape((batch, channels, height, width))?;
        image + xs
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets, then (except the last) a 2× nearest upsample
/// and a 3×3 conv.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    upsampler: Option<Conv2d>,
}

/// The VAE decoder with its `post_quant_conv`.
#[derive(Debug)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnets: [Resnet; 2],
    mid_attention: Attention,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeDecoder {
    /// Builds the decoder from the VAE's weights (`vb` at the VAE's root, where
    /// `decoder.*` and `post_quant_conv.*` live); `out_channels` is 3 for RGB.
    pub fn new(vb: VarBuilder, config: &VaeConfig, out_channels: usize) -> Result<Self> {
        let channels = &config.block_out_channels;
        let Some(&last) = channels.last() else {
            bail!("vae config: block_out_channels is empty");
        };
        let groups = config.norm_num_groups;
        let latent = config.latent_channels;
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv(vb.pp("post_quant_conv"), latent, latent, 1)?)
        } else {
            None
        };
        let vb = vb.pp("decoder");
        let mid = vb.pp("mid_block");
        let mut up_blocks = Vec::with_capacity(channels.len());
        let mut previous = last;
        for (index, &out_c) in channels.iter().rev().enumerate() {
            let block = vb.pp("up_blocks").pp(index);
            let resnets = (0..=config.layers_per_block)
                .map(|i| {
                    let in_c = if i == 0 { previous } else { out_c };
                    Resnet::new(block.pp("resnets").pp(i), in_c, out_c, groups)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if index + 1 < channels.len() {
                Some(conv(block.pp("upsamplers.0.conv"), out_c, out_c, 3)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
            previous = out_c;
        }
        Ok(Self {
            post_quant_conv,
            conv_in: conv(vb.pp("conv_in"), latent, last, 3)?,
            mid_resnets: [
                Resnet::new(mid.pp("resnets.0"), last, last, groups)?,
                Resnet::new(mid.pp("resnets.1"), last, last, groups)?,
            ],
            mid_attention: Attention::new(mid.pp("attentions.0"), last, groups)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(groups, channels[0], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), channels[0], out_channels, 3)?,
        })
    }

    /// Scaled latents (already divided by the scaling factor) to images in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_tiled(latents, None)
    }

    /// [`decode`](Self::decode) with every padded convolution wrapping on `tiling`'s axes.
    pub fn decode_tiled(&self, latents: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
        let latents = match &self.post_quant_conv {
            Some(conv) => conv2d(conv, latents, tiling)?,
            None => latents.clone(),
        };
        let mut xs = conv2d(&self.conv_in, &latents, tiling)?;
        xs = self.mid_resnets[0].forward(&xs, tiling)?;
        xs = self.mid_attention.forward(&xs)?;
        xs = self.mid_resnets[1].forward(&xs, tiling)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, tiling)?;
            }
            if let Some(upsampler) = &block.upsampler {
                let (_, _, h, w) = xs.dims4()?;
                xs = conv2d(upsampler, &xs.upsample_nearest2d(2 * h, 2 * w)?, tiling)?;
            }
        }
        conv2d(
            &self.conv_out,
            &self.conv_norm_out.forward_silu(&xs)?,
            tiling,
        )
    }
}

/// diffusers' `DownEncoderBlock2D`: resnets, then (except the last) a stride-2 3×3 conv
/// after padding right and bottom by one.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<Resnet>,
    downsampler: Option<Conv2d>,
}

/// The VAE encoder with its `quant_conv`: images in [-1, 1] to the latent distribution.
#[derive(Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_resnets: [Resnet; 2],
    mid_attention: Attention,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

/// A diagonal Gaussian over latents (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug)]
pub struct LatentDistribution {
    pub mean: Tensor,
    /// The log variance, clamped to [-30, 20] as diffusers clamps it.
    pub log_variance: Tensor,
}

impl LatentDistribution {
    pub fn std(&self) -> Result<Tensor> {
        (&self.log_variance * 0.5)?.exp()
    }

    /// `mean + std · noise` (unscaled: multiply by the VAE's scaling factor for the UNet).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (self.std()? * noise)?
    }
}

impl VaeEncoder {
    /// Builds the encoder from the VAE's weights (`vb` at the VAE's root, where
    /// `encoder.*` and `quant_conv.*` live); `in_channels` is 3 for RGB.
    pub fn new(vb: VarBuilder, config: &VaeConfig, in_channels: usize) -> Result<Self> {
        let channels = &config.block_out_channels;
        let Some(&last) = channels.last() else {
            bail!("vae config: block_out_channels is empty");
        };
        let groups = config.norm_num_groups;
        let latent = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(conv(vb.pp("quant_conv"), 2 * latent, 2 * latent, 1)?)
        } else {
            None
        };
        let vb = vb.pp("encoder");
        let mid = vb.pp("mid_block");
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut previous = channels[0];
        for (index, &out_c) in channels.iter().enumerate() {
            let block = vb.pp("down_blocks").pp(index);
            let resnets = (0..config.layers_per_block)
                .map(|i| {
                    let in_c = if i == 0 { previous } else { out_c };
                    Resnet::new(block.pp("resnets").pp(i), in_c, out_c, groups)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if index + 1 < channels.len() {
                let config = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Some(candle_nn::conv2d(
                    out_c,
                    out_c,
                    3,
                    config,
                    block.pp("downsamplers.0.conv"),
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                downsampler,
            });
            previous = out_c;
        }
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), in_channels, channels[0], 3)?,
            down_blocks,
            mid_resnets: [
                Resnet::new(mid.pp("resnets.0"), last, last, groups)?,
                Resnet::new(mid.pp("resnets.1"), last, last, groups)?,
            ],
            mid_attention: Attention::new(mid.pp("attentions.0"), last, groups)?,
            conv_norm_out: GroupNorm::new(groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), last, 2 * latent, 3)?,
            quant_conv,
        })
    }

    /// Images (`[batch, 3, h, w]` in [-1, 1], h and w multiples of 8) to their latent
    /// distribution.
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        let mut xs = conv2d(&self.conv_in, images, None)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(downsampler) = &block.downsampler {
                let padded = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
                xs = conv2d(downsampler, &padded, None)?;
            }
        }
        xs = self.mid_resnets[0].forward(&xs, None)?;
        xs = self.mid_attention.forward(&xs)?;
        xs = self.mid_resnets[1].forward(&xs, None)?;
        let mut moments = conv2d(&self.conv_out, &self.conv_norm_out.forward_silu(&xs)?, None)?;
        if let Some(quant_conv) = &self.quant_conv {
            moments = conv2d(quant_conv, &moments, None)?;
        }
        let halves = moments.chunk(2, 1)?;
        Ok(LatentDistribution {
            mean: halves[0].clone(),
            log_variance: halves[1].clamp(-30f32, 20f32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

    use super::VaeDecoder;
    use crate::config::VaeConfig;
    use crate::cpu_ops::tests::{assert_close, random};

    /// On the same random weights, the decoder computes what candle-transformers' VAE does
    /// (in f64 there, so the reference does not run pixelgen's kernels).
    #[test]
    fn matches_candle_transformers_vae() {
        for post_quant in [true, false] {
            let config: VaeConfig = serde_json::from_value(serde_json::json!({
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "latent_channels": 4,
                "norm_num_groups": 8,
                "use_post_quant_conv": post_quant,
            }))
            .unwrap();
            let vars = VarMap::new();
            let candle_config = AutoEncoderKLConfig {
                block_out_channels: config.block_out_channels.clone(),
                layers_per_block: config.layers_per_block,
                latent_channels: config.latent_channels,
                norm_num_groups: config.norm_num_groups,
                use_quant_conv: config.use_quant_conv,
                use_post_quant_conv: config.use_post_quant_conv,
            };
            // Creating candle-transformers' VAE fills the VarMap: convolutions with random
            // weights, but norms with 1 and 0 and the attention with zeros, so those are
            // made random here, or the test could not see them.
            let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
            AutoEncoderKL::new(vb.clone(), 3, 3, candle_config.clone()).unwrap();
            for (i, (name, var)) in vars.data().lock().unwrap().iter().enumerate() {
                let shape = var.as_tensor().dims().to_vec();
                let seed = 900 + i as u64;
                if name.contains("norm") {
                    var.set(&random(&shape, seed, 0.3).affine(1.0, 1.0).unwrap())
                        .unwrap();
                } else if name.contains("attentions") {
                    var.set(&random(&shape, seed, 0.15)).unwrap();
                }
            }
            let ours = VaeDecoder::new(vb, &config, 3).unwrap();
            let tensors: std::collections::HashMap<String, Tensor> = vars
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().to_dtype(DType::F64).unwrap()))
                .collect();
            let reference = AutoEncoderKL::new(
                VarBuilder::from_tensors(tensors, DType::F64, &Device::Cpu),
                3,
                3,
                candle_config,
            )
            .unwrap();
            let latents = random(&[2, 4, 6, 5], 77, 1.0);
            // The reference decodes one latent at a time: candle's batched matmul of a
            // transposed operand, which its attention uses, gets the second image wrong.
            let expected = Tensor::cat(
                &(0..2)
                    .map(|i| {
                        reference
                            .decode(
                                &latents
                                    .narrow(0, i, 1)
                                    .unwrap()
                                    .to_dtype(DType::F64)
                                    .unwrap(),
                            )
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                    })
                    .collect::<Vec<_>>(),
                0,
            )
            .unwrap();
            let decoded = ours.decode(&latents).unwrap();
            assert_close(&decoded, &expected, 5e-5, "vae decode");
            // Each image of a batch is the image decoded alone (candle's batched matmul of a
            // transposed operand once made the second one wrong, here and in the reference).
            for i in 0..2 {
                assert_close(
                    &decoded.narrow(0, i, 1).unwrap(),
                    &ours.decode(&latents.narrow(0, i, 1).unwrap()).unwrap(),
                    1e-5,
                    "one image of a batch",
                );
            }
        }
    }
}
