//! The base model LoRA training starts from: the frozen UNet's weights and config, and the
//! text and VAE encoders that turn captions and images into training examples.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::parts::{folder_parts, single_file_parts};
use super::{builder, to_dtype};
use crate::DiffusionError;
use crate::clip::ClipTextModel;
use crate::config::{ClipConfig, SchedulerConfig, UnetConfig, VaeConfig};
use crate::files::ModelLocation;
use crate::lora::TensorMap;
use crate::tokenizer::ClipTokenizer;

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
    vae: crate::vae::VaeEncoder,
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
        let vae = crate::vae::VaeEncoder::new(
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
    ) -> Result<crate::train::Example, DiffusionError> {
        let compute = |source| DiffusionError::Compute {
            what: "text encoder",
            source: Box::new(source),
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
            return Ok(crate::train::Example {
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
        Ok(crate::train::Example {
            latents,
            context,
            tokens,
            tokens_2,
            added: Some(crate::unet::AddedConditioning {
                text_embeds: second.pooled.get(0).map_err(compute)?,
                time_ids,
            }),
        })
    }

    /// An image (`[3, h, w]`, values in [-1, 1]) to the latents training denoises: a
    /// sample of the VAE's latent distribution with `noise` (`[channels, h/f, w/f]`),
    /// times the VAE's scaling factor.
    pub fn encode_image(&self, image: &Tensor, noise: &Tensor) -> Result<Tensor, DiffusionError> {
        let compute = |source| DiffusionError::Compute {
            what: "vae encoder",
            source: Box::new(source),
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
