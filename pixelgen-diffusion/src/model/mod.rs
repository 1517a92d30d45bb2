//! Finding a model and loading it: a diffusers folder, a Hugging Face cache snapshot, or a
//! single-file checkpoint. Only safetensors are read; pickle checkpoints are refused.
//!
//! The weight files are read in `weights`, a folder's or a single file's configs and
//! weights gathered in `parts`; this module builds [`LoadedModel`] for sampling from them,
//! and `training` builds [`TrainingBase`] for LoRA training.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::DiffusionError;
use super::clip::ClipTextModel;
use super::config::{ModelIndex, SchedulerConfig, VaeConfig};
use super::lora::{self, PipelineWeights, TensorMap, UnetLayout};
use super::tokenizer::ClipTokenizer;
use super::unet::{Unet, UnetShape};
use super::vae::{VaeDecoder, VaeEncoder};
use crate::files::ModelLocation;

mod parts;
#[cfg(test)]
mod tests;
mod training;
mod weights;

use parts::{folder_parts, single_file_parts};
pub use training::TrainingBase;
pub(crate) use weights::component_weights;
pub use weights::{load_weights, read_safetensors};

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, DiffusionError> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a valid config: {e}"),
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
    /// The VAE's encoder, for drawing from an image; `None` when the weights have none
    /// (a decoder-only VAE).
    pub(super) vae_encoder: Option<VaeEncoder>,
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
    /// A single file, which carries no tokenizer, takes the standard CLIP tokenizers from
    /// the Hugging Face cache `hub_cache` unless a `tokenizer/` folder lies beside it.
    pub fn load(
        location: &ModelLocation,
        loras: &[LoraFile],
        device: &Device,
        dtype: DType,
        hub_cache: Option<&Path>,
    ) -> Result<Self, DiffusionError> {
        // The VAE overflows in half precision (diffusers' `force_upcast`): it runs in f32.
        let vae_dtype = DType::F32;
        let parts = match location {
            ModelLocation::Folder(dir) => folder_parts(dir, dtype, vae_dtype, device)?,
            ModelLocation::SingleFile(file) => single_file_parts(file, device, hub_cache)?,
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
            lora::apply_lora(&mut weights, &layout, &lora.path, lora.weight)?;
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
        let vae_weights = builder(weights.vae, vae_dtype, device);
        let vae =
            VaeDecoder::new(vae_weights.clone(), &parts.vae, 3).map_err(in_component("vae"))?;
        // Loaded with the model (SD 1.5's: 34 M parameters, 137 MB in f32) so that img2img and
        // inpainting need no second load; a VAE without encoder weights can still decode.
        let vae_encoder = if vae_weights.contains_tensor("encoder.conv_in.weight") {
            Some(VaeEncoder::new(vae_weights, &parts.vae, 3).map_err(in_component("vae"))?)
        } else {
            None
        };
        Ok(Self {
            index: parts.index,
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            vae_encoder,
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
        self.vae_config.latent_channels
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
