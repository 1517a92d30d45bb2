//! Palettes: the fixed colour sets that sprites are quantised onto.
//!
//! Provides the built-in palettes, parsers for Lospec `.hex` and GIMP `.gpl`
//! files, nearest-colour matching in OKLab, and whole-image remapping.
//!
//! The built-in palettes are in `builtin`, the `.hex` / `.gpl` parsers in `parse`; this
//! module holds [`Palette`] itself, whose colours are never empty nor repeated.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::color::Lab;

/// The colour types and OKLab conversions palettes are matched in (module [`crate::color`]).
pub use crate::color::{Rgb, oklab_to_srgb, srgb_to_oklab};

mod builtin;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::{PaletteParseError, parse_hex_color};

/// An ordered, de-duplicated, non-empty list of colours that sprites are
/// mapped onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Palette {
    name: String,
    colors: Vec<Rgb>,
}

/// Why [`Palette::load`] found no palette.
#[derive(Debug, thiserror::Error)]
pub enum PaletteLoadError {
    #[error("cannot read palette file: {source}")]
    Unreadable {
        path: PathBuf,
        source: crate::input_file::InputFileError,
    },
    #[error("palette file {} is invalid: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: PaletteParseError,
    },
    #[error("unknown palette `{name}`")]
    Unknown { name: String },
}

impl Palette {
    /// Builds a palette from a list of colours, keeping the first occurrence
    /// of each colour and dropping later duplicates. Fails with
    /// [`PaletteParseError::Empty`] if the list is empty.
    pub fn from_colors(name: &str, colors: Vec<Rgb>) -> Result<Palette, PaletteParseError> {
        let mut seen = HashSet::with_capacity(colors.len());
        let colors: Vec<Rgb> = colors.into_iter().filter(|c| seen.insert(*c)).collect();
        if colors.is_empty() {
            return Err(PaletteParseError::Empty);
        }
        Ok(Palette {
            name: name.to_owned(),
            colors,
        })
    }

    /// The file a palette spec names (`.hex` or `.gpl`, relative to `dir`), if any.
    pub fn file_of(spec: &str, dir: &Path) -> Option<PathBuf> {
        let lower = spec.to_ascii_lowercase();
        (lower.ends_with(".hex") || lower.ends_with(".gpl")).then(|| dir.join(spec))
    }

    /// A palette spec as the manifest and the CLI take it: a `.hex` or `.gpl` file
    /// (relative to `dir`), else a built-in name.
    pub fn load(spec: &str, dir: &Path) -> Result<Palette, PaletteLoadError> {
        let Some(path) = Palette::file_of(spec, dir) else {
            return Palette::builtin(spec).ok_or_else(|| PaletteLoadError::Unknown {
                name: spec.to_owned(),
            });
        };
        let text = crate::input_file::read_to_string(
            &path,
            crate::input_file::MAX_PALETTE_BYTES,
            "palette file",
        )
        .map_err(|source| PaletteLoadError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let parsed = if spec.to_ascii_lowercase().ends_with(".hex") {
            Palette::from_hex(spec, &text)
        } else {
            Palette::from_gpl(spec, &text)
        };
        parsed.map_err(|source| PaletteLoadError::Invalid { path, source })
    }

    /// The palette's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The palette's colours, in order, without duplicates.
    pub fn colors(&self) -> &[Rgb] {
        &self.colors
    }

    /// The palette colour nearest to `color` by Euclidean distance in OKLab;
    /// ties go to the lowest index. Exact members map to themselves.
    pub fn nearest(&self, color: Rgb) -> Rgb {
        nearest_in(&self.colors, &self.labs(), color)
    }

    /// Maps every pixel with alpha > 0 to its nearest palette colour, keeping
    /// its alpha. Fully transparent pixels are left untouched.
    pub fn apply(&self, image: &mut image::RgbaImage) {
        let labs = self.labs();
        // Sprites have few distinct colours, so memoising per colour turns
        // the per-pixel palette scan into a hash lookup.
        let mut memo: HashMap<Rgb, Rgb> = HashMap::new();
        for px in image.pixels_mut() {
            let [r, g, b, a] = px.0;
            if a == 0 {
                continue;
            }
            let [nr, ng, nb] = *memo
                .entry([r, g, b])
                .or_insert_with(|| nearest_in(&self.colors, &labs, [r, g, b]));
            px.0 = [nr, ng, nb, a];
        }
    }

    /// Stable content fingerprint input: the colours, in order, as
    /// `R G B` bytes. The name is deliberately excluded.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.colors.as_flattened().to_vec()
    }

    /// OKLab of every colour; kept out of the struct so it can derive `Eq`.
    fn labs(&self) -> Vec<Lab> {
        self.colors.iter().map(|&c| srgb_to_oklab(c)).collect()
    }
}

/// Nearest colour in `colors` (with matching precomputed `labs`) to `color`.
fn nearest_in(colors: &[Rgb], labs: &[Lab], color: Rgb) -> Rgb {
    // Exact members must map to themselves even if float error could tie.
    if colors.contains(&color) {
        return color;
    }
    // `Palette` is never empty, so the index is in range.
    colors[crate::color::nearest(labs, &srgb_to_oklab(color))]
}
