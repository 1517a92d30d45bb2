//! The UNet's first half: timestep (and SDXL's added) embedding, the input convolution,
//! the down blocks and the mid block. A ControlNet is a copy of exactly this part of the
//! UNet it was trained for, so both build it here from the same config fields.
//!
//! Invariant: [`DownPath::down`] returns the skip connections in the order diffusers
//! collects them (`conv_in`'s output, then each resnet's, then each downsampler's),
//! which is the order of a ControlNet's residuals and of the up path's pops.

use candle_core::{D, DType, Result, Tensor, bail};
use candle_nn::{Conv2d, VarBuilder};

use super::blocks::{
    Block, Resnet, TimestepEmbedding, Transformer2D, TransformerSpec, conv, expand,
    timestep_features,
};
use super::{AddedConditioning, UnetShape};
use crate::Tiling;
use crate::config::UnetConfig;
use crate::seamless::conv2d;

/// Per-level sizes both halves of the UNet are built with.
pub(crate) struct Levels {
    pub channels: Vec<usize>,
    pub heads: Vec<usize>,
    pub depth: Vec<usize>,
    pub groups: usize,
    pub eps: f64,
    /// The time embedding's width.
    pub temb: usize,
    pub context_dim: usize,
    pub linear: bool,
}

impl Levels {
    pub fn of(config: &UnetConfig, shape: &UnetShape) -> Result<Self> {
        let levels = shape.levels;
        let channels = config.block_out_channels.clone();
        Ok(Self {
            heads: expand(
                config
                    .num_attention_heads
                    .as_ref()
                    .unwrap_or(&config.attention_head_dim),
                levels,
                "num_attention_heads",
            )?,
            depth: expand(
                &config.transformer_layers_per_block,
                levels,
                "transformer_layers_per_block",
            )?,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb: config.time_embedding_dim.unwrap_or(channels[0] * 4),
            context_dim: shape.cross_attention_dim,
            linear: config.use_linear_projection,
            channels,
        })
    }

    pub(super) fn transformer(&self, level: usize) -> TransformerSpec {
        TransformerSpec {
            channels: self.channels[level],
            heads: self.heads[level],
            depth: self.depth[level],
            context_dim: self.context_dim,
            groups: self.groups,
            linear: self.linear,
        }
    }
}

#[derive(Debug)]
pub(crate) struct DownPath {
    conv_in: Conv2d,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    time_embedding: TimestepEmbedding,
    /// SDXL's pooled-text and size embedding, with its time ids' width.
    add_embedding: Option<(TimestepEmbedding, usize)>,
    down_blocks: Vec<Block>,
    mid_block: Block,
}

impl DownPath {
    /// Builds the down path at `vb` (the model's root: `conv_in`, `time_embedding`,
    /// `down_blocks`, `mid_block` …) for latents of `in_channels`.
    pub fn new(
        vb: &VarBuilder,
        config: &UnetConfig,
        shape: &UnetShape,
        sizes: &Levels,
    ) -> Result<Self> {
        let levels = shape.levels;
        let channels = &sizes.channels;
        let (groups, eps, temb) = (sizes.groups, sizes.eps, sizes.temb);
        let add_embedding = match shape.addition_time_embed_dim {
            Some(dim) => {
                let Some(input) = shape.projection_class_embeddings_input_dim else {
                    bail!(
                        "unet config: addition_embed_type text_time needs projection_class_embeddings_input_dim"
                    );
                };
                Some((
                    TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?,
                    dim,
                ))
            }
            None => None,
        };
        let mut down_blocks = Vec::with_capacity(levels);
        for level in 0..levels {
            let vb = vb.pp("down_blocks").pp(level);
            let out_c = channels[level];
            let mut in_c = channels[level.saturating_sub(1)];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for i in 0..shape.layers_per_block[level] {
                resnets.push(Resnet::new(
                    vb.pp("resnets").pp(i),
                    in_c,
                    out_c,
                    temb,
                    groups,
                    eps,
                    1.0,
                )?);
                if shape.has_attention[level] {
                    attentions.push(Transformer2D::new(
                        vb.pp("attentions").pp(i),
                        &sizes.transformer(level),
                    )?);
                }
                in_c = out_c;
            }
            let downsampler = if level + 1 < levels {
                let padding = config.downsample_padding;
                Some((
                    conv(vb.pp("downsamplers.0.conv"), out_c, out_c, 3, 2, padding)?,
                    padding,
                ))
            } else {
                None
            };
            down_blocks.push(Block {
                resnets,
                attentions,
                downsampler,
                upsampler: None,
            });
        }
        let last = levels - 1;
        let mid_vb = vb.pp("mid_block");
        let scale = config.mid_block_scale_factor;
        let c = channels[last];
        let mid_block = Block {
            resnets: vec![
                Resnet::new(mid_vb.pp("resnets.0"), c, c, temb, groups, eps, scale)?,
                Resnet::new(mid_vb.pp("resnets.1"), c, c, temb, groups, eps, scale)?,
            ],
            attentions: vec![Transformer2D::new(
                mid_vb.pp("attentions.0"),
                &sizes.transformer(last),
            )?],
            downsampler: None,
            upsampler: None,
        };
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), shape.in_channels, channels[0], 3, 1, 1)?,
            time_channels: channels[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), channels[0], temb)?,
            add_embedding,
            down_blocks,
            mid_block,
        })
    }

    /// The dtype the path computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// The time embedding (plus SDXL's added embedding) of `[batch]` f32 timesteps.
    pub fn embedding(
        &self,
        timesteps: &Tensor,
        added: Option<&AddedConditioning>,
        dtype: DType,
    ) -> Result<Tensor> {
        let batch = timesteps.dim(0)?;
        let features = timestep_features(
            &timesteps.to_dtype(DType::F32)?,
            self.time_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
        )?;
        let emb = self.time_embedding.forward(&features.to_dtype(dtype)?)?;
        match (&self.add_embedding, added) {
            (Some((add_embedding, dim)), Some(added)) => {
                let ids = added.time_ids.flatten_all()?;
                let time_embeds =
                    timestep_features(&ids, *dim, self.flip_sin_to_cos, self.freq_shift)?
                        .reshape((batch, ()))?;
                let input = Tensor::cat(
                    &[added.text_embeds.to_dtype(DType::F32)?, time_embeds],
                    D::Minus1,
                )?;
                emb + add_embedding.forward(&input.to_dtype(dtype)?)?
            }
            (Some(_), None) => bail!(
                "this model needs SDXL's added conditioning (pooled text embedding and time ids)"
            ),
            (None, _) => Ok(emb),
        }
    }

    /// The input convolution.
    pub fn conv_in(&self, sample: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
        conv2d(&self.conv_in, sample, tiling)
    }

    /// The down blocks from `xs` (the input convolution's output): their output and every
    /// skip connection, `xs` first.
    pub fn down(
        &self,
        xs: Tensor,
        emb: &Tensor,
        context: &Tensor,
        tiling: Option<Tiling>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            for i in 0..block.resnets.len() {
                xs = block.resnet_then_attention(i, &xs, emb, context, tiling)?;
                skips.push(xs.clone());
            }
            if let Some((downsampler, padding)) = &block.downsampler {
                // diffusers pads right and bottom by one when the conv itself has no padding.
                let padded = if *padding == 0 {
                    xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?
                } else {
                    xs.clone()
                };
                xs = conv2d(downsampler, &padded, tiling)?;
                skips.push(xs.clone());
            }
        }
        Ok((xs, skips))
    }

    /// The mid block.
    pub fn mid(
        &self,
        xs: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        tiling: Option<Tiling>,
    ) -> Result<Tensor> {
        let xs = self.mid_block.resnets[0].forward(xs, emb, tiling)?;
        let xs = self.mid_block.attentions[0].forward(&xs, context)?;
        self.mid_block.resnets[1].forward(&xs, emb, tiling)
    }
}
