//! Finding a model and loading it: a diffusers folder, a Hugging Face cache snapshot, or a
//! single-file checkpoint. Only safetensors are read; pickle checkpoints are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
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
use crate::files::{LocateError, ModelLocation, hub_snapshot, is_pickle};

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

/// Reads one safetensors file into host memory, each tensor as stored.
pub fn read_safetensors(path: &Path) -> Result<TensorMap, DiffusionError> {
    load_weights(&[path.to_path_buf()], None, &Device::Cpu)
}

/// Reads the tensors of safetensors `files` straight into `dtype` (floating-point tensors;
/// others keep theirs) on `device`.
///
/// The files are memory-mapped and each tensor is copied once out of the map: on the CPU,
/// half-precision weights are widened to f32 on the way (F16C/SIMD through `half`, in
/// parallel); on a GPU they are uploaded as stored and converted there. Nothing is read
/// whole into memory first, so a model costs its loaded size, not that plus its files.
pub fn load_weights(
    files: &[PathBuf],
    dtype: Option<DType>,
    device: &Device,
) -> Result<TensorMap, DiffusionError> {
    let invalid = |message: String| DiffusionError::Invalid {
        path: files.first().cloned().unwrap_or_default(),
        message,
    };
    // SAFETY: the map is only read, and every tensor is copied out of it before it is
    // dropped at the end of this function. A file truncated by another process while
    // mapped would fault; pixelgen never writes model files, and their users replace
    // them by rename, which leaves this mapping intact.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
        .map_err(|e| invalid(format!("cannot read safetensors: {e}")))?;
    let views = mapped.tensors();
    let load_one = |(name, view): &(String, safetensors::tensor::TensorView<'_>)| {
        weight_from_view(view, dtype, device)
            .map(|tensor| (name.clone(), tensor))
            .map_err(|e| invalid(format!("tensor `{name}`: {e}")))
    };
    if device.is_cpu() {
        use rayon::prelude::*;
        views.par_iter().map(load_one).collect()
    } else {
        views.iter().map(load_one).collect()
    }
}

/// One tensor out of a mapped file, converted to `dtype` if it is floating point.
fn weight_from_view(
    view: &safetensors::tensor::TensorView<'_>,
    dtype: Option<DType>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    use safetensors::Dtype as Stored;
    let shape = view.shape();
    let stored = match view.dtype() {
        Stored::F16 => DType::F16,
        Stored::BF16 => DType::BF16,
        Stored::F32 => DType::F32,
        Stored::F64 => DType::F64,
        Stored::I64 => DType::I64,
        Stored::I32 => DType::I32,
        Stored::I16 => DType::I16,
        Stored::U32 => DType::U32,
        Stored::U8 => DType::U8,
        other => candle_core::bail!("stored as {other:?}, which pixelgen does not load"),
    };
    let target = match dtype {
        Some(target) if stored.is_float() => target,
        _ => stored,
    };
    if device.is_cpu() && target == DType::F32 && matches!(stored, DType::F16 | DType::BF16) {
        let widened = widen_to_f32(view.data(), stored);
        return Tensor::from_vec(widened, shape, device);
    }
    Tensor::from_raw_buffer(view.data(), stored, shape, device)?.to_dtype(target)
}

/// Little-endian f16 or bf16 bytes → f32, in parallel chunks (results do not depend on
/// the split: each value converts on its own).
fn widen_to_f32(bytes: &[u8], stored: DType) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let count = bytes.len() / 2;
    let mut out = vec![0f32; count];
    advise_huge_pages(&mut out);
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * 2))
        .for_each(|(dst, src)| {
            // SAFETY: every bit pattern is a valid u16; `align_to` only hands out the
            // aligned middle. Safetensors stores little-endian values, so the in-place
            // view is used only on little-endian machines.
            let (head, aligned, tail) = unsafe { src.align_to::<u16>() };
            let copied: Vec<u16>;
            let bits: &[u16] =
                if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
                    aligned
                } else {
                    copied = src
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    &copied
                };
            if stored == DType::BF16 {
                bits.reinterpret_cast::<half::bf16>()
                    .convert_to_f32_slice(dst);
            } else {
                bits.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(dst);
            }
        });
    out
}

/// Asks the kernel to back `buffer` with transparent huge pages before it is first
/// written. A freshly allocated multi-gigabyte buffer costs one page fault and one zeroed
/// page per 4 KiB on first touch; a profile of loading SD1.5 (2 GB fp16 → 4 GB f32) put
/// about 60% of the load in those faults (`clear_page_erms` alone 40%). With 2 MiB pages
/// the faults are 512 times fewer. Only a hint: where THP is off, nothing changes.
fn advise_huge_pages(buffer: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buffer);
        let first = start.next_multiple_of(HUGE);
        if end > first + HUGE {
            let length = (end - first) / HUGE * HUGE;
            // SAFETY: the range lies inside `buffer`, which this function borrows mutably;
            // MADV_HUGEPAGE changes no contents, only how the pages are backed.
            unsafe {
                libc::madvise(first as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

/// The weight files of one component folder: a safetensors file, or its shards listed by
/// an index, the plain weights first, else the fp16 variant (what `variant="fp16"` saves).
/// Pickle files are refused, not read.
fn component_files(dir: &Path) -> Result<Vec<PathBuf>, DiffusionError> {
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in ["", ".fp16"] {
            let file = dir.join(format!("{stem}{variant}.safetensors"));
            if file.is_file() {
                return Ok(vec![file]);
            }
            // diffusers names a variant's index `…safetensors.index.fp16.json`; some tools
            // write `….fp16.safetensors.index.json`.
            let index = [
                format!("{stem}.safetensors.index{variant}.json"),
                format!("{stem}{variant}.safetensors.index.json"),
            ]
            .into_iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file());
            if let Some(index) = index {
                let index: serde_json::Value = read_json(&index)?;
                let mut files: Vec<&str> = index
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                files.sort_unstable();
                files.dedup();
                // Shards live beside their index: a name that leaves the folder is refused.
                if let Some(bad) = files.iter().find(|shard| {
                    Path::new(shard).components().count() != 1 || !shard.ends_with(".safetensors")
                }) {
                    return Err(DiffusionError::Invalid {
                        path: dir.to_path_buf(),
                        message: format!(
                            "the weight index names `{bad}`, which is not a .safetensors file in this folder"
                        ),
                    });
                }
                if files.is_empty() {
                    return Err(DiffusionError::Invalid {
                        path: dir.to_path_buf(),
                        message: "the weight index has an empty weight_map".into(),
                    });
                }
                return Ok(files.into_iter().map(|shard| dir.join(shard)).collect());
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

/// The weights of one component folder, loaded in `dtype` on `device`.
fn component_weights(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<TensorMap, DiffusionError> {
    load_weights(&component_files(dir)?, Some(dtype), device)
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

/// A diffusers folder's configs, and its weights already in their final dtype on `device`
/// (the VAE's in `vae_dtype`).
fn folder_parts(
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
fn single_file_parts(
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

/// What LoRA training needs of a base model: the frozen UNet (weights in f32, and its
/// config), the noise schedule it was trained with, and the text and VAE encoders that turn
/// captions and images into its inputs. SD 1.x, 2.x and XL (two text encoders, whose
/// penultimate hidden states condition the UNet side by side, with the second's pooled
/// output and the image's size as SDXL's added conditioning).
pub struct TrainingBase {
    pub unet_config: UnetConfig,
    /// In the training's compute dtype (f32, or bf16 for mixed precision), on the training
    /// device; the LoRA factors are f32 either way.
    pub unet_weights: TensorMap,
    pub scheduler: SchedulerConfig,
    pub vae_config: VaeConfig,
    /// The text encoder's config and f32 weights (`text_model.*`), for training it along.
    pub text_config: ClipConfig,
    pub text_weights: TensorMap,
    /// SDXL's second text encoder's config and f32 weights (`text_model.*`,
    /// `text_projection.*`), for training it along.
    pub text_2: Option<(ClipConfig, TensorMap)>,
    vae: super::vae::VaeEncoder,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and text encoder (OpenCLIP bigG, with its projection).
    second: Option<(ClipTokenizer, ClipTextModel)>,
    device: Device,
}

impl TrainingBase {
    /// Loads the model for training with the UNet computing in `dtype` (f32; bf16 or f16
    /// for mixed precision); the text and VAE encoders, which run once per image, in f32.
    pub fn load(
        location: &ModelLocation,
        device: &Device,
        dtype: DType,
        hub_cache: Option<&Path>,
    ) -> Result<Self, DiffusionError> {
        let parts = match location {
            ModelLocation::Folder(dir) => folder_parts(dir, DType::F32, DType::F32, device)?,
            ModelLocation::SingleFile(file) => single_file_parts(file, device, hub_cache)?,
        };
        let invalid = |message: String| DiffusionError::Invalid {
            path: location.path().to_path_buf(),
            message,
        };
        let weights = parts.weights;
        let second = match (
            &parts.text_encoder_2,
            weights.text_encoder_2,
            &parts.tokenizer_2_dir,
        ) {
            (None, _, _) => None,
            (Some(config), Some(map), Some(dir)) => {
                let tokenizer = ClipTokenizer::from_dir(dir).map_err(invalid)?;
                let weights = to_dtype(map, DType::F32)?;
                let encoder =
                    ClipTextModel::new(builder(weights.clone(), DType::F32, device), config)
                        .map_err(|e| invalid(format!("second text encoder: {e}")))?;
                Some((tokenizer, encoder, config.clone(), weights))
            }
            _ => {
                return Err(invalid(
                    "the model names a second text encoder but its weights or tokenizer are missing".into(),
                ));
            }
        };
        let tokenizer = ClipTokenizer::from_dir(&parts.tokenizer_dir).map_err(invalid)?;
        let text_weights = to_dtype(weights.text_encoder.unwrap_or_default(), DType::F32)?;
        let text_encoder = ClipTextModel::new(
            builder(text_weights.clone(), DType::F32, device),
            &parts.text_encoder,
        )
        .map_err(|e| invalid(format!("text encoder: {e}")))?;
        let vae = super::vae::VaeEncoder::new(
            builder(to_dtype(weights.vae, DType::F32)?, DType::F32, device),
            &parts.vae,
            3,
        )
        .map_err(|e| invalid(format!("vae encoder: {e}")))?;
        Ok(TrainingBase {
            unet_config: parts.unet,
            unet_weights: to_dtype(weights.unet, dtype)?,
            scheduler: parts.scheduler,
            vae_config: parts.vae,
            text_config: parts.text_encoder,
            text_weights,
            vae,
            tokenizer,
            text_encoder,
            text_2: second
                .as_ref()
                .map(|(_, _, config, weights)| (config.clone(), weights.clone())),
            second: second.map(|(tokenizer, encoder, _, _)| (tokenizer, encoder)),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `sd1`, `sd2` (SD 2.x's text encoder is OpenCLIP's, 1024 wide) or `sdxl`.
    pub fn family(&self) -> &'static str {
        if self.second.is_some() {
            return "sdxl";
        }
        let width = match &self.unet_config.cross_attention_dim {
            crate::config::PerLevel::One(width) => Some(*width),
            crate::config::PerLevel::Each(widths) => widths.first().copied(),
        };
        if width == Some(1024) { "sd2" } else { "sd1" }
    }

    /// How many image pixels one latent cell covers.
    pub fn latent_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// One training example: `image` (`[3, h, w]`, values in [-1, 1]) encoded with
    /// `noise` (see [`encode_image`](Self::encode_image)), and `caption` run once through
    /// each text encoder. The context is the text encoder's last hidden state, or for SDXL
    /// both encoders' penultimate ones side by side, with SDXL's added conditioning: the
    /// second encoder's pooled projection and the time ids (original size, crop top-left
    /// (0, 0) — images are padded, never cropped — and target size), as diffusers' SDXL
    /// training script's `encode_prompt` and `compute_time_ids`. The token ids are kept
    /// for training the text encoders.
    pub fn example(
        &self,
        image: &Tensor,
        noise: &Tensor,
        caption: &str,
    ) -> Result<super::train::Example, DiffusionError> {
        let compute = |e: candle_core::Error| DiffusionError::Compute {
            what: "text encoder",
            message: e.to_string(),
        };
        let latents = self.encode_image(image, noise)?;
        let tokens = self
            .tokenizer
            .encode(caption)
            .map_err(DiffusionError::Request)?;
        let first = self
            .text_encoder
            .forward(std::slice::from_ref(&tokens), &self.device)
            .map_err(compute)?;
        let Some((tokenizer, encoder)) = &self.second else {
            return Ok(super::train::Example {
                latents,
                context: first.last_hidden_state.get(0).map_err(compute)?,
                tokens,
                tokens_2: Vec::new(),
                added: None,
            });
        };
        let tokens_2 = tokenizer.encode(caption).map_err(DiffusionError::Request)?;
        let second = encoder
            .forward(std::slice::from_ref(&tokens_2), &self.device)
            .map_err(compute)?;
        let context = Tensor::cat(
            &[
                &first.penultimate_hidden_state,
                &second.penultimate_hidden_state,
            ],
            candle_core::D::Minus1,
        )
        .and_then(|t| t.get(0))
        .map_err(compute)?;
        let (_, height, width) = image.dims3().map_err(compute)?;
        let (h, w) = (height as f32, width as f32);
        let time_ids =
            Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], 6, &self.device).map_err(compute)?;
        Ok(super::train::Example {
            latents,
            context,
            tokens,
            tokens_2,
            added: Some(super::unet::AddedConditioning {
                text_embeds: second.pooled.get(0).map_err(compute)?,
                time_ids,
            }),
        })
    }

    /// An image (`[3, h, w]`, values in [-1, 1]) to the latents training denoises: a
    /// sample of the VAE's latent distribution with `noise` (`[channels, h/f, w/f]`),
    /// times the VAE's scaling factor.
    pub fn encode_image(&self, image: &Tensor, noise: &Tensor) -> Result<Tensor, DiffusionError> {
        let compute = |e: candle_core::Error| DiffusionError::Compute {
            what: "vae encoder",
            message: e.to_string(),
        };
        let distribution = self
            .vae
            .encode(&image.unsqueeze(0).map_err(compute)?)
            .map_err(compute)?;
        (distribution
            .sample(&noise.unsqueeze(0).map_err(compute)?)
            .map_err(compute)?
            * self.vae_config.scaling_factor)
            .and_then(|t| t.get(0))
            .map_err(compute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diffusion")
            .join(path)
    }

    /// The memory-mapped loader gives exactly what reading the file whole and converting
    /// with candle gives, for every tensor, in the stored dtype and widened to f32.
    #[test]
    fn mapped_weights_equal_candles_own_loading() {
        let file = fixture("sd1/model/unet/diffusion_pytorch_model.safetensors");
        let reference = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        for dtype in [None, Some(DType::F32), Some(DType::BF16)] {
            let loaded = load_weights(std::slice::from_ref(&file), dtype, &Device::Cpu).unwrap();
            assert_eq!(loaded.len(), reference.len());
            for (name, expected) in &reference {
                let expected = match dtype {
                    Some(d) => expected.to_dtype(d).unwrap(),
                    None => expected.clone(),
                };
                let got = &loaded[name];
                assert_eq!(got.dtype(), expected.dtype(), "{name}");
                assert_eq!(got.dims(), expected.dims(), "{name}");
                let bits = |t: &Tensor| {
                    t.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                        .into_iter()
                        .map(f64::to_bits)
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(got), bits(&expected), "{name} as {dtype:?}");
            }
        }
    }

    /// Widening matches `half`'s scalar conversion for every f16 and bf16 bit pattern
    /// (NaN payloads, infinities, subnormals, both zeros), across chunk boundaries.
    #[test]
    fn widening_is_exact_for_every_half_value() {
        let bytes: Vec<u8> = (0..=u16::MAX)
            .chain(0..=u16::MAX)
            .flat_map(u16::to_le_bytes)
            .collect();
        // The same values one byte off their alignment, as a file may store them.
        let shifted: Vec<u8> = std::iter::once(0).chain(bytes.iter().copied()).collect();
        let widened = widen_to_f32(&bytes, DType::F16);
        let widened_bf = widen_to_f32(&bytes, DType::BF16);
        assert_eq!(
            widen_to_f32(&shifted[1..], DType::F16)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            widened.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let bits = u16::from_le_bytes([pair[0], pair[1]]);
            let f = half::f16::from_bits(bits).to_f32();
            let b = half::bf16::from_bits(bits).to_f32();
            assert!(
                widened[i].to_bits() == f.to_bits() || (f.is_nan() && widened[i].is_nan()),
                "f16 {bits:#06x}"
            );
            assert!(
                widened_bf[i].to_bits() == b.to_bits() || (b.is_nan() && widened_bf[i].is_nan()),
                "bf16 {bits:#06x}"
            );
        }
    }

    #[test]
    fn a_weight_index_naming_files_outside_its_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for shard in ["../secret.safetensors", "/etc/passwd", "weights.bin"] {
            let index = serde_json::json!({ "weight_map": { "conv.weight": shard } });
            std::fs::write(
                dir.path().join("model.safetensors.index.json"),
                index.to_string(),
            )
            .unwrap();
            let error = component_files(dir.path()).unwrap_err().to_string();
            assert!(error.contains(&format!("names `{shard}`")), "{error}");
        }
    }

    #[test]
    fn a_file_that_is_not_safetensors_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unet.safetensors");
        std::fs::write(&file, b"not a safetensors file").unwrap();
        let error = load_weights(std::slice::from_ref(&file), Some(DType::F32), &Device::Cpu)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}
