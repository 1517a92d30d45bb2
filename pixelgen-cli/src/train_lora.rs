//! `cargo pixelgen train-lora`: trains a style LoRA on a folder of the game's own art with
//! candle's autograd and writes it in kohya-ss's format, which pixelgen, diffusers and
//! A1111-style tools load. The training itself (pixel-art preparation, captions, chunks
//! with checkpoints) is `pixelgen_build::train`, which a build also runs for the
//! manifest's `trained_loras`; this is the command line and the progress bar.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use pixelgen_build::Environment;
use pixelgen_build::generate::diffusion::DiffusionError;
use pixelgen_build::manifest::{DEFAULT_CAPTION, TrainingSettings};
use pixelgen_build::train::{TrainingJob, TrainingProgress, checkpoint_fingerprint, images_in};

#[derive(clap::Args)]
pub struct TrainLora {
    /// The base model: a diffusers folder, a .safetensors checkpoint or a Hugging Face id
    /// in the HF cache (SD 1.x, 2.x or XL; for XL only the UNet trains).
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
    #[arg(long, default_value = DEFAULT_CAPTION)]
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

/// Draws the bar as steps finish, with the mean loss of the last 20 steps.
struct Bar {
    bar: ProgressBar,
    recent: Vec<f32>,
}

impl TrainingProgress for Bar {
    fn started(&mut self, first: usize, steps: usize) {
        self.bar.set_length(steps as u64);
        self.bar.set_position(first as u64);
        self.bar.reset_eta();
    }

    fn step(&mut self, loss: f32) {
        self.recent.push(loss);
        if self.recent.len() > 20 {
            self.recent.remove(0);
        }
        self.bar.set_message(format!(
            "{:.4}",
            self.recent.iter().sum::<f32>() / self.recent.len() as f32
        ));
        self.bar.inc(1);
    }

    fn note(&mut self, note: &str) {
        self.bar.suspend(|| eprintln!("pixelgen: {note}"));
    }
}

pub fn run(args: TrainLora, environment: &Environment) -> Result<(), DiffusionError> {
    let request = |message: String| DiffusionError::Request(message);
    let resolution = args
        .resolution
        .as_deref()
        .map(parse_resolution)
        .transpose()
        .map_err(request)?;
    let settings = TrainingSettings {
        rank: args.rank,
        alpha: args.alpha.unwrap_or(args.rank as f64),
        steps: args.steps,
        learning_rate: args.lr,
        batch: args.batch,
        resolution: resolution.map(|(w, h)| (w as u32, h as u32)),
        seed: args.seed,
        caption: args.caption.clone(),
        background: parse_colour(&args.background).map_err(request)?,
        conv: args.conv,
        text_encoder: args.text_encoder,
    };
    let images = images_in(&args.images, &args.caption).map_err(request)?;
    let checkpoint = args.output.with_extension("checkpoint.safetensors");
    let fingerprint = checkpoint_fingerprint(&args.model, &images, &settings).map_err(request)?;
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} steps  loss {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = Bar {
        bar,
        recent: Vec::new(),
    };
    let started = Instant::now();
    eprintln!(
        "pixelgen: training on {} images from {} with {}",
        images.len(),
        args.images.display(),
        args.model
    );
    let job = TrainingJob {
        model: &args.model,
        model_dir: Path::new("."),
        images: &images,
        settings: &settings,
        output: &args.output,
        checkpoint: &checkpoint,
        checkpoint_every: args.checkpoint_every,
        fingerprint: &fingerprint,
    };
    let report = pixelgen_build::train::run(&job, environment, &mut progress)?;
    progress.bar.finish();
    let (width, height) = report.resolution;
    eprintln!(
        "pixelgen: trained {} modules (rank {}, alpha {}) on {} images at {width}×{height} in {} for {} steps{} in {:.1} s ({:.2} steps/s; {:.1} s in all); wrote {}",
        report.modules,
        settings.rank,
        settings.alpha,
        report.images,
        report.precision,
        settings.steps,
        if report.skipped > 0 {
            format!(" ({} skipped by the loss scaler)", report.skipped)
        } else {
            String::new()
        },
        report.seconds,
        report.steps_run as f64 / report.seconds,
        started.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_and_colours_parse_or_say_why_not() {
        assert_eq!(parse_resolution("64").unwrap(), (64, 64));
        assert_eq!(parse_resolution("64x32").unwrap(), (64, 32));
        assert!(parse_resolution("63").is_err());
        assert_eq!(parse_colour("#10ff00").unwrap(), [16, 255, 0]);
        assert!(parse_colour("red").is_err());
    }
}
