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
use crate::generate::{Conditioning, GeneratorSpec};
use crate::identity::{AtlasName, LoraName, SpriteName};

#[cfg(feature = "cli")]
pub mod edit;
mod lora;
mod merge;
mod raw;
mod training;
mod validate;

pub use lora::{LoraSource, LoraSpec};
pub use training::{DEFAULT_CAPTION, TrainedLoraSpec, TrainingSettings};

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
/// The sampling limits the AI backends check (theirs; named here for the manifest's readers).
pub use crate::generate::settings::{MAX_GUIDANCE, MAX_RESOLUTION, MAX_STEPS};

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
    /// What the drawing follows besides prompt and seed (`init`, `controlnet`, `tiling`).
    pub conditioning: Conditioning,
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
        lora_inputs(&self.sprites, &self.trained_loras)
    }
}

/// The LoRA files `sprites` name and the image folders of `trained` LoRAs.
pub fn lora_inputs<'a>(
    sprites: impl IntoIterator<Item = &'a SpriteSpec>,
    trained: impl IntoIterator<Item = &'a TrainedLoraSpec>,
) -> std::collections::BTreeSet<&'a Path> {
    let files = sprites
        .into_iter()
        .flat_map(|s| &s.loras)
        .filter_map(|l| match &l.source {
            LoraSource::File { resolved, .. } => Some(resolved.as_path()),
            LoraSource::Trained(_) => None,
        });
    let folders = trained.into_iter().map(|t| t.images_dir.as_path());
    files.chain(folders).collect()
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
