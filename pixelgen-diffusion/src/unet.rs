//! The denoising UNet (`UNet2DConditionModel`), built from the model's `unet/config.json`.
//!
//! Written here rather than taken from candle-transformers because that one has no
//! `add_embedding` (SDXL's pooled-text and size conditioning), and its feed-forward uses
//! the tanh approximation of GELU where diffusers uses the exact one, which moves outputs
//! beyond the 1/255 parity pixelgen promises. Module and weight names follow diffusers,
//! so diffusers-layout weights load as they are.

use candle_core::{D, DType, Module, Result, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::Tiling;
use super::config::UnetConfig;
use super::cpu_ops::{self, GroupNorm};
use super::seamless::conv2d;

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

/// The architecture facts other stages need (LoRA name mapping, batching).
#[derive(Debug, Clone)]
pub struct UnetShape {
    pub levels: usize,
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
    /// Checks a config against what this UNet implements and extracts its shape.
    pub fn of(config: &UnetConfig) -> Result<Self> {
        let levels = config.block_out_channels.len();
        if levels == 0
            || config.down_block_types.len() != levels
            || config.up_block_types.len() != levels
        {
            bail!(
                "unet config: block_out_channels, down_block_types and up_block_types must have the same, non-zero length"
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
        for (i, t) in config.up_block_types.iter().enumerate() {
            let expected = if has_attention[levels - 1 - i] {
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

fn expand(
    value: &super::config::PerLevel<usize>,
    levels: usize,
    field: &str,
) -> Result<Vec<usize>> {
    value.expand(levels).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "unet config: `{field}` must have one value per level ({levels})"
        ))
    })
}

fn conv(
    vb: VarBuilder,
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(in_c, out_c, kernel, config, vb)
}

/// Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' `Timesteps`.
fn timestep_features(
    timesteps: &Tensor,
    channels: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Result<Tensor> {
    let half = channels / 2;
    let exponent: Vec<f32> = (0..half)
        // In f32, as torch computes it.
        .map(|i| (-(10000f64.ln() as f32) * i as f32 / (half as f64 - shift) as f32).exp())
        .collect();
    let frequencies = Tensor::from_vec(exponent, (1, half), timesteps.device())?;
    let arguments = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&frequencies)?;
    let (sin, cos) = (arguments.sin()?, arguments.cos()?);
    let features = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)?
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)?
    };
    if channels % 2 == 1 {
        features.pad_with_zeros(D::Minus1, 0, 1)
    } else {
        Ok(features)
    }
}

#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(xs)?)?)
    }
}

#[derive(Debug)]
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl Resnet {
    fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        scale: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, in_c, eps, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), in_c, out_c, 3, 1, 1)?,
            time_emb_proj: candle_nn::linear(temb, out_c, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(groups, out_c, eps, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), out_c, out_c, 3, 1, 1)?,
            conv_shortcut: if in_c != out_c {
                Some(conv(vb.pp("conv_shortcut"), in_c, out_c, 1, 1, 0)?)
            } else {
                None
            },
            output_scale_factor: scale,
        })
    }

    fn forward(&self, xs: &Tensor, temb: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
        let h = conv2d(&self.conv1, &self.norm1.forward_silu(xs)?, tiling)?;
        let t = self
            .time_emb_proj
            .forward(&candle_nn::ops::silu(temb)?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = conv2d(&self.conv2, &self.norm2.forward_silu(&h)?, tiling)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, xs, tiling)?,
            None => xs.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out.affine(1.0 / self.output_scale_factor, 0.0)
        }
    }
}

#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out
            .forward(&cpu_ops::attention(&q, &k, &v, self.heads)?)
    }
}

/// The transformer blocks' LayerNorm epsilon (diffusers' default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// A transformer block's LayerNorm (differentiable while training a LoRA).
fn layer_norm(norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
    cpu_ops::layer_norm(norm, LAYER_NORM_EPS, xs)
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    geglu: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: candle_nn::layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: candle_nn::layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            geglu: candle_nn::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: candle_nn::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let normed = layer_norm(&self.norm1, xs)?;
        let xs = (self.attn1.forward(&normed, &normed)? + xs)?;
        let xs = (self
            .attn2
            .forward(&layer_norm(&self.norm2, &xs)?, context)?
            + &xs)?;
        let projected = self.geglu.forward(&layer_norm(&self.norm3, &xs)?)?;
        self.ff_out.forward(&cpu_ops::geglu(&projected)?)? + xs
    }
}

#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

struct TransformerSpec {
    channels: usize,
    heads: usize,
    depth: usize,
    context_dim: usize,
    groups: usize,
    linear: bool,
}

impl Transformer2D {
    fn new(vb: VarBuilder, spec: &TransformerSpec) -> Result<Self> {
        let c = spec.channels;
        if spec.heads == 0 || !c.is_multiple_of(spec.heads) {
            bail!(
                "unet config: {c} channels cannot be split into {} attention heads",
                spec.heads
            );
        }
        let projection = |name: &str| -> Result<Projection> {
            if spec.linear {
                Ok(Projection::Linear(candle_nn::linear(c, c, vb.pp(name))?))
            } else {
                Ok(Projection::Conv(conv(vb.pp(name), c, c, 1, 1, 0)?))
            }
        };
        Ok(Self {
            norm: GroupNorm::new(spec.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: projection("proj_in")?,
            blocks: (0..spec.depth)
                .map(|i| {
                    TransformerBlock::new(
                        vb.pp("transformer_blocks").pp(i),
                        c,
                        spec.context_dim,
                        spec.heads,
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            proj_out: projection("proj_out")?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: Tensor| -> Result<Tensor> {
            t.permute((0, 2, 3, 1))?
                .reshape((batch, height * width, channels))
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv2d(conv, &normed, None)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, height, width, channels))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv2d(conv, &to_image(tokens)?, None)?,
            Projection::Linear(linear) => to_image(linear.forward(&tokens)?)?,
        };
        out + xs
    }
}

/// A down, mid or up block: resnets, each optionally followed by a transformer.
#[derive(Debug)]
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<(Conv2d, usize)>,
    upsampler: Option<Conv2d>,
}

impl Block {
    fn resnet_then_attention(
        &self,
        i: usize,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        tiling: Option<Tiling>,
    ) -> Result<Tensor> {
        let xs = self.resnets[i].forward(xs, temb, tiling)?;
        match self.attentions.get(i) {
            Some(attention) => attention.forward(&xs, context),
            None => Ok(xs),
        }
    }
}

/// The UNet.
#[derive(Debug)]
pub struct Unet {
    shape: UnetShape,
    conv_in: Conv2d,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down_blocks: Vec<Block>,
    mid_block: Block,
    up_blocks: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    center_input_sample: bool,
}

impl Unet {
    pub fn new(vb: VarBuilder, config: &UnetConfig) -> Result<Self> {
        let shape = UnetShape::of(config)?;
        let levels = shape.levels;
        let channels = &config.block_out_channels;
        let heads = expand(
            config
                .num_attention_heads
                .as_ref()
                .unwrap_or(&config.attention_head_dim),
            levels,
            "num_attention_heads",
        )?;
        let depth = expand(
            &config.transformer_layers_per_block,
            levels,
            "transformer_layers_per_block",
        )?;
        let groups = config.norm_num_groups;
        let eps = config.norm_eps;
        let time_channels = channels[0];
        let temb = config.time_embedding_dim.unwrap_or(channels[0] * 4);
        let transformer = |level: usize| TransformerSpec {
            channels: channels[level],
            heads: heads[level],
            depth: depth[level],
            context_dim: shape.cross_attention_dim,
            groups,
            linear: config.use_linear_projection,
        };

        let add_embedding = match shape.addition_time_embed_dim {
            Some(_) => {
                let Some(input) = shape.projection_class_embeddings_input_dim else {
                    bail!(
                        "unet config: addition_embed_type text_time needs projection_class_embeddings_input_dim"
                    );
                };
                Some(TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?)
            }
            None => None,
        };

        let mut down_blocks = Vec::with_capacity(levels);
        for level in 0..levels {
            let vb = vb.pp("down_blocks").pp(level);
            let out_c = channels[level];
            let mut in_c = if level == 0 {
                channels[0]
            } else {
                channels[level - 1]
            };
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
                        &transformer(level),
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
                &transformer(last),
            )?],
            downsampler: None,
            upsampler: None,
        };

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
                        &transformer(level),
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
            conv_in: conv(vb.pp("conv_in"), config.in_channels, channels[0], 3, 1, 1)?,
            time_channels,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), time_channels, temb)?,
            add_embedding,
            down_blocks,
            mid_block,
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
        self.conv_in.weight().dtype()
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
        let (batch, _, height, width) = sample.dims4()?;
        let dtype = sample.dtype();
        let timesteps = &timesteps.to_dtype(DType::F32)?;
        let features = timestep_features(
            timesteps,
            self.time_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
        )?;
        let mut emb = self.time_embedding.forward(&features.to_dtype(dtype)?)?;
        match (
            &self.add_embedding,
            added,
            self.shape.addition_time_embed_dim,
        ) {
            (Some(add_embedding), Some(added), Some(dim)) => {
                let ids = added.time_ids.flatten_all()?;
                let time_embeds =
                    timestep_features(&ids, dim, self.flip_sin_to_cos, self.freq_shift)?
                        .reshape((batch, ()))?;
                let input = Tensor::cat(
                    &[added.text_embeds.to_dtype(DType::F32)?, time_embeds],
                    D::Minus1,
                )?;
                emb = (emb + add_embedding.forward(&input.to_dtype(dtype)?)?)?;
            }
            (Some(_), None, _) => bail!(
                "this UNet needs SDXL's added conditioning (pooled text embedding and time ids)"
            ),
            _ => {}
        }

        let sample = if self.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let mut xs = conv2d(&self.conv_in, &sample, tiling)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            for i in 0..block.resnets.len() {
                xs = block.resnet_then_attention(i, &xs, &emb, context, tiling)?;
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

        xs = self.mid_block.resnets[0].forward(&xs, &emb, tiling)?;
        xs = self.mid_block.attentions[0].forward(&xs, context)?;
        xs = self.mid_block.resnets[1].forward(&xs, &emb, tiling)?;
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
