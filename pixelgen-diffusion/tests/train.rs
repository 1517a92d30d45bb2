//! One LoRA training step against PyTorch/peft: the same weights, factors, latents, noise,
//! timesteps and text hidden states (`fixtures/train/make_train_step.py`, written like
//! diffusers' `train_text_to_image_lora.py`) give the same loss (relative error ≤ 1e-4)
//! and the same gradient for every factor (max error ≤ 1e-3 of the largest entry).
//!
//! One test binary (`train`): the one-step comparisons with PyTorch are in `train/step.rs`,
//! whole training runs (the loss falls, a resumed run ends where an uninterrupted one does)
//! in `train/runs.rs`, the helpers they share in `train/common.rs`; the VAE encoder and the
//! kohya file are checked here.
#![cfg(feature = "backend")]

use candle_core::Device;
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::train::LoraAdapters;

#[path = "train/common.rs"]
mod common;
#[path = "train/runs.rs"]
mod runs;
#[path = "train/step.rs"]
mod step;

use common::*;

/// The VAE encoder (which turns training images into latents) against diffusers'
/// `AutoencoderKL.encode` on the same image: mean and log variance within 1e-4 of the
/// largest value.
#[test]
fn the_vae_encoder_matches_diffusers() {
    use pixelgen_diffusion::config::VaeConfig;
    use pixelgen_diffusion::vae::VaeEncoder;
    for family in ["sd1", "sd2v", "sdxl"] {
        let expected = candle_core::safetensors::load(
            fixtures().join(format!("train/{family}_encode.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let model = fixtures().join(format!("diffusion/{family}/model"));
        let config: VaeConfig = json(&model.join("vae/config.json"));
        let weights = candle_core::safetensors::load(
            model.join("vae/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let vb =
            candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, &Device::Cpu);
        let encoder = VaeEncoder::new(vb, &config, 3).unwrap();
        let encoded = encoder.encode(&expected["image"]).unwrap();
        for (name, got) in [
            ("mean", &encoded.mean),
            ("log_variance", &encoded.log_variance),
        ] {
            let reference = &expected[name];
            assert_eq!(got.dims(), reference.dims(), "{family}: {name}");
            let error = max_abs(&(got - reference).unwrap()) / max_abs(reference).max(1e-12);
            eprintln!("{family}: VAE encoder {name}: relative max error {error:.2e}");
            assert!(
                error <= 1e-4,
                "{family}: {name}: relative max error {error:.2e}"
            );
        }
    }
}

/// Trained factors saved as a kohya-ss file load back through pixelgen's LoRA loader onto
/// exactly the weights training adapted: `W + alpha/rank · up · down`, with kohya's metadata.
#[test]
fn a_saved_kohya_file_merges_into_the_weights_it_was_trained_on() {
    use pixelgen_diffusion::lora::{PipelineWeights, apply_lora};
    use pixelgen_diffusion::sgm::UnetLayout;
    use pixelgen_diffusion::train::KohyaMetadata;

    let step =
        candle_core::safetensors::load(fixtures().join("train/sd1_step.safetensors"), &Device::Cpu)
            .unwrap();
    let adapters = LoraAdapters::from_peft(&with_prefix(&step, "factor."), "", 8.0).unwrap();
    let model = fixtures().join("diffusion/sd1/model");
    let frozen: TensorMap = candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("style.safetensors");
    let metadata = KohyaMetadata {
        base_model: "sd1-tiny".into(),
        family: "sd1".into(),
        resolution: (64, 64),
        steps: 200,
        learning_rate: 1e-4,
        images: 4,
        seed: 7,
        v_prediction: false,
    };
    adapters.save_kohya(&[], &path, &metadata).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );

    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = header.metadata().clone().unwrap();
    assert_eq!(header["ss_network_dim"], "4");
    assert_eq!(header["ss_network_alpha"], "8");
    assert_eq!(header["ss_resolution"], "(64, 64)");
    assert_eq!(header["ss_network_module"], "networks.lora");

    let config: serde_json::Value = json(&model.join("unet/config.json"));
    let layout = UnetLayout::from_unet_config(&config).unwrap();
    let mut weights = PipelineWeights {
        unet: frozen.clone(),
        text_encoder: None,
        text_encoder_2: None,
        vae: TensorMap::new(),
    };
    let report = apply_lora(&mut weights, &layout, &path, 1.0).unwrap();
    assert_eq!(report.modules, adapters.modules().count());
    for (module, adapter) in adapters.modules() {
        let name = format!("{module}.weight");
        // The fixture's weights are f16: the merge is computed in f32 and stored in f16.
        let f32 = candle_core::DType::F32;
        let weight = &frozen[&name];
        let expected = (weight.to_dtype(f32).unwrap()
            + (adapter
                .up
                .as_tensor()
                .matmul(adapter.down.as_tensor())
                .unwrap()
                * adapters.scale())
            .unwrap())
        .unwrap()
        .to_dtype(weight.dtype())
        .unwrap()
        .to_dtype(f32)
        .unwrap();
        let merged = weights.unet[&name].to_dtype(f32).unwrap();
        let error = max_abs(&(&merged - &expected).unwrap());
        assert!(error <= 1e-6, "{name}: merged weight off by {error}");
    }
}
