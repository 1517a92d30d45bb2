//! The parts of a model before its modules are built: the configs and weights of a
//! diffusers folder, or those a single-file checkpoint's are converted to, and the
//! tokenizers a single file lacks.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;

use super::read_json;
use super::weights::{component_weights, load_weights, with_text_model_prefix};
use crate::DiffusionError;
use crate::config::{ClipConfig, ModelIndex, SchedulerConfig, UnetConfig, VaeConfig};
use crate::files::hub_snapshot;
use crate::ldm;
use crate::lora::PipelineWeights;

fn from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    path: &Path,
    what: &str,
) -> Result<T, DiffusionError> {
    serde_json::from_value(value).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("inferred {what} config is invalid: {e}"),
    })
}

/// The parts of a model before its modules are built: configs and weights.
pub(super) struct ModelParts {
    pub(super) index: ModelIndex,
    pub(super) unet: UnetConfig,
    pub(super) vae: VaeConfig,
    pub(super) text_encoder: ClipConfig,
    pub(super) text_encoder_2: Option<ClipConfig>,
    pub(super) scheduler: SchedulerConfig,
    pub(super) tokenizer_dir: PathBuf,
    pub(super) tokenizer_2_dir: Option<PathBuf>,
    pub(super) weights: PipelineWeights,
}

/// A diffusers folder's configs, and its weights already in their final dtype on `device`
/// (the VAE's in `vae_dtype`).
pub(super) fn folder_parts(
    dir: &Path,
    dtype: DType,
    vae_dtype: DType,
    device: &Device,
) -> Result<ModelParts, DiffusionError> {
    let index_path = dir.join("model_index.json");
    let index: ModelIndex = if index_path.is_file() {
        read_json(&index_path)?
    } else {
        ModelIndex::default()
    };
    let has_second = dir.join("text_encoder_2").is_dir();
    if !dir.join("text_encoder").is_dir() {
        return Err(DiffusionError::Invalid {
            path: dir.to_path_buf(),
            message: "no text_encoder/ folder: models without the first CLIP encoder (such as the SDXL refiner) are not supported".into(),
        });
    }
    Ok(ModelParts {
        unet: read_json(&dir.join("unet/config.json"))?,
        vae: read_json(&dir.join("vae/config.json"))?,
        text_encoder: read_json(&dir.join("text_encoder/config.json"))?,
        text_encoder_2: if has_second {
            Some(read_json(&dir.join("text_encoder_2/config.json"))?)
        } else {
            None
        },
        scheduler: read_json(&dir.join("scheduler/scheduler_config.json"))?,
        tokenizer_dir: dir.join("tokenizer"),
        tokenizer_2_dir: has_second.then(|| dir.join("tokenizer_2")),
        weights: PipelineWeights {
            unet: component_weights(&dir.join("unet"), dtype, device)?,
            vae: component_weights(&dir.join("vae"), vae_dtype, device)?,
            text_encoder: Some(with_text_model_prefix(component_weights(
                &dir.join("text_encoder"),
                dtype,
                device,
            )?)),
            text_encoder_2: if has_second {
                Some(with_text_model_prefix(component_weights(
                    &dir.join("text_encoder_2"),
                    dtype,
                    device,
                )?))
            } else {
                None
            },
        },
        index,
    })
}

/// Tokenizers for a single file, which carries none: a `tokenizer/` (and `tokenizer_2/`)
/// folder beside the file, else the standard CLIP tokenizers in the hub cache.
fn single_file_tokenizer(
    file: &Path,
    folder: &str,
    repo: &str,
    hub_cache: Option<&Path>,
) -> Result<PathBuf, DiffusionError> {
    // vocab.json (+ merges.txt) as transformers 4 saves a tokenizer, tokenizer.json as 5 does.
    let has_tokenizer =
        |dir: &Path| dir.join("vocab.json").is_file() || dir.join("tokenizer.json").is_file();
    let beside = file.parent().unwrap_or(Path::new(".")).join(folder);
    if has_tokenizer(&beside) {
        return Ok(beside);
    }
    if let Some(snapshot) = hub_cache.and_then(|cache| hub_snapshot(cache, repo)) {
        let dir = if has_tokenizer(&snapshot) {
            snapshot
        } else {
            snapshot.join("tokenizer")
        };
        if has_tokenizer(&dir) {
            return Ok(dir);
        }
    }
    Err(DiffusionError::Invalid {
        path: file.to_path_buf(),
        message: format!(
            "a single-file checkpoint carries no tokenizer: put the model's `{folder}/` folder (vocab.json and merges.txt, or tokenizer.json) beside it, or download `{repo}` into the Hugging Face cache"
        ),
    })
}

/// A single file's configs (inferred) and weights, on `device` as stored (each component
/// is converted to its dtype there afterwards: the VAE keeps f32 from an f32 file).
pub(super) fn single_file_parts(
    file: &Path,
    device: &Device,
    hub_cache: Option<&Path>,
) -> Result<ModelParts, DiffusionError> {
    let stored = load_weights(&[file.to_path_buf()], None, device)?;
    let converted = ldm::convert_single_file(stored).map_err(|e| DiffusionError::Invalid {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let sdxl = converted.text_encoder_2_config.is_some();
    let Some(text_encoder) = converted.text_encoder_config else {
        return Err(DiffusionError::Invalid {
            path: file.to_path_buf(),
            message: "the checkpoint has no text encoder".into(),
        });
    };
    Ok(ModelParts {
        index: ModelIndex {
            class_name: None,
            force_zeros_for_empty_prompt: Some(sdxl),
            requires_aesthetics_score: Some(false),
        },
        unet: from_value(converted.unet_config, file, "unet")?,
        vae: from_value(converted.vae_config, file, "vae")?,
        text_encoder: from_value(text_encoder, file, "text encoder")?,
        text_encoder_2: match converted.text_encoder_2_config {
            Some(config) => Some(from_value(config, file, "second text encoder")?),
            None => None,
        },
        scheduler: from_value(converted.scheduler_config, file, "scheduler")?,
        tokenizer_dir: single_file_tokenizer(
            file,
            "tokenizer",
            "openai/clip-vit-large-patch14",
            hub_cache,
        )?,
        tokenizer_2_dir: if sdxl {
            Some(single_file_tokenizer(
                file,
                "tokenizer_2",
                "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
                hub_cache,
            )?)
        } else {
            None
        },
        weights: converted.weights,
    })
}
