//! pixelgen's Stable Diffusion backend: SD 1.x, 2.x (v-prediction, Turbo) and XL through
//! candle, on the CPU (with pixelgen's own kernels in [`cpu_ops`]) or, with the `cuda`
//! feature, an NVIDIA GPU, with LoRAs merged at load.
//!
//! Data flows: [`files::locate`] finds the files → [`model::LoadedModel::load`] reads the
//! configs and safetensors (a single file goes through [`ldm`]), merges LoRAs ([`lora`])
//! and builds [`clip`], [`unet`] and the [`vae`] decoder → [`sample`] takes a [`request`],
//! encodes prompts ([`tokenizer`]), starts from [`noise`] or, for img2img and inpainting,
//! an image ([`condition`]), denoises with a [`scheduler`] (guided by any [`controlnet`])
//! and decodes.
//!
//! API boundary: this crate knows models, not sprites. `pixelgen-build` turns a sprite's
//! manifest entry into a [`request::Settings`] and [`request::Request`]s, reads the
//! environment and passes in what it says (device, lock folder, hub cache), and keeps
//! keys, cache and pixelizing to itself. Nothing here reads environment variables.
//!
//! Without the default `backend` feature only [`files`], [`Scheduler`] and [`advisory`]
//! (the file lock every pixelgen lock uses) are compiled: what a key needs to know about a
//! model, without candle.

pub mod advisory;
pub mod files;

#[cfg(feature = "backend")]
pub mod clip;
#[cfg(feature = "backend")]
pub mod condition;
#[cfg(feature = "backend")]
pub mod config;
#[cfg(feature = "backend")]
pub mod controlnet;
#[cfg(feature = "backend")]
pub mod cpu_ops;
#[cfg(feature = "backend")]
pub mod download;
#[cfg(feature = "backend")]
pub mod ldm;
#[cfg(feature = "backend")]
pub mod lora;
#[cfg(feature = "backend")]
pub mod model;
#[cfg(feature = "backend")]
pub mod noise;
#[cfg(feature = "backend")]
pub mod request;
#[cfg(feature = "backend")]
pub mod resample;
#[cfg(feature = "backend")]
pub mod sample;
#[cfg(feature = "backend")]
pub mod scheduler;
#[cfg(feature = "backend")]
pub mod seamless;
#[cfg(feature = "backend")]
pub mod sgm;
#[cfg(feature = "backend")]
pub mod tokenizer;
#[cfg(feature = "backend")]
pub mod train;
#[cfg(feature = "backend")]
pub mod unet;
#[cfg(feature = "backend")]
pub mod vae;

#[cfg(feature = "backend")]
mod device;

/// candle, as this crate was built with it (its `Device` and `DType` are in the API).
#[cfg(feature = "backend")]
pub use candle_core;
#[cfg(feature = "backend")]
pub use controlnet::{ControlNet, ControlUse, prepare_control_image};
#[cfg(feature = "backend")]
pub use device::{DeviceLock, batch_for, select_device};
pub use files::{LocateError, ModelLocation, locate};
#[cfg(feature = "backend")]
pub use model::{LoadedModel, LoraFile, TrainingBase};
#[cfg(feature = "backend")]
pub use request::{InitImage, Noise, Request, Settings};
#[cfg(feature = "backend")]
pub use sample::{Phase, PhaseTimes, request_for, settings_for};

use std::path::PathBuf;

/// The sampler a sprite asks for, by the names diffusers gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Deserialize)]
pub enum Scheduler {
    /// `DDIMScheduler`.
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    #[default]
    EulerAncestral,
}

/// The axes on which a drawing wraps seamlessly (`--tiling`, a sprite's `tiling`): every
/// 2-D convolution of the UNet and of the VAE decoder pads circularly on them and with
/// zeros on the other, so the image's opposite edges continue each other there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Tiling {
    /// Left and right edges meet.
    X,
    /// Top and bottom edges meet.
    Y,
    /// Both.
    XY,
}

impl Tiling {
    /// The command-line and lock-file name: `x`, `y`, `xy`.
    pub fn name(self) -> &'static str {
        match self {
            Tiling::X => "x",
            Tiling::Y => "y",
            Tiling::XY => "xy",
        }
    }

    /// The tiling called `name` (see [`Tiling::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Tiling::X, Tiling::Y, Tiling::XY]
            .into_iter()
            .find(|t| t.name() == name)
    }

    /// Whether the left and right edges meet.
    pub fn wraps_x(self) -> bool {
        matches!(self, Tiling::X | Tiling::XY)
    }

    /// Whether the top and bottom edges meet.
    pub fn wraps_y(self) -> bool {
        matches!(self, Tiling::Y | Tiling::XY)
    }
}

impl Scheduler {
    /// The command-line and lock-file name: `ddim`, `euler`, `euler-a`.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Ddim => "ddim",
            Scheduler::Euler => "euler",
            Scheduler::EulerAncestral => "euler-a",
        }
    }

    /// The scheduler called `name` (see [`Scheduler::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Scheduler::Ddim, Scheduler::Euler, Scheduler::EulerAncestral]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Why a model could not be found, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Boxed: a LoRA's shape mismatch is the largest error and would size them all.
    #[cfg(feature = "backend")]
    #[error(transparent)]
    Lora(Box<lora::LoraError>),
    /// A weight file candle could not read, or a tensor in it it could not load.
    #[cfg(feature = "backend")]
    #[error("{}: {what}: {source}", path.display())]
    Weights {
        path: PathBuf,
        what: String,
        source: Box<candle_core::Error>,
    },
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Download(String),
    /// The Hugging Face hub could not be asked, or a file not fetched from it.
    #[cfg(feature = "backend")]
    #[error(
        "cannot download `{repo}` from the Hugging Face hub ({what}: {source}); download it yourself with `huggingface-cli download {repo}`, or set `model` to a local folder"
    )]
    Hub {
        repo: String,
        what: String,
        source: Box<hf_hub::api::sync::ApiError>,
    },
    #[cfg(feature = "backend")]
    #[error("{what} failed: {source}")]
    Compute {
        what: &'static str,
        source: Box<candle_core::Error>,
    },
    #[error("{0}")]
    Device(String),
}

/// Maps a candle error of the stage `what` to [`DiffusionError::Compute`].
#[cfg(feature = "backend")]
pub(crate) fn compute(what: &'static str) -> impl Fn(candle_core::Error) -> DiffusionError {
    move |source| DiffusionError::Compute {
        what,
        source: Box::new(source),
    }
}

#[cfg(feature = "backend")]
impl From<lora::LoraError> for DiffusionError {
    fn from(error: lora::LoraError) -> Self {
        DiffusionError::Lora(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiling_names_round_trip() {
        for t in [Tiling::X, Tiling::Y, Tiling::XY] {
            assert_eq!(Tiling::from_name(t.name()), Some(t));
        }
        assert_eq!(Tiling::from_name("yx"), None);
    }

    #[test]
    fn scheduler_names_round_trip() {
        for s in [Scheduler::Ddim, Scheduler::Euler, Scheduler::EulerAncestral] {
            assert_eq!(Scheduler::from_name(s.name()), Some(s));
        }
        assert_eq!(Scheduler::from_name("dpm"), None);
    }
}
