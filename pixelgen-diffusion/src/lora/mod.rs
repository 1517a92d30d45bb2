//! Merges LoRA files into a pipeline's weights before its models are built, so that
//! inference pays nothing for them: `W' = W + multiplier · scale · ΔW`, computed in f32 and
//! cast back to `W`'s dtype.
//!
//! Two file formats are read:
//! - kohya-ss / sd-scripts (A1111, Civitai): `lora_unet_<module>.lora_down.weight`,
//!   `.lora_up.weight`, optional `.alpha`; module paths have their dots turned into
//!   underscores, and SDXL UNet modules use the LDM/SGM names (`input_blocks_4_1_…`).
//! - diffusers / PEFT: `unet.<module>.lora_A.weight`, `.lora_B.weight`, with the alphas in
//!   the `lora_adapter_metadata` header entry; also the older `.lora.down.weight`,
//!   `.lora_linear_layer.down.weight` and `processor.to_q_lora.down.weight` spellings.
//!
//! Module names are never guessed from underscores: every name a LoRA may use is derived
//! from the model's own weight names, so a LoRA either lands on a real weight or is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::sgm;

mod keys;

use keys::plan;

/// Tensors by name.
pub type TensorMap = HashMap<String, Tensor>;

/// A model of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Unet,
    TextEncoder,
    TextEncoder2,
    Vae,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Unet => "unet",
            Part::TextEncoder => "text encoder",
            Part::TextEncoder2 => "second text encoder",
            Part::Vae => "vae",
        })
    }
}

/// The weights of one pipeline, diffusers names, one map per part.
#[derive(Debug)]
pub struct PipelineWeights {
    pub unet: TensorMap,
    pub text_encoder: Option<TensorMap>,
    pub text_encoder_2: Option<TensorMap>,
    pub vae: TensorMap,
}

impl PipelineWeights {
    fn part(&self, part: Part) -> Option<&TensorMap> {
        match part {
            Part::Unet => Some(&self.unet),
            Part::TextEncoder => self.text_encoder.as_ref(),
            Part::TextEncoder2 => self.text_encoder_2.as_ref(),
            Part::Vae => Some(&self.vae),
        }
    }

    fn part_mut(&mut self, part: Part) -> Option<&mut TensorMap> {
        match part {
            Part::Unet => Some(&mut self.unet),
            Part::TextEncoder => self.text_encoder.as_mut(),
            Part::TextEncoder2 => self.text_encoder_2.as_mut(),
            Part::Vae => Some(&mut self.vae),
        }
    }
}

pub use super::sgm::UnetLayout;

/// The naming scheme of a LoRA file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya-ss / sd-scripts: `lora_unet_…`, `lora_te_…`.
    Kohya,
    /// diffusers / PEFT: `unet.…`, `text_encoder.…`.
    Peft,
}

/// What [`apply_lora`] merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraReport {
    pub format: LoraFormat,
    /// Weights changed.
    pub modules: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read LoRA file {}: {source}; check the LoRA's path", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not a valid safetensors file ({reason}); re-download it, or convert a .ckpt/.pt LoRA to .safetensors",
        path.display()
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{}: tensor `{key}` is {variant}, which pixelgen cannot merge; it merges kohya-ss LoRA (lora_down/lora_up, LoCon convs included) and diffusers/PEFT LoRA (lora_A/lora_B, DoRA's lora_magnitude_vector included): use a LoRA version of this file in one of those forms, or merge the adapter into the model's weights and load that model",
        path.display()
    )]
    Unsupported {
        path: PathBuf,
        variant: &'static str,
        key: String,
    },
    #[error(
        "{} holds no LoRA tensors (no lora_down/lora_up or lora_A/lora_B weights); check that it is a LoRA file",
        path.display()
    )]
    NoLoraTensors { path: PathBuf },
    #[error(
        "{}: tensor `{key}` is in no LoRA format pixelgen knows (kohya-ss `lora_unet_…`/`lora_te…` or diffusers/PEFT `unet.…`/`text_encoder….`); use a kohya-ss or diffusers LoRA",
        path.display()
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error(
        "{}: LoRA module `{key}` names no weight in the model's {part}; the LoRA is probably for another model family (e.g. an SDXL LoRA on an SD1.x model): use a LoRA made for this base model",
        path.display()
    )]
    UnknownModule {
        path: PathBuf,
        key: String,
        part: Part,
    },
    #[error(
        "{}: LoRA module `{key}` targets the {part}, which this model does not have; the LoRA is probably for another model family (e.g. an SDXL LoRA on an SD1.x model): use a LoRA made for this base model",
        path.display()
    )]
    MissingPart {
        path: PathBuf,
        key: String,
        part: Part,
    },
    #[error(
        "{}: LoRA module `{key}` changes `{weight}` by a delta of shape {lora:?}, but that weight has shape {model:?}; the LoRA is probably for another model family or base model: use a LoRA made for this one",
        path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        weight: String,
        lora: Vec<usize>,
        model: Vec<usize>,
    },
    #[error(
        "{}: {reason}; the file is damaged or was written by a tool pixelgen does not know: re-export it as a plain kohya-ss or diffusers LoRA",
        path.display()
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("{}: merging LoRA module `{key}` failed: {source}", path.display())]
    Merge {
        path: PathBuf,
        key: String,
        source: Box<candle_core::Error>,
    },
}

/// Merges the LoRA at `path`, scaled by `multiplier`, into `weights`. Several LoRAs are
/// applied by calling this once per file. Everything in the file is checked before any
/// weight changes, so a file that is refused leaves `weights` as they were.
pub fn apply_lora(
    weights: &mut PipelineWeights,
    layout: &UnetLayout,
    path: &Path,
    multiplier: f64,
) -> Result<LoraReport, LoraError> {
    let file = LoraFile::read(path)?;
    let (format, merges) = plan(&file, weights, layout)?;
    for merge in &merges {
        apply(weights, merge, multiplier).map_err(|source| LoraError::Merge {
            path: path.to_owned(),
            key: merge.key.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(LoraReport {
        format,
        modules: merges.len(),
    })
}

/// The tensors and the PEFT adapter configs of a LoRA file.
struct LoraFile {
    path: PathBuf,
    tensors: TensorMap,
    /// `lora_adapter_metadata`, when the file has it.
    adapter_metadata: Option<serde_json::Map<String, Value>>,
}

impl LoraFile {
    fn read(path: &Path) -> Result<Self, LoraError> {
        let invalid = |reason: String| LoraError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| LoraError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let adapter_metadata = match header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
        {
            None => None,
            Some(json) => match serde_json::from_str(json) {
                Ok(Value::Object(map)) => Some(map),
                _ => {
                    return Err(LoraError::Malformed {
                        path: path.to_owned(),
                        reason: "its `lora_adapter_metadata` header entry is not a json object"
                            .to_owned(),
                    });
                }
            },
        };
        // LoRA factors are small; they are merged on the weights' device later.
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            tensors,
            adapter_metadata,
        })
    }

    fn malformed(&self, reason: String) -> LoraError {
        LoraError::Malformed {
            path: self.path.clone(),
            reason,
        }
    }
}

/// One weight to change.
struct Merge {
    /// The LoRA module as named in the file, for messages.
    key: String,
    part: Part,
    /// The diffusers name of the weight.
    weight: String,
    up: Tensor,
    down: Tensor,
    rank: usize,
    scale: f64,
    /// DoRA: the per-output-channel magnitude the merged weight is rescaled to.
    magnitude: Option<Tensor>,
}

fn apply(weights: &mut PipelineWeights, merge: &Merge, multiplier: f64) -> candle_core::Result<()> {
    let Some(map) = weights.part_mut(merge.part) else {
        return Ok(()); // `plan` found the part; it cannot have gone.
    };
    let Some(w) = map.get(&merge.weight) else {
        return Ok(());
    };
    let device = w.device();
    let rank = merge.rank;
    let up = merge.up.to_device(device)?.to_dtype(DType::F32)?;
    let up = up.reshape((up.elem_count() / rank, rank))?;
    let down = merge.down.to_device(device)?.to_dtype(DType::F32)?;
    let down = down.reshape((rank, down.elem_count() / rank))?;
    let delta = up.matmul(&down)?.reshape(w.shape())?;
    let mut merged = (w.to_dtype(DType::F32)? + delta.affine(multiplier * merge.scale, 0.0)?)?;
    if let Some(magnitude) = &merge.magnitude {
        // DoRA, as peft computes it: each output channel of W + ΔW rescaled to its learnt
        // magnitude, `m / ‖W + ΔW‖` with the norm over the channel's inputs (and kernel).
        let channels = merged.dims()[0];
        let rows = merged.reshape((channels, merged.elem_count() / channels))?;
        let norms = rows.sqr()?.sum_keepdim(1)?.sqrt()?;
        let magnitude = magnitude
            .to_device(device)?
            .to_dtype(DType::F32)?
            .reshape((channels, 1))?;
        let factor = (magnitude / norms)?;
        merged = rows.broadcast_mul(&factor)?.reshape(w.shape())?;
    }
    let merged = merged.to_dtype(w.dtype())?;
    map.insert(merge.weight.clone(), merged);
    Ok(())
}

#[cfg(test)]
mod tests;
