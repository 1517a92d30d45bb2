//! Finding a model and loading it: a diffusers folder, a Hugging Face cache snapshot, or a
//! single-file checkpoint. Only safetensors are read; pickle checkpoints are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::DiffusionError;
use super::clip::ClipTextModel;
use super::config::{ClipConfig, ModelIndex, SchedulerConfig, UnetConfig, VaeConfig};
use super::ldm;
use super::lora::{self, PipelineWeights, TensorMap, UnetLayout};
use super::tokenizer::ClipTokenizer;
use super::unet::{Unet, UnetShape};
use super::vae::VaeDecoder;
use crate::generate::model_files::{
    LocateError, ModelLocation, hub_cache_dir, hub_snapshot, is_pickle,
};

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, DiffusionError> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a valid config: {e}"),
    })
}

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

/// Reads one safetensors file into host memory.
pub fn read_safetensors(path: &Path) -> Result<TensorMap, DiffusionError> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("cannot read safetensors: {e}"),
    })
}

/// The weights of one component folder: a (possibly fp16-variant or sharded) safetensors
/// file. Pickle files are refused, not read.
fn component_weights(dir: &Path) -> Result<TensorMap, DiffusionError> {
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in ["", ".fp16"] {
            let file = dir.join(format!("{stem}{variant}.safetensors"));
            if file.is_file() {
                return read_safetensors(&file);
            }
            let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                let index: serde_json::Value = read_json(&index)?;
                let mut files: Vec<&str> = index
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                files.sort_unstable();
                files.dedup();
                let mut all = TensorMap::new();
                for shard in files {
                    all.extend(read_safetensors(&dir.join(shard))?);
                }
                return Ok(all);
            }
        }
    }
    let pickle = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| is_pickle(p))
    });
    match pickle {
        Some(path) => Err(LocateError::Pickle { path }.into()),
        None => Err(DiffusionError::Invalid {
            path: dir.to_path_buf(),
            message: "no .safetensors weights in this folder".into(),
        }),
    }
}

/// transformers ≥ 5.6 saves CLIP text models without the `text_model.` prefix that every
/// earlier checkpoint has; both load.
fn with_text_model_prefix(map: TensorMap) -> TensorMap {
    if map.keys().any(|k| k.starts_with("text_model.")) {
        return map;
    }
    map.into_iter()
        .map(|(name, tensor)| {
            let prefixed = ["embeddings.", "encoder.", "final_layer_norm."]
                .iter()
                .any(|p| name.starts_with(p));
            (
                if prefixed {
                    format!("text_model.{name}")
                } else {
                    name
                },
                tensor,
            )
        })
        .collect()
}

/// The parts of a model before its modules are built: configs and weights.
struct ModelParts {
    index: ModelIndex,
    unet: UnetConfig,
    vae: VaeConfig,
    text_encoder: ClipConfig,
    text_encoder_2: Option<ClipConfig>,
    scheduler: SchedulerConfig,
    tokenizer_dir: PathBuf,
    tokenizer_2_dir: Option<PathBuf>,
    weights: PipelineWeights,
}

fn folder_parts(dir: &Path) -> Result<ModelParts, DiffusionError> {
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
            unet: component_weights(&dir.join("unet"))?,
            vae: component_weights(&dir.join("vae"))?,
            text_encoder: Some(with_text_model_prefix(component_weights(
                &dir.join("text_encoder"),
            )?)),
            text_encoder_2: if has_second {
                Some(with_text_model_prefix(component_weights(
                    &dir.join("text_encoder_2"),
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
fn single_file_tokenizer(file: &Path, folder: &str, repo: &str) -> Result<PathBuf, DiffusionError> {
    let beside = file.parent().unwrap_or(Path::new(".")).join(folder);
    if beside.join("vocab.json").is_file() {
        return Ok(beside);
    }
    if let Some(snapshot) = hub_cache_dir().and_then(|cache| hub_snapshot(&cache, repo)) {
        let dir = if snapshot.join("vocab.json").is_file() {
            snapshot
        } else {
            snapshot.join("tokenizer")
        };
        if dir.join("vocab.json").is_file() {
            return Ok(dir);
        }
    }
    Err(DiffusionError::Invalid {
        path: file.to_path_buf(),
        message: format!(
            "a single-file checkpoint carries no tokenizer: put the model's `{folder}/` folder (vocab.json, merges.txt) beside it, or download `{repo}` into the Hugging Face cache"
        ),
    })
}

fn single_file_parts(file: &Path) -> Result<ModelParts, DiffusionError> {
    let converted =
        ldm::convert_single_file(read_safetensors(file)?).map_err(|e| DiffusionError::Invalid {
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
        tokenizer_dir: single_file_tokenizer(file, "tokenizer", "openai/clip-vit-large-patch14")?,
        tokenizer_2_dir: if sdxl {
            Some(single_file_tokenizer(
                file,
                "tokenizer_2",
                "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
            )?)
        } else {
            None
        },
        weights: converted.weights,
    })
}

/// A LoRA file and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub path: PathBuf,
    pub weight: f64,
}

/// A model loaded on a device, LoRAs merged, ready to sample.
pub struct LoadedModel {
    pub(super) index: ModelIndex,
    pub(super) tokenizer: ClipTokenizer,
    pub(super) tokenizer_2: Option<ClipTokenizer>,
    pub(super) text_encoder: ClipTextModel,
    pub(super) text_encoder_2: Option<ClipTextModel>,
    pub(super) unet: Unet,
    pub(super) vae: VaeDecoder,
    pub(super) vae_config: VaeConfig,
    pub(super) vae_dtype: DType,
    pub(super) scheduler: SchedulerConfig,
    pub(super) device: Device,
    pub(super) dtype: DType,
}

fn compute_error(what: &'static str) -> impl Fn(candle_core::Error) -> DiffusionError {
    move |e| DiffusionError::Invalid {
        path: PathBuf::from(what),
        message: e.to_string(),
    }
}

fn to_dtype(map: TensorMap, dtype: DType) -> Result<TensorMap, DiffusionError> {
    map.into_iter()
        .map(|(name, tensor)| {
            let tensor = if tensor.dtype().is_float() {
                tensor.to_dtype(dtype)
            } else {
                Ok(tensor)
            };
            tensor.map(|t| (name, t))
        })
        .collect::<candle_core::Result<HashMap<_, _>>>()
        .map_err(compute_error("weights"))
}

fn builder(map: TensorMap, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_tensors(map, dtype, device)
}

impl LoadedModel {
    /// Loads the model at `location` onto `device` in `dtype`, merging `loras` in order.
    pub fn load(
        location: &ModelLocation,
        loras: &[LoraFile],
        device: &Device,
        dtype: DType,
    ) -> Result<Self, DiffusionError> {
        let parts = match location {
            ModelLocation::Folder(dir) => folder_parts(dir)?,
            ModelLocation::SingleFile(file) => single_file_parts(file)?,
        };
        let in_component = |component: &'static str| {
            move |e: candle_core::Error| DiffusionError::Invalid {
                path: match location {
                    ModelLocation::Folder(dir) => dir.join(component),
                    ModelLocation::SingleFile(file) => file.clone(),
                },
                message: e.to_string(),
            }
        };
        let shape = UnetShape::of(&parts.unet).map_err(in_component("unet"))?;
        let mut weights = PipelineWeights {
            unet: to_dtype(parts.weights.unet, dtype)?,
            vae: parts.weights.vae,
            text_encoder: parts
                .weights
                .text_encoder
                .map(|m| to_dtype(m, dtype))
                .transpose()?,
            text_encoder_2: parts
                .weights
                .text_encoder_2
                .map(|m| to_dtype(m, dtype))
                .transpose()?,
        };
        let layout = UnetLayout {
            layers_per_block: shape.layers_per_block.first().copied().unwrap_or(2),
            down_has_attention: shape.has_attention.clone(),
        };
        for lora in loras {
            lora::apply_lora(&mut weights, &layout, &lora.path, lora.weight)
                .map_err(|e| DiffusionError::Lora(e.to_string()))?;
        }

        let tokenizer = ClipTokenizer::from_dir(&parts.tokenizer_dir).map_err(|message| {
            DiffusionError::Invalid {
                path: parts.tokenizer_dir.clone(),
                message,
            }
        })?;
        let tokenizer_2 =
            match &parts.tokenizer_2_dir {
                Some(dir) => Some(ClipTokenizer::from_dir(dir).map_err(|message| {
                    DiffusionError::Invalid {
                        path: dir.clone(),
                        message,
                    }
                })?),
                None => None,
            };
        let text_encoder = ClipTextModel::new(
            builder(weights.text_encoder.unwrap_or_default(), dtype, device),
            &parts.text_encoder,
        )
        .map_err(in_component("text_encoder"))?;
        let text_encoder_2 = match (weights.text_encoder_2, &parts.text_encoder_2) {
            (Some(map), Some(config)) => Some(
                ClipTextModel::new(builder(map, dtype, device), config)
                    .map_err(in_component("text_encoder_2"))?,
            ),
            _ => None,
        };
        let unet = Unet::new(builder(weights.unet, dtype, device), &parts.unet)
            .map_err(in_component("unet"))?;
        // The VAE overflows in half precision (diffusers' `force_upcast`): it runs in f32.
        let vae_dtype = DType::F32;
        let vae = VaeDecoder::new(builder(weights.vae, vae_dtype, device), &parts.vae, 3)
            .map_err(in_component("vae"))?;
        Ok(Self {
            index: parts.index,
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            vae_config: parts.vae,
            vae_dtype,
            scheduler: parts.scheduler,
            device: device.clone(),
            dtype,
        })
    }

    /// The image size the model was trained at (UNet sample size × VAE factor).
    pub fn default_resolution(&self) -> Option<usize> {
        self.unet
            .shape()
            .sample_size
            .map(|s| s * self.vae_config.scale_factor())
    }

    /// How many image pixels one latent cell covers.
    pub fn latent_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.unet.shape().in_channels
    }

    /// The denoising UNet (for benchmarks and checks of single steps).
    pub fn unet(&self) -> &Unet {
        &self.unet
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
