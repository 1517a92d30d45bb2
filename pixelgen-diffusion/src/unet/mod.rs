//! The denoising UNet (`UNet2DConditionModel`), built from the model's `unet/config.json`.
//!
//! Written here rather than taken from candle-transformers because that one has no
//! `add_embedding` (SDXL's pooled-text and size conditioning), and its feed-forward uses
//! the tanh approximation of GELU where diffusers uses the exact one, which moves outputs
//! beyond the 1/255 parity pixelgen promises. Module and weight names follow diffusers,
//! so diffusers-layout weights load as they are.

mod blocks;
mod down;

use candle_core::{DType, Result, Tensor, bail};
use candle_nn::{Conv2d, VarBuilder};

use super::Tiling;
use super::config::UnetConfig;
use super::cpu_ops::GroupNorm;
use super::seamless::conv2d;
pub(crate) use blocks::conv;
use blocks::{Block, Resnet, Transformer2D, expand};
pub(crate) use down::{DownPath, Levels};

/// SDXL's extra conditioning: the pooled text embedding and the size/crop time ids.
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// `[batch, projection_dim]`.
    pub text_embeds: Tensor,
    /// `[batch, 6]`: original height and width, crop top and left, target height and width.
    pub time_ids: Tensor,
}

/// What a drawing adds to the UNet's inputs beyond latents, timestep and prompt.
#[derive(Debug, Clone, Default)]
pub struct Guides {
    /// The axes every padded convolution wraps on (seamless tiling).
    pub tiling: Option<Tiling>,
    /// ControlNets' residuals, summed over the ControlNets in use.
    pub control: Option<ControlResiduals>,
}

/// What ControlNets add to the UNet: one residual per skip connection of the down path
/// (in the order the UNet pushes them) and one to the mid block's output.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

impl ControlResiduals {
    /// The sum of two ControlNets' residuals (diffusers' `MultiControlNetModel`).
    pub fn add(&self, other: &ControlResiduals) -> Result<ControlResiduals> {
        Ok(ControlResiduals {
            down: self
                .down
                .iter()
                .zip(&other.down)
                .map(|(a, b)| a + b)
                .collect::<Result<Vec<_>>>()?,
            mid: (&self.mid + &other.mid)?,
        })
    }
}

/// The architecture facts other stages need (LoRA name mapping, batching).
#[derive(Debug, Clone)]
pub struct UnetShape {
    pub levels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: Vec<usize>,
    pub has_attention: Vec<bool>,
    pub in_channels: usize,
    pub cross_attention_dim: usize,
    /// SDXL's `addition_time_embed_dim`, when the model takes added conditioning.
    pub addition_time_embed_dim: Option<usize>,
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// The latent size the model was trained at.
    pub sample_size: Option<usize>,
}

impl UnetShape {
    /// The width of each skip connection of the down path, in the order the UNet
    /// collects them (and a ControlNet gives its residuals).
    pub fn skip_channels(&self) -> Vec<usize> {
        let channels = &self.block_out_channels;
        let mut widths = vec![channels[0]];
        for (level, (&width, &layers)) in channels.iter().zip(&self.layers_per_block).enumerate() {
            let downsampler = usize::from(level + 1 < self.levels);
            widths.extend(std::iter::repeat_n(width, layers + downsampler));
        }
        widths
    }

    /// The model family this shape belongs to, by its text conditioning's width, for
    /// messages: `SD 1.x` (768), `SD 2.x` (1024), `SDXL` (2048 with added conditioning).
    pub fn family(&self) -> String {
        match (
            self.cross_attention_dim,
            self.addition_time_embed_dim.is_some(),
        ) {
            (768, false) => "SD 1.x".into(),
            (1024, false) => "SD 2.x".into(),
            (2048, true) => "SDXL".into(),
            (dim, true) => format!("SDXL-like (text width {dim})"),
            (dim, false) => format!("SD-like (text width {dim})"),
        }
    }

    /// Checks a config against what this UNet implements and extracts its shape.
    pub fn of(config: &UnetConfig) -> Result<Self> {
        let levels = config.block_out_channels.len();
        if config.up_block_types.len() != levels {
            bail!(
                "unet config: block_out_channels, down_block_types and up_block_types must have the same, non-zero length"
            );
        }
        let shape = Self::of_down_path(config)?;
        for (i, t) in config.up_block_types.iter().enumerate() {
            let expected = if shape.has_attention[levels - 1 - i] {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            };
            if t != expected {
                bail!(
                    "unet config: up block {i} is `{t}`, expected `{expected}` to mirror the down blocks"
                );
            }
        }
        Ok(shape)
    }

    /// [`of`](Self::of) for the down path alone (the part a ControlNet copies).
    pub fn of_down_path(config: &UnetConfig) -> Result<Self> {
        let levels = config.block_out_channels.len();
        if levels == 0 || config.down_block_types.len() != levels {
            bail!(
                "unet config: block_out_channels and down_block_types must have the same, non-zero length"
            );
        }
        let has_attention = config
            .down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(true),
                "DownBlock2D" => Ok(false),
                other => bail!("unet config: down block type `{other}` is not supported (CrossAttnDownBlock2D and DownBlock2D are)"),
            })
            .collect::<Result<Vec<bool>>>()?;
        let unsupported = [
            ("class_embed_type", config.class_embed_type.is_some()),
            (
                "encoder_hid_dim_type",
                config.encoder_hid_dim_type.is_some(),
            ),
            ("time_cond_proj_dim", config.time_cond_proj_dim.is_some()),
            ("dual_cross_attention", config.dual_cross_attention),
            (
                "resnet_time_scale_shift",
                config
                    .resnet_time_scale_shift
                    .as_deref()
                    .is_some_and(|s| s != "default"),
            ),
            (
                "mid_block_type",
                config.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn"),
            ),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            bail!("unet config sets `{field}`, which pixelgen's UNet does not implement");
        }
        let addition_time_embed_dim = match config.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => Some(config.addition_time_embed_dim.ok_or_else(|| {
                candle_core::Error::Msg(
                    "unet config: addition_embed_type text_time needs addition_time_embed_dim"
                        .into(),
                )
            })?),
            Some(other) => {
                bail!("unet config: addition_embed_type `{other}` is not supported (text_time is)")
            }
        };
        let cross = expand(&config.cross_attention_dim, levels, "cross_attention_dim")?;
        if cross.iter().any(|&c| c != cross[0]) {
            bail!("unet config: a different cross_attention_dim per level is not supported");
        }
        Ok(Self {
            levels,
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: expand(&config.layers_per_block, levels, "layers_per_block")?,
            has_attention,
            in_channels: config.in_channels,
            cross_attention_dim: cross[0],
            addition_time_embed_dim,
            projection_class_embeddings_input_dim: config.projection_class_embeddings_input_dim,
            sample_size: config.sample_size,
        })
    }
}

/// The UNet.
#[derive(Debug)]
pub struct Unet {
    shape: UnetShape,
    down: DownPath,
    up_blocks: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    center_input_sample: bool,
}

impl Unet {
    pub fn new(vb: VarBuilder, config: &UnetConfig) -> Result<Self> {
        let shape = UnetShape::of(config)?;
        let sizes = Levels::of(config, &shape)?;
        let down = DownPath::new(&vb, config, &shape, &sizes)?;
        let levels = shape.levels;
        let channels = &sizes.channels;
        let (groups, eps, temb) = (sizes.groups, sizes.eps, sizes.temb);
        let last = levels - 1;
        let mut up_blocks = Vec::with_capacity(levels);
        let mut previous_out = channels[last];
        for i in 0..levels {
            let level = last - i;
            let vb = vb.pp("up_blocks").pp(i);
            let out_c = channels[level];
            let skip_in = channels[level.saturating_sub(1)];
            let layers = shape.layers_per_block[level] + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { skip_in } else { out_c };
                let resnet_in = if j == 0 { previous_out } else { out_c };
                resnets.push(Resnet::new(
                    vb.pp("resnets").pp(j),
                    resnet_in + skip,
                    out_c,
                    temb,
                    groups,
                    eps,
                    1.0,
                )?);
                if shape.has_attention[level] {
                    attentions.push(Transformer2D::new(
                        vb.pp("attentions").pp(j),
                        &sizes.transformer(level),
                    )?);
                }
            }
            let upsampler = if i < last {
                Some(conv(vb.pp("upsamplers.0.conv"), out_c, out_c, 3, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(Block {
                resnets,
                attentions,
                downsampler: None,
                upsampler,
            });
            previous_out = out_c;
        }

        Ok(Self {
            down,
            up_blocks,
            conv_norm_out: GroupNorm::new(groups, channels[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), channels[0], config.out_channels, 3, 1, 1)?,
            center_input_sample: config.center_input_sample,
            shape,
        })
    }

    pub fn shape(&self) -> &UnetShape {
        &self.shape
    }

    /// Predicts noise (or v, or the sample) for a batch of latents at one timestep.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        self.forward_guided(sample, timestep, context, added, &Guides::default())
    }

    /// [`forward`](Self::forward) with what a conditioned drawing adds ([`Guides`]).
    pub fn forward_guided(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        guides: &Guides,
    ) -> Result<Tensor> {
        let timesteps = Tensor::full(timestep as f32, sample.dim(0)?, sample.device())?;
        self.run(sample, &timesteps, context, added, guides)
    }

    /// The dtype the UNet computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.down.dtype()
    }

    /// [`forward`](Self::forward) with a timestep per latent (`[batch]`, f32), as training
    /// draws them.
    pub fn forward_at(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        self.run(sample, timesteps, context, added, &Guides::default())
    }

    fn run(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        guides: &Guides,
    ) -> Result<Tensor> {
        let tiling = guides.tiling;
        let (_, _, height, width) = sample.dims4()?;
        let dtype = sample.dtype();
        let emb = self.down.embedding(timesteps, added, dtype)?;
        let sample = if self.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let xs = self.down.conv_in(&sample, tiling)?;
        let (xs, mut skips) = self.down.down(xs, &emb, context, tiling)?;
        let mut xs = self.down.mid(&xs, &emb, context, tiling)?;
        if let Some(control) = &guides.control {
            if control.down.len() != skips.len() {
                bail!(
                    "unet: {} ControlNet residuals for {} skip connections",
                    control.down.len(),
                    skips.len()
                );
            }
            for (skip, residual) in skips.iter_mut().zip(&control.down) {
                *skip = (&*skip + residual.to_dtype(dtype)?)?;
            }
            xs = (xs + control.mid.to_dtype(dtype)?)?;
        }

        let factor = 1usize << (self.shape.levels - 1);
        let irregular = !height.is_multiple_of(factor) || !width.is_multiple_of(factor);
        for block in &self.up_blocks {
            for i in 0..block.resnets.len() {
                let Some(skip) = skips.pop() else {
                    bail!("unet: skip connections ran out")
                };
                xs = Tensor::cat(&[&xs, &skip], 1)?;
                xs = block.resnet_then_attention(i, &xs, &emb, context, tiling)?;
            }
            if let Some(upsampler) = &block.upsampler {
                let (h, w) = match (irregular, skips.last()) {
                    (true, Some(next)) => (next.dim(2)?, next.dim(3)?),
                    _ => (xs.dim(2)? * 2, xs.dim(3)? * 2),
                };
                xs = conv2d(upsampler, &xs.upsample_nearest2d(h, w)?, tiling)?;
            }
        }

        conv2d(
            &self.conv_out,
            &self.conv_norm_out.forward_silu(&xs)?,
            tiling,
        )
    }
}
