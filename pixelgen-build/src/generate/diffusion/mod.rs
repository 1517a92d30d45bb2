//! The `Diffusion` backend: Stable Diffusion 1.x, 2.x (v-prediction, Turbo) and XL through
//! candle, on the CPU or (with the `cuda` feature) an NVIDIA GPU, with LoRAs merged at load.
//!
//! Data flows: [`locate`] finds the files → [`model::LoadedModel::load`] reads the
//! configs and safetensors (a single file goes through [`ldm`]), merges LoRAs ([`lora`]) and
//! builds [`clip`], [`unet`] and candle's VAE → [`sample`] encodes prompts
//! ([`tokenizer`]), denoises from [`noise`] with a [`scheduler`] and decodes.

pub mod clip;
pub mod config;
pub mod cpu_ops;
pub mod download;
pub mod ldm;
pub mod lora;
pub mod model;
pub mod noise;
pub mod sample;
pub mod scheduler;
pub mod sgm;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use image::RgbaImage;

pub use crate::generate::model_files::{ModelLocation, locate};
pub use model::{LoadedModel, LoraFile};
pub use sample::{Noise, Request, Settings};

pub use super::{DeviceRequest, frame_seed};
use super::{GenerateError, Generator, Job};
use crate::environment::Environment;
use crate::manifest::{GeneratorSpec, SpriteSpec};
use crate::timings::Timings;

/// Why a model could not be found, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error(transparent)]
    Locate(#[from] crate::generate::model_files::LocateError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Lora(String),
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Download(String),
    #[error("{what} failed: {message}")]
    Compute { what: &'static str, message: String },
    #[error("{0}")]
    Device(String),
}

/// The device and precision to run on, as `request` asks (`PIXELGEN_DEVICE`: `auto`,
/// `cpu`, `cuda`, `cuda:N`; `PIXELGEN_DTYPE`: `f32`, `f16`, `bf16`). `auto` takes the first
/// GPU when this build has CUDA and one is there, else the CPU. Half precision is the
/// default on a GPU, f32 on the CPU. The note, when there is one, is for the user (said
/// once per build). The warm server resolves its clients' requests with this too, so
/// that a build gets the device and precision it asked for.
pub fn select_device_for(
    request: &DeviceRequest,
) -> Result<(Device, DType, Option<String>), DiffusionError> {
    let device = match request.device.trim() {
        "auto" | "" => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                cuda(0)?
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        "cuda" => cuda(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(ordinal) => cuda(ordinal)?,
            None => {
                return Err(DiffusionError::Device(format!(
                    "PIXELGEN_DEVICE=`{other}` is not a device: use auto, cpu, cuda or cuda:N"
                )));
            }
        },
    };
    let dtype = match request.dtype.as_deref().map(str::trim) {
        None | Some("") => {
            if device.is_cpu() {
                DType::F32
            } else {
                DType::F16
            }
        }
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => {
            return Err(DiffusionError::Device(format!(
                "PIXELGEN_DTYPE=`{other}` is not a precision: use f32, f16 or bf16"
            )));
        }
    };
    let note = (!cfg!(feature = "cuda") && nvidia_gpu_present()).then(|| {
        "pixelgen: this machine has an NVIDIA GPU but pixelgen-build was built without its `cuda` feature, so Stable Diffusion runs on the CPU (slowly): add `features = [\"cuda\"]` to the pixelgen-build build-dependency (needs the CUDA toolkit's nvcc)".to_string()
    });
    Ok((device, dtype, note))
}

/// How many images go through the UNet together: `requested` (`PIXELGEN_BATCH`) when
/// given, else 1 on the CPU and 4 on a GPU.
pub fn batch_for(device: &Device, requested: Option<usize>) -> usize {
    requested
        .filter(|&b| b > 0)
        .unwrap_or(if device.is_cpu() { 1 } else { 4 })
}

/// The sampling settings of a sprite's generator on `loaded` (its training size when the
/// sprite gives no resolution), checked against the model.
pub fn settings_for(
    loaded: &LoadedModel,
    resolution: Option<(u32, u32)>,
    steps: u32,
    guidance: f32,
    scheduler: crate::manifest::Scheduler,
) -> Result<Settings, DiffusionError> {
    let default = loaded.default_resolution().unwrap_or(512);
    let (width, height) = resolution
        .map(|(w, h)| (w as usize, h as usize))
        .unwrap_or((default, default));
    let settings = Settings {
        width,
        height,
        steps: steps as usize,
        guidance: f64::from(guidance),
        scheduler,
    };
    loaded.check(&settings)?;
    Ok(settings)
}

/// The sampling request of one frame: frame `frame` of a sprite is drawn from seed
/// `seed + frame`, and an empty negative prompt is no negative prompt.
pub fn request_for(prompt: &str, negative_prompt: &str, seed: u64) -> Request {
    Request {
        prompt: prompt.to_string(),
        negative_prompt: (!negative_prompt.is_empty()).then(|| negative_prompt.to_string()),
        noise: Noise::Seed(seed),
    }
}

fn cuda(ordinal: usize) -> Result<Device, DiffusionError> {
    if !cfg!(feature = "cuda") {
        return Err(DiffusionError::Device(
            "PIXELGEN_DEVICE asks for CUDA but pixelgen-build was built without its `cuda` feature"
                .into(),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| DiffusionError::Device(format!("cannot open CUDA device {ordinal}: {e}")))
}

/// Whether the NVIDIA driver is loaded, without linking CUDA.
fn nvidia_gpu_present() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists()
}

/// A machine-wide lock on running Stable Diffusion: cargo runs the build scripts of several
/// crates at once, and two of them loading multi-gigabyte models onto one GPU (or into RAM)
/// together would run out of memory. Held from before loading until the backend is dropped.
pub struct DeviceLock {
    _file: std::fs::File,
}

impl DeviceLock {
    /// Waits for the lock in `dir` (the environment's `lock_dir`: `PIXELGEN_LOCK_DIR`, else
    /// the temporary folder).
    pub fn acquire(dir: &Path) -> Result<DeviceLock, DiffusionError> {
        let path = dir.join("pixelgen-diffusion.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                DiffusionError::Device(format!(
                    "cannot open the device lock {}: {e}",
                    path.display()
                ))
            })?;
        file.lock().map_err(|e| {
            DiffusionError::Device(format!(
                "cannot take the device lock {}: {e}",
                path.display()
            ))
        })?;
        Ok(DeviceLock { _file: file })
    }
}

/// The backend for sprites whose generator is `Diffusion`: one model with one set of LoRAs,
/// loaded once and used for every job given to it.
pub struct Diffusion {
    model: LoadedModel,
    _lock: DeviceLock,
    settings: Settings,
    /// How many images go through the UNet together.
    batch: usize,
    note: Option<String>,
}

impl Diffusion {
    /// Loads the model and LoRAs of `sprite` (whose generator must be `Diffusion`); a
    /// relative model path is taken from `manifest_dir`.
    pub fn load(
        sprite: &SpriteSpec,
        manifest_dir: &Path,
        environment: &Environment,
    ) -> Result<Self, GenerateError> {
        let failed = |e: DiffusionError| GenerateError::Failed {
            sprite: sprite.name.clone(),
            message: e.to_string(),
        };
        let GeneratorSpec::Diffusion {
            model,
            steps,
            guidance,
            scheduler,
            resolution,
        } = &sprite.generator
        else {
            return Err(GenerateError::Failed {
                sprite: sprite.name.clone(),
                message: "not a Diffusion sprite".into(),
            });
        };
        let request = &environment.device;
        let hub_cache = environment.hub.cache_dir.as_deref();
        let (device, dtype, note) = select_device_for(request).map_err(failed)?;
        let location = locate(model, manifest_dir, hub_cache).map_err(|e| failed(e.into()))?;
        let lock = DeviceLock::acquire(&environment.lock_dir).map_err(failed)?;
        let loaded = LoadedModel::load(&location, &lora_files(sprite), &device, dtype, hub_cache)
            .map_err(failed)?;
        let settings =
            settings_for(&loaded, *resolution, *steps, *guidance, *scheduler).map_err(failed)?;
        let batch = batch_for(&device, request.batch);
        Ok(Self {
            model: loaded,
            _lock: lock,
            settings,
            batch,
            note,
        })
    }
}

/// A sprite's LoRAs as the loader takes them (resolved paths, weights in order).
pub fn lora_files(sprite: &SpriteSpec) -> Vec<LoraFile> {
    sprite
        .loras
        .iter()
        .map(|l| LoraFile {
            path: l.resolved.clone(),
            weight: f64::from(l.weight),
        })
        .collect()
}

impl Generator for Diffusion {
    fn generate(
        &mut self,
        jobs: &[Job<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError> {
        let mut images = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(self.batch) {
            let requests: Vec<Request> = chunk
                .iter()
                .map(|job| {
                    request_for(
                        &job.sprite.prompt,
                        &job.sprite.negative_prompt,
                        frame_seed(job.sprite.seed, job.frame),
                    )
                })
                .collect();
            let drawn = self
                .model
                .generate_timed(&self.settings, &requests, timings)
                .map_err(|e| GenerateError::Failed {
                    sprite: chunk[0].sprite.name.clone(),
                    message: e.to_string(),
                })?;
            images.extend(
                drawn
                    .into_iter()
                    .map(|rgb| image::DynamicImage::ImageRgb8(rgb).into_rgba8()),
            );
        }
        Ok(images)
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = DeviceLock::acquire(dir.path()).unwrap();
        let other = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("pixelgen-diffusion.lock"))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn frames_use_consecutive_seeds() {
        assert_eq!(frame_seed(42, 0), 42);
        assert_eq!(frame_seed(42, 3), 45);
        assert_eq!(frame_seed(u64::MAX, 1), 0);
    }
}
