//! `sprites.ron` → validated specs. Every error names the file, line and column, and
//! says what to do; nothing here panics on user input.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::atlas::AtlasOptions;
use crate::diagnostics::{Diagnostic, Locator, SourceFile};
use crate::identity::{AtlasName, SpriteName};
use crate::palette::{Palette, PaletteLoadError, parse_hex_color};

/// The name of the atlas that sprites go to when the manifest declares none.
pub const DEFAULT_ATLAS: &str = "main";
/// Largest sprite side accepted; bigger sprites are not pixel art.
pub const MAX_SIDE: u32 = 1024;
/// Most frames one animation may have.
pub const MAX_FRAMES: u32 = 256;

/// A validated manifest: every sprite with its defaults applied, sorted by name.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: SourceFile,
    /// Sorted by name.
    pub atlases: Vec<AtlasSpec>,
    /// Sorted by name.
    pub sprites: Vec<SpriteSpec>,
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

/// Which backend draws a sprite, with its parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum GeneratorSpec {
    /// The embedded generator: deterministic placeholder art, no model needed.
    Procedural,
    /// Stable Diffusion through candle.
    Diffusion {
        /// A Hugging Face model id (`stabilityai/sd-turbo`) or a local folder or file.
        model: String,
        #[serde(default = "default_steps")]
        steps: u32,
        #[serde(default)]
        guidance: f32,
        #[serde(default)]
        scheduler: Scheduler,
        /// Resolution the model draws at before pixelizing; the model's default when absent.
        #[serde(default)]
        resolution: Option<(u32, u32)>,
    },
}

fn default_steps() -> u32 {
    4
}

/// The sampler of a Diffusion sprite (defined beside the samplers, in `pixelgen-diffusion`).
pub use pixelgen_diffusion::Scheduler;

/// A LoRA adapter applied to the model, with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// As written in the manifest (used in messages and the lock file).
    pub path: String,
    /// Resolved against the manifest's folder.
    pub resolved: PathBuf,
    pub weight: f32,
    /// Where the path is written in the manifest, for errors about the file.
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
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
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
    Validator {
        source: &source,
        input_files: Default::default(),
        locator: Locator::new(text),
        dir: path.parent().unwrap_or(Path::new(".")),
    }
    .validate(raw)
    .map_err(ManifestError::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the sprite manifest {}: {source}\nhelp: create it beside Cargo.toml (see the README's manifest reference)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
        _ => "the manifest is RON: `( defaults: (...), atlases: {...}, sprites: { \"name\": (prompt: \"...\", seed: 1), ... } )`; see the README's manifest reference".to_string(),
    }
}

// ---- The shape of the file, as serde reads it ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Manifest")]
struct RawManifest {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    atlases: Ordered<RawAtlas>,
    sprites: Ordered<RawSprite>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "Defaults")]
struct RawDefaults {
    negative_prompt: Option<String>,
    seed: Option<u64>,
    size: Option<(u32, u32)>,
    atlas: Option<String>,
    generator: Option<GeneratorSpec>,
    loras: Option<Vec<RawLora>>,
    palette: Option<String>,
    max_colors: Option<u32>,
    background: Option<RawBackground>,
    outline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Sprite")]
struct RawSprite {
    prompt: String,
    negative_prompt: Option<String>,
    seed: Option<u64>,
    size: Option<(u32, u32)>,
    frames: Option<u32>,
    atlas: Option<String>,
    generator: Option<GeneratorSpec>,
    loras: Option<Vec<RawLora>>,
    palette: Option<String>,
    max_colors: Option<u32>,
    background: Option<RawBackground>,
    outline: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename = "Lora")]
struct RawLora {
    path: String,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "Atlas")]
struct RawAtlas {
    padding: Option<u32>,
    extrude: Option<u32>,
    max_size: Option<(u32, u32)>,
    power_of_two: Option<bool>,
    trim: Option<bool>,
}

#[derive(Deserialize, Clone)]
#[serde(rename = "Background")]
enum RawBackground {
    Transparent,
    Keep,
    /// `Color("#3a5f0b")`
    Color(String),
}

/// A RON map kept in file order, duplicates included, so that they can be reported.
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of \"name\": (...) entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

// ---- Validation ----

struct Validator<'a> {
    source: &'a SourceFile,
    input_files: std::cell::RefCell<Vec<PathBuf>>,
    locator: Locator<'a>,
    dir: &'a Path,
}

type Invalid = Box<Diagnostic>;

impl Validator<'_> {
    fn validate(&self, raw: RawManifest) -> Result<Manifest, Invalid> {
        let atlases = self.atlases(&raw)?;
        let defaults = &raw.defaults;
        let default_palette = match &defaults.palette {
            Some(name) => Some(self.palette(name, None)?),
            None => None,
        };

        let mut sprites: Vec<SpriteSpec> = Vec::with_capacity(raw.sprites.0.len());
        let mut seen: BTreeMap<String, String> = BTreeMap::new(); // constant → sprite name
        for (occurrence_of, (name, sprite)) in occurrences(&raw.sprites.0) {
            let span = self.key_span(name, occurrence_of);
            let constant = self.identifier(name, &span, "sprite", Case::Upper)?;
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate sprite name `{name}`"))
                    .label("defined again here")
                    .help("sprite names must be unique: rename one of them")
                    .into());
            }
            if let Some(other) = seen.insert(constant.clone(), name.clone()) {
                return Err(self
                    .error(span, format!("sprite names `{other}` and `{name}` both become the Rust constant `{constant}`"))
                    .label("collides once converted")
                    .help("rename one of them so that their identifiers differ")
                    .into());
            }
            sprites.push(self.sprite(
                name,
                constant,
                sprite,
                defaults,
                default_palette.as_ref(),
                &atlases,
                span,
            )?);
        }
        sprites.sort_by(|a, b| a.name.cmp(&b.name));

        let mut used: Vec<AtlasSpec> = atlases
            .into_iter()
            .filter(|atlas| sprites.iter().any(|s| s.atlas == atlas.name))
            .collect();
        if sprites.iter().any(|s| s.atlas == DEFAULT_ATLAS)
            && !used.iter().any(|a| a.name == DEFAULT_ATLAS)
        {
            used.push(AtlasSpec {
                name: AtlasName::from(DEFAULT_ATLAS),
                module: DEFAULT_ATLAS.to_string(),
                options: AtlasOptions::default(),
            });
        }
        used.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest {
            source: self.source.clone(),
            atlases: used,
            sprites,
            input_files: self.input_files.take(),
        })
    }

    fn atlases(&self, raw: &RawManifest) -> Result<Vec<AtlasSpec>, Invalid> {
        let mut atlases: Vec<AtlasSpec> = Vec::new();
        for (occurrence_of, (name, atlas)) in occurrences(&raw.atlases.0) {
            let span = self.key_span(name, occurrence_of);
            let module = self.identifier(name, &span, "atlas", Case::Lower)?;
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate atlas name `{name}`"))
                    .label("defined again here")
                    .help("atlas names must be unique")
                    .into());
            }
            if let Some(other) = atlases.iter().find(|a| a.module == module) {
                return Err(self
                    .error(
                        span,
                        format!(
                            "atlas names `{}` and `{name}` both become the Rust module `{module}`",
                            other.name
                        ),
                    )
                    .label("collides once converted")
                    .help("rename one of them")
                    .into());
            }
            let defaults = AtlasOptions::default();
            let (max_width, max_height) = atlas
                .max_size
                .unwrap_or((defaults.max_width, defaults.max_height));
            if max_width == 0 || max_height == 0 {
                let field = self
                    .locator
                    .field_after(span.end, "max_size")
                    .unwrap_or(span.clone());
                return Err(self
                    .error(
                        self.locator.value_after(&field),
                        "max_size must be at least 1×1",
                    )
                    .label("zero")
                    .help("use e.g. `max_size: (2048, 2048)`")
                    .into());
            }
            atlases.push(AtlasSpec {
                name: AtlasName::from(name.as_str()),
                module,
                options: AtlasOptions {
                    padding: atlas.padding.unwrap_or(defaults.padding),
                    extrude: atlas.extrude.unwrap_or(defaults.extrude),
                    max_width,
                    max_height,
                    power_of_two: atlas.power_of_two.unwrap_or(defaults.power_of_two),
                    trim: atlas.trim.unwrap_or(defaults.trim),
                },
            });
        }
        Ok(atlases)
    }

    #[allow(clippy::too_many_arguments)]
    fn sprite(
        &self,
        name: &str,
        constant: String,
        raw: &RawSprite,
        defaults: &RawDefaults,
        default_palette: Option<&Palette>,
        atlases: &[AtlasSpec],
        span: Range<usize>,
    ) -> Result<SpriteSpec, Invalid> {
        // Where a field's value is: in the sprite if it sets it, else in `defaults`.
        let field_span = |field: &str, in_sprite: bool| -> Range<usize> {
            let start = if in_sprite {
                Some(span.end)
            } else {
                self.locator.field_after(0, "defaults").map(|r| r.end)
            };
            start
                .and_then(|s| self.locator.field_after(s, field))
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(span.clone())
        };

        let (width, height) = raw.size.or(defaults.size).unwrap_or((32, 32));
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(self
                .error(field_span("size", raw.size.is_some()), format!("sprite `{name}` has size {width}×{height}"))
                .label("out of range")
                .help(format!("sizes go from (1, 1) to ({MAX_SIDE}, {MAX_SIDE}); pixel-art sprites are usually 16 to 64 pixels a side"))
                .into());
        }
        let frames = raw.frames.unwrap_or(1);
        if !(1..=MAX_FRAMES).contains(&frames) {
            return Err(self
                .error(field_span("frames", true), format!("sprite `{name}` has {frames} frames"))
                .label("out of range")
                .help(format!("an animation has 1 to {MAX_FRAMES} frames; leave `frames` out for a still sprite"))
                .into());
        }
        if raw.prompt.trim().is_empty() {
            return Err(self
                .error(
                    field_span("prompt", true),
                    format!("sprite `{name}` has an empty prompt"),
                )
                .label("empty")
                .help("describe the sprite, e.g. `prompt: \"knight with a red cape\"`")
                .into());
        }

        let atlas = raw
            .atlas
            .clone()
            .or_else(|| defaults.atlas.clone())
            .map_or_else(|| AtlasName::from(DEFAULT_ATLAS), AtlasName::from);
        let declared = atlases.iter().any(|a| a.name == atlas);
        let implicit = atlases.is_empty() && atlas == DEFAULT_ATLAS;
        if !declared && !implicit {
            let declared: Vec<&str> = atlases.iter().map(|a| a.name.as_str()).collect();
            let help = if declared.is_empty() {
                format!(
                    "declare it: `atlases: {{ \"{atlas}\": () }}`, or leave `atlas` out to use the `{DEFAULT_ATLAS}` atlas"
                )
            } else {
                format!(
                    "declared atlases: {}; add `\"{atlas}\": ()` to `atlases` or fix the name",
                    declared.join(", ")
                )
            };
            return Err(self
                .error(
                    field_span("atlas", raw.atlas.is_some()),
                    format!("sprite `{name}` uses atlas `{atlas}`, which is not declared"),
                )
                .label("unknown atlas")
                .help(help)
                .into());
        }

        let generator = raw
            .generator
            .clone()
            .or_else(|| defaults.generator.clone())
            .unwrap_or(GeneratorSpec::Procedural);
        if let GeneratorSpec::Diffusion { model, steps, .. } = &generator {
            let in_sprite = raw.generator.is_some();
            if model.trim().is_empty() {
                return Err(self
                    .error(
                        field_span("generator", in_sprite),
                        "the Diffusion generator needs a model",
                    )
                    .label("empty model")
                    .help("set `model: \"stabilityai/sd-turbo\"` or a local folder")
                    .into());
            }
            if *steps == 0 || *steps > 1000 {
                return Err(self
                    .error(
                        field_span("generator", in_sprite),
                        format!("{steps} diffusion steps is out of range"),
                    )
                    .label("steps")
                    .help("use 1 to 1000 steps (1–4 for Turbo models, 20–50 for others)")
                    .into());
            }
        }

        let raw_loras = raw.loras.as_ref().or(defaults.loras.as_ref());
        let mut loras = Vec::new();
        for lora in raw_loras.into_iter().flatten() {
            if !lora.weight.is_finite() {
                let at = self
                    .locator
                    .string_literals(&lora.path)
                    .into_iter()
                    .next()
                    .unwrap_or(span.clone());
                return Err(self
                    .error(
                        at,
                        format!("LoRA `{}` has a weight that is not a number", lora.path),
                    )
                    .help("use a weight such as 0.8")
                    .into());
            }
            let literals = self.locator.string_literals(&lora.path);
            let lora_span = literals
                .iter()
                .find(|r| r.start >= span.end)
                .or(literals.first())
                .cloned()
                .unwrap_or(span.clone());
            loras.push(LoraSpec {
                resolved: self.dir.join(&lora.path),
                path: lora.path.clone(),
                weight: lora.weight,
                span: lora_span,
            });
        }

        let palette = match &raw.palette {
            Some(name) => Some(self.palette(name, Some(&span))?),
            None => default_palette.cloned(),
        };

        let background = match raw.background.as_ref().or(defaults.background.as_ref()) {
            None | Some(RawBackground::Transparent) => Background::Transparent,
            Some(RawBackground::Keep) => Background::Keep,
            Some(RawBackground::Color(hex)) => Background::Color(self.color(
                hex,
                &span,
                format!("`{hex}` is not a colour"),
                "write the colour as `Color(\"#3a5f0b\")`",
            )?),
        };

        let max_colors = raw.max_colors.or(defaults.max_colors);
        if max_colors == Some(0) {
            let at = self
                .locator
                .field_after(span.start, "max_colors")
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(span.clone());
            return Err(self
                .error(
                    at,
                    format!("sprite `{name}`: `max_colors` must be at least 1"),
                )
                .label("zero colours")
                .help("leave `max_colors` out to keep every colour the image needs")
                .into());
        }
        let outline = match raw.outline.as_ref().or(defaults.outline.as_ref()) {
            None => None,
            Some(hex) => Some(self.color(
                hex,
                &span,
                format!("outline `{hex}` is not a colour"),
                "write the outline colour as `outline: \"#1a1c2c\"`",
            )?),
        };

        Ok(SpriteSpec {
            name: SpriteName::from(name),
            constant,
            prompt: raw.prompt.clone(),
            negative_prompt: raw
                .negative_prompt
                .clone()
                .or_else(|| defaults.negative_prompt.clone())
                .unwrap_or_default(),
            seed: raw.seed.or(defaults.seed).unwrap_or(0),
            width,
            height,
            frames,
            animated: raw.frames.is_some(),
            atlas,
            generator,
            loras,
            palette,
            max_colors,
            background,
            outline,
            span,
        })
    }

    /// A `#RRGGBB` colour; an error at the string (or the sprite) otherwise.
    fn color(
        &self,
        hex: &str,
        sprite: &Range<usize>,
        message: String,
        help: &str,
    ) -> Result<[u8; 3], Invalid> {
        parse_hex_color(hex).ok_or_else(|| {
            let at = self
                .locator
                .string_literals(hex)
                .into_iter()
                .next()
                .unwrap_or(sprite.clone());
            self.error(at, message)
                .label("expected #RRGGBB")
                .help(help)
                .into()
        })
    }

    /// A built-in palette name, or a `.hex` / `.gpl` file beside the manifest.
    fn palette(&self, name: &str, near: Option<&Range<usize>>) -> Result<Palette, Invalid> {
        let at = || {
            let literals = self.locator.string_literals(name);
            near.and_then(|n| literals.iter().find(|r| r.start >= n.end).cloned())
                .or_else(|| literals.into_iter().next())
                .unwrap_or(0..0)
        };
        if let Some(path) = Palette::file_of(name, self.dir) {
            // Even a missing or broken file must rerun the build when it changes.
            self.input_files.borrow_mut().push(path);
        }
        Palette::load(name, self.dir).map_err(|error| {
            let (label, help) = match &error {
                PaletteLoadError::Unreadable { .. } => (
                    "palette file",
                    "the path is relative to the folder of sprites.ron; check it exists".to_owned(),
                ),
                PaletteLoadError::Invalid { .. } => (
                    "this palette",
                    "a .hex file has one RRGGBB colour per line; a .gpl file is a GIMP palette"
                        .to_owned(),
                ),
                PaletteLoadError::Unknown { .. } => (
                    "not a built-in palette",
                    format!(
                        "use a built-in palette ({}) or a path to a .hex or .gpl file",
                        Palette::BUILTIN_NAMES.join(", ")
                    ),
                ),
            };
            self.error(at(), error.to_string())
                .label(label)
                .help(help)
                .into()
        })
    }

    fn identifier(
        &self,
        name: &str,
        span: &Range<usize>,
        what: &str,
        case: Case,
    ) -> Result<String, Invalid> {
        rust_identifier(name, case).ok_or_else(|| {
            self.error(span.clone(), format!("{what} name `{name}` cannot become a Rust identifier"))
                .label("invalid name")
                .help(format!("{what} names start with a letter and use only letters, digits, `_` and `-` (e.g. `hero_walk`); Rust keywords are not allowed"))
                .into()
        })
    }

    /// Where the `occurrence`-th (0-based) `"name":` key is; the whole file when not found.
    fn key_span(&self, name: &str, occurrence: usize) -> Range<usize> {
        self.locator
            .map_keys(name)
            .get(occurrence)
            .cloned()
            .unwrap_or(0..0)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.source, span, message)
    }
}

/// Each entry with how many entries of the same name came before it.
fn occurrences<T>(entries: &[(String, T)]) -> impl Iterator<Item = (usize, &(String, T))> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    entries.iter().map(move |entry| {
        let count = counts.entry(entry.0.as_str()).or_insert(0);
        let before = *count;
        *count += 1;
        (before, entry)
    })
}

#[derive(Clone, Copy)]
pub(crate) enum Case {
    Upper,
    Lower,
}

/// `hero-walk` → `HERO_WALK` (Upper) or `hero_walk` (Lower); `None` when the name
/// cannot be a Rust identifier.
pub(crate) fn rust_identifier(name: &str, case: Case) -> Option<String> {
    let mut chars = name.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let converted: String = name
        .chars()
        .map(|c| match (c, case) {
            ('-', _) => '_',
            (c, Case::Upper) => c.to_ascii_uppercase(),
            (c, Case::Lower) => c.to_ascii_lowercase(),
        })
        .collect();
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
        "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
        "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait",
        "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do",
        "final", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
    ];
    // Names the generated module uses itself.
    const RESERVED: &[&str] = &["atlases", "prelude"];
    if KEYWORDS.contains(&converted.to_ascii_lowercase().as_str()) && matches!(case, Case::Lower) {
        return None;
    }
    if matches!(case, Case::Lower) && RESERVED.contains(&converted.as_str()) {
        return None;
    }
    Some(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Manifest {
        match parse(Path::new("game/sprites.ron"), text) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_err(text: &str) -> (String, (usize, usize)) {
        match parse(Path::new("game/sprites.ron"), text) {
            Ok(_) => panic!("expected an error"),
            Err(ManifestError::Invalid(d)) => (d.to_string(), d.line_column()),
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    const GOOD: &str = r#"(
    defaults: (
        size: (32, 32),
        palette: "endesga-32",
        background: Transparent,
    ),
    atlases: { "characters": (padding: 2, extrude: 1), "items": (trim: false, max_size: (256, 128)) },
    sprites: {
        "potion":    (prompt: "red potion bottle", seed: 7, atlas: "items", size: (16, 16)),
        "hero":      (prompt: "knight with a red cape", seed: 42, atlas: "characters"),
        "hero-walk": (prompt: "knight walking", seed: 43, atlas: "characters", frames: 4, palette: "pico-8"),
    },
)"#;

    #[test]
    fn applies_defaults_and_overrides() {
        let m = parse_ok(GOOD);
        let names: Vec<&str> = m.sprites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["hero", "hero-walk", "potion"]);
        let walk = &m.sprites[1];
        assert_eq!(walk.constant, "HERO_WALK");
        assert_eq!((walk.width, walk.height, walk.frames), (32, 32, 4));
        assert_eq!(walk.palette.as_ref().map(|p| p.colors().len()), Some(16));
        assert_eq!(
            m.sprites[0].palette.as_ref().map(|p| p.colors().len()),
            Some(32)
        );
        assert_eq!((m.sprites[2].width, m.sprites[2].height), (16, 16));
        assert_eq!(m.sprites[2].generator, GeneratorSpec::Procedural);
        assert_eq!(m.atlases.len(), 2);
        assert_eq!(m.atlases[0].options.padding, 2);
        assert!(m.atlases[0].options.trim, "trimmed by default");
        let items = m.atlases[1].options;
        assert!(!items.trim);
        assert_eq!((items.max_width, items.max_height), (256, 128));
    }

    #[test]
    fn implicit_atlas_when_none_declared() {
        let m = parse_ok(r#"(sprites: { "coin": (prompt: "gold coin") })"#);
        assert_eq!(m.atlases.len(), 1);
        assert_eq!(m.atlases[0].name, DEFAULT_ATLAS);
        assert_eq!(m.sprites[0].atlas, DEFAULT_ATLAS);
    }

    #[test]
    fn diffusion_generator_parses_with_parameters() {
        let m = parse_ok(
            r#"(defaults: (generator: Diffusion(model: "stabilityai/sd-turbo", steps: 4, guidance: 0.0), loras: [(path: "art/px.safetensors", weight: 0.8)]),
            sprites: { "a": (prompt: "x") })"#,
        );
        match &m.sprites[0].generator {
            GeneratorSpec::Diffusion {
                model,
                steps,
                scheduler,
                ..
            } => {
                assert_eq!(model, "stabilityai/sd-turbo");
                assert_eq!(*steps, 4);
                assert_eq!(*scheduler, Scheduler::EulerAncestral);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.sprites[0].loras[0].resolved,
            Path::new("game/art/px.safetensors")
        );
        assert_eq!(m.sprites[0].loras[0].weight, 0.8);
    }

    #[test]
    fn unknown_field_points_at_it() {
        let (text, (line, column)) =
            parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\", sede: 4),\n  },\n)");
        assert_eq!((line, column), (3, 27), "{text}");
        assert!(text.contains("sede"), "{text}");
        assert!(text.contains("game/sprites.ron:3:27"), "{text}");
        assert!(text.contains("help:") && text.contains("seed"), "{text}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let (text, (line, _)) =
            parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\" seed: 4),\n  },\n)");
        assert_eq!(line, 3, "{text}");
    }

    #[test]
    fn bad_value_type_is_located() {
        let (text, (line, _)) =
            parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\", seed: \"four\"),\n  },\n)");
        assert_eq!(line, 3, "{text}");
    }

    #[test]
    fn duplicate_names_point_at_the_second() {
        let (text, (line, column)) = parse_err(
            "(\n  sprites: {\n    \"bat\": (prompt: \"a\"),\n    \"bat\": (prompt: \"b\"),\n  },\n)",
        );
        assert_eq!((line, column), (4, 5), "{text}");
        assert!(text.contains("duplicate sprite name `bat`"), "{text}");
    }

    #[test]
    fn invalid_identifiers_and_collisions() {
        let (text, (line, _)) = parse_err("(sprites: {\n \"9lives\": (prompt: \"cat\"),\n})");
        assert_eq!(line, 2);
        assert!(text.contains("cannot become a Rust identifier"), "{text}");
        let (text, _) = parse_err("(sprites: {\n \"my sprite\": (prompt: \"cat\"),\n})");
        assert!(text.contains("cannot become a Rust identifier"), "{text}");
        let (text, (line, _)) = parse_err(
            "(sprites: {\n \"hero_walk\": (prompt: \"a\"),\n \"hero-walk\": (prompt: \"b\"),\n})",
        );
        assert_eq!(line, 3);
        assert!(text.contains("HERO_WALK"), "{text}");
        let (text, _) = parse_err(
            "(atlases: { \"type\": () }, sprites: { \"a\": (prompt: \"b\", atlas: \"type\") })",
        );
        assert!(text.contains("atlas name `type`"), "{text}");
    }

    #[test]
    fn undeclared_atlas_lists_the_declared_ones() {
        let (text, (line, _)) = parse_err(
            "(atlases: { \"items\": () },\n sprites: {\n \"a\": (prompt: \"b\", atlas: \"itemz\"),\n})",
        );
        assert_eq!(line, 3);
        assert!(text.contains("declared atlases: items"), "{text}");
    }

    #[test]
    fn unknown_palette_and_missing_palette_file() {
        let (text, (line, _)) =
            parse_err("(defaults: (palette: \"pico-9\"),\n sprites: { \"a\": (prompt: \"b\") })");
        assert_eq!(line, 1);
        assert!(
            text.contains("unknown palette `pico-9`") && text.contains("endesga-32"),
            "{text}"
        );
        let (text, (line, _)) =
            parse_err("(sprites: {\n \"a\": (prompt: \"b\", palette: \"art/none.hex\") })");
        assert_eq!(line, 2);
        assert!(text.contains("cannot read palette file"), "{text}");
    }

    #[test]
    fn out_of_range_values() {
        let (text, (line, _)) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", size: (0, 16)) })");
        assert_eq!(line, 2);
        assert!(text.contains("size 0×16"), "{text}");
        let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", frames: 0) })");
        assert!(text.contains("0 frames"), "{text}");
        let (text, _) =
            parse_err("(sprites: {\n \"a\": (prompt: \"b\", background: Color(\"#12345\")) })");
        assert!(text.contains("not a colour"), "{text}");
        let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"  \") })");
        assert!(text.contains("empty prompt"), "{text}");
    }

    #[test]
    fn pixelize_options_are_read_with_defaults_and_checked() {
        let m = parse(
            Path::new("sprites.ron"),
            "(defaults: (max_colors: 8, outline: \"#1a1c2c\"),\n sprites: { \"a\": (prompt: \"b\"), \"c\": (prompt: \"d\", max_colors: 3) })",
        )
        .unwrap();
        assert_eq!(m.sprites[0].max_colors, Some(8));
        assert_eq!(m.sprites[0].outline, Some([0x1a, 0x1c, 0x2c]));
        assert_eq!(m.sprites[1].max_colors, Some(3));

        let (text, (line, column)) =
            parse_err("(sprites: {\n \"a\": (prompt: \"b\", max_colors: 0) })");
        assert!(text.contains("`max_colors` must be at least 1"), "{text}");
        assert_eq!((line, column), (2, 33));
        let (text, (line, _)) =
            parse_err("(sprites: {\n \"a\": (prompt: \"b\", outline: \"#12\") })");
        assert!(text.contains("outline `#12` is not a colour"), "{text}");
        assert_eq!(line, 2);
    }

    #[test]
    fn unknown_generator_variant_lists_the_known_ones() {
        let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", generator: Dalle) })");
        assert!(
            text.contains("Procedural") && text.contains("Diffusion"),
            "{text}"
        );
    }

    #[test]
    fn identifier_conversion() {
        assert_eq!(
            rust_identifier("hero-walk", Case::Upper).as_deref(),
            Some("HERO_WALK")
        );
        assert_eq!(
            rust_identifier("Items", Case::Lower).as_deref(),
            Some("items")
        );
        assert_eq!(rust_identifier("_x", Case::Upper), None);
        assert_eq!(rust_identifier("", Case::Upper), None);
        assert_eq!(rust_identifier("mod", Case::Lower), None);
        assert_eq!(rust_identifier("über", Case::Lower), None);
    }
}
