//! `sprites.ron` → validated specs. Every error names the file, line and column, and
//! says what to do; nothing here panics on user input.
//!
//! Stages: `raw` (the file's shape, as serde reads it) → `merge` (each sprite's fields
//! with `defaults` applied, remembering who wrote each) → `validate` (every value
//! checked, errors placed where the value is written) → [`Manifest`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::atlas::AtlasOptions;
use crate::diagnostics::{Diagnostic, SourceFile};
use crate::generate::server::{Endpoint, ServerKind};
use crate::identity::{AtlasName, LoraName, SpriteName};
use crate::train::TrainingSettings;

pub mod edit;
mod merge;
mod raw;
mod validate;

use crate::palette::Palette;
use raw::RawManifest;

/// The name of the atlas that sprites go to when the manifest declares none.
pub const DEFAULT_ATLAS: &str = "main";
/// Largest sprite side accepted; bigger sprites are not pixel art.
pub const MAX_SIDE: u32 = 1024;
/// Most frames one animation may have.
pub const MAX_FRAMES: u32 = 256;
/// Largest atlas page side accepted (`max_size`): what GPUs commonly load as one texture.
pub const MAX_PAGE_SIDE: u32 = 16384;
/// Most pixels of `padding` or `extrude` an atlas may ask for.
pub const MAX_SPACING: u32 = 256;
/// Largest side of a Diffusion `resolution`; it must also be a multiple of 8.
pub const MAX_RESOLUTION: u32 = 4096;
/// Most diffusion steps.
pub const MAX_STEPS: u32 = 1000;
/// Largest classifier-free guidance scale accepted (it must be finite and not negative).
pub const MAX_GUIDANCE: f32 = 100.0;

/// A validated manifest: every sprite with its defaults applied, sorted by name.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: SourceFile,
    /// Sorted by name.
    pub atlases: Vec<AtlasSpec>,
    /// Sorted by name.
    pub sprites: Vec<SpriteSpec>,
    /// LoRAs pixelgen trains from the game's art, sorted by name.
    pub trained_loras: Vec<TrainedLoraSpec>,
    /// Files the manifest reads itself (palette files), for rerun-if-changed.
    pub input_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AtlasSpec {
    pub name: AtlasName,
    /// The Rust module name in the generated code.
    pub module: String,
    pub options: AtlasOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpriteSpec {
    pub name: SpriteName,
    /// The Rust constant name in the generated code.
    pub constant: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    /// Declared with `frames:` (even `frames: 1`): the game gets an `Animation` constant,
    /// so adding frames later does not change the constant's type.
    pub animated: bool,
    pub atlas: AtlasName,
    pub generator: GeneratorSpec,
    pub loras: Vec<LoraSpec>,
    pub palette: Option<Palette>,
    /// At most this many colours when no palette is given (pixelized sprites).
    pub max_colors: Option<u32>,
    pub background: Background,
    /// A 1-pixel outline around the opaque pixels, drawn in the transparent area.
    pub outline: Option<[u8; 3]>,
    /// Where the sprite's name is in the manifest, for later errors.
    pub span: Range<usize>,
}

impl Manifest {
    /// Where the trained LoRA `name` is in `trained_loras` (and in the plan's `loras`).
    pub fn trained_lora_index(&self, name: &LoraName) -> Option<usize> {
        self.trained_loras
            .binary_search_by(|lora| lora.name.cmp(name))
            .ok()
    }

    /// The LoRA files the sprites name and the image folders of the trained LoRAs: what
    /// a build reruns for and `watch` watches, besides the manifest and its palettes.
    pub fn lora_inputs(&self) -> std::collections::BTreeSet<&Path> {
        let files = self
            .sprites
            .iter()
            .flat_map(|s| &s.loras)
            .filter_map(|l| match &l.source {
                LoraSource::File { resolved, .. } => Some(resolved.as_path()),
                LoraSource::Trained(_) => None,
            });
        let folders = self.trained_loras.iter().map(|t| t.images_dir.as_path());
        files.chain(folders).collect()
    }
}

/// Which backend draws a sprite, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum GeneratorSpec {
    /// The embedded generator: deterministic placeholder art, no model needed.
    Procedural,
    /// Stable Diffusion through candle.
    Diffusion {
        /// A Hugging Face model id (`stabilityai/sd-turbo`) or a local folder or file.
        model: String,
        steps: u32,
        guidance: f32,
        scheduler: Scheduler,
        /// Resolution the model draws at before pixelizing; the model's default when absent.
        resolution: Option<(u32, u32)>,
    },
    /// An image-generation server the studio runs (InvokeAI, ComfyUI).
    Server(Box<ServerSpec>),
}

impl GeneratorSpec {
    /// Whether the generator draws raw images that are pixelized (and cached as raw
    /// images), as opposed to the procedural generator's true pixels.
    pub fn draws_raw_images(&self) -> bool {
        matches!(
            self,
            GeneratorSpec::Diffusion { .. } | GeneratorSpec::Server(_)
        )
    }
}

/// A `Server(...)` generator: where to send frames and how they are drawn there.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub kind: ServerKind,
    /// As written (one or more); `PIXELGEN_IMAGE_SERVERS` may replace them at run time.
    /// Not part of any key: the same model on another server draws the same art.
    pub endpoints: Vec<Endpoint>,
    /// InvokeAI: the model's name or key on the server. ComfyUI: the checkpoint name
    /// written into the workflow's model input (empty: the workflow's own).
    pub model: String,
    pub steps: u32,
    pub guidance: f32,
    /// The server's own scheduler name (InvokeAI: `euler`, `ddim`, `dpmpp_2m_k`, ...).
    pub scheduler: String,
    /// Resolution the server draws at; the model's default when absent.
    pub resolution: Option<(u32, u32)>,
    /// ComfyUI: the API-format workflow and where the inputs go.
    pub workflow: Option<WorkflowSpec>,
}

/// Default steps, guidance and scheduler of a Server generator (a typical non-Turbo model).
pub const SERVER_DEFAULT_STEPS: u32 = 20;
pub const SERVER_DEFAULT_GUIDANCE: f32 = 7.0;
pub const SERVER_DEFAULT_SCHEDULER: &str = "euler";

/// A ComfyUI workflow file (API format) and the nodes that take pixelgen's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    /// As written in the manifest.
    pub path: String,
    /// Resolved against the manifest's folder.
    pub resolved: PathBuf,
    pub inputs: WorkflowInputs,
}

/// `(node id, input name)` for each value pixelgen sets in a ComfyUI workflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkflowInputs {
    pub prompt: (String, String),
    pub negative_prompt: Option<(String, String)>,
    pub seed: (String, String),
    /// The node whose `width` and `height` inputs take the draw size.
    pub size: Option<String>,
    pub model: Option<(String, String)>,
    /// The node whose `steps`, `cfg` and `sampler_name` take the manifest's settings.
    pub sampler: Option<String>,
}

/// The sampler of a Diffusion sprite (defined beside the samplers, in `pixelgen-diffusion`).
pub use pixelgen_diffusion::Scheduler;

/// A LoRA adapter applied to the model, with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub source: LoraSource,
    pub weight: f32,
    /// Where the path (or the trained LoRA's name) is written in the manifest, for errors.
    pub span: Range<usize>,
}

/// Where a sprite's LoRA comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraSource {
    /// A `.safetensors` file the user made or downloaded.
    File {
        /// As written in the manifest (used in messages and the lock file).
        path: String,
        /// Resolved against the manifest's folder.
        resolved: PathBuf,
    },
    /// One of the manifest's `trained_loras`, a build product that lives in the cache.
    Trained(LoraName),
}

impl LoraSpec {
    /// How messages name the LoRA: its path, or `trained LoRA `name``.
    pub fn describe(&self) -> String {
        match &self.source {
            LoraSource::File { path, .. } => path.clone(),
            LoraSource::Trained(name) => format!("trained LoRA `{name}`"),
        }
    }
}

/// A LoRA trained from a folder of the game's own art (`trained_loras:`): its key covers
/// the images, their captions, the base model and every setting; the trained file is
/// stored in the cache like a sprite.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedLoraSpec {
    pub name: LoraName,
    /// The image folder as written in the manifest.
    pub images: String,
    /// Resolved against the manifest's folder.
    pub images_dir: PathBuf,
    /// The base model, named like a Diffusion generator's.
    pub model: String,
    pub settings: TrainingSettings,
    /// Where the name is written in the manifest.
    pub span: Range<usize>,
}

/// What happens to the pixels around the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Background {
    /// Made transparent (binary alpha).
    #[default]
    Transparent,
    /// Filled with this colour: every pixel ends opaque.
    Color([u8; 3]),
    /// Left as the generator drew it.
    Keep,
}

/// Loads and validates a manifest file.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = crate::input_file::read_to_string(
        path,
        crate::input_file::MAX_MANIFEST_BYTES,
        "sprite manifest",
    )
    .map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates manifest text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let source = SourceFile::new(path, text);
    // `implicit_some`: optional fields are written plainly (`seed: 4`, not `seed: Some(4)`).
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let raw: RawManifest = options.from_str(text).map_err(|error| {
        let start = source.offset_of(error.span.start.line, error.span.start.col);
        let end = source
            .offset_of(error.span.end.line, error.span.end.col)
            .max(start);
        Box::new(
            Diagnostic::new(
                &source,
                start..end,
                format!("invalid sprites.ron: {}", error.code),
            )
            .label(short_label(&error.code))
            .help(parse_hint(&error.code)),
        )
    })?;
    validate::validate(raw, &source, text, path).map_err(ManifestError::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "cannot read the sprite manifest: {source}\nhelp: sprites.ron is a text file beside Cargo.toml (see the manifest reference, docs/src/manifest.md in pixelgen's repository)"
    )]
    Read {
        path: PathBuf,
        source: crate::input_file::InputFileError,
    },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

impl From<Box<Diagnostic>> for ManifestError {
    fn from(diagnostic: Box<Diagnostic>) -> Self {
        ManifestError::Invalid(diagnostic)
    }
}

fn short_label(code: &ron::Error) -> String {
    match code {
        ron::Error::NoSuchStructField { found, .. } => format!("unknown field `{found}`"),
        ron::Error::MissingStructField { field, .. } => format!("missing `{field}`"),
        _ => "here".to_string(),
    }
}

fn parse_hint(code: &ron::Error) -> String {
    match code {
        ron::Error::NoSuchStructField {
            expected, outer, ..
        } => format!(
            "{} takes: {}",
            outer.as_deref().map_or("this entry".to_string(), |o| format!("`{o}`")),
            expected.join(", ")
        ),
        ron::Error::MissingStructField { field, .. } => {
            format!("add `{field}: ...` to this entry")
        }
        ron::Error::NoSuchEnumVariant { expected, .. } => {
            format!("use one of: {}", expected.join(", "))
        }
        _ => "the manifest is RON: `( defaults: (...), atlases: {...}, sprites: { \"name\": (prompt: \"...\", seed: 1), ... } )`; see the manifest reference, docs/src/manifest.md in pixelgen's repository".to_string(),
    }
}

#[cfg(test)]
mod tests;
