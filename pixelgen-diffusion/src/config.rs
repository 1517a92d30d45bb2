//! The model's own config files, as diffusers and transformers write them
//! (`unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
//! `scheduler/scheduler_config.json`, `model_index.json`). The architecture comes from
//! these, never from presets, so any SD1.x/2.x/XL-family model loads, tiny ones included.
//! Unknown fields are ignored (diffusers writes many that inference does not need);
//! fields that would change the computation in ways this code does not implement are
//! refused by the loaders with a message naming the field.

use serde::Deserialize;

/// A field that diffusers writes either as one value or as one value per UNet level.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerLevel<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    /// The value for each of `levels` levels; `None` when a list has the wrong length.
    pub fn expand(&self, levels: usize) -> Option<Vec<T>> {
        match self {
            PerLevel::One(value) => Some(vec![value.clone(); levels]),
            PerLevel::Each(values) if values.len() == levels => Some(values.clone()),
            PerLevel::Each(_) => None,
        }
    }
}

fn default_channels() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> PerLevel<usize> {
    PerLevel::One(1)
}
fn default_layers() -> PerLevel<usize> {
    PerLevel::One(2)
}
fn default_head_dim() -> PerLevel<usize> {
    PerLevel::One(8)
}
fn default_padding() -> usize {
    1
}
fn default_scale_factor() -> f64 {
    1.0
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".to_string())
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnetConfig {
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    /// Absent from a ControlNet's config (which has no up path).
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_layers")]
    pub layers_per_block: PerLevel<usize>,
    /// Despite the name, the number of heads when `num_attention_heads` is absent
    /// (a naming slip diffusers keeps for compatibility).
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: PerLevel<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel<usize>>,
    pub cross_attention_dim: PerLevel<usize>,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerLevel<usize>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_padding")]
    pub downsample_padding: usize,
    #[serde(default = "default_scale_factor")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_vae_layers")]
    pub layers_per_block: usize,
    #[serde(default = "default_channels")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_vae_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
}

fn default_vae_layers() -> usize {
    1
}
fn default_vae_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    /// How many image pixels one latent cell covers along each axis.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel[WithProjection]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// transformers picks the pooled token by argmax of the ids when this is 2 (its legacy
    /// default), and by the first end-of-text id otherwise.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".to_string()
}
fn default_eos() -> u32 {
    2
}

/// `scheduler/scheduler_config.json`: the noise schedule the model was trained with.
/// Which sampler runs is the sprite's choice; the schedule is the model's.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default)]
    pub steps_offset: usize,
    /// Absent means the sampler's own default, which differs between DDIM and Euler.
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default)]
    pub clip_sample_range: Option<f64>,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub interpolation_type: Option<String>,
    #[serde(default)]
    pub timestep_type: Option<String>,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".to_string()
}
fn default_prediction() -> String {
    "epsilon".to_string()
}

/// The facts of `model_index.json` that change what the pipeline computes.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// SDXL: an absent negative prompt conditions on zeros rather than on "".
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
    #[serde(default)]
    pub requires_aesthetics_score: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_level_fields_take_one_value_or_a_list() {
        let json = r#"{"block_out_channels":[320,640,1280],"down_block_types":["DownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D"],
            "up_block_types":["CrossAttnUpBlock2D","CrossAttnUpBlock2D","UpBlock2D"],"attention_head_dim":[5,10,20],
            "cross_attention_dim":2048,"transformer_layers_per_block":[1,2,10],"addition_embed_type":"text_time"}"#;
        let config: UnetConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.attention_head_dim.expand(3), Some(vec![5, 10, 20]));
        assert_eq!(config.cross_attention_dim.expand(3), Some(vec![2048; 3]));
        assert_eq!(config.transformer_layers_per_block.expand(2), None);
        assert_eq!(config.layers_per_block.expand(3), Some(vec![2; 3]));
        assert_eq!(config.norm_num_groups, 32);
    }

    #[test]
    fn vae_scale_factor_follows_its_levels() {
        let config: VaeConfig =
            serde_json::from_str(r#"{"block_out_channels":[128,256,512,512]}"#).unwrap();
        assert_eq!(config.scale_factor(), 8);
        assert_eq!(config.scaling_factor, 0.18215);
    }
}
