//! Training a style LoRA from a folder of the game's own art: what `cargo pixelgen
//! train-lora` runs, and what a build runs for a stale entry of the manifest's
//! `trained_loras`.
//!
//! Stages: [`images_in`] (the folder's PNGs, sorted by file name, with their captions) →
//! [`prepare`] (pixel-art preparation: each sprite composited over the background where
//! transparent, scaled up by the largest whole factor that fits the training resolution —
//! nearest neighbour, never stretched — and centred) → `run` (feature `diffusion`: encode
//! each image and caption once, train with `pixelgen_diffusion::train` in chunks with a
//! checkpoint after each, save in kohya-ss's format).
//!
//! Invariants: the same images, captions, base model and settings train the same factors
//! on the same device (seeded initialisation, batches, noise and timesteps); a checkpoint
//! resumes only the run it was made by (its fingerprint); the output is written
//! atomically, so a killed run leaves no half-written LoRA.

use std::path::{Path, PathBuf};

use crate::manifest::TrainingSettings;

/// Bumped when training changes the factors it makes for the same inputs, so trained LoRAs
/// in a cache made by an older pixelgen are trained again (part of their keys).
pub const TRAINING_VERSION: &str = "pixelgen-train-1";

/// One training image and its caption.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingImage {
    pub path: PathBuf,
    /// `NAME.png`: how keys, the lock file and messages name it.
    pub file_name: String,
    pub caption: String,
    /// Whether the caption came from `NAME.txt` (else the default caption).
    pub captioned: bool,
}

/// Most training images one folder may hold.
pub const MAX_TRAINING_IMAGES: usize = 10_000;

/// The PNGs of `dir`, sorted by file name, each with its caption: `NAME.txt` beside
/// `NAME.png` (trimmed), else `default_caption`.
pub fn images_in(dir: &Path, default_caption: &str) -> Result<Vec<TrainingImage>, String> {
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
    if images.len() > MAX_TRAINING_IMAGES {
        return Err(format!(
            "{}: {} images; at most {MAX_TRAINING_IMAGES} train one LoRA",
            dir.display(),
            images.len()
        ));
    }
    images
        .into_iter()
        .map(|path| {
            let caption_path = path.with_extension("txt");
            let (caption, captioned) = if caption_path.is_file() {
                let text = crate::input_file::read_to_string(
                    &caption_path,
                    crate::input_file::MAX_MANIFEST_BYTES,
                    "caption",
                )
                .map_err(|e| e.to_string())?;
                (text.trim().to_owned(), true)
            } else {
                (default_caption.to_owned(), false)
            };
            Ok(TrainingImage {
                file_name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                path,
                caption,
                captioned,
            })
        })
        .collect()
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

/// What a training run reports as it goes (the CLI draws a bar; a build counts steps).
pub trait TrainingProgress {
    /// The model is loaded and the images encoded; `first` steps of `steps` are done
    /// already (resumed from a checkpoint).
    fn started(&mut self, _first: usize, _steps: usize) {}
    /// A step finished with this loss.
    fn step(&mut self, _loss: f32) {}
    /// A line for the user (resuming, a checkpoint of another run ignored).
    fn note(&mut self, _note: &str) {}
}

/// A run to make: the base model, the images, the settings, and where the LoRA and its
/// checkpoint go.
#[derive(Debug, Clone)]
pub struct TrainingJob<'a> {
    /// As the manifest or `--model` names it.
    pub model: &'a str,
    /// Relative model paths are taken from here.
    pub model_dir: &'a Path,
    pub images: &'a [TrainingImage],
    pub settings: &'a TrainingSettings,
    pub output: &'a Path,
    pub checkpoint: &'a Path,
    /// A checkpoint after every this many steps.
    pub checkpoint_every: usize,
    /// What a checkpoint must carry to be resumed by this run.
    pub fingerprint: &'a str,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct TrainingReport {
    pub modules: usize,
    /// Steps run now (not resumed).
    pub steps_run: usize,
    pub seconds: f64,
    pub images: usize,
    pub resolution: (usize, usize),
    /// `f32`, or `bf16` / `f16` mixed precision.
    pub precision: &'static str,
    /// Steps the f16 loss scaler skipped (non-finite gradients).
    pub skipped: usize,
}

/// A fingerprint of everything a step depends on except the step count (a run may be
/// resumed with more steps): the model's name, every image's bytes and caption, and the
/// other settings.
pub fn checkpoint_fingerprint(
    model: &str,
    images: &[TrainingImage],
    settings: &TrainingSettings,
) -> Result<String, String> {
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen train-lora checkpoint v2");
    let s = settings;
    hasher.update(
        format!(
            "{}|{}|{model}|{}|{}|{}|{}|{:?}|{}|{:?}|{}\n",
            s.conv,
            s.text_encoder,
            s.rank,
            s.alpha,
            s.learning_rate,
            s.batch,
            s.resolution,
            s.seed,
            s.background,
            s.caption
        )
        .as_bytes(),
    );
    for image in images {
        let bytes =
            std::fs::read(&image.path).map_err(|e| format!("{}: {e}", image.path.display()))?;
        hasher.update(image.file_name.as_bytes());
        hasher.update(blake3::hash(&bytes).as_bytes());
        hasher.update(image.caption.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(feature = "diffusion")]
pub use run::{run, training_dtype};

#[cfg(feature = "diffusion")]
mod run {
    use std::time::Instant;

    use super::{TrainingJob, TrainingProgress, TrainingReport, prepare};
    use crate::environment::Environment;
    use crate::generate::diffusion::candle_core::{self, Tensor};
    use crate::generate::diffusion::noise::{self, Stream};
    use crate::generate::diffusion::train::{
        ATTENTION_PROJECTIONS, BaseModel, KohyaMetadata, LoraAdapters, NoiseSchedule,
        RESNET_CONVOLUTIONS, Settings, TEXT_ATTENTION_PROJECTIONS, TextEncoder, optimizer, resume,
        save_checkpoint, train,
    };
    use crate::generate::diffusion::{
        DeviceLock, DiffusionError, TrainingBase, locate, select_device_for,
    };

    /// The dtype the UNet computes in while training: `PIXELGEN_DTYPE` when set, else f32
    /// on the CPU and bf16 on a GPU. With bf16 or f16 it is mixed precision: the LoRA
    /// factors, the optimiser and the loss stay f32, and f16 adds dynamic loss scaling (its
    /// small gradients would underflow without it).
    pub fn training_dtype(
        device: &candle_core::Device,
        requested: Option<&str>,
    ) -> Result<candle_core::DType, DiffusionError> {
        use candle_core::DType;
        match requested.map(str::trim) {
            None | Some("") if device.is_cpu() => Ok(DType::F32),
            None | Some("") => Ok(DType::BF16),
            Some("f32") => Ok(DType::F32),
            Some("bf16") => Ok(DType::BF16),
            Some("f16") => Ok(DType::F16),
            Some(other) => Err(DiffusionError::Device(format!(
                "PIXELGEN_DTYPE=`{other}` is not a precision: use f32, f16 or bf16"
            ))),
        }
    }

    /// Trains `job` on the device the environment asks for (holding the machine-wide device
    /// lock, like generating) and writes the LoRA.
    pub fn run(
        job: &TrainingJob<'_>,
        environment: &Environment,
        progress: &mut dyn TrainingProgress,
    ) -> Result<TrainingReport, DiffusionError> {
        let request = |message: String| DiffusionError::Request(message);
        let s = job.settings;
        if s.rank == 0
            || s.steps == 0
            || s.batch == 0
            || !(s.learning_rate > 0.0 && s.learning_rate.is_finite())
        {
            return Err(request(
                "rank, steps and batch must be at least 1 and the learning rate positive".into(),
            ));
        }
        let (device, _, note) = select_device_for(&environment.device)?;

        if let Some(note) = note {
            progress.note(&note);
        }
        let hub_cache = environment.hub.cache_dir.as_deref();
        let location = locate(job.model, job.model_dir, hub_cache)?;
        let _lock = DeviceLock::acquire(&environment.lock_dir)?;
        let dtype = training_dtype(&device, environment.device.dtype.as_deref())?;
        let base = TrainingBase::load(&location, &device, dtype, hub_cache)?;
        let factor = base.latent_factor();
        let native = base
            .unet_config
            .sample_size
            .map(|s| s * factor)
            .unwrap_or(512);
        let (width, height) = s
            .resolution
            .map_or((native, native), |(w, h)| (w as usize, h as usize));
        let compute = |what: &'static str| {
            move |source: candle_core::Error| DiffusionError::Compute {
                what,
                source: Box::new(source),
            }
        };

        // Encode every image and caption once: the frozen encoders never change.
        let mut examples = Vec::with_capacity(job.images.len());
        for (index, image) in job.images.iter().enumerate() {
            let sprite = image::open(&image.path)
                .map_err(|e| request(format!("{}: {e}", image.path.display())))?
                .to_rgba8();
            let canvas = prepare(&sprite, width as u32, height as u32, s.background)
                .map_err(|e| request(format!("{}: {e}", image.path.display())))?;
            let pixels: Vec<f32> = canvas
                .pixels()
                .flat_map(|p| p.0)
                .map(|v| f32::from(v) / 127.5 - 1.0)
                .collect();
            let tensor = Tensor::from_vec(pixels, (height, width, 3), &device)
                .and_then(|t| t.permute((2, 0, 1)))
                .and_then(|t| t.contiguous())
                .map_err(compute("training image"))?;
            let channels = base.unet_config.in_channels;
            let latent_noise = Tensor::from_vec(
                noise::gaussian(
                    s.seed ^ index as u64,
                    Stream::InitialLatents,
                    channels * (height / factor) * (width / factor),
                ),
                (channels, height / factor, width / factor),
                &device,
            )
            .map_err(compute("training image"))?;
            examples.push(base.example(&tensor, &latent_noise, &image.caption)?);
        }

        let schedule = NoiseSchedule::new(&base.scheduler).map_err(request)?;
        let mut targets = ATTENTION_PROJECTIONS.to_vec();
        if s.conv {
            targets.extend(RESNET_CONVOLUTIONS);
        }
        let adapters = LoraAdapters::new(
            &base.unet_weights,
            &targets,
            s.rank,
            s.alpha,
            s.seed,
            &device,
        )
        .map_err(compute("training"))?;
        // The text encoder's factors come from another stream of the seed than the UNet's.
        let text_adapters = s
            .text_encoder
            .then(|| {
                LoraAdapters::new(
                    &base.text_weights,
                    &TEXT_ATTENTION_PROJECTIONS,
                    s.rank,
                    s.alpha,
                    s.seed ^ 0x7465_7874,
                    &device,
                )
            })
            .transpose()
            .map_err(compute("training"))?;
        // SDXL's second text encoder, from a third stream.
        let text_adapters_2 = match (&base.text_2, s.text_encoder) {
            (Some((_, weights)), true) => Some(
                LoraAdapters::new(
                    weights,
                    &TEXT_ATTENTION_PROJECTIONS,
                    s.rank,
                    s.alpha,
                    s.seed ^ 0x7465_7832,
                    &device,
                )
                .map_err(compute("training"))?,
            ),
            _ => None,
        };
        let mut sets = vec![&adapters];
        sets.extend(text_adapters.as_ref());
        sets.extend(text_adapters_2.as_ref());
        let settings = Settings {
            loss_scale: (dtype == candle_core::DType::F16).then_some(65536.0),
            steps: s.steps,
            learning_rate: s.learning_rate,
            batch: s.batch,
            seed: s.seed,
            ..Settings::default()
        };
        let mut adamw = optimizer(&sets, &settings).map_err(compute("training"))?;
        let mut first = 0;
        if job.checkpoint.is_file() {
            match resume(&sets, &mut adamw, job.fingerprint, job.checkpoint) {
                Ok(Some(step)) => {
                    progress.note(&format!(
                        "resuming at step {step} from {}",
                        job.checkpoint.display()
                    ));
                    first = step.min(s.steps);
                }
                Ok(None) => progress.note(&format!(
                    "{} is of another run (other images or settings); starting over",
                    job.checkpoint.display()
                )),
                Err(message) => return Err(request(message)),
            }
        }
        progress.started(first, s.steps);
        let training = Instant::now();
        let model = BaseModel {
            unet_config: &base.unet_config,
            unet_weights: &base.unet_weights,
            schedule: &schedule,
            dtype,
            text_encoder: text_adapters.as_ref().map(|adapters| TextEncoder {
                config: &base.text_config,
                weights: &base.text_weights,
                adapters,
            }),
            text_encoder_2: match (&base.text_2, &text_adapters_2) {
                (Some((config, weights)), Some(adapters)) => Some(TextEncoder {
                    config,
                    weights,
                    adapters,
                }),
                _ => None,
            },
        };
        let every = job.checkpoint_every.max(1);
        let mut start = first;
        let updates_before = adamw.updates();
        while start < s.steps {
            let end = (start + every).min(s.steps);
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
                    progress.step(loss);
                    true
                },
            )
            .map_err(compute("training"))?;
            if end < s.steps {
                if let Some(parent) = job.checkpoint.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| request(format!("{}: {e}", parent.display())))?;
                }
                save_checkpoint(&sets, &adamw, job.fingerprint, job.checkpoint).map_err(request)?;
            }
            start = end;
        }
        let metadata = KohyaMetadata {
            base_model: job.model.to_owned(),
            family: base.family().to_owned(),
            resolution: (width, height),
            steps: s.steps,
            learning_rate: s.learning_rate,
            images: job.images.len(),
            seed: s.seed,
            v_prediction: base.scheduler.prediction_type == "v_prediction",
        };
        if let Some(parent) = job.output.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| request(format!("{}: {e}", parent.display())))?;
        }
        adapters
            .save_kohya(&sets[1..], job.output, &metadata)
            .map_err(request)?;
        // Finished: the checkpoint has served.
        let _ = std::fs::remove_file(job.checkpoint);
        Ok(TrainingReport {
            modules: sets.iter().map(|set| set.modules().count()).sum(),
            steps_run: s.steps - first,
            seconds: training.elapsed().as_secs_f64(),
            images: job.images.len(),
            resolution: (width, height),
            precision: match dtype {
                candle_core::DType::F16 => "f16 mixed precision",
                candle_core::DType::BF16 => "bf16 mixed precision",
                _ => "f32",
            },
            skipped: (s.steps - first) - (adamw.updates() - updates_before),
        })
    }
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
    fn images_come_sorted_with_their_captions() {
        let dir = tempfile::tempdir().unwrap();
        let png = |name: &str| {
            image::RgbaImage::new(2, 2)
                .save(dir.path().join(name))
                .unwrap()
        };
        png("b.png");
        png("a.png");
        std::fs::write(dir.path().join("a.txt"), "  a knight, pxlgn style\n").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not an image").unwrap();
        let images = images_in(dir.path(), "default").unwrap();
        let seen: Vec<(&str, &str, bool)> = images
            .iter()
            .map(|i| (i.file_name.as_str(), i.caption.as_str(), i.captioned))
            .collect();
        assert_eq!(
            seen,
            [
                ("a.png", "a knight, pxlgn style", true),
                ("b.png", "default", false)
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(
            images_in(empty.path(), "x")
                .unwrap_err()
                .contains("no .png images")
        );
    }
}
