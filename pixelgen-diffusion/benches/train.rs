//! LoRA training speed against PyTorch/peft on the same model, inputs and threads: steps
//! per second of pixelgen's `train` (candle autograd) and of `train_peer.py` (diffusers'
//! training step in PyTorch), on the CPU.
//!
//! ```sh
//! PIXELGEN_BENCH_PYTHON=/path/to/venv/bin/python cargo bench --profile dev -p pixelgen-diffusion --bench train
//! ```
//!
//! Models: the tiny SD1 fixture (8×8 latents) and a small random SD1-layout UNet
//! (64-128-256-256 channels, two layers per block, 16×16 latents) that the peer script writes
//! to the temporary folder. Batch 1, rank 4, one warm-up step. The peer needs torch,
//! diffusers and peft; without `PIXELGEN_BENCH_PYTHON` only pixelgen's column is printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use pixelgen_diffusion::config::{SchedulerConfig, UnetConfig};
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::noise::{Stream, gaussian};
use pixelgen_diffusion::train::{
    ATTENTION_PROJECTIONS, BaseModel, Example, LoraAdapters, NoiseSchedule, Settings, optimizer,
    train,
};
use pixelgen_test_support::fixtures;
use pixelgen_test_support::fs::read_json;

fn pixelgen_steps_per_second(model: &Path, size: usize, steps: usize) -> f64 {
    let config: UnetConfig = read_json(&model.join("unet/config.json"));
    let scheduler: SchedulerConfig = read_json(&model.join("scheduler/scheduler_config.json"));
    let schedule = NoiseSchedule::new(&scheduler).unwrap();
    let frozen: TensorMap = candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(k, v)| (k, v.to_dtype(candle_core::DType::F32).unwrap()))
    .collect();
    let context_dim = match &config.cross_attention_dim {
        pixelgen_diffusion::config::PerLevel::One(d) => *d,
        pixelgen_diffusion::config::PerLevel::Each(d) => d[0],
    };
    let examples = vec![Example {
        latents: Tensor::from_vec(
            gaussian(1, Stream::InitialLatents, 4 * size * size),
            (4, size, size),
            &Device::Cpu,
        )
        .unwrap(),
        context: Tensor::from_vec(
            gaussian(2, Stream::InitialLatents, 77 * context_dim),
            (77, context_dim),
            &Device::Cpu,
        )
        .unwrap(),
        tokens: Vec::new(),
        tokens_2: Vec::new(),
        added: None,
    }];
    let adapters =
        LoraAdapters::new(&frozen, &ATTENTION_PROJECTIONS, 4, 4.0, 0, &Device::Cpu).unwrap();
    let settings = Settings {
        steps: steps + 1,
        ..Settings::default()
    };
    let mut adamw = optimizer(&[&adapters], &settings).unwrap();
    let base = BaseModel {
        unet_config: &config,
        unet_weights: &frozen,
        schedule: &schedule,
        dtype: candle_core::DType::F32,
        text_encoder: None,
        text_encoder_2: None,
    };
    let mut started = None;
    train(
        &base,
        &adapters,
        &mut adamw,
        &examples,
        &settings,
        0,
        &mut |step, _| {
            if step == 0 {
                started = Some(Instant::now()); // after the warm-up step
            }
            true
        },
    )
    .unwrap();
    steps as f64 / started.unwrap().elapsed().as_secs_f64()
}

fn peer(
    python: &str,
    model: &Path,
    size: usize,
    steps: usize,
    make_small: Option<&Path>,
) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/train_peer.py");
    let mut command = Command::new(python);
    command.arg(script).arg(model).args([
        steps.to_string(),
        "2".into(),
        "1".into(),
        size.to_string(),
    ]);
    if let Some(out) = make_small {
        command.arg("--make-small").arg(out);
    }
    let output = command.output().ok()?;
    let line = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()?
        .to_owned();
    let value: serde_json::Value = serde_json::from_str(&line).ok()?;
    value["steps_per_second"].as_f64()
}

fn main() {
    let tiny = fixtures::tiny_model("sd1");
    let small = std::env::temp_dir().join("pixelgen-small-sd");
    let python = std::env::var("PIXELGEN_BENCH_PYTHON").ok();
    // The peer writes the small model (a short run); without it, it must already be there.
    if let Some(python) = python.as_deref() {
        peer(python, &tiny, 16, 1, Some(&small));
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "LoRA training steps per second, CPU, batch 1, rank 4 (pixelgen threads: {threads}; PyTorch: 2)"
    );
    println!("| model | latents | pixelgen | PyTorch/peft | pixelgen ÷ PyTorch |");
    println!("|---|---|---|---|---|");
    let cases: Vec<(&str, PathBuf, usize, usize)> = vec![
        ("tiny SD1 fixture", tiny.clone(), 8, 40),
        ("small SD1 layout (64-128-256-256)", small.clone(), 16, 10),
    ];
    for (name, model, size, steps) in cases {
        if !model.join("unet").is_dir() {
            println!("| {name} | — | (model missing: run with PIXELGEN_BENCH_PYTHON) | | |");
            continue;
        }
        let ours = pixelgen_steps_per_second(&model, size, steps);
        let theirs = python
            .as_deref()
            .and_then(|p| peer(p, &model, size, steps, None));
        match theirs {
            Some(theirs) => println!(
                "| {name} | {size}×{size} | {ours:.2} | {theirs:.2} | {:.2} |",
                ours / theirs
            ),
            None => println!("| {name} | {size}×{size} | {ours:.2} | — | — |"),
        }
    }
}
