//! Whole training runs: the loss falls over 200 steps in each family, and a run resumed from
//! its checkpoint ends with exactly the factors of one never stopped.

use candle_core::{Device, Tensor};
use pixelgen_diffusion::config::{SchedulerConfig, UnetConfig};
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::train::{LoraAdapters, NoiseSchedule};
use pixelgen_diffusion::unet::{AddedConditioning, Unet};

use super::common::*;

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
