//! The trained factors written as a kohya-ss LoRA file, with kohya's `ss_*` metadata.

use candle_core::{DType, Device, Tensor, Var};

use super::LoraAdapters;
use super::checkpoint::write_safetensors;

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
