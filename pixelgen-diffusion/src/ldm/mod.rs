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

mod text;
mod unet;
mod vae;

use text::{hf_clip, open_clip_model};
use unet::unet_model;
use vae::vae_model;

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
    // The training step count some checkpoints keep; SD 2.x base stopped at 875000.
    let global_step = tensors
        .get("global_step")
        .and_then(|t| {
            t.flatten_all()
                .ok()?
                .to_dtype(candle_core::DType::F64)
                .ok()?
                .to_vec1::<f64>()
                .ok()
        })
        .and_then(|v| v.first().copied());
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
    let scheduler_config = scheduler_config(family, v_prediction, zero_snr, &global_step);
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
/// The scheduler config diffusers' `from_single_file` gives a checkpoint of `family`: the
/// one its default repo for the family ships (`stable-diffusion-v1-5`, `stable-diffusion-2-1`,
/// `stable-diffusion-xl-base-1.0`), so SD 2.x is a v-prediction model as in diffusers.
/// diffusers' legacy loader makes an SD 2.x checkpoint stopped at step 875000 (SD 2 base)
/// epsilon; so does pixelgen. ComfyUI's `v_pred` and `ztsnr` markers win over both.
fn scheduler_config(
    family: Family,
    v_prediction: bool,
    zero_snr: bool,
    global_step: &Option<f64>,
) -> Value {
    let mut config = match family {
        Family::Sd1 => json!({
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
        }),
        Family::Sd2 => json!({
            "_class_name": "DDIMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "prediction_type": if *global_step == Some(875000.0) { "epsilon" } else { "v_prediction" },
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
        }),
        Family::Sdxl => json!({
            "_class_name": "EulerDiscreteScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "interpolation_type": "linear",
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "sample_max_value": 1.0,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "timestep_spacing": "leading",
            "trained_betas": null,
            "use_karras_sigmas": false,
        }),
    };
    if v_prediction {
        config["prediction_type"] = json!("v_prediction");
    }
    if zero_snr {
        // Zero-terminal-SNR models must sample from the last timestep (diffusers' advice).
        config["rescale_betas_zero_snr"] = json!(true);
        config["timestep_spacing"] = json!("trailing");
    }
    config
}

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

#[cfg(test)]
mod tests;
