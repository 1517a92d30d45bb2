//! `cargo pixelgen txt2img`: one raw Stable Diffusion image, for trying prompts, models and
//! LoRAs, and for comparing pixelgen with another implementation fed the same noise.

use std::path::PathBuf;
use std::time::Instant;

use pixelgen_build::Environment;
use pixelgen_build::generate::diffusion::{
    ControlNet, ControlUse, DiffusionError, InitImage, LoadedModel, LoraFile, Noise, Request,
    Scheduler, Settings, Tiling, locate, prepare_control_image, select_device_for,
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
    /// A safetensors file whose tensor `latents` (1 × 4 × h/8 × w/8, f32) is the noise: the
    /// initial latents, or with `--init-image` and no mask the noise added to the image.
    #[arg(long, value_name = "FILE")]
    init_latents: Option<PathBuf>,
    /// Draw from this image (img2img; with `--mask`, inpainting); its size is the default size.
    #[arg(long, value_name = "FILE")]
    init_image: Option<PathBuf>,
    /// How much of the init image is redrawn, in (0, 1]: the last int(steps × S) steps run.
    #[arg(long, value_name = "S", requires = "init_image", default_value_t = 1.0)]
    strength: f64,
    /// Where to repaint the init image (white, 50 % grey or more); the same size as it.
    #[arg(long, value_name = "FILE", requires = "init_image")]
    mask: Option<PathBuf>,
    /// Draw seamlessly on these axes (every padded convolution of the UNet and the VAE
    /// decoder wraps around).
    #[arg(long, value_parser = ["xy", "x", "y"])]
    tiling: Option<String>,
    /// A diffusers-layout ControlNet folder and its conditioning scale (`DIR:SCALE`, 1 when
    /// left out); repeat for several, each with its `--control-image`.
    #[arg(long, value_name = "DIR[:SCALE]", requires = "control_image")]
    controlnet: Vec<String>,
    /// The image a ControlNet follows, resized to the drawing's size (Pillow's LANCZOS, as
    /// diffusers does); one for all ControlNets, or one per `--controlnet` in order.
    #[arg(long, value_name = "FILE", requires = "controlnet")]
    control_image: Vec<PathBuf>,
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

/// `PATH:NUMBER` (the number 1 when left out; a path may itself hold colons).
fn path_and_number(arg: &str) -> (PathBuf, f64) {
    match arg.rsplit_once(':') {
        Some((path, number)) => match number.parse::<f64>() {
            Ok(number) => (PathBuf::from(path), number),
            Err(_) => (PathBuf::from(arg), 1.0),
        },
        None => (PathBuf::from(arg), 1.0),
    }
}

fn parse_lora(arg: &str) -> Result<LoraFile, DiffusionError> {
    let (path, weight) = path_and_number(arg);
    Ok(LoraFile { path, weight })
}

/// Loads `--controlnet`s and reads their `--control-image`s, resized to `width × height`.
fn controlnets(
    args: &Txt2Img,
    model: &LoadedModel,
    (width, height): (usize, usize),
) -> Result<(Vec<ControlUse>, Vec<image::RgbImage>), DiffusionError> {
    if args.control_image.len() != 1 && args.control_image.len() != args.controlnet.len() {
        return Err(DiffusionError::Request(format!(
            "{} --controlnet and {} --control-image: give one control image for all, or one per ControlNet",
            args.controlnet.len(),
            args.control_image.len()
        )));
    }
    let uses = args
        .controlnet
        .iter()
        .map(|arg| {
            let (dir, scale) = path_and_number(arg);
            let controlnet = ControlNet::load(&dir, model.device(), model.dtype())?;
            Ok(ControlUse {
                model: std::sync::Arc::new(controlnet),
                scale,
                start: 0.0,
                end: 1.0,
            })
        })
        .collect::<Result<Vec<_>, DiffusionError>>()?;
    let images = (0..uses.len())
        .map(|i| {
            let path = &args.control_image[i.min(args.control_image.len() - 1)];
            let image = image::open(path).map_err(|e| DiffusionError::Invalid {
                path: path.clone(),
                message: format!("cannot read the control image: {e}"),
            })?;
            Ok(prepare_control_image(
                &image.to_rgb8(),
                width as u32,
                height as u32,
            ))
        })
        .collect::<Result<Vec<_>, DiffusionError>>()?;
    Ok((uses, images))
}

/// Reads `--init-image` and `--mask` (any format the image crate reads; the mask as grey).
fn init_image(
    image: &std::path::Path,
    mask: Option<&std::path::Path>,
) -> Result<InitImage, DiffusionError> {
    let read = |path: &std::path::Path| {
        image::open(path).map_err(|e| DiffusionError::Invalid {
            path: path.to_path_buf(),
            message: format!("cannot read the image: {e}"),
        })
    };
    let mask = mask.map(read).transpose()?;
    Ok(InitImage::from_images(&read(image)?, mask.as_ref()))
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
    let init = args
        .init_image
        .as_deref()
        .map(|image| init_image(image, args.mask.as_deref()))
        .transpose()?;
    let size = model.default_resolution().unwrap_or(512);
    let (default_width, default_height) = match &init {
        Some(init) => (init.image.width() as usize, init.image.height() as usize),
        None => (size, size),
    };
    let settings = Settings {
        width: args.width.unwrap_or(default_width),
        height: args.height.unwrap_or(default_height),
        steps: args.steps,
        guidance: args.guidance,
        scheduler: Scheduler::from_name(&args.scheduler).ok_or_else(|| {
            DiffusionError::Request(format!("unknown scheduler {}", args.scheduler))
        })?,
        strength: args.strength,
        tiling: args.tiling.as_deref().and_then(Tiling::from_name),
        controlnets: Vec::new(),
    };
    let (controlnets, control_images) = if args.controlnet.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        controlnets(&args, &model, (settings.width, settings.height))?
    };
    let settings = Settings {
        controlnets,
        ..settings
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
        init,
        control_images,
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
