//! One training step against PyTorch/peft: the UNet alone (attention, and with LoCon the
//! convolutions), with the text encoder trained too, SDXL with both text encoders, and in f16
//! mixed precision.

use candle_core::{Device, Tensor};
use pixelgen_diffusion::config::{SchedulerConfig, UnetConfig};
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::train::{LoraAdapters, NoiseSchedule};
use pixelgen_diffusion::unet::{AddedConditioning, Unet};

use super::common::*;

#[test]
fn one_training_step_matches_pytorch_peft() {
    // The attention projections, and with them the resnets' convolutions (LoCon).
    for (family, variant) in [
        ("sd1", ""),
        ("sd2v", ""),
        ("sdxl", ""),
        ("sd1", "_conv"),
        ("sd2v", "_conv"),
        ("sdxl", "_conv"),
    ] {
        let step_path = fixtures().join(format!("train/{family}_step{variant}.safetensors"));
        let step = candle_core::safetensors::load(&step_path, &Device::Cpu).unwrap();
        let bytes = std::fs::read(&step_path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = header.metadata().clone().unwrap();
        let alpha: f64 = metadata["alpha"].parse().unwrap();

        let model = fixtures().join(format!("diffusion/{family}/model"));
        let config: UnetConfig = json(&model.join("unet/config.json"));
        let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
        assert_eq!(scheduler.prediction_type, metadata["prediction_type"]);
        let frozen: TensorMap = candle_core::safetensors::load(
            model.join("unet/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();

        let factors = with_prefix(&step, "factor.");
        let adapters = LoraAdapters::from_peft(&factors, "", alpha).unwrap();
        assert_eq!(adapters.modules().count() * 2, factors.len());
        let unet = Unet::new(adapters.weights(&frozen, &Device::Cpu).unwrap(), &config).unwrap();
        let schedule = NoiseSchedule::new(&scheduler).unwrap();
        let label = format!("{family}{variant}");
        // SDXL: the pooled text embedding and the time ids, as the script computed them.
        let added = step
            .get("text_embeds")
            .map(|text_embeds| AddedConditioning {
                text_embeds: text_embeds.clone(),
                time_ids: step["time_ids"].clone(),
            });
        assert_eq!(added.is_some(), family == "sdxl");
        let loss = schedule
            .loss(
                &unet,
                &step["latents"],
                &step["noise"],
                &timesteps_of(&step),
                &step["encoder_hidden_states"],
                added.as_ref(),
            )
            .unwrap();
        check_loss(&label, &loss, &step);
        let grads = loss.backward().unwrap();
        let (worst, name) = check_gradients(&label, &grads, &adapters, &step, "grad.", "");
        eprintln!(
            "{label}: {} factor gradients, worst relative max error {worst:.2e} ({name})",
            adapters.modules().count() * 2
        );
    }
}

/// With the text encoder trained too (LoRA on its attention projections, as diffusers'
/// DreamBooth LoRA script's `--train_text_encoder`): one step gives PyTorch/peft's loss and
/// the gradients of the UNet's and the text encoder's factors.
#[test]
fn one_step_with_the_text_encoder_matches_pytorch_peft() {
    use pixelgen_diffusion::clip::ClipTextModel;
    use pixelgen_diffusion::config::ClipConfig;
    for family in ["sd1", "sd2v"] {
        let step = candle_core::safetensors::load(
            fixtures().join(format!("train/{family}_step_text.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let model = fixtures().join(format!("diffusion/{family}/model"));
        let config: UnetConfig = json(&model.join("unet/config.json"));
        let clip_config: ClipConfig = json(&model.join("text_encoder/config.json"));
        let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
        let load = |path: &str| -> TensorMap {
            candle_core::safetensors::load(model.join(path), &Device::Cpu).unwrap()
        };
        let (unet_frozen, text_frozen) = (
            load("unet/diffusion_pytorch_model.safetensors"),
            prefixed(load("text_encoder/model.safetensors")),
        );
        let unet_adapters =
            LoraAdapters::from_peft(&with_prefix(&step, "factor."), "", 8.0).unwrap();
        let text_factors = with_prefix(&step, "text_factor.");
        let text_adapters =
            LoraAdapters::from_peft(&prefixed(text_factors.clone()), "", 8.0).unwrap();
        assert_eq!(text_adapters.modules().count(), text_factors.len() / 2);

        let text_encoder = ClipTextModel::new(
            text_adapters.weights(&text_frozen, &Device::Cpu).unwrap(),
            &clip_config,
        )
        .unwrap();
        let ids = token_ids(&step, "input_ids");
        let context = text_encoder
            .forward(&ids, &Device::Cpu)
            .unwrap()
            .last_hidden_state;
        let hidden_error = max_abs(&(&context - &step["encoder_hidden_states"]).unwrap());
        assert!(
            hidden_error <= 1e-4,
            "{family}: hidden states off by {hidden_error}"
        );

        let unet = Unet::new(
            unet_adapters.weights(&unet_frozen, &Device::Cpu).unwrap(),
            &config,
        )
        .unwrap();
        let loss = NoiseSchedule::new(&scheduler)
            .unwrap()
            .loss(
                &unet,
                &step["latents"],
                &step["noise"],
                &timesteps_of(&step),
                &context,
                None,
            )
            .unwrap();
        let label = format!("{family} with the text encoder");
        check_loss(&label, &loss, &step);
        let grads = loss.backward().unwrap();
        let (unet_worst, _) = check_gradients(&label, &grads, &unet_adapters, &step, "grad.", "");
        let (text_worst, _) = check_gradients(
            &label,
            &grads,
            &text_adapters,
            &step,
            "text_grad.",
            "text_model.",
        );
        eprintln!("{label}: worst gradient {:.2e}", unet_worst.max(text_worst));
    }
}

/// Mixed precision: the frozen UNet in f16 with f32 factors (as training runs with
/// `PIXELGEN_DTYPE=f16`; bf16 takes the same path on a GPU, but candle's CPU matmul has no
/// bf16), the loss scaled by 65536 as the f16 scaler does. Against PyTorch's f32 step, the
/// loss and every factor's gradient are off by no more than PyTorch's own f16 mixed
/// precision step is (`FAMILY_step_f16.safetensors`, diffusers' `--mixed_precision fp16`
/// recipe): per factor at most three times its error (or 1% of the largest gradient),
/// over all factors at most twice its worst; and the gradients arrive in f32 through
/// the cast.
#[test]
fn a_mixed_precision_step_is_as_close_to_f32_as_pytorchs() {
    use candle_core::DType;
    for family in ["sd1", "sdxl"] {
        let step_path = fixtures().join(format!("train/{family}_step.safetensors"));
        let step = candle_core::safetensors::load(&step_path, &Device::Cpu).unwrap();
        let half = candle_core::safetensors::load(
            fixtures().join(format!("train/{family}_step_f16.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let bytes = std::fs::read(&step_path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let alpha: f64 = header.metadata().clone().unwrap()["alpha"].parse().unwrap();
        let model = fixtures().join(format!("diffusion/{family}/model"));
        let config: UnetConfig = json(&model.join("unet/config.json"));
        let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
        let frozen: TensorMap = candle_core::safetensors::load(
            model.join("unet/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
        let adapters = LoraAdapters::from_peft(&with_prefix(&step, "factor."), "", alpha).unwrap();
        let unet = Unet::new(
            adapters
                .weights_in(&frozen, &Device::Cpu, DType::F16)
                .unwrap(),
            &config,
        )
        .unwrap();
        assert_eq!(unet.dtype(), DType::F16);
        let added = step
            .get("text_embeds")
            .map(|text_embeds| AddedConditioning {
                text_embeds: text_embeds.clone(),
                time_ids: step["time_ids"].clone(),
            });
        let loss = NoiseSchedule::new(&scheduler)
            .unwrap()
            .loss(
                &unet,
                &step["latents"],
                &step["noise"],
                &timesteps_of(&step),
                &step["encoder_hidden_states"],
                added.as_ref(),
            )
            .unwrap();
        assert_eq!(loss.dtype(), DType::F32, "the loss is taken in f32");
        let scalar = |t: &Tensor| t.to_vec1::<f32>().unwrap()[0];
        let reference = scalar(&step["loss"]);
        let relative = |value: f32| ((value - reference) / reference).abs();
        let ours = relative(loss.to_scalar::<f32>().unwrap());
        let theirs = relative(scalar(&half["loss"]));
        assert!(
            ours <= (2.0 * theirs).max(1e-4),
            "{family}: loss off by {ours:.2e}, PyTorch's f16 by {theirs:.2e}"
        );
        let grads = (&loss * 65536.0).unwrap().backward().unwrap();
        let (mut worst_ours, mut worst_theirs) = (0f32, 0f32);
        for (module, adapter) in adapters.modules() {
            for (factor, var) in [("lora_A", &adapter.down), ("lora_B", &adapter.up)] {
                let name = format!("grad.{module}.{factor}.default.weight");
                let expected = &step[&name];
                let got = grads.get(var.as_tensor()).unwrap();
                assert_eq!(
                    got.dtype(),
                    DType::F32,
                    "{module}: the factors' gradients are f32"
                );
                let got = (got / 65536.0).unwrap();
                let scale = max_abs(expected).max(1e-12);
                let ours = max_abs(&(got - expected).unwrap()) / scale;
                let theirs = max_abs(&(&half[&name] - expected).unwrap()) / scale;
                assert!(
                    ours <= (3.0 * theirs).max(1e-2),
                    "{family} {module}.{factor}: off by {ours:.2e}, PyTorch's f16 step by {theirs:.2e}"
                );
                worst_ours = worst_ours.max(ours);
                worst_theirs = worst_theirs.max(theirs);
            }
        }
        eprintln!(
            "{family} in f16 against f32: loss {ours:.2e} (PyTorch's f16 {theirs:.2e}), worst factor gradient {worst_ours:.2e} (PyTorch's f16 {worst_theirs:.2e})"
        );
        assert!(
            worst_ours <= 2.0 * worst_theirs,
            "{family}: worst factor gradient off by {worst_ours:.2e}, PyTorch's f16 step's by {worst_theirs:.2e}"
        );
    }
}

/// SDXL with both text encoders trained (diffusers' SDXL DreamBooth LoRA script's
/// `--train_text_encoder`): the UNet reads both encoders' penultimate hidden states and the
/// second's pooled projection, all in the graph. One step gives PyTorch/peft's loss and the
/// gradients of every factor of the UNet and of both encoders; the first encoder's last
/// layer, which the penultimate states do not reach, gets none in either.
#[test]
fn one_sdxl_step_with_both_text_encoders_matches_pytorch_peft() {
    use pixelgen_diffusion::clip::ClipTextModel;
    use pixelgen_diffusion::config::ClipConfig;
    let step = candle_core::safetensors::load(
        fixtures().join("train/sdxl_step_text.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let model = fixtures().join("diffusion/sdxl/model");
    let config: UnetConfig = json(&model.join("unet/config.json"));
    let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
    // In f32, as training loads them (the fixture stores some weights in f16).
    let load = |path: &str| -> TensorMap {
        candle_core::safetensors::load(model.join(path), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.dtype().is_float() {
                    v.to_dtype(candle_core::DType::F32).unwrap()
                } else {
                    v
                };
                (k, v)
            })
            .collect()
    };
    let unet_adapters = LoraAdapters::from_peft(&with_prefix(&step, "factor."), "", 8.0).unwrap();
    let mut encoders = Vec::new();
    for (folder, factors, tokens) in [
        ("text_encoder", "text_factor.", "input_ids"),
        ("text_encoder_2", "text2_factor.", "input_ids_2"),
    ] {
        let clip_config: ClipConfig = json(&model.join(format!("{folder}/config.json")));
        let frozen = prefixed(load(&format!("{folder}/model.safetensors")));
        let adapters =
            LoraAdapters::from_peft(&prefixed(with_prefix(&step, factors)), "", 8.0).unwrap();
        let encoder = ClipTextModel::new(
            adapters.weights(&frozen, &Device::Cpu).unwrap(),
            &clip_config,
        )
        .unwrap();
        let output = encoder
            .forward(&token_ids(&step, tokens), &Device::Cpu)
            .unwrap();
        encoders.push((adapters, output));
    }
    let context = Tensor::cat(
        &[
            &encoders[0].1.penultimate_hidden_state,
            &encoders[1].1.penultimate_hidden_state,
        ],
        candle_core::D::Minus1,
    )
    .unwrap();
    let hidden_error = max_abs(&(&context - &step["encoder_hidden_states"]).unwrap());
    assert!(hidden_error <= 1e-4, "hidden states off by {hidden_error}");
    let pooled_error = max_abs(&(&encoders[1].1.pooled - &step["text_embeds"]).unwrap());
    assert!(
        pooled_error <= 1e-4,
        "pooled embedding off by {pooled_error}"
    );
    let added = AddedConditioning {
        text_embeds: encoders[1].1.pooled.clone(),
        time_ids: step["time_ids"].clone(),
    };
    let unet = Unet::new(
        unet_adapters
            .weights(
                &load("unet/diffusion_pytorch_model.safetensors"),
                &Device::Cpu,
            )
            .unwrap(),
        &config,
    )
    .unwrap();
    let loss = NoiseSchedule::new(&scheduler)
        .unwrap()
        .loss(
            &unet,
            &step["latents"],
            &step["noise"],
            &timesteps_of(&step),
            &context,
            Some(&added),
        )
        .unwrap();
    let label = "sdxl with both text encoders";
    check_loss(label, &loss, &step);
    let grads = loss.backward().unwrap();
    let (unet_worst, _) = check_gradients(label, &grads, &unet_adapters, &step, "grad.", "");
    // The second encoder. Its last layer reaches the UNet only through the pooled
    // embedding, and in this tiny model that path carries no gradient at all: the time
    // embedding shifts each of 32 channels that GroupNorm then normalises in 32 groups of
    // one, which removes the shift (PyTorch in f64: 8.7e-18 for the pooled embedding's
    // gradient). Both sides' f32 values there are rounding noise, so factors whose
    // gradient is below 1e-5 of the set's largest are held to 1e-3 of that largest.
    let set_max = encoders[1]
        .0
        .modules()
        .flat_map(|(module, _)| {
            ["lora_A", "lora_B"]
                .map(|f| max_abs(&step[&format!("text2_grad.{module}.{f}.default.weight")]))
        })
        .fold(0f32, f32::max);
    let mut second_worst = 0f32;
    let mut noise_only = 0;
    for (module, adapter) in encoders[1].0.modules() {
        for (factor, var) in [("lora_A", &adapter.down), ("lora_B", &adapter.up)] {
            let expected = &step[&format!("text2_grad.{module}.{factor}.default.weight")];
            let got = grads
                .get(var.as_tensor())
                .expect("a gradient for every factor");
            let error = max_abs(&(got - expected).unwrap());
            if max_abs(expected) < 1e-5 * set_max {
                noise_only += 1;
                assert!(error <= 1e-3 * set_max, "{module}.{factor}: {error:.2e}");
            } else {
                let relative = error / max_abs(expected);
                assert!(relative <= 1e-3, "{module}.{factor}: {relative:.2e}");
                second_worst = second_worst.max(relative);
            }
        }
    }
    assert!(
        noise_only <= 8,
        "only the last layer's 8 factors: {noise_only}"
    );
    // The first encoder: PyTorch's gradients where it has them, none where it has none.
    let mut first_worst = 0f32;
    let mut without = 0;
    for (module, adapter) in encoders[0].0.modules() {
        let module = module.trim_start_matches("text_model.");
        for (factor, var) in [("lora_A", &adapter.down), ("lora_B", &adapter.up)] {
            let name = format!("text_grad.{module}.{factor}.default.weight");
            match (step.get(&name), grads.get(var.as_tensor())) {
                (Some(expected), Some(got)) => {
                    let error = max_abs(&(got - expected).unwrap()) / max_abs(expected).max(1e-12);
                    assert!(error <= 1e-3, "{name}: {error:.2e}");
                    first_worst = first_worst.max(error);
                }
                (None, None) => without += 1,
                (expected, got) => panic!(
                    "{name}: PyTorch {} a gradient, pixelgen {}",
                    if expected.is_some() { "has" } else { "has no" },
                    if got.is_some() { "has" } else { "has none" }
                ),
            }
        }
    }
    assert!(without > 0 && first_worst > 0.0);
    eprintln!(
        "{label}: worst gradient UNet {unet_worst:.2e}, first encoder {first_worst:.2e} ({without} factors without, as in PyTorch), second encoder {second_worst:.2e} ({noise_only} factors with only rounding noise)"
    );
}
