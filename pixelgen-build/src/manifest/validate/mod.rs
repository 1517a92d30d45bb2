//! Raw manifest → validated [`Manifest`]: each sprite's fields merged with `defaults`
//! (`merge`), then every value checked, each error a [`Diagnostic`] at the line and column
//! where the value is written, with what to do.
//!
//! The checks are grouped by topic: `sprite` (size, frames, prompt, atlas), `generator`
//! (models, servers, ComfyUI workflows), `loras` (LoRA files and `trained_loras`) and
//! `colors` (background, colour count, outline, palette); this module holds the
//! `Validator` they share and the manifest-wide pass.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::merge::Merged;
use super::raw::RawManifest;
use super::{AtlasSpec, DEFAULT_ATLAS, Manifest, SpriteSpec};
use crate::atlas::AtlasOptions;
use crate::diagnostics::{Diagnostic, Locator, SourceFile};
use crate::identity::AtlasName;

mod colors;
mod conditioning;
mod generator;
mod loras;
mod sprite;

/// Validates `raw`, read from `source` (the text of the manifest at `path`).
pub(super) fn validate(
    raw: RawManifest,
    source: &SourceFile,
    text: &str,
    path: &Path,
) -> Result<Manifest, Invalid> {
    Validator {
        source,
        input_files: Default::default(),
        locator: Locator::new(text),
        dir: path.parent().unwrap_or(Path::new(".")),
    }
    .validate(raw)
}

struct Validator<'a> {
    source: &'a SourceFile,
    /// Files the manifest reads itself (palettes), even ones that fail to load.
    input_files: std::cell::RefCell<Vec<PathBuf>>,
    locator: Locator<'a>,
    dir: &'a Path,
}

type Invalid = Box<Diagnostic>;

/// A sprite's key: its name, the Rust constant it becomes, and where the name is written.
struct SpriteEntry<'a> {
    name: &'a str,
    constant: String,
    span: Range<usize>,
}

impl Validator<'_> {
    fn validate(&self, raw: RawManifest) -> Result<Manifest, Invalid> {
        let atlases = self.atlases(&raw)?;
        let trained_loras = self.trained_loras(&raw)?;
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
            let entry = SpriteEntry {
                name,
                constant,
                span,
            };
            sprites.push(self.sprite(
                entry,
                sprite,
                defaults,
                default_palette.as_ref(),
                &atlases,
                &trained_loras,
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
            trained_loras,
            input_files: self.input_files.take(),
        })
    }

    /// Where `field`'s value is written: in the sprite's entry if it sets it, else in
    /// `defaults`; the sprite's name when the field cannot be found.
    fn field_span<T>(
        &self,
        entry: &SpriteEntry<'_>,
        field: &str,
        merged: &Merged<T>,
    ) -> Range<usize> {
        let start = if merged.in_sprite {
            Some(entry.span.end)
        } else {
            self.locator.field_after(0, "defaults").map(|r| r.end)
        };
        start
            .and_then(|s| self.locator.field_after(s, field))
            .map(|f| self.locator.value_after(&f))
            .unwrap_or(entry.span.clone())
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
pub(super) fn occurrences<T>(
    entries: &[(String, T)],
) -> impl Iterator<Item = (usize, &(String, T))> {
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
