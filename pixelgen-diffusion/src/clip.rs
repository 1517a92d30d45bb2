//! CLIP text encoders, configured by the model's `text_encoder[_2]/config.json`: OpenAI
//! CLIP-L (SD1.x, SDXL's first), OpenCLIP-H (SD2.x) and OpenCLIP-bigG with its projection
//! (SDXL's second). Written here rather than taken from candle-transformers because its
//! `clip::Config` cannot be built from a config file, and SDXL needs the penultimate
//! hidden state and the projected pooled output.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::config::ClipConfig;

/// What the pipelines take from a text encoder.
#[derive(Debug)]
pub struct ClipOutput {
    /// The last layer's output after the final layer norm (SD1.x, SD2.x).
    pub last_hidden_state: Tensor,
    /// The second-to-last layer's output, without the final norm (SDXL).
    pub penultimate_hidden_state: Tensor,
    /// The end-of-text token's final state, through `text_projection` when the model has
    /// one (SDXL's pooled embedding).
    pub pooled: Tensor,
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    activation: Activation,
    /// The layer norms' epsilon.
    eps: f64,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, config: &ClipConfig, activation: Activation) -> Result<Self> {
        let hidden = config.hidden_size;
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(
                hidden,
                config.layer_norm_eps,
                vb.pp("layer_norm1"),
            )?,
            q_proj: candle_nn::linear(hidden, hidden, attn.pp("q_proj"))?,
            k_proj: candle_nn::linear(hidden, hidden, attn.pp("k_proj"))?,
            v_proj: candle_nn::linear(hidden, hidden, attn.pp("v_proj"))?,
            out_proj: candle_nn::linear(hidden, hidden, attn.pp("out_proj"))?,
            layer_norm2: candle_nn::layer_norm(
                hidden,
                config.layer_norm_eps,
                vb.pp("layer_norm2"),
            )?,
            fc1: candle_nn::linear(hidden, config.intermediate_size, mlp.pp("fc1"))?,
            fc2: candle_nn::linear(config.intermediate_size, hidden, mlp.pp("fc2"))?,
            heads: config.num_attention_heads,
            activation,
            eps: config.layer_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens, hidden) = xs.dims3()?;
        let head_dim = hidden / self.heads;
        let normed = crate::cpu_ops::layer_norm(&self.layer_norm1, self.eps, xs)?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, tokens, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q_proj.forward(&normed)? * (head_dim as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(&normed)?)?;
        let v = split(self.v_proj.forward(&normed)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(causal_mask)?;
        let weights = crate::cpu_ops::softmax_last_dim(&scores)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, tokens, hidden))?;
        let xs = (xs + self.out_proj.forward(&attended)?)?;
        let normed = crate::cpu_ops::layer_norm(&self.layer_norm2, self.eps, &xs)?;
        let mlp = self
            .fc2
            .forward(&self.activation.apply(&self.fc1.forward(&normed)?)?)?;
        xs + mlp
    }
}

/// A CLIP text transformer, optionally with its text projection.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: u32,
    /// The final layer norm's epsilon.
    eps: f64,
}

impl ClipTextModel {
    /// Builds the model from `vb` rooted at the text encoder's weights (`text_model.*`,
    /// `text_projection.weight`). The projection is loaded when the weights have one.
    pub fn new(vb: VarBuilder, config: &ClipConfig) -> Result<Self> {
        let activation = match config.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => candle_core::bail!("text encoder config: unsupported hidden_act `{other}`"),
        };
        if config.num_hidden_layers == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            candle_core::bail!(
                "text encoder config: hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size,
                config.num_attention_heads
            );
        }
        let text = vb.pp("text_model");
        let embeddings = text.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(text.pp("encoder.layers").pp(i), config, activation))
            .collect::<Result<Vec<_>>>()?;
        let text_projection = if vb.contains_tensor("text_projection.weight") {
            let projection = config.projection_dim.unwrap_or(config.hidden_size);
            Some(candle_nn::linear_no_bias(
                config.hidden_size,
                projection,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            token_embedding: candle_nn::embedding(
                config.vocab_size,
                config.hidden_size,
                embeddings.pp("token_embedding"),
            )?,
            position_embedding: candle_nn::embedding(
                config.max_position_embeddings,
                config.hidden_size,
                embeddings.pp("position_embedding"),
            )?,
            layers,
            final_layer_norm: candle_nn::layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                text.pp("final_layer_norm"),
            )?,
            text_projection,
            eos_token_id: config.eos_token_id,
            eps: config.layer_norm_eps,
        })
    }

    /// Encodes a batch of equal-length token id rows.
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<ClipOutput> {
        let batch = ids.len();
        let tokens = ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (batch, tokens), device)?;
        let positions = Tensor::arange(0u32, tokens as u32, device)?;
        let mut xs = self
            .token_embedding
            .forward(&input)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let dtype = xs.dtype();
        let causal_mask = causal_mask(tokens, dtype, device)?;
        let mut penultimate = xs.clone();
        for layer in &self.layers {
            penultimate = xs;
            xs = layer.forward(&penultimate, &causal_mask)?;
        }
        let last_hidden_state = crate::cpu_ops::layer_norm(&self.final_layer_norm, self.eps, &xs)?;
        let eos_positions: Vec<u32> = ids.iter().map(|row| self.eos_position(row)).collect();
        let rows = (0..batch)
            .map(|b| last_hidden_state.get(b)?.get(eos_positions[b] as usize))
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        let pooled = match &self.text_projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    /// Where transformers takes the pooled output from: the highest id when the config's
    /// `eos_token_id` is the legacy 2 (end-of-text is the last vocabulary entry in CLIP's
    /// vocabulary), else the first end-of-text token.
    fn eos_position(&self, row: &[u32]) -> u32 {
        let position = if self.eos_token_id == 2 {
            // First maximum, as torch.argmax returns.
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&id| id == max)
        } else {
            row.iter().position(|&id| id == self.eos_token_id)
        };
        position.unwrap_or(row.len().saturating_sub(1)) as u32
    }
}

fn causal_mask(tokens: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (tokens, tokens), device)?
        .to_dtype(dtype)?
        .unsqueeze(0)?
        .unsqueeze(0)
}
