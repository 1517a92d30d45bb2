//! `cargo pixelgen txt2img`: one raw Stable Diffusion image, for trying prompts, models and
//! LoRAs, and for comparing pixelgen with another implementation fed the same noise.

use std::path::PathBuf;
use std::time::Instant;

use pixelgen_build::Environment;
use pixelgen_build::generate::diffusion::Scheduler;
use pixelgen_build::generate::diffusion::{
    DiffusionError, LoadedModel, LoraFile, Noise, Request, Settings, locate, select_device_for,
};
use pixelgen_build::{Stage, Timings};

#[derive(clap::Args)]
pub struct Txt2Img {
    /// A diffusers folder, a .safetensors checkpoint, or a Hugging Face id in the HF cache.
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off (Turbo models).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    #[arg(long, default_value = "euler-a", value_parser = ["ddim", "euler", "euler-a"])]
    scheduler: String,
    /// Image width in pixels (default: the model's training size).
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels (default: the model's training size).
    #[arg(long)]
    height: Option<usize>,
    /// Seed of pixelgen's noise generator.
    #[arg(long, conflicts_with = "init_latents")]
    seed: Option<u64>,
    /// A safetensors file whose tensor `latents` (1 × 4 × h/8 × w/8, f32) is the initial noise.
    #[arg(long, value_name = "FILE")]
    init_latents: Option<PathBuf>,
    /// A LoRA and its weight (`FILE:WEIGHT`, weight 1 when left out); repeat for several.
    #[arg(long, value_name = "FILE:WEIGHT")]
    lora: Vec<String>,
    /// Where to write the PNG.
    #[arg(short = 'o', long = "output", value_name = "OUT.png")]
    output: PathBuf,
    /// Print the time of each stage (load, text encoding, UNet steps, VAE decode, write).
    #[arg(long)]
    timings: bool,
}

fn parse_lora(arg: &str) -> Result<LoraFile, DiffusionError> {
    let (path, weight) = match arg.rsplit_once(':') {
        Some((path, weight)) if weight.parse::<f64>().is_ok() => {
            (path, weight.parse().unwrap_or(1.0))
        }
        _ => (arg, 1.0),
    };
    Ok(LoraFile {
        path: PathBuf::from(path),
        weight,
    })
}

pub fn run(args: Txt2Img, environment: &Environment) -> Result<(), DiffusionError> {
    let started = Instant::now();
    let (device, dtype, note) = select_device_for(&environment.device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let hub_cache = environment.hub.cache_dir.as_deref();
    let location = locate(&args.model, std::path::Path::new("."), hub_cache)?;
    let loras = args
        .lora
        .iter()
        .map(|l| parse_lora(l))
        .collect::<Result<Vec<_>, _>>()?;
    let model = LoadedModel::load(&location, &loras, &device, dtype, hub_cache)?;
    let loaded = started.elapsed();
    let mut timings = Timings::new();
    timings.add(Stage::Load, loaded);
    let size = model.default_resolution().unwrap_or(512);
    let settings = Settings {
        width: args.width.unwrap_or(size),
        height: args.height.unwrap_or(size),
        steps: args.steps,
        guidance: args.guidance,
        scheduler: Scheduler::from_name(&args.scheduler).ok_or_else(|| {
            DiffusionError::Request(format!("unknown scheduler {}", args.scheduler))
        })?,
    };
    let seed = args.seed.unwrap_or(0);
    let noise = match &args.init_latents {
        Some(path) => Noise::from_file(path, seed)?,
        None => Noise::Seed(seed),
    };
    let request = Request {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        noise,
    };
    let image = model
        .generate_timed(&settings, &[request], &mut timings)?
        .remove(0);
    timings
        .time(Stage::EncodeWrite, || image.save(&args.output))
        .map_err(|e| DiffusionError::Invalid {
            path: args.output.clone(),
            message: format!("cannot write the image: {e}"),
        })?;
    let total = started.elapsed();
    eprintln!(
        "txt2img: {}×{}, {} steps of {} on {:?} ({:?}): load {:.1} s, sample {:.1} s → {}",
        settings.width,
        settings.height,
        settings.steps,
        args.scheduler,
        device.location(),
        dtype,
        loaded.as_secs_f64(),
        (total - loaded).as_secs_f64(),
        args.output.display()
    );
    if args.timings {
        timings.set_wall(total);
        eprint!("{timings}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_arguments_take_an_optional_weight() {
        assert_eq!(
            parse_lora("a/b.safetensors:0.8").unwrap(),
            LoraFile {
                path: "a/b.safetensors".into(),
                weight: 0.8
            }
        );
        assert_eq!(parse_lora("c:/x.safetensors").unwrap().weight, 1.0);
        assert_eq!(
            parse_lora("x.safetensors").unwrap(),
            LoraFile {
                path: "x.safetensors".into(),
                weight: 1.0
            }
        );
    }
}
