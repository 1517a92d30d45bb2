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

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Shape, Tensor, Var, bail};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::config::SchedulerConfig;
use crate::lora::TensorMap;
use crate::noise::{self, Stream};
use crate::unet::{AddedConditioning, Unet};

mod adamw;

pub use adamw::{AdamW, AdamWSettings};

/// The UNet projections a style LoRA adapts by default: attention's query, key, value and
/// output (diffusers' training script's `target_modules`).
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// The UNet convolutions `--conv` adapts too: each resnet's two 3×3 convolutions (kohya's
/// LoCon on ResBlocks).
pub const RESNET_CONVOLUTIONS: [&str; 2] = ["conv1", "conv2"];

/// One adapted module: `W' = W + scale · up · down`.
#[derive(Debug)]
pub struct Adapter {
    /// `[rank, in_features]` (PEFT's `lora_A`, kohya's `lora_down`).
    pub down: Var,
    /// `[out_features, rank]` (PEFT's `lora_B`, kohya's `lora_up`).
    pub up: Var,
}

/// The trainable factors of one model, by module name.
#[derive(Debug)]
pub struct LoraAdapters {
    pub rank: usize,
    pub alpha: f64,
    modules: BTreeMap<String, Adapter>,
}

impl LoraAdapters {
    /// New adapters on every 2-D weight `<module>.weight` of `weights` whose module ends
    /// with one of `targets` (e.g. [`ATTENTION_PROJECTIONS`]), initialised as diffusers'
    /// training script asks PEFT to (`init_lora_weights="gaussian"`): `down` normal with
    /// standard deviation 1/rank from `seed`, `up` zero, so training starts from the
    /// model itself.
    pub fn new(
        weights: &TensorMap,
        targets: &[&str],
        rank: usize,
        alpha: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if rank == 0 {
            bail!("a LoRA's rank must be at least 1");
        }
        let mut names: Vec<&String> = weights
            .iter()
            .filter(|(name, tensor)| {
                (tensor.rank() == 2 || tensor.rank() == 4)
                    && name.strip_suffix(".weight").is_some_and(|module| {
                        targets.iter().any(|t| module.ends_with(&format!(".{t}")))
                    })
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        if names.is_empty() {
            bail!("the model has no weights named like {}", targets.join(", "));
        }
        let mut modules = BTreeMap::new();
        for (index, name) in names.into_iter().enumerate() {
            // A linear weight is `[out, in]`; a convolution's `[out, in, kh, kw]` gets a down
            // convolution `[rank, in, kh, kw]` and a 1×1 up `[out, rank, 1, 1]` (LoCon).
            let dims = weights[name].dims().to_vec();
            let (down_shape, up_shape) = match *dims.as_slice() {
                [out, input] => (vec![rank, input], vec![out, rank]),
                [out, input, kh, kw] => (vec![rank, input, kh, kw], vec![out, rank, 1, 1]),
                _ => bail!("`{name}` is neither a linear nor a convolution weight"),
            };
            let fan_in: usize = down_shape[1..].iter().product();
            let values = noise::gaussian(seed, Stream::LoraFactor(index), rank * fan_in);
            let down = (Tensor::from_vec(values, down_shape, device)? / rank as f64)?;
            let up = Tensor::zeros(up_shape, DType::F32, device)?;
            let module = name.trim_end_matches(".weight").to_owned();
            modules.insert(
                module,
                Adapter {
                    down: Var::from_tensor(&down)?,
                    up: Var::from_tensor(&up)?,
                },
            );
        }
        Ok(LoraAdapters {
            rank,
            alpha,
            modules,
        })
    }

    /// Adapters with the factors of a PEFT state dict (`<module>.lora_A[.<adapter>].weight`
    /// and `lora_B`), names relative to the model (`prefix` stripped, e.g. `unet.` or none).
    pub fn from_peft(factors: &TensorMap, prefix: &str, alpha: f64) -> Result<Self> {
        let mut downs = BTreeMap::new();
        let mut ups = BTreeMap::new();
        for (name, tensor) in factors {
            let Some(name) = name.strip_prefix(prefix) else {
                continue;
            };
            let name = name.replace(".default.weight", ".weight");
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                downs.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                ups.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            }
        }
        let mut modules = BTreeMap::new();
        let mut rank = None;
        for (module, down) in downs {
            let Some(up) = ups.remove(&module) else {
                bail!("LoRA factors: `{module}` has lora_A but no lora_B");
            };
            let r = down.dim(0)?;
            if *rank.get_or_insert(r) != r || up.dim(1)? != r {
                bail!("LoRA factors: `{module}` has another rank than the others");
            }
            modules.insert(
                module,
                Adapter {
                    down: Var::from_tensor(&down)?,
                    up: Var::from_tensor(&up)?,
                },
            );
        }
        if let Some(module) = ups.keys().next() {
            bail!("LoRA factors: `{module}` has lora_B but no lora_A");
        }
        let Some(rank) = rank else {
            bail!("LoRA factors: none found under `{prefix}`");
        };
        Ok(LoraAdapters {
            rank,
            alpha,
            modules,
        })
    }

    /// `alpha / rank`, the factor the product is scaled by (PEFT's and kohya's).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn modules(&self) -> impl Iterator<Item = (&str, &Adapter)> {
        self.modules.iter().map(|(name, a)| (name.as_str(), a))
    }

    /// Every factor, down then up per module in name order: what the optimiser updates.
    pub fn vars(&self) -> Vec<Var> {
        self.modules
            .values()
            .flat_map(|a| [a.down.clone(), a.up.clone()])
            .collect()
    }

    /// A builder over `frozen` in which each adapted weight is `W + scale · up · down`,
    /// computed now from the factors' current values as part of the autograd graph; the
    /// model computes in f32.
    pub fn weights(&self, frozen: &TensorMap, device: &Device) -> Result<VarBuilder<'static>> {
        self.weights_in(frozen, device, DType::F32)
    }

    /// [`weights`](Self::weights) for a model computing in `dtype`. Mixed precision (bf16 or
    /// f16): the factors stay f32, the product is taken in f32 and cast to `dtype`, so the
    /// gradient reaches the f32 factors through the cast.
    pub fn weights_in(
        &self,
        frozen: &TensorMap,
        device: &Device,
        dtype: DType,
    ) -> Result<VarBuilder<'static>> {
        let mut adapted = frozen.clone();
        let scale = self.scale();
        for (module, adapter) in &self.modules {
            let name = format!("{module}.weight");
            let Some(weight) = frozen.get(&name) else {
                bail!("the model has no weight `{name}` for the LoRA module `{module}`");
            };
            // For a convolution the product is taken over the flattened kernels (kohya's LoCon).
            let (up, down) = (adapter.up.as_tensor(), adapter.down.as_tensor());
            let rank = down.dim(0)?;
            let delta = (up
                .reshape((up.dim(0)?, rank))?
                .matmul(&down.reshape((rank, ()))?)?
                .reshape(weight.shape())?
                * scale)?;
            if delta.dims() != weight.dims() {
                bail!(
                    "LoRA module `{module}`: factors make {:?}, the weight is {:?}",
                    delta.dims(),
                    weight.dims()
                );
            }
            adapted.insert(name, (weight.to_dtype(dtype)? + delta.to_dtype(dtype)?)?);
        }
        Ok(VarBuilder::from_backend(
            Box::new(Adapted(adapted)),
            dtype,
            device.clone(),
        ))
    }
}

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

/// The text encoder's projections a LoRA adapts with `--text-encoder` (PEFT's targets in
/// diffusers' DreamBooth LoRA script).
pub const TEXT_ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

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

/// A training run saved at a step: the factors and the optimiser's moments, with the
/// settings' fingerprint, so that a run interrupted after it resumes exactly.
/// Writes the factors of `sets` (module names do not collide between a UNet and a text
/// encoder), `optimizer`'s state and `fingerprint` to `path` (atomically).
pub fn save_checkpoint(
    sets: &[&LoraAdapters],
    optimizer: &AdamW,
    fingerprint: &str,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let mut tensors: Vec<(String, Tensor)> = optimizer
        .state()
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    for (set, module, adapter) in set_modules(sets) {
        tensors.push((
            format!("{set}down.{module}"),
            adapter.down.as_tensor().clone(),
        ));
        tensors.push((format!("{set}up.{module}"), adapter.up.as_tensor().clone()));
    }
    let header = std::collections::HashMap::from([
        ("steps".to_owned(), optimizer.steps().to_string()),
        ("fingerprint".to_owned(), fingerprint.to_owned()),
    ]);
    write_safetensors(&tensors, header, path)
}

/// Every module of every set, with the prefix its checkpoint entries take: none for the
/// first set (the UNet's), `s<i>.` for the others (two text encoders share module names).
fn set_modules<'a>(
    sets: &'a [&'a LoraAdapters],
) -> impl Iterator<Item = (String, &'a String, &'a Adapter)> {
    sets.iter().enumerate().flat_map(|(index, set)| {
        let prefix = if index == 0 {
            String::new()
        } else {
            format!("s{index}.")
        };
        set.modules
            .iter()
            .map(move |(module, adapter)| (prefix.clone(), module, adapter))
    })
}

/// Writes `tensors` with `header` to `path` through a temporary file renamed into place, so
/// that an interrupted write leaves the previous file whole.
fn write_safetensors(
    tensors: &[(String, Tensor)],
    header: std::collections::HashMap<String, String>,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    safetensors::serialize_to_file(data, Some(header), &temporary)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Takes back a checkpoint written by [`save_checkpoint`] for the same `fingerprint`:
/// sets the factors of `sets` and `optimizer`'s state, and returns the step to continue
/// from. `Ok(None)` when the checkpoint is of another run.
pub fn resume(
    sets: &[&LoraAdapters],
    optimizer: &mut AdamW,
    fingerprint: &str,
    path: &std::path::Path,
) -> std::result::Result<Option<usize>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("fingerprint").map(String::as_str) != Some(fingerprint) {
        return Ok(None);
    }
    let steps: usize = metadata
        .get("steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: no step count", path.display()))?;
    let device = sets
        .iter()
        .flat_map(|set| set.modules.values())
        .next()
        .map(|a| a.down.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let broken = |what: String| format!("{}: {what}", path.display());
    for (set, module, adapter) in set_modules(sets) {
        for (prefix, var) in [("down", &adapter.down), ("up", &adapter.up)] {
            let saved = tensors
                .get(&format!("{set}{prefix}.{module}"))
                .ok_or_else(|| broken(format!("no `{set}{prefix}.{module}`")))?;
            var.set(saved).map_err(|e| broken(e.to_string()))?;
        }
    }
    optimizer
        .restore(&tensors, steps)
        .map_err(|e| broken(e.to_string()))?;
    Ok(Some(steps))
}

/// What a kohya-format file says about how it was made (`ss_*` header entries, as kohya's
/// sd-scripts write them; A1111-style tools show them).
#[derive(Debug, Clone, Default)]
pub struct KohyaMetadata {
    /// The base model's name or path.
    pub base_model: String,
    /// `sd1`, `sd2` or `sdxl`.
    pub family: String,
    /// Training resolution, width × height.
    pub resolution: (usize, usize),
    pub steps: usize,
    pub learning_rate: f64,
    pub images: usize,
    pub seed: u64,
    pub v_prediction: bool,
}

impl LoraAdapters {
    /// Writes the factors as a kohya-ss LoRA: `lora_unet_<module>` (the module path with
    /// dots as underscores; `lora_te_<module>` for a text encoder trained along, SDXL's two
    /// as `lora_te1_` and `lora_te2_`)
    /// `.lora_down.weight`, `.lora_up.weight` and `.alpha`, in f32,
    /// with kohya's `ss_*` metadata. pixelgen, diffusers' `load_lora_weights` and
    /// A1111-style tools read this form. Written to a temporary file and renamed, so an
    /// interrupted save leaves the previous file whole.
    pub fn save_kohya(
        &self,
        text_encoders: &[&LoraAdapters],
        path: &std::path::Path,
        metadata: &KohyaMetadata,
    ) -> std::result::Result<(), String> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let text_prefixes: &[&str] = match text_encoders.len() {
            0 => &[],
            1 => &["lora_te_"],
            2 => &["lora_te1_", "lora_te2_"],
            n => return Err(format!("{n} text encoders: a model has one or two")),
        };
        let parts = std::iter::once(("lora_unet_", self)).chain(
            text_prefixes
                .iter()
                .copied()
                .zip(text_encoders.iter().copied()),
        );
        for (prefix, set) in parts {
            let alpha = Tensor::new(set.alpha as f32, &Device::Cpu).map_err(|e| e.to_string())?;
            for (module, adapter) in &set.modules {
                let name = format!("{prefix}{}", module.replace('.', "_"));
                let cpu = |v: &Var| {
                    v.as_tensor()
                        .to_dtype(DType::F32)
                        .and_then(|t| t.to_device(&Device::Cpu))
                        .map_err(|e| e.to_string())
                };
                tensors.push((format!("{name}.lora_down.weight"), cpu(&adapter.down)?));
                tensors.push((format!("{name}.lora_up.weight"), cpu(&adapter.up)?));
                tensors.push((format!("{name}.alpha"), alpha.clone()));
            }
        }
        let (width, height) = metadata.resolution;
        let header: std::collections::HashMap<String, String> = [
            ("ss_network_module", "networks.lora".to_owned()),
            ("ss_network_dim", self.rank.to_string()),
            ("ss_network_alpha", format!("{}", self.alpha)),
            ("ss_network_args", "{}".to_owned()),
            ("ss_sd_model_name", metadata.base_model.clone()),
            // kohya's spelling, which A1111-style tools read to tell families apart.
            (
                "ss_base_model_version",
                match metadata.family.as_str() {
                    "sd1" => "sd_v1".to_owned(),
                    "sd2" => "sd_v2".to_owned(),
                    "sdxl" => "sdxl_base_v1-0".to_owned(),
                    other => other.to_owned(),
                },
            ),
            ("ss_v2", (metadata.family == "sd2").to_string()),
            ("ss_resolution", format!("({width}, {height})")),
            ("ss_max_train_steps", metadata.steps.to_string()),
            ("ss_steps", metadata.steps.to_string()),
            ("ss_learning_rate", metadata.learning_rate.to_string()),
            ("ss_unet_lr", metadata.learning_rate.to_string()),
            (
                "ss_text_encoder_lr",
                if !text_encoders.is_empty() {
                    metadata.learning_rate.to_string()
                } else {
                    "0".to_owned()
                },
            ),
            ("ss_num_train_images", metadata.images.to_string()),
            ("ss_seed", metadata.seed.to_string()),
            ("ss_v_parameterization", metadata.v_prediction.to_string()),
            ("ss_optimizer", "AdamW".to_owned()),
            (
                "ss_training_comment",
                "trained by pixelgen (candle)".to_owned(),
            ),
            (
                "modelspec.architecture",
                format!("{}/lora", metadata.family),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        write_safetensors(&tensors, header, path)
    }
}

/// Weights by name, handed out as they are (no copy, no cast that would cut the graph
/// unless the dtype differs).
struct Adapted(TensorMap);

impl SimpleBackend for Adapted {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            bail!(
                "weight `{name}`: shape {:?}, expected {:?}",
                tensor.dims(),
                shape.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(tensor) = self.0.get(name) else {
            bail!("the model has no weight `{name}`");
        };
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// What the model learned to predict, and the noise schedule it was trained with: the DDPM
/// schedule of its `scheduler_config.json`.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f64>,
    v_prediction: bool,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> std::result::Result<Self, String> {
        let v_prediction = match config.prediction_type.as_str() {
            "epsilon" => false,
            "v_prediction" => true,
            other => {
                return Err(format!(
                    "a LoRA can be trained for epsilon or v prediction, not `{other}`"
                ));
            }
        };
        Ok(NoiseSchedule {
            alphas_cumprod: crate::scheduler::training_alphas_cumprod(config)?,
            v_prediction,
        })
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The noise-prediction loss of `unet` for clean `latents` noised with `noise` at
    /// `timesteps` (one per latent), conditioned on `context` (and, for SDXL, `added`): the
    /// mean squared error between the prediction and epsilon (or v), as diffusers'
    /// training scripts take it.
    pub fn loss(
        &self,
        unet: &Unet,
        latents: &Tensor,
        noise: &Tensor,
        timesteps: &[usize],
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let batch = latents.dim(0)?;
        if timesteps.len() != batch {
            bail!("{} timesteps for {batch} latents", timesteps.len());
        }
        let mut signal = Vec::with_capacity(batch);
        let mut noise_level = Vec::with_capacity(batch);
        for &t in timesteps {
            let Some(&alpha) = self.alphas_cumprod.get(t) else {
                bail!(
                    "timestep {t} is beyond the schedule's {}",
                    self.train_steps()
                );
            };
            signal.push(alpha.sqrt() as f32);
            noise_level.push((1.0 - alpha).sqrt() as f32);
        }
        let device = latents.device();
        let per_sample = |values: Vec<f32>| Tensor::from_vec(values, (batch, 1, 1, 1), device);
        let (signal, noise_level) = (per_sample(signal)?, per_sample(noise_level)?);
        let noisy = (latents.broadcast_mul(&signal)? + noise.broadcast_mul(&noise_level)?)?;
        let target = if self.v_prediction {
            (noise.broadcast_mul(&signal)? - latents.broadcast_mul(&noise_level)?)?
        } else {
            noise.clone()
        };
        let times: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let times = Tensor::from_vec(times, batch, device)?;
        // The UNet computes in its weights' dtype (mixed precision); the loss is f32.
        let dtype = unet.dtype();
        let added = added
            .map(|a| -> Result<AddedConditioning> {
                Ok(AddedConditioning {
                    text_embeds: a.text_embeds.to_dtype(dtype)?,
                    time_ids: a.time_ids.clone(),
                })
            })
            .transpose()?;
        let prediction = unet.forward_at(
            &noisy.to_dtype(dtype)?,
            &times,
            &context.to_dtype(dtype)?,
            added.as_ref(),
        )?;
        (prediction.to_dtype(DType::F32)? - target.to_dtype(DType::F32)?)?
            .sqr()?
            .mean_all()
    }
}
