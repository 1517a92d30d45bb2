//! `cargo pixelgen train-lora`: trains a style LoRA on a folder of the game's own art with
//! candle's autograd (the `train` module of pixelgen-diffusion) and writes it in kohya-ss's
//! format, which pixelgen, diffusers and A1111-style tools load.
//!
//! Pixel-art preparation: each image is composited over `--background` where transparent,
//! scaled up by the largest whole factor that fits the training resolution (nearest
//! neighbour: pixels stay square and sharp) and centred on a canvas of the background; it
//! is never stretched. Captions come from `NAME.txt` beside `NAME.png`, else
//! `--caption` (a default with the trigger word).

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use pixelgen_build::Environment;
use pixelgen_build::generate::diffusion::candle_core::Tensor;
use pixelgen_build::generate::diffusion::noise::{self, Stream};
use pixelgen_build::generate::diffusion::train::{
    ATTENTION_PROJECTIONS, BaseModel, Example, KohyaMetadata, LoraAdapters, NoiseSchedule,
    RESNET_CONVOLUTIONS, Settings, TEXT_ATTENTION_PROJECTIONS, TextEncoder, optimizer, resume,
    save_checkpoint, train,
};
use pixelgen_build::generate::diffusion::{
    DiffusionError, TrainingBase, locate, select_device_for,
};

#[derive(clap::Args)]
pub struct TrainLora {
    /// The base model: a diffusers folder, a .safetensors checkpoint or a Hugging Face id
    /// in the HF cache (SD 1.x or 2.x).
    #[arg(long)]
    model: String,
    /// A folder of PNG images (sprites), each with an optional NAME.txt caption beside it.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (the product is scaled by alpha/rank); the rank when left out.
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Images per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Training size, `W` or `WxH` (multiples of 8); the model's own size when left out.
    #[arg(long, value_name = "W[xH]")]
    resolution: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The colour transparent pixels and the padding get, `#RRGGBB`.
    #[arg(long, default_value = "#ffffff")]
    background: String,
    /// The caption of images without a NAME.txt.
    #[arg(long, default_value = "pixel art sprite, pxlgn style")]
    caption: String,
    /// Save a checkpoint every this many steps (beside OUT, `OUT.checkpoint.safetensors`); a
    /// run started again with the same images and settings resumes from it.
    #[arg(long, value_name = "STEPS", default_value_t = 100)]
    checkpoint_every: usize,
    /// Also adapt the UNet's resnet convolutions (kohya's LoCon), not only its attention.
    #[arg(long)]
    conv: bool,
    /// Also train the text encoder (LoRA on its attention projections; captions are then
    /// encoded again at every step).
    #[arg(long)]
    text_encoder: bool,
    /// Where to write the LoRA (.safetensors, kohya-ss format).
    #[arg(short = 'o', long = "output", value_name = "OUT.safetensors")]
    output: PathBuf,
}

fn parse_resolution(text: &str) -> Result<(usize, usize), String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|v| *v >= 8 && v.is_multiple_of(8) && *v <= 4096)
            .ok_or_else(|| format!("--resolution {text}: sizes are multiples of 8 from 8 to 4096"))
    };
    match text.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => parse(text).map(|s| (s, s)),
    }
}

fn parse_colour(text: &str) -> Result<[u8; 3], String> {
    let hex = text.trim().trim_start_matches('#');
    let value = (hex.len() == 6)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .ok_or_else(|| format!("--background {text}: expected a colour like #ffffff"))?;
    Ok([(value >> 16) as u8, (value >> 8) as u8, value as u8])
}

/// A sprite on a `width`×`height` canvas of `background`: transparent pixels composited over
/// it, scaled up by the largest whole factor that fits, centred.
pub fn prepare(
    sprite: &image::RgbaImage,
    width: u32,
    height: u32,
    background: [u8; 3],
) -> Result<image::RgbImage, String> {
    let (w, h) = sprite.dimensions();
    if w == 0 || h == 0 || w > width || h > height {
        return Err(format!(
            "a {w}×{h} image does not fit the {width}×{height} training resolution (images are scaled up by whole factors, never down)"
        ));
    }
    let factor = (width / w).min(height / h);
    let (left, top) = ((width - w * factor) / 2, (height - h * factor) / 2);
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb(background));
    for (x, y, pixel) in sprite.enumerate_pixels() {
        let a = u16::from(pixel[3]);
        let blended = image::Rgb(std::array::from_fn(|c| {
            ((u16::from(pixel[c]) * a + u16::from(background[c]) * (255 - a) + 127) / 255) as u8
        }));
        for dy in 0..factor {
            for dx in 0..factor {
                canvas.put_pixel(left + x * factor + dx, top + y * factor + dy, blended);
            }
        }
    }
    Ok(canvas)
}

/// The PNGs of `dir` (sorted) with their captions.
fn images_in(dir: &Path, default_caption: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut images: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) && p.is_file())
        .collect();
    images.sort();
    if images.is_empty() {
        return Err(format!("{}: no .png images to train on", dir.display()));
    }
    images
        .into_iter()
        .map(|path| {
            let caption_path = path.with_extension("txt");
            let caption = if caption_path.is_file() {
                std::fs::read_to_string(&caption_path)
                    .map_err(|e| format!("{}: {e}", caption_path.display()))?
                    .trim()
                    .to_owned()
            } else {
                default_caption.to_owned()
            };
            Ok((path, caption))
        })
        .collect()
}

/// What a checkpoint must have been made with to be resumed: the model, every image's
/// bytes and caption, and every setting that changes a step (not the step count: a run may
/// be resumed with more steps).
fn fingerprint(
    args: &TrainLora,
    images: &[(PathBuf, String)],
    size: (usize, usize),
) -> Result<String, String> {
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen train-lora checkpoint v1");
    hasher.update(
        format!(
            "{}|{}|{}|{}|{:?}|{}|{}|{:?}|{}|{}|{}\n",
            args.conv,
            args.text_encoder,
            args.model,
            args.rank,
            args.alpha,
            args.lr,
            args.batch,
            size,
            args.seed,
            args.background,
            args.caption
        )
        .as_bytes(),
    );
    for (path, caption) in images {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        hasher.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(blake3::hash(&bytes).as_bytes());
        hasher.update(caption.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

pub fn run(args: TrainLora, environment: &Environment) -> Result<(), DiffusionError> {
    let request = |message: String| DiffusionError::Request(message);
    if args.rank == 0
        || args.steps == 0
        || args.batch == 0
        || !(args.lr > 0.0 && args.lr.is_finite())
    {
        return Err(request(
            "--rank, --steps and --batch must be at least 1 and --lr positive".into(),
        ));
    }
    let background = parse_colour(&args.background).map_err(request)?;
    let started = Instant::now();
    let (device, _, note) = select_device_for(&environment.device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let hub_cache = environment.hub.cache_dir.as_deref();
    let location = locate(&args.model, Path::new("."), hub_cache)?;
    let base = TrainingBase::load(&location, &device, hub_cache)?;
    let factor = base.latent_factor();
    let native = base
        .unet_config
        .sample_size
        .map(|s| s * factor)
        .unwrap_or(512);
    let (width, height) = match &args.resolution {
        Some(text) => parse_resolution(text).map_err(request)?,
        None => (native, native),
    };
    let images = images_in(&args.images, &args.caption).map_err(request)?;
    eprintln!(
        "pixelgen: loaded {} in {:.1?}; {} images at {width}×{height}",
        args.model,
        started.elapsed(),
        images.len()
    );

    // Encode every image and caption once: the frozen encoders never change.
    let mut examples = Vec::with_capacity(images.len());
    for (index, (path, caption)) in images.iter().enumerate() {
        let sprite = image::open(path)
            .map_err(|e| request(format!("{}: {e}", path.display())))?
            .to_rgba8();
        let canvas = prepare(&sprite, width as u32, height as u32, background)
            .map_err(|e| request(format!("{}: {e}", path.display())))?;
        let compute =
            |e: pixelgen_build::generate::diffusion::candle_core::Error| DiffusionError::Compute {
                what: "training image",
                message: e.to_string(),
            };
        let pixels: Vec<f32> = canvas
            .pixels()
            .flat_map(|p| p.0)
            .map(|v| f32::from(v) / 127.5 - 1.0)
            .collect();
        let image = Tensor::from_vec(pixels, (height, width, 3), &device)
            .and_then(|t| t.permute((2, 0, 1)))
            .and_then(|t| t.contiguous())
            .map_err(compute)?;
        let channels = base.unet_config.in_channels;
        let latent_noise = Tensor::from_vec(
            noise::gaussian(
                args.seed ^ index as u64,
                Stream::InitialLatents,
                channels * (height / factor) * (width / factor),
            ),
            (channels, height / factor, width / factor),
            &device,
        )
        .map_err(compute)?;
        examples.push(Example {
            latents: base.encode_image(&image, &latent_noise)?,
            context: base.encode_caption(caption)?,
            tokens: base.tokenize(caption)?,
        });
    }

    let schedule = NoiseSchedule::new(&base.scheduler).map_err(request)?;
    let alpha = args.alpha.unwrap_or(args.rank as f64);
    let compute =
        |e: pixelgen_build::generate::diffusion::candle_core::Error| DiffusionError::Compute {
            what: "training",
            message: e.to_string(),
        };
    let mut targets = ATTENTION_PROJECTIONS.to_vec();
    if args.conv {
        targets.extend(RESNET_CONVOLUTIONS);
    }
    let adapters = LoraAdapters::new(
        &base.unet_weights,
        &targets,
        args.rank,
        alpha,
        args.seed,
        &device,
    )
    .map_err(compute)?;
    // The text encoder's factors come from another stream of the seed than the UNet's.
    let text_adapters = args
        .text_encoder
        .then(|| {
            LoraAdapters::new(
                &base.text_weights,
                &TEXT_ATTENTION_PROJECTIONS,
                args.rank,
                alpha,
                args.seed ^ 0x7465_7874,
                &device,
            )
        })
        .transpose()
        .map_err(compute)?;
    let mut sets = vec![&adapters];
    sets.extend(text_adapters.as_ref());
    let settings = Settings {
        steps: args.steps,
        learning_rate: args.lr,
        batch: args.batch,
        seed: args.seed,
        ..Settings::default()
    };
    let mut adamw = optimizer(&sets, &settings).map_err(compute)?;
    let checkpoint = args.output.with_extension("checkpoint.safetensors");
    let fingerprint = fingerprint(&args, &images, (width, height)).map_err(request)?;
    let mut first = 0;
    if checkpoint.is_file() {
        match resume(&sets, &mut adamw, &fingerprint, &checkpoint) {
            Ok(Some(step)) => {
                eprintln!(
                    "pixelgen: resuming at step {step} from {}",
                    checkpoint.display()
                );
                first = step.min(args.steps);
            }
            Ok(None) => eprintln!(
                "pixelgen: {} is of another run (other images or settings); starting over",
                checkpoint.display()
            ),
            Err(message) => return Err(request(message)),
        }
    }
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} steps  loss {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(first as u64);
    bar.reset_eta();
    let training = Instant::now();
    let mut recent: Vec<f32> = Vec::new();
    let model = BaseModel {
        unet_config: &base.unet_config,
        unet_weights: &base.unet_weights,
        schedule: &schedule,
        text_encoder: text_adapters.as_ref().map(|adapters| TextEncoder {
            config: &base.text_config,
            weights: &base.text_weights,
            adapters,
        }),
    };
    let every = args.checkpoint_every.max(1);
    let mut start = first;
    while start < args.steps {
        let end = (start + every).min(args.steps);
        let chunk = Settings {
            steps: end,
            ..settings.clone()
        };
        train(
            &model,
            &adapters,
            &mut adamw,
            &examples,
            &chunk,
            start,
            &mut |_, loss| {
                recent.push(loss);
                if recent.len() > 20 {
                    recent.remove(0);
                }
                bar.set_message(format!(
                    "{:.4}",
                    recent.iter().sum::<f32>() / recent.len() as f32
                ));
                bar.inc(1);
                true
            },
        )
        .map_err(compute)?;
        if end < args.steps {
            save_checkpoint(&sets, &adamw, &fingerprint, &checkpoint).map_err(request)?;
        }
        start = end;
    }
    bar.finish();
    let metadata = KohyaMetadata {
        base_model: args.model.clone(),
        family: base.family().to_owned(),
        resolution: (width, height),
        steps: args.steps,
        learning_rate: args.lr,
        images: images.len(),
        seed: args.seed,
        v_prediction: base.scheduler.prediction_type == "v_prediction",
    };
    adapters
        .save_kohya(text_adapters.as_ref(), &args.output, &metadata)
        .map_err(request)?;
    // Finished: the checkpoint has served.
    let _ = std::fs::remove_file(&checkpoint);
    let seconds = training.elapsed().as_secs_f64();
    eprintln!(
        "pixelgen: trained {} modules (rank {}, alpha {alpha}) for {} steps in {seconds:.1} s ({:.2} steps/s); wrote {}",
        sets.iter().map(|set| set.modules().count()).sum::<usize>(),
        args.rank,
        args.steps,
        (args.steps - first) as f64 / seconds,
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprites_are_scaled_by_whole_factors_and_centred_never_stretched() {
        let mut sprite = image::RgbaImage::from_pixel(3, 2, image::Rgba([255, 0, 0, 255]));
        sprite.put_pixel(0, 0, image::Rgba([0, 0, 255, 0])); // transparent
        let canvas = prepare(&sprite, 16, 8, [0, 255, 0]).unwrap();
        // Factor min(16/3, 8/2) = 4: 12×8, centred horizontally (2 px each side).
        assert_eq!(canvas.get_pixel(0, 0).0, [0, 255, 0]);
        assert_eq!(
            canvas.get_pixel(2, 0).0,
            [0, 255, 0],
            "the transparent pixel gets the background"
        );
        assert_eq!(canvas.get_pixel(6, 0).0, [255, 0, 0]);
        assert_eq!(canvas.get_pixel(13, 7).0, [255, 0, 0]);
        assert_eq!(canvas.get_pixel(14, 7).0, [0, 255, 0]);
        assert!(
            prepare(&sprite, 2, 2, [0, 0, 0])
                .unwrap_err()
                .contains("never down")
        );
    }

    #[test]
    fn resolutions_and_colours_parse_or_say_why_not() {
        assert_eq!(parse_resolution("64").unwrap(), (64, 64));
        assert_eq!(parse_resolution("64x32").unwrap(), (64, 32));
        assert!(parse_resolution("63").is_err());
        assert_eq!(parse_colour("#10ff00").unwrap(), [16, 255, 0]);
        assert!(parse_colour("red").is_err());
    }
}
