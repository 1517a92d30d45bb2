//! One LoRA training step against PyTorch/peft: the same weights, factors, latents, noise,
//! timesteps and text hidden states (`fixtures/train/make_train_step.py`, written like
//! diffusers' `train_text_to_image_lora.py`) give the same loss (relative error ≤ 1e-4)
//! and the same gradient for every factor (max error ≤ 1e-3 of the largest entry).
#![cfg(feature = "backend")]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixelgen_diffusion::config::{SchedulerConfig, UnetConfig};
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::train::{LoraAdapters, NoiseSchedule};
use pixelgen_diffusion::unet::{AddedConditioning, Unet};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The tiny SD1 fixture's UNet config, training noise schedule and (frozen) weights.
fn sd1_unet() -> (UnetConfig, NoiseSchedule, TensorMap) {
    let model = fixtures().join("diffusion/sd1/model");
    let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
    let frozen = candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (
        json(&model.join("unet/config.json")),
        NoiseSchedule::new(&scheduler).unwrap(),
        frozen,
    )
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The tensors of a step fixture whose names start with `prefix`, without it.
fn with_prefix(step: &TensorMap, prefix: &str) -> TensorMap {
    step.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
        .collect()
}

/// transformers 5 names a text encoder's modules without `text_model.`; pixelgen's CLIP
/// (like its loader) wants it (the projection keeps its name).
fn prefixed(map: TensorMap) -> TensorMap {
    map.into_iter()
        .map(|(k, v)| {
            if k.starts_with("text_model.") || k.starts_with("text_projection") {
                (k, v)
            } else {
                (format!("text_model.{k}"), v)
            }
        })
        .collect()
}

/// The two captions' token ids a step fixture stored (as f32) under `name`.
fn token_ids(step: &TensorMap, name: &str) -> Vec<Vec<u32>> {
    (0..2)
        .map(|i| {
            step[name]
                .get(i)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| v as u32)
                .collect()
        })
        .collect()
}

/// The timesteps a step fixture drew.
fn timesteps_of(step: &TensorMap) -> Vec<usize> {
    step["timesteps"]
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|t| t as usize)
        .collect()
}

/// The loss against PyTorch's (relative error ≤ 1e-4); returns the relative error.
fn check_loss(label: &str, loss: &Tensor, step: &TensorMap) -> f32 {
    let ours = loss.to_scalar::<f32>().unwrap();
    let reference = step["loss"].to_vec1::<f32>().unwrap()[0];
    let relative = ((ours - reference) / reference).abs();
    eprintln!("{label}: loss {ours} vs PyTorch {reference} (relative error {relative:.2e})");
    assert!(relative <= 1e-4, "{label}: loss {ours} vs {reference}");
    relative
}

/// Every factor of `adapters` has a gradient, and it is PyTorch's
/// (`{prefix}{module}.lora_A.default.weight`, the module named as PyTorch named it: `strip`
/// removed) within a relative max error of 1e-3. Returns the worst error and its name.
fn check_gradients(
    label: &str,
    grads: &candle_core::backprop::GradStore,
    adapters: &LoraAdapters,
    step: &TensorMap,
    prefix: &str,
    strip: &str,
) -> (f32, String) {
    let missing: Vec<String> = adapters
        .modules()
        .flat_map(|(m, a)| [(format!("{m}.down"), &a.down), (format!("{m}.up"), &a.up)])
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty(),
        "{label}: no gradient for {} factors: {missing:#?}",
        missing.len()
    );
    let mut worst = (0f32, String::new());
    for (module, adapter) in adapters.modules() {
        let module = module.trim_start_matches(strip);
        for (factor, var) in [("lora_A", &adapter.down), ("lora_B", &adapter.up)] {
            let name = format!("{module}.{factor}.default.weight");
            let expected = &step[&format!("{prefix}{name}")];
            let got = grads.get(var.as_tensor()).unwrap();
            let error = max_abs(&(got - expected).unwrap()) / max_abs(expected).max(1e-12);
            if error > worst.0 {
                worst = (error, name.clone());
            }
            assert!(
                error <= 1e-3,
                "{label}: {name}: relative max error {error:.2e}"
            );
        }
    }
    worst
}

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

/// 200 AdamW steps on four examples lower the noise-prediction loss, measured on fixed
/// noise and timesteps before and after; a second run from the same seed takes the same
/// first steps.
/// (One test per family, so the harness runs them side by side.)
#[test]
fn training_lowers_the_loss_sd1() {
    training_lowers_the_loss_of("sd1");
}

#[test]
fn training_lowers_the_loss_sd2v() {
    training_lowers_the_loss_of("sd2v");
}

#[test]
fn training_lowers_the_loss_sdxl() {
    training_lowers_the_loss_of("sdxl");
}

/// 200 steps on four examples (the step fixture's captions, two each; SDXL with its pooled
/// embeddings and time ids) lower the loss on fixed noise and timesteps.
fn training_lowers_the_loss_of(family: &str) {
    use pixelgen_diffusion::train::{
        ATTENTION_PROJECTIONS, BaseModel, Example, Settings, optimizer, train,
    };
    let model = fixtures().join(format!("diffusion/{family}/model"));
    let config: UnetConfig = json(&model.join("unet/config.json"));
    let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
    let schedule = NoiseSchedule::new(&scheduler).unwrap();
    let frozen: TensorMap = candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let step = candle_core::safetensors::load(
        fixtures().join(format!("train/{family}_step.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let hidden = &step["encoder_hidden_states"];
    let size = config.sample_size.unwrap_or(8);
    let examples: Vec<Example> = (0..4)
        .map(|i| Example {
            latents: Tensor::from_vec(
                pixelgen_diffusion::noise::gaussian(
                    40 + i as u64,
                    pixelgen_diffusion::noise::Stream::InitialLatents,
                    4 * size * size,
                ),
                (4, size, size),
                &Device::Cpu,
            )
            .unwrap(),
            context: hidden.get(i % 2).unwrap(),
            tokens: Vec::new(),
            tokens_2: Vec::new(),
            added: step.get("text_embeds").map(|embeds| AddedConditioning {
                text_embeds: embeds.get(i % 2).unwrap(),
                time_ids: step["time_ids"].get(i % 2).unwrap(),
            }),
        })
        .collect();
    let evaluate = |adapters: &LoraAdapters| -> f32 {
        let unet = Unet::new(adapters.weights(&frozen, &Device::Cpu).unwrap(), &config).unwrap();
        let mut total = 0.0;
        for (i, example) in examples.iter().enumerate() {
            let added = example.added.as_ref().map(|a| AddedConditioning {
                text_embeds: a.text_embeds.unsqueeze(0).unwrap(),
                time_ids: a.time_ids.unsqueeze(0).unwrap(),
            });
            for (j, t) in [50usize, 300, 600, 900].into_iter().enumerate() {
                let noise = Tensor::from_vec(
                    pixelgen_diffusion::noise::gaussian(
                        1000 + (4 * i + j) as u64,
                        pixelgen_diffusion::noise::Stream::InitialLatents,
                        4 * size * size,
                    ),
                    (1, 4, size, size),
                    &Device::Cpu,
                )
                .unwrap();
                let loss = schedule
                    .loss(
                        &unet,
                        &example.latents.unsqueeze(0).unwrap(),
                        &noise,
                        &[t],
                        &example.context.unsqueeze(0).unwrap(),
                        added.as_ref(),
                    )
                    .unwrap();
                total += loss.to_scalar::<f32>().unwrap();
            }
        }
        total / 16.0
    };
    let settings = Settings {
        steps: 200,
        learning_rate: 1e-3,
        batch: 2,
        seed: 5,
        ..Settings::default()
    };
    let run = |steps: usize| {
        let settings = Settings {
            steps,
            ..settings.clone()
        };
        let adapters =
            LoraAdapters::new(&frozen, &ATTENTION_PROJECTIONS, 4, 4.0, 3, &Device::Cpu).unwrap();
        let before = evaluate(&adapters);
        let mut adamw = optimizer(&[&adapters], &settings).unwrap();
        let mut losses = Vec::new();
        let base = BaseModel {
            unet_config: &config,
            unet_weights: &frozen,
            schedule: &schedule,
            dtype: candle_core::DType::F32,
            text_encoder: None,
            text_encoder_2: None,
        };
        train(
            &base,
            &adapters,
            &mut adamw,
            &examples,
            &settings,
            0,
            &mut |_, loss| {
                losses.push(loss);
                true
            },
        )
        .unwrap();
        (before, evaluate(&adapters), losses)
    };
    let started = std::time::Instant::now();
    let (before, after, losses) = run(200);
    eprintln!(
        "{family}: 200 steps in {:?}: evaluation loss {before:.4} → {after:.4}; first steps {:?}, last {:?}",
        started.elapsed(),
        &losses[..3],
        &losses[losses.len() - 3..]
    );
    assert_eq!(losses.len(), 200);
    assert!(
        after < before * 0.95,
        "{family}: the loss did not go down: {before} → {after}"
    );
    let (_, _, losses_again) = run(20);
    assert_eq!(
        losses_again,
        losses[..20],
        "{family}: the same seed takes the same steps"
    );
}

/// A run stopped after 15 of 30 steps and resumed from its checkpoint (factors, AdamW
/// moments, step) ends with exactly the factors of a run that was never stopped.
#[test]
fn a_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does() {
    use pixelgen_diffusion::train::{
        ATTENTION_PROJECTIONS, BaseModel, Example, Settings, optimizer, train,
    };
    use pixelgen_diffusion::train::{resume, save_checkpoint};
    let (config, schedule, frozen) = sd1_unet();
    let step =
        candle_core::safetensors::load(fixtures().join("train/sd1_step.safetensors"), &Device::Cpu)
            .unwrap();
    let examples: Vec<Example> = (0..2)
        .map(|i| Example {
            latents: step["latents"].get(i).unwrap(),
            context: step["encoder_hidden_states"].get(i).unwrap(),
            tokens: Vec::new(),
            tokens_2: Vec::new(),
            added: None,
        })
        .collect();
    let base = BaseModel {
        unet_config: &config,
        unet_weights: &frozen,
        schedule: &schedule,
        dtype: candle_core::DType::F32,
        text_encoder: None,
        text_encoder_2: None,
    };
    let settings = |steps| Settings {
        steps,
        learning_rate: 1e-3,
        batch: 1,
        seed: 9,
        ..Settings::default()
    };
    let factors = |adapters: &LoraAdapters| -> Vec<Vec<f32>> {
        adapters
            .vars()
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    };
    let new = |seed| {
        LoraAdapters::new(&frozen, &ATTENTION_PROJECTIONS, 4, 4.0, seed, &Device::Cpu).unwrap()
    };

    let whole = new(1);
    let mut adamw = optimizer(&[&whole], &settings(30)).unwrap();
    train(
        &base,
        &whole,
        &mut adamw,
        &examples,
        &settings(30),
        0,
        &mut |_, _| true,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("run.checkpoint.safetensors");
    let first = new(1);
    let mut adamw = optimizer(&[&first], &settings(30)).unwrap();
    train(
        &base,
        &first,
        &mut adamw,
        &examples,
        &settings(15),
        0,
        &mut |_, _| true,
    )
    .unwrap();
    save_checkpoint(&[&first], &adamw, "run-a", &checkpoint).unwrap();
    drop(first);

    // A new process: other initial factors, a fresh optimiser; the checkpoint restores both.
    let resumed = new(2);
    let mut adamw = optimizer(&[&resumed], &settings(30)).unwrap();
    assert_eq!(
        resume(&[&resumed], &mut adamw, "run-b", &checkpoint).unwrap(),
        None,
        "another run's checkpoint is not taken"
    );
    let from = resume(&[&resumed], &mut adamw, "run-a", &checkpoint).unwrap();
    assert_eq!(from, Some(15));
    train(
        &base,
        &resumed,
        &mut adamw,
        &examples,
        &settings(30),
        15,
        &mut |_, _| true,
    )
    .unwrap();
    assert_eq!(factors(&resumed), factors(&whole));
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
