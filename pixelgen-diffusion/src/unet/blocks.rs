//! The UNet's building blocks, as diffusers names their weights: timestep embeddings,
//! resnets, transformers and the down, mid and up blocks made of them. The UNet and the
//! ControlNet (which copies the UNet's down path) are built from these.

use candle_core::{D, DType, Module, Result, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use crate::Tiling;
use crate::cpu_ops::{self, GroupNorm};
use crate::seamless::conv2d;

pub(super) fn expand(
    value: &crate::config::PerLevel<usize>,
    levels: usize,
    field: &str,
) -> Result<Vec<usize>> {
    value.expand(levels).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "unet config: `{field}` must have one value per level ({levels})"
        ))
    })
}

/// A convolution with diffusers' names (`weight`, `bias`) at `vb`.
pub(crate) fn conv(
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
pub(super) fn timestep_features(
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
pub(super) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub(super) fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(xs)?)?)
    }
}

#[derive(Debug)]
pub(super) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl Resnet {
    pub(super) fn new(
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

    pub(super) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        tiling: Option<Tiling>,
    ) -> Result<Tensor> {
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
    pub(super) fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
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
pub(super) fn layer_norm(norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
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
    pub(super) fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> Result<Self> {
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

    pub(super) fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
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
pub(super) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

pub(super) struct TransformerSpec {
    pub(super) channels: usize,
    pub(super) heads: usize,
    pub(super) depth: usize,
    pub(super) context_dim: usize,
    pub(super) groups: usize,
    pub(super) linear: bool,
}

impl Transformer2D {
    pub(super) fn new(vb: VarBuilder, spec: &TransformerSpec) -> Result<Self> {
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

    pub(super) fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
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
pub(super) struct Block {
    pub(super) resnets: Vec<Resnet>,
    pub(super) attentions: Vec<Transformer2D>,
    pub(super) downsampler: Option<(Conv2d, usize)>,
    pub(super) upsampler: Option<Conv2d>,
}

impl Block {
    pub(super) fn resnet_then_attention(
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
