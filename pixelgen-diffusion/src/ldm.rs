//! Single-file checkpoints (the original LDM/SGM layout that A1111 and Civitai use) turned
//! into what a diffusers folder holds: diffusers-named weights per model, and the configs
//! diffusers would write, inferred from tensor shapes the way the original LDM yaml files
//! define the models. The renaming rules follow diffusers' `single_file_utils.py`.
//!
//! Everything a checkpoint holds for a model must be understood: a tensor that the inferred
//! architecture lacks, or one it needs and the file lacks, is an error, so a variant that
//! would load half-right is refused instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use candle_core::Tensor;
use serde_json::{Value, json};

use super::lora::{PipelineWeights, TensorMap, UnetLayout};
use super::sgm;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const SD1_CLIP: &str = "cond_stage_model.transformer.";
const SD2_OPEN_CLIP: &str = "cond_stage_model.model.";
const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// SDXL refiners carry only OpenCLIP bigG, as embedder 0.
const SDXL_REFINER_OPEN_CLIP: &str = "conditioner.embedders.0.model.";

/// The model family of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x: CLIP ViT-L text encoder.
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder, used without its last layer.
    /// Whether a checkpoint predicts noise (2.x-base) or velocity (2.x 768-v) cannot be read
    /// from its weights: the scheduler config says `epsilon` unless the file has a `v_pred`
    /// marker tensor.
    Sd2,
    /// Stable Diffusion XL base: CLIP ViT-L and OpenCLIP ViT-bigG.
    Sdxl,
}

/// A single-file checkpoint, converted.
#[derive(Debug)]
pub struct SingleFile {
    pub family: Family,
    pub weights: PipelineWeights,
    /// As diffusers' `unet/config.json`.
    pub unet_config: Value,
    /// As diffusers' `vae/config.json`.
    pub vae_config: Value,
    /// As `text_encoder/config.json` (transformers' `CLIPTextConfig`).
    pub text_encoder_config: Option<Value>,
    /// As `text_encoder_2/config.json` (SDXL).
    pub text_encoder_2_config: Option<Value>,
    /// As `scheduler/scheduler_config.json`.
    pub scheduler_config: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum LdmError {
    #[error(
        "not a single-file Stable Diffusion checkpoint: found tensors {found}; only SD1.x, SD2.x and SDXL single-file checkpoints are supported{hint}"
    )]
    UnknownLayout { found: String, hint: &'static str },
    #[error(
        "the checkpoint's {component} lacks {}; the file is incomplete or damaged: re-download it",
        list(names)
    )]
    Missing {
        component: Component,
        names: Vec<String>,
    },
    #[error(
        "the checkpoint's {component} has tensors a plain SD1.x/SD2.x/SDXL model does not have: {}; this model variant is not supported",
        list(names)
    )]
    Unexpected {
        component: Component,
        names: Vec<String>,
    },
    #[error(
        "the checkpoint's {component} has inconsistent shapes: {reason}; the file is damaged or a model variant that is not supported"
    )]
    Inconsistent {
        component: Component,
        reason: String,
    },
    #[error("converting the checkpoint's {component} failed: {source}")]
    Tensor {
        component: Component,
        source: Box<candle_core::Error>,
    },
}

/// A model inside a checkpoint, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text encoder",
            Component::TextEncoder2 => "second text encoder",
        })
    }
}

/// Up to five names, then how many more.
fn list(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(5) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Converts a single-file checkpoint's tensors (all of them, as loaded) to diffusers names
/// and configs. EMA copies and training leftovers are dropped.
pub fn convert_single_file(tensors: TensorMap) -> Result<SingleFile, LdmError> {
    let family = detect(&tensors)?;
    // ComfyUI's markers for v-prediction and zero-terminal-SNR models.
    let v_prediction = tensors.contains_key("v_pred");
    let zero_snr = tensors.contains_key("ztsnr");
    let (clip_prefix, open_clip_prefix) = match family {
        Family::Sd1 => (Some(SD1_CLIP), None),
        Family::Sd2 => (None, Some(SD2_OPEN_CLIP)),
        Family::Sdxl => (Some(SDXL_CLIP), Some(SDXL_OPEN_CLIP)),
    };
    let (mut unet, mut vae, mut clip, mut open_clip) = Default::default();
    for (name, tensor) in tensors {
        let parts: [(Option<&str>, &mut TensorMap); 4] = [
            (Some(UNET), &mut unet),
            (Some(VAE), &mut vae),
            (clip_prefix, &mut clip),
            (open_clip_prefix, &mut open_clip),
        ];
        for (prefix, map) in parts {
            if let Some(rest) = prefix.and_then(|p| name.strip_prefix(p)) {
                map.insert(rest.to_owned(), tensor);
                break;
            }
        }
    }

    let (text_encoder, text_encoder_config, text_encoder_2, text_encoder_2_config) = match family {
        Family::Sd1 => {
            let (weights, config) = hf_clip(clip, Component::TextEncoder)?;
            (Some(weights), Some(config), None, None)
        }
        Family::Sd2 => {
            let (weights, config) = open_clip_model(open_clip, Component::TextEncoder, false)?;
            (Some(weights), Some(config), None, None)
        }
        Family::Sdxl => {
            let (weights, config) = hf_clip(clip, Component::TextEncoder)?;
            let (weights_2, config_2) = open_clip_model(open_clip, Component::TextEncoder2, true)?;
            (Some(weights), Some(config), Some(weights_2), Some(config_2))
        }
    };
    // SDXL's added conditioning is the pooled text embedding plus six embedded numbers.
    let pooled_width = text_encoder_2_config
        .as_ref()
        .and_then(|c| c["projection_dim"].as_u64())
        .and_then(|d| usize::try_from(d).ok());
    let (unet, unet_config) = unet_model(unet, family, pooled_width)?;
    if vae.is_empty() {
        // Some checkpoints are shared without their VAE; say so rather than name one tensor.
        return Err(LdmError::Missing {
            component: Component::Vae,
            names: vec![format!("{VAE}*")],
        });
    }
    let (vae, vae_config) = vae_model(vae, family)?;
    let prediction_type = if v_prediction {
        "v_prediction"
    } else {
        "epsilon"
    };
    let scheduler_config = json!({
        "_class_name": if family == Family::Sdxl { "EulerDiscreteScheduler" } else { "PNDMScheduler" },
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": false,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": prediction_type,
        "rescale_betas_zero_snr": zero_snr,
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        // Zero-terminal-SNR models must sample from the last timestep (diffusers' advice).
        "timestep_spacing": if zero_snr { "trailing" } else { "leading" },
        "trained_betas": null,
    });
    Ok(SingleFile {
        family,
        weights: PipelineWeights {
            unet,
            text_encoder,
            text_encoder_2,
            vae,
        },
        unet_config,
        vae_config,
        text_encoder_config,
        text_encoder_2_config,
        scheduler_config,
    })
}

/// The family, from which text encoders the checkpoint carries.
fn detect(tensors: &TensorMap) -> Result<Family, LdmError> {
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    let family = if has(SDXL_CLIP) && has(SDXL_OPEN_CLIP) {
        Some(Family::Sdxl)
    } else if has(SD2_OPEN_CLIP) {
        Some(Family::Sd2)
    } else if has(SD1_CLIP) {
        Some(Family::Sd1)
    } else {
        None
    };
    match family {
        Some(family) if has(UNET) => Ok(family),
        _ => Err(unknown_layout(tensors, has(SDXL_REFINER_OPEN_CLIP))),
    }
}

fn unknown_layout(tensors: &TensorMap, refiner: bool) -> LdmError {
    // Group names by their first components, the way checkpoints nest their models.
    let mut families: BTreeMap<String, usize> = BTreeMap::new();
    for name in tensors.keys() {
        let depth = match name.split('.').next() {
            Some("model" | "conditioner" | "cond_stage_model") => 2,
            _ => 1,
        };
        let family: Vec<&str> = name.split('.').take(depth).collect();
        *families.entry(family.join(".")).or_default() += 1;
    }
    let mut families: Vec<(String, usize)> = families.into_iter().collect();
    families.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut found: Vec<String> = families
        .iter()
        .take(6)
        .map(|(family, count)| format!("`{family}.*` ({count})"))
        .collect();
    if families.len() > 6 {
        found.push(format!("and {} more families", families.len() - 6));
    }
    let found = if found.is_empty() {
        "none".to_owned()
    } else {
        found.join(", ")
    };
    let hint = if refiner {
        " (this looks like an SDXL refiner, which cannot generate on its own: use an SDXL base model)"
    } else if tensors.keys().any(|k| k.contains("lora_")) {
        " (this looks like a LoRA: list it under `loras` of a sprite instead)"
    } else if tensors.keys().any(|k| k.starts_with("down_blocks.")) {
        " (this looks like one model of a diffusers folder: point at the folder instead)"
    } else {
        ""
    };
    LdmError::UnknownLayout { found, hint }
}

// ---------------------------------------------------------------------------------------
// Shape reading

/// Reads shapes off one model's tensors, with errors naming that model.
struct Shapes<'a> {
    component: Component,
    map: &'a TensorMap,
}

impl Shapes<'_> {
    fn dims(&self, name: &str) -> Result<&[usize], LdmError> {
        self.map
            .get(name)
            .map(Tensor::dims)
            .ok_or_else(|| LdmError::Missing {
                component: self.component,
                names: vec![name.to_owned()],
            })
    }

    fn dim(&self, name: &str, index: usize) -> Result<usize, LdmError> {
        let dims = self.dims(name)?;
        dims.get(index).copied().ok_or_else(|| {
            self.inconsistent(format!(
                "`{name}` has shape {dims:?}, expected more dimensions"
            ))
        })
    }

    /// How many numbered children `prefix` has (`prefix0.…`, `prefix1.…`): one more than
    /// the highest number.
    fn count(&self, prefix: &str) -> usize {
        self.map
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn inconsistent(&self, reason: String) -> LdmError {
        LdmError::Inconsistent {
            component: self.component,
            reason,
        }
    }
}

/// Checks that `map` holds exactly the tensors `expected` names.
fn check_names(
    component: Component,
    map: &TensorMap,
    expected: &BTreeSet<String>,
    mut unexpected: Vec<String>,
) -> Result<(), LdmError> {
    let missing: Vec<String> = expected
        .iter()
        .filter(|n| !map.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(LdmError::Missing {
            component,
            names: missing,
        });
    }
    unexpected.extend(map.keys().filter(|n| !expected.contains(*n)).cloned());
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(LdmError::Unexpected {
            component,
            names: unexpected,
        });
    }
    Ok(())
}

/// `prefix.{m}.{weight,bias}` for every module `m` (`m.…` for an empty prefix).
fn add_modules(names: &mut BTreeSet<String>, prefix: &str, modules: &[&str]) {
    for module in modules {
        for param in ["weight", "bias"] {
            names.insert(if prefix.is_empty() {
                format!("{module}.{param}")
            } else {
                format!("{prefix}.{module}.{param}")
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// UNet

/// The UNet architecture as the LDM config gives it.
struct UnetArch {
    block_out: Vec<usize>,
    layers_per_block: usize,
    attention: Vec<bool>,
    /// Transformer blocks per attention, per level (1 where the level has no attention).
    depth: Vec<usize>,
    added_conditioning: bool,
}

fn unet_model(
    src: TensorMap,
    family: Family,
    pooled_width: Option<usize>,
) -> Result<(TensorMap, Value), LdmError> {
    let component = Component::Unet;
    let s = Shapes {
        component,
        map: &src,
    };
    let in_channels = s.dim("input_blocks.0.0.weight", 1)?;
    let out_channels = s.dim("out.2.weight", 0)?;
    let input_blocks = s.count("input_blocks.");
    // Each level ends with a downsampler `input_blocks.N.0.op` except the last.
    let layers_per_block = (1..input_blocks)
        .find(|k| s.has(&format!("input_blocks.{k}.0.op.weight")))
        .map_or(input_blocks.saturating_sub(1), |k| k - 1);
    if layers_per_block == 0 || !input_blocks.is_multiple_of(layers_per_block + 1) {
        return Err(s.inconsistent(format!(
            "{input_blocks} input blocks do not split into levels of {layers_per_block} resnets and a downsampler"
        )));
    }
    let levels = input_blocks / (layers_per_block + 1);
    let (mut block_out, mut attention, mut depth) = (vec![], vec![], vec![]);
    for level in 0..levels {
        let block = 1 + level * (layers_per_block + 1);
        block_out.push(s.dim(&format!("input_blocks.{block}.0.out_layers.3.weight"), 0)?);
        let has_attention = s.has(&format!("input_blocks.{block}.1.proj_in.weight"));
        attention.push(has_attention);
        let blocks = s.count(&format!("input_blocks.{block}.1.transformer_blocks."));
        depth.push(if has_attention { blocks } else { 1 });
    }
    let Some(first) = attention.iter().position(|&a| a) else {
        return Err(s.inconsistent("it has no attention blocks".to_owned()));
    };
    let first = format!("input_blocks.{}.1", 1 + first * (layers_per_block + 1));
    let use_linear_projection = s.dims(&format!("{first}.proj_in.weight"))?.len() == 2;
    let cross_attention_dim = s.dim(
        &format!("{first}.transformer_blocks.0.attn2.to_k.weight"),
        1,
    )?;
    // SD1 has 8 heads everywhere; SD2 and SDXL have 64-wide heads, a count per level
    // (diffusers calls the count `attention_head_dim`).
    let heads = if use_linear_projection {
        if let Some(&c) = block_out.iter().find(|&&c| c % 64 != 0) {
            return Err(s.inconsistent(format!(
                "{c} channels do not split into 64-wide attention heads"
            )));
        }
        json!(block_out.iter().map(|c| c / 64).collect::<Vec<_>>())
    } else {
        json!(8)
    };
    // diffusers gives the up levels the down levels' depths, and the middle block the
    // deepest level's; check the file agrees.
    let last_depth = depth[levels - 1];
    if s.count("middle_block.1.transformer_blocks.") != last_depth {
        return Err(s.inconsistent(format!(
            "the middle block's attention is not {last_depth} transformer blocks deep like the last level's"
        )));
    }
    for up in 0..levels {
        let level = levels - 1 - up;
        for slot in 0..=layers_per_block {
            let block = format!("output_blocks.{}.1", up * (layers_per_block + 1) + slot);
            let has_attention = s.has(&format!("{block}.proj_in.weight"));
            let blocks = s.count(&format!("{block}.transformer_blocks."));
            if has_attention != attention[level] || (has_attention && blocks != depth[level]) {
                return Err(s.inconsistent(format!(
                    "`{block}` does not mirror the attention of down level {level}"
                )));
            }
        }
    }
    let added_conditioning = s.has("label_emb.0.0.weight");
    let (addition_embed_type, addition_time_embed_dim, projection_dim) = if added_conditioning {
        let width = s.dim("label_emb.0.0.weight", 1)?;
        let time_dim = pooled_width
            .and_then(|p| width.checked_sub(p))
            .filter(|rest| rest % 6 == 0 && *rest > 0)
            .map_or(256, |rest| rest / 6);
        (json!("text_time"), json!(time_dim), json!(width))
    } else {
        (Value::Null, Value::Null, Value::Null)
    };
    if family == Family::Sdxl && !added_conditioning {
        return Err(LdmError::Missing {
            component,
            names: vec!["label_emb.0.0.weight".to_owned()],
        });
    }
    let transformer_layers = if depth.iter().all(|&d| d == depth[0]) {
        json!(depth[0])
    } else {
        json!(depth)
    };
    let down_types: Vec<&str> = attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> = attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let config = json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": addition_embed_type,
        "addition_time_embed_dim": addition_time_embed_dim,
        "attention_head_dim": heads,
        "block_out_channels": block_out,
        "center_input_sample": false,
        "class_embed_type": null,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": down_types,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "out_channels": out_channels,
        "projection_class_embeddings_input_dim": projection_dim,
        // Latent size of the family's native resolution.
        "sample_size": match family { Family::Sd1 => 64, Family::Sd2 => 96, Family::Sdxl => 128 },
        "transformer_layers_per_block": transformer_layers,
        "up_block_types": up_types,
        // SD2 overflows in fp16 attention without it; diffusers' SD2 configs set it.
        "upcast_attention": family == Family::Sd2,
        "use_linear_projection": use_linear_projection,
    });

    let arch = UnetArch {
        block_out,
        layers_per_block,
        attention,
        depth,
        added_conditioning,
    };
    let layout = UnetLayout {
        layers_per_block,
        down_has_attention: arch.attention.clone(),
    };
    let mut unet = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in src {
        match sgm::sgm_unet_to_diffusers(&name, &layout) {
            Some(diffusers) => {
                unet.insert(diffusers, tensor);
            }
            None => unexpected.push(name),
        }
    }
    check_names(component, &unet, &unet_names(&arch), unexpected)?;
    Ok((unet, config))
}

/// Every tensor name of diffusers' `UNet2DConditionModel` with this architecture.
fn unet_names(arch: &UnetArch) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let levels = arch.block_out.len();
    let lpb = arch.layers_per_block;
    add_modules(&mut names, "", &["conv_in", "conv_norm_out", "conv_out"]);
    add_modules(&mut names, "time_embedding", &["linear_1", "linear_2"]);
    if arch.added_conditioning {
        add_modules(&mut names, "add_embedding", &["linear_1", "linear_2"]);
    }
    let resnet = |names: &mut BTreeSet<String>, prefix: String, shortcut: bool| {
        add_modules(
            names,
            &prefix,
            &["norm1", "conv1", "time_emb_proj", "norm2", "conv2"],
        );
        if shortcut {
            add_modules(names, &prefix, &["conv_shortcut"]);
        }
    };
    let attention = |names: &mut BTreeSet<String>, prefix: String, depth: usize| {
        add_modules(names, &prefix, &["norm", "proj_in", "proj_out"]);
        for block in 0..depth {
            let block = format!("{prefix}.transformer_blocks.{block}");
            add_modules(
                names,
                &block,
                &[
                    "norm1",
                    "norm2",
                    "norm3",
                    "attn1.to_out.0",
                    "attn2.to_out.0",
                    "ff.net.0.proj",
                    "ff.net.2",
                ],
            );
            for attn in ["attn1", "attn2"] {
                for proj in ["to_q", "to_k", "to_v"] {
                    names.insert(format!("{block}.{attn}.{proj}.weight"));
                }
            }
        }
    };
    for level in 0..levels {
        let out = arch.block_out[level];
        let input = arch.block_out[level.saturating_sub(1)];
        for slot in 0..lpb {
            let prefix = format!("down_blocks.{level}");
            resnet(
                &mut names,
                format!("{prefix}.resnets.{slot}"),
                slot == 0 && input != out,
            );
            if arch.attention[level] {
                attention(
                    &mut names,
                    format!("{prefix}.attentions.{slot}"),
                    arch.depth[level],
                );
            }
        }
        if level + 1 < levels {
            add_modules(
                &mut names,
                &format!("down_blocks.{level}.downsamplers.0"),
                &["conv"],
            );
        }
    }
    resnet(&mut names, "mid_block.resnets.0".to_owned(), false);
    resnet(&mut names, "mid_block.resnets.1".to_owned(), false);
    attention(
        &mut names,
        "mid_block.attentions.0".to_owned(),
        arch.depth[levels - 1],
    );
    for up in 0..levels {
        let level = levels - 1 - up;
        for slot in 0..=lpb {
            let prefix = format!("up_blocks.{up}");
            // Up resnets take the skip connection too, so their input is always wider.
            resnet(&mut names, format!("{prefix}.resnets.{slot}"), true);
            if arch.attention[level] {
                attention(
                    &mut names,
                    format!("{prefix}.attentions.{slot}"),
                    arch.depth[level],
                );
            }
        }
        if up + 1 < levels {
            add_modules(
                &mut names,
                &format!("up_blocks.{up}.upsamplers.0"),
                &["conv"],
            );
        }
    }
    names
}

// ---------------------------------------------------------------------------------------
// VAE

fn vae_model(src: TensorMap, family: Family) -> Result<(TensorMap, Value), LdmError> {
    let component = Component::Vae;
    let s = Shapes {
        component,
        map: &src,
    };
    let in_channels = s.dim("encoder.conv_in.weight", 1)?;
    let out_channels = s.dim("decoder.conv_out.weight", 0)?;
    let latent_channels = s.dim("decoder.conv_in.weight", 1)?;
    let levels = s.count("encoder.down.");
    let layers_per_block = s.count("encoder.down.0.block.");
    if levels == 0 || layers_per_block == 0 {
        return Err(LdmError::Missing {
            component,
            names: vec!["encoder.down.0.block.0.conv1.weight".to_owned()],
        });
    }
    let block_out = (0..levels)
        .map(|level| s.dim(&format!("encoder.down.{level}.block.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>, _>>()?;
    if s.count("decoder.up.") != levels {
        return Err(s.inconsistent(format!(
            "the decoder does not have {levels} levels like the encoder"
        )));
    }
    let mid_attention = s.has("encoder.mid.attn_1.q.weight");
    let quant_conv = s.has("quant_conv.weight");
    let post_quant_conv = s.has("post_quant_conv.weight");
    let config = json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": block_out,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "force_upcast": true,
        "in_channels": in_channels,
        "latent_channels": latent_channels,
        "layers_per_block": layers_per_block,
        "mid_block_add_attention": mid_attention,
        "norm_num_groups": 32,
        "out_channels": out_channels,
        "sample_size": match family { Family::Sd1 => 512, Family::Sd2 => 768, Family::Sdxl => 1024 },
        "scaling_factor": if family == Family::Sdxl { 0.13025 } else { 0.18215 },
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": post_quant_conv,
        "use_quant_conv": quant_conv,
    });

    let mut vae = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in src {
        let Some(diffusers) = vae_name(&name, levels) else {
            unexpected.push(name);
            continue;
        };
        // The mid-block attention's projections are 1×1 convs in LDM, linears in diffusers.
        let is_projection = ["to_q", "to_k", "to_v", "to_out.0"]
            .iter()
            .any(|p| diffusers.ends_with(&format!("attentions.0.{p}.weight")));
        let tensor = match tensor.dims() {
            &[out, input, ..] if is_projection => {
                tensor
                    .reshape((out, input))
                    .map_err(|source| LdmError::Tensor {
                        component,
                        source: Box::new(source),
                    })?
            }
            _ => tensor,
        };
        vae.insert(diffusers, tensor);
    }
    let mut names = BTreeSet::new();
    let resnet = |names: &mut BTreeSet<String>, prefix: String, shortcut: bool| {
        add_modules(names, &prefix, &["norm1", "conv1", "norm2", "conv2"]);
        if shortcut {
            add_modules(names, &prefix, &["conv_shortcut"]);
        }
    };
    for coder in ["encoder", "decoder"] {
        add_modules(&mut names, coder, &["conv_in", "conv_norm_out", "conv_out"]);
        for resnet_index in 0..2 {
            resnet(
                &mut names,
                format!("{coder}.mid_block.resnets.{resnet_index}"),
                false,
            );
        }
        if mid_attention {
            add_modules(
                &mut names,
                &format!("{coder}.mid_block.attentions.0"),
                &["group_norm", "to_q", "to_k", "to_v", "to_out.0"],
            );
        }
    }
    for level in 0..levels {
        let (input, out) = (block_out[level.saturating_sub(1)], block_out[level]);
        for slot in 0..layers_per_block {
            let prefix = format!("encoder.down_blocks.{level}.resnets.{slot}");
            resnet(&mut names, prefix, slot == 0 && input != out);
        }
        if level + 1 < levels {
            add_modules(
                &mut names,
                &format!("encoder.down_blocks.{level}.downsamplers.0"),
                &["conv"],
            );
        }
    }
    for up in 0..levels {
        let out = block_out[levels - 1 - up];
        let input = block_out[levels - up.max(1)];
        for slot in 0..=layers_per_block {
            let prefix = format!("decoder.up_blocks.{up}.resnets.{slot}");
            resnet(&mut names, prefix, slot == 0 && input != out);
        }
        if up + 1 < levels {
            add_modules(
                &mut names,
                &format!("decoder.up_blocks.{up}.upsamplers.0"),
                &["conv"],
            );
        }
    }
    for (present, module) in [
        (quant_conv, "quant_conv"),
        (post_quant_conv, "post_quant_conv"),
    ] {
        if present {
            add_modules(&mut names, "", &[module]);
        }
    }
    check_names(component, &vae, &names, unexpected)?;
    Ok((vae, config))
}

/// The diffusers name of an LDM VAE tensor (prefix removed).
fn vae_name(name: &str, levels: usize) -> Option<String> {
    let (coder, rest) = name.split_once('.')?;
    if matches!(coder, "quant_conv" | "post_quant_conv") {
        return Some(name.to_owned());
    }
    if !matches!(coder, "encoder" | "decoder") {
        return None;
    }
    const FIXED: [(&str, &str); 6] = [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
        ("mid.block_1.", "mid_block.resnets.0."),
        ("mid.block_2.", "mid_block.resnets.1."),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ];
    const ATTENTION: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    let inner = if let Some((from, to)) = FIXED.iter().find(|(from, _)| rest.starts_with(from)) {
        let tail = &rest[from.len()..];
        if *from == "mid.attn_1." {
            let (a, b) = ATTENTION.iter().find(|(a, _)| tail.starts_with(a))?;
            format!("{to}{b}{}", &tail[a.len()..])
        } else {
            format!("{to}{tail}")
        }
    } else {
        // `down.N.block.M.…`, `down.N.downsample.conv.…`, `up.N.block.M.…`, `up.N.upsample.conv.…`;
        // LDM numbers the decoder's levels from the bottom, diffusers from the top.
        let (direction, rest) = rest.split_once('.')?;
        let (index, rest) = rest.split_once('.')?;
        let index: usize = index.parse().ok()?;
        let level = match (coder, direction) {
            ("encoder", "down") => index,
            ("decoder", "up") => levels.checked_sub(index + 1)?,
            _ => return None,
        };
        let blocks = format!("{direction}_blocks.{level}");
        if let Some(tail) = rest.strip_prefix("block.") {
            format!("{blocks}.resnets.{tail}")
        } else {
            let sampler = if direction == "down" {
                "downsample"
            } else {
                "upsample"
            };
            let tail = rest.strip_prefix(sampler)?.strip_prefix(".conv.")?;
            format!("{blocks}.{sampler}rs.0.conv.{tail}")
        }
    };
    Some(format!(
        "{coder}.{}",
        inner.replace("nin_shortcut", "conv_shortcut")
    ))
}

// ---------------------------------------------------------------------------------------
// Text encoders

/// A CLIP text model stored in transformers' layout (SD1, SDXL's first encoder).
fn hf_clip(src: TensorMap, component: Component) -> Result<(TensorMap, Value), LdmError> {
    let mut clip = TensorMap::new();
    for (name, tensor) in src {
        // Checkpoints made with old transformers lack the `text_model.` level.
        let name = if name.starts_with("text_model.") {
            name
        } else {
            format!("text_model.{name}")
        };
        // `position_ids` is a buffer, not a weight (newer transformers do not save it); a
        // projection or logit scale, which some exports keep, is unused by SD.
        let unused = [
            "embeddings.position_ids",
            "text_projection.weight",
            "logit_scale",
        ];
        if !unused.iter().any(|u| name == format!("text_model.{u}")) {
            clip.insert(name, tensor);
        }
    }
    let config = clip_config(&clip, component, "quick_gelu", false)?;
    Ok((clip, config))
}

/// An OpenCLIP text model (SD2's ViT-H, SDXL's bigG) renamed to transformers' CLIP layout.
/// SD2 uses the penultimate layer's output, so like diffusers its last layer is dropped;
/// SDXL's second encoder keeps every layer and its projection.
fn open_clip_model(
    src: TensorMap,
    component: Component,
    with_projection: bool,
) -> Result<(TensorMap, Value), LdmError> {
    let s = Shapes {
        component,
        map: &src,
    };
    let layers = s.count("transformer.resblocks.");
    let tensor_error = |source| LdmError::Tensor {
        component,
        source: Box::new(source),
    };
    let mut clip = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in &src {
        let (new_name, tensor) = match name.as_str() {
            "token_embedding.weight" => (
                "text_model.embeddings.token_embedding.weight".to_owned(),
                tensor.clone(),
            ),
            "positional_embedding" => (
                "text_model.embeddings.position_embedding.weight".to_owned(),
                tensor.clone(),
            ),
            "ln_final.weight" => (
                "text_model.final_layer_norm.weight".to_owned(),
                tensor.clone(),
            ),
            "ln_final.bias" => (
                "text_model.final_layer_norm.bias".to_owned(),
                tensor.clone(),
            ),
            // OpenCLIP multiplies `x @ P`; a linear layer stores `Pᵀ`.
            "text_projection" if with_projection => (
                "text_projection.weight".to_owned(),
                tensor
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(tensor_error)?,
            ),
            "text_projection.weight" if with_projection => {
                ("text_projection.weight".to_owned(), tensor.clone())
            }
            // SD2 has no use for the projection; neither model for the contrastive scale.
            "text_projection" | "text_projection.weight" | "logit_scale" | "attn_mask" => continue,
            _ => {
                let Some((layer, rest)) = name
                    .strip_prefix("transformer.resblocks.")
                    .and_then(|r| r.split_once('.'))
                    .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)))
                else {
                    unexpected.push(name.clone());
                    continue;
                };
                if !with_projection && layer + 1 == layers {
                    continue;
                }
                let prefix = format!("text_model.encoder.layers.{layer}");
                if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
                    // q, k and v stacked along the output dimension.
                    let width = tensor.dim(0).map_err(tensor_error)? / 3;
                    for (i, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                        let part = tensor
                            .narrow(0, i * width, width)
                            .and_then(|t| t.contiguous())
                            .map_err(tensor_error)?;
                        clip.insert(format!("{prefix}.self_attn.{proj}.{kind}"), part);
                    }
                    continue;
                }
                const RENAMES: [(&str, &str); 5] = [
                    ("ln_1.", "layer_norm1."),
                    ("ln_2.", "layer_norm2."),
                    ("attn.out_proj.", "self_attn.out_proj."),
                    ("mlp.c_fc.", "mlp.fc1."),
                    ("mlp.c_proj.", "mlp.fc2."),
                ];
                let Some(renamed) = RENAMES
                    .iter()
                    .find_map(|(from, to)| Some(format!("{to}{}", rest.strip_prefix(from)?)))
                else {
                    unexpected.push(name.clone());
                    continue;
                };
                (format!("{prefix}.{renamed}"), tensor.clone())
            }
        };
        clip.insert(new_name, tensor);
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(LdmError::Unexpected {
            component,
            names: unexpected,
        });
    }
    let config = clip_config(&clip, component, "gelu", with_projection)?;
    Ok((clip, config))
}

/// transformers' `CLIPTextConfig` for a converted text model, after checking its names.
fn clip_config(
    clip: &TensorMap,
    component: Component,
    hidden_act: &str,
    with_projection: bool,
) -> Result<Value, LdmError> {
    let s = Shapes {
        component,
        map: clip,
    };
    let token_embedding = "text_model.embeddings.token_embedding.weight";
    let vocab_size = s.dim(token_embedding, 0)?;
    let hidden_size = s.dim(token_embedding, 1)?;
    let max_positions = s.dim("text_model.embeddings.position_embedding.weight", 0)?;
    let layers = s.count("text_model.encoder.layers.");
    let intermediate_size = s.dim("text_model.encoder.layers.0.mlp.fc1.weight", 0)?;
    if hidden_size % 64 != 0 {
        return Err(s.inconsistent(format!(
            "a width of {hidden_size} does not split into 64-wide attention heads"
        )));
    }
    let projection_dim = if with_projection {
        s.dim("text_projection.weight", 0)?
    } else {
        hidden_size
    };

    let mut names = BTreeSet::new();
    names.insert(token_embedding.to_owned());
    names.insert("text_model.embeddings.position_embedding.weight".to_owned());
    add_modules(&mut names, "text_model", &["final_layer_norm"]);
    for layer in 0..layers {
        add_modules(
            &mut names,
            &format!("text_model.encoder.layers.{layer}"),
            &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "layer_norm1",
                "layer_norm2",
                "mlp.fc1",
                "mlp.fc2",
            ],
        );
    }
    if with_projection {
        names.insert("text_projection.weight".to_owned());
    }
    check_names(component, clip, &names, vec![])?;

    let architecture = if with_projection {
        "CLIPTextModelWithProjection"
    } else {
        "CLIPTextModel"
    };
    // The token ids are those of the configs diffusers ships for SD (eos 2 makes
    // transformers pool at the highest token id, the end-of-text token).
    Ok(json!({
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_positions,
        "model_type": "clip_text_model",
        "num_attention_heads": hidden_size / 64,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "vocab_size": vocab_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
    }

    fn arange(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Test checkpoints: the shapes that architecture inference reads are real, the other
    /// tensors are one-element placeholders.
    struct Spec {
        arch: UnetArch,
        linear: bool,
        cross: usize,
        adm: Option<usize>,
    }

    fn sd1_spec() -> Spec {
        Spec {
            arch: UnetArch {
                block_out: vec![32, 64],
                layers_per_block: 1,
                attention: vec![true, false],
                depth: vec![1, 1],
                added_conditioning: false,
            },
            linear: false,
            cross: 64,
            adm: None,
        }
    }

    fn sdxl_spec() -> Spec {
        Spec {
            arch: UnetArch {
                block_out: vec![64, 128, 128],
                layers_per_block: 2,
                attention: vec![false, true, true],
                depth: vec![1, 2, 2],
                added_conditioning: true,
            },
            linear: true,
            cross: 192,
            adm: Some(32 + 6 * 8),
        }
    }

    fn layout(arch: &UnetArch) -> UnetLayout {
        UnetLayout {
            layers_per_block: arch.layers_per_block,
            down_has_attention: arch.attention.clone(),
        }
    }

    /// The shape of a diffusers UNet tensor, where inference reads it.
    fn unet_shape(name: &str, spec: &Spec) -> Vec<usize> {
        let c = &spec.arch.block_out;
        let n = c.len();
        let parts: Vec<&str> = name.split('.').collect();
        let channels = match parts[..] {
            ["down_blocks", i, ..] => c[i.parse::<usize>().unwrap()],
            ["up_blocks", u, ..] => c[n - 1 - u.parse::<usize>().unwrap()],
            _ => c[n - 1],
        };
        match name {
            "conv_in.weight" => vec![c[0], 4, 3, 3],
            "conv_out.weight" => vec![4, c[0], 3, 3],
            "add_embedding.linear_1.weight" => vec![4 * c[0], spec.adm.unwrap()],
            _ if name.ends_with("conv2.weight") => vec![channels, channels, 3, 3],
            _ if name.ends_with("proj_in.weight") && spec.linear => vec![channels, channels],
            _ if name.ends_with("proj_in.weight") => vec![channels, channels, 1, 1],
            _ if name.ends_with("attn2.to_k.weight") => vec![channels, spec.cross],
            _ => vec![1],
        }
    }

    fn add_unet(ckpt: &mut TensorMap, spec: &Spec) {
        let layout = layout(&spec.arch);
        for name in unet_names(&spec.arch) {
            let ldm = sgm::diffusers_unet_to_sgm(&name, &layout).unwrap();
            ckpt.insert(format!("{UNET}{ldm}"), zeros(&unet_shape(&name, spec)));
        }
    }

    fn add_vae(ckpt: &mut TensorMap, block_out: &[usize], lpb: usize) {
        let n = block_out.len();
        let mut add = |name: String, shape: &[usize]| {
            ckpt.insert(format!("{VAE}{name}"), zeros(shape));
        };
        let resnet =
            |add: &mut dyn FnMut(String, &[usize]), prefix: String, cin: usize, cout: usize| {
                for module in ["norm1", "conv1", "norm2", "conv2"] {
                    let shape = if module == "conv1" {
                        vec![cout, cin, 3, 3]
                    } else {
                        vec![1]
                    };
                    add(format!("{prefix}.{module}.weight"), &shape);
                    add(format!("{prefix}.{module}.bias"), &[1]);
                }
                if cin != cout {
                    add(format!("{prefix}.nin_shortcut.weight"), &[1]);
                    add(format!("{prefix}.nin_shortcut.bias"), &[1]);
                }
            };
        let last = block_out[n - 1];
        for coder in ["encoder", "decoder"] {
            for param in ["weight", "bias"] {
                for module in ["norm_out", "mid.attn_1.norm"] {
                    add(format!("{coder}.{module}.{param}"), &[1]);
                }
                for p in ["q", "k", "v", "proj_out"] {
                    let shape: &[usize] = if param == "weight" {
                        &[last, last, 1, 1]
                    } else {
                        &[last]
                    };
                    add(format!("{coder}.mid.attn_1.{p}.{param}"), shape);
                }
            }
            for block in ["block_1", "block_2"] {
                resnet(&mut add, format!("{coder}.mid.{block}"), last, last);
            }
        }
        add("encoder.conv_in.weight".into(), &[block_out[0], 3, 3, 3]);
        add("encoder.conv_out.weight".into(), &[8, last, 3, 3]);
        add("decoder.conv_in.weight".into(), &[last, 4, 3, 3]);
        add("decoder.conv_out.weight".into(), &[3, block_out[0], 3, 3]);
        for name in [
            "encoder.conv_in.bias",
            "encoder.conv_out.bias",
            "decoder.conv_in.bias",
            "decoder.conv_out.bias",
        ] {
            add(name.into(), &[1]);
        }
        for conv in ["quant_conv", "post_quant_conv"] {
            add(format!("{conv}.weight"), &[1]);
            add(format!("{conv}.bias"), &[1]);
        }
        for level in 0..n {
            let input = block_out[level.saturating_sub(1)];
            for j in 0..lpb {
                let cin = if j == 0 { input } else { block_out[level] };
                resnet(
                    &mut add,
                    format!("encoder.down.{level}.block.{j}"),
                    cin,
                    block_out[level],
                );
            }
            if level + 1 < n {
                add(format!("encoder.down.{level}.downsample.conv.weight"), &[1]);
                add(format!("encoder.down.{level}.downsample.conv.bias"), &[1]);
            }
            // LDM numbers decoder levels from the bottom: up.{n-1} runs first.
            let input = block_out[(level + 1).min(n - 1)];
            for j in 0..=lpb {
                let cin = if j == 0 { input } else { block_out[level] };
                resnet(
                    &mut add,
                    format!("decoder.up.{level}.block.{j}"),
                    cin,
                    block_out[level],
                );
            }
            if level > 0 {
                add(format!("decoder.up.{level}.upsample.conv.weight"), &[1]);
                add(format!("decoder.up.{level}.upsample.conv.bias"), &[1]);
            }
        }
    }

    fn add_hf_clip(ckpt: &mut TensorMap, prefix: &str, hidden: usize, layers: usize) {
        let mut add = |name: String, shape: &[usize]| {
            ckpt.insert(format!("{prefix}text_model.{name}"), zeros(shape));
        };
        add("embeddings.token_embedding.weight".into(), &[1000, hidden]);
        add("embeddings.position_embedding.weight".into(), &[77, hidden]);
        add("embeddings.position_ids".into(), &[1, 77]);
        add("final_layer_norm.weight".into(), &[1]);
        add("final_layer_norm.bias".into(), &[1]);
        for layer in 0..layers {
            for module in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "layer_norm1",
                "layer_norm2",
                "mlp.fc1",
                "mlp.fc2",
            ] {
                let shape = if module == "mlp.fc1" {
                    vec![2 * hidden, hidden]
                } else {
                    vec![1]
                };
                add(format!("encoder.layers.{layer}.{module}.weight"), &shape);
                add(format!("encoder.layers.{layer}.{module}.bias"), &[1]);
            }
        }
    }

    fn add_open_clip(
        ckpt: &mut TensorMap,
        prefix: &str,
        hidden: usize,
        layers: usize,
        projection: usize,
    ) {
        let mut add = |name: String, t: Tensor| {
            ckpt.insert(format!("{prefix}{name}"), t);
        };
        add("token_embedding.weight".into(), zeros(&[1000, hidden]));
        add("positional_embedding".into(), zeros(&[77, hidden]));
        add("ln_final.weight".into(), zeros(&[1]));
        add("ln_final.bias".into(), zeros(&[1]));
        add("text_projection".into(), arange(&[hidden, projection]));
        add("logit_scale".into(), zeros(&[]));
        for layer in 0..layers {
            let p = format!("transformer.resblocks.{layer}");
            add(
                format!("{p}.attn.in_proj_weight"),
                arange(&[3 * hidden, hidden]),
            );
            add(format!("{p}.attn.in_proj_bias"), arange(&[3 * hidden]));
            add(format!("{p}.mlp.c_fc.weight"), zeros(&[2 * hidden, hidden]));
            for module in ["ln_1", "ln_2", "attn.out_proj", "mlp.c_proj"] {
                add(format!("{p}.{module}.weight"), zeros(&[1]));
            }
            for module in ["ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"] {
                add(format!("{p}.{module}.bias"), zeros(&[1]));
            }
        }
    }

    fn junk(ckpt: &mut TensorMap) {
        for name in [
            "model_ema.decay",
            "model_ema.diffusion_modelinput_blocks00weight",
            "alphas_cumprod",
            "betas",
        ] {
            ckpt.insert(name.to_owned(), zeros(&[1]));
        }
    }

    fn sd1_checkpoint() -> TensorMap {
        let mut ckpt = TensorMap::new();
        add_unet(&mut ckpt, &sd1_spec());
        add_vae(&mut ckpt, &[32, 64], 1);
        add_hf_clip(&mut ckpt, SD1_CLIP, 64, 2);
        junk(&mut ckpt);
        ckpt
    }

    fn sdxl_checkpoint() -> TensorMap {
        let mut ckpt = TensorMap::new();
        add_unet(&mut ckpt, &sdxl_spec());
        add_vae(&mut ckpt, &[32, 64], 1);
        add_hf_clip(&mut ckpt, SDXL_CLIP, 64, 2);
        add_open_clip(&mut ckpt, SDXL_OPEN_CLIP, 128, 3, 32);
        junk(&mut ckpt);
        ckpt
    }

    #[test]
    fn sgm_names_round_trip_over_whole_unets() {
        for spec in [sd1_spec(), sdxl_spec()] {
            let layout = layout(&spec.arch);
            let mut seen = BTreeSet::new();
            for name in unet_names(&spec.arch) {
                let ldm =
                    sgm::diffusers_unet_to_sgm(&name, &layout).unwrap_or_else(|| panic!("{name}"));
                assert_eq!(
                    sgm::sgm_unet_to_diffusers(&ldm, &layout).as_deref(),
                    Some(name.as_str())
                );
                assert!(seen.insert(ldm.clone()), "two names map to {ldm}");
            }
        }
    }

    #[test]
    fn converts_sd1() {
        let ckpt = sd1_checkpoint();
        let proj_in = ckpt[&format!("{UNET}input_blocks.1.1.proj_in.weight")].id();
        let up_conv = ckpt[&format!("{UNET}output_blocks.1.1.conv.weight")].id();
        let converted = convert_single_file(ckpt).unwrap();
        assert_eq!(converted.family, Family::Sd1);
        let w = &converted.weights;
        assert_eq!(
            w.unet["down_blocks.0.attentions.0.proj_in.weight"].id(),
            proj_in
        );
        assert_eq!(w.unet["up_blocks.0.upsamplers.0.conv.weight"].id(), up_conv);
        assert!(w.text_encoder_2.is_none() && converted.text_encoder_2_config.is_none());
        let te = w.text_encoder.as_ref().unwrap();
        assert!(te.contains_key("text_model.encoder.layers.1.mlp.fc2.bias"));
        assert!(!te.contains_key("text_model.embeddings.position_ids"));

        let unet = &converted.unet_config;
        assert_eq!(unet["block_out_channels"], json!([32, 64]));
        assert_eq!(unet["layers_per_block"], 1);
        assert_eq!(
            unet["down_block_types"],
            json!(["CrossAttnDownBlock2D", "DownBlock2D"])
        );
        assert_eq!(
            unet["up_block_types"],
            json!(["UpBlock2D", "CrossAttnUpBlock2D"])
        );
        assert_eq!(unet["attention_head_dim"], 8);
        assert_eq!(unet["cross_attention_dim"], 64);
        assert_eq!(unet["use_linear_projection"], false);
        assert_eq!(unet["transformer_layers_per_block"], 1);
        assert_eq!(unet["addition_embed_type"], Value::Null);
        let layout = UnetLayout::from_unet_config(unet).unwrap();
        assert_eq!(layout.down_has_attention, [true, false]);

        let vae = &converted.vae_config;
        assert_eq!(vae["block_out_channels"], json!([32, 64]));
        assert_eq!(vae["layers_per_block"], 1);
        assert_eq!(vae["latent_channels"], 4);
        assert_eq!(vae["scaling_factor"], 0.18215);
        // LDM's 1×1-conv attention projections become linears.
        assert_eq!(
            w.vae["decoder.mid_block.attentions.0.to_out.0.weight"].dims(),
            [64, 64]
        );
        assert!(
            w.vae
                .contains_key("decoder.up_blocks.0.upsamplers.0.conv.weight")
        );
        assert!(
            !w.vae
                .contains_key("decoder.up_blocks.1.upsamplers.0.conv.weight")
        );

        let te = converted.text_encoder_config.as_ref().unwrap();
        assert_eq!(te["hidden_size"], 64);
        assert_eq!(te["num_attention_heads"], 1);
        assert_eq!(te["num_hidden_layers"], 2);
        assert_eq!(te["intermediate_size"], 128);
        assert_eq!(te["vocab_size"], 1000);
        assert_eq!(te["max_position_embeddings"], 77);
        assert_eq!(te["hidden_act"], "quick_gelu");
        assert_eq!(converted.scheduler_config["prediction_type"], "epsilon");
        assert_eq!(converted.scheduler_config["beta_schedule"], "scaled_linear");
    }

    #[test]
    fn converts_sdxl() {
        let converted = convert_single_file(sdxl_checkpoint()).unwrap();
        assert_eq!(converted.family, Family::Sdxl);
        let unet = &converted.unet_config;
        assert_eq!(unet["attention_head_dim"], json!([1, 2, 2]));
        assert_eq!(unet["transformer_layers_per_block"], json!([1, 2, 2]));
        assert_eq!(unet["use_linear_projection"], true);
        assert_eq!(unet["cross_attention_dim"], 192);
        assert_eq!(unet["addition_embed_type"], "text_time");
        assert_eq!(unet["projection_class_embeddings_input_dim"], 80);
        // 80 = pooled text (32) + 6 × 8.
        assert_eq!(unet["addition_time_embed_dim"], 8);
        assert_eq!(converted.vae_config["scaling_factor"], 0.13025);
        assert_eq!(
            converted.scheduler_config["_class_name"],
            "EulerDiscreteScheduler"
        );

        let te2 = converted.text_encoder_2_config.as_ref().unwrap();
        assert_eq!(te2["architectures"], json!(["CLIPTextModelWithProjection"]));
        assert_eq!(te2["hidden_act"], "gelu");
        assert_eq!(te2["num_attention_heads"], 2);
        assert_eq!(te2["num_hidden_layers"], 3);
        assert_eq!(te2["projection_dim"], 32);
        let w = converted.weights.text_encoder_2.as_ref().unwrap();
        // in_proj stacks q, k and v.
        let k = &w["text_model.encoder.layers.2.self_attn.k_proj.weight"];
        assert_eq!(k.dims(), [128, 128]);
        assert_eq!(values(k)[0], (128 * 128) as f32);
        assert_eq!(
            values(&w["text_model.encoder.layers.0.self_attn.v_proj.bias"])[0],
            256.0
        );
        // text_projection [hidden, proj] becomes a linear weight [proj, hidden].
        let projection = &w["text_projection.weight"];
        assert_eq!(projection.dims(), [32, 128]);
        assert_eq!(values(projection)[..2], [0.0, 32.0]);
        assert!(!w.contains_key("logit_scale"));
    }

    #[test]
    fn converts_sd2_without_the_last_open_clip_layer() {
        let spec = Spec {
            linear: true,
            ..sd1_spec()
        };
        let mut ckpt = TensorMap::new();
        add_unet(
            &mut ckpt,
            &Spec {
                arch: UnetArch {
                    block_out: vec![64, 128],
                    ..spec.arch
                },
                ..spec
            },
        );
        add_vae(&mut ckpt, &[32, 64], 1);
        add_open_clip(&mut ckpt, SD2_OPEN_CLIP, 64, 3, 64);
        ckpt.insert("v_pred".to_owned(), zeros(&[]));
        let converted = convert_single_file(ckpt).unwrap();
        assert_eq!(converted.family, Family::Sd2);
        assert_eq!(converted.unet_config["attention_head_dim"], json!([1, 2]));
        let te = converted.text_encoder_config.as_ref().unwrap();
        assert_eq!(te["num_hidden_layers"], 2);
        assert_eq!(te["architectures"], json!(["CLIPTextModel"]));
        let w = converted.weights.text_encoder.as_ref().unwrap();
        assert!(
            !w.keys()
                .any(|k| k.contains("layers.2.") || k.starts_with("text_projection"))
        );
        assert_eq!(
            converted.scheduler_config["prediction_type"],
            "v_prediction"
        );
    }

    #[test]
    fn refuses_other_layouts() {
        let mut flux = TensorMap::new();
        for i in 0..3 {
            flux.insert(
                format!("double_blocks.{i}.img_attn.qkv.weight"),
                zeros(&[1]),
            );
        }
        flux.insert("img_in.weight".to_owned(), zeros(&[1]));
        let err = convert_single_file(flux).unwrap_err().to_string();
        assert!(
            err.contains("`double_blocks.*` (3), `img_in.*` (1)")
                && err.contains("only SD1.x, SD2.x and SDXL"),
            "{err}"
        );

        let lora = TensorMap::from([("lora_unet_x.lora_down.weight".to_owned(), zeros(&[1]))]);
        let err = convert_single_file(lora).unwrap_err().to_string();
        assert!(err.contains("looks like a LoRA"), "{err}");

        let mut refiner = TensorMap::new();
        add_unet(&mut refiner, &sdxl_spec());
        add_open_clip(&mut refiner, SDXL_REFINER_OPEN_CLIP, 128, 1, 32);
        let err = convert_single_file(refiner).unwrap_err().to_string();
        assert!(err.contains("refiner"), "{err}");
    }

    #[test]
    fn names_missing_and_unexpected_tensors() {
        let mut ckpt = sd1_checkpoint();
        ckpt.remove(&format!("{UNET}output_blocks.2.0.skip_connection.bias"));
        match convert_single_file(ckpt).unwrap_err() {
            LdmError::Missing {
                component: Component::Unet,
                names,
            } => {
                assert_eq!(names, ["up_blocks.1.resnets.0.conv_shortcut.bias"])
            }
            other => panic!("{other}"),
        }

        let mut ckpt = sd1_checkpoint();
        ckpt.insert(format!("{UNET}input_blocks.1.2.extra.weight"), zeros(&[1]));
        ckpt.insert(format!("{VAE}encoder.extra.weight"), zeros(&[1]));
        let err = convert_single_file(ckpt).unwrap_err();
        assert!(
            matches!(&err, LdmError::Unexpected { component: Component::Unet, names } if names == &["input_blocks.1.2.extra.weight"]),
            "{err}"
        );

        let mut ckpt = sd1_checkpoint();
        ckpt.retain(|name, _| !name.starts_with(VAE));
        let err = convert_single_file(ckpt).unwrap_err().to_string();
        assert!(err.contains("vae lacks `first_stage_model.*`"), "{err}");

        let mut ckpt = sd1_checkpoint();
        ckpt.remove(&format!("{VAE}decoder.conv_in.weight"));
        let err = convert_single_file(ckpt).unwrap_err().to_string();
        assert!(err.contains("vae lacks `decoder.conv_in.weight`"), "{err}");

        let mut ckpt = sd1_checkpoint();
        ckpt.insert(
            format!("{UNET}input_blocks.4.0.in_layers.0.weight"),
            zeros(&[1]),
        );
        assert!(matches!(
            convert_single_file(ckpt).unwrap_err(),
            LdmError::Inconsistent {
                component: Component::Unet,
                ..
            }
        ));
    }
}
