//! Training LoRA adapters on candle's autograd: the factors are `Var`s, and a model is
//! built over its frozen weights with every adapted weight replaced by
//! `W + scale · up · down` as a graph node ([`LoraAdapters::weights`]), so the forward pass
//! is the model's own code and the backward pass reaches the factors. This is the product
//! peft computes as `x·Wᵀ + scale · (x·downᵀ)·upᵀ`, in another order: the same values and
//! gradients up to f32 rounding (checked against PyTorch/peft in `tests/train.rs`).
//!
//! Invariants: the frozen weights are never variables (only the factors get gradients); a
//! model built from [`LoraAdapters::weights`] reads the factors as they are when it is
//! built, so it is built again after each optimiser step; module names are diffusers'
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), the names PEFT files use.
//!
//! The adapters and the modules they adapt are in `adapters`, the loss and its noise
//! schedule in `schedule`, checkpoints to resume from in `checkpoint`, kohya-format output
//! in `kohya`, the optimiser in `adamw`; this module holds the training loop.

use candle_core::{DType, Result, Tensor, bail};

use crate::lora::TensorMap;
use crate::noise::{self, Stream};
use crate::unet::{AddedConditioning, Unet};

mod adamw;
mod adapters;
mod checkpoint;
mod kohya;
mod schedule;

pub use adamw::{AdamW, AdamWSettings};
pub use adapters::{
    ATTENTION_PROJECTIONS, Adapter, LoraAdapters, RESNET_CONVOLUTIONS, TEXT_ATTENTION_PROJECTIONS,
};
pub use checkpoint::{resume, save_checkpoint};
pub use kohya::KohyaMetadata;
pub use schedule::NoiseSchedule;

/// One training example: its clean latents (the VAE's sample times the scaling factor,
/// `[channels, h, w]`) and its caption's text-encoder hidden states (`[tokens, dim]`)
/// under the frozen text encoder.
#[derive(Debug, Clone)]
pub struct Example {
    pub latents: Tensor,
    pub context: Tensor,
    /// The caption's token ids, which the text encoder reads when it is trained too (the
    /// `context` then is computed again every step).
    pub tokens: Vec<u32>,
    /// SDXL: the caption's token ids for the second tokenizer (empty otherwise).
    pub tokens_2: Vec<u32>,
    /// SDXL: the caption's pooled embedding (`[projection_dim]`) and the image's time ids
    /// (`[6]`); `None` for SD 1.x and 2.x.
    pub added: Option<AddedConditioning>,
}

/// How to train (diffusers' training script's defaults where it has them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// f16 mixed precision: dynamic loss scaling from this scale (PyTorch's 65536);
    /// `None` for f32 and bf16.
    pub loss_scale: Option<f64>,
    pub steps: usize,
    pub learning_rate: f64,
    /// Examples per step.
    pub batch: usize,
    pub seed: u64,
    /// AdamW's (diffusers: `adam_weight_decay` 1e-2, betas 0.9/0.999, epsilon 1e-8).
    pub weight_decay: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            loss_scale: None,
            steps: 1000,
            learning_rate: 1e-4,
            batch: 1,
            seed: 0,
            weight_decay: 1e-2,
        }
    }
}

/// The batch of step `step`: every epoch visits each example once, in an order drawn
/// from the seed.
pub fn batch_of(step: usize, batch: usize, examples: usize, seed: u64) -> Vec<usize> {
    (0..batch)
        .map(|i| {
            let position = step * batch + i;
            let (epoch, within) = (position / examples, position % examples);
            let keys = noise::uniform(seed, Stream::TrainingOrder(epoch), examples);
            let mut order: Vec<usize> = (0..examples).collect();
            order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
            order[within]
        })
        .collect()
}

/// The frozen model training adapts: its UNet and the noise schedule it was trained with,
/// and, when the text encoder is trained too, its text encoder.
#[derive(Clone, Copy)]
pub struct BaseModel<'a> {
    pub unet_config: &'a crate::config::UnetConfig,
    pub unet_weights: &'a TensorMap,
    pub schedule: &'a NoiseSchedule,
    /// What the UNet computes in: f32, or bf16 / f16 for mixed precision (the factors,
    /// the text encoders and the loss stay f32).
    pub dtype: DType,
    pub text_encoder: Option<TextEncoder<'a>>,
    /// SDXL's second text encoder, trained along with the first: the UNet is then
    /// conditioned on both encoders' penultimate hidden states side by side and on the
    /// second's pooled projection, all computed in the graph each step.
    pub text_encoder_2: Option<TextEncoder<'a>>,
}

/// A text encoder trained along (diffusers' `--train_text_encoder`): its config, frozen
/// weights (`text_model.*` names) and adapters.
#[derive(Clone, Copy)]
pub struct TextEncoder<'a> {
    pub config: &'a crate::config::ClipConfig,
    pub weights: &'a TensorMap,
    pub adapters: &'a LoraAdapters,
}

/// Trains `adapters` on `examples` from step `first` to `settings.steps`, calling
/// `on_step(step, loss)` after each; it returns `false` to stop early (an interrupt, a
/// checkpoint to write first). Noise, timesteps and batches come from the seed and the
/// step number alone, so training resumed at step `n` (with the factors and optimiser
/// moments saved there) continues exactly as an uninterrupted run would.
pub fn train(
    base: &BaseModel,
    adapters: &LoraAdapters,
    optimizer: &mut AdamW,
    examples: &[Example],
    settings: &Settings,
    first: usize,
    on_step: &mut dyn FnMut(usize, f32) -> bool,
) -> Result<()> {
    if examples.is_empty() {
        bail!("nothing to train on: no examples");
    }
    let device = examples[0].latents.device().clone();
    for step in first..settings.steps {
        let chosen = batch_of(step, settings.batch, examples.len(), settings.seed);
        let stack = |part: fn(&Example) -> &Tensor| {
            Tensor::stack(
                &chosen
                    .iter()
                    .map(|&i| part(&examples[i]))
                    .collect::<Vec<_>>(),
                0,
            )
        };
        let latents = stack(|example| &example.latents)?;
        let encode = |text: &TextEncoder, tokens: fn(&Example) -> &Vec<u32>| {
            let encoder = crate::clip::ClipTextModel::new(
                text.adapters.weights(text.weights, &device)?,
                text.config,
            )?;
            let ids: Vec<Vec<u32>> = chosen
                .iter()
                .map(|&i| tokens(&examples[i]).clone())
                .collect();
            encoder.forward(&ids, &device)
        };
        let mut pooled = None;
        let context = match (&base.text_encoder, &base.text_encoder_2) {
            (None, None) => stack(|example| &example.context)?,
            (Some(text), None) => encode(text, |e| &e.tokens)?.last_hidden_state,
            (Some(first), Some(second)) => {
                let first = encode(first, |e| &e.tokens)?;
                let second = encode(second, |e| &e.tokens_2)?;
                pooled = Some(second.pooled);
                Tensor::cat(
                    &[
                        &first.penultimate_hidden_state,
                        &second.penultimate_hidden_state,
                    ],
                    candle_core::D::Minus1,
                )?
            }
            (None, Some(_)) => bail!("a second text encoder is trained only with the first"),
        };
        let noise = Tensor::from_vec(
            noise::gaussian(
                settings.seed,
                Stream::TrainingNoise(step),
                latents.elem_count(),
            ),
            latents.shape(),
            &device,
        )?;
        let timesteps: Vec<usize> =
            noise::uniform(settings.seed, Stream::TrainingTimesteps(step), chosen.len())
                .into_iter()
                .map(|u| {
                    ((u * base.schedule.train_steps() as f64) as usize)
                        .min(base.schedule.train_steps() - 1)
                })
                .collect();
        let added = match &examples[chosen[0]].added {
            None => None,
            Some(_) => {
                let part = |pick: fn(&AddedConditioning) -> &Tensor| -> Result<Tensor> {
                    let rows = chosen
                        .iter()
                        .map(|&i| match &examples[i].added {
                            Some(added) => Ok(pick(added).clone()),
                            None => bail!("examples mix SDXL conditioning and none"),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::stack(&rows, 0)
                };
                Some(AddedConditioning {
                    // Trained text encoders give the pooled embedding from the graph.
                    text_embeds: match pooled {
                        Some(pooled) => pooled,
                        None => part(|a| &a.text_embeds)?,
                    },
                    time_ids: part(|a| &a.time_ids)?,
                })
            }
        };
        let unet = Unet::new(
            adapters.weights_in(base.unet_weights, &device, base.dtype)?,
            base.unet_config,
        )?;
        let loss = base.schedule.loss(
            &unet,
            &latents,
            &noise,
            &timesteps,
            &context,
            added.as_ref(),
        )?;
        let scale = optimizer.loss_scale();
        let grads = if scale == 1.0 {
            loss.backward()?
        } else {
            (&loss * scale)?.backward()?
        };
        optimizer.step(&grads)?;
        if !on_step(step, loss.to_scalar::<f32>()?) {
            break;
        }
    }
    Ok(())
}

/// AdamW over the factors of every set (the UNet's, then the text encoder's) with
/// `settings`' learning rate and weight decay.
pub fn optimizer(sets: &[&LoraAdapters], settings: &Settings) -> Result<AdamW> {
    let adamw = AdamW::new(
        sets.iter().flat_map(|set| set.vars()).collect(),
        AdamWSettings {
            learning_rate: settings.learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: settings.weight_decay,
        },
    )?;
    Ok(match settings.loss_scale {
        Some(scale) => adamw.with_loss_scaling(scale),
        None => adamw,
    })
}
