//! A Stable Diffusion 1.5-architecture model with candle's own random init, for
//! benchmarks on a machine without Python (the `diffusion` bench's fallback, and the
//! `serve` bench of pixelgen-cli). Included with `#[path]` by both.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use pixelgen_build::generate::diffusion::clip::ClipTextModel;
use pixelgen_build::generate::diffusion::config::{ClipConfig, UnetConfig, VaeConfig};
use pixelgen_build::generate::diffusion::unet::Unet;

// SD1.5's configs, only for the fallback model: the peer writes the real model's.
const UNET_JSON: &str = r#"{"act_fn":"silu","attention_head_dim":8,"block_out_channels":[320,640,1280,1280],
 "center_input_sample":false,"cross_attention_dim":768,"down_block_types":["CrossAttnDownBlock2D",
 "CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],"downsample_padding":1,"flip_sin_to_cos":true,
 "freq_shift":0,"in_channels":4,"layers_per_block":2,"mid_block_scale_factor":1,"norm_eps":1e-05,
 "norm_num_groups":32,"out_channels":4,"sample_size":64,"up_block_types":["UpBlock2D","CrossAttnUpBlock2D",
 "CrossAttnUpBlock2D","CrossAttnUpBlock2D"]}"#;
const VAE_JSON: &str = r#"{"act_fn":"silu","block_out_channels":[128,256,512,512],"in_channels":3,
 "latent_channels":4,"layers_per_block":2,"norm_num_groups":32,"out_channels":3,"sample_size":512}"#;
const CLIP_JSON: &str = r#"{"architectures":["CLIPTextModel"],"eos_token_id":2,"hidden_act":"quick_gelu",
 "hidden_size":768,"intermediate_size":3072,"layer_norm_eps":1e-05,"max_position_embeddings":77,
 "num_attention_heads":12,"num_hidden_layers":12,"projection_dim":768,"vocab_size":49408}"#;
const SCHEDULER_JSON: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear",
 "beta_start":0.00085,"clip_sample":false,"num_train_timesteps":1000,"set_alpha_to_one":false,
 "skip_prk_steps":true,"steps_offset":1}"#;

/// Saves the variables a module created in `vars` as an fp16 safetensors file.
pub fn save_half(vars: &VarMap, path: &Path) {
    let data = vars.data().lock().expect("var map");
    let tensors: HashMap<String, Tensor> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.to_dtype(DType::F16).expect("f16")))
        .collect();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
    candle_core::safetensors::save(&tensors, path).expect("save weights");
}

/// An SD1.5-architecture model with candle's default random init (building each module
/// from an empty `VarMap` creates its weights). Only used when Python cannot make the
/// shared one, so diffusers never reads it.
pub fn make_candle_model(dir: &Path, tokenizer: &Path) {
    if dir.join("model_index.json").is_file() {
        return;
    }
    eprintln!(
        "bench: making a random SD1.5 model with candle in {}",
        dir.display()
    );
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let write = |path: &str, text: &str| {
        let path = partial.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        std::fs::write(path, text).expect("write config");
    };
    let builder = |vars: &VarMap| VarBuilder::from_varmap(vars, DType::F32, &Device::Cpu);

    let vars = VarMap::new();
    let config: UnetConfig = serde_json::from_str(UNET_JSON).expect("unet config");
    Unet::new(builder(&vars), &config).expect("unet");
    save_half(
        &vars,
        &partial.join("unet/diffusion_pytorch_model.safetensors"),
    );
    write("unet/config.json", UNET_JSON);

    let vars = VarMap::new();
    let config: VaeConfig = serde_json::from_str(VAE_JSON).expect("vae config");
    let vae_config = AutoEncoderKLConfig {
        block_out_channels: config.block_out_channels.clone(),
        layers_per_block: config.layers_per_block,
        latent_channels: config.latent_channels,
        norm_num_groups: config.norm_num_groups,
        use_quant_conv: config.use_quant_conv,
        use_post_quant_conv: config.use_post_quant_conv,
    };
    AutoEncoderKL::new(builder(&vars), 3, 3, vae_config).expect("vae");
    save_half(
        &vars,
        &partial.join("vae/diffusion_pytorch_model.safetensors"),
    );
    write("vae/config.json", VAE_JSON);

    let vars = VarMap::new();
    let config: ClipConfig = serde_json::from_str(CLIP_JSON).expect("clip config");
    ClipTextModel::new(builder(&vars), &config).expect("text encoder");
    save_half(&vars, &partial.join("text_encoder/model.safetensors"));
    write("text_encoder/config.json", CLIP_JSON);

    write("scheduler/scheduler_config.json", SCHEDULER_JSON);
    for file in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let to = partial.join("tokenizer").join(file);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("folder");
        std::fs::copy(tokenizer.join(file), to).expect("copy tokenizer");
    }
    // Written last: its presence marks the model complete.
    write(
        "model_index.json",
        r#"{"_class_name":"StableDiffusionPipeline"}"#,
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir).expect("move model into place");
}
