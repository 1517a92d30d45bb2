//! Sources of frames, behind one seam. Each backend lives in its own folder and
//! implements [`Backend`]: what a sprite's key covers of it, which frames it draws
//! together, opening a [`Drawer`] for such a group, and how it describes itself to an
//! assistant. [`GeneratorSpec`] is the one place a backend is registered.
//!
//! - [`procedural`]: embedded, deterministic placeholder art; no model.
//! - [`diffusion`]: Stable Diffusion through candle, in this process or in the warm
//!   server (`cargo pixelgen serve`), which is a wrapper around the same drawing code.
//! - [`image_servers`]: the InvokeAI and ComfyUI servers a studio runs, several at once.
//!
//! Invariants:
//! - This module and the backends import nothing of the stages above them (manifest,
//!   plan, pipeline): they see a sprite's settings, its LoRAs and its frames as the types
//!   defined here.
//! - A drawer draws what the key covers and nothing else: two frames with the same key
//!   get the same pixels whichever drawer (or server) drew them.

pub mod batched;
pub mod conditioning;
pub mod diffusion;
pub mod image_servers;
pub mod procedural;
pub mod settings;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use image::RgbaImage;

pub use crate::environment::DeviceRequest;
use crate::environment::Environment;
use crate::identity::{FrameId, LoraName, SpriteName};
use crate::key::{Canonical, InputFile};
use crate::timings::Timings;
pub use conditioning::Conditioning;

/// Which backend draws a sprite, with its settings: the one registration of each backend.
#[derive(Debug, Clone, PartialEq)]
pub enum GeneratorSpec {
    /// The embedded generator: deterministic placeholder art, no model needed.
    Procedural,
    /// Stable Diffusion through candle.
    Diffusion(diffusion::DiffusionSpec),
    /// An image-generation server the studio runs (InvokeAI, ComfyUI).
    Server(Box<image_servers::ServerSpec>),
}

impl GeneratorSpec {
    /// The backend that draws with these settings.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            GeneratorSpec::Procedural => &procedural::Procedural,
            GeneratorSpec::Diffusion(spec) => spec,
            GeneratorSpec::Server(spec) => spec.as_ref(),
        }
    }

    /// Whether the generator draws raw images that are pixelized (and cached as raw
    /// images), as opposed to the procedural generator's true pixels.
    pub fn draws_raw_images(&self) -> bool {
        self.backend().draws_raw_images()
    }
}

/// A source of frames, implemented by each backend's settings (as bevy_asset's
/// `Process` is by its settings): everything the stages above need to know of it.
pub trait Backend: Sync {
    /// Its name in the manifest (`generator: Diffusion(..)`) and in messages.
    fn name(&self) -> &'static str;

    /// Whether it draws images that are pixelized (and whose raw images are cached),
    /// as opposed to true pixels at the sprite's size.
    fn draws_raw_images(&self) -> bool;

    /// What a sprite's key covers of this generator. `inputs` hashes the files it names
    /// (or gives the identities the lock file recorded).
    fn key(&self, inputs: &mut dyn KeyInputs) -> Result<KeyParts, KeyError>;

    /// Which frames one drawer draws together: frames of sprites whose settings, LoRAs
    /// and batch-wide conditioning ([`Conditioning::encode_group`]) give the same group
    /// share a loaded model (or a fan-out) and its batches. Where in the manifest they
    /// were written plays no part.
    fn group(&self, loras: &[ResolvedLora], conditioning: &Conditioning) -> GroupKey;

    /// A drawer for one group's frames: a model loaded, servers connected. `group` is
    /// what the plan resolved for the group's first sprite (its LoRAs and input files,
    /// the same for the whole group). Loading time goes to `timings`.
    fn open(
        &self,
        group: &GroupInputs<'_>,
        workshop: &mut Workshop,
        timings: &mut Timings,
    ) -> Result<Box<dyn Drawer>, GenerateError>;

    /// Its settings as an assistant reads them (MCP `get_sprite`).
    fn describe(&self) -> serde_json::Value;

    /// One line for listings: `procedural`, `diffusion: MODEL`, `server (invokeai): MODEL`.
    fn summary(&self) -> String;

    /// A model this backend loads on this machine (by path or Hugging Face id): builds
    /// watch its files and download it when missing.
    fn local_model(&self) -> Option<&str> {
        None
    }

    /// Why it cannot apply a sprite's LoRAs, if it cannot (the manifest refuses such a
    /// sprite at its `loras`). The message continues "sprite `NAME` …".
    fn refuses_loras(&self) -> Option<settings::Refusal> {
        None
    }

    /// Why it cannot draw a sprite with `conditioning`, if it cannot (the manifest places
    /// the refusal at the sprite's `init`, `controlnet` or `tiling`, the refusal's field).
    /// The default draws none of it; the message continues "sprite `NAME` …".
    fn refuses_conditioning(
        &self,
        conditioning: &Conditioning,
        sprite_size: (u32, u32),
        context: &settings::SettingsContext<'_>,
    ) -> Option<settings::Refusal> {
        let _ = (context, sprite_size);
        refuse_all(self.name(), conditioning)
    }

    /// Online, before the plan: identities the key covers that only the outside world
    /// can tell (an image server's model), asked through `workshop` (each once per run).
    fn report_identities(&self, workshop: &mut Workshop) -> Result<Reported, String> {
        let _ = workshop;
        Ok(Reported::default())
    }
}

/// The refusal of a backend that draws no conditioning, for the first kind a sprite uses.
pub fn refuse_all(backend: &str, conditioning: &Conditioning) -> Option<settings::Refusal> {
    let (field, what) = if conditioning.init.is_some() {
        ("init", "draw from an init image")
    } else if !conditioning.controlnets.is_empty() {
        ("controlnet", "follow a ControlNet")
    } else if conditioning.tiling.is_some() {
        ("tiling", "draw seamless tiles")
    } else {
        return None;
    };
    Some(settings::Refusal::new(
        field,
        format!("uses the {backend} generator, which cannot {what}"),
        "not available with this generator",
        "draw the sprite with `generator: Diffusion(...)`, or remove the field",
    ))
}

/// What a backend adds to a sprite's key.
#[derive(Default)]
pub struct KeyParts {
    /// The generator input group: the backend, its version and its settings.
    pub generator: Canonical,
    /// The model input group's identity (a model's files, a server's model, a
    /// workflow); `None` for a backend without a model.
    pub model: Option<blake3::Hash>,
    /// The input files the key stands for, as `sprites.lock` records them.
    pub files: Vec<(InputFile, blake3::Hash)>,
}

/// An input a backend names that cannot be read, for the plan to place in the manifest.
#[derive(Debug)]
pub struct KeyError {
    pub message: String,
    pub help: &'static str,
}

/// Content hashes and identities a backend's key needs (the plan provides them, once per
/// file per run).
pub trait KeyInputs {
    /// A model's identity: the content of its files on this machine, else the lock's.
    fn model_identity(&mut self, model: &str) -> blake3::Hash;
    /// An input file's content hash (the lock's when the file is absent and that is
    /// allowed).
    fn file_hash(&mut self, file: InputFile, path: &Path) -> std::io::Result<blake3::Hash>;
    /// What this run's servers reported, else what the lock file recorded, for `file`.
    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash>;
}

/// Identities a backend learned from outside this run, with notes for the user.
#[derive(Debug, Default)]
pub struct Reported {
    pub identities: Vec<(InputFile, blake3::Hash)>,
    pub notes: Vec<String>,
}

/// Frames that one drawer draws together ([`Backend::group`]): the backend's settings
/// and the LoRAs, canonically encoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey(Vec<u8>);

impl GroupKey {
    /// The group of `backend` with everything `encoding` holds.
    pub fn new(backend: &str, encoding: &Canonical) -> GroupKey {
        let mut bytes = Canonical::new().str(backend).take().as_bytes().to_vec();
        bytes.extend_from_slice(encoding.as_bytes());
        GroupKey(bytes)
    }
}

/// Writes LoRAs into a group's encoding: by resolved file and weight, in manifest order
/// (merging order matters).
pub fn encode_loras(encoding: &mut Canonical, loras: &[ResolvedLora]) {
    encoding.u64(loras.len() as u64);
    for lora in loras {
        encode_path(encoding, &lora.file);
        encoding.u64(u64::from(lora.weight.to_bits()));
    }
}

/// Writes a path by its components, as paths compare: `dir/./a` and `dir/a` are one file.
pub fn encode_path(encoding: &mut Canonical, path: &Path) {
    let components: Vec<_> = path.components().collect();
    encoding.u64(components.len() as u64);
    for component in components {
        encoding.str(&component.as_os_str().to_string_lossy());
    }
}

/// A sprite's LoRA as a backend loads it: a file (a trained one's is in the cache), its
/// weight, and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    pub file: PathBuf,
    pub weight: f32,
    /// The file's content hash, or a trained LoRA's key (hex).
    pub hash: String,
    /// Set for a trained LoRA: its file exists only once it is trained.
    pub trained: Option<LoraName>,
    /// The blake3 of the file's bytes (hex), as image servers find a LoRA: a file's
    /// `hash`; a trained LoRA's once it is trained (the pipeline fills it in).
    pub content_hash: Option<String>,
}

/// What the plan resolved for a group of frames.
#[derive(Debug, Clone, Copy)]
pub struct GroupInputs<'a> {
    pub sprite: &'a SpriteName,
    pub loras: &'a [ResolvedLora],
    /// The group's batch-wide conditioning (its first sprite's; the same for the group).
    pub conditioning: &'a Conditioning,
    /// The content hash (hex) of each input file the keys cover.
    pub files: &'a BTreeMap<InputFile, String>,
}

/// What the backends share over one run: where relative paths start, the environment,
/// and each backend's state between groups.
pub struct Workshop {
    pub manifest_dir: PathBuf,
    pub environment: Environment,
    /// The image servers, asked once per run.
    pub image_servers: image_servers::Connections,
    /// Where to look for `cargo pixelgen serve`; `None`: always in-process.
    #[cfg(unix)]
    pub warm_server: Option<diffusion::warm::WarmServer>,
}

impl Workshop {
    pub fn new(manifest_dir: &Path, environment: &Environment) -> Workshop {
        Workshop {
            manifest_dir: manifest_dir.to_path_buf(),
            environment: environment.clone(),
            image_servers: image_servers::Connections::new(environment.image_servers.clone()),
            #[cfg(unix)]
            warm_server: None,
        }
    }
}

/// One frame to draw.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub sprite: &'a SpriteName,
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    /// The sprite's seed (frame `n` of an AI sprite is drawn from `seed + n`).
    pub seed: u64,
    pub frame: u32,
    /// How many frames the sprite has.
    pub frames: u32,
    /// The sprite's size (the pixelize stage brings any image to it).
    pub width: u32,
    pub height: u32,
    /// What the drawing follows besides prompt and seed.
    pub conditioning: &'a Conditioning,
}

impl Frame<'_> {
    /// Which frame this is.
    pub fn id(&self) -> FrameId {
        self.sprite.frame(self.frame)
    }
}

/// How one frame ended.
#[derive(Debug)]
pub enum Drawn {
    /// The image (any size), and the image server that drew it, if one did.
    Image {
        image: RgbaImage,
        server: Option<String>,
    },
    /// The backend could not draw it (the others may have been drawn).
    Failed(String),
}

/// Draws one group's frames.
pub trait Drawer: Send {
    /// Draws `frames`, calling `done` on this thread with each frame's index in
    /// `frames` as it ends, in any order; stops soon after `done` breaks. Frames that
    /// were drawn before a failure are all passed to `done` first. Returns notes for the
    /// user.
    fn draw(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
        done: &mut dyn FnMut(usize, Drawn) -> ControlFlow<()>,
    ) -> Result<Vec<String>, GenerateError>;
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "sprite `{sprite}`: the {generator} generator is not available in this build of pixelgen-build\nhelp: {help}"
    )]
    Unavailable {
        sprite: SpriteName,
        generator: &'static str,
        help: String,
    },
    #[error("sprite `{sprite}`: generation failed: {message}")]
    Failed { sprite: SpriteName, message: String },
    /// The Stable Diffusion backend could not load or run the model.
    #[error("sprite `{sprite}`: generation failed: {source}")]
    Diffusion {
        sprite: SpriteName,
        source: pixelgen_diffusion::DiffusionError,
    },
    /// A model named by Hugging Face id that is not on this machine and could not be
    /// downloaded.
    #[error("model `{model}`: no model folder or file at {}, and {source}", tried.display())]
    Download {
        model: String,
        /// Where the id was also looked for as a path.
        tried: std::path::PathBuf,
        source: pixelgen_diffusion::DiffusionError,
    },
    /// Frames the image servers could not draw, with each server's message.
    #[error("{}", servers_failed(failures))]
    Servers { failures: Vec<(FrameId, String)> },
}

fn servers_failed(failures: &[(FrameId, String)]) -> String {
    let mut text = format!(
        "{} frame(s) could not be drawn on the image servers:",
        failures.len()
    );
    for (frame, message) in failures.iter().take(20) {
        text.push_str(&format!("\n  {frame}: {message}"));
    }
    if failures.len() > 20 {
        text.push_str(&format!("\n  … and {} more", failures.len() - 20));
    }
    text.push_str("\nhelp: the frames that were drawn are cached; fix the server (or the sprite) and build again");
    text
}

/// The seed of frame `frame` of an AI sprite: frames are drawn from consecutive seeds.
pub fn frame_seed(seed: u64, frame: u32) -> u64 {
    seed.wrapping_add(u64::from(frame))
}

/// Settles the number of CPU threads candle computes with, once per process.
///
/// candle asks for its thread count on every CPU matrix product, and unless
/// `RAYON_NUM_THREADS` is set each answer re-reads `/proc/cpuinfo` (about a thousand reads
/// per image). This sets `RAYON_NUM_THREADS` to the count candle would pick anyway, unless
/// the user set it. The rayon pools pixelgen uses (weight conversion, hashing) follow it.
///
/// # Safety
///
/// It writes the process environment, so no other thread may read or write the
/// environment while it runs: call it at the start of `main` (the CLI) or of
/// `Build::run` (a build script's main thread, before it starts any).
pub unsafe fn settle_cpu_threads() {
    #[cfg(feature = "diffusion")]
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = diffusion::candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees no other thread touches the environment now.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

#[cfg(test)]
mod tests;
